//! The core's commitment to the current records, so records can live on the untrusted host's
//! disk while the core keeps a fixed amount of memory (issue 13, part 4; docs/scaling.md
//! "Per-record state").
//!
//! Sealing stops the host from reading, forging or moving records, but not from handing back an
//! *older* sealed copy: a guess counter rolled back one record at a time. The core therefore keeps
//! this commitment and checks everything the host hands it against it before unsealing it.
//!
//! # Shape (version 1)
//!
//! Records fall into `2^16` buckets by a keyed hash of their id ([`RecordCommitment::bucket`]; the
//! key is per fleet, so nobody can aim many ids at one bucket). A bucket's records are encoded
//! together ([`Bucket`]: `bkv_wire` encoding of the `(id, Record)` list in increasing id order)
//! and sealed as one value, bound to the bucket's number (slot `vault-bucket`, label the bucket
//! as u16 BE). The leaves of a complete binary Merkle tree are the buckets' plain encodings
//! (commitment version 2):
//!
//! ```text
//! leaf  = SHA-256(0x00 || "bkv/bucket/v2\0" || bucket u16 BE || present u8 || bucket encoding)
//!         (present = 0 and no value for an empty bucket, which the host stores nothing for)
//! inner = SHA-256(0x01 || left || right)
//! ```
//!
//! The core holds the whole tree (`2 × 2^16` hashes, 4 MiB, whatever the user count) and updates
//! a path of 16 nodes per change. A bucket the host hands back is unsealed (which only this
//! node's platform can, for this bucket's number) and its contents must hash to the committed
//! leaf: an older copy, a missing bucket or another bucket's value is refused before it is
//! decoded. The leaves cover contents, not sealed bytes, so the root names the records alone:
//! every member holding the same records has the same root, and a snapshot received from
//! another member is checked against the root the sender's core authenticated
//! (`crate::snapshot`). (Version 1 hashed the sealed values: an older copy with the very same
//! contents now opens, which changes nothing.)
//!
//! Why a sealed value per bucket rather than per record (measured, BENCHMARKS.md "Records on
//! disk"): at 10⁶ records redb needed 590–703 B of pages per per-record value (the file
//! 1,078 B), against 481 B per record for the buckets; reads and guess-count updates cost the
//! same; and a bucket's sealed value is its own proof, where per-record values needed the
//! bucket's listing sent along. The price is a whole bucket (about 16 records, 5 KiB, at 10⁶
//! users) unsealed per read and resealed per write.

use crate::platform::{Platform, PlatformError};
use crate::state::{Record, RecordId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Buckets as a power of two.
pub const BUCKET_BITS: u32 = 16;
/// Most records one bucket holds: `2^16 × 4096` ≈ 2.7 × 10⁸ records per fleet, far above a
/// group's size, and it bounds the work any one access costs.
pub const MAX_BUCKET_RECORDS: usize = 4096;
/// Largest encoded bucket accepted: 4096 entries of up to 1,280 bytes (a 32-byte id and a record
/// with a live and a pending credential, each with the largest wrapped key, encode to ~1 KiB).
pub const MAX_BUCKET_BYTES: usize = MAX_BUCKET_RECORDS * 1280;
/// The platform slot a bucket's sealed value is bound to (its label is the bucket number).
pub(crate) const BUCKET_SLOT: crate::platform::SealSlot = crate::platform::SealSlot::VAULT_BUCKET;

const LEAF_TAG: &[u8] = b"bkv/bucket/v2\0";
const BUCKET_OF_TAG: &[u8] = b"bkv/bucket-of/v1\0";

/// A SHA-256 digest: a tree node, a leaf or the root.
pub type Hash = [u8; 32];

/// Why a bucket was refused or could not be committed to; a refusal changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum CommitmentError {
    /// The bucket's contents are not the committed ones: the host handed back an older, missing
    /// or altered value.
    #[error("bucket {0} is not the committed one (stale, missing or altered)")]
    Stale(u16),
    /// The bucket number is beyond the commitment's bucket count.
    #[error("bucket {0} is out of range")]
    NoSuchBucket(u16),
    /// A rebuild was handed the same bucket twice ([`RecordCommitment::load`]).
    #[error("bucket {0} was loaded twice")]
    LoadedTwice(u16),
    /// The bucket would exceed [`MAX_BUCKET_RECORDS`] records or [`MAX_BUCKET_BYTES`] bytes.
    #[error("bucket {0} is full")]
    BucketFull(u16),
    /// A record's id does not place it in this bucket.
    #[error("a record does not belong in bucket {0}")]
    Misplaced(u16),
    /// The platform failed to seal, or refused to unseal, the bucket's value.
    #[error("sealed bucket: {0}")]
    Platform(#[from] PlatformError),
    /// The bucket's value does not decode, or its records are out of order or repeated.
    #[error("sealed bucket does not decode: {0}")]
    Malformed(String),
}

/// One bucket's records, in increasing id order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    records: Vec<(RecordId, Record)>,
}

impl Bucket {
    /// The record with id `id`, if the bucket holds it.
    pub fn get(&self, id: &RecordId) -> Option<&Record> {
        self.records
            .binary_search_by(|(k, _)| k.cmp(id))
            .ok()
            .and_then(|i| self.records.get(i))
            .map(|(_, r)| r)
    }

    /// Sets (`Some`) or removes (`None`) a record.
    pub fn set(&mut self, id: RecordId, record: Option<Record>) {
        match (self.records.binary_search_by(|(k, _)| k.cmp(&id)), record) {
            (Ok(i), Some(r)) => {
                if let Some(slot) = self.records.get_mut(i) {
                    slot.1 = r;
                }
            }
            (Ok(i), None) => {
                self.records.remove(i);
            }
            (Err(i), Some(r)) => self.records.insert(i, (id, r)),
            (Err(_), None) => {}
        }
    }

    /// How many records the bucket holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the bucket holds no record (the host stores nothing for it).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The bucket's records with their ids, in increasing id order.
    pub fn iter(&self) -> impl Iterator<Item = &(RecordId, Record)> {
        self.records.iter()
    }

    /// The bucket's records with their ids, in increasing id order, taken out.
    pub fn into_records(self) -> Vec<(RecordId, Record)> {
        self.records
    }

    /// The bucket's plain encoding (record encoding 2: `0x02 || postcard(Bucket)`).
    pub fn encode(&self) -> Vec<u8> {
        bkv_wire::encode_as(crate::state::STATE_ENCODING, self)
    }

    /// Decodes a bucket's plain encoding, 2 or (an earlier release's) 1.
    pub fn decode(plain: &[u8]) -> Result<Bucket, CommitmentError> {
        let malformed = |e: bkv_wire::CodecError| CommitmentError::Malformed(e.to_string());
        match bkv_wire::encoding_version(plain, MAX_BUCKET_BYTES).map_err(malformed)? {
            1 => {
                let v1: crate::legacy::BucketV1 =
                    bkv_wire::decode(plain, MAX_BUCKET_BYTES).map_err(malformed)?;
                Ok(Bucket {
                    records: v1
                        .records
                        .into_iter()
                        .map(|(id, r)| (id, r.into()))
                        .collect(),
                })
            }
            crate::state::STATE_ENCODING => {
                bkv_wire::decode_as(plain, MAX_BUCKET_BYTES, crate::state::STATE_ENCODING)
                    .map_err(malformed)
            }
            v => Err(malformed(bkv_wire::CodecError::Version(v))),
        }
    }
}

/// The commitment: a fixed-size Merkle tree over the buckets' contents (module docs).
#[derive(Clone)]
pub struct RecordCommitment {
    /// Keys the bucket placement; wiped when dropped (derived from fleet secrets once wired).
    key: zeroize::Zeroizing<[u8; 32]>,
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

    /// With `2^bits` buckets (tests use few, so buckets hold several records).
    pub(crate) fn with_bits(key: [u8; 32], bits: u32) -> Self {
        let leaves = 1usize << bits;
        let mut nodes = vec![[0u8; 32]; 2 * leaves];
        for (b, n) in (0..=u16::MAX).zip(nodes.iter_mut().skip(leaves)) {
            *n = leaf(b, None);
        }
        for i in (1..leaves).rev() {
            // Children 2i and 2i+1 exist for every inner node i < leaves.
            if let (Some(l), Some(r)) = (nodes.get(2 * i).copied(), nodes.get(2 * i + 1).copied()) {
                if let Some(n) = nodes.get_mut(i) {
                    *n = inner(&l, &r);
                }
            }
        }
        RecordCommitment {
            key: zeroize::Zeroizing::new(key),
            bits,
            nodes,
        }
    }

    /// The commitment to no records, with the same placement.
    pub fn cleared(&self) -> Self {
        Self::with_bits(*self.key, self.bits)
    }

    /// Whether the root is `root` (compared in constant time).
    pub fn root_is(&self, root: &Hash) -> bool {
        bool::from(self.root().ct_eq(root))
    }

    /// How many buckets records are placed in.
    pub fn bucket_count(&self) -> usize {
        1 << self.bits
    }

    /// The root naming every record.
    pub fn root(&self) -> Hash {
        self.nodes.get(1).copied().unwrap_or_default()
    }

    /// The bucket a record id falls in.
    pub fn bucket(&self, id: &RecordId) -> u16 {
        let mut h = Sha256::new();
        h.update(BUCKET_OF_TAG);
        h.update(*self.key);
        h.update(id);
        let d: Hash = h.finalize().into();
        // In u32: a shift by 16 (no bucket bits, tests only) would overflow a u16.
        (u32::from(u16::from_be_bytes([d[0], d[1]])) >> (16 - self.bits)) as u16
    }

    /// The committed leaf of bucket `b`.
    fn committed(&self, b: u16) -> Result<&Hash, CommitmentError> {
        self.nodes
            .get(self.leaf_index(b)?)
            .ok_or(CommitmentError::NoSuchBucket(b))
    }

    /// Checks that `plain` (`None`: the bucket is empty) is bucket `b`'s committed contents.
    pub fn verify_plain(&self, b: u16, plain: Option<&[u8]>) -> Result<(), CommitmentError> {
        if bool::from(leaf(b, plain).ct_eq(self.committed(b)?)) {
            Ok(())
        } else {
            Err(CommitmentError::Stale(b))
        }
    }

    /// Opens bucket `b` as the host read it: unsealed (bound to `b`), checked against the
    /// commitment, then decoded, and every record in it must belong to `b`.
    pub fn open(
        &self,
        p: &dyn Platform,
        b: u16,
        sealed: Option<&[u8]>,
    ) -> Result<Bucket, CommitmentError> {
        let Some(sealed) = sealed else {
            self.verify_plain(b, None)?;
            return Ok(Bucket::default());
        };
        let plain = p.unseal(BUCKET_SLOT, &b.to_be_bytes(), sealed)?;
        self.verify_plain(b, Some(&plain))?;
        let bucket = Bucket::decode(&plain)?;
        self.check(b, &bucket)
            .map_err(|e| CommitmentError::Malformed(e.to_string()))?;
        Ok(bucket)
    }

    /// Seals `bucket` as bucket `b`'s new value and commits to it, replacing `old` (which must be
    /// the current value, as [`Self::open`] checks). Returns what the host stores (`None`: the
    /// bucket is empty, store nothing). Nothing changes on an error.
    pub fn update(
        &mut self,
        p: &dyn Platform,
        b: u16,
        old: Option<&[u8]>,
        bucket: &Bucket,
    ) -> Result<Option<Vec<u8>>, CommitmentError> {
        self.open(p, b, old)?;
        self.reseal(p, b, bucket)
    }

    /// Seals `bucket` as bucket `b`'s new value, for a caller that holds the bucket's current
    /// contents in trusted memory (opened through [`Self::open`] or written by this commitment
    /// since): the same checks as [`Self::update`] without re-reading the old sealed value.
    pub fn reseal(
        &mut self,
        p: &dyn Platform,
        b: u16,
        bucket: &Bucket,
    ) -> Result<Option<Vec<u8>>, CommitmentError> {
        let i = self.leaf_index(b)?;
        self.check(b, bucket)?;
        if bucket.is_empty() {
            self.set_leaf(i, leaf(b, None));
            return Ok(None);
        }
        let plain = zeroize::Zeroizing::new(bucket.encode());
        // What `open` would refuse is never committed to (the table would refuse it too,
        // after the commitment had moved on, leaving the bucket's users unreadable).
        if plain.len() > MAX_BUCKET_BYTES {
            return Err(CommitmentError::BucketFull(b));
        }
        let sealed = p.seal(BUCKET_SLOT, &b.to_be_bytes(), &plain)?;
        self.set_leaf(i, leaf(b, Some(&plain)));
        Ok(Some(sealed))
    }

    /// What every bucket must be, on the way in (`update`) and out (`open`): at most
    /// [`MAX_BUCKET_RECORDS`] records, ids strictly increasing, each placed in `b`.
    fn check(&self, b: u16, bucket: &Bucket) -> Result<(), CommitmentError> {
        if bucket.len() > MAX_BUCKET_RECORDS {
            return Err(CommitmentError::BucketFull(b));
        }
        if !bucket
            .records
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.0 < b.0))
        {
            return Err(CommitmentError::Malformed(
                "bucket records out of order or repeated".into(),
            ));
        }
        if bucket.iter().any(|(id, _)| self.bucket(id) != b) {
            return Err(CommitmentError::Misplaced(b));
        }
        Ok(())
    }

    /// Loads one bucket's stored value into a commitment being rebuilt (a restart reading its
    /// store, one bucket at a time): unsealed, its contents hashed; the caller then compares
    /// [`Self::root`] with the root it sealed. A bucket loaded twice is refused.
    pub fn load(&mut self, p: &dyn Platform, b: u16, sealed: &[u8]) -> Result<(), CommitmentError> {
        let plain = p.unseal(BUCKET_SLOT, &b.to_be_bytes(), sealed)?;
        self.load_plain(b, &plain)
    }

    /// [`Self::load`] for contents already in the clear.
    pub fn load_plain(&mut self, b: u16, plain: &[u8]) -> Result<(), CommitmentError> {
        let i = self.leaf_index(b)?;
        if self.nodes.get(i) != Some(&leaf(b, None)) {
            return Err(CommitmentError::LoadedTwice(b));
        }
        self.set_leaf(i, leaf(b, Some(plain)));
        Ok(())
    }

    /// Bytes of memory the commitment holds: fixed by [`BUCKET_BITS`], whatever the record count.
    pub fn memory_bytes(&self) -> usize {
        self.nodes.len() * std::mem::size_of::<Hash>()
    }

    fn leaf_index(&self, b: u16) -> Result<usize, CommitmentError> {
        let leaves = 1usize << self.bits;
        let i = usize::from(b);
        if i >= leaves {
            return Err(CommitmentError::NoSuchBucket(b));
        }
        Ok(leaves + i)
    }

    fn set_leaf(&mut self, i: usize, digest: Hash) {
        if let Some(n) = self.nodes.get_mut(i) {
            *n = digest;
        }
        let mut i = i / 2;
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

/// Unseals and decodes a stored bucket *without* checking it against a commitment: for a reader
/// that loads every bucket into a fresh commitment and compares the root at the end
/// (a snapshot read from a consistent view of the table), never for a single access.
pub fn unseal_bucket(p: &dyn Platform, b: u16, sealed: &[u8]) -> Result<Bucket, CommitmentError> {
    let plain = p.unseal(BUCKET_SLOT, &b.to_be_bytes(), sealed)?;
    let bucket = Bucket::decode(&plain)?;
    if bucket.is_empty() {
        return Err(CommitmentError::Malformed(
            "a stored bucket is empty".into(),
        ));
    }
    Ok(bucket)
}

fn leaf(b: u16, plain: Option<&[u8]>) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(LEAF_TAG);
    h.update(b.to_be_bytes());
    h.update([u8::from(plain.is_some())]);
    if let Some(s) = plain {
        h.update(s);
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
mod tests;
