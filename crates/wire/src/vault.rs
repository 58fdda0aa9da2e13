//! Messages between a client and the HSM, carried inside the Noise session.
//! The frontend never sees these in the clear.

use serde::{Deserialize, Serialize};

/// Largest encoded vault request or response.
pub const MAX_VAULT_MESSAGE: usize = 16 * 1024;
/// Largest wrapped backup key the vault stores.
pub const MAX_WRAPPED_KEY: usize = 256;
/// Guess limits a record may carry.
pub const MIN_GUESS_LIMIT: u32 = 1;
pub const MAX_GUESS_LIMIT: u32 = 100;
pub const DEFAULT_GUESS_LIMIT: u32 = 10;

/// Payload of the first Noise handshake message: encrypted to the fleet key,
/// so the frontend can neither read nor change which user the session is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHello {
    pub version: u8,
    pub user_id: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VaultRequest {
    /// Record state and guesses remaining. Needs no credential.
    Status,
    /// OPAQUE RegistrationRequest. Allowed when no usable record exists, or
    /// after a successful login in this session (password change).
    RegisterStart { registration_request: Vec<u8> },
    /// OPAQUE RegistrationUpload plus the wrapped key. Stored as *pending*:
    /// not usable until confirmed, so a retried registration can never reset
    /// the counter of a live record.
    RegisterFinish {
        upload: Vec<u8>,
        wrapped_key: Vec<u8>,
        guess_limit: u32,
        /// SHA-256 of a secret only the client knows.
        confirm_hash: [u8; 32],
    },
    /// Makes the pending record live. Idempotent for the same secret.
    RegisterConfirm { confirm_secret: [u8; 32] },
    /// OPAQUE CredentialRequest. The HSM commits `attempts += 1` before it answers.
    LoginStart { credential_request: Vec<u8> },
    /// OPAQUE CredentialFinalization. On success the HSM commits `attempts = 0`
    /// and returns the wrapped key.
    LoginFinish { credential_finalization: Vec<u8> },
    /// Deletes the record. Needs a successful login in this session.
    Delete,
    /// Ends this session. Only its own key can send it, so only the session's
    /// owner can end it.
    Close,
}

// Requests carry OPAQUE messages; keep them out of Debug output regardless.
impl std::fmt::Debug for VaultRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            VaultRequest::Status => "Status",
            VaultRequest::RegisterStart { .. } => "RegisterStart",
            VaultRequest::RegisterFinish { .. } => "RegisterFinish",
            VaultRequest::RegisterConfirm { .. } => "RegisterConfirm",
            VaultRequest::LoginStart { .. } => "LoginStart",
            VaultRequest::LoginFinish { .. } => "LoginFinish",
            VaultRequest::Delete => "Delete",
            VaultRequest::Close => "Close",
        };
        f.write_str(name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordState {
    /// No record for this user.
    Absent,
    /// Registered but not yet confirmed (not usable).
    Pending,
    /// Usable.
    Active { attempts: u32, guess_limit: u32 },
    /// Destroyed after too many wrong guesses; the wrapped key is erased.
    Destroyed,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VaultResponse {
    Status {
        state: RecordState,
    },
    RegisterStarted {
        registration_response: Vec<u8>,
    },
    RegisterStored,
    RegisterConfirmed,
    /// `guesses_remaining` counts this attempt as already used.
    LoginStarted {
        credential_response: Vec<u8>,
        guesses_remaining: u32,
    },
    LoginOk {
        wrapped_key: Vec<u8>,
    },
    Deleted,
    Error(VaultError),
    /// The session is ended.
    Closed,
}

impl std::fmt::Debug for VaultResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VaultResponse::Status { state } => write!(f, "Status({state:?})"),
            VaultResponse::RegisterStarted { .. } => f.write_str("RegisterStarted"),
            VaultResponse::RegisterStored => f.write_str("RegisterStored"),
            VaultResponse::RegisterConfirmed => f.write_str("RegisterConfirmed"),
            VaultResponse::LoginStarted {
                guesses_remaining, ..
            } => write!(f, "LoginStarted(remaining={guesses_remaining})"),
            VaultResponse::LoginOk { .. } => f.write_str("LoginOk(<wrapped key>)"),
            VaultResponse::Deleted => f.write_str("Deleted"),
            VaultResponse::Error(e) => write!(f, "Error({e:?})"),
            VaultResponse::Closed => f.write_str("Closed"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum VaultError {
    #[error("no backup record for this user")]
    NoRecord,
    #[error("the backup record was destroyed after too many wrong guesses")]
    Destroyed,
    #[error("wrong password; {guesses_remaining} guesses remaining")]
    WrongPassword { guesses_remaining: u32 },
    #[error("this operation needs a successful login in this session")]
    NotAuthenticated,
    #[error("a live record exists; log in first to replace it")]
    RecordExists,
    #[error("no pending registration matches this confirmation")]
    NoPendingRegistration,
    #[error("the record changed concurrently; retry")]
    Conflict,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the vault is unavailable")]
    Unavailable,
}
