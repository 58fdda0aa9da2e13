//! Fleet-key transparency for bkv: validation bundles co-signed by an
//! independent auditor and the operator, the auditor's append-only Merkle log
//! (RFC 9162 hashing), C2SP signed-note checkpoints, and the client-side checks
//! that make a forked or rewritten log detectable.
//!
//! Its surface is curated by artifact rather than flattened: each public module is one signed
//! or logged artifact and its checks ([`bundle`], [`evidence`], [`membership`] records and
//! statements, [`note`] checkpoints, [`merkle`] proofs), as `docs/formats.md` documents them.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod bundle;
pub mod evidence;
pub mod membership;
pub mod merkle;
pub mod note;
pub mod web;

/// serde helpers: bytes as standard base64 strings in JSON (declared in `bkv-api`).
pub use bkv_api::b64;
