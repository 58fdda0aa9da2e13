// One file on purpose: the in-process three-node fleet suite (replication, forwarding,
// failover, restart, catch-up, snapshots) shares its fleet helpers and reads as one story.
//! A three-node fleet in one process over real loopback TCP with Noise IK
//! peer links: replication, forwarding to the leader, leader failover,
//! restart and catch-up, majority loss, and refusal of unknown identities.

use bkv_hsm_core::state::{Credential, Live, Mutation, Outcome, Pending, State};
use bkv_hsm_core::SealedState;
use bkv_hsm_core::{EntryKey, LogEntry, MemoryPlatform, SharedPlatform};
use bkv_hsm_node::replication::BareReplica;
use bkv_hsm_node::replication::PeerNode;
use bkv_hsm_node::replication::{Fleet, FleetError, FleetOptions};
use bkv_hsm_node::replication::{Link, LinkIdentity, PeerRequest, PeerResponse};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) struct Member {
    pub(crate) fleet: Option<Fleet>,
    pub(crate) state: Arc<Mutex<BareReplica>>,
    pub(crate) dir: PathBuf,
    pub(crate) addr: String,
    pub(crate) identity: LinkIdentity,
}

/// A fresh identity on its own in-memory platform.
pub(crate) fn identity(seed: u8) -> LinkIdentity {
    let platform: SharedPlatform = MemoryPlatform::shared([seed; 32]);
    LinkIdentity::in_process(platform).unwrap()
}

pub(crate) const RID: [u8; 32] = [9u8; 32];
/// The log growth that starts a snapshot: 1 MiB here (16 MiB in a node), so the 10,000-user
/// test exercises the policy.
const SNAPSHOT_LOG_MIN: u64 = 1 << 20;
/// How long a stopped member may take to close its files (an eventual bound, not a speed).
pub(crate) const STOP: Duration = Duration::from_secs(60);

/// A member with its own directory and a free port (checked, then released; the member
/// rebinds it on every (re)start).
pub(crate) fn new_member(root: &std::path::Path, i: u64) -> Member {
    let addr = format!("127.0.0.1:{}", bkv_testkit::services::free_port().unwrap());
    let dir = root.join(format!("n{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = identity(i as u8 + 1);
    Member {
        fleet: None,
        state: empty_state(&identity),
        dir,
        addr,
        identity,
    }
}

/// The entry key of the tests' bare replicas (a real fleet's comes from its secrets).
pub(crate) fn test_key() -> EntryKey {
    EntryKey::from_bytes([5; 32], "test-fleet")
}

/// A bare replica (no fleet secrets), empty as a new process's, sealing with the member's
/// platform.
pub(crate) fn empty_state(identity: &LinkIdentity) -> Arc<Mutex<BareReplica>> {
    Arc::new(Mutex::new(BareReplica::new(
        SealedState::new(identity.in_process_platform().unwrap(), [7; 32]),
        [5; 32],
        "test-fleet",
    )))
}

/// Proposes mutations as the member's core would: each sealed into the next entry of the
/// member's identity, under the tests' entry key.
pub(crate) trait ProposeMutation {
    /// The entry the member's core would make for `m`, handed to the fleet in numbering order.
    fn submit_mutation(&self, m: &Mutation) -> bkv_hsm_node::replication::Submitted;
    async fn propose_mutation(&self, m: Mutation) -> Result<Outcome, FleetError>;
}

/// Numbers entries across the test process (numbers only need to grow per proposer); the lock
/// also keeps numbering and submitting together, as the core lock does in a node.
static SEQ: Mutex<u64> = Mutex::new(0);

pub(crate) fn sealed_entry(proposer: [u8; 32], m: &Mutation, seq: u64) -> LogEntry {
    test_key().seal(proposer, seq, &mut rand::rngs::OsRng, m)
}

impl ProposeMutation for Fleet {
    fn submit_mutation(&self, m: &Mutation) -> bkv_hsm_node::replication::Submitted {
        let mut seq = SEQ.lock().unwrap();
        *seq += 1;
        self.submit(sealed_entry(self.identity_key, m, *seq))
    }

    async fn propose_mutation(&self, m: Mutation) -> Result<Outcome, FleetError> {
        let s = self.submit_mutation(&m);
        self.wait(s).await
    }
}

/// A new record's pending registration: an OPAQUE record and a wrapped key of these sizes,
/// guess limit 10, confirmation hash `[3; 32]`.
pub(crate) fn pending(opaque_record: usize, wrapped_key: usize) -> Pending {
    Pending {
        credential: Credential {
            opaque_record: vec![1; opaque_record],
            wrapped_key: vec![2; wrapped_key],
            guess_limit: 10,
            confirm_hash: [3; 32],
        },
        replaces: None,
    }
}

/// Registers and activates the test record through `f`; returns its generation.
pub(crate) async fn register(f: &Fleet) -> u64 {
    let pending = pending(8, 8);
    let stored = f
        .propose_mutation(Mutation::StorePending {
            record_id: RID,
            pending,
        })
        .await
        .unwrap();
    assert_eq!(stored, Outcome::Stored);
    match f
        .propose_mutation(Mutation::Activate {
            record_id: RID,
            confirm_hash: [3; 32],
        })
        .await
        .unwrap()
    {
        Outcome::Activated { generation } => generation,
        other => panic!("not activated: {other:?}"),
    }
}

/// How the Raft membership records a member reached directly.
pub(crate) fn peer(m: &Member) -> PeerNode {
    PeerNode {
        addr: m.addr.clone(),
        identity: m.identity.public(),
    }
}

/// Forms the fleet `nodes` through the first member.
pub(crate) async fn form(members: &[Member], nodes: BTreeMap<u64, PeerNode>) {
    members[0]
        .fleet
        .as_ref()
        .unwrap()
        .initialize(nodes)
        .await
        .unwrap();
}

pub(crate) async fn start(id: u64, m: &mut Member, bootstrap: &BTreeSet<[u8; 32]>) {
    start_with(id, m, bootstrap, SNAPSHOT_LOG_MIN).await
}

/// [`start`] with the log growth that starts a snapshot.
async fn start_with(id: u64, m: &mut Member, bootstrap: &BTreeSet<[u8; 32]>, log_min: u64) {
    // A member restarted in place rebinds its port; the aborted server task of its previous
    // run releases it on the runtime's next turn.
    let mut bound = tokio::net::TcpListener::bind(&m.addr).await;
    for _ in 0..50 {
        if bound.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        bound = tokio::net::TcpListener::bind(&m.addr).await;
    }
    let listener = bound.unwrap();
    let fleet = Fleet::start(
        FleetOptions {
            id,
            dir: m.dir.clone(),
            platform: m.identity.in_process_platform().unwrap(),
            identity: m.identity.clone(),
            bootstrap: bootstrap.clone(),
            snapshot_log_min: log_min,
        },
        listener,
        m.state.clone(),
    )
    .await
    .unwrap();
    m.fleet = Some(fleet);
}

/// Three members started on loopback and formed into one fleet (ids 0, 1, 2).
pub(crate) async fn three_node_fleet(root: &std::path::Path) -> Vec<Member> {
    let mut members: Vec<Member> = (0..3u64).map(|i| new_member(root, i)).collect();
    let bootstrap: BTreeSet<[u8; 32]> = members.iter().map(|m| m.identity.public()).collect();
    for (i, m) in members.iter_mut().enumerate() {
        start(i as u64, m, &bootstrap).await;
    }
    let nodes: BTreeMap<u64, PeerNode> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (i as u64, peer(m)))
        .collect();
    form(&members, nodes).await;
    members
}

pub(crate) async fn leader(members: &[Member]) -> u64 {
    for _ in 0..100 {
        for m in members.iter().filter_map(|m| m.fleet.as_ref()) {
            if let Some(l) = m.raft.current_leader().await {
                if members[l as usize].fleet.is_some() {
                    return l;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader elected");
}

pub(crate) fn attempts(state: &Arc<Mutex<BareReplica>>) -> Option<u32> {
    match state.lock().unwrap().state.record(&RID).ok()??.live? {
        Live::Active { attempts, .. } => Some(attempts),
        Live::Destroyed | Live::Moved { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_fleet_replicates_fails_over_and_refuses_strangers() {
    let t = tempfile::tempdir().unwrap();
    let mut members = three_node_fleet(t.path()).await;
    // What a restarted member is started with again.
    let bootstrap: BTreeSet<[u8; 32]> = members.iter().map(|m| m.identity.public()).collect();
    let l = leader(&members).await;
    let follower = (l + 1) % 3;

    // Register through a follower (forwarded to the leader).
    let f = members[follower as usize].fleet.as_ref().unwrap();
    let generation = register(f).await;
    // Nine wrong guesses, alternating between nodes.
    for i in 0..9u32 {
        let m = members[(i % 3) as usize].fleet.as_ref().unwrap();
        let o = m
            .propose_mutation(Mutation::CountGuess {
                record_id: RID,
                generation,
            })
            .await
            .unwrap();
        assert_eq!(
            o,
            Outcome::Counted {
                attempts: i + 1,
                guess_limit: 10
            }
        );
        // The proposing node has applied it before answering.
        assert_eq!(attempts(&members[(i % 3) as usize].state), Some(i + 1));
    }

    // Kill the leader: the others elect a new one and keep counting.
    let l = leader(&members).await;
    if let Some(fl) = members[l as usize].fleet.take() {
        fl.stop(STOP).await.unwrap();
    }
    // A proposal sent into the old leader's dying link has an unknown
    // outcome (it is not retried: it might count twice), so wait for the
    // new leader first.
    let new_leader = leader(&members).await;
    assert_ne!(new_leader, l);
    let survivor = (l + 1) % 3;
    let o = members[survivor as usize]
        .fleet
        .as_ref()
        .unwrap()
        .propose_mutation(Mutation::CountGuess {
            record_id: RID,
            generation,
        })
        .await
        .unwrap();
    assert_eq!(
        o,
        Outcome::Counted {
            attempts: 10,
            guess_limit: 10
        }
    );

    // The old leader restarts on its old disk (with empty memory, as a new
    // process would) and catches up.
    members[l as usize].state = empty_state(&members[l as usize].identity);
    start(l, &mut members[l as usize], &bootstrap).await;
    for _ in 0..100 {
        if attempts(&members[l as usize].state) == Some(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if attempts(&members[l as usize].state) != Some(10) {
        for m in members.iter().filter_map(|m| m.fleet.as_ref()) {
            eprintln!("{:?}", m.raft.metrics().borrow().clone());
        }
    }
    assert_eq!(attempts(&members[l as usize].state), Some(10));

    // A node with an identity key outside the fleet is refused.
    let stranger = identity(99);
    let target = &members[survivor as usize];
    // (The handshake itself may complete: IK lets the initiator finish
    // before the responder checks its key; the responder then hangs up.)
    if let Ok(mut link) = Link::connect(&target.addr, &stranger, &target.identity.public()).await {
        let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(99, 7), None);
        assert!(link.call(&PeerRequest::Vote(vote)).await.is_err());
    }
    // Pinning the wrong identity for a real member fails the handshake.
    let me = identity(98);
    assert!(Link::connect(&target.addr, &me, &stranger.public())
        .await
        .is_err());

    // Lose the majority: two of three down, a proposal fails as unavailable.
    let l = leader(&members).await;
    let other = (0..3u64)
        .find(|i| *i != l && members[*i as usize].fleet.is_some())
        .unwrap();
    let lone = 3 - l - other;
    for i in [l, other] {
        if let Some(fl) = members[i as usize].fleet.take() {
            fl.raft.shutdown().await.unwrap();
        }
    }
    let r = members[lone as usize]
        .fleet
        .as_ref()
        .unwrap()
        .propose_mutation(Mutation::CountGuess {
            record_id: RID,
            generation,
        })
        .await;
    assert!(matches!(r, Err(FleetError::Unavailable(_))), "{r:?}");
    assert_eq!(attempts(&members[lone as usize].state), Some(10));
}

/// A fault-injecting TCP proxy in front of one member's peer listener: the
/// membership names the proxy, so cutting it cuts every link *to* that
/// member (existing connections are dropped, new ones refused).
struct Proxy {
    addr: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy(to: String) -> Proxy {
    use std::sync::atomic::{AtomicBool, Ordering};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicBool::new(false));
    let c = cut.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                a = l.accept() => {
                    let Ok((mut inbound, _)) = a else { continue };
                    if c.load(Ordering::SeqCst) {
                        continue; // dropped: refused
                    }
                    let to = to.clone();
                    conns.spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(&to).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                }
                _ = tick.tick() => {
                    if c.load(Ordering::SeqCst) {
                        conns.abort_all();
                    }
                    while conns.try_join_next().is_some() {}
                }
            }
        }
    });
    Proxy { addr, cut, task }
}

/// Three members, each reached through its own fault-injecting proxy (the membership names
/// the proxies), started and formed into a fleet.
async fn proxied_fleet(root: &std::path::Path) -> (Vec<Member>, Vec<Proxy>) {
    let mut members = Vec::new();
    let mut proxies = Vec::new();
    for i in 0..3u64 {
        let m = new_member(root, i);
        proxies.push(proxy(m.addr.clone()).await);
        members.push(m);
    }
    let bootstrap: BTreeSet<[u8; 32]> = members.iter().map(|m| m.identity.public()).collect();
    for (i, m) in members.iter_mut().enumerate() {
        start(i as u64, m, &bootstrap).await;
    }
    let nodes: BTreeMap<u64, PeerNode> = (0..3)
        .map(|i| {
            (
                i as u64,
                PeerNode {
                    addr: proxies[i].addr.clone(),
                    identity: members[i].identity.public(),
                },
            )
        })
        .collect();
    form(&members, nodes).await;
    (members, proxies)
}

/// Survives: one member cut off from the others (every link to it dropped
/// and refused) while the rest keep committing, then the cut healing: the
/// member catches up, and every guess was counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_by_a_proxy_catches_up_after_the_cut_heals() {
    use std::sync::atomic::Ordering;
    let t = tempfile::tempdir().unwrap();
    let (members, proxies) = proxied_fleet(t.path()).await;
    let l = leader(&members).await as usize;
    let generation = register(members[l].fleet.as_ref().unwrap()).await;
    let count = Mutation::CountGuess {
        record_id: RID,
        generation,
    };

    // Cut a follower off; the other two keep committing.
    let cut = (l + 1) % 3;
    proxies[cut].cut.store(true, Ordering::SeqCst);
    // The proxy drops open connections on its next 20 ms tick.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let live = (0..3).find(|i| *i != cut).unwrap();
    for n in 1..=4u32 {
        let o = members[live]
            .fleet
            .as_ref()
            .unwrap()
            .propose_mutation(count.clone())
            .await;
        assert_eq!(
            o.unwrap(),
            Outcome::Counted {
                attempts: n,
                guess_limit: 10
            }
        );
    }
    // (It may not even have the record yet; it certainly has no guess.)
    assert!(matches!(attempts(&members[cut].state), None | Some(0)));
    // Heal: the member catches up to exactly four.
    proxies[cut].cut.store(false, Ordering::SeqCst);
    for _ in 0..200 {
        if attempts(&members[cut].state) == Some(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(attempts(&members[cut].state), Some(4));
    // And it serves again: a proposal through it counts the fifth.
    let o = members[cut]
        .fleet
        .as_ref()
        .unwrap()
        .propose_mutation(count)
        .await
        .unwrap();
    assert_eq!(
        o,
        Outcome::Counted {
            attempts: 5,
            guess_limit: 10
        }
    );
    for m in &members {
        for _ in 0..100 {
            if attempts(&m.state) == Some(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(attempts(&m.state), Some(5));
    }
}

/// `n` concurrent `StorePending` proposals on fresh records, through `f`; every one must be
/// stored. Returns how many log entries they took on the leader.
async fn store_concurrently(f: &Arc<Fleet>, leader: &Fleet, wave: u8, n: u8) -> u64 {
    let before = leader.raft.metrics().borrow().last_log_index.unwrap_or(0);
    let mut tasks = Vec::new();
    for i in 0..n {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut record_id = [wave; 32];
            record_id[0] = i;
            let pending = pending(8, 8);
            f.propose_mutation(Mutation::StorePending { record_id, pending })
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Outcome::Stored);
    }
    leader.raft.metrics().borrow().last_log_index.unwrap_or(0) - before
}

/// Group commit: concurrent proposals share log entries, each proposer still gets its own
/// outcome (none is refused as out of order: a node's entries reach the log in the order its
/// core numbered them, forwarded or not), and every member applies the batches to the same
/// state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_entries_and_keep_each_proposers_order() {
    let t = tempfile::tempdir().unwrap();
    let (mut members, _proxies) = proxied_fleet(t.path()).await;
    let l = leader(&members).await as usize;
    let lead = Arc::new(members[l].fleet.take().unwrap());
    let mut shared = false;
    for wave in 2..40u8 {
        let entries = store_concurrently(&lead, &lead, wave, 24).await;
        if entries < 24 {
            shared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(shared, "concurrent proposals never shared an entry");
    // A follower forwards what queued up while its previous batch committed as one batch, so
    // its proposals share entries too.
    let follower = Arc::new(members[(l + 2) % 3].fleet.take().unwrap());
    let mut forwarded_shared = false;
    for wave in 40..80u8 {
        if store_concurrently(&follower, &lead, wave, 16).await < 16 {
            forwarded_shared = true;
            break;
        }
    }
    assert!(
        forwarded_shared,
        "proposals forwarded by a follower never shared an entry"
    );
    // An entry made under another key (not by a core of this fleet) is refused by every
    // replica and changes nothing; so is a batch mutation inside an entry.
    let forged = bkv_hsm_core::EntryKey::from_bytes([6; 32], "test-fleet").seal(
        lead.identity_key,
        u64::MAX / 4,
        &mut rand::rngs::OsRng,
        &Mutation::Batch(vec![]),
    );
    assert_eq!(
        lead.propose(forged).await.unwrap(),
        Outcome::Refused(bkv_hsm_core::Refusal::Forged)
    );
    assert_eq!(
        lead.propose_mutation(Mutation::Batch(vec![]))
            .await
            .unwrap(),
        Outcome::NotBatchable
    );
    // Every member, the one that was cut off included, applied the same state.
    let want = lead_state(&members, l);
    for (i, m) in members.iter().enumerate() {
        let mut same = false;
        for _ in 0..200 {
            if m.state.lock().unwrap().state.export().unwrap() == want {
                same = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(same, "member {i} did not reach the leader's state");
    }
    drop(follower);
    drop(lead);
}

/// A member's whole state, every record included.
fn whole_state(members: &[Member], i: usize) -> State {
    members[i].state.lock().unwrap().state.export().unwrap()
}

fn lead_state(members: &[Member], l: usize) -> State {
    whole_state(members, l)
}

/// The small version of `scripts/bench-scale.sh`: 10,000 users registered through the leader,
/// the leader snapshots and purges its log, and a new, empty member joins as a learner and
/// catches up from the snapshot alone (the log it would need is gone) to the same state, and
/// restarts from the snapshot it stored.
/// openraft's entry-count policy is off, so the log-growth policy is the only automatic
/// snapshot: it must count the log a restart finds on disk, or a node restarted before each
/// threshold (a crash loop, rolling upgrades) would never snapshot and its log would grow
/// without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_counts_the_log_it_found_towards_its_next_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let mut members = vec![new_member(t.path(), 0)];
    let bootstrap: BTreeSet<[u8; 32]> = [members[0].identity.public()].into();
    // First run: no snapshot whatever the growth; ~2.4 MiB of log.
    start_with(0, &mut members[0], &bootstrap, u64::MAX).await;
    form(&members, [(0, peer(&members[0]))].into()).await;
    leader(&members).await;
    let f = members[0].fleet.as_ref().unwrap();
    for n in 0..40u32 {
        let mut record_id = [0u8; 32];
        record_id[..4].copy_from_slice(&n.to_be_bytes());
        let stored = f.propose_mutation(Mutation::StorePending {
            record_id,
            pending: pending(60_000, 80),
        });
        assert_eq!(stored.await.unwrap(), Outcome::Stored);
    }
    assert!(f.raft.metrics().borrow().snapshot.is_none());
    members[0].fleet.take().unwrap().stop(STOP).await.unwrap();
    // Restarted with a 1 MiB threshold and no new writes: the 2.4 MiB it found start one.
    start(0, &mut members[0], &bootstrap).await;
    let f = members[0].fleet.as_ref().unwrap();
    // (The restarted node names its table's position as its snapshot from the start, so the
    // policy's own count is what shows it acted.)
    let mut started = 0;
    for _ in 0..300 {
        started = f.metrics().log_snapshots();
        if started >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started >= 1, "no snapshot after the restart");
    assert_eq!(whole_state(&members, 0).records.len(), 40);
}

/// How long the snapshot and the catch-up may take. Alone this test takes about 13 s; under the
/// full suite's load (two release builds and a browser beside it) it once needed more than 60:
/// the bound says "eventually", the speed is measured in the benchmarks.
const CATCH_UP: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tens_of_thousands_of_users_snapshot_and_a_new_member_catches_up() {
    const USERS: u32 = 10_000;
    let t = tempfile::tempdir().unwrap();
    let mut members: Vec<Member> = (0..4u64).map(|i| new_member(t.path(), i)).collect();
    let bootstrap: BTreeSet<[u8; 32]> = members.iter().map(|m| m.identity.public()).collect();
    for (i, m) in members.iter_mut().enumerate().take(3) {
        start(i as u64, m, &bootstrap).await;
    }
    let nodes: BTreeMap<u64, PeerNode> = (0..3).map(|i| (i as u64, peer(&members[i]))).collect();
    form(&members, nodes).await;
    let l = leader(&members).await as usize;
    let lead = Arc::new(members[l].fleet.take().unwrap());
    let mut tasks = Vec::new();
    for w in 0..64u32 {
        let lead = lead.clone();
        tasks.push(tokio::spawn(async move {
            for n in (w..USERS).step_by(64) {
                let mut record_id = [0u8; 32];
                record_id[..4].copy_from_slice(&n.to_be_bytes());
                let pending = pending(192, 80);
                let o = lead
                    .propose_mutation(Mutation::StorePending { record_id, pending })
                    .await;
                assert_eq!(o.unwrap(), Outcome::Stored);
                let o = lead
                    .propose_mutation(Mutation::Activate {
                        record_id,
                        confirm_hash: [3; 32],
                    })
                    .await;
                assert!(matches!(o.unwrap(), Outcome::Activated { .. }));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 20,000 mutations are over 8 MiB of log: the log-growth policy (1 MiB here) snapshots on
    // its own.
    let mut grown = 0;
    for _ in 0..100 {
        grown = lead.metrics().log_snapshots();
        if grown >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(grown >= 1, "log-growth snapshots: {grown}");
    assert!(lead.raft.metrics().borrow().snapshot.is_some());
    let last = lead.raft.metrics().borrow().last_applied.unwrap().index;
    // On every voter: under load the leader may have changed, and whichever leads catches the
    // newcomer up.
    let voters = members.iter().filter_map(|m| m.fleet.as_ref());
    for voter in voters.chain([&*lead]) {
        voter.snapshot_through(last, CATCH_UP).await.unwrap();
        voter.raft.trigger().purge_log(last).await.unwrap();
        voter
            .raft
            .wait(Some(CATCH_UP))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "purged")
            .await
            .unwrap();
    }
    // The newcomer: empty disk, empty state.
    start(3, &mut members[3], &bootstrap).await;
    lead.raft
        .add_learner(3, peer(&members[3]), true)
        .await
        .unwrap();
    members[3]
        .fleet
        .as_ref()
        .unwrap()
        .raft
        .wait(Some(CATCH_UP))
        .applied_index_at_least(Some(last), "caught up")
        .await
        .unwrap();
    // It came from the snapshot: the log before it is gone everywhere.
    let installed = members[3]
        .fleet
        .as_ref()
        .unwrap()
        .raft
        .metrics()
        .borrow()
        .snapshot;
    assert!(installed.is_some_and(|s| s.index >= last), "{installed:?}");
    let newcomer = whole_state(&members, 3);
    assert_eq!(newcomer.records.len(), USERS as usize);
    assert_eq!(newcomer, lead_state(&members, l));
    // A snapshot piece that would take the receiving buffer past MAX_SNAPSHOT is refused
    // before openraft writes it (a member must not make another allocate without bound).
    let mut link = Link::connect(
        &members[3].addr,
        &members[(l + 1) % 3].identity,
        &members[3].identity.public(),
    )
    .await
    .unwrap();
    let vote = lead.raft.metrics().borrow().vote;
    let piece = |offset| openraft::raft::InstallSnapshotRequest {
        vote,
        meta: openraft::SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "huge".into(),
        },
        offset,
        data: vec![0; 16],
        done: false,
    };
    // openraft seeks to whatever offset a piece names within a stream it has begun.
    match link
        .call(&PeerRequest::InstallSnapshot(piece(0)))
        .await
        .unwrap()
    {
        PeerResponse::InstallSnapshot(r) => assert!(r.is_ok(), "{r:?}"),
        _ => panic!("another kind of answer"),
    }
    // A piece past what the stream holds (a gap openraft would fill with zeros: 1 GiB here)
    // or past the size limit is refused, and the sender is told where to resume.
    let past = bkv_hsm_node::replication::MAX_SNAPSHOT as u64;
    for offset in [1u64 << 30, past] {
        match link
            .call(&PeerRequest::InstallSnapshot(piece(offset)))
            .await
            .unwrap()
        {
            PeerResponse::InstallSnapshot(Err(openraft::error::RaftError::APIError(
                openraft::error::InstallSnapshotError::SnapshotMismatch(m),
            ))) => assert!(m.expect.offset <= 16, "{m:?}"),
            PeerResponse::InstallSnapshot(other) => {
                panic!("a piece at {offset} was not refused: {other:?}")
            }
            _ => panic!("a piece at {offset} got another kind of answer"),
        }
    }
    drop(link);
    assert_eq!(whole_state(&members, 3), newcomer);

    // Restarted with empty memory, it starts from the record table it stored (every bucket
    // checked against the sealed summary's root) before hearing from anyone.
    members[3].state = empty_state(&members[3].identity);
    members[3].fleet.take().unwrap().stop(STOP).await.unwrap();
    // A copy of the table as it is now, for the rollback below (taken while the node is down:
    // a copy of a file being written can be torn).
    let file = members[3].dir.join("vault-records.redb");
    let older = std::fs::read(&file).unwrap();
    start(3, &mut members[3], &bootstrap).await;
    assert_eq!(whole_state(&members, 3), newcomer);

    // The record table carries no epoch of its own. An older copy put back after the log was
    // purged past it cannot bring old counters back: the node would have to re-apply entries
    // that are gone, so it refuses to start.
    for n in 0..5u32 {
        let mut record_id = [0u8; 32];
        record_id[..4].copy_from_slice(&n.to_be_bytes());
        let generation = newcomer.records[&record_id].generation;
        // Under the full suite's load a forward can outlive a leader change and end with an
        // unknown outcome; this step only needs guesses in the log, so it asks again.
        let mut tries = 0;
        let outcome = loop {
            let o = lead.propose_mutation(Mutation::CountGuess {
                record_id,
                generation,
            });
            match o.await {
                Err(FleetError::Unavailable(e)) if tries < 5 => {
                    tries += 1;
                    eprintln!("counting a guess again after: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                r => break r.unwrap(),
            }
        };
        assert!(matches!(outcome, Outcome::Counted { .. }), "{outcome:?}");
    }
    let last = lead.raft.metrics().borrow().last_applied.unwrap().index;
    let member = members[3].fleet.as_ref().unwrap();
    let raft = member.raft.clone();
    raft.wait(Some(Duration::from_secs(30)))
        .applied_index_at_least(Some(last), "counted")
        .await
        .unwrap();
    member
        .snapshot_through(last, Duration::from_secs(30))
        .await
        .unwrap();
    raft.trigger().purge_log(last).await.unwrap();
    raft.wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "purged")
        .await
        .unwrap();
    drop(raft);
    // The old replica lets go of the table first (its database writes its header on close).
    members[3].state = empty_state(&members[3].identity);
    members[3].fleet.take().unwrap().stop(STOP).await.unwrap();
    std::fs::write(&file, &older).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let restarted = Fleet::start(
        FleetOptions {
            id: 3,
            dir: members[3].dir.clone(),
            platform: members[3].identity.in_process_platform().unwrap(),
            identity: members[3].identity.clone(),
            bootstrap: bootstrap.clone(),
            snapshot_log_min: SNAPSHOT_LOG_MIN,
        },
        listener,
        members[3].state.clone(),
    )
    .await;
    let err = restarted
        .err()
        .expect("a node with an old record table must not start");
    assert!(
        err.to_string().contains("rolled back behind the log"),
        "{err}"
    );
    drop(lead);
}

/// A peer call its caller abandons half-way (openraft drops an RPC future on
/// its own timeout) must not leave the link cached: the next request on it
/// would read the answer meant for the abandoned one. Found by the chaos
/// test as a leader panicking on "follower log reversion" (an old
/// AppendEntries answer taken for a new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_peer_call_never_hands_its_answer_to_the_next_one() {
    use bkv_hsm_node::replication::PeerNetwork;
    let server_id = identity(40);
    let client_id = identity(41);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Answers each request in kind (a read index for ReadIndex, "secrets"
    // for FleetSecrets); the first answer on a link comes late.
    let sid = server_id.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let sid = sid.clone();
            tokio::spawn(async move {
                let Ok((mut link, _)) = Link::accept(stream, &sid).await else {
                    return;
                };
                let mut first = true;
                while let Ok(req) = link.recv::<PeerRequest>().await {
                    if std::mem::take(&mut first) {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let resp = match req {
                        PeerRequest::ReadIndex => PeerResponse::ReadIndex(Ok(Some(7))),
                        _ => PeerResponse::FleetSecrets(Ok(vec![1, 2, 3])),
                    };
                    if link.send(&resp).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let net = PeerNetwork::new(client_id);
    let node = PeerNode {
        addr,
        identity: server_id.public(),
    };
    // Abandoned by its caller while the answer is on its way.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        net.call(1, &node, &PeerRequest::ReadIndex, Duration::from_secs(5)),
    )
    .await;
    assert!(abandoned.is_err(), "the first call should still be waiting");
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..3 {
        match net
            .call(1, &node, &PeerRequest::FleetSecrets, Duration::from_secs(5))
            .await
            .unwrap()
        {
            PeerResponse::FleetSecrets(Ok(v)) => assert_eq!(v, vec![1, 2, 3]),
            PeerResponse::ReadIndex(_) => {
                panic!("got the abandoned ReadIndex call's answer")
            }
            _ => panic!("unexpected answer"),
        }
    }
}
