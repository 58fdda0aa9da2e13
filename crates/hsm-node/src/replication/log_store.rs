//! The Raft log, vote and committed index in redb, every value sealed by the
//! platform and bound to its slot (so the host can neither read, forge nor
//! move entries). Each write is one durable redb transaction, after which the
//! platform's monotonic counter advances to the write's epoch (rollback
//! detection).

use super::{db_err, storage_error, ReplicationStoreError, TypeConfig};
use bkv_hsm_core::SharedPlatform;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft-meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft-log");
/// Largest sealed entry accepted back from disk.
const MAX_ENTRY: usize = 1024 * 1024;

struct Inner {
    db: Database,
    /// Seals every value and holds the monotonic counter.
    platform: SharedPlatform,
    /// Epoch of the last durable write (the counter follows it).
    epoch: std::sync::Mutex<u64>,
    /// Sealed entry bytes in the log when it was opened plus those appended since (the
    /// snapshot policy's measure of log growth; it must count what a restart found on disk, or
    /// a node restarted before each threshold would never snapshot).
    appended: Arc<std::sync::atomic::AtomicU64>,
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

fn seal_value<T: serde::Serialize>(
    p: &SharedPlatform,
    purpose: &str,
    label: &[u8],
    v: &T,
) -> Result<Vec<u8>, ReplicationStoreError> {
    Ok(p.seal(
        purpose,
        label,
        &zeroize::Zeroizing::new(bkv_wire::encode(v)),
    )?)
}

fn open_value<T: serde::de::DeserializeOwned>(
    p: &SharedPlatform,
    purpose: &str,
    label: &[u8],
    sealed: &[u8],
) -> Result<T, ReplicationStoreError> {
    if sealed.len() > MAX_ENTRY {
        return Err(ReplicationStoreError::Malformed(purpose.into()));
    }
    let plain = p
        .unseal(purpose, label, sealed)
        .map_err(|_| ReplicationStoreError::Unseal(purpose.into()))?;
    bkv_wire::decode(&plain, MAX_ENTRY)
        .map_err(|_| ReplicationStoreError::Malformed(purpose.into()))
}

impl LogStore {
    /// Opens the log; refuses a data directory whose epoch is behind the
    /// platform's counter (a rolled-back disk).
    pub fn open(path: &Path, platform: SharedPlatform) -> Result<Self, ReplicationStoreError> {
        let db = Database::create(path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(META).map_err(db_err)?;
        tx.open_table(LOG).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        let on_disk = {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(LOG).map_err(db_err)?;
            let mut bytes = 0u64;
            for item in t.iter().map_err(db_err)? {
                let (_, v) = item.map_err(db_err)?;
                bytes += v.value().len() as u64;
            }
            bytes
        };
        let mut inner = Inner {
            db,
            platform,
            epoch: std::sync::Mutex::new(0),
            appended: Arc::new(std::sync::atomic::AtomicU64::new(on_disk)),
        };
        let db_epoch: u64 = LogStore::get_meta(&inner, "raft-epoch")?.unwrap_or(0);
        let now = inner.platform.counter_read()?;
        if db_epoch < now {
            return Err(ReplicationStoreError::Rollback {
                db: db_epoch,
                counter: now,
            });
        }
        // A crash between a write and the counter advance.
        inner.platform.counter_advance_to(db_epoch)?;
        inner.epoch = std::sync::Mutex::new(db_epoch);
        Ok(LogStore {
            inner: Arc::new(inner),
            records_durable: None,
        })
    }

    /// Ties purges to the record table: a purge through index `i` first waits until the table
    /// is durable through `i`. openraft 0.9 purges a follower's log as soon as it has handed
    /// the state machine a snapshot to install, so without this a crash mid-install left a log
    /// starting past the table, and a node that could not start.
    pub fn set_records_durable(&mut self, durable: tokio::sync::watch::Receiver<u64>) {
        self.records_durable = Some(durable);
    }

    /// Sealed entry bytes found in the log at open plus those appended since (grows only; the
    /// entries kept after a purge count too, so a restart may snapshot a little early).
    pub fn appended_bytes(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.inner.appended.clone()
    }

    /// Commits `tx` together with a new epoch, then advances the platform
    /// counter to it (write first: a crash in between leaves the disk ahead
    /// of the counter, which `open` repairs; never behind).
    fn commit_epoch(
        inner: &Inner,
        tx: redb::WriteTransaction,
    ) -> Result<(), ReplicationStoreError> {
        let mut epoch = inner
            .epoch
            .lock()
            .map_err(|_| ReplicationStoreError::Db("epoch lock poisoned".into()))?;
        let next = *epoch + 1;
        {
            let sealed = seal_value(&inner.platform, "raft-epoch", b"raft-epoch", &next)?;
            let mut meta = tx.open_table(META).map_err(db_err)?;
            meta.insert("raft-epoch", sealed.as_slice())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        *epoch = next;
        inner.platform.counter_advance_to(next)?;
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

    fn get_meta<T: serde::de::DeserializeOwned>(
        inner: &Inner,
        name: &'static str,
    ) -> Result<Option<T>, ReplicationStoreError> {
        let tx = inner.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(META).map_err(db_err)?;
        match t.get(name).map_err(db_err)? {
            Some(v) => Ok(Some(open_value(
                &inner.platform,
                name,
                name.as_bytes(),
                v.value(),
            )?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(
        inner: &Inner,
        name: &'static str,
        v: &T,
    ) -> Result<(), ReplicationStoreError> {
        let sealed = seal_value(&inner.platform, name, name.as_bytes(), v)?;
        let tx = inner.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(META).map_err(db_err)?;
            t.insert(name, sealed.as_slice()).map_err(db_err)?;
        }
        LogStore::commit_epoch(inner, tx)
    }

    fn read_range(
        inner: &Inner,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, ReplicationStoreError> {
        let tx = inner.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(LOG).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.range::<u64>((start, end)).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let index = k.value();
            let e: Entry<TypeConfig> = open_value(
                &inner.platform,
                "raft-entry",
                &index.to_be_bytes(),
                v.value(),
            )?;
            if e.log_id.index != index {
                return Err(ReplicationStoreError::Malformed("raft-entry index".into()));
            }
            out.push(e);
        }
        Ok(out)
    }
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

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        self.blocking(move |i| LogStore::read_range(i, start, end))
            .await
            .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        self.blocking(|inner| {
            let last_purged: Option<LogId<u64>> = LogStore::get_meta(inner, "raft-purged")?;
            let tx = inner.db.begin_read().map_err(db_err)?;
            let t = tx.open_table(LOG).map_err(db_err)?;
            let last = match t.last().map_err(db_err)? {
                Some((k, v)) => {
                    let index = k.value();
                    let e: Entry<TypeConfig> = open_value(
                        &inner.platform,
                        "raft-entry",
                        &index.to_be_bytes(),
                        v.value(),
                    )?;
                    Some(e.log_id)
                }
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
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
        self.blocking(move |i| LogStore::put_meta(i, "raft-vote", &vote))
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.blocking(|i| LogStore::get_meta(i, "raft-vote"))
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Only speeds up applying after a restart, so it rides along with the
        // next durable write instead of costing an fsync of its own.
        self.blocking(move |inner| {
            let sealed = seal_value(
                &inner.platform,
                "raft-committed",
                b"raft-committed",
                &committed,
            )?;
            let mut tx = inner.db.begin_write().map_err(db_err)?;
            tx.set_durability(redb::Durability::None);
            {
                let mut t = tx.open_table(META).map_err(db_err)?;
                t.insert("raft-committed", sealed.as_slice())
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
        .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.blocking(|i| {
            Ok(LogStore::get_meta::<Option<LogId<u64>>>(i, "raft-committed")?.flatten())
        })
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
                {
                    let mut t = tx.open_table(LOG).map_err(db_err)?;
                    for e in &entries {
                        let index = e.log_id.index;
                        let sealed =
                            seal_value(&inner.platform, "raft-entry", &index.to_be_bytes(), e)?;
                        t.insert(index, sealed.as_slice()).map_err(db_err)?;
                        bytes += sealed.len() as u64;
                    }
                }
                inner
                    .appended
                    .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                // redb's default durability fsyncs before commit returns.
                LogStore::commit_epoch(inner, tx)
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
            LogStore::commit_epoch(inner, tx)
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
            let sealed = seal_value(&inner.platform, "raft-purged", b"raft-purged", &log_id)?;
            let tx = inner.db.begin_write().map_err(db_err)?;
            {
                let mut meta = tx.open_table(META).map_err(db_err)?;
                meta.insert("raft-purged", sealed.as_slice())
                    .map_err(db_err)?;
                let mut t = tx.open_table(LOG).map_err(db_err)?;
                remove_range(&mut t, ..=log_id.index)?;
            }
            LogStore::commit_epoch(inner, tx)
        })
        .await
        .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bkv_hsm_core::MemoryPlatform;
    use openraft::CommittedLeaderId;

    async fn purged(log: &mut LogStore) -> Option<u64> {
        log.get_log_state()
            .await
            .ok()
            .and_then(|s| s.last_purged_log_id)
            .map(|l| l.index)
    }

    /// A purge waits for the record table to be durable through its index (a snapshot being
    /// installed), then purges exactly what was asked.
    #[tokio::test]
    async fn a_purge_waits_for_the_record_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let platform = MemoryPlatform::shared([7u8; 32]);
        let mut log = LogStore::open(&dir.path().join("raft.redb"), platform).expect("log");
        let (durable, rx) = tokio::sync::watch::channel(3u64);
        log.set_records_durable(rx);
        let mut purging = log.clone();
        let id = LogId::new(CommittedLeaderId::new(1, 0), 5);
        let mut purge = tokio::spawn(async move { purging.purge(id).await });
        durable.send_replace(4);
        // Bounds a negative only: with the tie the purge cannot finish however long this is.
        let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut purge).await;
        assert!(early.is_err(), "purged while the table was behind");
        assert_eq!(purged(&mut log).await, None);
        durable.send_replace(5);
        purge.await.expect("join").expect("purge");
        assert_eq!(purged(&mut log).await, Some(5));
    }

    /// Without the tie (openraft's storage suite, tools) a purge does not wait.
    #[tokio::test]
    async fn an_untied_log_purges_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let platform = MemoryPlatform::shared([7u8; 32]);
        let mut log = LogStore::open(&dir.path().join("raft.redb"), platform).expect("log");
        log.purge(LogId::new(CommittedLeaderId::new(1, 0), 2))
            .await
            .expect("purge");
        assert_eq!(purged(&mut log).await, Some(2));
    }
}
