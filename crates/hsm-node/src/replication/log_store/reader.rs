//! Reading the log back: for openraft's log readers and the store's own checks (split from
//! `log_store.rs`).

use super::*;

impl LogStore {
    /// The entries in the range, decoded and checked against their keys.
    pub(super) fn read_range(
        inner: &Inner,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, ReplicationStoreError> {
        LogStore::read_at_most(inner, start, end, usize::MAX)
    }

    /// [`LogStore::read_range`], stopping before the entry that would take it past `bytes` (the
    /// first entry is read whatever its size).
    pub(super) fn read_at_most(
        inner: &Inner,
        start: Bound<u64>,
        end: Bound<u64>,
        bytes: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, ReplicationStoreError> {
        let tx = inner.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(LOG).map_err(db_err)?;
        let mut out = Vec::new();
        let mut read = 0usize;
        for item in t.range::<u64>((start, end)).map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            read = read.saturating_add(v.value().len());
            if !out.is_empty() && read > bytes {
                break;
            }
            let index = k.value();
            // Stored as they came: the payload is entries cores made and check
            // (`bkv_hsm_core::entry`); the rest (log ids, Raft memberships) is public, and the
            // counter-bound chain covers every byte.
            let e: Entry<TypeConfig> = bkv_wire::decode(v.value(), MAX_ENTRY)
                .map_err(|_| ReplicationStoreError::Malformed("raft entry".into()))?;
            if e.log_id.index != index {
                return Err(ReplicationStoreError::Malformed("raft-entry index".into()));
            }
            out.push(e);
        }
        Ok(out)
    }
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

    /// What the leader sends a follower in one append. openraft gives the whole append (the
    /// follower seals, writes and fsyncs it) one heartbeat interval, 100 ms, and resends the same
    /// range after a timeout: a follower some megabytes behind (after a leader change under load)
    /// would never catch up, and nothing would commit.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let range = (Bound::Included(start), Bound::Excluded(end));
        self.blocking(move |i| LogStore::read_at_most(i, range.0, range.1, APPEND_BYTES))
            .await
            .map_err(read_err)
    }
}
