//! The node's side of the core boundary at start: where the core runs ([`CoreMode`]), opening
//! the identity and the fleet secrets through it (the agent stores only their sealed bytes), and
//! small typed wrappers over the requests the node makes (docs/architecture.md "The core's
//! boundary").

use crate::start::NodeStartError;
use crate::store::Store;
use bkv_core_service::client::{unexpected, BoundaryError, CoreHandle, HostHandle};
use bkv_core_service::protocol::{Reply, Request};
use bkv_core_service::service::CoreService;
use bkv_core_service::CoreChild;
use bkv_hsm_core::members::Members;
use bkv_hsm_platform::PlatformConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a node's core runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreMode {
    /// A `bkv-core` process this node starts and stops with itself (the binary at this path):
    /// the node's keys and plain records live only in that process.
    Child(PathBuf),
    /// A core service already listening on this socket (an operator runs `bkv-core`; the node
    /// can then be restarted while the core keeps running).
    Socket(PathBuf),
    /// In this process: one binary, no boundary between host and core (the demo, tests).
    InProcess,
}

impl CoreMode {
    /// A `bkv-core` child from beside this executable.
    pub fn child_beside_this_binary() -> Result<CoreMode, NodeStartError> {
        let exe = std::env::current_exe().map_err(|source| NodeStartError::Io {
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        Ok(CoreMode::Child(exe.with_file_name("bkv-core")))
    }
}

/// The node's core and the host's own operations, and the core service it started, if any.
pub(crate) struct CoreParts {
    pub core: CoreHandle,
    pub host: Arc<HostHandle>,
    pub child: Option<CoreChild>,
    pub identity: [u8; 32],
}

impl CoreParts {
    /// The core service's pid (this process's for an in-process core).
    pub(crate) fn core_pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(CoreChild::pid)
            .unwrap_or_else(std::process::id)
    }
}

/// Reaches the core where `mode` says and opens the node identity (made on a fresh data
/// directory, whose platform keys may then be created).
pub(crate) fn open_core(
    platform: &PlatformConfig,
    mode: &CoreMode,
    store: &Store,
) -> Result<CoreParts, NodeStartError> {
    let sealed = store.sealed_identity()?;
    let fresh = sealed.is_none();
    let (mut core, child, socket) = match mode {
        CoreMode::InProcess => {
            let p = bkv_hsm_platform::open(platform, fresh)?;
            let binary =
                bkv_core_service::own_binary_sha256().map_err(|source| NodeStartError::Io {
                    path: PathBuf::from("/proc/self/exe"),
                    source,
                })?;
            let service = CoreService::new(p, binary);
            (CoreHandle::local(service), None, None)
        }
        CoreMode::Child(bin) => {
            let child =
                CoreChild::start(bin, platform, fresh).map_err(NodeStartError::CoreStart)?;
            let socket = child.socket().to_owned();
            (CoreHandle::remote(&socket)?, Some(child), Some(socket))
        }
        CoreMode::Socket(socket) => (CoreHandle::remote(socket)?, None, Some(socket.clone())),
    };
    let identity = match core.call(Request::OpenIdentity { sealed })? {
        Reply::Identity { public, sealed_new } => {
            if let Some(s) = sealed_new {
                store.save_sealed_identity(&s)?;
            }
            public
        }
        r => return Err(unsealing("node identity", r)),
    };
    let host = match (core.local_service(), socket) {
        (Some(s), _) => HostHandle::Local(
            s.host_service()
                .ok_or(BoundaryError::Unexpected("no identity after opening it"))?,
        ),
        (_, Some(socket)) => HostHandle::remote(&socket)?,
        (_, None) => return Err(BoundaryError::Unexpected("a remote core without a socket").into()),
    };
    Ok(CoreParts {
        core,
        host: Arc::new(host),
        child,
        identity,
    })
}

/// A sealed value the core could not open: the data directory was sealed by another token or
/// key, or was tampered with.
fn unsealing(what: &'static str, r: Reply) -> NodeStartError {
    NodeStartError::Unseal {
        what,
        why: unexpected(r).to_string(),
    }
}

/// What opening the fleet secrets gave: the fleet id and its Noise public key.
pub(crate) struct Opened {
    pub fleet_id: String,
    pub noise_public_key: [u8; 32],
}

/// Opens the fleet secrets the store holds (`LoadSecrets`), or makes or receives them
/// (`FoundSecrets`, `JoinSecrets`) and stores their sealed bytes; then starts the core.
pub(crate) fn open_secrets(
    core: &mut CoreHandle,
    store: &Store,
    req: Request,
) -> Result<(Opened, [u8; 32]), NodeStartError> {
    let opened = match core.call(req)? {
        Reply::Secrets {
            sealed_new,
            fleet_id,
            noise_public_key,
        } => {
            if let Some(s) = sealed_new {
                store.save_sealed_secrets(&s)?;
            }
            Opened {
                fleet_id,
                noise_public_key,
            }
        }
        r => return Err(unsealing("fleet secrets", r)),
    };
    match core.call(Request::StartCore)? {
        Reply::Started { move_public_key } => Ok((opened, move_public_key)),
        r => Err(unexpected(r).into()),
    }
}

/// The members the core's state names.
pub(crate) fn members(core: &mut CoreHandle) -> Result<Members, BoundaryError> {
    match core.call(Request::Members)? {
        Reply::Members(m) => Ok(*m),
        r => Err(unexpected(r)),
    }
}

/// The core's session count and live records.
pub(crate) fn status(core: &mut CoreHandle) -> Result<(u64, u64), BoundaryError> {
    match core.call(Request::Status)? {
        Reply::Status {
            sessions,
            live_records,
        } => Ok((sessions, live_records)),
        r => Err(unexpected(r)),
    }
}

/// A session request's reply as the core's step.
pub(crate) fn step_reply(r: Reply) -> Result<bkv_hsm_core::Step, bkv_wire::node::NodeError> {
    match r {
        Reply::Step(s) => s,
        r => {
            tracing::warn!(error = %unexpected(r), "core session request");
            Err(bkv_wire::node::NodeError::Unavailable)
        }
    }
}

/// A session request that did not cross the boundary.
pub(crate) fn step_failed(e: BoundaryError) -> bkv_wire::node::NodeError {
    tracing::warn!(error = %e, "core session request");
    bkv_wire::node::NodeError::Unavailable
}
