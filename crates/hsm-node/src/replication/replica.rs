//! What the replicated state machine applies entries to: a node's [`Core`], or a
//! [`BareReplica`] (the replication layer's tests and benchmarks). Every method crosses the
//! core's boundary (docs/architecture.md "The core's boundary"): entries in, outcomes out;
//! sealed buckets in, snapshot frames out.

use bkv_hsm_core::sealed_state::{Installer, SealedState};
use bkv_hsm_core::snapshot::{SnapshotKey, StreamStart};
use bkv_hsm_core::state::{Outcome, State};
use bkv_hsm_core::{Core, EntryKey, LogEntry};

/// What the state machine applies entries to.
pub trait Replica: Send + 'static {
    /// Applies a committed log entry (checking it first: a refused entry changes nothing and
    /// says so in its outcome); an error (the record store failed or was tampered with) stops
    /// the node.
    fn apply(&mut self, e: &LogEntry) -> Result<Outcome, String>;
    /// The fleet part of the state (members, generations).
    fn state(&self) -> &State;
    /// The records and their store.
    fn records(&mut self) -> &mut SealedState;
    /// The fleet secrets encrypted to an admitted member's identity key
    /// (the core checks admission), or why not.
    fn export_secrets_to(&self, identity: &[u8; 32]) -> Result<Vec<u8>, String>;
    /// A snapshot header of the state a stored summary describes: the header, the position the
    /// summary names and the stream nonce (`bkv_hsm_core::snapshot`).
    fn snapshot_header(&mut self, summary: &[u8]) -> Result<StreamStart, String>;
    /// A bucket's frame in the stream with `nonce`.
    fn snapshot_frame(&self, nonce: [u8; 32], b: u16, sealed: &[u8]) -> Result<Vec<u8>, String>;
    /// Starts installing the snapshot with `header` (refused unless a core of the fleet sealed
    /// it and it is not behind this state).
    fn open_snapshot(&self, header: &[u8]) -> Result<Installer, String>;
}

/// A bare state (the replication layer's tests and benchmarks): no fleet secrets, keys given
/// outright, and no membership check (`SealedState::admit_entry`).
pub struct BareReplica {
    pub state: SealedState,
    pub key: EntryKey,
    pub snapshots: SnapshotKey,
}

impl BareReplica {
    /// A bare replica of `state` whose entry and snapshot keys are `key` for fleet `fleet_id`.
    pub fn new(state: SealedState, key: [u8; 32], fleet_id: &str) -> Self {
        BareReplica {
            state,
            key: EntryKey::from_bytes(key, fleet_id),
            snapshots: SnapshotKey::from_bytes(key, fleet_id),
        }
    }
}

impl Replica for BareReplica {
    fn apply(&mut self, e: &LogEntry) -> Result<Outcome, String> {
        match self.state.admit_entry(&self.key, e, |_, _| true) {
            Ok(m) => SealedState::apply(&mut self.state, &m).map_err(|e| e.to_string()),
            Err(r) => Ok(Outcome::Refused(r)),
        }
    }
    fn state(&self) -> &State {
        self.state.fleet()
    }
    fn records(&mut self) -> &mut SealedState {
        &mut self.state
    }
    fn export_secrets_to(&self, _: &[u8; 32]) -> Result<Vec<u8>, String> {
        Err("this replica holds no fleet secrets".into())
    }
    fn snapshot_header(&mut self, summary: &[u8]) -> Result<StreamStart, String> {
        let mut nonce = [0u8; 32];
        self.state
            .platform()
            .fill_random(&mut nonce)
            .map_err(|e| e.to_string())?;
        let (header, position) = self
            .state
            .snapshot_header(&self.snapshots, nonce, summary)
            .map_err(|e| e.to_string())?;
        Ok(StreamStart {
            header,
            position,
            nonce,
        })
    }
    fn snapshot_frame(&self, nonce: [u8; 32], b: u16, sealed: &[u8]) -> Result<Vec<u8>, String> {
        self.state
            .snapshot_frame(&self.snapshots, nonce, b, sealed)
            .map_err(|e| e.to_string())
    }
    fn open_snapshot(&self, header: &[u8]) -> Result<Installer, String> {
        self.state
            .open_snapshot(&self.snapshots, header)
            .map_err(|e| e.to_string())
    }
}

impl Replica for Core {
    fn apply(&mut self, e: &LogEntry) -> Result<Outcome, String> {
        Core::apply(self, e).map_err(|e| e.to_string())
    }
    fn state(&self) -> &State {
        Core::state(self)
    }
    fn records(&mut self) -> &mut SealedState {
        Core::records(self)
    }
    fn export_secrets_to(&self, identity: &[u8; 32]) -> Result<Vec<u8>, String> {
        Core::export_secrets_to(self, identity).map_err(|e| e.to_string())
    }
    fn snapshot_header(&mut self, summary: &[u8]) -> Result<StreamStart, String> {
        Core::snapshot_header(self, summary).map_err(|e| e.to_string())
    }
    fn snapshot_frame(&self, nonce: [u8; 32], b: u16, sealed: &[u8]) -> Result<Vec<u8>, String> {
        Core::snapshot_frame(self, nonce, b, sealed).map_err(|e| e.to_string())
    }
    fn open_snapshot(&self, header: &[u8]) -> Result<Installer, String> {
        Core::open_snapshot(self, header).map_err(|e| e.to_string())
    }
}
