//! Vault records as per-record sealed values in redb: the host's half of records that live on
//! disk instead of in memory (issue 13, part 4; docs/scaling.md "Per-record state").
//!
//! The table holds sealed bytes only, keyed `bucket (u16 BE) || record id (32)`, so one range scan
//! reads a bucket's listing in the order [`RecordCommitment`] hashes it. Nothing here is trusted:
//! whatever the table returns, the core checks against its commitment before it unseals it
//! ([`bkv_hsm_core::commitment::open_record`]), so a value put back from an older copy of the
//! file, or removed from it, is refused. Not wired into the replicated state machine yet: the
//! state is still whole in the core's memory, and this table and the commitment are the pieces
//! that change will stand on.

use bkv_hsm_core::commitment::{entry_hash, BucketEntry, MAX_BUCKET_ENTRIES, MAX_RECORD};
use bkv_hsm_core::RecordId;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Page cache for tests.
#[cfg(test)]
const TEST_CACHE: usize = 4 << 20;
use std::path::Path;

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("vault-records");
const KEY_LEN: usize = 2 + 32;
/// A sealed record: the record's size limit plus the sealing format's overhead, with room.
pub const MAX_SEALED_RECORD: usize = MAX_RECORD + 256;

#[derive(Debug, thiserror::Error)]
pub enum RecordTableError {
    #[error("record table: {0}")]
    Db(String),
    #[error("record table entry is malformed: {0}")]
    Malformed(&'static str),
}

fn db_err<E: std::fmt::Display>(e: E) -> RecordTableError {
    RecordTableError::Db(e.to_string())
}

fn key(bucket: u16, id: &RecordId) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    let (b, i) = k.split_at_mut(2);
    b.copy_from_slice(&bucket.to_be_bytes());
    i.copy_from_slice(id);
    k
}

/// One entry of the table, checked: a key of the right length and a value within the limit.
fn entry(k: &[u8], v: &[u8]) -> Result<(u16, BucketEntry), RecordTableError> {
    let (Some(b), Some(id)) = (k.get(..2), k.get(2..)) else {
        return Err(RecordTableError::Malformed("key length"));
    };
    let (Ok(b), Ok(id)) = (<[u8; 2]>::try_from(b), RecordId::try_from(id)) else {
        return Err(RecordTableError::Malformed("key length"));
    };
    if v.len() > MAX_SEALED_RECORD {
        return Err(RecordTableError::Malformed("sealed record too large"));
    }
    Ok((
        u16::from_be_bytes(b),
        BucketEntry {
            id,
            hash: entry_hash(v),
        },
    ))
}

/// A change to one record: its new sealed value, or `None` to remove it.
pub struct Change {
    pub bucket: u16,
    pub id: RecordId,
    pub sealed: Option<Vec<u8>>,
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
        tx.open_table(RECORDS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(RecordTable { db })
    }

    /// A bucket's listing and the sealed value of `id` in it, read in one transaction (so the
    /// two agree).
    pub fn read(
        &self,
        bucket: u16,
        id: &RecordId,
    ) -> Result<(Vec<BucketEntry>, Option<Vec<u8>>), RecordTableError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(RECORDS).map_err(db_err)?;
        let (lo, hi) = (key(bucket, &[0; 32]), key(bucket, &[0xff; 32]));
        let mut listing = Vec::new();
        let mut value = None;
        for item in t.range(lo.as_slice()..=hi.as_slice()).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            if listing.len() >= MAX_BUCKET_ENTRIES {
                return Err(RecordTableError::Malformed("bucket over its entry limit"));
            }
            let (_, e) = entry(k.value(), v.value())?;
            if e.id == *id {
                value = Some(v.value().to_vec());
            }
            listing.push(e);
        }
        Ok((listing, value))
    }

    /// Applies `changes` in one transaction: all or nothing.
    pub fn write(&self, changes: &[Change]) -> Result<(), RecordTableError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(RECORDS).map_err(db_err)?;
            for c in changes {
                let k = key(c.bucket, &c.id);
                match &c.sealed {
                    Some(v) => {
                        if v.len() > MAX_SEALED_RECORD {
                            return Err(RecordTableError::Malformed("sealed record too large"));
                        }
                        t.insert(k.as_slice(), v.as_slice()).map_err(db_err)?;
                    }
                    None => {
                        t.remove(k.as_slice()).map_err(db_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Calls `f` with every non-empty bucket's listing in bucket order, holding one listing at
    /// a time (a restart rebuilding the commitment reads the whole table in bounded memory).
    pub fn for_each_bucket<E: From<RecordTableError>>(
        &self,
        mut f: impl FnMut(u16, &[BucketEntry]) -> Result<(), E>,
    ) -> Result<(), E> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(RECORDS).map_err(db_err)?;
        let mut current: Option<u16> = None;
        let mut listing = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let (b, e) = entry(k.value(), v.value())?;
            if current != Some(b) {
                if let Some(prev) = current {
                    f(prev, &listing)?;
                }
                listing.clear();
                current = Some(b);
            }
            if listing.len() >= MAX_BUCKET_ENTRIES {
                return Err(RecordTableError::Malformed("bucket over its entry limit").into());
            }
            listing.push(e);
        }
        if let Some(b) = current {
            f(b, &listing)?;
        }
        Ok(())
    }

    /// Rewrites the file without its free pages (no transaction may be open). Records written
    /// in id order fill redb's pages; written in arrival order they leave them partly empty.
    pub fn compact(&mut self) -> Result<bool, RecordTableError> {
        self.db.compact().map_err(db_err)
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

    /// Records in the table.
    pub fn len(&self) -> Result<u64, RecordTableError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(RECORDS).map_err(db_err)?;
        t.len().map_err(db_err)
    }

    pub fn is_empty(&self) -> Result<bool, RecordTableError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bkv_hsm_core::commitment::{
        open_record, seal_record, CommitmentError, RecordCommitment, RecordError,
    };
    use bkv_hsm_core::state::{Live, Record};
    use bkv_hsm_core::MemoryPlatform;

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

    /// Sets `id` to `r` the way the state machine will: read, check and update the commitment,
    /// write the sealed value.
    fn set(
        table: &RecordTable,
        c: &mut RecordCommitment,
        p: &MemoryPlatform,
        id: &RecordId,
        r: &Record,
    ) -> Vec<u8> {
        let b = c.bucket(id);
        let (listing, old) = table.read(b, id).unwrap();
        let sealed = seal_record(p, id, r).unwrap();
        c.update(id, &listing, old.as_deref(), Some(&sealed))
            .unwrap();
        table
            .write(&[Change {
                bucket: b,
                id: *id,
                sealed: Some(sealed.clone()),
            }])
            .unwrap();
        sealed
    }

    fn load(
        table: &RecordTable,
        c: &RecordCommitment,
        p: &MemoryPlatform,
        id: &RecordId,
    ) -> Result<Option<Record>, RecordError> {
        let (listing, sealed) = table.read(c.bucket(id), id).unwrap();
        open_record(c, p, id, &listing, sealed.as_deref())
    }

    /// The fault the commitment exists for: the host's disk hands back an older sealed copy of a
    /// record (a guess counter rolled back one record at a time), or hides a record; the core
    /// refuses both, and an honest read still works.
    #[test]
    fn a_record_put_back_at_an_older_value_on_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let table = RecordTable::open(&dir.path().join("records.redb"), TEST_CACHE).unwrap();
        let p = MemoryPlatform::new([4; 32]);
        let mut c = RecordCommitment::new([6; 32]);
        let (a, neighbour) = (rid(1), rid(2));
        let old = set(&table, &mut c, &p, &a, &record(1));
        set(&table, &mut c, &p, &a, &record(2));
        set(&table, &mut c, &p, &neighbour, &record(7));
        assert_eq!(load(&table, &c, &p, &a).unwrap(), Some(record(2)));

        // The attacker writes the old sealed value back into the file.
        let b = c.bucket(&a);
        table
            .write(&[Change {
                bucket: b,
                id: a,
                sealed: Some(old),
            }])
            .unwrap();
        assert!(matches!(
            load(&table, &c, &p, &a),
            Err(RecordError::Commitment(CommitmentError::Mismatch))
        ));
        // ... or removes the record, so it would look never registered.
        table
            .write(&[Change {
                bucket: b,
                id: a,
                sealed: None,
            }])
            .unwrap();
        assert!(load(&table, &c, &p, &a).is_err());
        // The other record is untouched and still opens (unless it shares the bucket, whose
        // listing the tampering changed: then it is refused too, which is as safe).
        if c.bucket(&neighbour) != b {
            assert_eq!(load(&table, &c, &p, &neighbour).unwrap(), Some(record(7)));
        }
    }

    #[test]
    fn a_restart_rebuilds_the_same_root_from_the_table_and_notices_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.redb");
        let p = MemoryPlatform::new([4; 32]);
        let mut c = RecordCommitment::new([6; 32]);
        let mut first = None;
        {
            let table = RecordTable::open(&path, TEST_CACHE).unwrap();
            for n in 0..3000 {
                let sealed = set(&table, &mut c, &p, &rid(n), &record(u64::from(n)));
                first.get_or_insert(sealed);
            }
            set(&table, &mut c, &p, &rid(0), &record(9999));
            assert_eq!(table.len().unwrap(), 3000);
        }
        let table = RecordTable::open(&path, TEST_CACHE).unwrap();
        let rebuild = |table: &RecordTable| -> Result<RecordCommitment, TestError> {
            let mut r = RecordCommitment::new([6; 32]);
            table
                .for_each_bucket(|b, listing| r.load_bucket(b, listing).map_err(TestError::from))?;
            Ok(r)
        };
        assert_eq!(rebuild(&table).unwrap().root(), c.root());
        assert_eq!(load(&table, &c, &p, &rid(0)).unwrap(), Some(record(9999)));

        // Record 0 put back at its first value: the rebuilt root no longer matches the one the
        // node sealed, so the restart refuses the store.
        table
            .write(&[Change {
                bucket: c.bucket(&rid(0)),
                id: rid(0),
                sealed: first,
            }])
            .unwrap();
        assert_ne!(rebuild(&table).unwrap().root(), c.root());
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.redb");
        let table = RecordTable::open(&path, TEST_CACHE).unwrap();
        let big = Change {
            bucket: 1,
            id: [1; 32],
            sealed: Some(vec![0; MAX_SEALED_RECORD + 1]),
        };
        assert!(matches!(
            table.write(&[big]),
            Err(RecordTableError::Malformed(_))
        ));
        assert!(table.is_empty().unwrap());
        // A key of the wrong length, written past this module.
        let tx = table.db.begin_write().unwrap();
        tx.open_table(RECORDS)
            .unwrap()
            .insert([0u8, 1, 2].as_slice(), [9u8].as_slice())
            .unwrap();
        tx.commit().unwrap();
        let r: Result<(), RecordTableError> = table.for_each_bucket(|_, _| Ok(()));
        assert!(matches!(r, Err(RecordTableError::Malformed("key length"))));
        assert!(matches!(
            table.read(1, &[0; 32]),
            Err(RecordTableError::Malformed("key length"))
        ));
    }
}
