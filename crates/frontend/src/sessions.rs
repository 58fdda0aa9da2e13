//! Vault sessions and fleet information: `POST /v1/sessions`, `POST /v1/sessions/{id}`,
//! `GET /v1/fleet`, `GET /v1/fleet/status`.

use crate::*;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bkv_wire::node::{NodeError, NodeRequest, NodeResponse};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use bkv_api::frontend::FleetInfo;
use bkv_api::frontend::{FleetStatusView, NodeStatusRow, NodeView};

/// Informational only: clients must pin the fleet key from their config (or a
/// verified bundle), never from this answer.
pub(crate) async fn fleet(State(state): State<Arc<AppState>>) -> Result<Json<FleetInfo>, ApiError> {
    for i in 0..state.config.routes.len() {
        if let Ok(NodeResponse::Info(info)) = node_call(&state, i, &NodeRequest::Info).await {
            return Ok(Json(FleetInfo {
                fleet_id: info.fleet_id,
                noise_public_key: bkv_wire::key_to_hex(&info.noise_public_key),
            }));
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "no vault node answered",
    ))
}

/// Each node's view of the replicated fleet (`bkv-admin fleet status`).
pub(crate) async fn fleet_status(State(state): State<Arc<AppState>>) -> Json<FleetStatusView> {
    let mut nodes = Vec::new();
    let mut leader = None;
    let mut term = 0;
    for (i, (fleet_id, addr)) in state.config.routes.snapshot().into_iter().enumerate() {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            node_call(&state, i, &NodeRequest::FleetStatus),
        )
        .await;
        let view = match r {
            Ok(Ok(NodeResponse::FleetStatus(s))) => {
                if s.term >= term {
                    term = s.term;
                    leader = s.leader.or(leader);
                }
                Some(NodeView {
                    node_id: s.node_id,
                    role: s.role,
                    leader: s.leader,
                    term: s.term,
                    last_log_index: s.last_log_index,
                    applied_index: s.applied_index,
                    voters: s.voters,
                    learners: s.learners,
                })
            }
            _ => None,
        };
        nodes.push(NodeStatusRow {
            index: i as u64,
            fleet_id,
            addr: addr.to_string(),
            reachable: view.is_some(),
            view,
        });
    }
    Json(FleetStatusView {
        nodes,
        leader,
        term,
    })
}

pub(crate) async fn open_session(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Open)?;
    let fleet = match headers.get(FLEET_HEADER) {
        Some(v) => v
            .to_str()
            .ok()
            .filter(|f| !f.is_empty() && f.len() <= 64)
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_fleet",
                    "malformed fleet header",
                )
            })?,
        None => state.config.routes.default_fleet().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "no vault node configured",
            )
        })?,
    };
    check_not_retired(&state, &fleet).await?;
    let req = NodeRequest::OpenSession {
        user_id: user.clone(),
        handshake: body.to_vec(),
    };
    let routes = state.config.routes.snapshot();
    if !routes.iter().any(|(f, _)| *f == fleet) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_fleet",
            format!("this frontend serves no fleet {fleet:?}"),
        ));
    }
    let mut last = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "no vault node configured",
    );
    // Start with the node that last opened a session; a dead or stuck node
    // costs at most OPEN_TIMEOUT once, then the next one is preferred.
    let n = routes.len();
    let first = state.preferred.load(std::sync::atomic::Ordering::Relaxed);
    for node in (0..n)
        .map(|k| (first + k) % n.max(1))
        .filter(|i| routes.get(*i).is_some_and(|(f, _)| *f == fleet))
    {
        match node_call_within(&state, node, &req, OPEN_TIMEOUT).await {
            Ok(NodeResponse::SessionOpened {
                session_id,
                handshake,
            }) => {
                state
                    .preferred
                    .store(node, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(user = %user, node, "session opened");
                let mut resp = handshake.into_response();
                let sid = HeaderValue::from_str(&format_session(node, &session_id))
                    .map_err(|_| unexpected())?;
                resp.headers_mut().insert(SESSION_HEADER, sid);
                return Ok(resp);
            }
            // A node whose session table is full (or that has no leader) is not the fleet:
            // another node may open the session.
            Ok(NodeResponse::Error(e @ (NodeError::Unavailable | NodeError::Busy))) => {
                tracing::info!(user = %user, node, error = %e, "session refused; trying another node");
                last = e.into();
            }
            Ok(NodeResponse::Error(e)) => {
                tracing::info!(user = %user, node, error = %e, "session refused");
                return Err(e.into());
            }
            Ok(_) => return Err(unexpected()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

pub(crate) async fn session_message(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let (node, session_id) = parse_session(&id, state.config.routes.len())?;
    let req = NodeRequest::SessionMessage {
        session_id,
        user_id: user.clone(),
        ciphertext: body.to_vec(),
    };
    // A resent request whose first delivery is still committing: ask again
    // until the node has its reply (it never processes it twice).
    let mut resp = node_call(&state, node, &req).await?;
    for _ in 0..100 {
        if !matches!(resp, NodeResponse::Error(NodeError::InProgress)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        resp = node_call(&state, node, &req).await?;
    }
    match resp {
        NodeResponse::SessionMessage { ciphertext } => {
            tracing::debug!(user = %user, node, request_bytes = body.len(), response_bytes = ciphertext.len(), "relayed");
            Ok(ciphertext.into_response())
        }
        NodeResponse::Error(e) => Err(e.into()),
        _ => Err(unexpected()),
    }
}

/// Refuses sessions for a fleet the latest validation bundle no longer
/// lists (retired): clients that pinned it must update. Without a bundle
/// source every configured fleet is served.
pub(crate) async fn check_not_retired(state: &AppState, fleet: &str) -> Result<(), ApiError> {
    if state.config.bundle_source.is_none() {
        return Ok(());
    }
    let cached = state.bundle_fleets.lock().ok().and_then(|c| {
        c.as_ref()
            .filter(|(at, _)| at.elapsed() < BUNDLE_FLEETS_TTL)
            .map(|(_, f)| f.clone())
    });
    let fleets = match cached {
        Some(f) => f,
        None => {
            let entry: serde_json::Value = match auditor_json(state, "/bundles/latest").await {
                Ok(e) => e,
                // No bundle (yet), or the auditor is down: do not block sessions.
                Err(_) => return Ok(()),
            };
            let bytes = entry
                .get("bundle")
                .and_then(|b| b.as_str())
                .and_then(|b| {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.decode(b).ok()
                })
                .unwrap_or_default();
            let Ok(b) = bkv_transparency::bundle::Bundle::decode(&bytes) else {
                return Ok(());
            };
            let f: Vec<String> = b.fleets().into_iter().map(|f| f.fleet_id).collect();
            if let Ok(mut c) = state.bundle_fleets.lock() {
                *c = Some((Instant::now(), f.clone()));
            }
            f
        }
    };
    if fleets.iter().any(|f| f == fleet) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::GONE,
            "fleet_retired",
            format!("fleet {fleet} was retired: update the app"),
        ))
    }
}
