//! bkv client SDK: what an app embeds to offer end-to-end encrypted backups. It validates the
//! fleet key (pinned, or from an auditor-logged bundle: [`ota`]), opens Noise sessions with the
//! vault through the frontend ([`session`]), registers and recovers the backup key with OPAQUE
//! ([`vault`]), keeps the other protectors' key slots ([`slots`]), runs the account's
//! operations on all of them — unlock, add, rotate, disable ([`account`]) — and writes and reads
//! encrypted backups in storage ([`backup`], [`archive`], [`storage`]).
//!
//! It must never send the backup key, the password or a slot secret anywhere: the vault sees
//! OPAQUE messages only, storage sees ciphertext, the frontend sees neither.

pub mod account;
pub mod archive;
pub mod backup;
pub mod error;
pub mod keys;
pub mod ota;
pub mod passkey;
pub mod session;
pub mod slots;
pub mod storage;
pub mod vault;

pub use account::{Account, Unlock};
pub use error::{ClientError, Result};
pub use keys::BackupKey;
pub use session::{Endpoint, Session};
pub use storage::BackupStore;
pub use vault::VaultClient;

/// Writes a private file whole or not at all, readable by the owner only, creating its parent
/// directory (the one implementation, in `bkv-private-files`).
pub use bkv_private_files::write_private_file;

/// Test hook for crash-consistency tests: a process started with
/// `BKV_CRASH_AT=<step>` kills itself with SIGKILL when it reaches `step`
/// (no destructors, no flushing: as if the machine lost power there). Steps
/// are listed in `docs/formats.md` under key rotation.
#[allow(unsafe_code)]
pub fn crash_point(step: &str) {
    if std::env::var_os("BKV_CRASH_AT").is_some_and(|v| v == step) {
        tracing::warn!(step, "BKV_CRASH_AT reached: killing this process");
        // SAFETY: getpid and kill have no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
