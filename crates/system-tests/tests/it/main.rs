//! System tests: real `bkv-admin`, `bkv`, `bkv-hsm`, `bkv-frontend` and `bkv-auditor`
//! processes on 127.0.0.1, driven as a user and an operator would. One test
//! binary (modules, not files under `tests/`) so CI links it once.

mod measure;

mod abuse;
mod attacks;
mod auditor;
mod bindings;
mod chaos;
mod core_service;
mod deploy;
mod e2e;
mod endpoints;
mod evidence;
mod fleet;
mod maps;
mod protectors;
mod rotation;
mod s3;
mod services;
mod trust;
mod web;
