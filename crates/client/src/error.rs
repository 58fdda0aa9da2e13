//! The SDK's errors: [`ClientError`], and [`PasskeyError`] from authenticators.

use bkv_wire::vault::VaultError;

/// Every error the client SDK returns; the CLI shows its message to the user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The vault rejected the password; the guess is counted.
    #[error(
        "wrong password: {guesses_remaining} guesses remaining before the backup key is destroyed"
    )]
    WrongPassword {
        /// Wrong guesses left before the vault destroys the record.
        guesses_remaining: u32,
    },
    /// The guess limit was reached and the vault erased the record: the password cannot unlock K.
    #[error("the backup key was destroyed after too many wrong guesses; the backups it protected cannot be recovered")]
    Destroyed,
    /// The vault holds no password record for this user.
    #[error("no backup is set up for this user")]
    NoRecord,
    /// Storage holds no backup for this user (checked before any guess is spent).
    #[error("no backup found in storage for this user")]
    NoBackup,
    /// The frontend or vault could not be reached or is busy (the reason): worth retrying later.
    #[error("the vault is unavailable: {0}")]
    Unavailable(String),
    /// The Noise handshake failed: the answer did not come from the holder of the pinned fleet key.
    #[error("the vault did not prove possession of the pinned fleet key (wrong or outdated fleet key in the client config, or an impostor)")]
    FleetKeyRejected,
    /// The pinned fleet is retired (its keys are no longer served): the app needs a new fleet key.
    #[error("update the app: the vault fleet it pins was retired (its keys are no longer served)")]
    FleetRetired,
    /// The frontend's fleet key bundle failed verification against the pinned anchors or the saved
    /// log state.
    #[error("fleet key validation bundle rejected: {0}")]
    Bundle(bkv_transparency::bundle::BundleError),
    /// The frontend answered with an HTTP error (status and message), e.g. for a bad token.
    #[error("the frontend refused the request: {0}")]
    Refused(String),
    /// An error answer from the vault that no variant above stands for.
    #[error("vault error: {0}")]
    Vault(VaultError),
    /// A malformed or unexpected message from the frontend or vault, or a saved state file that
    /// does not parse.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A backup stream failed its format or authentication checks.
    #[error("backup format: {0}")]
    Format(#[from] crate::backup::FormatError),
    /// A typed recovery key is malformed (length, character or check symbol).
    #[error("{0}")]
    RecoveryKey(#[from] crate::slots::RecoveryKeyError),
    /// A protector manifest is malformed or was tampered with, or the protector opens no slot.
    #[error("{0}")]
    Manifest(#[from] crate::slots::ManifestError),
    /// The platform authenticator failed or has no usable passkey.
    #[error("passkey: {0}")]
    Passkey(PasskeyError),
    /// The vault holds a password record, so the operation needs the current password.
    #[error("the vault holds a password protector: this operation needs the current password (--password-stdin)")]
    PasswordNeeded,
    /// A protector operation is impossible as asked (why, for the user), e.g. none would be left.
    #[error("{0}")]
    Protectors(String),
    /// Storage holds something bkv did not write (a malformed or oversized object).
    #[error("storage: {0}")]
    Storage(String),
    /// The object store failed (network, permissions, a missing object).
    #[error("storage: {0}")]
    Store(#[from] crate::storage::StoreError),
    /// This build of the client cannot do what was asked (why, and what can).
    #[error("{0}")]
    Unsupported(String),
    /// Another device switched `latest.json` while this one was switching it: run again.
    #[error("latest.json changed while this backup was being switched to (another device backing up at the same time?); the new backup is stored but not current: run the command again")]
    LatestChanged,
    /// The saved checkpoint of the auditor's log is gone though this client trusted the log before:
    /// it cannot check that the log it sees now is the same one.
    #[error("the saved checkpoint of the auditor's log ({path}) is missing, though this client trusted the log before: it cannot tell whether the log it sees now is the same one. If the file was deleted on purpose, run again with --trust-new-log (recorded in the client config)")]
    CheckpointLost {
        /// The missing log state file.
        path: String,
    },
    /// A local I/O error: reading the source, writing a restore or a state file, a background task.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<VaultError> for ClientError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::WrongPassword { guesses_remaining } => {
                ClientError::WrongPassword { guesses_remaining }
            }
            VaultError::Destroyed => ClientError::Destroyed,
            VaultError::NoRecord => ClientError::NoRecord,
            VaultError::Unavailable => {
                ClientError::Unavailable("vault reported unavailable".into())
            }
            other => ClientError::Vault(other),
        }
    }
}

impl ClientError {
    /// The error's class, shared by every client surface (the CLI's exit classes, the native
    /// bindings' `BkvError`, the browser's error codes): `wrong_password`, `destroyed`,
    /// `not_found`, `unavailable`, `tampered` (something failed a check of its authenticity),
    /// `usage` (the request cannot work as asked), or `failed` (anything else).
    pub fn code(&self) -> &'static str {
        use crate::backup::FormatError;
        use crate::slots::ManifestError;
        match self {
            ClientError::WrongPassword { .. } => "wrong_password",
            ClientError::Destroyed => "destroyed",
            ClientError::NoRecord | ClientError::NoBackup => "not_found",
            ClientError::Unavailable(_) => "unavailable",
            // Not: a backup of a newer format, a manifest that is full or holds no protector
            // of the kind asked for.
            ClientError::FleetKeyRejected
            | ClientError::Bundle(_)
            | ClientError::CheckpointLost { .. }
            | ClientError::Format(
                FormatError::Auth(_)
                | FormatError::Magic
                | FormatError::Truncated
                | FormatError::TooManyChunks,
            )
            | ClientError::Manifest(ManifestError::Tampered | ManifestError::Malformed) => {
                "tampered"
            }
            ClientError::PasswordNeeded
            | ClientError::RecoveryKey(_)
            | ClientError::Unsupported(_)
            | ClientError::Manifest(ManifestError::TooMany) => "usage",
            _ => "failed",
        }
    }
}

/// The SDK's result type, with [`ClientError`] by default.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What a platform authenticator reports (see `crate::passkey::Authenticator`).
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// The authenticator has no credential for the requested passkey.
    #[error(
        "the authenticator has no passkey for this backup (was it deleted from the passkey store?)"
    )]
    NoCredential,
    /// The authenticator reported an error (its message).
    #[error("the authenticator failed: {0}")]
    Authenticator(String),
    /// The authenticator does not support the PRF extension, which passkey slots need.
    #[error("the authenticator returned no PRF output; it does not support the PRF extension")]
    NoPrf,
}
