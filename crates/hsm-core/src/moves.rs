//! Move tickets (docs/formats.md "Moving a record"; issue 27, item 5): what the old fleet's
//! cores sign when a record moves, and what the new fleet's cores check before the pending
//! registration a ticket names becomes live.
//!
//! The old record is erased and grants no guess from the moment it moved (`MoveOut`), and the
//! new one starts from the old one's count, so the two together never grant more than the
//! limit, whatever messages the operator drops. A ticket is the only proof that makes a move's
//! pending registration live, so registering first on the new fleet locks nobody out.

use crate::keys::{FleetSecrets, FleetTrust};
use crate::state::RecordId;
use bkv_wire::vault::{
    MoveStep, MoveTicket, SignedMoveTicket, MAX_MOVE_TICKET, MOVE_TICKET_CONTEXT,
    MOVE_TICKET_VERSION,
};
use ed25519_dalek::Signer;

fn message(ticket: &[u8]) -> Vec<u8> {
    let mut m = MOVE_TICKET_CONTEXT.to_vec();
    m.extend_from_slice(ticket);
    m
}

/// Signs `t` with this fleet's move key (deterministic: every member signs alike).
pub(crate) fn sign(secrets: &FleetSecrets, t: &MoveTicket) -> SignedMoveTicket {
    let ticket = bkv_wire::encode(t);
    let signature = secrets
        .move_signing_key()
        .sign(&message(&ticket))
        .to_bytes()
        .to_vec();
    SignedMoveTicket { ticket, signature }
}

/// Why a move ticket is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoveTicketError {
    /// The ticket's body does not decode.
    #[error("the ticket does not decode: {0}")]
    Malformed(String),
    /// The ticket's version is not the one this release reads.
    #[error("unsupported ticket version {0}")]
    Version(u8),
    /// The ticket allows another step of the move (an intent where the move is needed, or the
    /// reverse).
    #[error("a {found:?} ticket where a {needed:?} ticket is needed")]
    WrongStep {
        /// The step the ticket allows.
        found: MoveStep,
        /// The step it was presented for.
        needed: MoveStep,
    },
    /// The ticket moves the record to another fleet (the one named).
    #[error("the ticket moves the record to {0:?}")]
    OtherFleet(String),
    /// The ticket names another record.
    #[error("the ticket names another record")]
    OtherRecord,
    /// The ticket comes from a fleet (the one named) this fleet did not pin as a predecessor.
    #[error("{0:?} is not a fleet whose records may move here")]
    UnknownPredecessor(String),
    /// The signature is not the predecessor's move key's over the ticket.
    #[error("not signed by the predecessor's move key")]
    BadSignature,
}

/// Checks a ticket for `step` presented to fleet `fleet_id` for `record_id`: signed by the move
/// key of a predecessor the fleet pinned, naming that predecessor, this fleet and this record.
pub(crate) fn verify(
    trust: &FleetTrust,
    fleet_id: &str,
    record_id: &RecordId,
    step: MoveStep,
    signed: &SignedMoveTicket,
) -> Result<MoveTicket, MoveTicketError> {
    let t: MoveTicket = bkv_wire::decode(&signed.ticket, MAX_MOVE_TICKET)
        .map_err(|e| MoveTicketError::Malformed(e.to_string()))?;
    if t.version != MOVE_TICKET_VERSION {
        return Err(MoveTicketError::Version(t.version));
    }
    if t.step != step {
        return Err(MoveTicketError::WrongStep {
            found: t.step,
            needed: step,
        });
    }
    if t.to_fleet != fleet_id {
        return Err(MoveTicketError::OtherFleet(t.to_fleet));
    }
    if &t.record_id != record_id {
        return Err(MoveTicketError::OtherRecord);
    }
    let Some(from) = trust
        .predecessors
        .iter()
        .find(|p| p.fleet_id == t.from_fleet)
    else {
        return Err(MoveTicketError::UnknownPredecessor(t.from_fleet));
    };
    let key = ed25519_dalek::VerifyingKey::from_bytes(&from.move_key)
        .map_err(|_| MoveTicketError::BadSignature)?;
    let sig = ed25519_dalek::Signature::from_slice(&signed.signature)
        .map_err(|_| MoveTicketError::BadSignature)?;
    key.verify_strict(&message(&signed.ticket), &sig)
        .map_err(|_| MoveTicketError::BadSignature)?;
    Ok(t)
}

/// The digest a ticket names a stored move registration by: that of the `RegisterFinishMove`
/// it came from (the stored record's `ServerRegistration` bytes are the upload's).
pub(crate) fn digest_of(record_id: &RecordId, c: &crate::state::Credential) -> [u8; 32] {
    let (_, registration) = crate::credential::split(record_id, &c.opaque_record);
    bkv_wire::vault::pending_digest(registration, &c.wrapped_key, c.guess_limit, &c.confirm_hash)
}
