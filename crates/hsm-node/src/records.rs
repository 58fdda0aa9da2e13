//! Vault records on disk: the host's half of records that live in redb instead of in memory
//! (issue 13, part 4; docs/scaling.md "Per-record state").
//!
//! One redb value per bucket of records, keyed by the bucket's number, holding the bucket's
//! sealed value as the core's [`RecordCommitment`](bkv_hsm_core::commitment::RecordCommitment)
//! made it, and beside them the core's sealed summary (the fleet part of the state, the
//! commitment's root and the log position applied), always written in the same transaction as
//! the buckets it describes. Nothing here is trusted: the core checks every bucket against its
//! commitment before it unseals it, and at a restart the whole table against the summary, so a
//! bucket put back from an older copy of the file, or removed from it, is refused.

use bkv_hsm_core::commitment::MAX_BUCKET_BYTES;
use bkv_hsm_core::sealed_state::{BucketHost, BucketVisitor, SealedError, MAX_SUMMARY};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const BUCKETS: TableDefinition<u16, &[u8]> = TableDefinition::new("vault-buckets");
const SUMMARY: TableDefinition<&str, &[u8]> = TableDefinition::new("vault-summary");
const SUMMARY_KEY: &str = "current";
/// Host-side bookkeeping beside the summary: the sum of the stored buckets' sizes (u64 BE), so a
/// snapshot's length is known without reading every bucket. Unchecked: a wrong figure can only
/// make a snapshot fail to send.
const SEALED_BYTES_KEY: &str = "sealed-bytes";
/// A sealed bucket: the encoded bucket's limit plus the sealing format's overhead, with room.
pub const MAX_SEALED_BUCKET: usize = MAX_BUCKET_BYTES + 256;

#[derive(Debug, thiserror::Error)]
pub enum RecordTableError {
    #[error("record table: {0}")]
    Db(String),
    #[error("record table: bucket {0} holds a value over the size limit")]
    TooLarge(u16),
    #[error("record table: the summary is over the size limit")]
    SummaryTooLarge,
}

impl From<RecordTableError> for SealedError {
    fn from(e: RecordTableError) -> Self {
        SealedError::Host(e.to_string())
    }
}

fn db_err<E: std::fmt::Display>(e: E) -> RecordTableError {
    RecordTableError::Db(e.to_string())
}

pub struct RecordTable {
    db: Database,
}

impl RecordTable {
    /// Opens (or creates) the table's file with a page cache of at most `cache_bytes`: with the
    /// records on disk, the cache is what memory grows to, so it is the operator's bound.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, RecordTableError> {
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(BUCKETS).map_err(db_err)?;
        tx.open_table(SUMMARY).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(RecordTable { db })
    }

    /// The stored summary (`None`: nothing was ever applied).
    pub fn summary(&self) -> Result<Option<Vec<u8>>, RecordTableError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        read_summary(&tx.open_table(SUMMARY).map_err(db_err)?)
    }

    /// Makes everything committed so far durable (redb persists a commit without fsync only
    /// with the next durable one) and returns the summary that is now on disk: read inside the
    /// same transaction, so no later commit can slip in between (a snapshot's position must be
    /// durable before the log behind it is purged).
    pub fn sync(&self) -> Result<Option<Vec<u8>>, RecordTableError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let summary = read_summary(&tx.open_table(SUMMARY).map_err(db_err)?)?;
        tx.commit().map_err(db_err)?;
        Ok(summary)
    }

    /// A consistent view of the table as it is now (a snapshot being read while applies go on).
    pub fn view(&self) -> Result<TableView, RecordTableError> {
        Ok(TableView(self.db.begin_read().map_err(db_err)?))
    }

    /// Starts replacing the whole table (a snapshot installed piece by piece): nothing is visible
    /// to readers until [`Replacement::commit`].
    pub fn begin_replace(&self) -> Result<Replacement, RecordTableError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.delete_table(BUCKETS).map_err(db_err)?;
        // Created again at once: a snapshot with no bucket must leave an empty table, not none
        // (readers would fail to open it).
        tx.open_table(BUCKETS).map_err(db_err)?;
        Ok(Replacement(tx, std::cell::Cell::new(0)))
    }

    /// Replaces every bucket with `buckets` and the summary with `summary`, durably, in one
    /// transaction (a snapshot installed).
    pub fn replace_all(
        &self,
        buckets: &[(u16, Vec<u8>)],
        summary: &[u8],
    ) -> Result<(), RecordTableError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.delete_table(BUCKETS).map_err(db_err)?;
        {
            let mut t = tx.open_table(BUCKETS).map_err(db_err)?;
            let mut bytes = 0u64;
            for (b, v) in buckets {
                if v.len() > MAX_SEALED_BUCKET {
                    return Err(RecordTableError::TooLarge(*b));
                }
                t.insert(*b, v.as_slice()).map_err(db_err)?;
                bytes += v.len() as u64;
            }
            write_summary(&tx, summary)?;
            write_u64(&tx, SEALED_BYTES_KEY, bytes)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Bucket `b`'s sealed value (`None`: nothing stored, an empty bucket).
    pub fn read(&self, b: u16) -> Result<Option<Vec<u8>>, RecordTableError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(BUCKETS).map_err(db_err)?;
        let Some(v) = t.get(b).map_err(db_err)? else {
            return Ok(None);
        };
        if v.value().len() > MAX_SEALED_BUCKET {
            return Err(RecordTableError::TooLarge(b));
        }
        Ok(Some(v.value().to_vec()))
    }

    /// Stores each bucket's new sealed value (`None`: remove it) in one transaction: all or
    /// nothing. `durable: false` skips the fsync: a crash may lose the transaction but never
    /// tear it. In redb such a commit reaches the disk only with the next durable one, and
    /// freed pages are reused only after it, so a caller that skips fsyncs (state the log can
    /// re-apply) must still commit durably often enough — at least before the log it would
    /// re-apply from is purged — or a crash takes it back before the log's first index and the
    /// file keeps growing.
    pub fn write(
        &self,
        changes: &[(u16, Option<Vec<u8>>)],
        summary: Option<&[u8]>,
        durable: bool,
    ) -> Result<(), RecordTableError> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        if !durable {
            tx.set_durability(redb::Durability::None);
        }
        {
            let mut t = tx.open_table(BUCKETS).map_err(db_err)?;
            let mut meta = tx.open_table(SUMMARY).map_err(db_err)?;
            let mut bytes = read_u64(&meta, SEALED_BYTES_KEY)?;
            for (b, sealed) in changes {
                let old = match sealed {
                    Some(v) if v.len() > MAX_SEALED_BUCKET => {
                        return Err(RecordTableError::TooLarge(*b));
                    }
                    Some(v) => {
                        bytes += v.len() as u64;
                        t.insert(*b, v.as_slice()).map_err(db_err)?
                    }
                    None => t.remove(*b).map_err(db_err)?,
                };
                bytes = bytes.saturating_sub(old.map(|o| o.value().len() as u64).unwrap_or(0));
            }
            meta.insert(SEALED_BYTES_KEY, bytes.to_be_bytes().as_slice())
                .map_err(db_err)?;
        }
        if let Some(summary) = summary {
            write_summary(&tx, summary)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Calls `f` with every stored bucket in bucket order, one value at a time (a restart
    /// rebuilding the commitment reads the whole table in bounded memory).
    pub fn for_each<E: From<RecordTableError>>(
        &self,
        f: impl FnMut(u16, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.view()?.for_each(f)
    }

    /// Bytes of pages in use and bytes of keys and values stored in them (the file itself grows
    /// in steps, so its length overstates what the records take).
    pub fn usage(&self) -> Result<(u64, u64), RecordTableError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let st = tx.stats().map_err(db_err)?;
        tx.abort().map_err(db_err)?;
        Ok((
            st.allocated_pages() * st.page_size() as u64,
            st.stored_bytes(),
        ))
    }

    /// Buckets stored (non-empty buckets).
    pub fn len(&self) -> Result<u64, RecordTableError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(BUCKETS).map_err(db_err)?;
        t.len().map_err(db_err)
    }

    pub fn is_empty(&self) -> Result<bool, RecordTableError> {
        Ok(self.len()? == 0)
    }
}

fn read_summary(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<Vec<u8>>, RecordTableError> {
    let Some(v) = t.get(SUMMARY_KEY).map_err(db_err)? else {
        return Ok(None);
    };
    if v.value().len() > MAX_SUMMARY {
        return Err(RecordTableError::SummaryTooLarge);
    }
    Ok(Some(v.value().to_vec()))
}

fn read_u64(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<u64, RecordTableError> {
    Ok(t.get(key)
        .map_err(db_err)?
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

fn write_u64(tx: &redb::WriteTransaction, key: &str, v: u64) -> Result<(), RecordTableError> {
    let mut t = tx.open_table(SUMMARY).map_err(db_err)?;
    t.insert(key, v.to_be_bytes().as_slice()).map_err(db_err)?;
    Ok(())
}

fn write_summary(tx: &redb::WriteTransaction, summary: &[u8]) -> Result<(), RecordTableError> {
    if summary.len() > MAX_SUMMARY {
        return Err(RecordTableError::SummaryTooLarge);
    }
    let mut t = tx.open_table(SUMMARY).map_err(db_err)?;
    t.insert(SUMMARY_KEY, summary).map_err(db_err)?;
    Ok(())
}

/// A replacement of the whole table in one write transaction ([`RecordTable::begin_replace`]).
pub struct Replacement(redb::WriteTransaction, std::cell::Cell<u64>);

impl Replacement {
    pub fn put(&self, b: u16, sealed: &[u8]) -> Result<(), RecordTableError> {
        if sealed.len() > MAX_SEALED_BUCKET {
            return Err(RecordTableError::TooLarge(b));
        }
        let mut t = self.0.open_table(BUCKETS).map_err(db_err)?;
        t.insert(b, sealed).map_err(db_err)?;
        self.1.set(self.1.get() + sealed.len() as u64);
        Ok(())
    }

    /// Stores `summary` and commits, durably; dropped without this, nothing changes.
    pub fn commit(self, summary: &[u8]) -> Result<(), RecordTableError> {
        write_summary(&self.0, summary)?;
        write_u64(&self.0, SEALED_BYTES_KEY, self.1.get())?;
        self.0.commit().map_err(db_err)
    }
}

/// One read transaction over the table: the summary and the buckets as of one commit.
pub struct TableView(redb::ReadTransaction);

impl TableView {
    pub fn summary(&self) -> Result<Option<Vec<u8>>, RecordTableError> {
        read_summary(&self.0.open_table(SUMMARY).map_err(db_err)?)
    }

    /// The stored buckets' count and the sum of their sizes (host bookkeeping, unchecked).
    pub fn sizes(&self) -> Result<(u64, u64), RecordTableError> {
        let count = self
            .0
            .open_table(BUCKETS)
            .map_err(db_err)?
            .len()
            .map_err(db_err)?;
        let bytes = read_u64(
            &self.0.open_table(SUMMARY).map_err(db_err)?,
            SEALED_BYTES_KEY,
        )?;
        Ok((count, bytes))
    }

    /// The first stored bucket numbered `from` or more, with its value.
    pub fn next_from(&self, from: u16) -> Result<Option<(u16, Vec<u8>)>, RecordTableError> {
        let t = self.0.open_table(BUCKETS).map_err(db_err)?;
        let Some(item) = t.range(from..).map_err(db_err)?.next() else {
            return Ok(None);
        };
        let (k, v) = item.map_err(db_err)?;
        if v.value().len() > MAX_SEALED_BUCKET {
            return Err(RecordTableError::TooLarge(k.value()));
        }
        Ok(Some((k.value(), v.value().to_vec())))
    }

    /// Calls `f` with every stored bucket in bucket order, one value at a time.
    pub fn for_each<E: From<RecordTableError>>(
        &self,
        mut f: impl FnMut(u16, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let t = self.0.open_table(BUCKETS).map_err(db_err)?;
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            if v.value().len() > MAX_SEALED_BUCKET {
                return Err(RecordTableError::TooLarge(k.value()).into());
            }
            f(k.value(), v.value())?;
        }
        Ok(())
    }
}

/// Bucket values the core has handed over that are not committed to the table yet (each with
/// the number of the write that carries it). The state machine writes the table after releasing
/// the core's lock, so sessions are not held up by redb (or, every 100 ms, its fsync); until the
/// write lands, reads must see these.
#[derive(Clone, Default)]
pub struct InFlight(Arc<std::sync::Mutex<InFlightMap>>);

type InFlightMap = std::collections::HashMap<u16, (u64, Option<Vec<u8>>)>;

impl InFlight {
    /// Records `writes` as carried by write number `seq`.
    pub fn add(&self, seq: u64, writes: &[(u16, Option<Vec<u8>>)]) -> Result<(), RecordTableError> {
        let mut m = self
            .0
            .lock()
            .map_err(|_| db_err("in-flight lock poisoned"))?;
        for (b, v) in writes {
            m.insert(*b, (seq, v.clone()));
        }
        Ok(())
    }

    /// Forgets what write number `seq` (and earlier ones) carried, now in the table.
    pub fn landed(&self, seq: u64) -> Result<(), RecordTableError> {
        let mut m = self
            .0
            .lock()
            .map_err(|_| db_err("in-flight lock poisoned"))?;
        m.retain(|_, (s, _)| *s > seq);
        Ok(())
    }

    fn get(&self, b: u16) -> Result<Option<Option<Vec<u8>>>, RecordTableError> {
        let m = self
            .0
            .lock()
            .map_err(|_| db_err("in-flight lock poisoned"))?;
        Ok(m.get(&b).map(|(_, v)| v.clone()))
    }

    fn is_empty(&self) -> bool {
        self.0.lock().map(|m| m.is_empty()).unwrap_or(false)
    }
}

/// The table as the core's [`BucketHost`], with the writes still on their way to it.
pub struct TableHost(pub Arc<RecordTable>, pub InFlight);

impl BucketHost for TableHost {
    fn read(&self, b: u16) -> Result<Option<Vec<u8>>, String> {
        if let Some(v) = self.1.get(b).map_err(|e| e.to_string())? {
            return Ok(v);
        }
        self.0.read(b).map_err(|e| e.to_string())
    }

    fn for_each(&self, f: &mut BucketVisitor<'_>) -> Result<(), SealedError> {
        // Only a restart walks the table, before any write is in flight.
        if !self.1.is_empty() {
            return Err(SealedError::Host("bucket writes still in flight".into()));
        }
        self.0.for_each(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bkv_hsm_core::commitment::{Bucket, CommitmentError, RecordCommitment};
    use bkv_hsm_core::state::{Live, Record};
    use bkv_hsm_core::{MemoryPlatform, RecordId};

    const TEST_CACHE: usize = 4 << 20;

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Table(#[from] RecordTableError),
        #[error(transparent)]
        Commitment(#[from] CommitmentError),
    }

    fn record(generation: u64) -> Record {
        Record {
            generation,
            live: Some(Live::Destroyed),
            pending: None,
        }
    }

    fn rid(n: u32) -> RecordId {
        bkv_wire::record_id(&format!("user-{n}"))
    }

    /// Sets a record the way the state machine will: read the bucket, open it against the
    /// commitment, change it, seal and commit, write. Returns the bucket's new sealed value.
    fn set(
        table: &RecordTable,
        c: &mut RecordCommitment,
        p: &MemoryPlatform,
        id: &RecordId,
        r: Record,
    ) -> Vec<u8> {
        let b = c.bucket(id);
        let old = table.read(b).unwrap();
        let mut bucket = c.open(p, b, old.as_deref()).unwrap();
        bucket.set(*id, Some(r));
        let new = c.update(p, b, old.as_deref(), &bucket).unwrap();
        table.write(&[(b, new.clone())], None, true).unwrap();
        new.unwrap()
    }

    fn load(
        table: &RecordTable,
        c: &RecordCommitment,
        p: &MemoryPlatform,
        id: &RecordId,
    ) -> Result<Option<Record>, CommitmentError> {
        let b = c.bucket(id);
        let bucket: Bucket = c.open(p, b, table.read(b).unwrap().as_deref())?;
        Ok(bucket.get(id).cloned())
    }

    /// The fault the commitment exists for: the host's disk hands back an older copy of a
    /// record's bucket (a guess counter rolled back one record at a time), or hides it; the core
    /// refuses both, and the other buckets still open.
    #[test]
    fn a_bucket_put_back_at_an_older_value_on_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let table = RecordTable::open(&dir.path().join("records.redb"), TEST_CACHE).unwrap();
        let p = MemoryPlatform::new([4; 32]);
        let mut c = RecordCommitment::new([6; 32]);
        let a = rid(1);
        let neighbour = (2..)
            .map(rid)
            .find(|n| c.bucket(n) != c.bucket(&a))
            .unwrap();
        let old = set(&table, &mut c, &p, &a, record(1));
        set(&table, &mut c, &p, &a, record(2));
        set(&table, &mut c, &p, &neighbour, record(7));
        assert_eq!(load(&table, &c, &p, &a).unwrap(), Some(record(2)));

        let b = c.bucket(&a);
        table.write(&[(b, Some(old))], None, true).unwrap();
        assert!(matches!(
            load(&table, &c, &p, &a),
            Err(CommitmentError::Stale(x)) if x == b
        ));
        table.write(&[(b, None)], None, false).unwrap();
        assert!(matches!(
            load(&table, &c, &p, &a),
            Err(CommitmentError::Stale(_))
        ));
        assert_eq!(load(&table, &c, &p, &neighbour).unwrap(), Some(record(7)));
    }

    /// The same, the way an attacker with the disk would do it: the whole file put back from a
    /// copy taken before the last change.
    #[test]
    fn a_table_file_restored_from_an_older_copy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, copy) = (
            dir.path().join("records.redb"),
            dir.path().join("copy.redb"),
        );
        let p = MemoryPlatform::new([4; 32]);
        let mut c = RecordCommitment::new([6; 32]);
        let a = rid(1);
        {
            let table = RecordTable::open(&path, TEST_CACHE).unwrap();
            set(&table, &mut c, &p, &a, record(1));
        }
        std::fs::copy(&path, &copy).unwrap();
        {
            let table = RecordTable::open(&path, TEST_CACHE).unwrap();
            set(&table, &mut c, &p, &a, record(2));
            assert_eq!(load(&table, &c, &p, &a).unwrap(), Some(record(2)));
        }
        std::fs::copy(&copy, &path).unwrap();
        let table = RecordTable::open(&path, TEST_CACHE).unwrap();
        assert!(matches!(
            load(&table, &c, &p, &a),
            Err(CommitmentError::Stale(_))
        ));
    }

    #[test]
    fn a_restart_rebuilds_the_same_root_from_the_table_and_notices_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.redb");
        let p = MemoryPlatform::new([4; 32]);
        let mut c = RecordCommitment::new([6; 32]);
        let first;
        {
            let table = RecordTable::open(&path, TEST_CACHE).unwrap();
            first = set(&table, &mut c, &p, &rid(0), record(0));
            for n in 1..3000 {
                set(&table, &mut c, &p, &rid(n), record(u64::from(n)));
            }
            set(&table, &mut c, &p, &rid(0), record(9999));
        }
        let table = RecordTable::open(&path, TEST_CACHE).unwrap();
        let rebuild = |table: &RecordTable| -> Result<RecordCommitment, TestError> {
            let mut r = RecordCommitment::new([6; 32]);
            table.for_each(|b, sealed| r.load(b, sealed).map_err(TestError::from))?;
            Ok(r)
        };
        assert_eq!(rebuild(&table).unwrap().root(), c.root());
        assert_eq!(load(&table, &c, &p, &rid(0)).unwrap(), Some(record(9999)));

        // Record 0's bucket put back at its first value: the rebuilt root no longer matches the
        // one the node committed to, so a restart refuses the store.
        table
            .write(&[(c.bucket(&rid(0)), Some(first))], None, true)
            .unwrap();
        assert_ne!(rebuild(&table).unwrap().root(), c.root());
    }

    #[test]
    fn oversized_values_are_errors_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let table = RecordTable::open(&dir.path().join("records.redb"), TEST_CACHE).unwrap();
        let big = vec![0; MAX_SEALED_BUCKET + 1];
        assert!(matches!(
            table.write(&[(1, Some(vec![1])), (2, Some(big.clone()))], None, true),
            Err(RecordTableError::TooLarge(2))
        ));
        assert!(table.is_empty().unwrap());
        // Written past this module's checks, it is refused on the way back.
        let tx = table.db.begin_write().unwrap();
        tx.open_table(BUCKETS)
            .unwrap()
            .insert(3, big.as_slice())
            .unwrap();
        tx.commit().unwrap();
        assert!(matches!(table.read(3), Err(RecordTableError::TooLarge(3))));
        let r: Result<(), RecordTableError> = table.for_each(|_, _| Ok(()));
        assert!(matches!(r, Err(RecordTableError::TooLarge(3))));
    }
}
