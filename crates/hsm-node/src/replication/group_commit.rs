//! Group commit on the leader: record mutations proposed concurrently (sessions on this node,
//! proposals forwarded by followers) are gathered into one [`Mutation::Batch`] log entry, so
//! the lot costs one append, one fsync and one monotonic-counter advance on every node instead
//! of one each. openraft 0.9 appends every `client_write` separately and waits for its flush
//! before the next, so batching has to happen above it.
//!
//! While a batch commits, the next one gathers. A batch of one is proposed as the plain
//! mutation. (Pipelining batches — several handed to openraft at once — measured slower: see
//! [`BATCHES_IN_FLIGHT`].) Nothing about
//! the outcome changes: the state machine applies a batch's mutations in order, each exactly as
//! if alone (see the core's property test), and every proposer gets its own mutation's outcome.
//! A batch that fails or crashes before its fsync on a majority acknowledges none of its
//! mutations: each proposer is told the outcome is unknown, as for a single mutation.
//!
//! A member of an earlier release cannot decode a batch entry, and a fleet is upgraded one
//! node at a time. So the leader asks every member of the Raft membership which entry kinds
//! it decodes ([`PeerRequest::Features`]) and proposes batches only once all of them said
//! they apply them; until then each mutation gets its own entry, as before.

use super::network::{PeerNetwork, PeerRequest, PeerResponse, FEATURE_BATCH};
use super::{Applied, PeerNode, TypeConfig};
use bkv_hsm_core::state::{Mutation, Outcome};
use openraft::Raft;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most mutations in one entry.
pub const MAX_BATCH: usize = 64;
/// Stop gathering once a batch's encoding reaches this (the log store accepts entries up to
/// 1 MiB; one mutation more than this still fits).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Batches handed to openraft at once. One: openraft 0.9 appends and replicates one
/// `client_write` after another anyway, and measured with the commit benchmark, 2, 4 and 8 in
/// flight only split the same work into smaller batches (3 nodes, concurrency 64: 28,000
/// commits/s with one, 22,000 with two, 7,400 with eight).
pub const BATCHES_IN_FLIGHT: usize = 1;
/// Scheduler turns the gatherer gives proposers before closing a batch (measured: none → 2,200
/// commits/s at concurrency 8, one → 3,900, two or more → 4,100–4,200).
const GATHER_YIELDS: usize = 3;
/// Proposals waiting to be gathered before callers wait to submit.
const QUEUE: usize = 4096;

/// A proposal's committed result (applied outcome and log index), or why its outcome is
/// unknown.
pub type Committed = Result<(Applied, u64), String>;
type Waiter = oneshot::Sender<Committed>;

/// Hands mutations to the gathering task. Clones share it.
#[derive(Clone)]
pub struct GroupCommit {
    raft: Raft<TypeConfig>,
    tx: mpsc::Sender<(Mutation, Waiter)>,
}

/// Wait this long before asking a member again whose answer is missing.
const PROBE_AGAIN: Duration = Duration::from_secs(2);

/// What each member said it decodes, for the identity key it answered with.
#[derive(Default)]
struct Known {
    members: BTreeMap<u64, Answer>,
}

enum Answer {
    Batches([u8; 32]),
    NoBatches([u8; 32]),
    Asked(Instant),
}

/// Whether every member of the current Raft membership said it applies batch entries; asks
/// (in the background) those it has not heard from.
fn batches_understood(
    raft: &Raft<TypeConfig>,
    net: &PeerNetwork,
    known: &Arc<Mutex<Known>>,
) -> bool {
    let m = raft.metrics().borrow().clone();
    let Ok(mut k) = known.lock() else {
        return false;
    };
    let mut all = true;
    for (id, node) in m.membership_config.membership().nodes() {
        if *id == m.id {
            continue;
        }
        match k.members.get(id) {
            Some(Answer::Batches(key)) if *key == node.identity => continue,
            Some(Answer::NoBatches(key)) if *key == node.identity => {}
            Some(Answer::Asked(at)) if at.elapsed() < PROBE_AGAIN => {}
            _ => {
                k.members.insert(*id, Answer::Asked(Instant::now()));
                tokio::spawn(probe(net.clone(), *id, node.clone(), known.clone()));
            }
        }
        all = false;
    }
    all
}

async fn probe(net: PeerNetwork, id: u64, node: PeerNode, known: Arc<Mutex<Known>>) {
    let answer = match net
        .call(id, &node, &PeerRequest::Features, PROBE_AGAIN)
        .await
    {
        Ok(PeerResponse::Features(bits)) if bits & FEATURE_BATCH != 0 => {
            Some(Answer::Batches(node.identity))
        }
        Ok(PeerResponse::Features(_)) => Some(Answer::NoBatches(node.identity)),
        // Unreachable now, or an earlier release that dropped the link: ask again later.
        _ => None,
    };
    if let (Some(a), Ok(mut k)) = (answer, known.lock()) {
        k.members.insert(id, a);
    }
}

impl GroupCommit {
    /// Starts the gathering task (it stops when every handle is dropped).
    pub fn start(raft: Raft<TypeConfig>, net: PeerNetwork) -> GroupCommit {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(gather(raft.clone(), net, rx));
        GroupCommit { raft, tx }
    }

    /// Commits `m` through this node's Raft (the caller checked it is the leader) within
    /// `ttl`. Record mutations share entries with concurrent ones; fleet mutations (founding,
    /// operator commands) always get an entry of their own.
    pub async fn commit(&self, m: Mutation, ttl: Duration) -> Committed {
        if matches!(m, Mutation::Batch(_)) {
            // Only the gatherer forms batches (bounded in count and bytes); a forwarded one
            // is refused before anything is appended.
            return Err("a batch is formed by the leader, never proposed".into());
        }
        if m.record_id().is_none() {
            return write(&self.raft, m, ttl).await;
        }
        let (tx, rx) = oneshot::channel();
        let wait = async {
            self.tx
                .send((m, tx))
                .await
                .map_err(|_| "group commit stopped".to_string())?;
            rx.await
                .map_err(|_| "group commit dropped the proposal".to_string())?
        };
        tokio::time::timeout(ttl, wait)
            .await
            .map_err(|_| "commit timed out".to_string())?
    }
}

async fn write(raft: &Raft<TypeConfig>, m: Mutation, ttl: Duration) -> Committed {
    match tokio::time::timeout(ttl, raft.client_write(m)).await {
        Ok(Ok(resp)) => Ok((resp.data, resp.log_id.index)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("commit timed out".into()),
    }
}

async fn gather(
    raft: Raft<TypeConfig>,
    net: PeerNetwork,
    mut rx: mpsc::Receiver<(Mutation, Waiter)>,
) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let known = Arc::new(Mutex::new(Known::default()));
    loop {
        // Waiting for a free slot first lets proposals pile up meanwhile: that is the batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        // Proposers woken by the previous batch's answers are about to submit again: let
        // them run before the batch closes, so it takes them all instead of every other one.
        for _ in 0..GATHER_YIELDS {
            tokio::task::yield_now().await;
        }
        let mut bytes = bkv_wire::encode(&first.0).len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += bkv_wire::encode(&p.0).len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        if batch.len() > 1 && !batches_understood(&raft, &net, &known) {
            // One entry each, committed one after another as before group commit.
            tokio::spawn(async move {
                for p in batch {
                    commit_batch(&raft, vec![p]).await;
                }
                drop(slot);
            });
            continue;
        }
        tokio::spawn(async move {
            commit_batch(&raft, batch).await;
            drop(slot);
        });
    }
}

async fn commit_batch(raft: &Raft<TypeConfig>, batch: Vec<(Mutation, Waiter)>) {
    let (mut ms, waiters): (Vec<Mutation>, Vec<Waiter>) = batch.into_iter().unzip();
    let n = ms.len();
    let entry = match ms.pop() {
        Some(m) if n == 1 => m,
        Some(m) => {
            ms.push(m);
            Mutation::Batch(ms)
        }
        None => return,
    };
    // The proposers' own deadlines bound how long they wait; this one only frees the slot.
    let r = write(raft, entry, super::fleet::PROPOSE_TIMEOUT).await;
    let results: Vec<Committed> = match r {
        Ok((applied, index)) if n == 1 => vec![Ok((applied, index))],
        Ok((Applied::Mutation(Outcome::Batch(outs)), index)) if outs.len() == n => outs
            .into_iter()
            .map(|o| Ok((Applied::Mutation(o), index)))
            .collect(),
        Ok((other, _)) => {
            let e = format!("a batch of {n} applied as {other:?}");
            vec![Err(e); n]
        }
        Err(e) => vec![Err(e); n],
    };
    for (w, r) in waiters.into_iter().zip(results) {
        // A proposer that gave up is gone; nothing to tell it.
        let _ = w.send(r);
    }
}
