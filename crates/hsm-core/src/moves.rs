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

/// Checks a ticket for `step` presented to fleet `fleet_id` for `record_id`: signed by the move
/// key of a predecessor the fleet pinned, naming that predecessor, this fleet and this record.
pub(crate) fn verify(
    trust: &FleetTrust,
    fleet_id: &str,
    record_id: &RecordId,
    step: MoveStep,
    signed: &SignedMoveTicket,
) -> Result<MoveTicket, String> {
    let t: MoveTicket = bkv_wire::decode(&signed.ticket, MAX_MOVE_TICKET)
        .map_err(|e| format!("the ticket does not decode: {e}"))?;
    if t.version != MOVE_TICKET_VERSION {
        return Err(format!("unsupported ticket version {}", t.version));
    }
    if t.step != step {
        return Err(format!(
            "a {:?} ticket where a {step:?} ticket is needed",
            t.step
        ));
    }
    if t.to_fleet != fleet_id {
        return Err(format!("the ticket moves the record to {:?}", t.to_fleet));
    }
    if &t.record_id != record_id {
        return Err("the ticket names another record".into());
    }
    let Some(from) = trust
        .predecessors
        .iter()
        .find(|p| p.fleet_id == t.from_fleet)
    else {
        return Err(format!(
            "{:?} is not a fleet whose records may move here",
            t.from_fleet
        ));
    };
    let key = ed25519_dalek::VerifyingKey::from_bytes(&from.move_key)
        .map_err(|_| "the predecessor's move key is invalid".to_string())?;
    let sig = ed25519_dalek::Signature::from_slice(&signed.signature)
        .map_err(|_| "malformed signature".to_string())?;
    key.verify_strict(&message(&signed.ticket), &sig)
        .map_err(|_| "not signed by the predecessor's move key".to_string())?;
    Ok(t)
}

/// The digest a ticket names a stored move registration by: that of the `RegisterFinishMove`
/// it came from (the stored record's `ServerRegistration` bytes are the upload's).
pub(crate) fn digest_of(record_id: &RecordId, c: &crate::state::Credential) -> [u8; 32] {
    let (_, registration) = crate::credential::split(record_id, &c.opaque_record);
    bkv_wire::vault::pending_digest(registration, &c.wrapped_key, c.guess_limit, &c.confirm_hash)
}
