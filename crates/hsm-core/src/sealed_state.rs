//! The replicated state with its records on the host's disk (issue 13, part 4; docs/scaling.md
//! "Per-record state").
//!
//! [`SealedState`] holds only what is small and fixed — the fleet part of the [`State`]
//! (members, the generation counter), the [`RecordCommitment`] (4 MiB) and a bounded cache of
//! opened buckets — and reaches every record through the host's table of sealed buckets
//! ([`BucketHost`]). Each mutation opens its record's bucket (checked against the commitment
//! before it is unsealed), applies the mutation exactly as [`State::apply`] does, and reseals the
//! bucket; the new sealed values wait in [`SealedState::take_writes`] until the host stores them,
//! together with [`SealedState::seal_summary`], in one transaction. A state whose host never takes
//! its writes simply keeps them (tests and the single-process tools use it so).
//!
//! The summary binds the fleet part, the live-record count, the commitment's root and the host's
//! position in the log under the platform's sealing key (slot `vault-summary`, label `v1`): at a
//! restart [`SealedState::restore`] rebuilds the commitment from every stored bucket and refuses a
//! table whose root differs from the summary's — buckets from different times. A table rolled
//! back *as a whole* to an older summary is consistent; the host re-applies the log from the
//! position it names (and refuses to start if the log no longer reaches back that far).

use crate::commitment::{Bucket, CommitmentError, Hash, RecordCommitment};
use crate::platform::{PlatformError, SharedPlatform};
use crate::state::{Credential, Live, Mutation, Outcome, Record, RecordId, State};
use bkv_wire::vault::RecordState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The platform slot the summary is sealed to.
pub(crate) const SUMMARY_SLOT: crate::platform::SealSlot = crate::platform::SealSlot::VAULT_SUMMARY;
const SUMMARY_LABEL: &[u8] = b"v1";
/// Summary version 3: the fleet part in state encoding 3 and a root over the buckets' contents
/// (commitment version 2). Versions 1 and 2 (earlier releases, roots over sealed values) are
/// refused: those releases' fleets upgrade by rotation.
const SUMMARY_VERSION: u16 = 3;
/// Largest sealed summary accepted: the fleet part holds the members' statements (a few KiB
/// each, at most a few dozen members) and the host's position.
pub const MAX_SUMMARY: usize = 4 << 20;
/// Opened buckets kept in the core's memory (about 16 records each at 10⁶ users, ~5 MiB in
/// all): a recovery reads and writes its record's bucket five times within a few milliseconds,
/// and each open costs an unseal and a decode (~23 µs at 10⁶ users, BENCHMARKS.md).
pub const CACHED_BUCKETS: usize = 1024;

/// Called with each stored bucket's number and sealed value.
pub type BucketVisitor<'a> = dyn FnMut(u16, &[u8]) -> Result<(), SealedError> + 'a;

/// The host's table of sealed buckets, as the core sees it: untrusted, every value checked.
pub trait BucketHost: Send {
    /// Bucket `b`'s stored value (`None`: nothing stored).
    fn read(&self, b: u16) -> Result<Option<Vec<u8>>, String>;
    /// Every stored bucket, in bucket order (a restart rebuilding the commitment).
    fn for_each(&self, f: &mut BucketVisitor<'_>) -> Result<(), SealedError>;
}

/// A host that stores nothing: every bucket stays in the state's pending writes.
pub struct NoBuckets;

impl BucketHost for NoBuckets {
    fn read(&self, _: u16) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
    fn for_each(&self, _: &mut BucketVisitor<'_>) -> Result<(), SealedError> {
        Ok(())
    }
}

/// Why the sealed record store failed, or refused what the host handed it.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    /// The host's bucket table failed to read ([`BucketHost`]).
    #[error("record store: {0}")]
    Host(String),
    /// A bucket was refused or could not be committed to (stale, altered, full, misplaced).
    #[error(transparent)]
    Commitment(#[from] CommitmentError),
    /// The platform failed to seal, or refused to unseal, the summary.
    #[error("sealed summary: {0}")]
    Platform(#[from] PlatformError),
    /// The summary, a snapshot bucket or the stored table does not decode or is inconsistent.
    #[error("sealed state does not decode: {0}")]
    Malformed(&'static str),
    /// The stored or received buckets do not hash to the root the summary or snapshot names.
    #[error("the stored buckets do not match their sealed summary (root differs)")]
    RootMismatch,
    /// The sealed summary's version is not the one this release reads.
    #[error("sealed summary version {0} is not supported")]
    Version(u16),
    /// A snapshot's header or frame was refused.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

mod summary;
#[cfg(test)]
pub use summary::collect_state;
use summary::{open_summary, seal_summary};
pub use summary::{read_summary, summary_position, Summary};

fn is_live(r: Option<&Record>) -> bool {
    r.is_some_and(|r| r.pending.is_some() || matches!(r.live, Some(Live::Active { .. })))
}

/// A snapshot being installed bucket by bucket, in increasing bucket order, without touching the
/// running state until [`SealedState::finish_install`]: memory stays at one bucket and a
/// commitment whatever the record count. Made from a header a core of the fleet sealed
/// ([`SealedState::open_snapshot`]); holds the stream's frame key, so it stays with the core.
pub struct Installer {
    platform: SharedPlatform,
    commitment: RecordCommitment,
    state: State,
    live: u64,
    last: Option<u16>,
    /// What the header names: the root the buckets must hash to, and the host's position.
    root: Hash,
    position: Vec<u8>,
    frames: crate::snapshot::FrameKey,
}

impl Installer {
    /// Opens the frame of bucket `b` and seals the bucket with this node's platform: buckets
    /// must come in increasing order, non-empty, every record placed in `b` by this fleet's key.
    /// Returns what the host stores.
    pub fn add_frame(&mut self, b: u16, frame: &[u8]) -> Result<Vec<u8>, SealedError> {
        if self.last.is_some_and(|l| l >= b) {
            return Err(SealedError::Malformed("snapshot buckets out of order"));
        }
        let plain = self.frames.open(b, frame)?;
        let bucket =
            Bucket::decode(&plain).map_err(|_| SealedError::Malformed("snapshot bucket"))?;
        let live = bucket.iter().filter(|(_, r)| is_live(Some(r))).count() as u64;
        let sealed = self
            .commitment
            .reseal(&*self.platform, b, &bucket)?
            .ok_or(SealedError::Malformed("an empty bucket in a snapshot"))?;
        self.last = Some(b);
        self.live += live;
        Ok(sealed)
    }

    /// The host's log position the snapshot's header names.
    pub fn position(&self) -> &[u8] {
        &self.position
    }

    /// The summary of the installed state, once every bucket came: the buckets must hash to the
    /// root the header names (a bucket dropped, added, replaced or stale is refused here).
    pub fn seal_summary(&self) -> Result<Vec<u8>, SealedError> {
        if !self.commitment.root_is(&self.root) {
            return Err(SealedError::RootMismatch);
        }
        seal_summary(
            &self.platform,
            &self.state,
            self.live,
            self.commitment.root(),
            &self.position,
        )
    }
}

/// The replicated state, records sealed on the host (module docs).
pub struct SealedState {
    platform: SharedPlatform,
    /// Members and the generation counter; `records` stays empty (each mutation borrows it for
    /// the one record it changes).
    state: State,
    commitment: RecordCommitment,
    host: Box<dyn BucketHost>,
    /// Sealed values not yet taken by the host (`None`: the bucket is now empty); reads see them.
    written: BTreeMap<u16, Option<Vec<u8>>>,
    /// Opened buckets: always the committed contents (filled by a checked open, changed only
    /// together with the commitment), evicted oldest first.
    cache: HashMap<u16, Bucket>,
    cache_order: VecDeque<u16>,
    live: u64,
}

impl std::fmt::Debug for SealedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedState(live={}, {:?})", self.live, self.commitment)
    }
}

impl SealedState {
    /// No records, no members; buckets placed with `key`.
    pub fn new(platform: SharedPlatform, key: [u8; 32]) -> Self {
        Self::with_commitment(platform, RecordCommitment::new(key))
    }

    fn with_commitment(platform: SharedPlatform, commitment: RecordCommitment) -> Self {
        SealedState {
            platform,
            state: State::default(),
            commitment,
            host: Box::new(NoBuckets),
            written: BTreeMap::new(),
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            live: 0,
        }
    }

    /// `state`'s records sealed into buckets that stay pending (a host that never takes them
    /// keeps the state in memory). Tests only: a core takes no plain state from its host.
    #[cfg(any(test, feature = "testing"))]
    pub fn from_state(
        platform: SharedPlatform,
        key: [u8; 32],
        state: State,
    ) -> Result<Self, SealedError> {
        let mut s = Self::new(platform, key);
        let buckets = s.install(state)?;
        s.written = buckets.into_iter().map(|(b, v)| (b, Some(v))).collect();
        Ok(s)
    }

    /// The platform this state seals with.
    pub fn platform(&self) -> &SharedPlatform {
        &self.platform
    }

    /// The fleet part of the state (members, generations); its `records` map is empty.
    pub fn fleet(&self) -> &State {
        &self.state
    }

    pub(crate) fn fleet_mut(&mut self) -> &mut State {
        &mut self.state
    }

    /// Records that are active or pending.
    pub fn live_records(&self) -> u64 {
        self.live
    }

    /// The commitment's root over every record's bucket.
    pub fn root(&self) -> Hash {
        self.commitment.root()
    }

    /// Opened buckets held in the cache now (at most [`CACHED_BUCKETS`]).
    pub fn cached_buckets(&self) -> usize {
        self.cache.len()
    }

    /// Bucket `b`, opened (and checked) once, then kept in the cache.
    fn bucket(&mut self, b: u16) -> Result<&mut Bucket, SealedError> {
        if !self.cache.contains_key(&b) {
            let bucket = match self.written.get(&b) {
                Some(v) => self.commitment.open(&*self.platform, b, v.as_deref())?,
                None => {
                    let v = self.host.read(b).map_err(SealedError::Host)?;
                    self.commitment.open(&*self.platform, b, v.as_deref())?
                }
            };
            if self.cache.len() >= CACHED_BUCKETS {
                if let Some(old) = self.cache_order.pop_front() {
                    self.cache.remove(&old);
                }
            }
            self.cache_order.push_back(b);
            self.cache.insert(b, bucket);
        }
        self.cache
            .get_mut(&b)
            .ok_or(SealedError::Malformed("bucket cache"))
    }

    /// The whole state, every record included, each bucket checked (tests and tools: memory
    /// grows with the records; the cache is left as it was).
    pub fn export(&self) -> Result<State, SealedError> {
        let mut state = self.state.clone();
        for b in (0..=u16::MAX).take(self.commitment.bucket_count()) {
            let bucket = match (self.cache.get(&b), self.written.get(&b)) {
                (Some(bucket), _) => bucket.clone(),
                (None, Some(v)) => self.commitment.open(&*self.platform, b, v.as_deref())?,
                (None, None) => {
                    let v = self.host.read(b).map_err(SealedError::Host)?;
                    self.commitment.open(&*self.platform, b, v.as_deref())?
                }
            };
            for (id, r) in bucket.into_records() {
                state.records.insert(id, Arc::new(r));
            }
        }
        Ok(state)
    }

    /// The record `id`, read from its bucket.
    pub fn record(&mut self, id: &RecordId) -> Result<Option<Record>, SealedError> {
        let b = self.commitment.bucket(id);
        Ok(self.bucket(b)?.get(id).cloned())
    }

    /// What [`State::status`] says of the record.
    pub fn status(&mut self, id: &RecordId) -> Result<RecordState, SealedError> {
        let r = self.record(id)?;
        Ok(State::status_of(r.as_ref()))
    }

    /// The live credential, its attempts and generation, if the record is active.
    pub fn active(&mut self, id: &RecordId) -> Result<Option<(Credential, u32, u64)>, SealedError> {
        Ok(self.record(id)?.and_then(|r| {
            State::active_of(&r).map(|(c, attempts, generation)| (c.clone(), attempts, generation))
        }))
    }

    /// Takes a committed log entry in its place and opens it: chains it (applied or refused),
    /// then checks that `key` opens it, that its proposer is `admitted` (when the caller checks
    /// membership: a core; the replication layer's bare states do not) and that it comes after
    /// its proposer's last applied entry. The mutation is then the caller's to apply; on a
    /// refusal nothing but the chain changed (`crate::entry`).
    pub fn admit_entry(
        &mut self,
        key: &crate::entry::EntryKey,
        e: &crate::entry::LogEntry,
        admitted: impl FnOnce(&State, &[u8; 32]) -> bool,
    ) -> Result<Mutation, crate::entry::Refusal> {
        self.state.chain = crate::entry::chain_step(&self.state.chain, e);
        self.state.entries += 1;
        let m = key.open(e)?;
        if !admitted(&self.state, &e.proposer) {
            return Err(crate::entry::Refusal::NotAMember);
        }
        self.state.take_seq(&e.proposer, e.seq)?;
        Ok(m)
    }

    /// Applies a committed mutation (admin commands need a core's trust anchors: refused here,
    /// as by [`State::apply`]). An error means the host's store failed or was tampered with:
    /// nothing is known about the mutation and the host must stop.
    pub fn apply(&mut self, m: &Mutation) -> Result<Outcome, SealedError> {
        match m {
            // Entries are batched by the log (`crate::entry::Entries`); a batch mutation is an
            // earlier release's form, refused like [`crate::Core::apply`] refuses it.
            Mutation::Batch(_) => Ok(Outcome::NotBatchable),
            m if m.record_id().is_some() => self.apply_record(m),
            m => Ok(self.state.apply(m)),
        }
    }

    /// One record mutation: the record is lent to [`State::apply`] (so the rule is written
    /// once), then its bucket is resealed if it changed.
    fn apply_record(&mut self, m: &Mutation) -> Result<Outcome, SealedError> {
        let Some(id) = m.record_id().copied() else {
            return Ok(Outcome::NotBatchable);
        };
        let b = self.commitment.bucket(&id);
        let before = self.bucket(b)?.get(&id).cloned();
        let generation = self.state.next_generation;
        self.state.records.clear();
        if let Some(r) = &before {
            self.state.records.insert(id, Arc::new(r.clone()));
        }
        let outcome = self.state.apply(m);
        let after = self.state.records.remove(&id).map(Arc::unwrap_or_clone);
        self.state.records.clear();
        if after == before {
            return Ok(outcome);
        }
        let (live_before, live_after) = (is_live(before.as_ref()), is_live(after.as_ref()));
        let bucket = self
            .cache
            .get_mut(&b)
            .ok_or(SealedError::Malformed("bucket cache"))?;
        bucket.set(id, after);
        match self.commitment.reseal(&*self.platform, b, bucket) {
            Ok(sealed) => {
                self.written.insert(b, sealed);
                self.live = self.live + u64::from(live_after) - u64::from(live_before);
                Ok(outcome)
            }
            Err(e) => {
                // Nothing changes: the bucket and the generation counter go back.
                bucket.set(id, before);
                self.state.next_generation = generation;
                match e {
                    // Every member places records alike and holds the same buckets, so every
                    // member refuses the same mutation: deterministic.
                    CommitmentError::BucketFull(_) => Ok(Outcome::StoreFull),
                    e => Err(e.into()),
                }
            }
        }
    }

    /// The sealed values written since the host last asked, for it to store (with
    /// [`Self::seal_summary`]) in one transaction.
    pub fn take_writes(&mut self) -> Vec<(u16, Option<Vec<u8>>)> {
        std::mem::take(&mut self.written).into_iter().collect()
    }

    /// The sealed summary of the state as it is now, naming the host's `position`.
    pub fn seal_summary(&self, position: &[u8]) -> Result<Vec<u8>, SealedError> {
        seal_summary(
            &self.platform,
            &self.state,
            self.live,
            self.commitment.root(),
            position,
        )
    }

    /// The header of a snapshot of the state a stored summary describes (`crate::snapshot`),
    /// with a fresh stream `nonce`; returns it with the position the summary names.
    pub fn snapshot_header(
        &self,
        key: &crate::snapshot::SnapshotKey,
        nonce: [u8; 32],
        summary: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), SealedError> {
        let s = open_summary(&self.platform, summary)?;
        let header = key.seal_header(nonce, s.state.encode(), s.root, s.position.clone());
        Ok((header, s.position))
    }

    /// The frame of bucket `b` for the stream with `nonce`, from the bucket's sealed value in the
    /// host's table (unchecked here: the receiving core checks every bucket against the root).
    pub fn snapshot_frame(
        &self,
        key: &crate::snapshot::SnapshotKey,
        nonce: [u8; 32],
        b: u16,
        sealed: &[u8],
    ) -> Result<Vec<u8>, SealedError> {
        let plain =
            self.platform
                .unseal(crate::commitment::BUCKET_SLOT, &b.to_be_bytes(), sealed)?;
        Ok(key.frames(nonce).seal(b, &plain))
    }

    /// Starts installing the snapshot whose header is `header` (module docs of [`Installer`]):
    /// refused unless a core of the fleet sealed it, and unless it is at least as new as this
    /// state and of the same history.
    pub fn open_snapshot(
        &self,
        key: &crate::snapshot::SnapshotKey,
        header: &[u8],
    ) -> Result<Installer, SealedError> {
        use crate::snapshot::SnapshotError;
        let h = key.open_header(header)?;
        let (theirs, ours) = (h.state.entries, self.state.entries);
        if theirs < ours {
            return Err(SnapshotError::Stale { theirs, ours }.into());
        }
        if theirs == ours && h.state.chain != self.state.chain {
            return Err(SnapshotError::OtherHistory.into());
        }
        Ok(Installer {
            platform: self.platform.clone(),
            commitment: self.commitment.cleared(),
            state: h.state,
            live: 0,
            last: None,
            root: h.root,
            position: h.position,
            frames: h.frames,
        })
    }

    /// Switches to the installed state, once the host has stored every bucket
    /// [`Installer::add`] returned (and nothing else) with [`Installer::seal_summary`]. Checked
    /// again here, whatever the host did in between: every bucket came (the root the header
    /// names), and the snapshot is still not behind this state (entries applied since it was
    /// opened would otherwise be undone). On an error nothing changes.
    pub fn finish_install(&mut self, installed: Installer) -> Result<(), SealedError> {
        use crate::snapshot::SnapshotError;
        if !installed.commitment.root_is(&installed.root) {
            return Err(SealedError::RootMismatch);
        }
        let (theirs, ours) = (installed.state.entries, self.state.entries);
        if theirs < ours {
            return Err(SnapshotError::Stale { theirs, ours }.into());
        }
        if theirs == ours && installed.state.chain != self.state.chain {
            return Err(SnapshotError::OtherHistory.into());
        }
        let host = std::mem::replace(&mut self.host, Box::new(NoBuckets));
        self.reset(host, installed.state, installed.commitment, installed.live);
        Ok(())
    }

    /// Takes `host` as the store and restores the state it holds: `summary` is the sealed
    /// summary stored with the buckets (`None`: a new store, which must hold no bucket).
    /// Returns the position the summary names. On an error nothing changes.
    pub fn restore(
        &mut self,
        host: Box<dyn BucketHost>,
        summary: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, SealedError> {
        let mut c = self.commitment.cleared();
        let Some(summary) = summary else {
            host.for_each(&mut |_, _| {
                Err(SealedError::Malformed("buckets stored without a summary"))
            })?;
            self.reset(host, State::default(), c, 0);
            return Ok(None);
        };
        let s = open_summary(&self.platform, summary)?;
        host.for_each(&mut |b, sealed| Ok(c.load(&*self.platform, b, sealed)?))?;
        if !bool::from(c.root().ct_eq(&s.root)) {
            return Err(SealedError::RootMismatch);
        }
        self.reset(host, s.state, c, s.live);
        Ok(Some(s.position))
    }

    fn reset(&mut self, host: Box<dyn BucketHost>, state: State, c: RecordCommitment, live: u64) {
        self.host = host;
        self.state = state;
        self.commitment = c;
        self.live = live;
        self.written.clear();
        self.cache.clear();
        self.cache_order.clear();
    }

    /// Replaces the whole state with `state`: every bucket is sealed anew. Returns every
    /// non-empty bucket; the host must store exactly these in place of all it holds, with a new
    /// summary, in one transaction. On an error nothing changes. Tests only: a running core
    /// takes a state only from an authenticated snapshot ([`SealedState::open_snapshot`]).
    #[cfg(any(test, feature = "testing"))]
    pub fn install(&mut self, state: State) -> Result<Vec<(u16, Vec<u8>)>, SealedError> {
        let State {
            records,
            next_generation,
            members,
            proposers,
            chain,
            entries,
        } = state;
        let mut c = self.commitment.cleared();
        let mut live = 0;
        let mut buckets: BTreeMap<u16, Bucket> = BTreeMap::new();
        for (id, r) in records {
            let r = Arc::unwrap_or_clone(r);
            live += u64::from(is_live(Some(&r)));
            buckets.entry(c.bucket(&id)).or_default().set(id, Some(r));
        }
        let mut out = Vec::with_capacity(buckets.len());
        for (b, bucket) in buckets {
            if let Some(sealed) = c.reseal(&*self.platform, b, &bucket)? {
                out.push((b, sealed));
            }
        }
        let host = std::mem::replace(&mut self.host, Box::new(NoBuckets));
        let fleet = State {
            records: BTreeMap::new(),
            next_generation,
            members,
            proposers,
            chain,
            entries,
        };
        self.reset(host, fleet, c, live);
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
