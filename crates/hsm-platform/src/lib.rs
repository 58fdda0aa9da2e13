//! Platforms for `bkv-hsm`: implementations of [`bkv_hsm_core::Platform`],
//! the key store that seals, signs, counts and draws randomness for a node.
//!
//! - [`pkcs11::Pkcs11Platform`]: keys generated inside a PKCS#11 token,
//!   sensitive and never extractable (SoftHSM2 in tests, an HSM in
//!   production).
//! - [`software::SoftwarePlatform`]: keys in files (development only;
//!   protects nothing against the host).
//!
//! Neither hands key bytes to its caller: the trait has no such method.

#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod pkcs11;
pub mod softhsm;
pub mod software;

use bkv_hsm_core::SharedPlatform;
use std::path::PathBuf;
use std::sync::Arc;

/// Debian's SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Why a platform could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformOpenError {
    /// A file of the software platform could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A key or counter file holds something else than the platform wrote.
    #[error("platform key store is corrupt: {0}")]
    Corrupt(String),
    /// A key or counter is missing, and creating keys was not allowed (a node whose token or
    /// key directory was lost).
    #[error("{0}")]
    Missing(String),
    /// The PKCS#11 module or token refused.
    #[error("PKCS#11: {0}")]
    Token(String),
}

/// Which platform a node uses.
#[derive(Debug, Clone)]
pub enum PlatformConfig {
    /// Keys in files in this directory (INSECURE).
    Software {
        /// The key directory.
        dir: PathBuf,
    },
    /// Keys in a PKCS#11 token.
    Pkcs11(pkcs11::Pkcs11Config),
}

/// Opens the configured platform; `create` allows generating missing keys
/// (a node's first start only).
pub fn open(cfg: &PlatformConfig, create: bool) -> Result<SharedPlatform, PlatformOpenError> {
    Ok(match cfg {
        PlatformConfig::Software { dir } => {
            Arc::new(software::SoftwarePlatform::open(dir, create)?)
        }
        PlatformConfig::Pkcs11(c) => Arc::new(pkcs11::Pkcs11Platform::open(c, create)?),
    })
}

/// Writes a private file whole, owner-only and durably (the one implementation, in
/// `bkv-private-files`).
pub use bkv_private_files::write_private_file;

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
