//! What `bkv-hsm --print-statement` prints (docs/formats.md "Platform statement"): the node's
//! signed platform statement and, for people and scripts, what it says. Only
//! `signed_statement` is evidence: readers verify it and take the other fields from it.

use serde::{Deserialize, Serialize};

/// One JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrintedStatement {
    /// The node's X25519 identity key, hex.
    pub identity_key: String,
    /// The platform's Ed25519 signing key, hex.
    pub signing_key: String,
    /// The platform kind's name (`software`, `pkcs11`, …).
    pub platform: String,
    /// The token description the platform reports.
    pub token: String,
    /// SHA-256 of the binary the core runs in, hex.
    pub binary_sha256: String,
    /// The canonical `SignedStatement`, hex.
    pub signed_statement: String,
}
