//! Replication of vault changes with openraft.
//!
//! Every [`LogEntry`](bkv_hsm_core::LogEntry) a core makes becomes one Raft log entry (or shares one with concurrent
//! entries, see [`group_commit`]); each node's
//! state machine applies committed entries in log order with the same
//! deterministic [`Core::apply`](bkv_hsm_core::Core::apply), which checks each entry first
//! (made by a core of the fleet, proposed by a member, in its proposer's order): the log
//! store ([`log_store::LogStore`]) and the state machine over the node's table of sealed
//! records ([`state_machine::StateMachine`], [`crate::records`]), both passing openraft's
//! storage test suite and sealing everything through the node's platform; Noise `IK` peer
//! links ([`network`]); and one member's place in the fleet ([`fleet`]).

pub mod fleet;
pub mod group_commit;
pub mod log_store;
pub mod network;
mod peer_server;
mod proposals;
mod reads;
mod replica;
pub mod snapshot_stream;
pub mod state_machine;

use bkv_hsm_core::state::Outcome;
use bkv_hsm_core::Entries;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// openraft types of a bkv fleet.
    pub TypeConfig:
        D = Entries,
        R = Applied,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot_stream::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A fleet member as the Raft membership records it: where its peer link
/// listens and its identity key (X25519, Noise static). Membership changes
/// therefore also change which identity keys a node accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub addr: String,
    pub identity: [u8; 32],
}

/// What applying one Raft log entry produced: each of its core-made entries' outcome (the
/// outcomes are public; a core continues its sessions with the outcome it computed itself), or
/// nothing for openraft's own entries (blank, membership).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Entries(Vec<Outcome>),
    Blank,
    Membership,
}

/// Errors of the replication storage.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationStoreError {
    #[error("raft database: {0}")]
    Db(String),
    #[error("sealed raft value {0} failed to open: wrong platform key or tampered disk")]
    Unseal(String),
    #[error("raft value {0} is malformed")]
    Malformed(String),
    #[error(
        "rollback detected: the data directory is older than this node's platform counter \
         (log epoch {db} < counter {counter}). Refusing to start: a rolled-back node could \
         vote again or lose committed guesses. Restore the newest data directory, or wipe it \
         and add the node back to the fleet as a new member."
    )]
    Rollback { db: u64, counter: u64 },
    #[error(
        "rollback detected: the {part} on disk is not what this node's platform counter \
         commits to: {detail}. Refusing to start: a rolled-back node could vote again or lose \
         committed guesses. Restore the newest data directory, or wipe it and add the node back \
         to the fleet as a new member."
    )]
    RolledBack { part: &'static str, detail: String },
    #[error(
        "this data directory holds the log of an earlier release of bkv-hsm ({0}), whose \
         entries the host could forge; this release applies only entries its cores made and \
         cannot continue that fleet. Form a new fleet with this release and rotate to it \
         (docs/operations.md, \"Upgrades\")"
    )]
    EarlierRelease(String),
    #[error("snapshot refused: {0}")]
    Snapshot(String),
    #[error("raft snapshot file: {0}")]
    SnapshotFile(String),
    #[error("vault records: {0}")]
    Records(String),
    #[error(
        "the vault records were applied up to log index {applied} but the log now starts after \
         index {purged}: the record store was rolled back behind the log (or replaced). \
         Refusing to start. Restore the newest data directory, or wipe it and add the node \
         back to the fleet as a new member."
    )]
    RecordsBehindLog { applied: u64, purged: u64 },
    #[error("platform: {0}")]
    Platform(#[from] bkv_hsm_core::PlatformError),
}

pub(crate) fn db_err<E: std::fmt::Display>(e: E) -> ReplicationStoreError {
    ReplicationStoreError::Db(e.to_string())
}

impl From<bkv_hsm_core::SealedError> for ReplicationStoreError {
    fn from(e: bkv_hsm_core::SealedError) -> Self {
        ReplicationStoreError::Records(e.to_string())
    }
}

impl From<crate::records::RecordTableError> for ReplicationStoreError {
    fn from(e: crate::records::RecordTableError) -> Self {
        ReplicationStoreError::Records(e.to_string())
    }
}

/// Converts a storage failure into openraft's error for `subject`.
pub(crate) fn storage_error(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    e: ReplicationStoreError,
) -> openraft::StorageError<u64> {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}
