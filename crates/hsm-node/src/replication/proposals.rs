//! A node's proposals on their way to the log ([`super::fleet::Fleet::submit`]): each core's
//! entries must reach the log in the order it numbered them (`bkv_hsm_core::entry`), so they
//! travel one ordered pipeline — into the group commit on the leader, or forwarded to the
//! leader one batch at a time.

use super::group_commit::GroupCommit;
use super::network::{CallError, PeerNetwork, PeerRequest, PeerResponse, ProposeError};
use super::{PeerNode, TypeConfig};
use bkv_hsm_core::state::Outcome;
use bkv_hsm_core::{Entries, LogEntry};
use openraft::Raft;
use std::sync::Arc;
use std::time::Duration;

use super::fleet::PROPOSE_TIMEOUT;

/// One forwarding attempt's failure: whether the entries were certainly not
/// appended (safe to try again) or may still commit.
enum Attempt {
    NotDone(String),
    Unknown(String),
}

/// An entry on its way to the log.
pub(super) struct Proposal {
    pub(super) entry: LogEntry,
    pub(super) deadline: tokio::time::Instant,
    pub(super) tx: tokio::sync::oneshot::Sender<Result<(Outcome, u64), String>>,
    /// Counts the proposal in [`Fleet::in_pipeline`] until it is dropped: once queued for
    /// commit or answered.
    pub(super) _held: Held,
}

pub(super) struct Held(Arc<std::sync::atomic::AtomicUsize>);

impl Held {
    pub(super) fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Held {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Held(count.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What `Fleet::wait` waits for.
pub struct Submitted {
    pub(super) rx: Waiting,
    pub(super) deadline: tokio::time::Instant,
    pub(super) started: std::time::Instant,
}

/// Where a submitted entry's outcome comes from.
pub(super) enum Waiting {
    /// The proposal pipeline (forwarded, or queued behind earlier proposals).
    Pipeline(tokio::sync::oneshot::Receiver<Result<(Outcome, u64), String>>),
    /// The group commit, submitted to directly as the leader.
    Direct(tokio::sync::oneshot::Receiver<super::group_commit::Committed>),
}

/// The outcome of a proposal of one entry.
pub(super) fn one_outcome(
    (mut outs, index): (Vec<Outcome>, u64),
) -> Result<(Outcome, u64), String> {
    match outs.len() {
        1 => Ok((outs.remove(0), index)),
        _ => Err("one entry applied as several".to_string()),
    }
}

pub(super) fn leader_node(raft: &Raft<TypeConfig>, leader: u64) -> Result<PeerNode, String> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&leader)
        .cloned()
        .ok_or_else(|| "leader is not in the membership".to_string())
}

/// Takes this node's proposals in their order to the log: as the leader, into the group commit
/// (which keeps the order); as a follower, forwarded to the leader one batch at a time (the next
/// batch leaves only once the leader answered the last, so batches cannot overtake each other
/// on the way). A batch the leader certainly did not append (no leader, not the leader, no link)
/// is tried again, with what queued up behind it, until its entries' deadlines; once it may have
/// been appended it is never sent again (an entry applied twice would be refused, but the
/// proposer could not tell).
pub(super) async fn propose_in_order(
    raft: Raft<TypeConfig>,
    net: PeerNetwork,
    commits: GroupCommit,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Proposal>,
) {
    let me = raft.metrics().borrow().id;
    let mut held: std::collections::VecDeque<Proposal> = Default::default();
    let mut last = String::from("no leader");
    loop {
        if held.is_empty() {
            match rx.recv().await {
                Some(p) => held.push_back(p),
                None => return,
            }
        }
        while held.len() < super::group_commit::MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => held.push_back(p),
                Err(_) => break,
            }
        }
        let now = tokio::time::Instant::now();
        held.retain_mut(|p| {
            if p.deadline > now {
                return true;
            }
            let (tx, _) = tokio::sync::oneshot::channel();
            let tx = std::mem::replace(&mut p.tx, tx);
            let _ = tx.send(Err(last.clone()));
            false
        });
        if held.is_empty() {
            continue;
        }
        match raft.current_leader().await {
            Some(l) if l == me => {
                for p in held.drain(..) {
                    let Proposal {
                        entry, tx, _held, ..
                    } = p;
                    let done = commits.submit(vec![entry]);
                    // Queued in order: later proposals may now skip the pipeline.
                    drop(_held);
                    tokio::spawn(async move {
                        let r = match done.await {
                            Ok(Ok(r)) => one_outcome(r),
                            Ok(Err(e)) => Err(format!("{e} (the change may still commit)")),
                            Err(_) => Err("group commit dropped the entry".to_string()),
                        };
                        let _ = tx.send(r);
                    });
                }
            }
            Some(leader) => {
                let ttl = held
                    .iter()
                    .map(|p| p.deadline)
                    .max()
                    .map(|d| d.saturating_duration_since(now))
                    .unwrap_or(PROPOSE_TIMEOUT);
                let entries = Entries(held.iter().map(|p| p.entry.clone()).collect());
                match forward(&raft, &net, leader, entries, ttl).await {
                    Ok((outs, index)) if outs.len() == held.len() => {
                        for (p, o) in held.drain(..).zip(outs) {
                            let _ = p.tx.send(Ok((o, index)));
                        }
                    }
                    Ok(_) => {
                        for p in held.drain(..) {
                            let _ =
                                p.tx.send(Err("the leader answered for other entries".into()));
                        }
                    }
                    Err(Attempt::NotDone(e)) => {
                        last = e;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(Attempt::Unknown(e)) => {
                        let e = format!("{e} (the change may still commit; not retried)");
                        for p in held.drain(..) {
                            let _ = p.tx.send(Err(e.clone()));
                        }
                    }
                }
            }
            None => {
                last = "no leader".into();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn forward(
    raft: &Raft<TypeConfig>,
    net: &PeerNetwork,
    leader: u64,
    entries: Entries,
    ttl: Duration,
) -> Result<(Vec<Outcome>, u64), Attempt> {
    let node = leader_node(raft, leader).map_err(Attempt::NotDone)?;
    match net
        .call_checked(leader, &node, &PeerRequest::Propose(entries), ttl)
        .await
    {
        Ok(PeerResponse::Proposed(Ok(r))) => Ok(r),
        Ok(PeerResponse::Proposed(Err(e @ ProposeError::NotLeader(_)))) => {
            Err(Attempt::NotDone(format!("leader {leader}: {e}")))
        }
        Ok(PeerResponse::Proposed(Err(e))) => {
            Err(Attempt::Unknown(format!("leader {leader}: {e}")))
        }
        Ok(_) => Err(Attempt::Unknown(
            "unexpected response to a forwarded proposal".into(),
        )),
        Err(CallError::NotSent(e)) => {
            Err(Attempt::NotDone(format!("no link to leader {leader}: {e}")))
        }
        Err(CallError::Unanswered(e)) => {
            Err(Attempt::Unknown(format!("forward to leader {leader}: {e}")))
        }
    }
}
