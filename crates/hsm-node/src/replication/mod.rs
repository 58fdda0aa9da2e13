//! Replication of vault changes with openraft.
//!
//! Every [`LogEntry`](bkv_hsm_core::LogEntry) a core makes becomes one Raft log entry (or shares one with concurrent
//! entries, see `group_commit`); each node's
//! state machine applies committed entries in log order with the same
//! deterministic [`Core::apply`](bkv_hsm_core::Core::apply), which checks each entry first
//! (made by a core of the fleet, proposed by a member, in its proposer's order): the log
//! store ([`log_store::LogStore`]) and the state machine over the node's table of sealed
//! records ([`state_machine::StateMachine`], `crate::records`), both passing openraft's
//! storage test suite and sealing everything through the node's platform; Noise `IK` peer
//! links (`network`); and one member's place in the fleet (`fleet`).

pub(crate) mod fleet;
pub(crate) mod group_commit;
pub(crate) mod log_store;
pub(crate) mod network;
mod peer_server;
mod proposals;
mod reads;
mod replica;
pub(crate) mod snapshot_stream;
pub(crate) mod state_machine;

// The replication layer's surface: one member's place in the fleet, its peer links, and the
// storage openraft drives (tests and benches run fleets from these directly).
pub use fleet::{Fleet, FleetError, FleetOptions, Submitted, SNAPSHOT_LOG_MIN};
pub use log_store::LogStore;
pub use network::{CallError, PeerClient};
pub use network::{
    Link, LinkIdentity, PeerNetwork, PeerRequest, PeerResponse, ProposeError, ReadIndexError,
    MAX_PEER_MESSAGE,
};
pub use replica::{AppliedBatch, BareReplica, Released, Replica};
pub use snapshot_stream::{
    FrameSource, Sender as SnapshotSender, SnapshotData, Spool, SpoolReader,
};
pub use state_machine::SnapshotBuilder;
pub use state_machine::{StateMachine, MAX_SNAPSHOT};

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
    /// Where its peer link listens (`host:port`).
    pub addr: String,
    /// Its identity public key (X25519): the static key its peer links must prove.
    pub identity: [u8; 32],
}

/// What applying one Raft log entry produced: each of its core-made entries' outcome (the
/// outcomes are public; a core continues its sessions with the outcome it computed itself), or
/// nothing for openraft's own entries (blank, membership).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// A batch of core-made entries: one outcome per entry, in order.
    Entries(Vec<Outcome>),
    /// openraft's blank entry (a new leader's first).
    Blank,
    /// A Raft membership change.
    Membership,
}

/// Errors of the replication storage.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationStoreError {
    /// redb failed (its message).
    #[error("raft database: {0}")]
    Db(String),
    /// A sealed value (named) failed to open: wrong platform key or tampered disk.
    #[error("sealed raft value {0} failed to open: wrong platform key or tampered disk")]
    Unseal(String),
    /// A value (named) that does not decode, is too large or has an unknown version.
    #[error("raft value {0} is malformed")]
    Malformed(String),
    /// The sealed Raft state's epoch is behind the platform's counter: the data directory was
    /// rolled back.
    #[error(
        "rollback detected: the data directory is older than this node's platform counter \
         (log epoch {db} < counter {counter}). Refusing to start: a rolled-back node could \
         vote again or lose committed guesses. Restore the newest data directory, or wipe it \
         and add the node back to the fleet as a new member."
    )]
    Rollback {
        /// The epoch in the Raft state on disk.
        db: u64,
        /// The platform's Raft counter.
        counter: u64,
    },
    /// The log or the record table on disk is not what the counter-bound state names: an older
    /// copy, or one of another history.
    #[error(
        "rollback detected: the {part} on disk is not what this node's platform counter \
         commits to: {detail}. Refusing to start: a rolled-back node could vote again or lose \
         committed guesses. Restore the newest data directory, or wipe it and add the node back \
         to the fleet as a new member."
    )]
    RolledBack {
        /// Which part: `raft log` or `record table`.
        part: &'static str,
        /// What does not match.
        detail: String,
    },
    /// The data directory holds an earlier release's log, which this release cannot continue.
    #[error(
        "this data directory holds the log of an earlier release of bkv-hsm ({0}), whose \
         entries the host could forge; this release applies only entries its cores made and \
         cannot continue that fleet. Form a new fleet with this release and rotate to it \
         (docs/operations.md, \"Upgrades\")"
    )]
    EarlierRelease(String),
    /// The core refused to make or install a snapshot (its reason).
    #[error("snapshot refused: {0}")]
    Snapshot(String),
    /// Creating, writing or reading a received snapshot's spool file failed.
    #[error("raft snapshot file: {0}")]
    SnapshotFile(String),
    /// The record table, its writer thread or the core's sealed records failed (the reason).
    #[error("vault records: {0}")]
    Records(String),
    /// The record table was applied only up to before the log's first entry: it was rolled back
    /// behind the log, or replaced.
    #[error(
        "the vault records were applied up to log index {applied} but the log now starts after \
         index {purged}: the record store was rolled back behind the log (or replaced). \
         Refusing to start. Restore the newest data directory, or wipe it and add the node \
         back to the fleet as a new member."
    )]
    RecordsBehindLog {
        /// The last log index the record table applied (0: none).
        applied: u64,
        /// The last log index the log purged.
        purged: u64,
    },
    /// The platform failed (its counters or sealing).
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

/// Timing for loopback and LAN fleets (openraft defaults are 50/150/300 ms).
pub fn raft_config() -> Result<std::sync::Arc<openraft::Config>, fleet::FleetError> {
    let c = openraft::Config {
        cluster_name: "bkv".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        // Snapshots follow the log's bytes, not its entry count (see `watch_log_growth`).
        snapshot_policy: openraft::SnapshotPolicy::Never,
        // Per snapshot piece; the last one waits for the receiver to install the whole
        // snapshot into its table (~10 s at 10⁶ users), which openraft's 200 ms would cut off
        // and send again from the start, forever.
        install_snapshot_timeout: 300_000,
        ..Default::default()
    };
    Ok(std::sync::Arc::new(
        c.validate()
            .map_err(|e| fleet::FleetError::Raft(e.to_string()))?,
    ))
}
