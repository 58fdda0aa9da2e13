//! One node's membership in a replicated fleet: the openraft instance, its
//! peer-link server (`super::peer_server`), and [`Fleet::propose`], which commits an entry on a
//! majority (through the ordered pipeline of `super::proposals`, forwarding to the leader when
//! this node is not it) and returns the outcome only once this node's own state machine has
//! applied it.

use super::group_commit::GroupCommit;
use super::log_store::LogStore;
use super::network::{Link, LinkIdentity, PeerNetwork, PeerRequest, PeerResponse};
use super::peer_server::serve_peers;
pub use super::proposals::Submitted;
use super::proposals::{leader_node, one_outcome, propose_in_order, Held, Proposal, Waiting};
use super::reads::ReadRounds;
use super::state_machine::{Released, Replica, StateMachine};
use super::{PeerNode, ReplicationStoreError, TypeConfig};
use crate::metrics::NodeMetrics;
use bkv_hsm_core::members::Members;
use bkv_hsm_core::state::Outcome;
use bkv_hsm_core::{LogEntry, SharedPlatform};
use openraft::error::RaftError;
use openraft::Raft;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

mod stop;

/// How long a proposal may take before the caller is told "unavailable".
pub(crate) const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle peer connections are closed after this.
pub(crate) const PEER_IDLE: Duration = Duration::from_secs(120);

/// Why a fleet member could not start, or a proposal, read or membership change failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The sealed log or the record table failed, or refused to open (rollback, tampering).
    #[error(transparent)]
    Store(#[from] ReplicationStoreError),
    /// openraft reported an error (its message).
    #[error("raft: {0}")]
    Raft(String),
    /// No leader with a majority answered in time (why); a proposal's outcome is then unknown.
    #[error("the fleet is unavailable (no leader reachable with a majority): {0}")]
    Unavailable(String),
}

/// What a member needs to start.
pub struct FleetOptions {
    /// This node's id in the fleet.
    pub id: u64,
    /// Where the sealed log and snapshots live.
    pub dir: PathBuf,
    /// Seals the log's counter-bound state (the host's own slot only); its counter detects
    /// rollback.
    pub platform: SharedPlatform,
    /// This node's identity key, through the core that holds it: opens and answers peer links.
    pub identity: LinkIdentity,
    /// Identity keys accepted while the replicated state records no member
    /// yet: the members a new node joined (its log is still empty), or the
    /// peers of a replication test with bare states. Once the state names
    /// members, exactly the admitted members are accepted.
    pub bootstrap: BTreeSet<[u8; 32]>,
    /// The log growth that always starts a snapshot ([`SNAPSHOT_LOG_MIN`]; tests lower it).
    pub snapshot_log_min: u64,
}

/// A running fleet member.
pub struct Fleet {
    /// This node's id in the fleet.
    pub id: u64,
    /// This node's identity key (the proposer its core names in its entries).
    pub identity_key: [u8; 32],
    /// This node's openraft instance (metrics, leadership, membership changes).
    pub raft: Raft<TypeConfig>,
    net: PeerNetwork,
    /// This node's proposals, in the order its core made them ([`Fleet::submit`]).
    proposals: tokio::sync::mpsc::UnboundedSender<Proposal>,
    /// Proposals handed to the pipeline and not yet queued for commit or answered: while there
    /// are none and this node leads, a proposal goes straight to the group commit.
    in_pipeline: Arc<std::sync::atomic::AtomicUsize>,
    commits: GroupCommit,
    pipeline: tokio::task::JoinHandle<()>,
    reads: ReadRounds,
    server: tokio::task::JoinHandle<()>,
    leader_watch: tokio::task::JoinHandle<()>,
    log_watch: tokio::task::JoinHandle<()>,
    metrics: Arc<NodeMetrics>,
    /// Session replies the applied batches brought (`Released`).
    pub released: Arc<Released>,
    closing: stop::Closing,
}

/// A leader whose last quorum acknowledgement is older than this is not ready: it may have
/// lost its majority (heartbeats go out every 100 ms).
const QUORUM_FRESH_MS: u64 = 1_000;

/// Counts the leaders this node sees.
/// Log bytes that always justify a snapshot, however small the state.
pub const SNAPSHOT_LOG_MIN: u64 = 16 << 20;

/// The snapshot policy (openraft's own is off): a snapshot whenever the log grew by `log_min`
/// bytes (normally [`SNAPSHOT_LOG_MIN`]). With the records in the table a snapshot is one durable
/// commit, after which the log behind it is purged, so the log on disk stays within about
/// `log_min` whatever the state's size. (While a snapshot was a whole-state copy the threshold
/// grew with the state; openraft's default, every 5,000 entries of 1 to 64 mutations each since
/// group commit, fits neither.)
async fn watch_log_growth(
    raft: Raft<TypeConfig>,
    appended: Arc<std::sync::atomic::AtomicU64>,
    log_min: u64,
    metrics: Arc<NodeMetrics>,
) {
    use std::sync::atomic::Ordering;
    // From zero: the log bytes a restart found on disk count as growth since the last snapshot.
    // Other snapshots (an explicit trigger, one installed from the leader) do not reset the
    // count: a snapshot is a durable commit now, and one more is cheaper than a log that grows
    // past the threshold because a snapshot position moved at start.
    let mut since = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = appended.load(Ordering::Relaxed);
        if now.saturating_sub(since) >= log_min {
            tracing::info!(log_bytes = now - since, "the log grew: snapshot");
            since = now;
            match raft.trigger().snapshot().await {
                Ok(()) => metrics.log_snapshot(),
                Err(e) => tracing::warn!(error = %e, "could not trigger a snapshot"),
            }
        }
    }
}

async fn watch_leaders(raft: Raft<TypeConfig>, metrics: Arc<NodeMetrics>) {
    let mut rx = raft.metrics();
    let mut last = None;
    loop {
        let leader = rx.borrow_and_update().current_leader;
        if leader.is_some() && leader != last {
            metrics.leader_changed();
            last = leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl Fleet {
    /// Starts this member: opens its sealed log and state machine under
    /// `dir`, and serves peers on `listener`. `bootstrap` lists identity keys
    /// accepted before any membership is known (the initial members).
    pub async fn start<R: Replica>(
        opts: FleetOptions,
        listener: TcpListener,
        replica: Arc<Mutex<R>>,
    ) -> Result<Fleet, FleetError> {
        let FleetOptions {
            id,
            dir,
            platform,
            identity,
            bootstrap,
            snapshot_log_min,
        } = opts;
        let dir = dir.as_path();
        let log = LogStore::open(&dir.join("raft-log.redb"), platform)?;
        let appended = log.appended_bytes();
        let metrics = Arc::new(NodeMetrics::default());
        let mut log = log;
        let sm = StateMachine::open(dir, replica.clone(), metrics.clone())?;
        let released = sm.released();
        let closing = stop::Closing::new(&replica, &log, &sm);
        // The log goes only behind what the table holds on disk (a crash mid-install).
        log.set_records_durable(sm.durable());
        // The records must reach the log: a table rolled back (or replaced) behind the log's
        // first entry cannot be brought up to date from it.
        let purged = openraft::storage::RaftLogStorage::get_log_state(&mut log)
            .await
            .map_err(|e| FleetError::Raft(e.to_string()))?
            .last_purged_log_id;
        if let Some(purged) = purged {
            let applied = sm.last_applied().map(|l| l.index);
            if applied.is_none_or(|a| a < purged.index) {
                return Err(ReplicationStoreError::RecordsBehindLog {
                    applied: applied.unwrap_or(0),
                    purged: purged.index,
                }
                .into());
            }
        }
        // The record table must be at least as new as it was on disk when the log last wrote
        // (the counter-bound state records that), and from the log's own history.
        let durable = log.records_durable_at();
        let applied = sm.last_applied();
        let table = |detail: String| ReplicationStoreError::RolledBack {
            part: "record table",
            detail,
        };
        if applied.map(|l| l.index).unwrap_or(0) < durable {
            return Err(table(format!(
                "it was applied through log index {}, but it was on disk through index \
                 {durable} before (an older copy of the table)",
                applied.map(|l| l.index).unwrap_or(0)
            ))
            .into());
        }
        if let Some(a) = applied {
            match log.log_id_at(a.index)? {
                Some(id) if id != a => {
                    return Err(table(format!(
                        "it was applied through entry {a}, but the log holds {id} there (a table \
                         of another history)"
                    ))
                    .into())
                }
                _ => {}
            }
        }
        let identity_key = identity.public();
        let net = PeerNetwork::new(identity.clone());
        let raft = Raft::new(id, super::raft_config()?, net.clone(), log, sm)
            .await
            .map_err(|e| FleetError::Raft(e.to_string()))?;
        let commits = GroupCommit::start(raft.clone());
        let (proposals, queued) = tokio::sync::mpsc::unbounded_channel();
        let in_pipeline = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pipeline = tokio::spawn(propose_in_order(
            raft.clone(),
            net.clone(),
            commits.clone(),
            queued,
        ));
        let reads = ReadRounds::default();
        let server = tokio::spawn(serve_peers(
            listener,
            raft.clone(),
            commits.clone(),
            reads.clone(),
            identity,
            Arc::new(bootstrap),
            replica,
        ));
        let leader_watch = tokio::spawn(watch_leaders(raft.clone(), metrics.clone()));
        let log_watch = tokio::spawn(watch_log_growth(
            raft.clone(),
            appended,
            snapshot_log_min,
            metrics.clone(),
        ));
        Ok(Fleet {
            id,
            identity_key,
            raft,
            net,
            proposals,
            in_pipeline,
            commits: commits.clone(),
            pipeline,
            reads,
            server,
            leader_watch,
            log_watch,
            metrics,
            released,
            closing,
        })
    }

    /// Forms a new fleet from `members` (call once, on one node).
    pub async fn initialize(&self, members: BTreeMap<u64, PeerNode>) -> Result<(), FleetError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(FleetError::Raft(e.to_string())),
        }
    }

    /// Queues an entry this node's core made for commit, behind every entry queued before it,
    /// and returns at once: call it in the order the core made the entries (within the entry's
    /// turn, `bkv_core_service::pipe::Turn`), since each core's entries must reach the log in the
    /// order it numbered them
    /// ([`bkv_hsm_core::entry`]). [`Fleet::wait`] then waits for the outcome.
    pub fn submit(&self, entry: LogEntry) -> Submitted {
        use std::sync::atomic::Ordering;
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        // The common case, this node leading with nothing of its own still in the pipeline:
        // straight into the group commit (whose queue keeps the order), without the pipeline's
        // extra hop, so the entry is there when the gatherer closes its next batch.
        let leading = self.raft.metrics().borrow().current_leader == Some(self.id);
        if leading && self.in_pipeline.load(Ordering::Acquire) == 0 {
            return Submitted {
                rx: Waiting::Direct(self.commits.submit(vec![entry])),
                deadline,
                started,
            };
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(e) = self.proposals.send(Proposal {
            entry,
            deadline,
            tx,
            _held: Held::new(&self.in_pipeline),
        }) {
            let _ = e.0.tx.send(Err("the proposal pipeline stopped".into()));
        }
        Submitted {
            rx: Waiting::Pipeline(rx),
            deadline,
            started,
        }
    }

    /// Waits until the submitted entry committed on a majority and this node applied it, and
    /// returns its outcome. Fails with `Unavailable` when no leader with a majority took it in
    /// time: then its outcome is unknown (it may still commit, and is never proposed twice).
    pub async fn wait(&self, s: Submitted) -> Result<Outcome, FleetError> {
        let r = match s.rx {
            Waiting::Pipeline(rx) => tokio::time::timeout_at(s.deadline, rx).await,
            Waiting::Direct(rx) => tokio::time::timeout_at(s.deadline, rx).await.map(|r| {
                r.map(|r| {
                    r.map_err(|e| format!("{e} (the change may still commit)"))
                        .and_then(one_outcome)
                })
            }),
        };
        let (outcome, index) = match r {
            Ok(Ok(Ok(x))) => x,
            Ok(Ok(Err(e))) => return Err(FleetError::Unavailable(e)),
            Ok(Err(_)) => {
                return Err(FleetError::Unavailable(
                    "the proposal pipeline dropped the entry".into(),
                ))
            }
            Err(_) => {
                return Err(FleetError::Unavailable(
                    "commit timed out (the change may still commit; not retried)".into(),
                ))
            }
        };
        // This node's state must include the entry before the session continues on it.
        let left = s
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "propose")
            .await
            .map_err(|e| FleetError::Unavailable(e.to_string()))?;
        self.metrics.committed(s.started.elapsed());
        Ok(outcome)
    }

    /// [`Fleet::submit`] then [`Fleet::wait`].
    pub async fn propose(&self, entry: LogEntry) -> Result<Outcome, FleetError> {
        let s = self.submit(entry);
        self.wait(s).await
    }

    /// Makes this node's state at least as new as anything committed before
    /// the call (a linearizable read): the leader confirms its leadership
    /// with a majority and names its commit index; this node waits until it
    /// applied that far.
    pub async fn read_barrier(&self) -> Result<(), FleetError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        let mut last = String::from("no leader");
        while tokio::time::Instant::now() < deadline {
            let left = deadline - tokio::time::Instant::now();
            let index = match self.raft.current_leader().await {
                Some(l) if l == self.id => self
                    .reads
                    .read_index(&self.raft, left)
                    .await
                    .map_err(|e| e.to_string()),
                Some(l) => match self.leader_node(l) {
                    Ok(node) => {
                        match self.net.call(l, &node, &PeerRequest::ReadIndex, left).await {
                            Ok(PeerResponse::ReadIndex(r)) => {
                                r.map_err(|e| format!("leader {l}: {e}"))
                            }
                            Ok(_) => Err("unexpected response to a read index".into()),
                            Err(e) => Err(format!("read index from leader {l}: {e}")),
                        }
                    }
                    Err(e) => Err(e),
                },
                None => Err("no leader".into()),
            };
            match index {
                Ok(index) => {
                    self.raft
                        .wait(Some(deadline - tokio::time::Instant::now()))
                        .applied_index_at_least(index, "read barrier")
                        .await
                        .map_err(|e| FleetError::Unavailable(e.to_string()))?;
                    return Ok(());
                }
                Err(e) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(FleetError::Unavailable(last))
    }

    /// Builds a snapshot covering at least log index `index` and waits for it, up to `limit`.
    /// openraft drops a trigger that arrives while a snapshot is being built (this node's
    /// log-growth policy may be building one that stops short of `index`), so the trigger is
    /// repeated until a snapshot covers `index`.
    pub async fn snapshot_through(&self, index: u64, limit: Duration) -> Result<(), FleetError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| FleetError::Raft(e.to_string()))?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let covered = self
                .raft
                .wait(Some(left.min(Duration::from_secs(2))))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= index),
                    "snapshot covering the index",
                )
                .await;
            match covered {
                Ok(_) => return Ok(()),
                Err(openraft::metrics::WaitError::Timeout(..))
                    if tokio::time::Instant::now() < deadline => {}
                Err(e) => return Err(FleetError::Raft(e.to_string())),
            }
        }
    }

    /// Whether a Raft membership exists (the fleet was initialized).
    pub fn initialized(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some()
    }

    /// Whether this node is the leader, and who is if not.
    pub async fn leader(&self) -> Option<u64> {
        self.raft.current_leader().await
    }

    /// Makes the Raft membership follow the members the replicated state
    /// admitted (verified operator commands): adds admitted nodes as
    /// learners, promotes the ones admitted as voters, removes the rest.
    /// Leader only; every step is idempotent, so a crash half-way is
    /// repaired by the next call.
    pub async fn reconcile(&self, members: &Members) -> Result<(), FleetError> {
        reconcile(&self.raft, members).await
    }

    /// This node's counters (see `NodeMetrics`).
    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// Whether this node sees a leader with a majority: as the leader, a quorum acknowledged
    /// it within the last second; as a follower or learner, it follows a leader.
    pub fn ready(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        match m.state {
            openraft::ServerState::Leader => m
                .millis_since_quorum_ack
                .is_some_and(|ms| ms <= QUORUM_FRESH_MS),
            openraft::ServerState::Follower | openraft::ServerState::Learner => {
                m.current_leader.is_some()
            }
            _ => false,
        }
    }

    /// This node's view of the fleet.
    pub fn status(&self) -> bkv_wire::node::FleetStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        bkv_wire::node::FleetStatus {
            node_id: self.id,
            role: format!("{:?}", m.state).to_lowercase(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        }
    }

    fn leader_node(&self, leader: u64) -> Result<PeerNode, String> {
        leader_node(&self.raft, leader)
    }
}

/// See [`Fleet::reconcile`].
pub(crate) async fn reconcile(
    raft: &Raft<TypeConfig>,
    members: &Members,
) -> Result<(), FleetError> {
    use openraft::ChangeMembers;
    if members.nodes.is_empty() {
        return Ok(());
    }
    let raft_err = |e: openraft::error::RaftError<u64, _>| FleetError::Raft(e.to_string());
    let current = raft.metrics().borrow().membership_config.clone();
    let membership = current.membership();
    for (id, m) in &members.nodes {
        let node = PeerNode {
            addr: m.addr.clone(),
            identity: m.identity_key,
        };
        if membership.get_node(id) != Some(&node) {
            raft.add_learner(*id, node, false).await.map_err(raft_err)?;
        }
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let promote: BTreeSet<u64> = members
        .nodes
        .iter()
        .filter(|(id, m)| m.voter && !voters.contains(id))
        .map(|(id, _)| *id)
        .collect();
    if !promote.is_empty() {
        raft.change_membership(ChangeMembers::AddVoterIds(promote), false)
            .await
            .map_err(raft_err)?;
    }
    let gone: BTreeSet<u64> = membership
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| !members.nodes.contains_key(id))
        .collect();
    if !gone.is_empty() {
        let voting: BTreeSet<u64> = gone
            .iter()
            .copied()
            .filter(|id| voters.contains(id))
            .collect();
        if !voting.is_empty() {
            raft.change_membership(ChangeMembers::RemoveVoters(voting), false)
                .await
                .map_err(raft_err)?;
        }
        let still: BTreeSet<u64> = {
            let m = raft.metrics().borrow().membership_config.clone();
            gone.iter()
                .copied()
                .filter(|id| m.membership().get_node(id).is_some())
                .collect()
        };
        if !still.is_empty() {
            raft.change_membership(ChangeMembers::RemoveNodes(still), false)
                .await
                .map_err(raft_err)?;
        }
    }
    Ok(())
}

/// Asks the given members for the fleet secrets over authenticated peer
/// links (a new node joining an existing fleet). The answer is encrypted to
/// this node's identity key by a member's core; only this node's core opens
/// it.
pub(crate) async fn fetch_secrets(
    me: &LinkIdentity,
    members: &[PeerNode],
) -> Result<Vec<u8>, FleetError> {
    let mut last = String::from("no member to ask");
    for m in members.iter().filter(|m| m.identity != me.public()) {
        match Link::connect(&m.addr, me, &m.identity).await {
            Ok(mut link) => match link.call(&PeerRequest::FleetSecrets).await {
                Ok(PeerResponse::FleetSecrets(Ok(s))) => return Ok(s),
                Ok(PeerResponse::FleetSecrets(Err(e))) => last = format!("{}: {e}", m.addr),
                Ok(_) => last = format!("{}: unexpected answer", m.addr),
                Err(e) => last = format!("{}: {e}", m.addr),
            },
            Err(e) => last = format!("{}: {e}", m.addr),
        }
    }
    Err(FleetError::Unavailable(last))
}
