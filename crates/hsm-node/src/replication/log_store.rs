//! The Raft log, vote and committed index in redb. Entries are stored as they came: their
//! payload is log entries cores made, encrypted and authenticated under the fleet's entry key
//! (`bkv_hsm_core::entry`), and the rest of a Raft entry (its log id, a Raft membership) is
//! public. What the host could still do with a log — put back an older one, or delete, replace
//! or reorder entries — the counter-bound state below refuses at start.
//!
//! Rollback protection (docs/formats.md "Replication"; issue 27, item 2): one value sealed by the
//! platform, `raft-state` (version 3), holds the vote, the committed and purged positions, and
//! what the log holds — its last index and the head of a hash chain over every stored entry
//! (`h(i) = SHA-256("bkv/raft-chain/v1\0" || h(i-1) || i (u64 BE) || stored entry i)`, from the
//! purged entry's chain value) — with the index through which the record table was on disk.
//! Every write commits it with a new epoch in the same redb transaction, after which the
//! platform's monotonic counter advances to that epoch. At start the counter must not be ahead
//! of the epoch (an older copy of the state), and the log must be exactly what the state names:
//! contiguous from the purged position and chaining to the same head through the same last
//! index. So neither an older copy of the log, nor the newest state copied into one, nor a log
//! with entries deleted, replaced or reordered starts; [`super::fleet::Fleet::start`] then checks
//! the record table against the state. A log of an earlier release (raft state version 2 or
//! older, whose entries carried plain mutations) is refused with
//! [`ReplicationStoreError::EarlierRelease`].

use super::{db_err, storage_error, ReplicationStoreError, TypeConfig};
use bkv_hsm_core::{Counter, SealSlot, SharedPlatform};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft-meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft-log");
/// Largest stored entry accepted back from disk.
const MAX_ENTRY: usize = 1024 * 1024;
/// Log bytes per append to a follower, past the first entry ([`LogStore::limited_get_log_entries`]).
const APPEND_BYTES: usize = 256 * 1024;
/// The sealed state's key, slot and label (version 3).
const STATE_KEY: &str = "raft-state";
const STATE_LABEL: &[u8] = b"raft-state/v3";
const STATE_VERSION: u16 = 3;
/// The label of version 2 (an earlier release, whose entries carried plain mutations).
const STATE_LABEL_V2: &[u8] = b"raft-state/v2";
/// Keys of the META values of the release before that.
const LEGACY_KEYS: [&str; 4] = ["raft-epoch", "raft-vote", "raft-committed", "raft-purged"];

mod reader;
mod sealed;
use sealed::{chain_anchor, chain_step, log_behind, open_value, seal_value, Persisted, RaftState};

struct Inner {
    db: Database,
    /// Seals every value and holds the monotonic counter.
    platform: SharedPlatform,
    persisted: std::sync::Mutex<Persisted>,
    /// The record table's durable index ([`LogStore::set_records_durable`]), recorded with
    /// every write.
    records_durable: std::sync::Mutex<Option<tokio::sync::watch::Receiver<u64>>>,
    /// Sealed entry bytes in the log when it was opened plus those appended since (the
    /// snapshot policy's measure of log growth; it must count what a restart found on disk, or
    /// a node restarted before each threshold would never snapshot).
    appended: Arc<std::sync::atomic::AtomicU64>,
    /// A write failed: the memory may be ahead of the disk ([`LogStore::commit_state`]).
    failed: std::sync::atomic::AtomicBool,
    /// Dropped after the database (the last field), which writes its header and lets go of the
    /// file as it drops: [`LogStore::closed`] watches this, not `Inner` itself.
    open: crate::alive::Alive,
}

/// Log storage; clones share the database (the clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
    /// The log index up to which the record table is durable (`set_records_durable`): a purge
    /// waits for it, so the log never starts past what the table holds on disk.
    records_durable: Option<tokio::sync::watch::Receiver<u64>>,
}

/// How long a purge waits for the record table to reach its index (a follower's snapshot install
/// at 10⁶ users takes seconds); past it the purge fails and the node stops.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

impl LogStore {
    /// Opens the log; refuses a data directory whose log or state is behind the platform's
    /// counter, or does not match what the counter-bound state names (module docs).
    pub fn open(path: &Path, platform: SharedPlatform) -> Result<Self, ReplicationStoreError> {
        let db = Database::create(path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(META).map_err(db_err)?;
        tx.open_table(LOG).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        let state = {
            let tx = db.begin_read().map_err(db_err)?;
            let meta = tx.open_table(META).map_err(db_err)?;
            match meta.get(STATE_KEY).map_err(db_err)? {
                Some(v) => match open_value::<RaftState>(&platform, STATE_LABEL, v.value()) {
                    Ok(s) if s.version == STATE_VERSION => s,
                    Ok(s) => {
                        return Err(ReplicationStoreError::Malformed(format!(
                            "raft state version {}",
                            s.version
                        )))
                    }
                    Err(e) => {
                        if platform
                            .unseal(SealSlot::RaftState, STATE_LABEL_V2, v.value())
                            .is_ok()
                        {
                            return Err(ReplicationStoreError::EarlierRelease(
                                "raft state version 2".into(),
                            ));
                        }
                        return Err(e);
                    }
                },
                None => {
                    for k in LEGACY_KEYS {
                        if meta.get(k).map_err(db_err)?.is_some() {
                            return Err(ReplicationStoreError::EarlierRelease(format!(
                                "raft value {k}"
                            )));
                        }
                    }
                    RaftState {
                        version: STATE_VERSION,
                        ..Default::default()
                    }
                }
            }
        };
        let now = platform.counter_read(Counter::Raft)?;
        if state.epoch < now {
            return Err(ReplicationStoreError::Rollback {
                db: state.epoch,
                counter: now,
            });
        }
        // Walk the stored log: contiguous from the purged position, chained from its anchor.
        let (chain, bytes, head, last) = {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(LOG).map_err(db_err)?;
            let mut chain = BTreeMap::new();
            let mut bytes = 0u64;
            let mut head = state.purged_chain;
            let mut last = None;
            // The chain binds every stored (index, entry) in order: a deleted, added, replaced
            // or reordered entry anywhere changes the head.
            for item in t.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let (index, sealed) = (k.value(), v.value());
                head = chain_step(&head, index, sealed);
                chain.insert(index, head);
                bytes += sealed.len() as u64;
                last = Some(index);
            }
            (chain, bytes, head, last)
        };
        if last != state.last {
            return Err(log_behind(match (last, state.last) {
                (Some(l), Some(s)) if l < s => format!(
                    "it ends at entry {l}, but the counter-bound state names entries through {s} \
                     (entries deleted, or an older copy of the log)"
                ),
                (None, Some(s)) => format!(
                    "it holds no entry, but the counter-bound state names entries through {s}"
                ),
                (l, s) => format!(
                    "it ends at entry {l:?}, the counter-bound state names {s:?} (an older or \
                     altered copy)"
                ),
            }));
        } else if head != state.head {
            return Err(log_behind(
                "its entries are not the ones the counter-bound state chains (deleted, \
                 replaced, reordered or from an older copy)"
                    .into(),
            ));
        }
        let inner = Inner {
            db,
            platform,
            persisted: std::sync::Mutex::new(Persisted { state, chain }),
            records_durable: std::sync::Mutex::new(None),
            appended: Arc::new(std::sync::atomic::AtomicU64::new(bytes)),
            failed: std::sync::atomic::AtomicBool::new(false),
            open: Default::default(),
        };
        // A crash between a write and the counter advance.
        let epoch = inner.persisted.lock().map_err(|_| poisoned())?.state.epoch;
        inner.platform.counter_advance_to(Counter::Raft, epoch)?;
        Ok(LogStore {
            inner: Arc::new(inner),
            records_durable: None,
        })
    }

    /// Ties purges to the record table: a purge through index `i` first waits until the table
    /// is durable through `i`. openraft 0.9 purges a follower's log as soon as it has handed
    /// the state machine a snapshot to install, so without this a crash mid-install left a log
    /// starting past the table, and a node that could not start. Every write also records how
    /// far the table is durable, which [`super::fleet::Fleet::start`] holds the table to.
    pub fn set_records_durable(&mut self, durable: tokio::sync::watch::Receiver<u64>) {
        if let Ok(mut d) = self.inner.records_durable.lock() {
            *d = Some(durable.clone());
        }
        self.records_durable = Some(durable);
    }

    /// The index through which the record table was on disk, as the state last written says.
    pub fn records_durable_at(&self) -> u64 {
        self.inner
            .persisted
            .lock()
            .map(|p| p.state.records_durable)
            .unwrap_or(0)
    }

    /// The id of the stored entry at `index` (`Ok(None)`: none stored there), or the purged
    /// position if it is `index`.
    pub fn log_id_at(&self, index: u64) -> Result<Option<LogId<u64>>, ReplicationStoreError> {
        if let Some(p) = self
            .inner
            .persisted
            .lock()
            .map_err(|_| poisoned())?
            .state
            .purged
        {
            if p.index == index {
                return Ok(Some(p));
            }
        }
        Ok(
            LogStore::read_range(&self.inner, Bound::Included(index), Bound::Included(index))?
                .first()
                .map(|e| e.log_id),
        )
    }

    /// Sealed entry bytes found in the log at open plus those appended since (grows only; the
    /// entries kept after a purge count too, so a restart may snapshot a little early).
    pub fn appended_bytes(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.inner.appended.clone()
    }

    /// Whether every handle on this log (openraft keeps readers beside the store) is dropped,
    /// so its file is closed.
    pub fn closed(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        self.inner.open.gone()
    }

    /// Commits `tx` together with the state `change` makes (under a new epoch), then advances
    /// the platform counter to it (write first: a crash in between leaves the disk ahead of the
    /// counter, which `open` repairs; never behind). After a failed write the memory may be ahead
    /// of the disk, so the store refuses every later write (openraft stops the node on the
    /// error anyway; a restart reads the disk again).
    fn commit_state(
        inner: &Inner,
        tx: redb::WriteTransaction,
        p: &mut Persisted,
        change: impl FnOnce(&mut Persisted) -> Result<(), ReplicationStoreError>,
    ) -> Result<(), ReplicationStoreError> {
        use std::sync::atomic::Ordering;
        if inner.failed.load(Ordering::SeqCst) {
            return Err(ReplicationStoreError::Db(
                "an earlier write of the raft log failed; restart the node".into(),
            ));
        }
        let written = (|| {
            change(p)?;
            p.state.version = STATE_VERSION;
            p.state.epoch += 1;
            if let Some(d) = inner
                .records_durable
                .lock()
                .ok()
                .and_then(|d| d.as_ref().map(|d| *d.borrow()))
            {
                p.state.records_durable = p.state.records_durable.max(d);
            }
            let sealed = seal_value(&inner.platform, STATE_LABEL, &p.state)?;
            {
                let mut meta = tx.open_table(META).map_err(db_err)?;
                meta.insert(STATE_KEY, sealed.as_slice()).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })();
        if let Err(e) = written {
            inner.failed.store(true, Ordering::SeqCst);
            return Err(e);
        }
        // Its answer is read with the next host request (`counter_advance_soon`): the write
        // is durable already, so a crash before the advance leaves the disk ahead.
        inner
            .platform
            .counter_advance_soon(Counter::Raft, p.state.epoch)?;
        Ok(())
    }

    /// Runs a blocking database job off the async executor.
    async fn blocking<T, F>(&self, f: F) -> Result<T, ReplicationStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, ReplicationStoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(db_err)?
    }
}

fn poisoned() -> ReplicationStoreError {
    ReplicationStoreError::Db("raft state lock poisoned".into())
}

/// Deletes the log entries whose index is in `range`.
fn remove_range(
    t: &mut redb::Table<u64, &[u8]>,
    range: impl RangeBounds<u64>,
) -> Result<(), ReplicationStoreError> {
    let doomed: Vec<u64> = t
        .range(range)
        .map_err(db_err)?
        .filter_map(|r| r.ok().map(|(k, _)| k.value()))
        .collect();
    for k in doomed {
        t.remove(k).map_err(db_err)?;
    }
    Ok(())
}

fn read_err(e: ReplicationStoreError) -> StorageError<u64> {
    storage_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: ReplicationStoreError) -> StorageError<u64> {
    storage_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        self.blocking(|inner| {
            let (last, purged) = {
                let p = inner.persisted.lock().map_err(|_| poisoned())?;
                (p.state.last, p.state.purged)
            };
            let last_log_id = match last {
                Some(i) => LogStore::read_range(inner, Bound::Included(i), Bound::Included(i))?
                    .first()
                    .map(|e| e.log_id),
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id,
            })
        })
        .await
        .map_err(read_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let vote = *vote;
        self.blocking(move |inner| {
            let tx = inner.db.begin_write().map_err(db_err)?;
            let mut p = inner.persisted.lock().map_err(|_| poisoned())?;
            LogStore::commit_state(inner, tx, &mut p, |n| {
                n.state.vote = Some(vote);
                Ok(())
            })
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.blocking(|i| Ok(i.persisted.lock().map_err(|_| poisoned())?.state.vote))
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Only speeds up applying after a restart, so it rides along with the next durable
        // write instead of costing one of its own.
        if let Ok(mut p) = self.inner.persisted.lock() {
            p.state.committed = committed;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.blocking(|i| Ok(i.persisted.lock().map_err(|_| poisoned())?.state.committed))
            .await
            .map_err(read_err)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let r = self
            .blocking(move |inner| {
                let tx = inner.db.begin_write().map_err(db_err)?;
                let mut bytes = 0u64;
                let mut p = inner.persisted.lock().map_err(|_| poisoned())?;
                let mut sealed_entries = Vec::with_capacity(entries.len());
                for e in &entries {
                    let stored = bkv_wire::encode(e);
                    if stored.len() > MAX_ENTRY {
                        return Err(ReplicationStoreError::Malformed(
                            "raft entry too large".into(),
                        ));
                    }
                    bytes += stored.len() as u64;
                    sealed_entries.push((e.log_id.index, stored));
                }
                {
                    let mut t = tx.open_table(LOG).map_err(db_err)?;
                    for (index, sealed) in &sealed_entries {
                        t.insert(*index, sealed.as_slice()).map_err(db_err)?;
                    }
                }
                LogStore::commit_state(inner, tx, &mut p, |n| {
                    for (index, sealed) in &sealed_entries {
                        // An entry replacing a stored one (openraft truncates first; kept
                        // exact either way): the chain continues from the entry before it.
                        n.cut_from(*index);
                        // openraft appends right after the last entry or the purge point;
                        // anything else chains after whatever is stored, as `open` reads it.
                        let prev = n.before(*index).unwrap_or(n.state.head);
                        let h = chain_step(&prev, *index, sealed);
                        n.chain.insert(*index, h);
                        (n.state.last, n.state.head) = (Some(*index), h);
                    }
                    Ok(())
                })?;
                inner
                    .appended
                    .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            })
            .await;
        match r {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg)));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.blocking(move |inner| {
            let tx = inner.db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(db_err)?;
                remove_range(&mut t, log_id.index..)?;
            }
            let mut p = inner.persisted.lock().map_err(|_| poisoned())?;
            LogStore::commit_state(inner, tx, &mut p, |n| {
                n.cut_from(log_id.index);
                Ok(())
            })
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        if let Some(durable) = &mut self.records_durable {
            let reached =
                tokio::time::timeout(PURGE_WAIT, durable.wait_for(|d| *d >= log_id.index));
            match reached.await {
                Ok(Ok(_)) => {}
                _ => {
                    return Err(write_err(ReplicationStoreError::Records(format!(
                        "the record table did not become durable through log index {} \
                         (purge refused)",
                        log_id.index
                    ))))
                }
            }
        }
        self.blocking(move |inner| {
            // The purged position's chain value: its stored entry's, when this node stored
            // that very entry; else (a snapshot installed past the log) its anchor.
            let stored = LogStore::read_range(
                inner,
                Bound::Included(log_id.index),
                Bound::Included(log_id.index),
            )?;
            let tx = inner.db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(db_err)?;
                remove_range(&mut t, ..=log_id.index)?;
            }
            let mut p = inner.persisted.lock().map_err(|_| poisoned())?;
            LogStore::commit_state(inner, tx, &mut p, |n| {
                let anchor = match (stored.first(), n.chain.get(&log_id.index)) {
                    (Some(e), Some(h)) if e.log_id == log_id => *h,
                    _ => chain_anchor(&log_id),
                };
                let kept = n.chain.split_off(&(log_id.index + 1));
                n.chain = kept;
                n.state.purged = Some(log_id);
                n.state.purged_chain = anchor;
                if n.chain.is_empty() {
                    (n.state.last, n.state.head) = (None, anchor);
                }
                Ok(())
            })
        })
        .await
        .map_err(write_err)
    }
}

#[cfg(test)]
mod tests;
