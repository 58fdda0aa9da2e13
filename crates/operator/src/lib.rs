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
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod auditor;
pub mod ceremony;
pub mod fleet;
pub mod ledger;

use std::net::SocketAddr;

/// What went wrong talking to the auditor or the fleet.
/// Why an operator action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// The auditor could not be reached, or refused.
    #[error("auditor at {url}: {message}")]
    Auditor {
        /// The auditor's URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The auditor answered with a signature that does not verify.
    #[error("the auditor's signature over what we sent does not verify")]
    AuditorSignature,
    /// A node's admin link could not be used.
    #[error("admin link {addr}: {message}")]
    AdminLink {
        /// The node's admin address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The fleet's cores refused the signed command.
    #[error("the fleet refused the command: {0}")]
    Refused(bkv_wire::admin::AdminError),
    /// The fleet is not in a state the action can work with.
    #[error("{0}")]
    Fleet(String),
}

/// An operator action's result.
pub type Result<T> = std::result::Result<T, OperatorError>;
