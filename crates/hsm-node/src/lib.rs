//! bkv HSM node: hosts the [`bkv_hsm_core::Core`], makes every mutation durable
//! (sealed, fsynced) before the response that depends on it is released, and
//! serves the frontend over a length-prefixed TCP link.

pub mod platform;
pub mod replication;
pub mod store;

use bkv_hsm_core::{Core, Platform, Step};
use bkv_wire::node::{read_frame, write_frame, NodeError, NodeInfo, NodeRequest, NodeResponse};
use platform::SoftwarePlatform;
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
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Inner {
    core: Core<SoftwarePlatform>,
    store: Store,
}

/// A running vault node.
pub struct Node {
    inner: Mutex<Inner>,
    info: NodeInfo,
}

impl Node {
    /// Opens (or initialises) the node's data directory.
    pub fn open(data_dir: &Path) -> Result<Self, NodeStartError> {
        let platform = SoftwarePlatform::open(&data_dir.join("platform"))?;
        let store = Store::open(&data_dir.join("vault.redb"))?;
        let secrets = store.load_or_create_secrets(platform.sealing_key())?;
        let state = store.load_state(platform.sealing_key())?;
        let info = NodeInfo {
            fleet_id: secrets.fleet_id().to_owned(),
            noise_public_key: secrets.noise_public_key(),
        };
        let core = Core::new(platform, secrets, state)?;
        Ok(Node {
            inner: Mutex::new(Inner { core, store }),
            info,
        })
    }

    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// Handles one request from the frontend.
    pub fn handle(&self, req: NodeRequest) -> NodeResponse {
        // A poisoned lock means a thread panicked mid-request; the core's state
        // may be ahead of disk, so stop serving rather than guess.
        let Ok(mut inner) = self.inner.lock() else {
            return NodeResponse::Error(NodeError::Unavailable);
        };
        match req {
            NodeRequest::Info => NodeResponse::Info(self.info.clone()),
            NodeRequest::OpenSession { user_id, handshake } => {
                match inner.core.open_session(&user_id, &handshake) {
                    Ok((session_id, handshake)) => NodeResponse::SessionOpened {
                        session_id,
                        handshake,
                    },
                    Err(e) => NodeResponse::Error(e),
                }
            }
            NodeRequest::CloseSession { session_id } => {
                inner.core.close_session(&session_id);
                NodeResponse::Closed
            }
            NodeRequest::SessionMessage {
                session_id,
                user_id,
                ciphertext,
            } => {
                let mut step = inner
                    .core
                    .session_message(&session_id, &user_id, &ciphertext);
                loop {
                    match step {
                        Ok(Step::Reply(ciphertext)) => {
                            return NodeResponse::SessionMessage { ciphertext }
                        }
                        Err(e) => return NodeResponse::Error(e),
                        Ok(Step::Commit(m)) => {
                            let Inner { core, store } = &mut *inner;
                            let outcome = core.apply(&m);
                            let key = core.platform().sealing_key().clone();
                            if let Err(e) = store.persist(&key, m.record_id(), core.state()) {
                                // Memory is now ahead of disk. Nothing was
                                // released; crash so a restart reloads the
                                // durable state.
                                tracing::error!(error = %e, "commit failed; aborting node");
                                std::process::abort();
                            }
                            tracing::debug!(?outcome, "committed");
                            step = core.resume(&session_id, outcome);
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
