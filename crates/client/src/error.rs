use bkv_wire::vault::VaultError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(
        "wrong password: {guesses_remaining} guesses remaining before the backup key is destroyed"
    )]
    WrongPassword { guesses_remaining: u32 },
    #[error("the backup key was destroyed after too many wrong guesses; the backups it protected cannot be recovered")]
    Destroyed,
    #[error("no backup is set up for this user")]
    NoRecord,
    #[error("the vault is unavailable: {0}")]
    Unavailable(String),
    #[error("the vault did not prove possession of the pinned fleet key (wrong or outdated fleet key in the client config, or an impostor)")]
    FleetKeyRejected,
    #[error("update the app: the vault fleet it pins was retired (its keys are no longer served)")]
    FleetRetired,
    #[error("fleet key validation bundle rejected: {0}")]
    Bundle(bkv_transparency::bundle::BundleError),
    #[error("the frontend refused the request: {0}")]
    Refused(String),
    #[error("vault error: {0}")]
    Vault(VaultError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("backup format: {0}")]
    Format(#[from] crate::backup::FormatError),
    #[error("{0}")]
    RecoveryKey(#[from] crate::slots::RecoveryKeyError),
    #[error("{0}")]
    Manifest(#[from] crate::slots::ManifestError),
    #[error("passkey: {0}")]
    Passkey(PasskeyError),
    #[error("the vault holds a password protector: this operation needs the current password (--password-stdin)")]
    PasswordNeeded,
    #[error("{0}")]
    Protectors(String),
    /// Storage holds something bkv did not write (a malformed or oversized object).
    #[error("storage: {0}")]
    Storage(String),
    /// The object store failed (network, permissions, a missing object).
    #[error("storage: {0}")]
    Store(#[from] object_store::Error),
    /// Another device switched `latest.json` while this one was switching it: run again.
    #[error("latest.json changed while this backup was being switched to (another device backing up at the same time?); the new backup is stored but not current: run the command again")]
    LatestChanged,
    #[error("the saved checkpoint of the auditor's log ({path}) is missing, though this client trusted the log before: it cannot tell whether the log it sees now is the same one. If the file was deleted on purpose, run again with --trust-new-log (recorded in the client config)")]
    CheckpointLost { path: String },
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

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What a platform authenticator reports (see `crate::passkey::Authenticator`).
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    #[error(
        "the authenticator has no passkey for this backup (was it deleted from the passkey store?)"
    )]
    NoCredential,
    #[error("the authenticator failed: {0}")]
    Authenticator(String),
    #[error("the authenticator returned no PRF output; it does not support the PRF extension")]
    NoPrf,
}
