//! The replicated state machine: applies committed log entries to the vault state, whose
//! records live in the node's table of sealed buckets ([`crate::records`]), and takes and
//! installs snapshots.
//!
//! Each `apply` hands the buckets its entries changed, the core's sealed summary and the log
//! position to a writer thread, which commits them together in one redb transaction, fsynced
//! only every 25 ms: the log is the durable copy, and after a crash the table reopens at an
//! earlier whole transaction from which openraft re-applies the log. A crash while a snapshot is
//! being installed leaves the table where it was: the log store purges the log behind a snapshot
//! only once the table is durable past it ([`StateMachine::durable`]), so the node restarts from
//! its old table and log and catches up again. A snapshot is therefore a position of the table,
//! not a copy of it: building one makes the
//! table durable up to its position (so the log behind it may be purged), and a snapshot sent to
//! another member is streamed from one consistent view of the table and installed from a sealed
//! spool into a replacement of the receiver's table ([`super::snapshot_stream`]): neither side
//! holds more than a bucket and a megabyte of it in memory.

use super::snapshot_stream::{Frame, FrameSource, Sender, SnapshotData, Spool, StreamReader};
use super::{db_err, storage_error, Applied, PeerNode, ReplicationStoreError, TypeConfig};
use crate::metrics::NodeMetrics;
use crate::records::{InFlight, RecordTable, TableHost};
use bkv_hsm_core::sealed_state::NoBuckets;
use bkv_hsm_core::snapshot::StreamStart;
use bkv_hsm_core::state::Outcome;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub(crate) use super::replica::{AppliedBatch, Released, Replica};
pub use super::snapshot_stream::MAX_SNAPSHOT;

/// The record table's file in a data directory.
pub(crate) const RECORDS_FILE: &str = "vault-records.redb";
/// The record table's page cache: with the records on disk, this is what a node's memory grows
/// to as users grow (BENCHMARKS.md "Records on disk").
pub(crate) const RECORDS_CACHE_BYTES: usize = 64 << 20;
/// Largest encoded log position accepted from a summary (a membership of a few dozen members).
const MAX_POSITION: usize = 1 << 20;
mod writer;
use writer::{Durable, TableWriter, WriterJob};

/// A replica as the snapshot sender's frame source: its core makes every frame.
struct Frames<R: Replica>(Arc<Mutex<R>>);

impl<R: Replica> FrameSource for Frames<R> {
    fn frame(&self, nonce: [u8; 32], b: u16, sealed: &[u8]) -> Result<Vec<u8>, String> {
        self.0
            .lock()
            .map_err(|_| "replica lock poisoned".to_string())?
            .snapshot_frame(nonce, b, sealed)
    }
}

/// Runs a blocking store operation off the async runtime (reading or installing a large
/// snapshot takes seconds).
async fn blocking<T: Send + 'static>(
    verb: ErrorVerb,
    f: impl FnOnce() -> Result<T, ReplicationStoreError> + Send + 'static,
) -> Result<T, StorageError<u64>> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| sm_err(verb, db_err(e)))?
        .map_err(|e| sm_err(verb, e))
}

/// How far the records have applied the log: sealed in the core's summary, so it always
/// describes the buckets stored with it (docs/formats.md "Records on disk").
#[derive(Clone, Default, Serialize, Deserialize)]
struct Position {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, PeerNode>,
}

impl Position {
    fn decode(bytes: &[u8]) -> Result<Self, ReplicationStoreError> {
        bkv_wire::decode(bytes, MAX_POSITION)
            .map_err(|_| ReplicationStoreError::Malformed("records' log position".into()))
    }

    /// The position sealed in a stored summary (`None`: nothing applied yet), as the core reads
    /// it.
    fn of_summary<R: Replica>(
        replica: &Mutex<R>,
        summary: Option<&[u8]>,
    ) -> Result<Self, ReplicationStoreError> {
        match summary {
            Some(s) => Self::decode(
                &replica
                    .lock()
                    .map_err(|_| poisoned())?
                    .summary_position(s)
                    .map_err(ReplicationStoreError::Records)?,
            ),
            None => Ok(Position::default()),
        }
    }

    /// The snapshot this position is. Its id names the position alone: the state at a log
    /// position is the same on every member and at every reading.
    fn meta(&self) -> SnapshotMeta<u64, PeerNode> {
        let last = self.last_applied;
        SnapshotMeta {
            last_log_id: last,
            last_membership: self.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                last.map(|l| l.leader_id.term).unwrap_or(0),
                last.map(|l| l.index).unwrap_or(0)
            ),
        }
    }
}

fn sm_err(verb: ErrorVerb, e: ReplicationStoreError) -> StorageError<u64> {
    storage_error(ErrorSubject::StateMachine, verb, e)
}

fn poisoned() -> ReplicationStoreError {
    ReplicationStoreError::Db("replica lock poisoned".into())
}

/// openraft's state machine of one node: applies committed entries through the replica `R` to the
/// record table, makes and installs snapshots.
pub struct StateMachine<R: Replica> {
    dir: PathBuf,
    replica: Arc<Mutex<R>>,
    table: Arc<RecordTable>,
    position: Position,
    metrics: Arc<NodeMetrics>,
    /// Bucket writes handed to the writer, visible to reads until they land ([`InFlight`]).
    inflight: InFlight,
    writes: u64,
    writer: Arc<TableWriter>,
    durable: Durable,
    released: Arc<Released>,
    /// Dropped last: [`StateMachine::dropped`] watches it.
    alive: crate::alive::Alive,
}

impl<R: Replica> StateMachine<R> {
    /// Where the replies of this node's sessions that an apply decided wait to be taken.
    pub fn released(&self) -> Arc<Released> {
        self.released.clone()
    }

    /// Opens the record table in the data directory `dir` and restores `replica` from it (the
    /// core checks every stored bucket against the sealed summary's root).
    pub fn open(
        dir: &Path,
        replica: Arc<Mutex<R>>,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Self, ReplicationStoreError> {
        // A replica reused in one process (tests restarting a member) lets go of the table it
        // held first: redb admits one open database per file.
        replica
            .lock()
            .map_err(|_| poisoned())?
            .restore(Box::new(NoBuckets), None)
            .map_err(ReplicationStoreError::Records)?;
        let table = Arc::new(RecordTable::open(
            &dir.join(RECORDS_FILE),
            RECORDS_CACHE_BYTES,
        )?);
        // What a restart read may include commits redb has not made durable yet (after a clean
        // exit); a snapshot position named from it must be on disk before the log is purged.
        let summary = table.sync()?;
        let inflight = InFlight::default();
        let mut position = Position::default();
        {
            let mut r = replica.lock().map_err(|_| poisoned())?;
            let host = Box::new(TableHost(table.clone(), inflight.clone()));
            let restored = r
                .restore(host, summary.as_deref())
                .map_err(ReplicationStoreError::Records)?;
            if let Some(p) = restored {
                position = Position::decode(&p)?;
            }
        }
        Spool::remove_stale(dir);
        // Everything read at open was made durable above (or installed durably).
        let durable = Durable(Arc::new(tokio::sync::watch::channel(0).0));
        durable.reached_position(&position);
        let writer = Arc::new(TableWriter::start(
            table.clone(),
            inflight.clone(),
            durable.clone(),
        ));
        writer.check()?;
        Ok(StateMachine {
            dir: dir.to_path_buf(),
            replica,
            table,
            position,
            metrics,
            inflight,
            writes: 0,
            writer,
            durable,
            released: Arc::default(),
            alive: Default::default(),
        })
    }

    /// Whether this state machine has been dropped (openraft's worker applies what was queued
    /// before a shutdown, then drops it): no apply can reach the replica any more.
    pub fn dropped(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        self.alive.gone()
    }

    /// Whether the record table's file is closed ([`RecordTable::closed`]).
    pub fn table_closed(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        self.table.closed()
    }

    /// Where the records stand in the log (checked against the log's first entry at start).
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.position.last_applied
    }

    /// The log index through which the record table is on disk (moves forward only).
    pub fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.0.subscribe()
    }

    /// Applies one chunk of core entries (one request across the core boundary) and hands the
    /// buckets it changed with the summary at `position` to the writer thread (module docs of
    /// `TableWriter`): visible to reads at once, in the table shortly.
    fn apply_chunk(
        &mut self,
        entries: Vec<bkv_hsm_core::LogEntry>,
        position: &Position,
    ) -> Result<Vec<Outcome>, ReplicationStoreError> {
        // The buckets the batch wrote are visible to reads before the core can ask for one in
        // a later request (the replica's lock is not held across the round trip).
        let (seq, inflight) = (self.writes + 1, self.inflight.clone());
        let mut added = Ok(());
        let AppliedBatch {
            outcomes,
            writes,
            summary,
            released,
        } = R::apply_shared(
            &self.replica,
            entries,
            &bkv_wire::encode(position),
            &mut |w| added = inflight.add(seq, w),
        )
        .map_err(ReplicationStoreError::Records)?;
        added?;
        self.writes = seq;
        // Before the applied index moves on, which is what the sessions wait for.
        self.released.put(released);
        self.writer.send(WriterJob::Write {
            seq: self.writes,
            writes,
            summary,
            applied: position.last_applied.map(|l| l.index).unwrap_or(0),
        })?;
        Ok(outcomes)
    }
}

/// Most core entries in one `Apply` request. Its reply carries every bucket they changed: at 10⁶
/// users a sealed bucket is ~5 KB, so 256 entries answer in ~1.3 MB, far below the boundary's
/// 64 MiB message limit even at 10⁷ users (BENCHMARKS.md "Records on disk").
const APPLY_CHUNK: usize = 256;

/// Builds a snapshot: makes the record table durable and names the position it reached. The
/// state itself stays in the table; openraft 0.9 keeps only a built snapshot's metadata
/// (`core/sm/worker.rs`), and a snapshot sent to a member is read from the table then
/// ([`RaftStateMachine::get_current_snapshot`]).
pub struct SnapshotBuilder<R: Replica> {
    table: Arc<RecordTable>,
    replica: Arc<Mutex<R>>,
    writer: Arc<TableWriter>,
    durable: Durable,
}

impl<R: Replica> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<R> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (table, replica) = (self.table.clone(), self.replica.clone());
        let (writer, durable) = (self.writer.clone(), self.durable.clone());
        let meta = blocking(ErrorVerb::Write, move || {
            // What was applied before the trigger is in the table, then on disk.
            writer.flush()?;
            let summary = table.sync()?;
            let position = Position::of_summary(&replica, summary.as_deref())?;
            durable.reached_position(&position);
            Ok(position.meta())
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::Marker),
        })
    }
}

impl<R: Replica> RaftStateMachine<TypeConfig> for StateMachine<R> {
    type SnapshotBuilder = SnapshotBuilder<R>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, PeerNode>), StorageError<u64>> {
        Ok((self.position.last_applied, self.position.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write_err = |e: ReplicationStoreError| sm_err(ErrorVerb::Write, e);
        // The raft entries in order, their core entries applied in requests of at most
        // APPLY_CHUNK entries across the core boundary (a catch-up after a restart can hold tens
        // of thousands; BENCHMARKS.md counts the crossings).
        let mut out = Vec::new();
        let mut counts = Vec::new();
        let mut batch = Vec::new();
        let mut outcomes = Vec::new();
        let mut position = self.position.clone();
        for e in entries {
            position.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Some(Applied::Blank)),
                EntryPayload::Normal(entries) => {
                    counts.push(entries.0.len());
                    batch.extend(entries.0);
                    out.push(None);
                }
                EntryPayload::Membership(mem) => {
                    position.membership = StoredMembership::new(Some(e.log_id), mem);
                    out.push(Some(Applied::Membership));
                }
            }
            if batch.len() >= APPLY_CHUNK {
                let chunk = std::mem::take(&mut batch);
                outcomes.extend(self.apply_chunk(chunk, &position).map_err(write_err)?);
            }
        }
        // Always once more: the summary names the last position even when no core entry came.
        outcomes.extend(self.apply_chunk(batch, &position).map_err(write_err)?);
        if outcomes.len() != counts.iter().sum::<usize>() {
            return Err(write_err(ReplicationStoreError::Records(
                "the core answered another number of outcomes than entries".into(),
            )));
        }
        let mut outcomes = outcomes.into_iter();
        let mut counts = counts.into_iter();
        let out = out
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    let n = counts.next().unwrap_or(0);
                    let mine: Vec<Outcome> = outcomes.by_ref().take(n).collect();
                    for o in &mine {
                        self.metrics.applied(o);
                    }
                    Applied::Entries(mine)
                })
            })
            .collect::<Vec<_>>();
        self.position = position;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            table: self.table.clone(),
            replica: self.replica.clone(),
            writer: self.writer.clone(),
            durable: self.durable.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError<u64>> {
        let spool = Spool::create(&self.dir).map_err(|e| {
            sm_err(
                ErrorVerb::Write,
                ReplicationStoreError::SnapshotFile(e.to_string()),
            )
        })?;
        Ok(Box::new(SnapshotData::Receiving(Box::new(spool))))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, PeerNode>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError<u64>> {
        let position = Position {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let (replica, table, p) = (self.replica.clone(), self.table.clone(), position.clone());
        let (writer, durable) = (self.writer.clone(), self.durable.clone());
        // Reading the spool, sealing buckets and writing them take seconds at 10⁶ users: off
        // the async workers, and without the replica lock until the switch.
        blocking(ErrorVerb::Write, move || {
            // No earlier write may land on top of the installed table.
            writer.flush()?;
            let io_err = |e: std::io::Error| ReplicationStoreError::SnapshotFile(e.to_string());
            let reader: Box<dyn std::io::Read> = match *snapshot {
                SnapshotData::Receiving(spool) => Box::new(spool.into_reader().map_err(io_err)?),
                // A stream handed over whole (openraft's storage tests do).
                SnapshotData::Sending(mut sender) => {
                    sender.rewind().map_err(io_err)?;
                    Box::new(sender)
                }
                SnapshotData::Marker => {
                    return Err(ReplicationStoreError::Malformed(
                        "a snapshot without data".into(),
                    ))
                }
            };
            let (header, mut frames) = StreamReader::open(std::io::BufReader::new(reader))?;
            let lock = || replica.lock().map_err(|_| poisoned());
            let named = lock()?
                .install_begin(&header)
                .map_err(ReplicationStoreError::Snapshot)?;
            // The position the sending core sealed must be the one openraft installs at: a
            // snapshot of one state passed off as another position would skip or repeat entries.
            let named = Position::decode(&named)?;
            if named.last_applied != p.last_applied || named.membership != p.membership {
                return Err(ReplicationStoreError::Snapshot(
                    "the snapshot's sealed position is not the one it was sent as".into(),
                ));
            }
            let replacement = table.begin_replace()?;
            while let Frame::Bucket(b, frame) = frames.next_frame()? {
                let sealed = lock()?
                    .install_frame(b, &frame)
                    .map_err(ReplicationStoreError::Snapshot)?;
                replacement.put(b, &sealed)?;
            }
            let mut r = lock()?;
            let summary = r
                .install_summary()
                .map_err(ReplicationStoreError::Snapshot)?;
            replacement.commit(&summary)?;
            r.install_finish()
                .map_err(ReplicationStoreError::Snapshot)?;
            // Only now may the log behind the snapshot go (`LogStore::set_records_durable`).
            durable.reached_position(&p);
            Ok(())
        })
        .await?;
        self.position = position;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let (table, replica) = (self.table.clone(), self.replica.clone());
        blocking(ErrorVerb::Read, move || {
            // One read transaction: the summary and the buckets of one commit, whatever is
            // applied meanwhile; the buckets are read only as the stream is.
            let view = table.view()?;
            let Some(summary) = view.summary()? else {
                return Ok(None);
            };
            let StreamStart {
                header,
                position,
                nonce,
            } = replica
                .lock()
                .map_err(|_| poisoned())?
                .snapshot_header(&summary)
                .map_err(ReplicationStoreError::Snapshot)?;
            let meta = Position::decode(&position)?.meta();
            let sender = Sender::new(Arc::new(Frames(replica)), view, &header, nonce)?;
            Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(SnapshotData::Sending(Box::new(sender))),
            }))
        })
        .await
    }
}
