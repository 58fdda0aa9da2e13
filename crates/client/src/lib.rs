//! bkv client SDK: what an app embeds to offer end-to-end encrypted backups. It validates the
//! fleet key (pinned, or from an auditor-logged bundle: [`fleets`]), opens Noise sessions with
//! the vault through the frontend ([`Session`]), registers and recovers the backup key with
//! OPAQUE ([`VaultClient`]), keeps the other protectors' key slots ([`Manifest`]), runs the
//! account's operations on all of them — unlock, add, rotate, disable ([`Account`]) — and writes
//! and reads encrypted backups in storage ([`EncryptWriter`], [`DecryptReader`],
//! [`BackupStore`]). Everything it offers is re-exported here; its modules are private.
//!
//! It must never send the backup key, the password or a slot secret anywhere: the vault sees
//! OPAQUE messages only, storage sees ciphertext, the frontend sees neither.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

mod account;
#[cfg(feature = "native")]
mod archive;
mod backup;
mod clock;
mod error;
mod http;
mod keys;
mod ota;
mod passkey;
mod random;
mod session;
mod slots;
mod storage;
mod vault;

pub use account::{Account, Disabled, ProtectorInfo, Rotated, Unlock, Unlocked};
#[cfg(feature = "native")]
pub use archive::{source_size, Options as ArchiveOptions, Restored};
pub use backup::{
    format_error, Compression, Content, DecryptReader, EncryptWriter, FormatError, Header,
    DEFAULT_CHUNK_SIZE, HEADER_LEN, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
pub use clock::set_clock;
pub use error::{ClientError, Result};
#[cfg(feature = "native")]
pub use http::{read_limited, ReqwestHttp};
pub use http::{Http, HttpRequest, HttpResponse, Method};
pub use keys::BackupKey;
#[cfg(feature = "native")]
pub use ota::fleets;
pub use ota::fleets_after;
pub use passkey::{Authenticator, Grant, PasskeyError};
pub use random::set_random;
pub use session::{Endpoint, FleetTarget, Session};
pub use slots::{
    key_id, Manifest, ManifestError, PasskeyParams, RecoveryKey, RecoveryKeyError, Slot, SlotKind,
    SlotSecret,
};
#[cfg(feature = "native")]
pub use storage::open_store;
pub use storage::{BackupObject, BackupStore, Chunks, HttpStore, Latest, Output};
pub use storage::{
    BlobStore, Download, MultipartUpload, ObjectMeta, PutMode, StoreError, StoreResult,
};
pub use vault::{LoggedIn, Prepared, VaultClient};

/// Writes a private file whole or not at all, readable by the owner only, creating its parent
/// directory (the one implementation, in `bkv-private-files`).
#[cfg(feature = "native")]
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
