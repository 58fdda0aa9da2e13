//! The sealed `raft-state` value, the hash chain over stored entries it commits to, and the
//! helpers that seal and open every value of the log (the format: docs/formats.md
//! "Replication"; why: the parent module's comment).

use super::MAX_ENTRY;
use crate::replication::ReplicationStoreError;
use bkv_hsm_core::{SealSlot, SharedPlatform};
use openraft::{LogId, Vote};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;

pub(super) type Hash = [u8; 32];

/// The log's chain value after entry `index` whose sealed bytes are `sealed`.
pub(super) fn chain_step(prev: &Hash, index: u64, sealed: &[u8]) -> Hash {
    sha2::Sha256::new()
        .chain_update(b"bkv/raft-chain/v1\0")
        .chain_update(prev)
        .chain_update(index.to_be_bytes())
        .chain_update(sealed)
        .finalize()
        .into()
}

/// The chain value of a purged position whose entry this node never stored (a snapshot
/// installed past its log, or a log of an earlier release).
pub(super) fn chain_anchor(id: &LogId<u64>) -> Hash {
    sha2::Sha256::new()
        .chain_update(b"bkv/raft-chain-anchor/v1\0")
        .chain_update(bkv_wire::encode(id))
        .finalize()
        .into()
}

/// The sealed `raft-state` value (docs/formats.md "Replication").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RaftState {
    pub(super) version: u16,
    /// Counts this node's durable writes; the platform counter follows it.
    pub(super) epoch: u64,
    pub(super) vote: Option<Vote<u64>>,
    pub(super) committed: Option<LogId<u64>>,
    pub(super) purged: Option<LogId<u64>>,
    /// The chain value at `purged` (zeros with nothing purged).
    pub(super) purged_chain: Hash,
    /// The last stored entry's index (`None`: no entry stored).
    pub(super) last: Option<u64>,
    /// The chain value at `last` (`purged_chain` for an empty log).
    pub(super) head: Hash,
    /// The log index through which the record table was on disk.
    pub(super) records_durable: u64,
}

/// What the store keeps in memory: the state as last written and the chain value of every
/// stored entry.
pub(super) struct Persisted {
    pub(super) state: RaftState,
    pub(super) chain: BTreeMap<u64, Hash>,
}

impl Persisted {
    /// The chain value entry `index` continues from (`None`: no entry or purge point right
    /// before it).
    pub(super) fn before(&self, index: u64) -> Option<Hash> {
        let prev = index.checked_sub(1)?;
        if let Some(h) = self.chain.get(&prev) {
            return Some(*h);
        }
        match self.state.purged {
            Some(p) if p.index == prev => Some(self.state.purged_chain),
            _ => None,
        }
    }

    /// Drops the chain at and after `index`, leaving the state's last entry and head behind it.
    pub(super) fn cut_from(&mut self, index: u64) {
        self.chain.split_off(&index);
        match self.chain.last_key_value() {
            Some((i, h)) => (self.state.last, self.state.head) = (Some(*i), *h),
            None => (self.state.last, self.state.head) = (None, self.state.purged_chain),
        }
    }
}

/// Seals the host's value `v` (slot `raft-state`, the host's only slot) under `label`.
pub(super) fn seal_value<T: serde::Serialize>(
    p: &SharedPlatform,
    label: &[u8],
    v: &T,
) -> Result<Vec<u8>, ReplicationStoreError> {
    Ok(p.seal(
        SealSlot::RaftState,
        label,
        &zeroize::Zeroizing::new(bkv_wire::encode(v)),
    )?)
}

pub(super) fn open_value<T: serde::de::DeserializeOwned>(
    p: &SharedPlatform,
    label: &[u8],
    sealed: &[u8],
) -> Result<T, ReplicationStoreError> {
    let purpose = SealSlot::RaftState.name();
    if sealed.len() > MAX_ENTRY {
        return Err(ReplicationStoreError::Malformed(purpose.into()));
    }
    let plain = p
        .unseal(SealSlot::RaftState, label, sealed)
        .map_err(|_| ReplicationStoreError::Unseal(purpose.into()))?;
    bkv_wire::decode(&plain, MAX_ENTRY)
        .map_err(|_| ReplicationStoreError::Malformed(purpose.into()))
}

pub(super) fn log_behind(detail: String) -> ReplicationStoreError {
    ReplicationStoreError::RolledBack {
        part: "raft log",
        detail,
    }
}
