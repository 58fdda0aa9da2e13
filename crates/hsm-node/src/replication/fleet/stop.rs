//! Stopping a member so that the same process can start it on the same disk again (split from
//! `fleet.rs`).

use super::{Fleet, FleetError};
use crate::replication::log_store::LogStore;
use crate::replication::state_machine::{Replica, StateMachine};
use bkv_hsm_core::sealed_state::NoBuckets;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Probe = Box<dyn Fn() -> bool + Send + Sync>;

/// What [`Fleet::stop`] waits for: the state machine gone, then the member's files closed once
/// its replica let go of them.
pub(super) struct Closing {
    /// Whether the state machine is dropped (no apply can come any more).
    machine: Probe,
    /// Whether each of the member's files is closed.
    files: Vec<Probe>,
    /// Makes the replica drop the record table it reads and writes through.
    release: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
}

impl Closing {
    pub(super) fn new<R: Replica>(
        replica: &Arc<Mutex<R>>,
        log: &LogStore,
        sm: &StateMachine<R>,
    ) -> Self {
        let replica = replica.clone();
        Closing {
            machine: Box::new(sm.dropped()),
            files: vec![Box::new(log.closed()), Box::new(sm.table_closed())],
            release: Box::new(move || {
                let mut r = replica.lock().map_err(|_| "replica lock poisoned")?;
                r.restore(Box::new(NoBuckets), None).map(|_| ())
            }),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.server.abort();
        self.pipeline.abort();
        self.leader_watch.abort();
        self.log_watch.abort();
    }
}

impl Fleet {
    /// Stops this member and returns once its sealed log and record table are closed, so it can
    /// be started again in this process (redb admits one open database per file). Dropping a
    /// `Fleet` stops it too, but parts of it (openraft's workers, peer connections, a snapshot
    /// being read) end on their own a moment later, still holding the files. The replica the
    /// member was started with is left without records: restart it with [`Fleet::start`].
    pub async fn stop(mut self, within: Duration) -> Result<(), FleetError> {
        let deadline = tokio::time::Instant::now() + within;
        self.raft
            .shutdown()
            .await
            .map_err(|e| FleetError::Raft(e.to_string()))?;
        for task in [
            &mut self.server,
            &mut self.pipeline,
            &mut self.leader_watch,
            &mut self.log_watch,
        ] {
            task.abort();
            // Cancelled (or ended): either way it holds nothing any more.
            let _ = task.await;
        }
        // openraft's state-machine worker applies what was queued before the shutdown: the
        // replica lets go of the table only after that, or an apply would meet an empty state
        // and the writer would store what it computed.
        until(&*self.closing.machine, deadline, within).await?;
        (self.closing.release)().map_err(FleetError::Raft)?;
        let files = std::mem::take(&mut self.closing.files);
        drop(self);
        until(&|| files.iter().all(|c| c()), deadline, within).await
    }
}

/// Waits until `done`, or fails at `deadline`.
async fn until(
    done: &dyn Fn() -> bool,
    deadline: tokio::time::Instant,
    within: Duration,
) -> Result<(), FleetError> {
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return Err(FleetError::Unavailable(format!(
                "the member's state machine or files were still open {within:?} after it stopped"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
