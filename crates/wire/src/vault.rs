//! Messages between a client and the HSM, carried inside the Noise session.
//! The frontend never sees these in the clear.

use serde::{Deserialize, Serialize};

/// Largest encoded vault request or response.
pub const MAX_VAULT_MESSAGE: usize = 16 * 1024;
/// Largest wrapped backup key the vault stores.
pub const MAX_WRAPPED_KEY: usize = 256;
/// Guess limits a record may carry.
pub const MIN_GUESS_LIMIT: u32 = 1;
/// Largest guess limit a record may carry (a fleet's policy may allow fewer).
pub const MAX_GUESS_LIMIT: u32 = 100;
/// Guess limit used when none is configured: the CLI's registrations and a new fleet's policy.
pub const DEFAULT_GUESS_LIMIT: u32 = 10;

/// Payload of the first Noise handshake message: encrypted to the fleet key,
/// so the frontend can neither read nor change which user the session is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHello {
    /// Hello layout version; the node accepts only 1.
    pub version: u8,
    /// The user the session is for; must equal the user id the frontend relays.
    pub user_id: String,
}

/// A request from the client to the vault inside the Noise session (variant order is part of the
/// format: docs/formats.md).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VaultRequest {
    /// Record state and guesses remaining. Needs no credential.
    Status,
    /// OPAQUE RegistrationRequest. Allowed when no usable record exists, or
    /// after a successful login in this session (password change).
    RegisterStart {
        /// Serialized OPAQUE `RegistrationRequest` (RFC 9807).
        registration_request: Vec<u8>,
    },
    /// OPAQUE RegistrationUpload plus the wrapped key. Stored as *pending*:
    /// not usable until confirmed, so a retried registration can never reset
    /// the counter of a live record.
    RegisterFinish {
        /// Serialized OPAQUE `RegistrationUpload`.
        upload: Vec<u8>,
        /// The password-wrapped backup key (docs/formats.md), 1 to [`MAX_WRAPPED_KEY`] bytes.
        wrapped_key: Vec<u8>,
        /// Counted logins that destroy the record ([`MIN_GUESS_LIMIT`] to the fleet's maximum).
        guess_limit: u32,
        /// SHA-256 of a secret only the client knows.
        confirm_hash: [u8; 32],
    },
    /// Makes the pending record live. Idempotent for the same secret.
    RegisterConfirm {
        /// The secret whose SHA-256 is the pending registration's `confirm_hash`.
        confirm_secret: [u8; 32],
    },
    /// OPAQUE CredentialRequest. The HSM commits `attempts += 1` before it answers.
    LoginStart {
        /// Serialized OPAQUE `CredentialRequest`.
        credential_request: Vec<u8>,
    },
    /// OPAQUE CredentialFinalization. On success the HSM commits `attempts = 0`
    /// and returns the wrapped key.
    LoginFinish {
        /// Serialized OPAQUE `CredentialFinalization`.
        credential_finalization: Vec<u8>,
    },
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
        /// Serialized OPAQUE `RegistrationUpload` (as in `RegisterFinish`).
        upload: Vec<u8>,
        /// The wrapped backup key (as in `RegisterFinish`).
        wrapped_key: Vec<u8>,
        /// The record's guess limit (as in `RegisterFinish`).
        guess_limit: u32,
        /// SHA-256 of a secret only the client knows (as in `RegisterFinish`).
        confirm_hash: [u8; 32],
        /// The old fleet's `Intent` ticket naming this registration's [`pending_digest`].
        intent: SignedMoveTicket,
    },
    /// On the old fleet, after a successful login in this session: the record moves to
    /// `to_fleet`, where the registration with `pending_digest` takes its place. The old record
    /// keeps no key and grants no further guess; the answer is the move ticket.
    MoveOut {
        /// Id of the fleet the record moves to.
        to_fleet: String,
        /// The [`pending_digest`] of the registration stored there by `RegisterFinishMove`.
        pending_digest: [u8; 32],
    },
    /// On the old fleet: the ticket of a record that moved (no login needed: it is public).
    GetMoveTicket,
    /// On the new fleet: makes the pending registration the ticket names live, with the
    /// attempts the old record had counted.
    MoveIn {
        /// The old fleet's `Moved` ticket for this record.
        ticket: SignedMoveTicket,
    },
    /// On the old fleet, after a successful login in this session: an intent ticket for moving
    /// the record to `to_fleet` as the registration with `pending_digest` (nothing changes).
    MoveIntent {
        /// Id of the fleet the record is to move to.
        to_fleet: String,
        /// The [`pending_digest`] of the registration the client will store there.
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

/// The state of a user's record, as [`VaultResponse::Status`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordState {
    /// No record for this user.
    Absent,
    /// Registered but not yet confirmed (not usable).
    Pending,
    /// Usable.
    Active {
        /// Logins counted since the last successful one.
        attempts: u32,
        /// Counted logins at which a failed login destroys the record.
        guess_limit: u32,
    },
    /// Destroyed after too many wrong guesses; the wrapped key is erased.
    Destroyed,
    /// Appended: moved to another fleet (its key erased here; `GetMoveTicket` names where).
    Moved,
}

/// The vault's answer to a [`VaultRequest`] inside the Noise session (variant order is part of
/// the format).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VaultResponse {
    /// The answer to [`VaultRequest::Status`].
    Status {
        /// The user's record state.
        state: RecordState,
    },
    /// The answer to [`VaultRequest::RegisterStart`].
    RegisterStarted {
        /// Serialized OPAQUE `RegistrationResponse`.
        registration_response: Vec<u8>,
    },
    /// The registration is stored as pending (the answer to `RegisterFinish`).
    RegisterStored,
    /// The pending record is live (the answer to `RegisterConfirm`).
    RegisterConfirmed,
    /// `guesses_remaining` counts this attempt as already used.
    LoginStarted {
        /// Serialized OPAQUE `CredentialResponse`.
        credential_response: Vec<u8>,
        /// Logins left before the record is destroyed, this one already counted.
        guesses_remaining: u32,
    },
    /// The login succeeded: the counted attempts are reset to 0.
    LoginOk {
        /// The wrapped backup key stored at registration.
        wrapped_key: Vec<u8>,
    },
    /// The record is deleted (the answer to `Delete`).
    Deleted,
    /// The request was refused.
    Error(VaultError),
    /// The session is ended.
    Closed,
    /// Appended: a move's registration is stored.
    MoveStored,
    /// Appended: the record moved; this ticket makes it live on the new fleet.
    MoveTicket {
        /// The old fleet's signed ticket (step `Moved`, or `Intent` for `MoveIntent`).
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

/// Why the vault refused a request (sent in [`VaultResponse::Error`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum VaultError {
    /// The user has no record.
    #[error("no backup record for this user")]
    NoRecord,
    /// The record was destroyed when its guess limit was reached.
    #[error("the backup record was destroyed after too many wrong guesses")]
    Destroyed,
    /// The login failed; the attempt stays counted.
    #[error("wrong password; {guesses_remaining} guesses remaining")]
    WrongPassword {
        /// Logins left before the record is destroyed.
        guesses_remaining: u32,
    },
    /// The request needs a successful login in this session first.
    #[error("this operation needs a successful login in this session")]
    NotAuthenticated,
    /// A live record exists and this request may not replace it.
    #[error("a live record exists; log in first to replace it")]
    RecordExists,
    /// No pending registration matches the confirmation.
    #[error("no pending registration matches this confirmation")]
    NoPendingRegistration,
    /// The record changed while the request was being served; retry.
    #[error("the record changed concurrently; retry")]
    Conflict,
    /// The request is malformed, out of order or out of range; the text says why.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The vault could not read the user's record from its store.
    #[error("the vault is unavailable")]
    Unavailable,
    /// Appended last (older encodings unchanged): too many registrations were started for
    /// this user in this session or today.
    #[error("too many registrations started for this user; try again later")]
    TooManyRegistrations,
    /// Appended: the record moved to another fleet.
    #[error("the backup record moved to fleet {to_fleet}")]
    Moved {
        /// Id of the fleet the record moved to.
        to_fleet: String,
    },
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
    /// Ticket layout version, [`MOVE_TICKET_VERSION`].
    pub version: u8,
    /// The move step the ticket allows.
    pub step: MoveStep,
    /// Id of the old fleet, whose move key signs the ticket.
    pub from_fleet: String,
    /// Id of the new fleet the record moves to.
    pub to_fleet: String,
    /// The moving record's id ([`crate::record_id`] of the user).
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
    /// `encode(MoveTicket)`: the exact bytes signed (at most [`MAX_MOVE_TICKET`]).
    pub ticket: Vec<u8>,
    /// 64-byte Ed25519 signature by the old fleet's move key.
    pub signature: Vec<u8>,
}
