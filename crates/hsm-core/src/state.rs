//! The replicated state: user records and the mutations that change them.
//!
//! [`State::apply`] is deterministic and total: every node applies the same
//! committed [`Mutation`]s in the same order and reaches the same state. Each
//! mutation re-checks its own preconditions (record generation, counters), so a
//! mutation proposed against a state that has since changed is a no-op with a
//! `Rejected`/`Stale` outcome rather than a corruption.

use crate::members::Members;
use bkv_wire::admin::AdminError;
use bkv_wire::vault::{RecordState, SignedMoveTicket};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use zeroize::{Zeroize, ZeroizeOnDrop};

mod mutation;
mod outcome;
pub use mutation::Mutation;
pub use outcome::Outcome;

/// A record's id: domain-separated SHA-256 of the user id ([`bkv_wire::record_id`]).
pub type RecordId = [u8; 32];

/// A password credential: the OPAQUE record plus the key it protects.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Credential {
    /// Serialised OPAQUE `ServerRegistration` (RFC 9807 registration record).
    pub opaque_record: Vec<u8>,
    /// The backup key K encrypted under a key derived from the OPAQUE export
    /// key: the HSM never sees K in the clear.
    pub wrapped_key: Vec<u8>,
    /// Guesses the record allows: a failed login that uses the last one destroys the record
    /// (chosen at registration, at most the fleet's policy).
    pub guess_limit: u32,
    /// SHA-256 of the client's confirmation secret for this registration.
    pub confirm_hash: [u8; 32],
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential(limit={}, <redacted>)", self.guess_limit)
    }
}

/// A registration stored but not yet confirmed: [`Mutation::Activate`] makes it live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The credential it makes live.
    pub credential: Credential,
    /// Generation of the live record this registration replaces (password
    /// change after login), or `None` for a fresh registration.
    pub replaces: Option<u64>,
}

/// What a record holds for logins: an active credential, or what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Live {
    /// A credential logins run against.
    Active {
        /// The live credential.
        credential: Credential,
        /// Guesses counted against the credential; a successful login sets it back to zero.
        attempts: u32,
    },
    /// Tombstone: the credential and wrapped key are erased.
    Destroyed,
    /// The record moved to `to_fleet` (its credential erased here): the pending registration
    /// with `pending_digest` takes its place there, starting from `attempts`. Grants no guess.
    /// Appended last (record encoding 2).
    Moved {
        /// The id of the fleet the record moved to.
        to_fleet: String,
        /// The digest of the registration that takes its place there
        /// ([`bkv_wire::vault::pending_digest`]).
        pending_digest: [u8; 32],
        /// The guess count the record moved with (the new fleet starts from it).
        attempts: u32,
    },
}

/// How many `RegisterStart`s a record had on one day (the fleet clock's day number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCount {
    /// Day number: Unix seconds / 86,400 on the proposing core's clock.
    pub day: u32,
    /// `RegisterStart`s counted that day (at most [`MAX_REGISTER_STARTS_PER_DAY`]).
    pub count: u32,
}

/// `RegisterStart`s one record id may have per day ([`Mutation::CountRegisterStart`]):
/// registration, a password change, a key rotation and a fleet move each need one.
pub const MAX_REGISTER_STARTS_PER_DAY: u32 = 12;

/// One user's record (record encoding 2, docs/formats.md "Records on disk"; encoding 1 lacked
/// `register_starts` and is read as a count of zero).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Changes whenever the live credential changes (activate, destroy);
    /// unique across the whole state, never reused.
    pub generation: u64,
    /// The live credential or what became of it; `None` until a registration is confirmed or
    /// moved in.
    pub live: Option<Live>,
    /// A registration waiting for its confirmation (a first one, or a password change).
    pub pending: Option<Pending>,
    /// `RegisterStart`s counted today: committed, so restarting a node does not reset them.
    pub register_starts: DayCount,
    /// A registration moving here from an earlier fleet, stored with the old fleet's intent
    /// ticket: apart from `pending`, so nobody without that ticket can replace it, and made
    /// live only by the old fleet's move ticket ([`Mutation::MoveIn`]).
    pub moving_in: Option<MovingIn>,
}

/// A move's registration waiting for its move ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovingIn {
    /// The moving registration's credential.
    pub credential: Credential,
    /// What the tickets name it by (`bkv_wire::vault::pending_digest`).
    pub pending_digest: [u8; 32],
}

impl Record {
    fn new(generation: u64) -> Self {
        Record {
            generation,
            live: None,
            pending: None,
            register_starts: DayCount::default(),
            moving_in: None,
        }
    }
}

/// The replicated state every node reaches by applying the same committed entries: records,
/// the fleet's members and the log's position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Each record behind an `Arc` so that cloning the state copies the map, not the records: a
    /// snapshot clones it under the replica lock and encodes it outside (at 10⁶ users the
    /// encoding takes a good part of a second, which would stall every request on the node),
    /// and a write meanwhile copies only the record it changes. The encoding is that of the
    /// records themselves.
    pub records: BTreeMap<RecordId, Arc<Record>>,
    /// Source of record generations; only grows.
    pub next_generation: u64,
    /// The fleet's admitted members and the admin sequence number.
    pub members: Members,
    /// Per proposing core (its identity key): the sequence number of its last applied log
    /// entry (`crate::entry`). An entry numbered at or below it is refused.
    pub proposers: BTreeMap<[u8; 32], u64>,
    /// Hash chain over every log entry this state processed, applied or refused
    /// ([`crate::entry::chain_step`]; zeros before the first).
    pub chain: [u8; 32],
    /// How many log entries the chain covers.
    pub entries: u64,
}

/// A move ticket's body (its signature is a core's to check, `crate::moves`).
fn ticket(signed: &SignedMoveTicket) -> Option<bkv_wire::vault::MoveTicket> {
    bkv_wire::decode(&signed.ticket, bkv_wire::vault::MAX_MOVE_TICKET).ok()
}

/// Encoding version of [`State`] written now (docs/formats.md "Records on disk"): 3 adds the
/// proposers' sequence numbers and the entry chain to encoding 2. Records keep encoding 2.
pub const STATE_ENCODING: u8 = 3;

impl State {
    /// The state's canonical bytes (state encoding 3).
    pub fn encode(&self) -> Vec<u8> {
        bkv_wire::encode_as(STATE_ENCODING, self)
    }

    /// Decodes encoding 3, or encodings 1 and 2 of earlier releases (read with no proposer and
    /// an empty chain).
    pub fn decode(bytes: &[u8], limit: usize) -> Result<State, bkv_wire::CodecError> {
        match bkv_wire::encoding_version(bytes, limit)? {
            1 => Ok(bkv_wire::decode::<crate::legacy::StateV1>(bytes, limit)?.into()),
            2 => Ok(bkv_wire::decode_as::<crate::legacy::StateV2>(bytes, limit, 2)?.into()),
            STATE_ENCODING => bkv_wire::decode_as(bytes, limit, STATE_ENCODING),
            v => Err(bkv_wire::CodecError::Version(v)),
        }
    }

    /// Takes a log entry of `proposer` numbered `seq` in its place, or says why not: it must be
    /// numbered above the proposer's last applied entry.
    pub(crate) fn take_seq(
        &mut self,
        proposer: &[u8; 32],
        seq: u64,
    ) -> Result<(), crate::entry::Refusal> {
        let last = self.proposers.get(proposer).copied().unwrap_or(0);
        if seq <= last {
            return Err(crate::entry::Refusal::OutOfOrder { seq, last });
        }
        self.proposers.insert(*proposer, seq);
        Ok(())
    }

    /// What a client is told of record `id` ([`State::status_of`]).
    pub fn status(&self, id: &RecordId) -> RecordState {
        Self::status_of(self.records.get(id).map(|r| &**r))
    }

    /// What a client is told of a record (absent, pending, active, destroyed).
    pub fn status_of(r: Option<&Record>) -> RecordState {
        match r {
            None => RecordState::Absent,
            Some(r) => match &r.live {
                Some(Live::Active {
                    credential,
                    attempts,
                }) => RecordState::Active {
                    attempts: *attempts,
                    guess_limit: credential.guess_limit,
                },
                Some(Live::Destroyed) => RecordState::Destroyed,
                Some(Live::Moved { .. }) => RecordState::Moved,
                None if r.pending.is_some() => RecordState::Pending,
                None => RecordState::Absent,
            },
        }
    }

    /// Records that are active or pending (not destroyed, not absent).
    pub fn live_records(&self) -> u64 {
        self.records
            .values()
            .filter(|r| r.pending.is_some() || matches!(r.live, Some(Live::Active { .. })))
            .count() as u64
    }

    /// The live credential and its generation, if the record is active.
    pub fn active(&self, id: &RecordId) -> Option<(&Credential, u32, u64)> {
        Self::active_of(self.records.get(id)?)
    }

    /// The record's live credential, attempts and generation, if it is active.
    pub fn active_of(r: &Record) -> Option<(&Credential, u32, u64)> {
        match &r.live {
            Some(Live::Active {
                credential,
                attempts,
            }) => Some((credential, *attempts, r.generation)),
            _ => None,
        }
    }

    fn fresh_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Applies a mutation. Admin commands need the fleet's trust anchors,
    /// which only a core holds: [`crate::Core::apply`] verifies them; this
    /// refuses them.
    pub fn apply(&mut self, m: &Mutation) -> Outcome {
        let Some(id) = m.record_id().copied() else {
            return match m {
                Mutation::Found {
                    node_id,
                    addr,
                    statement,
                } => self.members.found(*node_id, addr, statement),
                // Entries are batched by the log (`crate::entry::Entries`): a batch mutation is
                // an earlier release's form, refused without effect.
                Mutation::Batch(_) => Outcome::NotBatchable,
                _ => Outcome::AdminRefused(AdminError::Refused(
                    "this replica holds no trust anchors".into(),
                )),
            };
        };
        match m {
            Mutation::Found { .. }
            | Mutation::Admin(_)
            | Mutation::AdminAt { .. }
            | Mutation::Batch(_) => Outcome::Stale,
            Mutation::StorePending { pending, .. } => {
                let rec = self.record_or_new(id);
                let live_gen = match &rec.live {
                    Some(Live::Active { .. }) => Some(rec.generation),
                    Some(Live::Moved { .. }) => return Outcome::Moved,
                    _ => None,
                };
                if live_gen.is_some() && pending.replaces != live_gen {
                    return Outcome::RecordExists;
                }
                rec.pending = Some(pending.clone());
                Outcome::Stored
            }
            Mutation::Activate { confirm_hash, .. } => {
                let gen = self.fresh_generation();
                let Some(rec) = self.records.get_mut(&id).map(Arc::make_mut) else {
                    return Outcome::NoPending;
                };
                if let Some(p) = &rec.pending {
                    if p.credential.confirm_hash == *confirm_hash {
                        let live_gen = match &rec.live {
                            Some(Live::Active { .. }) => Some(rec.generation),
                            _ => None,
                        };
                        if live_gen.is_some() && p.replaces != live_gen {
                            rec.pending = None;
                            return Outcome::Stale;
                        }
                        let credential = p.credential.clone();
                        rec.pending = None;
                        rec.live = Some(Live::Active {
                            credential,
                            attempts: 0,
                        });
                        rec.generation = gen;
                        return Outcome::Activated { generation: gen };
                    }
                }
                match &rec.live {
                    Some(Live::Active { credential, .. })
                        if credential.confirm_hash == *confirm_hash =>
                    {
                        Outcome::AlreadyActive
                    }
                    _ => Outcome::NoPending,
                }
            }
            Mutation::CountGuess { generation, .. } => {
                let Some(rec) = self.records.get_mut(&id).map(Arc::make_mut) else {
                    return Outcome::NoRecord;
                };
                if rec.generation != *generation {
                    return Outcome::Stale;
                }
                match &mut rec.live {
                    Some(Live::Active {
                        credential,
                        attempts,
                    }) => {
                        if *attempts >= credential.guess_limit {
                            return Outcome::Exhausted;
                        }
                        *attempts += 1;
                        Outcome::Counted {
                            attempts: *attempts,
                            guess_limit: credential.guess_limit,
                        }
                    }
                    _ => Outcome::NoRecord,
                }
            }
            Mutation::ResetGuesses { generation, .. } => {
                let Some(rec) = self.records.get_mut(&id).map(Arc::make_mut) else {
                    return Outcome::NoRecord;
                };
                if rec.generation != *generation {
                    return Outcome::Stale;
                }
                match &mut rec.live {
                    Some(Live::Active { attempts, .. }) => {
                        *attempts = 0;
                        Outcome::Reset
                    }
                    _ => Outcome::NoRecord,
                }
            }
            Mutation::Destroy { generation, .. } => {
                let gen = self.fresh_generation();
                let Some(rec) = self.records.get_mut(&id).map(Arc::make_mut) else {
                    return Outcome::NoRecord;
                };
                if rec.generation != *generation {
                    return Outcome::Stale;
                }
                match &rec.live {
                    Some(Live::Active { .. }) => {
                        // Dropping the Live value zeroizes the credential.
                        rec.live = Some(Live::Destroyed);
                        rec.pending = None;
                        rec.generation = gen;
                        Outcome::Destroyed
                    }
                    _ => Outcome::NoRecord,
                }
            }
            Mutation::Delete { generation, .. } => {
                match self.records.get(&id) {
                    Some(rec) if rec.generation == *generation => {}
                    Some(_) => return Outcome::Stale,
                    None => return Outcome::NoRecord,
                }
                self.records.remove(&id);
                Outcome::Deleted
            }
            Mutation::CountRegisterStart { day, .. } => {
                let rec = self.record_or_new(id);
                let c = &mut rec.register_starts;
                if *day > c.day {
                    *c = DayCount {
                        day: *day,
                        count: 0,
                    };
                }
                if c.count >= MAX_REGISTER_STARTS_PER_DAY {
                    return Outcome::TooManyRegisterStarts;
                }
                c.count += 1;
                Outcome::RegisterStartCounted
            }
            Mutation::StorePendingMove {
                credential, intent, ..
            } => {
                let Some(t) = ticket(intent) else {
                    return Outcome::BadTicket("the ticket does not decode".into());
                };
                let rec = self.record_or_new(id);
                if matches!(rec.live, Some(Live::Moved { .. })) {
                    return Outcome::Moved;
                }
                rec.moving_in = Some(MovingIn {
                    credential: credential.clone(),
                    pending_digest: t.pending_digest,
                });
                Outcome::Stored
            }
            Mutation::MoveOut {
                generation,
                to_fleet,
                pending_digest,
                ..
            } => {
                let gen = self.fresh_generation();
                let Some(rec) = self.records.get_mut(&id).map(Arc::make_mut) else {
                    return Outcome::NoRecord;
                };
                if rec.generation != *generation {
                    return Outcome::Stale;
                }
                let Some(Live::Active { attempts, .. }) = &rec.live else {
                    return Outcome::NoRecord;
                };
                let attempts = *attempts;
                // Dropping the Live value zeroizes the credential.
                rec.live = Some(Live::Moved {
                    to_fleet: to_fleet.clone(),
                    pending_digest: *pending_digest,
                    attempts,
                });
                rec.pending = None;
                rec.moving_in = None;
                rec.generation = gen;
                Outcome::MovedOut { attempts }
            }
            Mutation::MoveIn { ticket: signed, .. } => {
                let Some(t) = ticket(signed) else {
                    return Outcome::BadTicket("the ticket does not decode".into());
                };
                let gen = self.fresh_generation();
                let Some(rec) = self.records.get_mut(&id).map(Arc::make_mut) else {
                    return Outcome::NoPending;
                };
                let Some(m) = rec
                    .moving_in
                    .take_if(|m| m.pending_digest == t.pending_digest)
                else {
                    return Outcome::NoPending;
                };
                let attempts = t.attempts.min(m.credential.guess_limit);
                rec.live = Some(Live::Active {
                    credential: m.credential.clone(),
                    attempts,
                });
                rec.generation = gen;
                Outcome::Activated { generation: gen }
            }
        }
    }

    /// The record `id`, created empty (with a fresh generation) if absent.
    fn record_or_new(&mut self, id: RecordId) -> &mut Record {
        let gen = self.fresh_generation();
        Arc::make_mut(
            self.records
                .entry(id)
                .or_insert_with(|| Arc::new(Record::new(gen))),
        )
    }
}

#[cfg(test)]
mod tests;
