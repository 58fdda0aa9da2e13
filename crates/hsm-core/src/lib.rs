// One file on purpose: the core's request state machine (sessions, logins, the guess rule's
// count-before-answer order) reads in one place; keys, state, members and sealing live beside it.
//! bkv HSM core: the trusted, deterministic, I/O-free part of a vault node.
//!
//! It terminates client Noise `NK` sessions, runs the OPAQUE server, and owns
//! the record [`State`]. It never writes state directly: a request that needs a
//! change yields [`Step::Commit`] with a [`Mutation`]; the host makes that
//! mutation durable (one node: a sealed, fsynced write; a fleet: a majority
//! commit), then calls [`Core::apply`] and [`Core::resume`]. Only then is the
//! response released, so a guess is always counted before it is answered.
//!
//! # Keys never leave the core
//!
//! The core holds the fleet's secrets ([`FleetSecrets`]) and the node's
//! identity key ([`NodeIdentity`]); the [`Platform`] holds the sealing and
//! signing keys and offers only operations on them. No public function of
//! this crate returns a sealing key, identity private key, OPRF key or fleet
//! secret in the clear: secrets leave only sealed by the platform
//! ([`FleetSecrets::seal`], [`NodeIdentity::seal`]) or encrypted to an
//! admitted member's identity key ([`Core::export_secrets_to`]), and key
//! holders have redacting `Debug`. Keep it so: a new accessor that returns
//! key bytes, or a `Platform` method that does, breaks the boundary
//! SECURITY.md describes. Key fields are private, constructors take
//! randomness from the platform, and `#![forbid(unsafe_code)]` holds.

#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]
// The core's no-panic rule, enforced rather than kept by habit (tests may unwrap).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod commitment;
mod credential;
pub mod entry;
mod keys;
mod legacy;
pub mod members;
mod moves;
mod outcomes;
pub use moves::MoveTicketError;
pub mod platform;
mod requests;
pub mod seal;
pub mod sealed_state;
pub mod snapshot;
pub mod state;

use bkv_wire::admin::{AdminError, SignedAdminCommand};
use bkv_wire::node::{NodeError, SessionId};
use bkv_wire::vault::{
    MoveStep, SessionHello, VaultError, VaultRequest, VaultResponse, MAX_GUESS_LIMIT,
    MAX_VAULT_MESSAGE, MAX_WRAPPED_KEY, MIN_GUESS_LIMIT,
};
use bkv_wire::{OpaqueSuite, MAX_NOISE_MESSAGE, NOISE_PATTERN, NOISE_PROLOGUE, OPAQUE_CONTEXT};
pub use entry::{Entries, EntryKey, LogEntry, Refusal};
pub use keys::{
    FleetSecrets, FleetTrust, NodeIdentity, PeerHandshake, Predecessor, MAX_PREDECESSORS,
    PEER_PATTERN, PEER_PROLOGUE,
};
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
};
#[cfg(any(test, feature = "testing"))]
pub use platform::MemoryPlatform;
pub use platform::{
    CoreCounter, CoreSlot, Counter, Platform, PlatformError, SealSlot, SharedPlatform,
};
pub use sealed_state::{BucketHost, SealedError, SealedState};
use sha2::{Digest, Sha256};
pub use state::{Mutation, Outcome, RecordId, State, MAX_REGISTER_STARTS_PER_DAY};
use std::collections::HashMap;
use zeroize::Zeroizing;

/// Most sessions a node holds at once. When the table is full a new session
/// takes the place of an unused one, else of the least recently used session
/// of whichever user holds the most: nobody is locked out by others' sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Sessions one user holds at once; opening another ends that user's least
/// recently used one (a user can only crowd out their own sessions).
pub const MAX_SESSIONS_PER_USER: usize = 4;
/// `RegisterStart`s one session may make (a registration needs one; a retry after an error a
/// second).
pub const MAX_REGISTER_STARTS_PER_SESSION: u32 = 3;
/// Idle seconds after which a session is forgotten.
pub const DEFAULT_SESSION_IDLE_SECS: u64 = 300;
/// Seconds a session that was opened but never carried a request is kept.
pub const UNUSED_SESSION_SECS: u64 = 10;
/// Seconds a session waiting for its commit is kept whatever else happens (a host proposes for
/// at most a few seconds): past them, a commit that never came back (no leader, a host that
/// never answers) leaves the session to expire and be evicted like any other.
pub const COMMIT_WAIT_SECS: u64 = 60;

/// Why the core refused or failed an operation its host asked for (keys, peer links, records,
/// snapshots). Client requests fail with [`NodeError`] instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// Fleet secrets, a node identity or the pinned trust are malformed, unsupported, not for this
    /// node, or a key operation on them failed.
    #[error("fleet secrets are invalid: {0}")]
    Secrets(&'static str),
    /// The platform failed (randomness, sealing, signing or its counter).
    #[error(transparent)]
    Platform(PlatformError),
    /// A peer-link Noise handshake failed, or its keys were asked for before it finished.
    #[error("peer-link handshake failed")]
    Handshake,
    /// [`Core::export_secrets_to`] refused: the recipient is not an admitted member, or this
    /// core's state is behind its counter.
    #[error("refusing to send fleet secrets: {0}")]
    NotAdmitted(&'static str),
    /// The sealed record store failed, or refused what the host handed it ([`SealedError`]).
    #[error(transparent)]
    Records(#[from] SealedError),
    /// A snapshot frame was refused: a stream this core did not open (or forgot), or a bucket
    /// framed again with another value.
    #[error("snapshot stream: {0}")]
    Stream(&'static str),
}

/// A snapshot stream a core opened: its nonce, and the digest of the sealed value each bucket was
/// framed from.
type SnapshotStream = ([u8; 32], HashMap<u16, [u8; 32]>);

/// Snapshot streams a core keeps open at once (a member sends one at a time; a retry opens a
/// new one).
pub const MAX_SNAPSHOT_STREAMS: usize = 4;

/// What the host must do next for a request.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum Step {
    /// Send this Noise ciphertext back to the client.
    Reply(Vec<u8>),
    /// Make this log entry durable (majority commit) as it is; once this node's core applied
    /// it ([`Core::apply`], which keeps the outcome for the session), call [`Core::resume`].
    Commit(LogEntry),
    /// The request reads replicated state: bring this replica up to date
    /// with everything committed before now (a read barrier), then call
    /// [`Core::resume_fresh`]. Requests that read nothing but their
    /// session and their own commit's outcome (`LoginFinish`, the
    /// registration's finish and confirm, `Close`) never ask, which spares
    /// a recovery one leadership round.
    ReadFresh,
}

/// What a session waits for after proposing a mutation.
enum Awaiting {
    /// A request that reads state, decoded and held until the host says
    /// the replica is fresh. Nothing is committed yet: the session may be
    /// forgotten meanwhile, and a resent request asks again.
    Fresh(VaultRequest),
    Stored,
    Confirmed,
    /// The guess was counted on this generation of the record: the login
    /// runs against it or not at all (a replacement may land in between).
    Counted {
        credential_request: Vec<u8>,
        generation: u64,
    },
    LoginReset {
        generation: u64,
    },
    DestroyedThenFail,
    Deleted,
    /// A `RegisterStart` waits for its count to commit; then the OPRF is evaluated.
    RegisterCounted {
        registration_request: Vec<u8>,
        replaces: Replaces,
    },
    MoveStored,
    MovedOut,
    MovedIn,
}

/// What a registration started in a session may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replaces {
    /// No live record.
    Nothing,
    /// The live record of this generation, which this session logged in to.
    Live(u64),
    /// A live record this session did not log in to: only a move's ticket replaces it.
    OnlyByMove,
}

/// A registration between its `RegisterStart` and its finish.
#[derive(Clone, Copy)]
struct Registering {
    replaces: Replaces,
    /// The salt of this registration's OPRF key (`credential`).
    oprf_salt: [u8; credential::SALT_LEN],
}

struct LoginState {
    server_login: ServerLogin<OpaqueSuite>,
    generation: u64,
    attempts: u32,
    guess_limit: u32,
}

struct Session {
    user_id: String,
    record_id: RecordId,
    transport: snow::TransportState,
    last_used: u64,
    /// Whether a request ever decrypted in this session.
    used: bool,
    login: Option<LoginState>,
    /// Generation of the record this session logged in to.
    authenticated: Option<u64>,
    /// Set by a counted RegisterStart, taken by the finish.
    registering: Option<Registering>,
    /// `RegisterStart`s this session made ([`MAX_REGISTER_STARTS_PER_SESSION`]).
    register_starts: u32,
    awaiting: Option<Awaiting>,
    /// SHA-256 of the request being answered, and of the last answered one
    /// with its reply: a relay that resends a request (its link broke) gets
    /// the same reply instead of a second processing.
    current: Option<[u8; 32]>,
    last: Option<([u8; 32], Vec<u8>)>,
    /// When the session last proposed a mutation (platform seconds).
    committed_at: u64,
    /// The sequence number of the entry the session waits for, and that entry's outcome once
    /// this core applied it: the outcome the session continues with is always the one this
    /// core computed, never one a host hands in.
    awaiting_seq: Option<u64>,
    applied: Option<Outcome>,
}

impl Session {
    /// Waiting for a mutation to commit: its reply is on the way, so the session stays for up
    /// to [`COMMIT_WAIT_SECS`] (a session waiting for a fresh read has committed nothing and
    /// may go; one whose commit never came back goes like an idle one).
    fn committing(&self, now: u64) -> bool {
        self.awaiting
            .as_ref()
            .is_some_and(|a| !matches!(a, Awaiting::Fresh(_)))
            && now.saturating_sub(self.committed_at) < COMMIT_WAIT_SECS
    }

    /// Holds a counted guess: its `LoginStart` committed the count (or is committing it) and
    /// its `LoginFinish` has not come yet. Evicting it would burn the user's guess, so a full
    /// table never does (it still expires when idle).
    fn holds_login(&self) -> bool {
        self.login.is_some() || matches!(self.awaiting, Some(Awaiting::Counted { .. }))
    }

    /// Whether resuming it makes another entry (a count that found the limit reached commits
    /// the record's destruction, `Core::resume`) instead of answering.
    fn resume_commits(&self) -> bool {
        matches!(self.awaiting, Some(Awaiting::Counted { .. }))
            && matches!(self.applied, Some(Outcome::Exhausted))
    }

    /// May go to make room for another session.
    fn evictable(&self, now: u64) -> bool {
        !self.committing(now) && !self.holds_login()
    }
}

/// A vault node's trusted core: client sessions, the sealed record state and the fleet's keys.
/// The host feeds it client messages and committed log entries and relays what it returns.
pub struct Core {
    platform: SharedPlatform,
    secrets: FleetSecrets,
    /// This node's identity key: the proposer named in the entries this core makes.
    identity: [u8; 32],
    entry_key: EntryKey,
    snapshot_key: snapshot::SnapshotKey,
    /// Nonces of the entries this core makes (seeded from the platform).
    rng: rand_chacha::ChaCha20Rng,
    /// The sequence number of the last entry this core made.
    last_seq: u64,
    /// Entries this core made that a session waits for, by sequence number.
    /// This core's entries whose sessions wait for them: by sequence number, the session and
    /// the entry's digest ([`entry::entry_digest`]). Only that very entry answers the session:
    /// a number can come round again (a host that sets the platform clock back across a
    /// restart), and another entry with it must not hand its outcome to this session.
    pending: HashMap<u64, (SessionId, [u8; 32])>,
    /// Sessions whose outcome [`Core::apply`] kept since [`Core::release_ready`] last ran.
    ready: Vec<SessionId>,
    setup: ServerSetup<OpaqueSuite>,
    state: SealedState,
    /// The core's platform counter (read when the core starts, raised by [`Core::release`]):
    /// how many log entries its state covered when an outcome last left this core or an
    /// earlier run on the same platform. An outcome leaves ([`Core::resume`]) only once the
    /// counter covers the entry that decided it, and a state behind it — a record table and
    /// log put back by the host, at a restart or under the running core — serves nothing
    /// until the log brought it this far again ([`Core::serving`]).
    released: u64,
    /// The snapshot streams this core opened, newest last: each stream's nonce and, for every
    /// bucket framed in it, the digest of the sealed value framed. A frame's key and nonce
    /// follow from the stream nonce and the bucket number, so framing one bucket twice with
    /// different values would reuse a keystream: refused ([`Core::snapshot_frame`]).
    streams: std::collections::VecDeque<SnapshotStream>,
    sessions: HashMap<SessionId, Session>,
    max_sessions: usize,
    session_idle_secs: u64,
    /// The platform second sessions were last expired in: expiry scans the
    /// whole table (up to `max_sessions`), so it runs once per second, not
    /// once per message.
    expired_at: Option<u64>,
}

impl Core {
    /// A core with an empty state: a host restores what it stored through [`Core::records`]
    /// (`SealedState::restore`, which checks it), or the state arrives through the log and
    /// authenticated snapshots. A core never takes a plain state from its host.
    pub fn new(
        platform: SharedPlatform,
        secrets: FleetSecrets,
        identity: &NodeIdentity,
    ) -> Result<Self, CoreError> {
        let state = SealedState::new(platform.clone(), secrets.bucket_key());
        Self::over(platform, secrets, identity, state)
    }

    /// A core over `state`, its records sealed into buckets it keeps until a host takes them
    /// (tests that restart a core from its exported state).
    #[cfg(any(test, feature = "testing"))]
    pub fn from_state_for_tests(
        platform: SharedPlatform,
        secrets: FleetSecrets,
        identity: &NodeIdentity,
        state: State,
    ) -> Result<Self, CoreError> {
        let state = SealedState::from_state(platform.clone(), secrets.bucket_key(), state)?;
        Self::over(platform, secrets, identity, state)
    }

    fn over(
        platform: SharedPlatform,
        secrets: FleetSecrets,
        identity: &NodeIdentity,
        state: SealedState,
    ) -> Result<Self, CoreError> {
        let setup = secrets.opaque_setup()?;
        let rng = platform::operation_rng(&*platform).map_err(CoreError::Platform)?;
        let released = platform
            .counter_read(Counter::CORE)
            .map_err(CoreError::Platform)?;
        Ok(Core {
            released,
            entry_key: secrets.entry_key(),
            snapshot_key: secrets.snapshot_key(),
            identity: identity.public_key(),
            rng,
            last_seq: 0,
            pending: HashMap::new(),
            ready: Vec::new(),
            platform,
            secrets,
            setup,
            state,
            streams: Default::default(),
            sessions: HashMap::new(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            session_idle_secs: DEFAULT_SESSION_IDLE_SECS,
            expired_at: None,
        })
    }

    /// Sets the session table's size and the idle seconds after which a used session is forgotten
    /// (defaults [`DEFAULT_MAX_SESSIONS`], [`DEFAULT_SESSION_IDLE_SECS`]).
    pub fn set_session_limits(&mut self, max_sessions: usize, idle_secs: u64) {
        self.max_sessions = max_sessions;
        self.session_idle_secs = idle_secs;
        self.expired_at = None;
    }

    /// The platform this core runs on, shared with its host.
    pub fn platform(&self) -> &SharedPlatform {
        &self.platform
    }

    /// The id of the fleet whose secrets this core holds.
    pub fn fleet_id(&self) -> &str {
        self.secrets.fleet_id()
    }

    /// The fleet's Noise static public key, which clients open their `NK` sessions to.
    pub fn noise_public_key(&self) -> [u8; 32] {
        self.secrets.noise_public_key()
    }

    /// The trust anchors and policy pinned in the fleet secrets.
    pub fn trust(&self) -> &FleetTrust {
        self.secrets.trust()
    }

    /// The fleet part of the state (members, generations); records are reached through
    /// [`Core::records`].
    pub fn state(&self) -> &State {
        self.state.fleet()
    }

    /// The records and their store: the host restores, installs and persists through it. A
    /// snapshot installed there leaves open sessions standing; every later mutation re-checks
    /// its record's generation.
    pub fn records(&mut self) -> &mut SealedState {
        &mut self.state
    }

    /// Records that are active or pending.
    pub fn live_records(&self) -> u64 {
        self.state.live_records()
    }

    /// Sessions in the table now, idle ones not yet expired included.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Applies a committed log entry. Deterministic: every replica calls this with the same
    /// entries in the same order. The entry is checked first (`crate::entry`: made by a core
    /// of this fleet, proposed by a member, in its proposer's order) and refused otherwise;
    /// admin commands are then verified here, on every member, against the trust anchors
    /// pinned in the fleet secrets. The outcome of an entry this core made is kept for the
    /// session that waits for it ([`Core::resume`]).
    ///
    /// An error means the record store failed or was tampered with (a bucket the commitment
    /// refuses): the entry's effect is unknown and the host must stop, not go on.
    pub fn apply(&mut self, e: &LogEntry) -> Result<Outcome, CoreError> {
        // While the fleet has no member, only its founder holds the entry key.
        let admitted = |s: &State, p: &[u8; 32]| s.members.nodes.is_empty() || s.members.admits(p);
        let outcome = match self.state.admit_entry(&self.entry_key, e, admitted) {
            Ok(m) => self.apply_mutation(&m)?,
            Err(r) => Outcome::Refused(r),
        };
        if e.proposer == self.identity {
            let waiting = self.pending.get(&e.seq).map(|(sid, d)| (*sid, *d));
            if let Some((sid, digest)) = waiting {
                if digest == entry::entry_digest(e) {
                    self.pending.remove(&e.seq);
                    let mut kept = false;
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        if s.awaiting_seq == Some(e.seq) {
                            s.applied = Some(outcome.clone());
                            kept = true;
                        }
                    }
                    if kept {
                        // A host that never asks for them (it resumes one by one) must not
                        // grow the list: it keeps only sessions still waiting.
                        if self.ready.len() >= 2 * self.max_sessions.max(1) {
                            let sessions = &self.sessions;
                            self.ready
                                .retain(|r| sessions.get(r).is_some_and(|s| s.applied.is_some()));
                        }
                        self.ready.push(sid);
                    }
                }
            }
        }
        Ok(outcome)
    }

    fn apply_mutation(&mut self, m: &Mutation) -> Result<Outcome, CoreError> {
        Ok(match m {
            Mutation::Admin(signed) => {
                let members = &mut self.state.fleet_mut().members;
                // Unstamped commands are an earlier release's entries, replayed from its log;
                // once a stamped one applied, an unstamped one would dodge the expiry check.
                if members.clock > 0 {
                    return Ok(Outcome::AdminRefused(AdminError::Refused(
                        "an admin command without the time it was proposed at".into(),
                    )));
                }
                match members.check(self.secrets.trust(), self.secrets.fleet_id(), signed) {
                    Ok((cmd, effect)) => members.execute(cmd.seq, effect),
                    Err(e) => Outcome::AdminRefused(e),
                }
            }
            Mutation::AdminAt {
                command,
                proposed_at,
            } => {
                let members = &mut self.state.fleet_mut().members;
                match members.check(self.secrets.trust(), self.secrets.fleet_id(), command) {
                    Ok((cmd, _)) if cmd.not_after < *proposed_at => {
                        Outcome::AdminRefused(AdminError::Expired {
                            not_after: cmd.not_after,
                            now: *proposed_at,
                        })
                    }
                    Ok(_) if *proposed_at < members.clock => {
                        Outcome::AdminRefused(AdminError::Refused(format!(
                            "proposed at {proposed_at}, before the fleet's last command ({})",
                            members.clock
                        )))
                    }
                    Ok((cmd, effect)) => {
                        members.clock = *proposed_at;
                        members.execute(cmd.seq, effect)
                    }
                    Err(e) => Outcome::AdminRefused(e),
                }
            }
            // Entries are batched by the log (`Entries`); a batch mutation in an entry is an
            // earlier release's form.
            Mutation::Batch(_) => Outcome::NotBatchable,
            m if m.record_id().is_some() => self.apply_record(m)?,
            _ => self.state.apply(m)?,
        })
    }

    /// One record mutation, after the checks that need what only a core holds (the fleet's
    /// policy and predecessors): the same on every core, so replicas never diverge.
    fn apply_record(&mut self, m: &Mutation) -> Result<Outcome, CoreError> {
        let (trust, fleet) = (self.secrets.trust(), self.secrets.fleet_id());
        let limit = match m {
            Mutation::StorePending { pending, .. } => Some(pending.credential.guess_limit),
            Mutation::StorePendingMove { credential, .. } => Some(credential.guess_limit),
            _ => None,
        };
        if limit.is_some_and(|l| l > trust.max_guess_limit) {
            return Ok(Outcome::AbovePolicy {
                max: trust.max_guess_limit,
            });
        }
        let checked = match m {
            Mutation::MoveIn { record_id, ticket } => {
                moves::verify(trust, fleet, record_id, MoveStep::Moved, ticket)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Mutation::StorePendingMove {
                record_id,
                credential,
                intent,
            } => match moves::verify(trust, fleet, record_id, MoveStep::Intent, intent) {
                Ok(t) if moves::digest_of(record_id, credential) == t.pending_digest => Ok(()),
                Ok(_) => Err("the intent names another registration".to_owned()),
                Err(e) => Err(e.to_string()),
            },
            _ => Ok(()),
        };
        if let Err(e) = checked {
            return Ok(Outcome::BadTicket(e));
        }
        Ok(self.state.apply(m)?)
    }

    /// The public key this fleet's cores sign move tickets with (a successor fleet pins it).
    pub fn move_public_key(&self) -> [u8; 32] {
        self.secrets.move_public_key()
    }

    /// The entry that proposes a signed command: checked now, and stamped with this core's
    /// time, which every member checks the command's expiry against when it applies the entry.
    pub fn admin_entry(&mut self, signed: SignedAdminCommand) -> Result<LogEntry, AdminError> {
        self.check_admin(&signed)?;
        let m = Mutation::AdminAt {
            command: signed,
            proposed_at: self.platform.now_unix_secs(),
        };
        Ok(self.make_entry(&m))
    }

    /// The next sequence number for an entry of this core: above its last one and above its
    /// last applied one, and from the platform's clock (seconds × 2²⁰), so that a restarted
    /// core does not normally reuse the numbers of entries it made before and that may still
    /// commit. The clock is the host's: if it goes back across a restart, a number can come
    /// again; then one of the two entries is refused as out of order, and neither hands its
    /// outcome to the other's session (`pending` holds each entry's digest).
    fn next_seq(&mut self) -> u64 {
        let applied = self
            .state
            .fleet()
            .proposers
            .get(&self.identity)
            .copied()
            .unwrap_or(0);
        // The clock is the host's: capped (year ~36,800) so that a far-future clock cannot push
        // this core's numbers to the end of the range, where no later entry could follow.
        let clock = self.platform.now_unix_secs().min(1 << 40) << 20;
        self.last_seq = self
            .last_seq
            .saturating_add(1)
            .max(applied.saturating_add(1))
            .max(clock);
        self.last_seq
    }

    /// Seals `m` into this core's next entry.
    fn make_entry(&mut self, m: &Mutation) -> LogEntry {
        let seq = self.next_seq();
        self.entry_key.seal(self.identity, seq, &mut self.rng, m)
    }

    /// An entry of this core carrying `m` as it is: tests and benchmarks that drive the state
    /// machine directly.
    #[cfg(any(test, feature = "testing"))]
    pub fn entry_for_tests(&mut self, m: &Mutation) -> LogEntry {
        self.make_entry(m)
    }

    /// Makes an entry of `m` and applies it at once (a one-node log, in tests).
    #[cfg(any(test, feature = "testing"))]
    #[allow(clippy::panic)] // test-only: a failing in-memory store is a broken test
    pub fn apply_for_tests(&mut self, m: Mutation) -> Outcome {
        let e = self.make_entry(&m);
        match self.apply(&e) {
            Ok(o) => o,
            Err(e) => panic!("applying in memory failed: {e}"),
        }
    }

    /// Checks a signed command before the leader proposes it (the same
    /// checks every member repeats when applying it, plus its expiry).
    pub fn check_admin(&self, signed: &SignedAdminCommand) -> Result<(), AdminError> {
        let (cmd, _) = self.state.fleet().members.check(
            self.secrets.trust(),
            self.secrets.fleet_id(),
            signed,
        )?;
        let now = self.platform.now_unix_secs();
        if cmd.not_after < now {
            return Err(AdminError::Expired {
                not_after: cmd.not_after,
                now,
            });
        }
        Ok(())
    }

    /// The entry that records this node as the fleet's founding member.
    pub fn found_entry(
        &mut self,
        node_id: u64,
        addr: &str,
        identity: &NodeIdentity,
        binary_sha256: [u8; 32],
    ) -> Result<LogEntry, CoreError> {
        let m = Mutation::Found {
            node_id,
            addr: addr.to_owned(),
            statement: identity.statement(&*self.platform, binary_sha256)?,
        };
        Ok(self.make_entry(&m))
    }

    /// This node's signed fleet statement (see [`NodeIdentity::fleet_statement`]).
    pub fn fleet_statement(
        &self,
        node_id: u64,
        identity: &NodeIdentity,
        binary_sha256: [u8; 32],
    ) -> Result<bkv_wire::admin::SignedFleetStatement, CoreError> {
        identity.fleet_statement(&*self.platform, &self.secrets, node_id, binary_sha256)
    }

    /// The header of a snapshot of the state the stored summary `summary` describes, with a
    /// fresh stream nonce (`crate::snapshot`): returns the header, the position the summary
    /// names and the nonce the stream's frames are made with ([`Core::snapshot_frame`]).
    pub fn snapshot_header(&mut self, summary: &[u8]) -> Result<snapshot::StreamStart, CoreError> {
        let mut nonce = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut self.rng, &mut nonce);
        let (header, position) = self
            .state
            .snapshot_header(&self.snapshot_key, nonce, summary)?;
        if self.streams.len() >= MAX_SNAPSHOT_STREAMS {
            self.streams.pop_front();
        }
        self.streams.push_back((nonce, HashMap::new()));
        Ok(snapshot::StreamStart {
            header,
            position,
            nonce,
        })
    }

    /// The frame of bucket `b` (its sealed value from the host's table) in the snapshot stream
    /// with `nonce`.
    /// Refused for a stream this core did not open (or has forgotten: it keeps the newest
    /// [`MAX_SNAPSHOT_STREAMS`]), and for a bucket framed before in the stream with another
    /// value: the host may ask again for a frame it lost, never for a second plaintext under the
    /// same keystream.
    pub fn snapshot_frame(
        &mut self,
        nonce: [u8; 32],
        b: u16,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CoreError> {
        let digest: [u8; 32] = Sha256::digest(sealed).into();
        let framed = self
            .streams
            .iter_mut()
            .find(|(n, _)| *n == nonce)
            .map(|(_, framed)| framed)
            .ok_or(CoreError::Stream("not a snapshot stream this core opened"))?;
        if framed.get(&b).is_some_and(|d| *d != digest) {
            return Err(CoreError::Stream(
                "a bucket framed again with another value in one stream",
            ));
        }
        let frame = self
            .state
            .snapshot_frame(&self.snapshot_key, nonce, b, sealed)?;
        framed.insert(b, digest);
        Ok(frame)
    }

    /// Starts installing a snapshot a member's core sent (`crate::snapshot`): refused unless a
    /// core of this fleet made its header, and unless it is at least as new as this core's
    /// state and of the same history.
    pub fn open_snapshot(&self, header: &[u8]) -> Result<sealed_state::Installer, CoreError> {
        Ok(self.state.open_snapshot(&self.snapshot_key, header)?)
    }

    /// The fleet secrets encrypted to `identity`, which must be the
    /// identity key of an admitted member (verified operator command and
    /// auditor log proof, or the founder). The host only relays the result.
    pub fn export_secrets_to(&self, identity: &[u8; 32]) -> Result<Vec<u8>, CoreError> {
        // A state put back behind the counter may still list a member removed since.
        if self.serving().is_err() {
            return Err(CoreError::NotAdmitted(
                "this core's state is behind its counter: it decides no admission until it caught up",
            ));
        }
        if !self.state.fleet().members.admits(identity) {
            return Err(CoreError::NotAdmitted(
                "that identity key is not an admitted member of this fleet",
            ));
        }
        self.secrets.encrypt_to(&*self.platform, identity)
    }

    /// Forgets idle sessions (a session waiting for a commit stays: its
    /// reply is on the way).
    fn expire_sessions(&mut self, now: u64) {
        if self.expired_at == Some(now) {
            return;
        }
        self.expired_at = Some(now);
        let idle = self.session_idle_secs;
        self.sessions.retain(|_, s| {
            let age = now.saturating_sub(s.last_used);
            s.committing(now) || age < if s.used { idle } else { UNUSED_SESSION_SECS }
        });
    }

    /// Makes room for one more session of `record_id`: ends the user's least
    /// recently used session at their cap, and when the table is full ends an
    /// unused session, else the least recently used one of the user holding
    /// the most (ties: the least recently used session among them). Sessions
    /// waiting for a commit are never ended, and other users never end a
    /// session holding a counted login: that would burn its guess (a session
    /// waiting for a fresh read has committed nothing and may go).
    fn make_room(&mut self, record_id: &RecordId, now: u64) -> Result<(), NodeError> {
        // The user's own cap may end the user's own sessions, even one holding a counted login
        // (last): whoever can open sessions as the user can spend the user's guesses anyway.
        let mine = self
            .sessions
            .values()
            .filter(|s| s.record_id == *record_id)
            .count();
        if mine >= MAX_SESSIONS_PER_USER {
            let victim = self
                .sessions
                .iter()
                .filter(|(_, s)| !s.committing(now) && s.record_id == *record_id)
                .min_by_key(|(_, s)| (s.holds_login(), s.used, s.last_used))
                .map(|(id, _)| *id)
                .ok_or(NodeError::Busy)?;
            self.sessions.remove(&victim);
            return Ok(());
        }
        if self.sessions.len() < self.max_sessions {
            return Ok(());
        }
        let unused = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.used && s.evictable(now))
            .min_by_key(|(_, s)| s.last_used)
            .map(|(id, _)| *id);
        let victim = match unused {
            Some(v) => Some(v),
            None => {
                // Per user: sessions held, and the least recently used evictable one.
                let mut held: HashMap<RecordId, (usize, Option<(u64, SessionId)>)> = HashMap::new();
                for (id, s) in &self.sessions {
                    let e = held.entry(s.record_id).or_default();
                    e.0 += 1;
                    if s.evictable(now) && e.1.is_none_or(|(t, _)| s.last_used < t) {
                        e.1 = Some((s.last_used, *id));
                    }
                }
                held.into_values()
                    .filter_map(|(n, lru)| lru.map(|(t, id)| (n, std::cmp::Reverse(t), id)))
                    .max()
                    .map(|(_, _, id)| id)
            }
        };
        let victim = victim.ok_or(NodeError::Busy)?;
        self.sessions.remove(&victim);
        Ok(())
    }

    /// The host could not commit the session's mutation (no leader, a timeout): the outcome is
    /// unknown and the reply will not come, so the session ends (a client opens a new one).
    pub fn commit_failed(&mut self, session_id: &SessionId) {
        if self
            .sessions
            .get(session_id)
            .is_some_and(|s| !matches!(s.awaiting, None | Some(Awaiting::Fresh(_))))
        {
            self.sessions.remove(session_id);
        }
    }

    /// Answers the first Noise message of a session for `user_id`.
    pub fn open_session(
        &mut self,
        user_id: &str,
        handshake: &[u8],
    ) -> Result<(SessionId, Vec<u8>), NodeError> {
        bkv_wire::validate_user_id(user_id).map_err(|e| NodeError::BadRequest(e.into()))?;
        if handshake.len() > MAX_NOISE_MESSAGE {
            return Err(NodeError::BadRequest("handshake too large".into()));
        }
        let now = self.platform.now_unix_secs();
        self.expire_sessions(now);
        let params = NOISE_PATTERN
            .parse()
            .map_err(|_| NodeError::BadRequest("noise params".into()))?;
        let mut hs = platform::noise_builder(params, &self.platform)
            .local_private_key(self.secrets.noise_private())
            .and_then(|b| b.prologue(NOISE_PROLOGUE))
            .and_then(|b| b.build_responder())
            .map_err(|_| NodeError::Handshake)?;
        // Buffers sized to the message, not the maximum: zeroizing 64 KiB
        // per message was a visible share of a recovery's CPU.
        let mut payload = Zeroizing::new(vec![0u8; handshake.len()]);
        let n = hs
            .read_message(handshake, &mut payload)
            .map_err(|_| NodeError::Handshake)?;
        let hello: SessionHello = bkv_wire::decode(payload.get(..n).unwrap_or_default(), 1024)
            .map_err(|e| NodeError::BadRequest(format!("session hello: {e}")))?;
        if hello.version != 1 {
            return Err(NodeError::BadRequest("unsupported session version".into()));
        }
        // The frontend authenticated the user; the client said, encrypted to the
        // fleet key, which user it means. They must agree.
        if hello.user_id != user_id {
            return Err(NodeError::WrongUser);
        }
        // NK's second message with no payload: an ephemeral key and a tag.
        let mut reply = vec![0u8; 128];
        let n = hs
            .write_message(&[], &mut reply)
            .map_err(|_| NodeError::Handshake)?;
        reply.truncate(n);
        let transport = hs.into_transport_mode().map_err(|_| NodeError::Handshake)?;
        let mut session_id = [0u8; 16];
        self.platform
            .fill_random(&mut session_id)
            .map_err(|_| NodeError::Unavailable)?;
        let record_id = bkv_wire::record_id(user_id);
        // Only a handshake that verified may take a place in the table.
        self.make_room(&record_id, now)?;
        self.sessions.insert(
            session_id,
            Session {
                user_id: user_id.to_owned(),
                record_id,
                transport,
                last_used: now,
                used: false,
                login: None,
                authenticated: None,
                registering: None,
                register_starts: 0,
                awaiting: None,
                current: None,
                last: None,
                committed_at: now,
                awaiting_seq: None,
                applied: None,
            },
        );
        Ok((session_id, reply))
    }

    /// Whether `session_id` is `user_id`'s session and logged in to the
    /// user's live record: proof, for the frontend, that the user holds the
    /// password protector right now (passkey deletion needs it).
    pub fn session_logged_in(
        &mut self,
        session_id: &SessionId,
        user_id: &str,
    ) -> Result<bool, NodeError> {
        self.serving()?;
        let s = self
            .sessions
            .get(session_id)
            .ok_or(NodeError::UnknownSession)?;
        if s.user_id != user_id {
            return Err(NodeError::WrongUser);
        }
        let (authenticated, rid) = (s.authenticated, s.record_id);
        Ok(
            match (authenticated, self.state.active(&rid).map_err(unavailable)?) {
                (Some(a), Some((_, _, generation))) => a == generation,
                _ => false,
            },
        )
    }

    /// Handles one encrypted request of an open session.
    pub fn session_message(
        &mut self,
        session_id: &SessionId,
        user_id: &str,
        ciphertext: &[u8],
    ) -> Result<Step, NodeError> {
        self.session_message_at(session_id, user_id, ciphertext, false)
    }

    /// [`Core::session_message`] for a host that made this replica at least as new as
    /// everything committed before the message arrived (`fresh`: a read barrier ran first), so
    /// a request that reads state goes on at once instead of asking for [`Step::ReadFresh`].
    /// Freshness is the host's to provide either way (a host that skips the barrier could as
    /// well call [`Core::resume_fresh`] at once): it keeps reads linearizable for an honest
    /// host, and no guess count rests on it.
    pub fn session_message_at(
        &mut self,
        session_id: &SessionId,
        user_id: &str,
        ciphertext: &[u8],
        fresh: bool,
    ) -> Result<Step, NodeError> {
        self.serving()?;
        let now = self.platform.now_unix_secs();
        self.expire_sessions(now);
        let session = self
            .sessions
            .get_mut(session_id)
            .ok_or(NodeError::UnknownSession)?;
        if session.user_id != user_id {
            return Err(NodeError::WrongUser);
        }
        if ciphertext.len() > MAX_NOISE_MESSAGE {
            return Err(NodeError::BadRequest("message too large".into()));
        }
        let digest: [u8; 32] = Sha256::digest(ciphertext).into();
        // A resent request: the same reply, nothing processed twice.
        if let Some((d, reply)) = &session.last {
            if *d == digest {
                return Ok(Step::Reply(reply.clone()));
            }
        }
        if session.awaiting.is_some() {
            // The host gave up on a read barrier (no leader): the same
            // request resent may try again.
            if matches!(session.awaiting, Some(Awaiting::Fresh(_)))
                && session.current == Some(digest)
            {
                return Ok(Step::ReadFresh);
            }
            return Err(if session.current == Some(digest) {
                NodeError::InProgress
            } else {
                NodeError::BadRequest("previous request still in progress".into())
            });
        }
        let mut plain = Zeroizing::new(vec![0u8; ciphertext.len()]);
        let n = match session.transport.read_message(ciphertext, &mut plain) {
            Ok(n) => n,
            Err(_) => {
                // A forged, replayed or reordered message. The session stays:
                // a failed decryption leaves its nonce state untouched, and
                // ending it here would let anyone with the user's token end
                // the session without its key.
                return Err(NodeError::BadRequest(
                    "session message failed to decrypt".into(),
                ));
            }
        };
        session.last_used = now;
        session.used = true;
        session.current = Some(digest);
        let request: VaultRequest =
            match bkv_wire::decode(plain.get(..n).unwrap_or_default(), MAX_VAULT_MESSAGE) {
                Ok(r) => r,
                Err(e) => {
                    return self.reply(
                        session_id,
                        VaultResponse::Error(VaultError::BadRequest(e.to_string())),
                    )
                }
            };
        if reads_state(&request) && !fresh {
            session.awaiting = Some(Awaiting::Fresh(request));
            return Ok(Step::ReadFresh);
        }
        self.handle(session_id, request)
    }

    /// Continues the request `ciphertext` that asked for
    /// [`Step::ReadFresh`], once the host made this replica at least as new
    /// as everything committed before the request arrived. A resend of it
    /// (a relay's second delivery, running beside the first) that finds the
    /// request already taken on gets what any resend gets: the reply, or
    /// "in progress".
    pub fn resume_fresh(
        &mut self,
        session_id: &SessionId,
        ciphertext: &[u8],
    ) -> Result<Step, NodeError> {
        self.serving()?;
        let digest: [u8; 32] = Sha256::digest(ciphertext).into();
        let session = self
            .sessions
            .get_mut(session_id)
            .ok_or(NodeError::UnknownSession)?;
        if session.current == Some(digest) && matches!(session.awaiting, Some(Awaiting::Fresh(_))) {
            if let Some(Awaiting::Fresh(request)) = session.awaiting.take() {
                return self.handle(session_id, request);
            }
        }
        if let Some((d, reply)) = &session.last {
            if *d == digest {
                return Ok(Step::Reply(reply.clone()));
            }
        }
        Err(if session.current == Some(digest) {
            NodeError::InProgress
        } else {
            NodeError::BadRequest("no such request waits for a fresh read".into())
        })
    }

    /// Whether this core may answer from its state: not while the state is behind what the
    /// core's counter says this core, or an earlier run on its platform, already answered from
    /// (SECURITY.md, "The core checks rollback itself"). A host that put back an older record
    /// table and log (at a restart, or under the running core with `restore`, or an older
    /// snapshot after an empty one) gets "unavailable" until applied entries bring the state
    /// back to the counter.
    fn serving(&self) -> Result<(), NodeError> {
        if self.state.fleet().entries < self.released {
            return Err(NodeError::Unavailable);
        }
        Ok(())
    }

    /// Raises the core's counter to the entries the state covers, before an outcome decided
    /// by one of them leaves the core: whatever the host later puts back under this core (or
    /// a core restarted on the same platform), the state it answers from covers this one's
    /// entries. Every entry the state covers is in this node's log already (applied entries
    /// are committed), so an honest restart catches up at once. One counter write covers
    /// every outcome applied before it.
    fn release(&mut self) -> Result<(), NodeError> {
        let entries = self.state.fleet().entries;
        if entries > self.released {
            self.platform
                .counter_advance_to(Counter::CORE, entries)
                .map_err(|_| NodeError::Unavailable)?;
            self.released = entries;
        }
        Ok(())
    }

    fn reply(&mut self, session_id: &SessionId, resp: VaultResponse) -> Result<Step, NodeError> {
        let session = self
            .sessions
            .get_mut(session_id)
            .ok_or(NodeError::UnknownSession)?;
        let plain = Zeroizing::new(bkv_wire::encode(&resp));
        let mut out = vec![0u8; plain.len() + 64];
        let n = session
            .transport
            .write_message(&plain, &mut out)
            .map_err(|_| NodeError::BadRequest("response too large".into()))?;
        out.truncate(n);
        if let Some(d) = session.current.take() {
            session.last = Some((d, out.clone()));
        }
        Ok(Step::Reply(out))
    }

    fn error(&mut self, session_id: &SessionId, e: VaultError) -> Result<Step, NodeError> {
        self.reply(session_id, VaultResponse::Error(e))
    }

    fn commit(
        &mut self,
        session_id: &SessionId,
        m: Mutation,
        awaiting: Awaiting,
    ) -> Result<Step, NodeError> {
        let now = self.platform.now_unix_secs();
        if !self.sessions.contains_key(session_id) {
            return Err(NodeError::UnknownSession);
        }
        let entry = self.make_entry(&m);
        let session = self
            .sessions
            .get_mut(session_id)
            .ok_or(NodeError::UnknownSession)?;
        session.awaiting = Some(awaiting);
        session.committed_at = now;
        session.awaiting_seq = Some(entry.seq);
        session.applied = None;
        // Entries whose session went (evicted, expired, its commit failed) are forgotten once
        // they outnumber the sessions.
        if self.pending.len() >= 2 * self.max_sessions.max(1) {
            let sessions = &self.sessions;
            self.pending.retain(|seq, (sid, _)| {
                sessions
                    .get(sid)
                    .is_some_and(|s| s.awaiting_seq == Some(*seq))
            });
        }
        self.pending
            .insert(entry.seq, (*session_id, entry::entry_digest(&entry)));
        Ok(Step::Commit(entry))
    }

    fn absent_error(&mut self, rid: &RecordId) -> VaultError {
        match self.state.record(rid) {
            Ok(Some(r)) => match r.live {
                Some(state::Live::Destroyed) => VaultError::Destroyed,
                Some(state::Live::Moved { to_fleet, .. }) => VaultError::Moved { to_fleet },
                _ => VaultError::NoRecord,
            },
            Ok(None) => VaultError::NoRecord,
            Err(_) => VaultError::Unavailable,
        }
    }
}

/// Checks a move ticket for `step` presented to fleet `fleet_id` (whose trust anchors are `trust`)
/// for `record_id`, as every core of that fleet does (docs/formats.md "Moving a record").
pub fn verify_move_ticket(
    trust: &FleetTrust,
    fleet_id: &str,
    record_id: &RecordId,
    step: MoveStep,
    signed: &bkv_wire::vault::SignedMoveTicket,
) -> Result<bkv_wire::vault::MoveTicket, MoveTicketError> {
    moves::verify(trust, fleet_id, record_id, step, signed)
}

/// A record store that fails or is refused: the client is told the vault is unavailable (the
/// host stops on the same failure when it next applies a mutation).
fn unavailable(_: SealedError) -> NodeError {
    NodeError::Unavailable
}

fn login_params() -> ServerLoginParameters<'static, 'static> {
    ServerLoginParameters {
        context: Some(OPAQUE_CONTEXT),
        identifiers: Default::default(),
    }
}

/// Whether answering `request` reads the replicated record state (so the
/// replica must first be fresh). The others read only their session and the
/// outcome of their own commit, which is applied here before the reply, and
/// every mutation re-checks the record's generation when applied, so a
/// stale replica cannot make them count, reset or destroy the wrong thing.
fn reads_state(request: &VaultRequest) -> bool {
    match request {
        VaultRequest::Status
        | VaultRequest::RegisterStart { .. }
        | VaultRequest::LoginStart { .. }
        | VaultRequest::Delete
        | VaultRequest::MoveOut { .. }
        | VaultRequest::MoveIntent { .. }
        | VaultRequest::GetMoveTicket => true,
        VaultRequest::Close
        | VaultRequest::RegisterFinish { .. }
        | VaultRequest::RegisterFinishMove { .. }
        | VaultRequest::RegisterConfirm { .. }
        | VaultRequest::LoginFinish { .. }
        | VaultRequest::MoveIn { .. } => false,
    }
}

fn bad(msg: &str) -> VaultError {
    VaultError::BadRequest(msg.into())
}
