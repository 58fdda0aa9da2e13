//! Group commit on the leader: entries proposed concurrently (by this node's core, and batches
//! forwarded by followers) are gathered into one Raft log entry, so the lot costs one append, one
//! fsync and one monotonic-counter advance on every node instead of one each. openraft 0.9
//! appends every `client_write` separately and waits for its flush before the next, so batching
//! has to happen above it.
//!
//! While a batch commits, the next one gathers. (Pipelining batches — several handed to openraft
//! at once — measured slower: see [`BATCHES_IN_FLIGHT`].) Nothing about the outcome changes: the
//! state machine applies a batch's entries in order, each exactly as if alone, and every proposer
//! gets its own entries' outcomes. Proposals keep their order (a queue, and a proposal's entries
//! are never split or reordered): each core's entries must apply in the order it numbered them
//! (`bkv_hsm_core::entry`). A batch that fails or crashes before its fsync on a majority
//! acknowledges none of its entries: each proposer is told the outcome is unknown.

use super::{Applied, TypeConfig};
use bkv_hsm_core::state::Outcome;
use bkv_hsm_core::{Entries, LogEntry};
use openraft::Raft;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Most core-made entries gathered into one Raft entry (a proposal of more goes alone).
pub(crate) const MAX_BATCH: usize = 64;
/// Stop gathering once a batch's encoding reaches this (the log store accepts entries up to
/// 1 MiB; one proposal more than this still fits).
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Batches handed to openraft at once. One: openraft 0.9 appends and replicates one
/// `client_write` after another anyway, and measured with the commit benchmark, 2, 4 and 8 in
/// flight only split the same work into smaller batches (3 nodes, concurrency 64: 28,000
/// commits/s with one, 22,000 with two, 7,400 with eight).
pub(crate) const BATCHES_IN_FLIGHT: usize = 1;
/// Scheduler turns the gatherer gives proposers before closing a batch (measured: none → 2,200
/// commits/s at concurrency 8, one → 3,900, two or more → 4,100–4,200).
const GATHER_YIELDS: usize = 3;

/// A proposal's committed result (its entries' outcomes and the log index), or why its
/// outcome is unknown.
pub(crate) type Committed = Result<(Vec<Outcome>, u64), String>;
type Waiter = oneshot::Sender<Committed>;

/// Hands proposals to the gathering task. Clones share it.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    tx: mpsc::UnboundedSender<(Vec<LogEntry>, Waiter)>,
}

impl GroupCommit {
    /// Starts the gathering task (it stops when every handle is dropped).
    pub(crate) fn start(raft: Raft<TypeConfig>) -> GroupCommit {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(gather(raft, rx));
        GroupCommit { tx }
    }

    /// Queues `entries` (one proposer's, in its order) behind everything queued before, without
    /// waiting: the order of calls is their order in the log.
    pub(crate) fn submit(&self, entries: Vec<LogEntry>) -> oneshot::Receiver<Committed> {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.tx.send((entries, tx)) {
            let (_, tx) = e.0;
            let _ = tx.send(Err("group commit stopped".into()));
        }
        rx
    }
}

async fn write(raft: &Raft<TypeConfig>, entries: Entries, ttl: Duration) -> Committed {
    let n = entries.0.len();
    match tokio::time::timeout(ttl, raft.client_write(entries)).await {
        Ok(Ok(resp)) => match resp.data {
            Applied::Entries(outs) if outs.len() == n => Ok((outs, resp.log_id.index)),
            other => Err(format!("{n} entries applied as {other:?}")),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("commit timed out".into()),
    }
}

async fn gather(raft: Raft<TypeConfig>, mut rx: mpsc::UnboundedReceiver<(Vec<LogEntry>, Waiter)>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
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
        let size = |p: &(Vec<LogEntry>, Waiter)| -> usize {
            p.0.iter().map(|e| e.sealed.len() + 64).sum()
        };
        let (mut count, mut bytes) = (first.0.len(), size(&first));
        let mut batch = vec![first];
        while count < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.0.len();
                    bytes += size(&p);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit_batch(&raft, batch).await;
            drop(slot);
        });
    }
}

async fn commit_batch(raft: &Raft<TypeConfig>, batch: Vec<(Vec<LogEntry>, Waiter)>) {
    let sizes: Vec<usize> = batch.iter().map(|(e, _)| e.len()).collect();
    let (units, waiters): (Vec<Vec<LogEntry>>, Vec<Waiter>) = batch.into_iter().unzip();
    let entries = Entries(units.into_iter().flatten().collect());
    // The proposers' own deadlines bound how long they wait; this one only frees the slot.
    match write(raft, entries, super::fleet::PROPOSE_TIMEOUT).await {
        Ok((outs, index)) => {
            let mut outs = outs.into_iter();
            for (w, n) in waiters.into_iter().zip(sizes) {
                let mine: Vec<Outcome> = outs.by_ref().take(n).collect();
                // A proposer that gave up is gone; nothing to tell it.
                let _ = w.send(Ok((mine, index)));
            }
        }
        Err(e) => {
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
        }
    }
}
