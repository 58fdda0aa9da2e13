//! bkv client SDK: what an app embeds to offer end-to-end encrypted backups. It validates the
//! fleet key (pinned, or from an auditor-logged bundle: [`ota`]), opens Noise sessions with the
//! vault through the frontend ([`session`]), registers and recovers the backup key with OPAQUE
//! ([`vault`]), keeps the other protectors' key slots ([`slots`]), runs the account's
//! operations on all of them — unlock, add, rotate, disable ([`account`]) — and writes and reads
//! encrypted backups in storage ([`backup`], [`archive`], [`storage`]).
//!
//! It must never send the backup key, the password or a slot secret anywhere: the vault sees
//! OPAQUE messages only, storage sees ciphertext, the frontend sees neither.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, missing_docs)]

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

/// Test hook for crash-consistency tests: with the `crash-points` feature (the workspace's test
/// builds turn it on; a release build of `bkv` has no hook), a process started with
/// `BKV_CRASH_AT=<step>` has itself SIGKILLed when it reaches `step` (no destructors, no
/// flushing: as if the machine lost power there). Steps are listed in `docs/formats.md` under
/// key rotation. Without the feature this does nothing.
pub fn crash_point(step: &str) {
    #[cfg(feature = "crash-points")]
    if std::env::var_os("BKV_CRASH_AT").is_some_and(|v| v == step) {
        tracing::warn!(step, "BKV_CRASH_AT reached: killing this process");
        // kill(1) rather than a libc call: this crate forbids unsafe code.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        // The signal is on its way; nothing after this point may run.
        loop {
            std::thread::park();
        }
    }
    #[cfg(not(feature = "crash-points"))]
    let _ = step;
}
