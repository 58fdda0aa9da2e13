//! The binding's errors: the CLI's exit classes as codes an app can branch on.

use bkv_client::ClientError;

/// Why an operation failed: the `bkv` CLI's exit classes (README, "Exit codes"), split finer
/// where an app can act on the difference — `WrongPassword` is exit 3; `Destroyed` and a
/// missing vault record exit 4; `Usage` exit 2 (a malformed recovery key is exit 1 in the CLI);
/// the rest exit 1 (docs/api.md "Native bindings" has the table).
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum BkvError {
    /// The password was wrong; the guess counted.
    #[error("wrong password: {guesses_remaining} guesses remaining")]
    WrongPassword {
        /// Wrong guesses left before the vault destroys the record.
        guesses_remaining: u32,
    },
    /// The vault destroyed the record after too many wrong guesses: the password cannot
    /// unlock the backups any more (a recovery key or passkey still can).
    #[error("the backup key was destroyed after too many wrong guesses")]
    Destroyed,
    /// No vault record, or no backup in storage, for this user.
    #[error("not found: {message}")]
    NotFound {
        /// Which of the two.
        message: String,
    },
    /// The frontend or the vault could not be reached or is busy: worth retrying later.
    #[error("unavailable: {message}")]
    Unavailable {
        /// Why.
        message: String,
    },
    /// A cryptographic check failed: the fleet key (pinned or from the bundle), the bundle or
    /// the auditor's log, a backup or a protector manifest. Nothing was trusted.
    #[error("tampered: {message}")]
    Tampered {
        /// Which check.
        message: String,
    },
    /// The call was wrong: a malformed argument, or the operation needs the password.
    #[error("usage: {message}")]
    Usage {
        /// How to fix it.
        message: String,
    },
    /// Anything else (storage, I/O, a refusal by the frontend).
    #[error("{message}")]
    Failed {
        /// What failed.
        message: String,
    },
}

impl From<ClientError> for BkvError {
    fn from(e: ClientError) -> Self {
        BkvError::from_ref(&e).unwrap_or_else(|| BkvError::Failed {
            message: e.to_string(),
        })
    }
}

impl From<anyhow::Error> for BkvError {
    /// A connection error: the first client error or usage error in its chain decides.
    fn from(e: anyhow::Error) -> Self {
        for cause in e.chain() {
            if let Some(c) = cause.downcast_ref::<ClientError>() {
                return match BkvError::from_ref(c) {
                    Some(code) => code,
                    None => BkvError::Failed {
                        message: format!("{e:#}"),
                    },
                };
            }
            if cause.downcast_ref::<bkv_cli::UsageError>().is_some() {
                return BkvError::Usage {
                    message: format!("{e:#}"),
                };
            }
        }
        BkvError::Failed {
            message: format!("{e:#}"),
        }
    }
}

impl BkvError {
    /// The code of a client error seen by reference (inside an `anyhow` chain).
    fn from_ref(e: &ClientError) -> Option<BkvError> {
        let message = e.to_string();
        Some(match (e, e.code()) {
            (ClientError::WrongPassword { guesses_remaining }, _) => BkvError::WrongPassword {
                guesses_remaining: *guesses_remaining,
            },
            (_, "destroyed") => BkvError::Destroyed,
            (_, "not_found") => BkvError::NotFound { message },
            (_, "unavailable") => BkvError::Unavailable { message },
            (_, "tampered") => BkvError::Tampered { message },
            (_, "usage") => BkvError::Usage { message },
            _ => return None,
        })
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for PasskeyFailure {
    /// An exception the app's authenticator raised that is not a [`PasskeyFailure`] (a
    /// cancellation, a bug): the passkey operation fails, the library goes on.
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        PasskeyFailure::Failed { message: e.reason }
    }
}

/// Why a platform authenticator did not answer.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum PasskeyFailure {
    /// It holds no credential the request allows.
    #[error("no matching passkey")]
    NoCredential,
    /// It failed or the user cancelled (why).
    #[error("{message}")]
    Failed {
        /// Why.
        message: String,
    },
}
