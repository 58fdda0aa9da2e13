//! The mutations log entries carry: what every core applies, in log order.

use super::{Credential, Pending, RecordId};
use bkv_wire::admin::{SignedAdminCommand, SignedStatement};
use bkv_wire::vault::SignedMoveTicket;
use serde::{Deserialize, Serialize};

/// A log entry: every change to a record is one of these, committed before any
/// response that depends on it is released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// Stores a registration as the record's pending one: refused if the record is live and the
    /// registration does not name its generation.
    StorePending {
        /// The record it changes.
        record_id: RecordId,
        /// The registration to store.
        pending: Pending,
    },
    /// Makes the pending registration with `confirm_hash` live, under a fresh generation.
    Activate {
        /// The record it changes.
        record_id: RecordId,
        /// SHA-256 of the client's confirmation secret: must match the pending credential's.
        confirm_hash: [u8; 32],
    },
    /// Counts a login guess against the live record, before the login is answered.
    CountGuess {
        /// The record it changes.
        record_id: RecordId,
        /// The generation the proposing core saw: another makes the mutation [`Outcome::Stale`].
        generation: u64,
    },
    /// Sets the live record's guess count back to zero after a successful login.
    ResetGuesses {
        /// The record it changes.
        record_id: RecordId,
        /// The generation the login ran against: another makes the mutation [`Outcome::Stale`].
        generation: u64,
    },
    /// Erases the live credential, leaving a tombstone: the record's guesses are used up.
    Destroy {
        /// The record it changes.
        record_id: RecordId,
        /// The generation the proposing core saw: another makes the mutation [`Outcome::Stale`].
        generation: u64,
    },
    /// Removes the record entirely: its logged-in user deleted it.
    Delete {
        /// The record removed.
        record_id: RecordId,
        /// The generation the session logged in to: another makes the mutation [`Outcome::Stale`].
        generation: u64,
    },
    /// The fleet's first member: the node that formed the fleet records its
    /// own statement. Valid only while the fleet has no member.
    Found {
        /// The founder's node id.
        node_id: u64,
        /// The founder's peer-link address.
        addr: String,
        /// The founder's platform statement, signed by its platform key.
        statement: SignedStatement,
    },
    /// An operator command; every member's core verifies the signature, the
    /// sequence number and the auditor's log proof when it applies it.
    Admin(SignedAdminCommand),
    /// An earlier release's group commit (record mutations in one log entry). Log entries are
    /// batched by the log now ([`crate::entry::Entries`]): refused without effect
    /// ([`Outcome::NotBatchable`]). Kept so that later variants keep their encoding.
    Batch(Vec<Mutation>),
    // Appended (issue 27; earlier entries keep their encoding).
    /// Counts a `RegisterStart` on `day` (the proposing core's clock; a day earlier than the
    /// record's counts on the record's day) before the OPRF is evaluated.
    CountRegisterStart {
        /// The record the registration is for.
        record_id: RecordId,
        /// Day number: Unix seconds / 86,400 on the proposing core's clock.
        day: u32,
    },
    /// A move's registration, stored with the old fleet's intent ticket naming it (every core
    /// verifies the ticket when it applies this), beside whatever record is here: only
    /// [`Mutation::MoveIn`] with the move ticket naming it makes it live.
    StorePendingMove {
        /// The record the registration moves to.
        record_id: RecordId,
        /// The moving registration's credential.
        credential: Credential,
        /// The old fleet's signed intent ticket naming this registration.
        intent: SignedMoveTicket,
    },
    /// The record moves to `to_fleet`: its credential is erased here and it grants no guess.
    MoveOut {
        /// The record that moves out.
        record_id: RecordId,
        /// The generation the proposing core saw: another makes the mutation [`Outcome::Stale`].
        generation: u64,
        /// The id of the fleet the record moves to.
        to_fleet: String,
        /// The digest of the registration that takes its place there
        /// ([`bkv_wire::vault::pending_digest`]).
        pending_digest: [u8; 32],
    },
    /// Makes the pending registration a move ticket names live, with the old record's count.
    /// Every core verifies the ticket when it applies this ([`crate::Core::apply`]).
    MoveIn {
        /// The record the moving registration waits in.
        record_id: RecordId,
        /// The old fleet's signed move ticket naming the registration.
        ticket: SignedMoveTicket,
    },
    /// An operator command with the time the proposing core read from its platform: every
    /// member checks the command's expiry against it, and it may not go back behind the time
    /// of the fleet's previous command ([`crate::members::Members::clock`]).
    AdminAt {
        /// The signed operator command.
        command: SignedAdminCommand,
        /// Unix seconds on the proposing core's platform clock when it proposed the command.
        proposed_at: u64,
    },
}

impl Mutation {
    /// The record a record mutation changes (`None` for fleet mutations).
    pub fn record_id(&self) -> Option<&RecordId> {
        match self {
            Mutation::StorePending { record_id, .. }
            | Mutation::Activate { record_id, .. }
            | Mutation::CountGuess { record_id, .. }
            | Mutation::ResetGuesses { record_id, .. }
            | Mutation::Destroy { record_id, .. }
            | Mutation::Delete { record_id, .. }
            | Mutation::CountRegisterStart { record_id, .. }
            | Mutation::StorePendingMove { record_id, .. }
            | Mutation::MoveOut { record_id, .. }
            | Mutation::MoveIn { record_id, .. } => Some(record_id),
            Mutation::Found { .. }
            | Mutation::Admin(_)
            | Mutation::AdminAt { .. }
            | Mutation::Batch(_) => None,
        }
    }
}
