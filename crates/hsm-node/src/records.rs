//! Vault records on disk: the host's half of records that live in redb instead of in memory
//! (issue 13, part 4; docs/scaling.md "Per-record state").
//!
//! Each bucket of records is stored under the bucket's number as the sealed value the core's
//! [`RecordCommitment`](bkv_hsm_core::commitment::RecordCommitment) made it, split in two (see
//! [`HEAD_BYTES`]), and beside them the core's sealed summary (the fleet part of the state, the
//! commitment's root and the log position applied), always written in the same transaction as
//! the buckets it describes. Nothing here is trusted: the core checks every bucket against its
//! commitment before it unseals it, and at a restart the whole table against the summary, so a
//! bucket put back from an older copy of the file, or removed from it, is refused.

use bkv_hsm_core::commitment::MAX_BUCKET_BYTES;
use bkv_hsm_core::sealed_state::{BucketHost, BucketVisitor, SealedError, MAX_SUMMARY};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use std::sync::Arc;

/// The first [`HEAD_BYTES`] of each bucket's sealed value (all of it, if shorter).
const BUCKETS: TableDefinition<u16, &[u8]> = TableDefinition::new("vault-buckets");
/// The rest of each sealed value longer than [`HEAD_BYTES`].
const TAILS: TableDefinition<u16, &[u8]> = TableDefinition::new("vault-bucket-tails");
/// Where a sealed bucket value is split (stored layout 2): a head of at most this many bytes in
/// `vault-buckets` and the rest, if any, in `vault-bucket-tails`, both under the bucket's
/// number; a value is its head followed, when the head is exactly this long, by its tail.
///
/// Why: redb gives a leaf the smallest power-of-two run of 4 KiB pages it fits in, so at 10⁶
/// users a bucket of ~16 records (~4.9 KB sealed) took 8 KiB whole. Split, the head fills one
/// page (a leaf of one 4,000-byte value: 4,010 bytes with redb's header) and the tails (~900 B)
/// share leaves: at 10⁶ users the leader's table and log took 481 against 577 bytes per user
/// allocated, measured in one sitting (BENCHMARKS.md, "Record table layout 2"). Layout 1 stored the whole value in
/// `vault-buckets`; it reads the same way (a head longer than this is a whole value, and layout 1
/// wrote no tails), and every bucket moves to layout 2 when it is next written.
pub(crate) const HEAD_BYTES: usize = 4_000;
const SUMMARY: TableDefinition<&str, &[u8]> = TableDefinition::new("vault-summary");
const SUMMARY_KEY: &str = "current";
/// Host-side bookkeeping beside the summary: the sum of the stored buckets' sizes (u64 BE), so a
/// snapshot's length is known without reading every bucket. Unchecked: a wrong figure can only
/// make a snapshot fail to send.
const SEALED_BYTES_KEY: &str = "sealed-bytes";
/// A sealed bucket: the encoded bucket's limit plus the sealing format's overhead, with room.
pub(crate) const MAX_SEALED_BUCKET: usize = MAX_BUCKET_BYTES + 256;

/// A failure of the record table; replication reports it as a storage error.
#[derive(Debug, thiserror::Error)]
pub enum RecordTableError {
    /// redb failed (its message).
    #[error("record table: {0}")]
    Db(String),
    /// The sealed value of this bucket, stored or to be stored, is over `MAX_SEALED_BUCKET`.
    #[error("record table: bucket {0} holds a value over the size limit")]
    TooLarge(u16),
    /// The sealed summary, stored or to be stored, is over the core's limit (`MAX_SUMMARY`).
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

/// The node's table of sealed record buckets and their summary (`vault-records.redb`).
pub struct RecordTable {
    db: Database,
    /// Held by the table and each of its views (after the database, so it outlives their
    /// handles): once no one holds it, the file is closed ([`RecordTable::closed`]).
    open: crate::alive::Alive,
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
        tx.open_table(TAILS).map_err(db_err)?;
        tx.open_table(SUMMARY).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(RecordTable {
            db,
            open: Default::default(),
        })
    }

    /// Whether this table and every view of it have been dropped, so the file can be opened
    /// again (redb admits one open database per file; a view's read transaction keeps it open).
    pub fn closed(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        self.open.gone()
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
        Ok(TableView {
            tx: self.db.begin_read().map_err(db_err)?,
            _open: self.open.clone(),
        })
    }

    /// Starts replacing the whole table (a snapshot installed piece by piece): nothing is visible
    /// to readers until `Replacement::commit`.
    pub fn begin_replace(&self) -> Result<Replacement, RecordTableError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        clear_buckets(&tx)?;
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
        clear_buckets(&tx)?;
        {
            let mut t = Buckets::open(&tx)?;
            let mut bytes = 0u64;
            for (b, v) in buckets {
                t.put(*b, v)?;
                bytes = bytes.saturating_add(v.len() as u64);
            }
            write_summary(&tx, summary)?;
            write_u64(&tx, SEALED_BYTES_KEY, bytes)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Bucket `b`'s sealed value (`None`: nothing stored, an empty bucket).
    pub fn read(&self, b: u16) -> Result<Option<Vec<u8>>, RecordTableError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let heads = tx.open_table(BUCKETS).map_err(db_err)?;
        let Some(head) = heads.get(b).map_err(db_err)? else {
            return Ok(None);
        };
        let tails = tx.open_table(TAILS).map_err(db_err)?;
        joined(b, head.value(), &tails).map(Some)
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
            let mut t = Buckets::open(&tx)?;
            let mut meta = tx.open_table(SUMMARY).map_err(db_err)?;
            let mut bytes = read_u64(&meta, SEALED_BYTES_KEY)?;
            for (b, sealed) in changes {
                let old = match sealed {
                    Some(v) => {
                        bytes = bytes.saturating_add(v.len() as u64);
                        t.put(*b, v)?
                    }
                    None => t.remove(*b)?,
                };
                bytes = bytes.saturating_sub(old);
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

    /// Whether no bucket is stored.
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

/// Empties both halves' tables (they are created again at once: a snapshot with no bucket must
/// leave empty tables, not none, which readers would fail to open).
fn clear_buckets(tx: &redb::WriteTransaction) -> Result<(), RecordTableError> {
    for t in [BUCKETS, TAILS] {
        tx.delete_table(t).map_err(db_err)?;
        tx.open_table(t).map_err(db_err)?;
    }
    Ok(())
}

/// A bucket's sealed value from its stored head and, when the head is [`HEAD_BYTES`] long, its
/// tail.
fn joined(
    b: u16,
    head: &[u8],
    tails: &impl ReadableTable<u16, &'static [u8]>,
) -> Result<Vec<u8>, RecordTableError> {
    if head.len() > MAX_SEALED_BUCKET {
        return Err(RecordTableError::TooLarge(b));
    }
    let mut v = head.to_vec();
    if head.len() == HEAD_BYTES {
        if let Some(tail) = tails.get(b).map_err(db_err)? {
            if head.len() + tail.value().len() > MAX_SEALED_BUCKET {
                return Err(RecordTableError::TooLarge(b));
            }
            v.extend_from_slice(tail.value());
        }
    }
    Ok(v)
}

/// Both halves' tables, open in one write transaction.
struct Buckets<'t> {
    heads: redb::Table<'t, u16, &'static [u8]>,
    tails: redb::Table<'t, u16, &'static [u8]>,
}

impl<'t> Buckets<'t> {
    fn open(tx: &'t redb::WriteTransaction) -> Result<Self, RecordTableError> {
        Ok(Buckets {
            heads: tx.open_table(BUCKETS).map_err(db_err)?,
            tails: tx.open_table(TAILS).map_err(db_err)?,
        })
    }

    /// Stores bucket `b`'s sealed value; returns the length of the value it replaced (0: none).
    fn put(&mut self, b: u16, sealed: &[u8]) -> Result<u64, RecordTableError> {
        if sealed.len() > MAX_SEALED_BUCKET {
            return Err(RecordTableError::TooLarge(b));
        }
        let (head, tail) = sealed.split_at(sealed.len().min(HEAD_BYTES));
        let old_head = self.heads.insert(b, head).map_err(db_err)?;
        let old_tail = if tail.is_empty() {
            self.tails.remove(b).map_err(db_err)?
        } else {
            self.tails.insert(b, tail).map_err(db_err)?
        };
        Ok(Self::stored_len(old_head, old_tail))
    }

    /// Removes bucket `b`; returns the length of the value it held (0: none).
    fn remove(&mut self, b: u16) -> Result<u64, RecordTableError> {
        let old_head = self.heads.remove(b).map_err(db_err)?;
        let old_tail = self.tails.remove(b).map_err(db_err)?;
        Ok(Self::stored_len(old_head, old_tail))
    }

    /// What a head and a tail just replaced held, as [`joined`] would have read it: a tail
    /// counts only behind a full head.
    fn stored_len(
        head: Option<redb::AccessGuard<'_, &'static [u8]>>,
        tail: Option<redb::AccessGuard<'_, &'static [u8]>>,
    ) -> u64 {
        let head = head.map(|h| h.value().len()).unwrap_or(0);
        let tail = match tail {
            Some(t) if head == HEAD_BYTES => t.value().len(),
            _ => 0,
        };
        (head + tail) as u64
    }
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
    /// Stores bucket `b`'s sealed value in the replacement (refused over [`MAX_SEALED_BUCKET`]).
    pub fn put(&self, b: u16, sealed: &[u8]) -> Result<(), RecordTableError> {
        Buckets::open(&self.0)?.put(b, sealed)?;
        self.1.set(self.1.get().saturating_add(sealed.len() as u64));
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
pub struct TableView {
    tx: redb::ReadTransaction,
    /// Keeps [`RecordTable::closed`] false while this view holds the file open.
    _open: crate::alive::Alive,
}

impl TableView {
    /// The summary as of this view (`None`: nothing was ever applied).
    pub fn summary(&self) -> Result<Option<Vec<u8>>, RecordTableError> {
        read_summary(&self.tx.open_table(SUMMARY).map_err(db_err)?)
    }

    /// The stored buckets' count and the sum of their sizes (host bookkeeping, unchecked).
    pub fn sizes(&self) -> Result<(u64, u64), RecordTableError> {
        let count = self
            .tx
            .open_table(BUCKETS)
            .map_err(db_err)?
            .len()
            .map_err(db_err)?;
        let bytes = read_u64(
            &self.tx.open_table(SUMMARY).map_err(db_err)?,
            SEALED_BYTES_KEY,
        )?;
        Ok((count, bytes))
    }

    /// The first stored bucket numbered `from` or more, with its value.
    pub fn next_from(&self, from: u16) -> Result<Option<(u16, Vec<u8>)>, RecordTableError> {
        let heads = self.tx.open_table(BUCKETS).map_err(db_err)?;
        let Some(item) = heads.range(from..).map_err(db_err)?.next() else {
            return Ok(None);
        };
        let (k, head) = item.map_err(db_err)?;
        let tails = self.tx.open_table(TAILS).map_err(db_err)?;
        Ok(Some((k.value(), joined(k.value(), head.value(), &tails)?)))
    }

    /// Calls `f` with every stored bucket in bucket order, one value at a time.
    pub fn for_each<E: From<RecordTableError>>(
        &self,
        mut f: impl FnMut(u16, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let heads = self.tx.open_table(BUCKETS).map_err(db_err)?;
        let tails = self.tx.open_table(TAILS).map_err(db_err)?;
        for item in heads.iter().map_err(db_err)? {
            let (k, head) = item.map_err(db_err)?;
            f(k.value(), &joined(k.value(), head.value(), &tails)?)?;
        }
        Ok(())
    }
}

/// Bucket values the core has handed over that are not committed to the table yet (each with
/// the number of the write that carries it). The state machine writes the table after the
/// `Apply`'s reply, so sessions are not held up by redb (or, every 100 ms, its fsync); it adds
/// them here before any later request's bucket question is read (`Replica::apply_shared`), and
/// until the write lands, reads must see these.
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
mod tests;
