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
        register_starts: Default::default(),
        moving_in: None,
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
        table.for_each(|b, sealed| r.load(&p, b, sealed).map_err(TestError::from))?;
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

fn active(generation: u64) -> Record {
    Record {
        generation,
        live: Some(Live::Active {
            credential: bkv_hsm_core::state::Credential {
                opaque_record: vec![7; 225],
                wrapped_key: vec![8; 60],
                guess_limit: 10,
                confirm_hash: [9; 32],
            },
            attempts: 0,
        }),
        pending: None,
        register_starts: Default::default(),
        moving_in: None,
    }
}

/// A bucket that outgrows [`HEAD_BYTES`] is stored in two halves; the core opens it whole,
/// and refuses it when its tail is missing or is an older value's.
#[test]
fn a_split_bucket_opens_whole_and_a_missing_or_older_tail_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let table = RecordTable::open(&dir.path().join("records.redb"), TEST_CACHE).unwrap();
    let p = MemoryPlatform::new([4; 32]);
    let mut c = RecordCommitment::new([6; 32]);
    let b = c.bucket(&rid(0));
    let ids: Vec<RecordId> = (0..)
        .map(rid)
        .filter(|n| c.bucket(n) == b)
        .take(16)
        .collect();
    let sealed: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| set(&table, &mut c, &p, id, active(1)))
        .collect();
    let last = sealed.last().unwrap();
    assert!(last.len() > HEAD_BYTES + 300, "{}", last.len());
    for id in &ids {
        assert_eq!(load(&table, &c, &p, id).unwrap(), Some(active(1)));
    }
    let raw = |t: TableDefinition<u16, &[u8]>| {
        let tx = table.db.begin_read().unwrap();
        let v = tx.open_table(t).unwrap().get(b).unwrap();
        v.map(|v| v.value().to_vec())
    };
    assert_eq!(raw(BUCKETS).unwrap(), last[..HEAD_BYTES]);
    assert_eq!(raw(TAILS).unwrap(), last[HEAD_BYTES..]);
    assert_eq!(
        table.view().unwrap().sizes().unwrap(),
        (1, last.len() as u64)
    );

    let put_tail = |tail: Option<&[u8]>| {
        let tx = table.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(TAILS).unwrap();
            match tail {
                Some(v) => t.insert(b, v).unwrap(),
                None => t.remove(b).unwrap(),
            };
        }
        tx.commit().unwrap();
    };
    let older = sealed.iter().rev().nth(1).unwrap();
    assert!(older.len() > HEAD_BYTES);
    // Joined with the head, neither is a value the platform sealed: refused at unsealing.
    put_tail(Some(&older[HEAD_BYTES..]));
    assert!(matches!(
        load(&table, &c, &p, &ids[0]),
        Err(CommitmentError::Platform(_))
    ));
    put_tail(None);
    assert!(matches!(
        load(&table, &c, &p, &ids[0]),
        Err(CommitmentError::Platform(_))
    ));
    put_tail(Some(&last[HEAD_BYTES..]));
    assert_eq!(load(&table, &c, &p, &ids[0]).unwrap(), Some(active(1)));
}

/// The table's buckets as `for_each` gives them, after checking that a snapshot view's walk,
/// a read of each bucket and the size bookkeeping all agree with it.
fn read_every_way(table: &RecordTable) -> Vec<(u16, Vec<u8>)> {
    let mut seen = Vec::new();
    table
        .for_each(|b, v| {
            seen.push((b, v.to_vec()));
            Ok::<(), RecordTableError>(())
        })
        .unwrap();
    let view = table.view().unwrap();
    let mut walked = Vec::new();
    let mut from = 0u16;
    while let Some((b, v)) = view.next_from(from).unwrap() {
        walked.push((b, v));
        from = b + 1;
    }
    assert_eq!(seen, walked);
    for (b, v) in &seen {
        assert_eq!(table.read(*b).unwrap().as_ref(), Some(v));
    }
    let bytes: usize = seen.iter().map(|(_, v)| v.len()).sum();
    assert_eq!(view.sizes().unwrap(), (seen.len() as u64, bytes as u64));
    seen
}

/// Every way in and out of the table gives back the exact value, on either side of the
/// split and across it (a bucket that grows into two halves, or shrinks back into one,
/// leaves no stale tail), and the size bookkeeping follows.
#[test]
fn values_on_either_side_of_the_split_read_back_whole_every_way() {
    let dir = tempfile::tempdir().unwrap();
    let table = RecordTable::open(&dir.path().join("records.redb"), TEST_CACHE).unwrap();
    let lengths = [
        1,
        HEAD_BYTES - 1,
        HEAD_BYTES,
        HEAD_BYTES + 1,
        2 * HEAD_BYTES + 7,
        MAX_SEALED_BUCKET,
    ];
    let value = |len: usize, salt: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ salt)
            .collect::<Vec<u8>>()
    };
    let check = |want: &[(u16, Vec<u8>)]| {
        assert_eq!(read_every_way(&table), want);
        // No tail without a full head in front of it.
        let tx = table.db.begin_read().unwrap();
        let tails = tx.open_table(TAILS).unwrap();
        for item in tails.iter().unwrap() {
            let (b, _) = item.unwrap();
            let head = want.iter().find(|(x, _)| *x == b.value()).unwrap();
            assert!(head.1.len() > HEAD_BYTES);
        }
    };
    // Each bucket steps through the lengths upwards, then downwards: every neighbouring
    // pair is crossed both ways (a split value shrinking to exactly HEAD_BYTES included).
    let down: Vec<usize> = lengths.iter().rev().copied().collect();
    for (pass, order) in [lengths.to_vec(), down].iter().enumerate() {
        for shift in 0..order.len() {
            let want: Vec<(u16, Vec<u8>)> = (0..order.len())
                .map(|i| {
                    let len = order[(i + shift) % order.len()];
                    (i as u16 * 3, value(len, (pass * 16 + shift) as u8))
                })
                .collect();
            let changes: Vec<(u16, Option<Vec<u8>>)> =
                want.iter().map(|(b, v)| (*b, Some(v.clone()))).collect();
            table.write(&changes, None, shift % 2 == 0).unwrap();
            check(&want);
        }
    }
    let want: Vec<(u16, Vec<u8>)> = lengths
        .iter()
        .enumerate()
        .map(|(i, len)| (i as u16 + 100, value(*len, 77)))
        .collect();
    table.replace_all(&want, b"summary").unwrap();
    check(&want);
    let want: Vec<(u16, Vec<u8>)> = lengths
        .iter()
        .rev()
        .enumerate()
        .map(|(i, len)| (i as u16 + 7, value(*len, 9)))
        .collect();
    let r = table.begin_replace().unwrap();
    for (b, v) in &want {
        r.put(*b, v).unwrap();
    }
    r.commit(b"summary").unwrap();
    check(&want);
    let gone: Vec<(u16, Option<Vec<u8>>)> = want.iter().map(|(b, _)| (*b, None)).collect();
    table.write(&gone, None, true).unwrap();
    check(&[]);
}

/// A file written by layout 1 (whole values in `vault-buckets`, no tails table) opens and
/// reads the same every way, and each bucket moves to layout 2 when it is next written.
#[test]
fn a_layout_1_file_reads_whole_and_moves_to_layout_2_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.redb");
    let whole: Vec<u8> = (0..HEAD_BYTES + 900).map(|i| i as u8).collect();
    let exact: Vec<u8> = vec![3; HEAD_BYTES];
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(BUCKETS).unwrap();
            t.insert(1, whole.as_slice()).unwrap();
            t.insert(2, exact.as_slice()).unwrap();
            let mut meta = tx.open_table(SUMMARY).unwrap();
            meta.insert(SUMMARY_KEY, b"summary".as_slice()).unwrap();
            let bytes = (whole.len() + exact.len()) as u64;
            meta.insert(SEALED_BYTES_KEY, bytes.to_be_bytes().as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let table = RecordTable::open(&path, TEST_CACHE).unwrap();
    assert_eq!(
        read_every_way(&table),
        vec![(1, whole.clone()), (2, exact.clone())]
    );

    // Bucket 1 grows and bucket 2 shrinks to exactly HEAD_BYTES of new content.
    let grown: Vec<u8> = (0..HEAD_BYTES + 1_200).map(|i| (i * 7) as u8).collect();
    let other: Vec<u8> = vec![5; HEAD_BYTES];
    table
        .write(
            &[(1, Some(grown.clone())), (2, Some(other.clone()))],
            None,
            true,
        )
        .unwrap();
    assert_eq!(read_every_way(&table), vec![(1, grown.clone()), (2, other)]);
    let tx = table.db.begin_read().unwrap();
    let head = tx.open_table(BUCKETS).unwrap().get(1).unwrap().unwrap();
    assert_eq!(head.value(), &grown[..HEAD_BYTES]);
    let tail = tx.open_table(TAILS).unwrap().get(1).unwrap().unwrap();
    assert_eq!(tail.value(), &grown[HEAD_BYTES..]);
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

    // So is a tail that makes its bucket too large.
    let tx = table.db.begin_write().unwrap();
    {
        tx.open_table(BUCKETS).unwrap().remove(3).unwrap();
        tx.open_table(BUCKETS)
            .unwrap()
            .insert(4, vec![0; HEAD_BYTES].as_slice())
            .unwrap();
        tx.open_table(TAILS)
            .unwrap()
            .insert(4, vec![0; MAX_SEALED_BUCKET + 1 - HEAD_BYTES].as_slice())
            .unwrap();
    }
    tx.commit().unwrap();
    assert!(matches!(table.read(4), Err(RecordTableError::TooLarge(4))));
    let r: Result<(), RecordTableError> = table.for_each(|_, _| Ok(()));
    assert!(matches!(r, Err(RecordTableError::TooLarge(4))));
}
