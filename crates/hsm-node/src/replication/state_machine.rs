//! The replicated state machine: applies committed log entries to the vault
//! state and takes and installs snapshots (sealed on disk).
//!
//! The vault state itself lives with the host (the core also reads it to run
//! sessions); the state machine reaches it through [`Replica`]. Between
//! snapshots the state is only in memory: after a restart openraft re-applies
//! the committed log on top of the last snapshot.

use super::{db_err, storage_error, Applied, PeerNode, ReplicationStoreError, TypeConfig};
use crate::metrics::NodeMetrics;
use bkv_hsm_core::state::State;
use bkv_hsm_core::SharedPlatform;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use redb::{Database, TableDefinition};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft-snapshot");
/// Largest snapshot accepted (from disk or a peer).
pub const MAX_SNAPSHOT: usize = 256 * 1024 * 1024;

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

/// A snapshot as stored and sent: openraft's metadata and the vault state.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, PeerNode>,
    data: Vec<u8>,
}

pub struct StateMachine<R: Replica> {
    replica: Arc<Mutex<R>>,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, PeerNode>,
    db: Arc<Database>,
    platform: SharedPlatform,
    snapshots_built: u64,
    metrics: Arc<NodeMetrics>,
}

fn sm_err(verb: ErrorVerb, e: ReplicationStoreError) -> StorageError<u64> {
    storage_error(ErrorSubject::StateMachine, verb, e)
}

fn poisoned() -> ReplicationStoreError {
    ReplicationStoreError::Db("replica lock poisoned".into())
}

impl<R: Replica> StateMachine<R> {
    /// Opens the snapshot store at `path` and restores `replica` from the
    /// newest snapshot, if there is one.
    pub fn open(
        path: &Path,
        platform: SharedPlatform,
        replica: Arc<Mutex<R>>,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Self, ReplicationStoreError> {
        let db = Database::create(path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(SNAPSHOT).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        let mut sm = StateMachine {
            replica,
            last_applied: None,
            membership: StoredMembership::default(),
            db: Arc::new(db),
            platform,
            snapshots_built: 0,
            metrics,
        };
        if let Some(s) = sm.load()? {
            let state: State = bkv_wire::decode(&s.data, MAX_SNAPSHOT)
                .map_err(|_| ReplicationStoreError::Malformed("snapshot state".into()))?;
            sm.replica
                .lock()
                .map_err(|_| poisoned())?
                .replace_state(state);
            sm.last_applied = s.meta.last_log_id;
            sm.membership = s.meta.last_membership.clone();
        }
        Ok(sm)
    }

    fn load(&self) -> Result<Option<StoredSnapshot>, ReplicationStoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(SNAPSHOT).map_err(db_err)?;
        let Some(v) = t.get("current").map_err(db_err)? else {
            return Ok(None);
        };
        let plain = self
            .platform
            .unseal("raft-snapshot", b"current", v.value())
            .map_err(|_| ReplicationStoreError::Unseal("raft-snapshot".into()))?;
        bkv_wire::decode(&plain, MAX_SNAPSHOT + 64 * 1024)
            .map(Some)
            .map_err(|_| ReplicationStoreError::Malformed("raft-snapshot".into()))
    }

    fn save(&self, s: &StoredSnapshot) -> Result<(), ReplicationStoreError> {
        let sealed = self.platform.seal(
            "raft-snapshot",
            b"current",
            &zeroize::Zeroizing::new(bkv_wire::encode(s)),
        )?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(db_err)?;
            t.insert("current", sealed.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }
}

fn snapshot_of(s: StoredSnapshot) -> Snapshot<TypeConfig> {
    Snapshot {
        meta: s.meta,
        snapshot: Box::new(Cursor::new(s.data)),
    }
}

/// Builds snapshots from a copy of the state taken under the lock.
pub struct SnapshotBuilder {
    state: Vec<u8>,
    meta: SnapshotMeta<u64, PeerNode>,
    db: Arc<Database>,
    platform: SharedPlatform,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let s = StoredSnapshot {
            meta: self.meta.clone(),
            data: std::mem::take(&mut self.state),
        };
        let sealed = self
            .platform
            .seal(
                "raft-snapshot",
                b"current",
                &zeroize::Zeroizing::new(bkv_wire::encode(&s)),
            )
            .map_err(|e| sm_err(ErrorVerb::Write, e.into()))?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut t = tx.open_table(SNAPSHOT).map_err(db_err)?;
                t.insert("current", sealed.as_slice()).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, db_err(e)))?
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(snapshot_of(s))
    }
}

impl<R: Replica> RaftStateMachine<TypeConfig> for StateMachine<R> {
    type SnapshotBuilder = SnapshotBuilder;

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
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        let (state, id) = match self.replica.lock() {
            Ok(r) => (bkv_wire::encode(r.state()), self.snapshots_built),
            Err(_) => (Vec::new(), 0),
        };
        let last = self.last_applied;
        SnapshotBuilder {
            state,
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: self.membership.clone(),
                snapshot_id: format!(
                    "{}-{}-{id}",
                    last.map(|l| l.leader_id.term).unwrap_or(0),
                    last.map(|l| l.index).unwrap_or(0)
                ),
            },
            db: self.db.clone(),
            platform: self.platform.clone(),
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
        let state: State = bkv_wire::decode(&data, MAX_SNAPSHOT).map_err(|_| {
            sm_err(
                ErrorVerb::Read,
                ReplicationStoreError::Malformed("received snapshot".into()),
            )
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save(&stored)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.replica
            .lock()
            .map_err(|_| sm_err(ErrorVerb::Write, poisoned()))?
            .replace_state(state);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(self
            .load()
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .map(snapshot_of))
    }
}
