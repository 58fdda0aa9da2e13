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
//! This crate is the **host agent**: it holds no key and no plain record. The
//! core (fleet secrets, identity key, records) runs in a core service
//! (`bkv-core`, crate `bkv-core-service`) that the node starts as a child or
//! reaches on a socket ([`CoreMode`]), or, for a single-binary node, in this
//! process; either way every call crosses the same request protocol
//! (`core_link`, docs/architecture.md "The core's boundary").

#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]
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

mod alive;
mod config;
mod core_link;
mod metrics;
mod records;
pub mod replication;
mod store;

mod links;
mod opened;
mod start;
// The node's surface: starting a node (its config file and start parameters), serving its
// listeners, and the storage and replication pieces tests and benches build fleets from.
pub use config::{
    FleetStart, NodeCoreFile, NodeFile, NodeLimits, NodeListen, NodePlatformFile, PlatformChoice,
};
pub use core_link::CoreMode;
pub use links::{serve, serve_admin, Server, DEFAULT_IDLE_TIMEOUT, MAX_CONNECTIONS};
pub use metrics::{serve_http, HttpAnswer, NodeMetrics};
pub use records::{InFlight, RecordTable, RecordTableError, Replacement, TableHost, TableView};
use start::{found, join_secrets, lock_data_dir, private_dir, DirLock};
pub use start::{parse_predecessor, Member, NodeConfig, NodeStartError, StartMode};
pub use store::{Store, StoreError};

use bkv_core_service::client::{unexpected, CoreHandle};
use bkv_core_service::protocol::{Reply, Request};
use bkv_core_service::CoreChild;
use bkv_hsm_core::{Outcome, Step};
use bkv_hsm_platform::PlatformConfig;
use bkv_wire::admin::{AdminError, AdminRequest, AdminResponse, MembersView, SignedAdminCommand};
use bkv_wire::node::{NodeError, NodeInfo, NodeRequest, NodeResponse};
use replication::fleet::{Fleet, FleetOptions};
use replication::network::LinkIdentity;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Opens the data directory and the core far enough to know the node's identity (creating
/// platform keys and identity on a fresh directory) and returns its signed platform statement,
/// which names the binary the core runs in (the core service's, for a node with one).
pub fn platform_statement(
    data_dir: &Path,
    platform: &PlatformConfig,
    mode: &CoreMode,
) -> Result<bkv_wire::admin::SignedStatement, NodeStartError> {
    private_dir(data_dir)?;
    let _lock = lock_data_dir(data_dir)?;
    let store = Store::open(&data_dir.join("vault.redb"))?;
    let mut parts = core_link::open_core(platform, mode, &store)?;
    match parts.core.call(Request::Statement)? {
        Reply::Statement(s) => Ok(s),
        r => Err(unexpected(r).into()),
    }
}

/// What a request does next, after one step of the core.
enum Next {
    Reply(Vec<u8>),
    ReadFresh,
    /// The entry is on its way to the log: its sequence number names the reply its `Apply`
    /// may bring (`replication::Released`).
    Committing(replication::fleet::Submitted, u64),
}

/// A running vault node: the core, and its membership in the fleet.
pub struct Node {
    core: Arc<Mutex<CoreHandle>>,
    fleet: Fleet,
    rt: tokio::runtime::Runtime,
    info: NodeInfo,
    id: u64,
    move_key: [u8; 32],
    core_pid: u32,
    /// The address the peer link is bound to (the real port when `peer_listen` asked for port 0).
    pub peer_addr: SocketAddr,
    _lock: DirLock,
    /// Sessions opened here that sent no request yet (`opened`).
    opened: opened::Opened,
    /// Dropped last: the core service outlives everything that calls it.
    _child: Option<CoreChild>,
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
        let parts = core_link::open_core(&cfg.platform, &cfg.core, &store)?;
        let core_pid = parts.core_pid();
        let core_link::CoreParts {
            mut core,
            host,
            child,
            identity,
        } = parts;
        let link = LinkIdentity {
            public: identity,
            host: host.clone(),
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
        let req = match store.sealed_secrets()? {
            Some(sealed) => Request::LoadSecrets { sealed },
            None => match &cfg.start {
                StartMode::Found(trust) => {
                    founding = true;
                    Request::FoundSecrets {
                        trust: trust.clone(),
                    }
                }
                StartMode::Join(members) => {
                    let peers = members
                        .iter()
                        .map(Member::peer)
                        .collect::<Result<Vec<_>, _>>()?;
                    let envelope = rt.block_on(join_secrets(&link, &peers))?;
                    Request::JoinSecrets { envelope }
                }
                StartMode::Existing => {
                    return Err(NodeStartError::NoFleet {
                        dir: cfg.data_dir.clone(),
                    })
                }
            },
        };
        let (opened, move_key) = core_link::open_secrets(&mut core, &store, req)?;
        let info = NodeInfo {
            fleet_id: opened.fleet_id,
            noise_public_key: opened.noise_public_key,
        };
        let core = Arc::new(Mutex::new(core));
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
                platform: host,
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
            rt.block_on(found(&fleet, &core, cfg.node_id, &advertised, identity))?;
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
                    Ok(mut c) => match core_link::members(&mut c) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::debug!(error = %e, "membership reconcile");
                            continue;
                        }
                    },
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
            move_key,
            core_pid,
            peer_addr,
            _lock: lock,
            opened: opened::Opened::default(),
            _child: child,
        })
    }

    /// The process the core runs in (this one for an in-process core).
    pub fn core_pid(&self) -> u32 {
        self.core_pid
    }

    /// The fleet id and the Noise public key this node serves (what clients pin).
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The key this fleet's cores sign move tickets with: a successor fleet pins it
    /// (`--predecessor FLEET_ID=KEY` when founding it).
    pub fn move_public_key(&self) -> [u8; 32] {
        self.move_key
    }

    /// Bounds the session table (see [`bkv_hsm_core::DEFAULT_MAX_SESSIONS`]).
    pub fn set_max_sessions(&self, max: usize) {
        if let Some(mut core) = self.core() {
            let req = Request::SetSessionLimits {
                max_sessions: max as u64,
                idle_secs: bkv_hsm_core::DEFAULT_SESSION_IDLE_SECS,
            };
            if let Err(e) = core.call(req) {
                tracing::warn!(error = %e, "setting the session limit");
            }
        }
    }

    /// This node's view of the fleet: role, leader, term, log and applied index, voters, learners.
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
                let sessions = self
                    .core()
                    .and_then(|mut c| core_link::status(&mut c).ok())
                    .map(|(sessions, _)| sessions as usize)
                    .unwrap_or(0);
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

    /// One request to the core, the lock held only while it is sent (as in `core_step`), for
    /// requests that carry no entry.
    fn core_call(&self, req: Request) -> Result<Reply, NodeError> {
        Ok(self.core_answer(req)?.0)
    }

    /// Sends `req` under the core lock, then waits for its answer without it.
    fn core_answer(&self, req: Request) -> Result<bkv_core_service::pipe::Answer, NodeError> {
        let sent = self
            .core()
            .ok_or(NodeError::Unavailable)?
            .send(req)
            .map_err(core_link::step_failed)?;
        sent.wait().map_err(core_link::step_failed)
    }

    fn core(&self) -> Option<std::sync::MutexGuard<'_, CoreHandle>> {
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
                match self.core_call(Request::OpenSession { user_id, handshake }) {
                    Ok(Reply::SessionOpened(Ok((session_id, handshake)))) => {
                        self.opened.add(session_id);
                        NodeResponse::SessionOpened {
                            session_id,
                            handshake,
                        }
                    }
                    Ok(Reply::SessionOpened(Err(e))) => NodeResponse::Error(e),
                    _ => unavailable,
                }
            }
            NodeRequest::CheckLogin {
                session_id,
                user_id,
            } => {
                match self.core_call(Request::CheckLogin {
                    session_id,
                    user_id,
                }) {
                    Ok(Reply::LoggedIn(Ok(logged_in))) => NodeResponse::LoginChecked { logged_in },
                    Ok(Reply::LoggedIn(Err(e))) => NodeResponse::Error(e),
                    _ => unavailable,
                }
            }
            NodeRequest::SessionMessage {
                session_id,
                user_id,
                ciphertext,
            } => {
                // A session's first request reads state (a login's or registration's start):
                // the read barrier runs before the core sees it, which spares the core's
                // `ReadFresh` round trip (BENCHMARKS.md, "Issue 28, item 4").
                let fresh = self.opened.take(&session_id);
                if fresh {
                    if let Err(e) = self.rt.block_on(self.fleet.read_barrier()) {
                        tracing::warn!(error = %e, "read barrier failed");
                        return unavailable;
                    }
                }
                let mut next = self.core_step(Request::SessionMessage {
                    session_id,
                    user_id,
                    ciphertext: ciphertext.clone(),
                    fresh,
                });
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
                            next = self.core_step(Request::ResumeFresh {
                                session_id,
                                ciphertext: ciphertext.clone(),
                            });
                        }
                        Ok(Next::Committing(submitted, seq)) => {
                            // The core lock is released while the entry commits: every
                            // replica's state machine applies it through the same lock, and
                            // this core keeps the outcome it computed for the session.
                            if let Err(e) = self.rt.block_on(self.fleet.wait(submitted)) {
                                tracing::warn!(error = %e, "commit failed");
                                // The reply will not come: the session ends rather than
                                // wait for a commit forever.
                                let _ = self.core_call(Request::CommitFailed { session_id });
                                return unavailable;
                            }
                            // The batch that applied the entry brought the reply along
                            // (`Core::release_ready`); only without it is the core asked.
                            next = match self.fleet.released.take(&session_id, seq) {
                                Some(reply) => reply.map(Next::Reply),
                                None => self.core_step(Request::Resume { session_id }),
                            };
                        }
                    }
                }
            }
        }
    }

    /// Runs one step of the core. The core lock is held only while the request is sent, so
    /// requests of other sessions queue up behind it at the core instead of behind the lock
    /// (`bkv_core_service::pipe`). An entry the core made is handed to the fleet within its
    /// turn, so entries reach the log in the order the core numbered them.
    fn core_step(&self, req: Request) -> Result<Next, NodeError> {
        let (reply, turn) = self.core_answer(req)?;
        Ok(match core_link::step_reply(reply)? {
            Step::Reply(r) => Next::Reply(r),
            Step::ReadFresh => Next::ReadFresh,
            Step::Commit(entry) => {
                let seq = entry.seq;
                let mut turn = turn;
                if let Some(t) = turn.as_mut() {
                    t.reach();
                }
                let submitted = self.fleet.submit(entry);
                drop(turn);
                Next::Committing(submitted, seq)
            }
        })
    }

    fn members_view(&self) -> Result<MembersView, AdminError> {
        let mut core = self
            .core()
            .ok_or_else(|| AdminError::Unavailable("core lock poisoned".into()))?;
        let unavailable =
            |e: bkv_core_service::client::BoundaryError| AdminError::Unavailable(e.to_string());
        let members = core_link::members(&mut core).map_err(unavailable)?;
        let (_, records) = core_link::status(&mut core).map_err(unavailable)?;
        Ok(MembersView {
            fleet_id: self.info.fleet_id.clone(),
            next_seq: members.admin_seq.saturating_add(1),
            members: members.info(),
            status: self.fleet.status(),
            records,
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
                .and_then(|mut core| {
                    match core.call(Request::FleetStatement { node_id: self.id }) {
                        Ok(Reply::FleetStatement(s)) => Ok(s),
                        Ok(r) => Err(AdminError::Refused(unexpected(r).to_string())),
                        Err(e) => Err(AdminError::Unavailable(e.to_string())),
                    }
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
            // The entry goes to the log within its turn (`core_step`).
            let (entry, mut turn) = match core.call_ordered(Request::AdminEntry(signed)) {
                Ok((Reply::AdminEntry(e), turn)) => (e?, turn),
                Ok((r, _)) => return Err(AdminError::Unavailable(unexpected(r).to_string())),
                Err(e) => return Err(AdminError::Unavailable(e.to_string())),
            };
            if let Some(t) = turn.as_mut() {
                t.reach();
            }
            let submitted = self.fleet.submit(entry);
            drop(turn);
            submitted
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
            let members = {
                let mut core = self
                    .core()
                    .ok_or_else(|| AdminError::Unavailable("core lock poisoned".into()))?;
                core_link::members(&mut core).map_err(|e| AdminError::Unavailable(e.to_string()))?
            };
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
