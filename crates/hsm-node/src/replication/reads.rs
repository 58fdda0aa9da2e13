//! Linearizable reads: the index a read must wait for, asked of the leader, and the sharing
//! of one leadership check between concurrent reads.

use super::network::ReadIndexError;
use super::TypeConfig;
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::Raft;
use std::sync::Arc;
use std::time::Duration;

/// The index a linearizable read must wait for, asked of this node as the
/// leader: the leadership confirmed by a quorum (openraft's
/// `ensure_linearizable`), and at least this leader's last log index.
///
/// openraft's read index alone is max(committed, the leader's first entry
/// of its term). A leader restarted without losing its term (openraft then
/// resumes as leader at once) knows only the committed index it last
/// persisted — which lags (it is written lazily) — and its term's first
/// entry from before the crash: writes it committed and acknowledged just
/// before the crash may lie above both, and a read would miss them (the
/// chaos checker saw "1 attempt after 2 acknowledged guesses"). Every
/// committed entry is in the leader's log, so its last index bounds them
/// all; waiting for it costs at most the commit of what is in flight.
async fn read_index(raft: &Raft<TypeConfig>, ttl: Duration) -> ReadIndex {
    match tokio::time::timeout(ttl, raft.ensure_linearizable()).await {
        Ok(Ok(log_id)) => {
            let last = raft.metrics().borrow().last_log_index;
            Ok(log_id.map(|l| l.index).max(last))
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(ReadIndexError::NotLeader(f.leader_id))
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
            Err(ReadIndexError::NoQuorum)
        }
        Ok(Err(RaftError::Fatal(_))) => Err(ReadIndexError::Stopped),
        Err(_) => Err(ReadIndexError::TimedOut),
    }
}

/// Shares leadership checks between concurrent reads (read-index batching): a read may use
/// any check that *started* after the read arrived, so reads arriving while a check runs
/// share the next one. One check at a time, each a heartbeat round to a majority.
/// A read index, or why the leadership check failed.
type ReadIndex = Result<Option<u64>, ReadIndexError>;

#[derive(Clone, Default)]
pub(crate) struct ReadRounds {
    inner: Arc<ReadRoundsInner>,
}

#[derive(Default)]
struct ReadRoundsInner {
    started: std::sync::atomic::AtomicU64,
    /// The last finished check: its number and result.
    last: tokio::sync::Mutex<Option<(u64, ReadIndex)>>,
}

impl ReadRounds {
    pub(crate) async fn read_index(&self, raft: &Raft<TypeConfig>, ttl: Duration) -> ReadIndex {
        use std::sync::atomic::Ordering;
        let arrived = self.inner.started.load(Ordering::SeqCst);
        let mut last = tokio::time::timeout(ttl, self.inner.last.lock())
            .await
            .map_err(|_| ReadIndexError::TimedOut)?;
        if let Some((round, r)) = last.as_ref() {
            if *round > arrived {
                return r.clone();
            }
        }
        let round = self.inner.started.fetch_add(1, Ordering::SeqCst) + 1;
        let r = read_index(raft, ttl).await;
        *last = Some((round, r.clone()));
        r
    }
}
