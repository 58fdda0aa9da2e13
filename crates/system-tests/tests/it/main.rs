//! System tests: real `bkv-admin`, `bkv`, `bkv-hsm`, `bkv-frontend` and `bkv-auditor`
//! processes on 127.0.0.1, driven as a user and an operator would. One test
//! binary (modules, not files under `tests/`) so CI links it once.

// One module measures a child's peak memory with wait4(2) (measure.rs): its only unsafe code.
#![allow(unsafe_code)]

mod measure;

mod abuse;
mod attacks;
mod auditor;
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
