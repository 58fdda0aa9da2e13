//! The peer-link server: Raft's requests, forwarded proposals, read indexes and the fleet
//! secrets from other members, each checked against the current membership (issue 27) and, for
//! proposals, against the identity the link authenticated (issue 28).

use super::group_commit::GroupCommit;
use super::network::{Link, LinkIdentity, PeerRequest, PeerResponse, ProposeError};
use super::reads::ReadRounds;
use super::state_machine::{Replica, MAX_SNAPSHOT};
use super::TypeConfig;
use openraft::error::RaftError;
use openraft::Raft;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

use super::fleet::{PEER_IDLE, PROPOSE_TIMEOUT};

/// Whether `key` is in the current Raft membership (or, before there is one, in the bootstrap
/// set): what a peer needs for its link and for Raft's own requests, so that a member being
/// removed (even the leader) can still carry the membership change through.
fn in_raft_membership(
    raft: &Raft<TypeConfig>,
    bootstrap: &BTreeSet<[u8; 32]>,
    key: &[u8; 32],
) -> bool {
    let m = raft.metrics().borrow().membership_config.clone();
    let mut nodes = m.membership().nodes().peekable();
    if nodes.peek().is_none() {
        return bootstrap.contains(key);
    }
    nodes.any(|(_, n)| &n.identity == key)
}

/// Identity keys a node takes member requests from (proposals, read indexes, the fleet
/// secrets): members of the current Raft membership that the replicated state admitted
/// (verified operator commands, or the founder). Only while the state records no member at all
/// (a node that just joined, a replication test with bare states) does the bootstrap set stand
/// in. A node the state removed is refused at once, before the Raft membership follows.
fn allowed<R: Replica>(
    raft: &Raft<TypeConfig>,
    bootstrap: &BTreeSet<[u8; 32]>,
    replica: &Mutex<R>,
    key: &[u8; 32],
) -> bool {
    let admitted = match replica.lock().map(|mut r| r.admits(key)) {
        Ok(Ok(None)) => bootstrap.contains(key),
        Ok(Ok(Some(admitted))) => admitted,
        _ => false,
    };
    admitted && in_raft_membership(raft, bootstrap, key)
}

pub(super) async fn serve_peers<R: Replica>(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    commits: GroupCommit,
    reads: ReadRounds,
    identity: LinkIdentity,
    bootstrap: Arc<BTreeSet<[u8; 32]>>,
    replica: Arc<Mutex<R>>,
) {
    // Connections live in this set: when the member stops (this task is
    // aborted) they are aborted too, so peers see the link close instead of
    // talking to a stopped Raft instance.
    let mut conns = tokio::task::JoinSet::new();
    let snapshot_stream = Arc::new(SnapshotStream::default());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok((stream, from)) = accepted else {
            continue;
        };
        let (raft, commits, reads, identity, bootstrap, replica) = (
            raft.clone(),
            commits.clone(),
            reads.clone(),
            identity.clone(),
            bootstrap.clone(),
            replica.clone(),
        );
        let snapshot_stream = snapshot_stream.clone();
        conns.spawn(async move {
            let (mut link, remote) = match Link::accept(stream, &identity).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(%from, error = %e, "peer handshake failed");
                    return;
                }
            };
            if !in_raft_membership(&raft, &bootstrap, &remote) {
                tracing::warn!(%from, "refused a peer link from an identity key that is not a fleet member");
                return;
            }
            let mut membership = raft.server_metrics();
            loop {
                // A member removed while its link is open loses it at once: its member requests
                // are refused as soon as the replicated state removed it, and the link closes
                // when the Raft membership follows (checked whenever it changes).
                let req = tokio::select! {
                    r = tokio::time::timeout(PEER_IDLE, link.recv::<PeerRequest>()) => match r {
                        Ok(Ok(r)) => r,
                        _ => return,
                    },
                    changed = membership.changed() => {
                        if changed.is_err() || !in_raft_membership(&raft, &bootstrap, &remote) {
                            tracing::warn!(%from, "closed the peer link of a node that is no longer a member");
                            return;
                        }
                        continue;
                    }
                };
                let raft_rpc = matches!(
                    req,
                    PeerRequest::AppendEntries(_)
                        | PeerRequest::Vote(_)
                        | PeerRequest::InstallSnapshot(_)
                );
                let ok = if raft_rpc {
                    in_raft_membership(&raft, &bootstrap, &remote)
                } else {
                    allowed(&raft, &bootstrap, &replica, &remote)
                };
                if !ok {
                    tracing::warn!(%from, "dropped a request from a node that is no longer a member");
                    return;
                }
                let resp =
                    dispatch(&raft, &commits, &reads, &snapshot_stream, &*replica, &remote, req).await;
                if link.send(&resp).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Longest snapshot id accepted from a peer (ours are `term-index-n`).
const MAX_SNAPSHOT_ID: usize = 128;

/// The snapshot stream a member is receiving, as far as it has been sent: openraft writes each
/// piece at the offset it names, so a piece beyond what was sent would make the receiver
/// allocate the gap. A piece is admitted only if it starts within what the stream already holds
/// and ends within [`MAX_SNAPSHOT`], so a stream grows only by bytes actually sent.
#[derive(Default)]
struct SnapshotStream(Mutex<Option<(String, u64)>>);

impl SnapshotStream {
    /// `Err(offset the sender should resume from)` for a piece that is refused.
    fn admit(&self, r: &openraft::raft::InstallSnapshotRequest<TypeConfig>) -> Result<(), u64> {
        let end = r.offset.saturating_add(r.data.len() as u64);
        if end > MAX_SNAPSHOT as u64 || r.meta.snapshot_id.len() > MAX_SNAPSHOT_ID {
            return Err(0);
        }
        let mut current = self.0.lock().map_err(|_| 0u64)?;
        let held = match current.as_ref() {
            Some((id, held)) if *id == r.meta.snapshot_id => *held,
            _ => 0,
        };
        if r.offset > held {
            return Err(held);
        }
        *current = if r.done {
            None
        } else {
            Some((r.meta.snapshot_id.clone(), held.max(end)))
        };
        Ok(())
    }
}

async fn dispatch<R: Replica>(
    raft: &Raft<TypeConfig>,
    commits: &GroupCommit,
    reads: &ReadRounds,
    stream: &SnapshotStream,
    replica: &Mutex<R>,
    remote: &[u8; 32],
    req: PeerRequest,
) -> PeerResponse {
    match req {
        PeerRequest::AppendEntries(r) => PeerResponse::AppendEntries(raft.append_entries(r).await),
        PeerRequest::Vote(r) => PeerResponse::Vote(raft.vote(r).await),
        PeerRequest::InstallSnapshot(r) => match stream.admit(&r) {
            Ok(()) => PeerResponse::InstallSnapshot(raft.install_snapshot(r).await),
            Err(expect) => {
                let segment = |offset| openraft::SnapshotSegmentId {
                    id: r.meta.snapshot_id.clone(),
                    offset,
                };
                PeerResponse::InstallSnapshot(Err(RaftError::APIError(
                    openraft::error::SnapshotMismatch {
                        expect: segment(expect),
                        got: segment(r.offset),
                    }
                    .into(),
                )))
            }
        },
        PeerRequest::Propose(entries) => {
            // "Not the leader" must mean "not appended" (the follower then
            // tries elsewhere), so it is decided before client_write: a
            // ForwardToLeader from client_write itself may also come from a
            // leader that appended the entry and was deposed, and such an
            // entry can still commit under the next leader.
            let me = raft.metrics().borrow().id;
            let leader = raft.current_leader().await;
            if leader != Some(me) {
                return PeerResponse::Proposed(Err(ProposeError::NotLeader(leader)));
            }
            // A member forwards what its own core made, a bounded batch at a time (every core
            // checks each entry anyway; this keeps one host from queueing others' entries).
            if entries.0.is_empty()
                || entries.0.len() > super::group_commit::MAX_BATCH
                || entries.0.iter().any(|e| e.proposer != *remote)
            {
                return PeerResponse::Proposed(Err(ProposeError::BatchRefused));
            }
            let done = commits.submit(entries.0);
            PeerResponse::Proposed(match tokio::time::timeout(PROPOSE_TIMEOUT, done).await {
                Ok(Ok(r)) => r.map_err(ProposeError::CommitFailed),
                Ok(Err(_)) => Err(ProposeError::CommitFailed(
                    "group commit dropped the entries".into(),
                )),
                Err(_) => Err(ProposeError::TimedOut),
            })
        }
        PeerRequest::ReadIndex => {
            PeerResponse::ReadIndex(reads.read_index(raft, PROPOSE_TIMEOUT).await)
        }
        PeerRequest::FleetSecrets => PeerResponse::FleetSecrets(match replica.lock() {
            Ok(mut r) => r.export_secrets_to(remote),
            Err(_) => Err("replica lock poisoned".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(
        id: &str,
        offset: u64,
        len: usize,
        done: bool,
    ) -> openraft::raft::InstallSnapshotRequest<TypeConfig> {
        openraft::raft::InstallSnapshotRequest {
            vote: Default::default(),
            meta: openraft::SnapshotMeta {
                last_log_id: None,
                last_membership: Default::default(),
                snapshot_id: id.into(),
            },
            offset,
            data: vec![0; len],
            done,
        }
    }

    #[test]
    fn a_snapshot_stream_grows_only_by_what_was_sent() {
        let s = SnapshotStream::default();
        // A stream starts at 0; a piece past what it holds is told where to resume.
        assert_eq!(s.admit(&piece("a", 10, 5, false)), Err(0));
        assert_eq!(s.admit(&piece("a", 0, 10, false)), Ok(()));
        assert_eq!(s.admit(&piece("a", 11, 5, false)), Err(10));
        assert_eq!(s.admit(&piece("a", 10, 10, false)), Ok(()));
        // Resending an earlier piece is fine; another stream starts over.
        assert_eq!(s.admit(&piece("a", 0, 10, false)), Ok(()));
        assert_eq!(s.admit(&piece("b", 20, 1, false)), Err(0));
        assert_eq!(s.admit(&piece("a", 20, 1, true)), Ok(()));
        // A finished stream is forgotten.
        assert_eq!(s.admit(&piece("a", 21, 1, false)), Err(0));
        // Past the size limit, or an absurd id: refused.
        let max = MAX_SNAPSHOT as u64;
        assert_eq!(s.admit(&piece("c", max, 0, false)), Err(0));
        assert_eq!(s.admit(&piece("d", 0, 1, false)), Ok(()));
        assert_eq!(s.admit(&piece("d", max, 1, false)), Err(0));
        let long = "x".repeat(MAX_SNAPSHOT_ID + 1);
        assert_eq!(s.admit(&piece(&long, 0, 1, false)), Err(0));
    }
}
