//! bkv's browser client. `bkv-client` — OPAQUE, Noise `NK` to the fleet key, the bundle and
//! log checks, the backup format, protectors, the recovery key — compiled to
//! `wasm32-unknown-unknown` without its native half, so the browser runs the same protocol code
//! as the CLI and the native bindings.
//!
//! No `wasm-bindgen`: the module exports a handful of plain functions ([`ffi`], wasm only) and
//! `www/bkv.js` drives them. An operation is a task ([`tasks`]): JavaScript polls it, and
//! whatever it waits for — a `fetch`, the next slice of the picked file, a place for restored
//! plaintext, a WebAuthn ceremony, saving the log state — is a host call ([`host`]) that
//! JavaScript performs and answers, then polls again. The operations and their JSON are in
//! [`ops`] (docs/api.md "Browser client").
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod host;
pub mod ops;
pub mod tasks;

#[cfg(target_arch = "wasm32")]
mod ffi;
