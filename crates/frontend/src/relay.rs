//! The relay link to the vault nodes: one framed request, on a parked connection when one is
//! fresh, resent once on a new one; session ids name the node that holds them.

use crate::*;
use axum::http::StatusCode;
use bkv_wire::node::{NodeRequest, NodeResponse, SessionId};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Session ids given to clients: `<node index>.<hex of the node's session id>`,
/// so the frontend routes without keeping session state.
pub(crate) fn format_session(node: usize, id: &SessionId) -> String {
    format!("{node}.{}", hex::encode(id))
}

pub(crate) fn parse_session(s: &str, routes: usize) -> Result<(usize, SessionId), ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_session_id",
            "malformed session id",
        )
    };
    let (n, h) = s.split_once('.').ok_or_else(bad)?;
    let n: usize = n.parse().map_err(|_| bad())?;
    if n >= routes || h.len() != 32 {
        return Err(bad());
    }
    let id: SessionId = hex::decode(h)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(bad)?;
    Ok((n, id))
}

pub(crate) async fn node_call(
    state: &AppState,
    node: usize,
    req: &NodeRequest,
) -> Result<NodeResponse, ApiError> {
    node_call_within(state, node, req, NODE_TIMEOUT).await
}

pub(crate) async fn node_call_within(
    state: &AppState,
    node: usize,
    req: &NodeRequest,
    limit: Duration,
) -> Result<NodeResponse, ApiError> {
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "vault node unreachable",
        )
    };
    let (_, addr) = state.config.routes.get(node).ok_or_else(unavailable)?;
    let body = bkv_wire::encode(req);
    let len = u32::try_from(body.len()).map_err(|_| unavailable())?;
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(&body);

    // A parked connection may have been closed by the node (restart, idle
    // timeout) at any moment. Resending is safe: the node answers a resent
    // session message from its record of the last reply instead of
    // processing it twice (and the other requests are idempotent or
    // harmless to repeat), so a failure on a parked connection is retried
    // once on a fresh one.
    let mut parked = take_parked(state, addr);
    for _ in 0..2 {
        let (mut conn, was_parked) = match parked.take() {
            Some(c) => (c, true),
            None => match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
                Ok(Ok(c)) => {
                    let _ = c.set_nodelay(true);
                    (c, false)
                }
                _ => return Err(unavailable()),
            },
        };
        match tokio::time::timeout(limit, roundtrip(&mut conn, &frame)).await {
            Ok(Some(resp)) => {
                if let Ok(mut p) = state.pools.lock() {
                    let v = p.entry(addr).or_default();
                    if v.len() < 32 {
                        v.push((conn, Instant::now()));
                    }
                }
                return Ok(resp);
            }
            Ok(None) if was_parked => continue,
            _ => return Err(unavailable()),
        }
    }
    Err(unavailable())
}

/// Connections parked longer than this are dropped rather than reused
/// (well below the node's idle timeout).
pub(crate) const MAX_PARKED: Duration = Duration::from_secs(20);

/// A parked connection to `addr` that is still open, if any.
pub(crate) fn take_parked(state: &AppState, addr: SocketAddr) -> Option<TcpStream> {
    let mut pools = state.pools.lock().ok()?;
    let v = pools.get_mut(&addr)?;
    while let Some((conn, parked_at)) = v.pop() {
        if parked_at.elapsed() > MAX_PARKED {
            continue;
        }
        // An open, quiet connection has nothing to read; a closed one reads
        // end-of-file at once.
        let mut probe = [0u8; 1];
        match conn.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(conn),
            _ => continue,
        }
    }
    None
}

/// One request/response exchange; `None` on any failure (the caller decides
/// whether resending is safe).
pub(crate) async fn roundtrip(conn: &mut TcpStream, frame: &[u8]) -> Option<NodeResponse> {
    conn.write_all(frame).await.ok()?;
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len > bkv_wire::MAX_NODE_FRAME {
        return None;
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await.ok()?;
    bkv_wire::decode(&body, bkv_wire::MAX_NODE_FRAME).ok()
}
