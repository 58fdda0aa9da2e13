//! bkv HSM node: hosts the [`bkv_hsm_core::Core`], commits every mutation on a
//! majority of the fleet (openraft, sealed fsynced log on each node) before
//! the response that depends on it is released, and serves the frontend over
//! a length-prefixed TCP link.

pub mod platform;
pub mod replication;
pub mod store;

use bkv_hsm_core::state::State;
use bkv_hsm_core::{Core, FleetSecrets, Platform, Step};
use bkv_wire::node::{read_frame, write_frame, NodeError, NodeInfo, NodeRequest, NodeResponse};
use platform::SoftwarePlatform;
use replication::fleet::{fetch_secrets, Fleet, FleetOptions};
use replication::network::NodeIdentity;
use replication::PeerNode;
use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::Store;

/// Most frontend connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection idle this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum NodeStartError {
    #[error(transparent)]
    Platform(#[from] platform::SoftwarePlatformError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Core(#[from] bkv_hsm_core::CoreError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How a node joins its fleet.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// The software platform's key and counter (the HSM stand-in); default
    /// `DATA/platform`. Keep it apart from the data directory so a
    /// rolled-back data directory is detected.
    pub platform_dir: Option<PathBuf>,
    /// This node's id in the fleet.
    pub node_id: u64,
    /// Where the peer link listens (port 0: any; only for one-node fleets).
    pub peer_listen: String,
    /// The fleet's members; `None` runs a one-node fleet.
    pub members: Option<Vec<Member>>,
    /// Form the fleet from `members` (the first start of the first node).
    pub initialize: bool,
}

/// A fleet member as listed in the members file (`fleet.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub id: u64,
    /// Peer-link address.
    pub addr: String,
    /// Identity public key (hex).
    pub identity: String,
}

impl Member {
    fn peer(&self) -> Result<PeerNode, NodeStartError> {
        let identity = bkv_wire::key_from_hex(&self.identity)
            .map_err(|e| NodeStartError::Config(format!("member {} identity: {e}", self.id)))?;
        Ok(PeerNode {
            addr: self.addr.clone(),
            identity,
        })
    }
}

/// Opens the data directory far enough to know the node's identity key
/// (creating platform and identity on first use); returns its public half.
pub fn identity_public_key(
    data_dir: &Path,
    platform_dir: Option<&Path>,
) -> Result<[u8; 32], NodeStartError> {
    let platform = SoftwarePlatform::open(
        &platform_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| data_dir.join("platform")),
    )?;
    let store = Store::open(&data_dir.join("vault.redb"))?;
    let private = store.load_or_create_identity(platform.sealing_key())?;
    Ok(NodeIdentity::from_private(*private).public)
}

/// A running vault node: the core, and its membership in the fleet.
pub struct Node {
    core: Arc<Mutex<Core<SoftwarePlatform>>>,
    fleet: Fleet,
    rt: tokio::runtime::Runtime,
    info: NodeInfo,
    pub peer_addr: SocketAddr,
}

impl Node {
    /// Opens (or initialises) the node's data directory and joins its fleet.
    pub fn open(cfg: &NodeConfig) -> Result<Self, NodeStartError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("bkv-hsm-raft")
            .build()
            .map_err(|e| NodeStartError::Config(format!("runtime: {e}")))?;
        let platform_dir = cfg
            .platform_dir
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("platform"));
        let platform = SoftwarePlatform::open(&platform_dir)?;
        let store = Store::open(&cfg.data_dir.join("vault.redb"))?;
        let key = platform.sealing_key().clone();
        let counter: Arc<dyn replication::RollbackCounter> = Arc::new(platform.rollback_counter());
        let identity = Arc::new(NodeIdentity::from_private(
            *store.load_or_create_identity(&key)?,
        ));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(&cfg.peer_listen))
            .map_err(|source| NodeStartError::Listen {
                addr: cfg.peer_listen.clone(),
                source,
            })?;
        let peer_addr = listener
            .local_addr()
            .map_err(|source| NodeStartError::Listen {
                addr: cfg.peer_listen.clone(),
                source,
            })?;
        let members: Vec<(u64, PeerNode)> = match &cfg.members {
            Some(list) => list
                .iter()
                .map(|m| Ok((m.id, m.peer()?)))
                .collect::<Result<_, NodeStartError>>()?,
            None => vec![(
                cfg.node_id,
                PeerNode {
                    addr: peer_addr.to_string(),
                    identity: identity.public,
                },
            )],
        };
        let secrets = match store.load_secrets(&key)? {
            Some(s) => s,
            None if cfg.members.is_some() && !cfg.initialize => {
                // Joining: the secrets come from a member over an
                // authenticated peer link (retried while the fleet starts).
                let peers: Vec<PeerNode> = members.iter().map(|(_, p)| p.clone()).collect();
                let mut tries = 0;
                let plain = loop {
                    match rt.block_on(fetch_secrets(&identity, &peers)) {
                        Ok(p) => break p,
                        Err(e) if tries < 60 => {
                            tries += 1;
                            tracing::info!(error = %e, "waiting for a fleet member to share the fleet secrets");
                            std::thread::sleep(Duration::from_millis(500));
                        }
                        Err(e) => return Err(NodeStartError::Config(e.to_string())),
                    }
                };
                let s = FleetSecrets::import(&plain)?;
                store.save_secrets(&key, &s)?;
                s
            }
            None => {
                let s = FleetSecrets::generate(&mut rand_core::OsRng);
                store.save_secrets(&key, &s)?;
                s
            }
        };
        let info = NodeInfo {
            fleet_id: secrets.fleet_id().to_owned(),
            noise_public_key: secrets.noise_public_key(),
        };
        let export = Arc::new(secrets.export());
        let core = Arc::new(Mutex::new(Core::new(platform, secrets, State::default())?));
        let bootstrap = members.iter().map(|(_, p)| p.identity).collect();
        let fleet = rt
            .block_on(Fleet::start(
                FleetOptions {
                    id: cfg.node_id,
                    dir: cfg.data_dir.clone(),
                    key,
                    identity,
                    bootstrap,
                    secrets: Some(export),
                    counter: Some(counter),
                },
                listener,
                core.clone(),
            ))
            .map_err(|e| NodeStartError::Config(e.to_string()))?;
        if cfg.members.is_none() || cfg.initialize {
            rt.block_on(fleet.initialize(members.into_iter().collect()))
                .map_err(|e| NodeStartError::Config(e.to_string()))?;
        }
        Ok(Node {
            core,
            fleet,
            rt,
            info,
            peer_addr,
        })
    }

    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    pub fn fleet_status(&self) -> bkv_wire::node::FleetStatus {
        self.fleet.status()
    }

    fn core(&self) -> Option<std::sync::MutexGuard<'_, Core<SoftwarePlatform>>> {
        // A poisoned lock means a thread panicked mid-request; stop serving
        // rather than guess.
        self.core.lock().ok()
    }

    /// Handles one request from the frontend.
    pub fn handle(&self, req: NodeRequest) -> NodeResponse {
        let unavailable = NodeResponse::Error(NodeError::Unavailable);
        match req {
            NodeRequest::Info => NodeResponse::Info(self.info.clone()),
            NodeRequest::FleetStatus => NodeResponse::FleetStatus(self.fleet.status()),
            NodeRequest::ChangeMembership(change) => {
                tracing::info!(?change, "membership change requested");
                match self.rt.block_on(self.fleet.change_membership(change)) {
                    Ok(()) => NodeResponse::FleetStatus(self.fleet.status()),
                    Err(e) => NodeResponse::Error(NodeError::BadRequest(e.to_string())),
                }
            }
            NodeRequest::OpenSession { user_id, handshake } => {
                let Some(mut core) = self.core() else {
                    return unavailable;
                };
                match core.open_session(&user_id, &handshake) {
                    Ok((session_id, handshake)) => NodeResponse::SessionOpened {
                        session_id,
                        handshake,
                    },
                    Err(e) => NodeResponse::Error(e),
                }
            }
            NodeRequest::CloseSession { session_id } => {
                if let Some(mut core) = self.core() {
                    core.close_session(&session_id);
                }
                NodeResponse::Closed
            }
            NodeRequest::SessionMessage {
                session_id,
                user_id,
                ciphertext,
            } => {
                // Everything this message reads must be at least as new as
                // anything committed before it arrived (linearizable).
                if let Err(e) = self.rt.block_on(self.fleet.read_barrier()) {
                    tracing::warn!(error = %e, "read barrier failed");
                    return unavailable;
                }
                let mut step = match self.core() {
                    Some(mut core) => core.session_message(&session_id, &user_id, &ciphertext),
                    None => return unavailable,
                };
                loop {
                    match step {
                        Ok(Step::Reply(ciphertext)) => {
                            return NodeResponse::SessionMessage { ciphertext }
                        }
                        Err(e) => return NodeResponse::Error(e),
                        Ok(Step::Commit(m)) => {
                            // The core lock is released while the mutation
                            // commits: every replica's state machine applies
                            // it through the same lock.
                            let outcome = match self.rt.block_on(self.fleet.propose(m)) {
                                Ok(o) => o,
                                Err(e) => {
                                    tracing::warn!(error = %e, "commit failed");
                                    return unavailable;
                                }
                            };
                            tracing::debug!(?outcome, "committed");
                            step = match self.core() {
                                Some(mut core) => core.resume(&session_id, outcome),
                                None => return unavailable,
                            };
                        }
                    }
                }
            }
        }
    }
}

/// A node serving on a TCP address.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves `node` on `listen` in background threads.
pub fn serve(node: Arc<Node>, listen: &str) -> Result<Server, NodeStartError> {
    let listener = TcpListener::bind(listen).map_err(|source| NodeStartError::Listen {
        addr: listen.to_owned(),
        source,
    })?;
    let addr = listener
        .local_addr()
        .map_err(|source| NodeStartError::Listen {
            addr: listen.to_owned(),
            source,
        })?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("bkv-hsm-accept".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!("connection limit reached; refusing");
                    continue;
                }
                let node = node.clone();
                let active = active.clone();
                let spawned = std::thread::Builder::new()
                    .name("bkv-hsm-conn".into())
                    .spawn(move || {
                        serve_connection(&node, conn);
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    tracing::warn!("could not spawn connection thread");
                }
            }
        })
        .map_err(|source| NodeStartError::Listen {
            addr: listen.to_owned(),
            source,
        })?;
    Ok(Server { addr, stop })
}

fn serve_connection(node: &Node, conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = conn.set_nodelay(true);
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut writer = write_half;
    loop {
        let req: NodeRequest = match read_frame(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "bad frame from frontend; closing connection");
                let resp = NodeResponse::Error(NodeError::BadRequest(e.to_string()));
                let _ = write_frame(&mut writer, &resp);
                return;
            }
        };
        let resp = node.handle(req);
        if write_frame(&mut writer, &resp).is_err() {
            return;
        }
    }
}

/// Writes the node's public information (`public.json`) for operators and
/// tooling: fleet id and the Noise public key clients pin.
pub fn write_public_info(node: &Node, data_dir: &Path) -> Result<PathBuf, NodeStartError> {
    let path = data_dir.join("public.json");
    let body = format!(
        "{{\n  \"fleet_id\": \"{}\",\n  \"noise_public_key\": \"{}\"\n}}\n",
        node.info.fleet_id,
        bkv_wire::key_to_hex(&node.info.noise_public_key)
    );
    platform::write_private_file(&path, body.as_bytes()).map_err(|source| {
        NodeStartError::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}
