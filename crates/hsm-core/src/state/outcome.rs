//! What applying a mutation did ([`Outcome`]): public, told to the session that made the entry.
//! Variants are appended only (the encoding is the variant's index).

use bkv_wire::admin::AdminError;
use serde::{Deserialize, Serialize};

/// What applying a mutation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A registration was stored (pending, or moving in).
    Stored,
    /// A registration became live (a confirmation, or a move's ticket).
    Activated {
        /// The live record's new generation.
        generation: u64,
    },
    /// The confirmed registration was live already (a confirmation resent): nothing changed.
    AlreadyActive,
    /// The guess was counted: `attempts` now includes it.
    Counted {
        /// The record's guess count now, this guess included.
        attempts: u32,
        /// The record's guess limit.
        guess_limit: u32,
    },
    /// The record is at its limit: nothing was counted.
    Exhausted,
    /// The guess count was set back to zero.
    Reset,
    /// The live credential was erased; a tombstone remains.
    Destroyed,
    /// The record was removed.
    Deleted,
    /// The record is absent or destroyed.
    NoRecord,
    /// A live record exists and the mutation was not authorised to replace it.
    RecordExists,
    /// No pending or moving registration matches the confirmation hash or ticket: nothing changed.
    NoPending,
    /// The record's generation changed since the mutation was proposed.
    Stale,
    /// The founding member was recorded.
    Founded,
    /// An admin command was verified and executed.
    AdminApplied {
        /// The command's sequence number.
        seq: u64,
    },
    /// An admin command was refused; nothing changed.
    AdminRefused(AdminError),
    /// An earlier release's outcome of a batch (kept for the encoding of later variants).
    Batch(Vec<Outcome>),
    /// A [`Mutation::Batch`]: refused, nothing changed.
    NotBatchable,
    /// The record's bucket is full (records on disk, `crate::sealed_state`): nothing changed.
    /// Appended last so earlier outcomes keep their encoding.
    StoreFull,
    // Appended (issue 27).
    /// The `RegisterStart` was counted: the OPRF may be evaluated.
    RegisterStartCounted,
    /// The record had its day's `RegisterStart`s: nothing changed.
    TooManyRegisterStarts,
    /// The record moved out with this count.
    MovedOut {
        /// The record's guess count, which the move ticket carries to the new fleet.
        attempts: u32,
    },
    /// The record moved to another fleet: nothing changed.
    Moved,
    /// A move ticket that does not verify or does not fit: nothing changed.
    BadTicket(String),
    /// A guess limit above the fleet's policy: nothing changed.
    AbovePolicy {
        /// The fleet's largest allowed guess limit ([`crate::FleetTrust::max_guess_limit`]).
        max: u32,
    },
    // Appended (issue 28).
    /// The log entry was refused before its mutation was looked at (`crate::entry`): nothing
    /// changed.
    Refused(crate::entry::Refusal),
}
