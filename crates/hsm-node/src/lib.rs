//! bkv HSM node: hosts the [`bkv_hsm_core::Core`], commits every mutation on a
//! majority of the fleet (openraft, sealed fsynced log on each node) before
//! the response that depends on it is released, and serves two listeners:
//!
//! - the **relay link** for the (untrusted) frontend: sessions and public
//!   information only ([`NodeRequest`]);
//! - the **admin link** for the operator: membership commands, each signed
//!   with the operator key pinned in the fleet and verified by every
//!   member's core ([`AdminRequest`]).
//!
//! The host code here never holds a key: the platform seals and signs, the
//! core holds the fleet secrets and the identity key (see the core's crate
//! docs for how that is kept true).

#![forbid(unsafe_code)]
// No panics on what peers, the relay or the disk hand the node, enforced (tests may unwrap).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod config;
pub mod metrics;
pub mod records;
pub mod replication;
pub mod store;

mod links;
mod start;
pub use links::{serve, serve_admin, Server, DEFAULT_IDLE_TIMEOUT, MAX_CONNECTIONS};
pub use start::{parse_predecessor, Member, NodeConfig, NodeStartError, StartMode};

use bkv_hsm_core::{Core, FleetSecrets, Outcome, SharedPlatform, Step};
use bkv_hsm_platform::PlatformConfig;
use bkv_wire::admin::{AdminError, AdminRequest, AdminResponse, MembersView, SignedAdminCommand};
use bkv_wire::node::{NodeError, NodeInfo, NodeRequest, NodeResponse};
use replication::fleet::{fetch_secrets, Fleet, FleetOptions};
use replication::network::LinkIdentity;
use replication::PeerNode;
use sha2::Digest;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::Store;

/// SHA-256 of the running executable (what a platform statement measures).
pub fn binary_sha256() -> Result<[u8; 32], NodeStartError> {
    let exe = std::env::current_exe().map_err(|source| NodeStartError::Io {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let mut f = std::fs::File::open(&exe).map_err(|source| NodeStartError::Io {
        path: exe.clone(),
        source,
    })?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|source| NodeStartError::Io { path: exe, source })?;
    Ok(h.finalize().into())
}

/// Holds the data directory's lock file for the life of the process.
struct DirLock(#[allow(dead_code)] std::fs::File);

fn lock_data_dir(dir: &Path) -> Result<DirLock, NodeStartError> {
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

/// Opens the data directory and platform far enough to know the node's
/// identity (creating platform keys and identity on a fresh directory) and
/// returns its signed platform statement.
pub fn platform_statement(
    data_dir: &Path,
    platform: &PlatformConfig,
) -> Result<bkv_wire::admin::SignedStatement, NodeStartError> {
    private_dir(data_dir)?;
    let _lock = lock_data_dir(data_dir)?;
    let store = Store::open(&data_dir.join("vault.redb"))?;
    let platform = bkv_hsm_platform::open(platform, !store.has_identity()?)?;
    let identity = store.load_or_create_identity(&*platform)?;
    Ok(identity.statement(&*platform, binary_sha256()?)?)
}

/// Creates the data directory if needed and makes it `0700`: the sealed
/// log, snapshots and identity in it are the node's alone.
fn private_dir(dir: &Path) -> Result<(), NodeStartError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| NodeStartError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// What a request does next, after one step of the core.
enum Next {
    Reply(Vec<u8>),
    ReadFresh,
    Committing(replication::fleet::Submitted),
}

/// A running vault node: the core, and its membership in the fleet.
pub struct Node {
    core: Arc<Mutex<Core>>,
    fleet: Fleet,
    rt: tokio::runtime::Runtime,
    info: NodeInfo,
    id: u64,
    identity: Arc<bkv_hsm_core::NodeIdentity>,
    binary_sha256: [u8; 32],
    pub peer_addr: SocketAddr,
    _lock: DirLock,
}

impl Node {
    /// Opens (or initialises) the node's data directory and joins its fleet.
    pub fn open(cfg: &NodeConfig) -> Result<Self, NodeStartError> {
        private_dir(&cfg.data_dir)?;
        let lock = lock_data_dir(&cfg.data_dir)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("bkv-hsm-raft")
            .build()
            .map_err(NodeStartError::Runtime)?;
        let store = Store::open(&cfg.data_dir.join("vault.redb"))?;
        // Keys are made only with a fresh data directory: otherwise a
        // missing key means the token was lost, and the data is unreadable.
        let platform: SharedPlatform =
            bkv_hsm_platform::open(&cfg.platform, !store.has_identity()?)?;
        let identity = Arc::new(store.load_or_create_identity(&*platform)?);
        let link = LinkIdentity {
            identity: identity.clone(),
            platform: platform.clone(),
        };
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
        let mut founding = false;
        let secrets = match store.load_secrets(&*platform)? {
            Some(s) => s,
            None => match &cfg.start {
                StartMode::Found(trust) => {
                    let s = FleetSecrets::generate(&*platform, trust.clone())?;
                    store.save_secrets(&*platform, &s)?;
                    founding = true;
                    s
                }
                StartMode::Join(members) => {
                    let peers = members
                        .iter()
                        .map(Member::peer)
                        .collect::<Result<Vec<_>, _>>()?;
                    let s = rt.block_on(join_secrets(&link, &peers))?;
                    store.save_secrets(&*platform, &s)?;
                    s
                }
                StartMode::Existing => {
                    return Err(NodeStartError::NoFleet {
                        dir: cfg.data_dir.clone(),
                    })
                }
            },
        };
        let info = NodeInfo {
            fleet_id: secrets.fleet_id().to_owned(),
            noise_public_key: secrets.noise_public_key(),
        };
        let core = Arc::new(Mutex::new(Core::new(platform.clone(), secrets, &identity)?));
        // A joining node has no log yet: until the replicated state names
        // the members, it accepts peer links from the members it joined.
        let bootstrap = match &cfg.start {
            StartMode::Join(members) => members
                .iter()
                .map(|m| m.peer().map(|p| p.identity))
                .collect::<Result<_, _>>()?,
            _ => Default::default(),
        };
        let fleet = rt.block_on(Fleet::start(
            FleetOptions {
                id: cfg.node_id,
                dir: cfg.data_dir.clone(),
                platform,
                identity: link,
                bootstrap,
                snapshot_log_min: replication::fleet::SNAPSHOT_LOG_MIN,
            },
            listener,
            core.clone(),
        ))?;
        // Forming the fleet: on the founder's first start, or when its
        // first start crashed before the fleet was initialized.
        if matches!(cfg.start, StartMode::Found(_)) && (founding || !fleet.initialized()) {
            let advertised = cfg
                .peer_advertise
                .clone()
                .unwrap_or_else(|| peer_addr.to_string());
            rt.block_on(found(&fleet, &core, cfg.node_id, &advertised, &identity))?;
        }
        // The leader keeps the Raft membership in step with the admitted
        // members (repairs a change interrupted by a crash or a new leader).
        let (raft, core2, id) = (fleet.raft.clone(), core.clone(), cfg.node_id);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if raft.current_leader().await != Some(id) {
                    continue;
                }
                let members = match core2.lock() {
                    Ok(c) => c.state().members.clone(),
                    Err(_) => return,
                };
                if let Err(e) = replication::fleet::reconcile(&raft, &members).await {
                    tracing::debug!(error = %e, "membership reconcile");
                }
            }
        });
        Ok(Node {
            core,
            fleet,
            rt,
            info,
            id: cfg.node_id,
            identity,
            binary_sha256: binary_sha256()?,
            peer_addr,
            _lock: lock,
        })
    }

    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The key this fleet's cores sign move tickets with: a successor fleet pins it
    /// (`--predecessor FLEET_ID=KEY` when founding it).
    pub fn move_public_key(&self) -> [u8; 32] {
        self.core().map(|c| c.move_public_key()).unwrap_or_default()
    }

    /// Bounds the session table (see [`bkv_hsm_core::DEFAULT_MAX_SESSIONS`]).
    pub fn set_max_sessions(&self, max: usize) {
        if let Some(mut core) = self.core() {
            core.set_session_limits(max, bkv_hsm_core::DEFAULT_SESSION_IDLE_SECS);
        }
    }

    pub fn fleet_status(&self) -> bkv_wire::node::FleetStatus {
        self.fleet.status()
    }

    /// Answers the metrics listener: `/healthz` (the process serves), `/readyz` (this node sees
    /// a leader with a majority), `/metrics` (Prometheus text).
    pub fn http_answer(&self, path: &str) -> metrics::HttpAnswer {
        match path {
            "/healthz" => metrics::plain(200, "ok\n"),
            "/readyz" if self.fleet.ready() => metrics::plain(200, "ready\n"),
            "/readyz" => metrics::plain(503, "unready: no leader with a majority in sight\n"),
            "/metrics" => {
                let status = self.fleet.status();
                let sessions = self.core().map(|c| c.session_count()).unwrap_or(0);
                metrics::HttpAnswer {
                    status: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: self
                        .fleet
                        .metrics()
                        .render(&status, self.fleet.ready(), sessions),
                }
            }
            _ => metrics::plain(404, "not found\n"),
        }
    }

    fn core(&self) -> Option<std::sync::MutexGuard<'_, Core>> {
        // A poisoned lock means a thread panicked mid-request; stop serving
        // rather than guess.
        self.core.lock().ok()
    }

    /// Handles one request from the frontend (relay link).
    pub fn handle(&self, req: NodeRequest) -> NodeResponse {
        let unavailable = NodeResponse::Error(NodeError::Unavailable);
        match req {
            NodeRequest::Info => NodeResponse::Info(self.info.clone()),
            NodeRequest::FleetStatus => NodeResponse::FleetStatus(self.fleet.status()),
            NodeRequest::Retired(_) => {
                NodeResponse::Error(NodeError::BadRequest("retired request".into()))
            }
            NodeRequest::Health => NodeResponse::Health {
                ready: self.fleet.ready(),
            },
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
            NodeRequest::CheckLogin {
                session_id,
                user_id,
            } => {
                let Some(mut core) = self.core() else {
                    return unavailable;
                };
                match core.session_logged_in(&session_id, &user_id) {
                    Ok(logged_in) => NodeResponse::LoginChecked { logged_in },
                    Err(e) => NodeResponse::Error(e),
                }
            }
            NodeRequest::SessionMessage {
                session_id,
                user_id,
                ciphertext,
            } => {
                let mut next =
                    self.core_step(|core| core.session_message(&session_id, &user_id, &ciphertext));
                loop {
                    match next {
                        Ok(Next::Reply(ciphertext)) => {
                            return NodeResponse::SessionMessage { ciphertext }
                        }
                        Err(e) => return NodeResponse::Error(e),
                        Ok(Next::ReadFresh) => {
                            // What the request reads must be at least as new
                            // as anything committed before it arrived
                            // (linearizable). The core asks only for requests
                            // that read state: the rest read their own
                            // commit's outcome.
                            if let Err(e) = self.rt.block_on(self.fleet.read_barrier()) {
                                tracing::warn!(error = %e, "read barrier failed");
                                return unavailable;
                            }
                            next =
                                self.core_step(|core| core.resume_fresh(&session_id, &ciphertext));
                        }
                        Ok(Next::Committing(submitted)) => {
                            // The core lock is released while the entry commits: every
                            // replica's state machine applies it through the same lock, and
                            // this core keeps the outcome it computed for the session.
                            if let Err(e) = self.rt.block_on(self.fleet.wait(submitted)) {
                                tracing::warn!(error = %e, "commit failed");
                                // The reply will not come: the session ends rather than
                                // wait for a commit forever.
                                if let Some(mut core) = self.core() {
                                    core.commit_failed(&session_id);
                                }
                                return unavailable;
                            }
                            next = self.core_step(|core| core.resume(&session_id));
                        }
                    }
                }
            }
        }
    }

    /// Runs one step of the core under its lock. An entry the core made is handed to the
    /// fleet before the lock is released, so entries reach the log in the order the core
    /// numbered them.
    fn core_step(
        &self,
        f: impl FnOnce(&mut Core) -> Result<Step, NodeError>,
    ) -> Result<Next, NodeError> {
        let mut core = self.core().ok_or(NodeError::Unavailable)?;
        Ok(match f(&mut core)? {
            Step::Reply(r) => Next::Reply(r),
            Step::ReadFresh => Next::ReadFresh,
            Step::Commit(entry) => Next::Committing(self.fleet.submit(entry)),
        })
    }

    fn members_view(&self) -> Result<MembersView, AdminError> {
        let core = self
            .core()
            .ok_or_else(|| AdminError::Unavailable("core lock poisoned".into()))?;
        let members = &core.state().members;
        Ok(MembersView {
            fleet_id: core.fleet_id().to_owned(),
            next_seq: members.admin_seq.saturating_add(1),
            members: members.info(),
            status: self.fleet.status(),
            records: core.live_records(),
        })
    }

    /// Handles one request from the operator (admin link).
    pub fn handle_admin(&self, req: AdminRequest) -> AdminResponse {
        let r = match req {
            AdminRequest::Members => self
                .rt
                .block_on(self.fleet.read_barrier())
                .map_err(|e| AdminError::Unavailable(e.to_string()))
                .and_then(|_| self.members_view())
                .map(AdminResponse::Members),
            AdminRequest::Execute(signed) => self
                .rt
                .block_on(self.execute(signed))
                .map(AdminResponse::Executed),
            AdminRequest::FleetStatement => self
                .core()
                .ok_or_else(|| AdminError::Unavailable("core lock poisoned".into()))
                .and_then(|core| {
                    core.fleet_statement(self.id, &self.identity, self.binary_sha256)
                        .map_err(|e| AdminError::Refused(e.to_string()))
                })
                .map(AdminResponse::FleetStatement),
            _ => Err(AdminError::Malformed("unknown admin request".into())),
        };
        r.unwrap_or_else(AdminResponse::Error)
    }

    /// Verifies, commits and enacts a signed operator command. Every
    /// member's core verifies it again when applying the committed entry;
    /// only then does the leader change the Raft membership to match.
    async fn execute(&self, signed: SignedAdminCommand) -> Result<MembersView, AdminError> {
        let leader = self.fleet.leader().await;
        if leader != Some(self.id) {
            return Err(AdminError::NotLeader { leader });
        }
        self.fleet
            .read_barrier()
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        let submitted = {
            let mut core = self
                .core()
                .ok_or_else(|| AdminError::Unavailable("core lock poisoned".into()))?;
            let entry = core.admin_entry(signed)?;
            self.fleet.submit(entry)
        };
        match self.fleet.wait(submitted).await {
            Ok(Outcome::AdminApplied { seq }) => {
                tracing::info!(seq, "operator command committed");
            }
            Ok(Outcome::AdminRefused(e)) => return Err(e),
            Ok(o) => return Err(AdminError::Refused(format!("unexpected outcome {o:?}"))),
            Err(e) => return Err(AdminError::Unavailable(e.to_string())),
        }
        // The background reconcile may be changing the membership at the
        // same moment; retry until the membership matches.
        let mut last = String::new();
        for _ in 0..50 {
            let members = self
                .core()
                .ok_or_else(|| AdminError::Unavailable("core lock poisoned".into()))?
                .state()
                .members
                .clone();
            match self.fleet.reconcile(&members).await {
                Ok(()) => return self.members_view(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(AdminError::Unavailable(format!(
            "the command committed, but the Raft membership did not follow yet ({last}); \
             the leader keeps retrying"
        )))
    }
}

/// Forms the fleet on its founding node: a one-member Raft membership and
/// the founding member's record (its statement) in the replicated state.
/// Idempotent, so a founder that crashed half-way finishes on restart.
async fn found(
    fleet: &Fleet,
    core: &Mutex<Core>,
    node_id: u64,
    peer_addr: &str,
    identity: &bkv_hsm_core::NodeIdentity,
) -> Result<(), NodeStartError> {
    if !fleet.initialized() {
        let me = PeerNode {
            addr: peer_addr.to_owned(),
            identity: identity.public_key(),
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
        if !core.state().members.nodes.is_empty() {
            return Ok(());
        }
        let entry = core.found_entry(node_id, peer_addr, identity, binary_sha256()?)?;
        fleet.submit(entry)
    };
    match fleet.wait(submitted).await {
        Ok(Outcome::Founded) => Ok(()),
        Ok(o) => Err(NodeStartError::Founding(format!("{o:?}"))),
        Err(e) => Err(e.into()),
    }
}

/// Asks members for the fleet secrets until one answers (the operator may
/// still be admitting this node), then opens them with this node's identity.
async fn join_secrets(
    me: &LinkIdentity,
    peers: &[PeerNode],
) -> Result<FleetSecrets, NodeStartError> {
    let mut tries = 0;
    loop {
        match fetch_secrets(me, peers).await {
            Ok(envelope) => return Ok(me.identity.open_secrets(&envelope)?),
            Err(e) if tries < 60 => {
                tries += 1;
                tracing::info!(error = %e, "waiting to be admitted and sent the fleet secrets");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
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
    bkv_hsm_platform::write_private_file(&path, body.as_bytes()).map_err(|source| {
        NodeStartError::Io {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}
