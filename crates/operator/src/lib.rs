//! Operator tooling for bkv: what the party that runs a fleet does with its
//! Ed25519 operator key.
//!
//! - [`auditor`]: publish validation bundles (appended, then counter-signed)
//!   and log fleet membership records with the independent auditor, checking
//!   the auditor's signatures.
//! - [`fleet`]: administer a fleet over its nodes' admin links: every command
//!   is signed with the operator key and names the fleet's next admin
//!   sequence number, and membership changes carry the auditor's log proof.
//!
//! This crate never holds anything but the operator key and public data; it
//! cannot reach users' keys (the fleet's cores refuse anything else).

#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

pub mod auditor;
pub mod ceremony;
pub mod fleet;
pub mod ledger;

use std::net::SocketAddr;

/// What went wrong talking to the auditor or the fleet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    #[error("auditor at {url}: {message}")]
    Auditor { url: String, message: String },
    #[error("the auditor's signature over what we sent does not verify")]
    AuditorSignature,
    #[error("admin link {addr}: {message}")]
    AdminLink { addr: SocketAddr, message: String },
    #[error("the fleet refused the command: {0}")]
    Refused(bkv_wire::admin::AdminError),
    #[error("{0}")]
    Fleet(String),
}

pub type Result<T> = std::result::Result<T, OperatorError>;
