//! The relay link (frontends) and the admin link (operator) as TCP servers: length-prefixed
//! frames, one thread per connection, at most [`MAX_CONNECTIONS`] at once, idle connections
//! closed.

use crate::*;
use bkv_wire::admin::{AdminError, AdminRequest, AdminResponse};
use bkv_wire::node::{read_frame, write_frame, NodeError, NodeRequest, NodeResponse};
use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Most connections served at once on each listener.
pub const MAX_CONNECTIONS: usize = 256;
/// A link connection idle this long is closed (`bkv-hsm --idle-timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A listener serving in background threads.
pub struct Server {
    /// The address the listener is bound to (the real port when port 0 was asked for).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Stops accepting connections; connections already open are served until they close.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves the relay link (frontend) of `node` on `listen`.
pub fn serve(node: Arc<Node>, listen: &str, idle: Duration) -> Result<Server, NodeStartError> {
    serve_frames(
        listen,
        idle,
        "bkv-hsm-relay",
        move |req: NodeRequest| node.handle(req),
        |e| NodeResponse::Error(NodeError::BadRequest(e)),
    )
}

/// Serves the admin link (operator) of `node` on `listen`.
pub fn serve_admin(
    node: Arc<Node>,
    listen: &str,
    idle: Duration,
) -> Result<Server, NodeStartError> {
    serve_frames(
        listen,
        idle,
        "bkv-hsm-admin",
        move |req: AdminRequest| node.handle_admin(req),
        |e| AdminResponse::Error(AdminError::Malformed(e)),
    )
}

/// Accept loop: one thread per connection, at most [`MAX_CONNECTIONS`],
/// each answering length-prefixed frames with `handle`.
pub(crate) fn serve_frames<Q, A, H, B>(
    listen: &str,
    idle: Duration,
    name: &str,
    handle: H,
    bad: B,
) -> Result<Server, NodeStartError>
where
    Q: serde::de::DeserializeOwned,
    A: serde::Serialize,
    H: Fn(Q) -> A + Send + Sync + 'static,
    B: Fn(String) -> A + Send + Sync + 'static,
{
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
    let handle = Arc::new(handle);
    let bad = Arc::new(bad);
    let conn_name = format!("{name}-conn");
    std::thread::Builder::new()
        .name(name.into())
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
                let (handle, bad, active) = (handle.clone(), bad.clone(), active.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name(conn_name.clone())
                        .spawn(move || {
                            serve_connection(conn, idle, &*handle, &*bad);
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

pub(crate) fn serve_connection<Q, A>(
    conn: TcpStream,
    idle: Duration,
    handle: &dyn Fn(Q) -> A,
    bad: &dyn Fn(String) -> A,
) where
    Q: serde::de::DeserializeOwned,
    A: serde::Serialize,
{
    let _ = conn.set_read_timeout(Some(idle));
    let _ = conn.set_nodelay(true);
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut writer = write_half;
    loop {
        let req: Q = match read_frame(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "bad frame; closing connection");
                let _ = write_frame(&mut writer, &bad(e.to_string()));
                return;
            }
        };
        let resp = handle(req);
        if write_frame(&mut writer, &resp).is_err() {
            return;
        }
    }
}
