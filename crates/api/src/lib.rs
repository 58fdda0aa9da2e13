//! The JSON that crosses bkv's HTTP APIs, or that one bkv program prints for another to read,
//! declared once (issue 30, item 3): servers, clients, the operator tool and tests all use these
//! types, so a field cannot drift between them. Serde only, no I/O. docs/api.md and
//! docs/auditor-api.md name the type of every body.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod auditor;
pub mod b64;
pub mod frontend;
pub mod passkeys;
pub mod statement;

#[cfg(test)]
mod tests;
