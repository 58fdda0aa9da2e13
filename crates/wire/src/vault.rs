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
    // Appended (older encodings unchanged): moving a record to the next fleet (docs/formats.md
    // "Moving a record").
    /// On the new fleet, after `RegisterStart`, instead of `RegisterFinish`: stores the move's
    /// registration beside whatever record is there (someone may have registered first). Only
    /// the old fleet's intent ticket for exactly this registration ([`pending_digest`]) lets it
    /// be stored, and only its move ticket makes it live.
    RegisterFinishMove {
        upload: Vec<u8>,
        wrapped_key: Vec<u8>,
        guess_limit: u32,
        confirm_hash: [u8; 32],
        intent: SignedMoveTicket,
    },
    /// On the old fleet, after a successful login in this session: the record moves to
    /// `to_fleet`, where the registration with `pending_digest` takes its place. The old record
    /// keeps no key and grants no further guess; the answer is the move ticket.
    MoveOut {
        to_fleet: String,
        pending_digest: [u8; 32],
    },
    /// On the old fleet: the ticket of a record that moved (no login needed: it is public).
    GetMoveTicket,
    /// On the new fleet: makes the pending registration the ticket names live, with the
    /// attempts the old record had counted.
    MoveIn { ticket: SignedMoveTicket },
    /// On the old fleet, after a successful login in this session: an intent ticket for moving
    /// the record to `to_fleet` as the registration with `pending_digest` (nothing changes).
    MoveIntent {
        to_fleet: String,
        pending_digest: [u8; 32],
    },
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
            VaultRequest::RegisterFinishMove { .. } => "RegisterFinishMove",
            VaultRequest::MoveOut { .. } => "MoveOut",
            VaultRequest::GetMoveTicket => "GetMoveTicket",
            VaultRequest::MoveIn { .. } => "MoveIn",
            VaultRequest::MoveIntent { .. } => "MoveIntent",
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
    /// Appended: moved to another fleet (its key erased here; `GetMoveTicket` names where).
    Moved,
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
    /// Appended: a move's registration is stored.
    MoveStored,
    /// Appended: the record moved; this ticket makes it live on the new fleet.
    MoveTicket {
        ticket: SignedMoveTicket,
    },
    /// Appended: the moved record is live here.
    MovedIn,
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
            VaultResponse::MoveStored => f.write_str("MoveStored"),
            VaultResponse::MoveTicket { .. } => f.write_str("MoveTicket"),
            VaultResponse::MovedIn => f.write_str("MovedIn"),
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
    /// Appended last (older encodings unchanged): too many registrations were started for
    /// this user in this session or today.
    #[error("too many registrations started for this user; try again later")]
    TooManyRegistrations,
    /// Appended: the record moved to another fleet.
    #[error("the backup record moved to fleet {to_fleet}")]
    Moved { to_fleet: String },
    /// Appended: a move ticket that does not verify or does not fit this record.
    #[error("move ticket refused: {0}")]
    BadTicket(String),
}

/// Version of [`MoveTicket`].
pub const MOVE_TICKET_VERSION: u8 = 1;
/// Domain separation of a move ticket's signature.
pub const MOVE_TICKET_CONTEXT: &[u8] = b"bkv move ticket v1\0";
/// Domain separation of a pending registration's digest ([`MoveTicket::pending_digest`]).
pub const PENDING_DIGEST_CONTEXT: &[u8] = b"bkv move pending v1\0";
/// Largest encoded ticket.
pub const MAX_MOVE_TICKET: usize = 1024;

/// Which step of a move a ticket allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveStep {
    /// The user logged in on the old fleet and means to move: the new fleet may store the
    /// named registration (nothing changed on the old fleet).
    Intent,
    /// The old record moved (erased there): the new fleet makes the named registration live.
    Moved,
}

/// What the old fleet's cores say when a record moves (docs/formats.md "Moving a record"),
/// signed with the old fleet's move key. The new fleet pins that key; it stores a move's
/// registration only with an `Intent` ticket naming it, and makes it live only with a `Moved`
/// ticket, starting from `attempts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveTicket {
    pub version: u8,
    pub step: MoveStep,
    pub from_fleet: String,
    pub to_fleet: String,
    pub record_id: [u8; 32],
    /// The registration on the new fleet ([`pending_digest`]).
    pub pending_digest: [u8; 32],
    /// The guesses the old record had counted when it moved.
    pub attempts: u32,
}

/// What a move ticket names of the registration it moves to:
/// `SHA-256(PENDING_DIGEST_CONTEXT || encode((upload, wrapped_key, guess_limit, confirm_hash)))`
/// of a `RegisterFinishMove` (the client computes it before the new fleet stores anything).
pub fn pending_digest(
    upload: &[u8],
    wrapped_key: &[u8],
    guess_limit: u32,
    confirm_hash: &[u8; 32],
) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(PENDING_DIGEST_CONTEXT);
    h.update(crate::encode(&(
        upload,
        wrapped_key,
        guess_limit,
        confirm_hash,
    )));
    h.finalize().into()
}

/// A ticket's canonical bytes and the old fleet's Ed25519 signature over
/// `MOVE_TICKET_CONTEXT || ticket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedMoveTicket {
    pub ticket: Vec<u8>,
    pub signature: Vec<u8>,
}
