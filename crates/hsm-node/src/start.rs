//! What a node is started with ([`NodeConfig`], [`StartMode`], the members it joins), why a
//! start fails ([`NodeStartError`]), and the two start-up steps that talk to the fleet
//! (founding it, and waiting for the fleet secrets); split from `lib.rs`.

use crate::core_link;
use crate::replication::fleet::{fetch_secrets, Fleet};
use crate::replication::network::LinkIdentity;
use crate::replication::{self, PeerNode};
use crate::store;
use bkv_core_service::client::{unexpected, CoreHandle};
use bkv_core_service::protocol::{Reply, Request};
use bkv_hsm_core::FleetTrust;
use bkv_hsm_core::Outcome;
use bkv_hsm_platform::PlatformConfig;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Why a node could not start (or print its platform statement).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeStartError {
    /// The platform (key directory or PKCS#11 token) could not be opened.
    #[error(transparent)]
    Platform(#[from] bkv_hsm_platform::PlatformOpenError),
    /// The node's database (`vault.redb`) failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The core (in this process) refused or failed.
    #[error(transparent)]
    Core(#[from] bkv_hsm_core::CoreError),
    /// The core service could not be started as a child.
    #[error("start the core service: {0}")]
    CoreStart(std::io::Error),
    /// The core service across the boundary failed or answered unexpectedly.
    #[error(transparent)]
    CoreService(#[from] bkv_core_service::client::BoundaryError),
    /// A stored sealed value did not open with this node's platform: another token or key sealed
    /// it, or it was tampered with.
    #[error(
        "stored {what} could not be opened with this node's platform ({why}): \
         the data directory was sealed by another token or key, or was tampered with"
    )]
    Unseal {
        /// Which value: `node identity` or `fleet secrets`.
        what: &'static str,
        /// The core's answer.
        why: String,
    },
    /// A link (peer, relay or admin) could not listen on its address.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why binding it failed.
        source: std::io::Error,
    },
    /// A member of the `--join` list whose identity key does not parse.
    #[error("member {id} identity: {why}")]
    MemberIdentity {
        /// The member's node id.
        id: u64,
        /// What is wrong with its key.
        why: &'static str,
    },
    /// A `--predecessor` that is not `FLEET_ID=MOVE_KEY_HEX`.
    #[error("predecessor {text:?}: {why}")]
    Predecessor {
        /// The text as given.
        text: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The data directory holds no fleet and the node was not told to found or join one.
    #[error("{} holds no fleet: start with --found or --join", dir.display())]
    NoFleet {
        /// The data directory.
        dir: PathBuf,
    },
    /// The node's async runtime could not be built.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    /// Replication could not start, or the fleet could not be reached or founded.
    #[error(transparent)]
    Fleet(#[from] replication::fleet::FleetError),
    /// Founding the fleet recorded something other than the founder.
    #[error("recording the founding member: {0}")]
    Founding(String),
    /// A file operation failed (data directory, its lock, `public.json`, the node's own binary).
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process holds the data directory's lock (the directory).
    #[error("another bkv-hsm holds {0}: one process per data directory (and per token)")]
    Locked(PathBuf),
}

/// What a node does when its data directory holds no fleet secrets yet.
#[derive(Debug, Clone)]
pub enum StartMode {
    /// Form a new fleet pinning these trust anchors (operator key, auditor
    /// key, log namespace): the first start of the fleet's first node.
    Found(FleetTrust),
    /// Join an existing fleet: once the operator admitted this node, ask
    /// these members for the fleet secrets (encrypted to this node's
    /// identity key).
    Join(Vec<Member>),
    /// The data directory must already hold a fleet.
    Existing,
}

/// How a node starts.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's data directory (sealed log, record table, `vault.redb`); made `0700`.
    pub data_dir: PathBuf,
    /// The platform that holds the node's keys.
    pub platform: PlatformConfig,
    /// This node's id in the fleet.
    pub node_id: u64,
    /// Where the peer link listens (port 0: any).
    pub peer_listen: String,
    /// The peer address the fleet records for a founder (default: the
    /// bound `peer_listen` address).
    pub peer_advertise: Option<String>,
    /// What to do when the data directory holds no fleet secrets yet.
    pub start: StartMode,
    /// Where the core runs.
    pub core: crate::CoreMode,
}

/// A fleet member as listed in a members file (`fleet.json`): where to
/// reach it on the peer link and its identity key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The member's node id in the fleet.
    pub id: u64,
    /// Peer-link address.
    pub addr: String,
    /// Identity public key (hex).
    pub identity: String,
}

impl Member {
    pub(crate) fn peer(&self) -> Result<PeerNode, NodeStartError> {
        let identity = bkv_wire::key_from_hex(&self.identity)
            .map_err(|why| NodeStartError::MemberIdentity { id: self.id, why })?;
        Ok(PeerNode {
            addr: self.addr.clone(),
            identity,
        })
    }
}

/// Parses a predecessor fleet as given on the command line or in a config file:
/// `FLEET_ID=MOVE_KEY_HEX`.
pub fn parse_predecessor(text: &str) -> Result<bkv_hsm_core::Predecessor, NodeStartError> {
    let bad = |why: &'static str| NodeStartError::Predecessor {
        text: text.to_owned(),
        why,
    };
    let (fleet_id, key) = text
        .split_once('=')
        .ok_or_else(|| bad("expected FLEET_ID=MOVE_KEY_HEX"))?;
    let move_key = bkv_wire::key_from_hex(key).map_err(bad)?;
    if fleet_id.is_empty() {
        return Err(bad("empty fleet id"));
    }
    Ok(bkv_hsm_core::Predecessor {
        fleet_id: fleet_id.to_owned(),
        move_key,
    })
}

/// Holds the data directory's lock file for the life of the process.
pub(crate) struct DirLock(#[allow(dead_code)] std::fs::File);

pub(crate) fn lock_data_dir(dir: &Path) -> Result<DirLock, NodeStartError> {
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| NodeStartError::Io {
            path: path.clone(),
            source,
        })?;
    f.try_lock()
        .map_err(|_| NodeStartError::Locked(dir.to_owned()))?;
    Ok(DirLock(f))
}

/// Creates the data directory if needed and makes it `0700`: the sealed
/// log, snapshots and identity in it are the node's alone.
pub(crate) fn private_dir(dir: &Path) -> Result<(), NodeStartError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| NodeStartError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Forms the fleet on its founding node: a one-member Raft membership and
/// the founding member's record (its statement) in the replicated state.
/// Idempotent, so a founder that crashed half-way finishes on restart.
pub(crate) async fn found(
    fleet: &Fleet,
    core: &Mutex<CoreHandle>,
    node_id: u64,
    peer_addr: &str,
    identity: [u8; 32],
) -> Result<(), NodeStartError> {
    if !fleet.initialized() {
        let me = PeerNode {
            addr: peer_addr.to_owned(),
            identity,
        };
        fleet
            .initialize([(node_id, me)].into_iter().collect())
            .await?;
    }
    fleet.read_barrier().await?;
    let submitted = {
        let mut core = core
            .lock()
            .map_err(|_| NodeStartError::Founding("core lock poisoned".into()))?;
        if !core_link::members(&mut core)?.nodes.is_empty() {
            return Ok(());
        }
        let (entry, mut turn) = match core.call_ordered(Request::FoundEntry {
            node_id,
            addr: peer_addr.to_owned(),
        })? {
            (Reply::Entry(e), turn) => (e, turn),
            (r, _) => return Err(unexpected(r).into()),
        };
        if let Some(t) = turn.as_mut() {
            t.reach();
        }
        let submitted = fleet.submit(entry);
        drop(turn);
        submitted
    };
    match fleet.wait(submitted).await {
        Ok(Outcome::Founded) => Ok(()),
        Ok(o) => Err(NodeStartError::Founding(format!("{o:?}"))),
        Err(e) => Err(e.into()),
    }
}

/// Asks members for the fleet secrets until one answers (the operator may
/// still be admitting this node): they come encrypted to this node's identity, which only the
/// core can open.
pub(crate) async fn join_secrets(
    me: &LinkIdentity,
    peers: &[PeerNode],
) -> Result<Vec<u8>, NodeStartError> {
    let mut tries = 0;
    loop {
        match fetch_secrets(me, peers).await {
            Ok(envelope) => return Ok(envelope),
            Err(e) if tries < 60 => {
                tries += 1;
                tracing::info!(error = %e, "waiting to be admitted and sent the fleet secrets");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
