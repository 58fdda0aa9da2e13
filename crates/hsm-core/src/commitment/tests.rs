use super::*;
use crate::state::Live;
use crate::MemoryPlatform;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn id(n: u8) -> RecordId {
    [n; 32]
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

/// An honest host: each bucket's current sealed value.
#[derive(Default)]
struct Host(BTreeMap<u16, Vec<u8>>);

impl Host {
    /// Reads, changes and writes back one record, as the state machine will; returns the
    /// bucket's new sealed value.
    fn set(
        &mut self,
        c: &mut RecordCommitment,
        p: &MemoryPlatform,
        rid: RecordId,
        r: Option<Record>,
    ) -> Option<Vec<u8>> {
        let b = c.bucket(&rid);
        let old = self.0.get(&b).cloned();
        let mut bucket = c.open(p, b, old.as_deref()).unwrap();
        bucket.set(rid, r);
        let new = c.update(p, b, old.as_deref(), &bucket).unwrap();
        match &new {
            Some(v) => self.0.insert(b, v.clone()),
            None => self.0.remove(&b),
        };
        new
    }

    fn get(&self, c: &RecordCommitment, p: &MemoryPlatform, rid: &RecordId) -> Option<Record> {
        let b = c.bucket(rid);
        let bucket = c.open(p, b, self.0.get(&b).map(Vec::as_slice)).unwrap();
        bucket.get(rid).cloned()
    }
}

#[test]
fn a_stale_copy_of_a_bucket_is_refused_and_changes_nothing() {
    let p = MemoryPlatform::new([5; 32]);
    let mut c = RecordCommitment::with_bits([7; 32], 2);
    let mut host = Host::default();
    let old = host.set(&mut c, &p, id(1), Some(record(1))).unwrap();
    host.set(&mut c, &p, id(1), Some(record(2)));
    assert_eq!(host.get(&c, &p, &id(1)), Some(record(2)));
    let b = c.bucket(&id(1));
    assert!(matches!(
        c.open(&p, b, Some(&old)),
        Err(CommitmentError::Stale(x)) if x == b
    ));
    let root = c.root();
    let mut bucket = Bucket::default();
    bucket.set(id(1), Some(record(0)));
    assert!(c.update(&p, b, Some(&old), &bucket).is_err());
    assert_eq!(c.root(), root);
}

#[test]
fn a_hidden_or_moved_bucket_is_refused() {
    let p = MemoryPlatform::new([5; 32]);
    let mut c = RecordCommitment::new([7; 32]);
    let mut host = Host::default();
    let sealed = host.set(&mut c, &p, id(1), Some(record(1))).unwrap();
    let b = c.bucket(&id(1));
    // Passed off as empty, so the user would look never registered.
    assert!(matches!(
        c.open(&p, b, None),
        Err(CommitmentError::Stale(_))
    ));
    // Served as another bucket's value: it unseals only as its own bucket, so it neither opens
    // nor loads under another number.
    let other = b.wrapping_add(1);
    assert!(matches!(
        c.open(&p, other, Some(&sealed)),
        Err(CommitmentError::Platform(PlatformError::Auth))
    ));
    let mut c2 = RecordCommitment::new([7; 32]);
    assert!(matches!(
        c2.load(&p, other, &sealed),
        Err(CommitmentError::Platform(PlatformError::Auth))
    ));
}

#[test]
fn a_bucket_holding_a_record_of_another_bucket_is_refused() {
    let p = MemoryPlatform::new([5; 32]);
    let mut c = RecordCommitment::new([7; 32]);
    let stranger = (0..=255u8)
        .map(id)
        .find(|i| c.bucket(i) != c.bucket(&id(1)))
        .unwrap();
    let b = c.bucket(&id(1));
    let mut bucket = Bucket::default();
    bucket.set(id(1), Some(record(1)));
    bucket.set(stranger, Some(record(2)));
    let root = c.root();
    assert!(matches!(
        c.update(&p, b, None, &bucket),
        Err(CommitmentError::Misplaced(x)) if x == b
    ));
    assert_eq!(c.root(), root);
    // Sealed past `update` (a bug, or a value from another fleet's layout), it does not open.
    let sealed = p
        .seal(BUCKET_SLOT, &b.to_be_bytes(), &bucket.encode())
        .unwrap();
    c.load(&p, b, &sealed).unwrap();
    assert!(matches!(
        c.open(&p, b, Some(&sealed)),
        Err(CommitmentError::Malformed(_))
    ));
}

#[test]
fn an_unordered_or_repeated_bucket_is_never_committed() {
    let p = MemoryPlatform::new([5; 32]);
    let mut c = RecordCommitment::with_bits([3; 32], 0);
    let root = c.root();
    for records in [
        vec![(id(2), record(1)), (id(1), record(1))],
        vec![(id(1), record(1)), (id(1), record(2))],
    ] {
        // Only a decoded bucket can be built this way; `set` keeps the order.
        let bucket = Bucket { records };
        assert!(matches!(
            c.update(&p, 0, None, &bucket),
            Err(CommitmentError::Malformed(_))
        ));
        assert_eq!(c.root(), root);
    }
}

#[test]
fn a_full_bucket_refuses_more_and_the_commitment_has_a_fixed_size() {
    let p = MemoryPlatform::new([5; 32]);
    // No bucket bits: every record shares the one bucket.
    let mut c = RecordCommitment::with_bits([3; 32], 0);
    let mut bucket = Bucket::default();
    for n in 0..MAX_BUCKET_RECORDS as u32 {
        let mut i = [0u8; 32];
        i[..4].copy_from_slice(&n.to_be_bytes());
        bucket.set(i, Some(record(u64::from(n))));
    }
    let sealed = c.update(&p, 0, None, &bucket).unwrap();
    assert_eq!(c.open(&p, 0, sealed.as_deref()).unwrap().len(), 4096);
    bucket.set([0xff; 32], Some(record(0)));
    assert!(matches!(
        c.update(&p, 0, sealed.as_deref(), &bucket),
        Err(CommitmentError::BucketFull(0))
    ));
    assert_eq!(
        RecordCommitment::new([0; 32]).memory_bytes(),
        2 << BUCKET_BITS << 5
    );
}

#[test]
fn the_bucket_key_decides_the_layout() {
    let a = RecordCommitment::new([1; 32]);
    let b = RecordCommitment::new([2; 32]);
    let moved = (0..=255u8).filter(|n| a.bucket(&id(*n)) != b.bucket(&id(*n)));
    assert!(moved.count() > 200);
}

#[derive(Debug, Clone)]
enum Op {
    Set(u8, u64),
    Remove(u8),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            (0u8..24, any::<u64>()).prop_map(|(i, g)| Op::Set(i, g)),
            (0u8..24).prop_map(Op::Remove),
        ],
        0..60,
    )
}

proptest! {
    /// After any history the honest host's buckets open to exactly the model's records,
    /// every earlier sealed value of a bucket is refused, and a restart that loads the
    /// stored buckets reaches the same root.
    #[test]
    fn honest_buckets_open_and_every_older_one_is_refused(ops in ops()) {
        let p = MemoryPlatform::new([5; 32]);
        let mut c = RecordCommitment::with_bits([9; 32], 2);
        let mut host = Host::default();
        let mut model: BTreeMap<RecordId, Record> = BTreeMap::new();
        let mut history: Vec<(u16, Vec<u8>)> = Vec::new();
        for op in ops {
            let (i, r) = match op {
                Op::Set(i, g) => (i, Some(record(g))),
                Op::Remove(i) => (i, None),
            };
            match &r {
                Some(r) => model.insert(id(i), r.clone()),
                None => model.remove(&id(i)),
            };
            if let Some(v) = host.set(&mut c, &p, id(i), r) {
                history.push((c.bucket(&id(i)), v));
            }
        }
        for i in 0..24u8 {
            prop_assert_eq!(host.get(&c, &p, &id(i)), model.get(&id(i)).cloned());
        }
        // An older sealed value opens only if it holds exactly what the bucket holds now
        // (roots cover contents): any other is refused.
        for (b, v) in &history {
            if host.0.get(b) != Some(v) {
                if let Ok(old) = c.open(&p, *b, Some(v)) {
                    let now = c.open(&p, *b, host.0.get(b).map(Vec::as_slice)).unwrap();
                    prop_assert_eq!(old, now);
                }
            }
        }
        let mut rebuilt = RecordCommitment::with_bits([9; 32], 2);
        for (b, v) in &host.0 {
            prop_assert!(rebuilt.load(&p, *b, v).is_ok());
        }
        prop_assert_eq!(rebuilt.root(), c.root());
        if let Some((b, v)) = host.0.iter().next() {
            prop_assert!(matches!(rebuilt.load(&p, *b, v), Err(CommitmentError::LoadedTwice(_))));
        }
    }
}
