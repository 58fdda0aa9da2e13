//! The replicated state machine: applies committed log entries to the vault
//! state and takes and installs snapshots (sealed pieces on disk, see
//! [`super::snapshot_file`]).
//!
//! The vault state itself lives with the host (the core also reads it to run
//! sessions); the state machine reaches it through [`Replica`]. Between
//! snapshots the state is only in memory: after a restart openraft re-applies
//! the committed log on top of the last snapshot.

use super::snapshot_file::SnapshotFile;
use super::{db_err, storage_error, Applied, PeerNode, ReplicationStoreError, TypeConfig};
use crate::metrics::NodeMetrics;
use bkv_hsm_core::state::State;
use bkv_hsm_core::SharedPlatform;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use super::snapshot_file::{MAX_SNAPSHOT, SNAPSHOT_CHUNK};

/// What the state machine applies mutations to.
pub trait Replica: Send + 'static {
    fn apply(&mut self, m: &bkv_hsm_core::state::Mutation) -> bkv_hsm_core::state::Outcome;
    fn state(&self) -> &State;
    fn replace_state(&mut self, state: State);
    /// The fleet secrets encrypted to an admitted member's identity key
    /// (the core checks admission), or why not.
    fn export_secrets_to(&self, identity: &[u8; 32]) -> Result<Vec<u8>, String>;
}

/// A bare state (tests of the replication layer): no keys, no secrets.
impl Replica for State {
    fn apply(&mut self, m: &bkv_hsm_core::state::Mutation) -> bkv_hsm_core::state::Outcome {
        State::apply(self, m)
    }
    fn state(&self) -> &State {
        self
    }
    fn replace_state(&mut self, state: State) {
        *self = state;
    }
    fn export_secrets_to(&self, _: &[u8; 32]) -> Result<Vec<u8>, String> {
        Err("this replica holds no fleet secrets".into())
    }
}

impl Replica for bkv_hsm_core::Core {
    fn apply(&mut self, m: &bkv_hsm_core::state::Mutation) -> bkv_hsm_core::state::Outcome {
        bkv_hsm_core::Core::apply(self, m)
    }
    fn state(&self) -> &State {
        bkv_hsm_core::Core::state(self)
    }
    fn replace_state(&mut self, state: State) {
        bkv_hsm_core::Core::replace_state(self, state)
    }
    fn export_secrets_to(&self, identity: &[u8; 32]) -> Result<Vec<u8>, String> {
        bkv_hsm_core::Core::export_secrets_to(self, identity).map_err(|e| e.to_string())
    }
}

/// Runs a blocking store operation off the async runtime (sealing and writing a large snapshot
/// takes seconds).
async fn blocking<T: Send + 'static>(
    verb: ErrorVerb,
    f: impl FnOnce() -> Result<T, ReplicationStoreError> + Send + 'static,
) -> Result<T, StorageError<u64>> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| sm_err(verb, db_err(e)))?
        .map_err(|e| sm_err(verb, e))
}

pub struct StateMachine<R: Replica> {
    replica: Arc<Mutex<R>>,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, PeerNode>,
    /// A copy of `last_applied` and `membership`, updated while the replica lock is held, so
    /// a snapshot built on another thread pairs the state with the position it belongs to.
    position: Arc<Mutex<Position>>,
    snapshots: Arc<SnapshotFile>,
    snapshots_built: u64,
    metrics: Arc<NodeMetrics>,
}

/// How far the state has applied the log (see [`StateMachine::position`]).
#[derive(Clone, Default)]
struct Position {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, PeerNode>,
}

fn sm_err(verb: ErrorVerb, e: ReplicationStoreError) -> StorageError<u64> {
    storage_error(ErrorSubject::StateMachine, verb, e)
}

fn poisoned() -> ReplicationStoreError {
    ReplicationStoreError::Db("replica lock poisoned".into())
}

impl<R: Replica> StateMachine<R> {
    /// Opens the snapshot store in the data directory `dir` and restores `replica` from the
    /// newest snapshot, if there is one.
    pub fn open(
        dir: &Path,
        platform: SharedPlatform,
        replica: Arc<Mutex<R>>,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Self, ReplicationStoreError> {
        let mut sm = StateMachine {
            replica,
            last_applied: None,
            membership: StoredMembership::default(),
            position: Default::default(),
            snapshots: Arc::new(SnapshotFile::new(dir, platform)),
            snapshots_built: 0,
            metrics,
        };
        if let Some((meta, data)) = sm.snapshots.read()? {
            let state: State = bkv_wire::decode(&data, MAX_SNAPSHOT)
                .map_err(|_| ReplicationStoreError::Malformed("snapshot state".into()))?;
            sm.replica
                .lock()
                .map_err(|_| poisoned())?
                .replace_state(state);
            sm.last_applied = meta.last_log_id;
            sm.membership = meta.last_membership;
            sm.publish_position()?;
        }
        Ok(sm)
    }

    /// Copies the applied position for snapshot builders (callers hold the replica lock).
    fn publish_position(&self) -> Result<(), ReplicationStoreError> {
        *self.position.lock().map_err(|_| poisoned())? = Position {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        };
        Ok(())
    }
}

/// Builds a snapshot on a blocking thread: the state is copied under the replica lock together
/// with the position it has applied, then encoded outside it (at 10⁶ users the encoding takes a
/// few hundred milliseconds, which on an async worker delayed heartbeats enough to change
/// leaders, and under the lock stalled every request on the node).
pub struct SnapshotBuilder<R: Replica> {
    replica: Arc<Mutex<R>>,
    position: Arc<Mutex<Position>>,
    snapshots: Arc<SnapshotFile>,
    id: u64,
}

impl<R: Replica> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<R> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (replica, position) = (self.replica.clone(), self.position.clone());
        let (store, id) = (self.snapshots.clone(), self.id);
        let (meta, data) = blocking(ErrorVerb::Write, move || {
            // A poisoned lock is an error, never an empty snapshot. Under the lock only the
            // record map is copied (records are shared, see `State::records`); the encoding
            // runs after it is released, so requests and applies do not wait for it.
            let (state, p) = {
                let r = replica.lock().map_err(|_| poisoned())?;
                let p = position.lock().map_err(|_| poisoned())?.clone();
                (r.state().clone(), p)
            };
            let data = bkv_wire::encode(&state);
            drop(state);
            let last = p.last_applied;
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: p.membership,
                snapshot_id: format!(
                    "{}-{}-{id}",
                    last.map(|l| l.leader_id.term).unwrap_or(0),
                    last.map(|l| l.index).unwrap_or(0)
                ),
            };
            store.write(&meta, &data)?;
            Ok((meta, data))
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<R: Replica> RaftStateMachine<TypeConfig> for StateMachine<R> {
    type SnapshotBuilder = SnapshotBuilder<R>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, PeerNode>), StorageError<u64>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replica = self
            .replica
            .lock()
            .map_err(|_| sm_err(ErrorVerb::Write, poisoned()))?;
        let mut out = Vec::new();
        for e in entries {
            self.last_applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Blank => Applied::Blank,
                EntryPayload::Normal(m) => {
                    let outcome = replica.apply(&m);
                    self.metrics.applied(&outcome);
                    Applied::Mutation(outcome)
                }
                EntryPayload::Membership(mem) => {
                    self.membership = StoredMembership::new(Some(e.log_id), mem);
                    Applied::Membership
                }
            });
        }
        self.publish_position()
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        drop(replica);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        SnapshotBuilder {
            replica: self.replica.clone(),
            position: self.position.clone(),
            snapshots: self.snapshots.clone(),
            id: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, PeerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let (store, m) = (self.snapshots.clone(), meta.clone());
        // Decoding and storing a large state take seconds: off the async workers.
        let state = blocking(ErrorVerb::Write, move || {
            let state: State = bkv_wire::decode(&data, MAX_SNAPSHOT)
                .map_err(|_| ReplicationStoreError::Malformed("received snapshot".into()))?;
            store.write(&m, &data)?;
            Ok(state)
        })
        .await?;
        let mut replica = self
            .replica
            .lock()
            .map_err(|_| sm_err(ErrorVerb::Write, poisoned()))?;
        replica.replace_state(state);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish_position()
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        drop(replica);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let store = self.snapshots.clone();
        Ok(blocking(ErrorVerb::Read, move || store.read())
            .await?
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}
