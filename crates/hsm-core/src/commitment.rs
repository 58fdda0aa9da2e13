//! The core's commitment to the current record set, so records can live on the untrusted host's
//! disk (per-record sealed values) while the core keeps only a fixed amount of memory.
//!
//! Sealing stops the host from reading, forging or swapping records, but not from handing back an
//! *older* sealed copy of the same record: a guess counter rolled back one record at a time. The
//! core therefore keeps this commitment and checks every record the host hands it against it.
//!
//! # Shape (version 1)
//!
//! Records fall into `2^16` buckets by a keyed hash of their id ([`RecordCommitment::bucket`]; the
//! key is per fleet, so nobody can aim many ids at one bucket). A bucket's digest covers the
//! sorted list of its records, each as `(id, SHA-256 of its sealed value)`:
//!
//! ```text
//! entry hash  = SHA-256("bkv/record-entry/v1\0" || sealed value)
//! bucket leaf = SHA-256(0x00 || "bkv/bucket/v1\0" || bucket u16 BE || count u32 BE
//!                       || (id 32 || entry hash 32) for each record, ids strictly increasing)
//! inner node  = SHA-256(0x01 || left || right)
//! ```
//!
//! The leaves form a complete binary Merkle tree whose root ([`RecordCommitment::root`]) names the
//! whole record set; the core holds the tree itself (`2 × 2^16` nodes, 4 MiB, whatever the user
//! count), updates a path of 16 nodes per change, and never holds a record it is not working on.
//! To read or change a record the host hands over the record's whole bucket listing (about 15
//! entries, ~1 KiB, at 10⁶ users; at most [`MAX_BUCKET_ENTRIES`]): a listing that leaves a record
//! out, adds one, or names an older value of any of them does not hash to the leaf and is refused,
//! so an absent record cannot be faked either.
//!
//! Why buckets rather than a sparse Merkle tree over the ids: a proof is then the bucket listing
//! itself, which the host reads with one range scan of a table keyed `(bucket, id)` and needs no
//! stored inner nodes, and the core's tree has a fixed size; the price is a listing that grows with
//! the users per bucket (linearly: ~150 entries, 10 KiB, at 10⁷ users per fleet), which
//! docs/scaling.md's group size keeps small.

use crate::platform::{Platform, PlatformError};
use crate::state::{Record, RecordId};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Buckets as a power of two.
pub const BUCKET_BITS: u32 = 16;
/// Most records one bucket holds: `2^16 × 4096` ≈ 2.7 × 10⁸ records per fleet, far above a
/// group's size, and it bounds the work any one access costs.
pub const MAX_BUCKET_ENTRIES: usize = 4096;

/// The platform slot a record's sealed value is bound to (its label is the record id, so the
/// host cannot move a record under another id).
pub const RECORD_SLOT: &str = "vault-record";
/// Largest encoded record accepted (a live and a pending credential with the largest wrapped key
/// fit in well under half of it).
pub const MAX_RECORD: usize = 4096;

const ENTRY_TAG: &[u8] = b"bkv/record-entry/v1\0";
const BUCKET_TAG: &[u8] = b"bkv/bucket/v1\0";
const BUCKET_OF_TAG: &[u8] = b"bkv/bucket-of/v1\0";

pub type Hash = [u8; 32];

/// One record of a bucket listing: its id and the [`entry_hash`] of its sealed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketEntry {
    pub id: RecordId,
    pub hash: Hash,
}

/// The hash a bucket listing names a record's sealed value by.
pub fn entry_hash(sealed: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(ENTRY_TAG);
    h.update(sealed);
    h.finalize().into()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitmentError {
    #[error("bucket listing has {0} entries, over the limit")]
    TooLarge(usize),
    #[error("bucket listing is not in strictly increasing id order")]
    Unsorted,
    #[error("bucket listing holds a record of another bucket")]
    WrongBucket,
    #[error("bucket listing does not match the committed records (stale, missing or extra)")]
    Mismatch,
    #[error("the record's value is not the one the committed listing names")]
    RecordMismatch,
    #[error("the record's bucket is full")]
    BucketFull,
}

/// Why a record the host handed over was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Commitment(#[from] CommitmentError),
    #[error("sealed record: {0}")]
    Platform(#[from] PlatformError),
    #[error("sealed record does not decode: {0}")]
    Malformed(bkv_wire::CodecError),
}

/// Seals a record for the host's store (encoding: [`bkv_wire::encode`] of [`Record`]).
pub fn seal_record(p: &dyn Platform, id: &RecordId, r: &Record) -> Result<Vec<u8>, PlatformError> {
    let plain = zeroize::Zeroizing::new(bkv_wire::encode(r));
    p.seal(RECORD_SLOT, id, &plain)
}

/// Opens a record the host read from its store: `sealed` must be the current value of `id` by
/// `c` (checked against the bucket's `listing` first, so a stale, swapped or hidden record is
/// refused before it is unsealed), and it must unseal under `id` and decode.
pub fn open_record(
    c: &RecordCommitment,
    p: &dyn Platform,
    id: &RecordId,
    listing: &[BucketEntry],
    sealed: Option<&[u8]>,
) -> Result<Option<Record>, RecordError> {
    c.verify(id, listing, sealed)?;
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    let plain = p.unseal(RECORD_SLOT, id, sealed)?;
    bkv_wire::decode(&plain, MAX_RECORD)
        .map(Some)
        .map_err(RecordError::Malformed)
}

/// The commitment: a fixed-size Merkle tree over the buckets' digests (see the module docs).
#[derive(Clone)]
pub struct RecordCommitment {
    key: [u8; 32],
    bits: u32,
    /// Heap order: node 1 is the root, node `i` has children `2i` and `2i + 1`, and bucket `b`'s
    /// leaf is node `2^bits + b` (node 0 is unused).
    nodes: Vec<Hash>,
}

impl std::fmt::Debug for RecordCommitment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordCommitment(root={:02x?})", &self.root()[..8])
    }
}

impl RecordCommitment {
    /// The commitment to no records, with the fleet's bucket key.
    pub fn new(key: [u8; 32]) -> Self {
        Self::with_bits(key, BUCKET_BITS)
    }

    fn with_bits(key: [u8; 32], bits: u32) -> Self {
        let leaves = 1usize << bits;
        let mut nodes = vec![[0u8; 32]; 2 * leaves];
        for b in 0..leaves {
            nodes[leaves + b] = bucket_digest(b as u16, &[]);
        }
        for i in (1..leaves).rev() {
            nodes[i] = inner(&nodes[2 * i], &nodes[2 * i + 1]);
        }
        RecordCommitment { key, bits, nodes }
    }

    /// Rebuilds the commitment from every non-empty bucket's listing (a restart reading its
    /// store); the caller compares [`Self::root`] with the root it sealed.
    pub fn rebuild(
        key: [u8; 32],
        buckets: impl IntoIterator<Item = (u16, Vec<BucketEntry>)>,
    ) -> Result<Self, CommitmentError> {
        let mut c = Self::new(key);
        for (b, listing) in buckets {
            c.load_bucket(b, &listing)?;
        }
        Ok(c)
    }

    /// Loads one bucket's listing into a commitment being rebuilt, one bucket at a time (so a
    /// restart holds one listing, not the store). A bucket loaded twice, or a listing that is
    /// invalid, is refused.
    pub fn load_bucket(&mut self, b: u16, listing: &[BucketEntry]) -> Result<(), CommitmentError> {
        let leaf = self.leaf_index(b)?;
        let empty = bucket_digest(b, &[]);
        if self.nodes.get(leaf) != Some(&empty) {
            return Err(CommitmentError::Mismatch);
        }
        self.check_listing(b, listing)?;
        if !listing.is_empty() {
            self.set_leaf(leaf, bucket_digest(b, listing));
        }
        Ok(())
    }

    /// The root naming the whole record set.
    pub fn root(&self) -> Hash {
        self.nodes.get(1).copied().unwrap_or_default()
    }

    /// The bucket a record id falls in.
    pub fn bucket(&self, id: &RecordId) -> u16 {
        let mut h = Sha256::new();
        h.update(BUCKET_OF_TAG);
        h.update(self.key);
        h.update(id);
        let d: Hash = h.finalize().into();
        // In u32: a shift by 16 (no bucket bits, tests only) would overflow a u16.
        (u32::from(u16::from_be_bytes([d[0], d[1]])) >> (16 - self.bits)) as u16
    }

    /// Checks that `listing` is the current listing of `id`'s bucket and that `sealed` is the
    /// record's current sealed value (`None`: the record does not exist).
    pub fn verify(
        &self,
        id: &RecordId,
        listing: &[BucketEntry],
        sealed: Option<&[u8]>,
    ) -> Result<(), CommitmentError> {
        let b = self.bucket(id);
        self.check_listing(b, listing)?;
        let leaf = self.leaf_index(b)?;
        let committed = self.nodes.get(leaf).ok_or(CommitmentError::WrongBucket)?;
        if !bool::from(bucket_digest(b, listing).ct_eq(committed)) {
            return Err(CommitmentError::Mismatch);
        }
        let found = listing.iter().find(|e| e.id == *id);
        match (found, sealed) {
            (None, None) => Ok(()),
            (Some(e), Some(s)) if bool::from(e.hash.ct_eq(&entry_hash(s))) => Ok(()),
            _ => Err(CommitmentError::RecordMismatch),
        }
    }

    /// Replaces `id`'s value `old` (as [`Self::verify`] checks it against `listing`) with `new`
    /// (`None` removes the record) and returns the bucket's new listing, which the host stores
    /// with the new value. Nothing changes on an error.
    pub fn update(
        &mut self,
        id: &RecordId,
        listing: &[BucketEntry],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Vec<BucketEntry>, CommitmentError> {
        self.verify(id, listing, old)?;
        let mut next: Vec<BucketEntry> = listing.iter().filter(|e| e.id != *id).copied().collect();
        if let Some(v) = new {
            if next.len() >= MAX_BUCKET_ENTRIES {
                return Err(CommitmentError::BucketFull);
            }
            let at = next.partition_point(|e| e.id < *id);
            next.insert(
                at,
                BucketEntry {
                    id: *id,
                    hash: entry_hash(v),
                },
            );
        }
        let b = self.bucket(id);
        let leaf = self.leaf_index(b)?;
        self.set_leaf(leaf, bucket_digest(b, &next));
        Ok(next)
    }

    /// Bytes of memory the commitment holds: fixed by [`BUCKET_BITS`], whatever the record count.
    pub fn memory_bytes(&self) -> usize {
        self.nodes.len() * std::mem::size_of::<Hash>()
    }

    fn leaf_index(&self, b: u16) -> Result<usize, CommitmentError> {
        let leaves = 1usize << self.bits;
        let b = usize::from(b);
        if b >= leaves {
            return Err(CommitmentError::WrongBucket);
        }
        Ok(leaves + b)
    }

    fn check_listing(&self, b: u16, listing: &[BucketEntry]) -> Result<(), CommitmentError> {
        if listing.len() > MAX_BUCKET_ENTRIES {
            return Err(CommitmentError::TooLarge(listing.len()));
        }
        if listing.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err(CommitmentError::Unsorted);
        }
        if listing.iter().any(|e| self.bucket(&e.id) != b) {
            return Err(CommitmentError::WrongBucket);
        }
        Ok(())
    }

    fn set_leaf(&mut self, leaf: usize, digest: Hash) {
        if let Some(n) = self.nodes.get_mut(leaf) {
            *n = digest;
        }
        let mut i = leaf / 2;
        while i >= 1 {
            let (Some(l), Some(r)) = (self.nodes.get(2 * i), self.nodes.get(2 * i + 1)) else {
                return;
            };
            let h = inner(l, r);
            if let Some(n) = self.nodes.get_mut(i) {
                *n = h;
            }
            i /= 2;
        }
    }
}

fn bucket_digest(b: u16, listing: &[BucketEntry]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(BUCKET_TAG);
    h.update(b.to_be_bytes());
    // The listing is at most MAX_BUCKET_ENTRIES long, so the count fits.
    h.update((listing.len() as u32).to_be_bytes());
    for e in listing {
        h.update(e.id);
        h.update(e.hash);
    }
    h.finalize().into()
}

fn inner(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// What an honest host keeps: each record's current sealed value.
    #[derive(Default)]
    struct Host(BTreeMap<RecordId, Vec<u8>>);

    impl Host {
        fn listing(&self, c: &RecordCommitment, id: &RecordId) -> Vec<BucketEntry> {
            let b = c.bucket(id);
            self.0
                .iter()
                .filter(|(k, _)| c.bucket(k) == b)
                .map(|(k, v)| BucketEntry {
                    id: *k,
                    hash: entry_hash(v),
                })
                .collect()
        }

        fn set(&mut self, c: &mut RecordCommitment, id: RecordId, v: Option<Vec<u8>>) {
            let listing = self.listing(c, &id);
            let old = self.0.get(&id).cloned();
            let next = c
                .update(&id, &listing, old.as_deref(), v.as_deref())
                .unwrap();
            match v {
                Some(v) => self.0.insert(id, v),
                None => self.0.remove(&id),
            };
            assert_eq!(next, self.listing(c, &id));
        }

        fn buckets(&self, c: &RecordCommitment) -> Vec<(u16, Vec<BucketEntry>)> {
            let mut by: BTreeMap<u16, Vec<BucketEntry>> = BTreeMap::new();
            for (k, v) in &self.0 {
                by.entry(c.bucket(k)).or_default().push(BucketEntry {
                    id: *k,
                    hash: entry_hash(v),
                });
            }
            by.into_iter().collect()
        }
    }

    fn id(n: u8) -> RecordId {
        [n; 32]
    }

    #[test]
    fn a_stale_copy_of_a_record_is_refused() {
        let mut c = RecordCommitment::with_bits([7; 32], 2);
        let mut host = Host::default();
        host.set(&mut c, id(1), Some(b"attempts=0".to_vec()));
        host.set(&mut c, id(1), Some(b"attempts=1".to_vec()));
        let listing = host.listing(&c, &id(1));
        c.verify(&id(1), &listing, Some(b"attempts=1")).unwrap();
        // The old value with the current listing, and the old value with its own old listing.
        assert_eq!(
            c.verify(&id(1), &listing, Some(b"attempts=0")),
            Err(CommitmentError::RecordMismatch)
        );
        let stale = vec![BucketEntry {
            id: id(1),
            hash: entry_hash(b"attempts=0"),
        }];
        assert_eq!(
            c.verify(&id(1), &stale, Some(b"attempts=0")),
            Err(CommitmentError::Mismatch)
        );
        // A refused update changes nothing.
        let root = c.root();
        assert!(c
            .update(&id(1), &stale, Some(b"attempts=0"), Some(b"x"))
            .is_err());
        assert_eq!(c.root(), root);
    }

    #[test]
    fn a_hidden_record_cannot_be_passed_off_as_absent() {
        let mut c = RecordCommitment::with_bits([7; 32], 0);
        let mut host = Host::default();
        host.set(&mut c, id(1), Some(b"live".to_vec()));
        assert_eq!(c.verify(&id(1), &[], None), Err(CommitmentError::Mismatch));
        let listing = host.listing(&c, &id(1));
        assert_eq!(
            c.verify(&id(1), &listing, None),
            Err(CommitmentError::RecordMismatch)
        );
        // Another id of the same bucket is absent, and the listing proves it.
        c.verify(&id(2), &listing, None).unwrap();
    }

    #[test]
    fn listings_are_checked_for_order_bucket_and_size() {
        let mut c = RecordCommitment::with_bits([7; 32], 0);
        let mut host = Host::default();
        host.set(&mut c, id(1), Some(b"a".to_vec()));
        host.set(&mut c, id(2), Some(b"b".to_vec()));
        let mut listing = host.listing(&c, &id(1));
        listing.reverse();
        assert_eq!(
            c.verify(&id(1), &listing, Some(b"a")),
            Err(CommitmentError::Unsorted)
        );
        let dup = vec![listing[1], listing[1]];
        assert_eq!(
            c.verify(&id(1), &dup, Some(b"a")),
            Err(CommitmentError::Unsorted)
        );
        let big = vec![listing[0]; MAX_BUCKET_ENTRIES + 1];
        assert_eq!(
            c.verify(&id(1), &big, Some(b"a")),
            Err(CommitmentError::TooLarge(MAX_BUCKET_ENTRIES + 1))
        );
        let wide = RecordCommitment::new([7; 32]);
        let other = (0..=255u8)
            .map(id)
            .find(|i| wide.bucket(i) != wide.bucket(&id(1)))
            .unwrap();
        let foreign = vec![BucketEntry {
            id: other,
            hash: entry_hash(b"z"),
        }];
        assert_eq!(
            wide.verify(&id(1), &foreign, None),
            Err(CommitmentError::WrongBucket)
        );
    }

    #[test]
    fn memory_does_not_grow_with_records() {
        let mut c = RecordCommitment::with_bits([1; 32], 8);
        let before = c.memory_bytes();
        let mut host = Host::default();
        for n in 0..2000u32 {
            let mut i = [0u8; 32];
            i[..4].copy_from_slice(&n.to_be_bytes());
            host.set(&mut c, i, Some(n.to_be_bytes().to_vec()));
        }
        assert_eq!(c.memory_bytes(), before);
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

    #[test]
    fn a_full_bucket_refuses_new_records_but_not_changes() {
        // No bucket bits: every record shares the one bucket.
        let mut c = RecordCommitment::with_bits([3; 32], 0);
        let mut host = Host::default();
        for n in 0..MAX_BUCKET_ENTRIES as u32 {
            let mut i = [0u8; 32];
            i[..4].copy_from_slice(&n.to_be_bytes());
            host.0.insert(i, vec![1]);
        }
        for (b, listing) in host.buckets(&c) {
            c.load_bucket(b, &listing).unwrap();
        }
        let listing = host.listing(&c, &id(0xff));
        assert_eq!(
            c.update(&id(0xff), &listing, None, Some(b"new")),
            Err(CommitmentError::BucketFull)
        );
        let first = listing[0].id;
        c.update(&first, &listing, Some(&[1]), Some(b"changed"))
            .unwrap();
    }

    #[test]
    fn a_sealed_record_opens_only_as_its_current_value_under_its_id() {
        use crate::state::Live;
        let p = crate::MemoryPlatform::new([5; 32]);
        let mut c = RecordCommitment::new([8; 32]);
        let record = |generation| Record {
            generation,
            live: Some(Live::Destroyed),
            pending: None,
        };
        let v0 = seal_record(&p, &id(1), &record(0)).unwrap();
        let listing = c.update(&id(1), &[], None, Some(&v0)).unwrap();
        let v1 = seal_record(&p, &id(1), &record(1)).unwrap();
        let listing = c.update(&id(1), &listing, Some(&v0), Some(&v1)).unwrap();
        let opened = open_record(&c, &p, &id(1), &listing, Some(&v1)).unwrap();
        assert_eq!(opened, Some(record(1)));
        // The previous sealed value is refused before it is unsealed.
        assert!(matches!(
            open_record(&c, &p, &id(1), &listing, Some(&v0)),
            Err(RecordError::Commitment(CommitmentError::RecordMismatch))
        ));
        // A value sealed under another id does not unseal, even once committed under this one.
        let mut c2 = RecordCommitment::new([8; 32]);
        let listing2 = c2.update(&id(2), &[], None, Some(&v1)).unwrap();
        assert!(matches!(
            open_record(&c2, &p, &id(2), &listing2, Some(&v1)),
            Err(RecordError::Platform(PlatformError::Auth))
        ));
        assert_eq!(open_record(&c, &p, &id(9), &[], None).unwrap(), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, u8),
        Remove(u8),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                (0u8..24, any::<u8>()).prop_map(|(i, v)| Op::Set(i, v)),
                (0u8..24).prop_map(Op::Remove),
            ],
            0..80,
        )
    }

    proptest! {
        /// After any history: the honest host's values verify, every value a record ever had
        /// before its current one is refused, and the root depends only on the final set.
        #[test]
        fn honest_values_verify_and_every_older_value_is_refused(ops in ops()) {
            let mut c = RecordCommitment::with_bits([9; 32], 2);
            let mut host = Host::default();
            let mut history: BTreeMap<RecordId, Vec<Vec<u8>>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Set(i, v) => {
                        // A version byte makes every value a record takes distinct.
                        let n = history.get(&id(i)).map_or(0, Vec::len) as u8;
                        let value = vec![i, v, n];
                        history.entry(id(i)).or_default().push(value.clone());
                        host.set(&mut c, id(i), Some(value));
                    }
                    Op::Remove(i) => {
                        if host.0.contains_key(&id(i)) {
                            host.set(&mut c, id(i), None);
                        }
                    }
                }
            }
            for i in 0..24u8 {
                let listing = host.listing(&c, &id(i));
                let current = host.0.get(&id(i)).cloned();
                prop_assert!(c.verify(&id(i), &listing, current.as_deref()).is_ok());
                for old in history.get(&id(i)).into_iter().flatten() {
                    if Some(old) != current.as_ref() {
                        prop_assert!(c.verify(&id(i), &listing, Some(old)).is_err());
                        // The old value with a listing that names it, as a host would build one.
                        let mut forged: Vec<BucketEntry> =
                            listing.iter().filter(|e| e.id != id(i)).copied().collect();
                        forged.push(BucketEntry { id: id(i), hash: entry_hash(old) });
                        forged.sort_by_key(|e| e.id);
                        prop_assert!(c.verify(&id(i), &forged, Some(old)).is_err());
                    }
                }
            }
            let mut rebuilt = RecordCommitment::with_bits([9; 32], 2);
            for (b, listing) in host.buckets(&c) {
                prop_assert!(rebuilt.load_bucket(b, &listing).is_ok());
            }
            prop_assert_eq!(rebuilt.root(), c.root());
            // A bucket loaded twice is refused (unless it is empty: nothing to double).
            if let Some((b, listing)) = host.buckets(&c).into_iter().next() {
                prop_assert_eq!(rebuilt.load_bucket(b, &listing), Err(CommitmentError::Mismatch));
            }
        }
    }
}
