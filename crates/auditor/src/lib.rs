//! bkv auditor: an independent, append-only log of validation bundles per
//! namespace (RFC 9162 Merkle hashing), with C2SP signed-note checkpoints.
//!
//! Two kinds of entries share one log per namespace: validation bundles and
//! fleet membership records (every node that joins or leaves a fleet).
//! Rules enforced on append: only the namespace's registered operator key may
//! append; bundle epochs strictly increase; a digest is never logged twice;
//! a membership record must be well formed with a valid platform statement;
//! nothing is rewritten or removed. Each append is one fsynced redb
//! transaction, acknowledged only after it committed. HTTP API: `docs/auditor-api.md`.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod config;

mod append;
mod error;
mod log;
mod read;

use append::*;
pub use error::*;
pub use log::*;
use read::*;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;

/// Why the auditor's log could not be opened or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditorError {
    /// The log database failed.
    #[error("database: {0}")]
    Db(String),
    /// A configured namespace names another operator key than the one it was created with.
    #[error("namespace {0:?} is registered with another operator key; refusing to change it")]
    OperatorMismatch(String),
    /// The namespace's name is not allowed.
    #[error("invalid namespace name {0:?} (1-64 chars of [a-z0-9._-])")]
    BadNamespace(String),
    /// A stored entry does not decode.
    #[error("stored entry is corrupt: {0}")]
    Corrupt(String),
}

fn dberr<E: std::fmt::Display>(e: E) -> AuditorError {
    AuditorError::Db(e.to_string())
}

/// Whether `ns` is an allowed namespace name (1 to 64 of `[a-z0-9._-]`).
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// The auditor's API, without `/metrics` (see [`router_with_metrics`]).
pub fn router(a: Arc<Auditor>) -> Router {
    router_with_metrics(a, None)
}

/// The auditor's API; `GET /metrics` renders `metrics` when given (Prometheus text).
pub fn router_with_metrics(
    a: Arc<Auditor>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Router {
    let health = || async { Json(serde_json::json!({"status": "ok"})) };
    let router = Router::new()
        .route("/v1/health", get(health))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { bkv_service::http::metrics_response(m.as_ref()) }
            }),
        )
        .route("/v1/key", get(key_info))
        .route("/v1/logs/{ns}", get(log_info))
        .route("/v1/logs/{ns}/entries", post(append))
        .route("/v1/logs/{ns}/records", post(append_record))
        .route("/v1/logs/{ns}/evidence", post(append_evidence))
        .route("/v1/logs/{ns}/web", post(append_web))
        .route("/v1/logs/{ns}/bundles/latest", get(latest_bundle))
        .route("/v1/logs/{ns}/entries/{index}", get(get_entry))
        .route(
            "/v1/logs/{ns}/entries/{index}/countersignature",
            post(countersign),
        )
        .route("/v1/logs/{ns}/epochs/{epoch}", get(get_by_epoch))
        .route("/v1/logs/{ns}/checkpoint", get(checkpoint))
        .route("/v1/logs/{ns}/proof/inclusion", get(inclusion))
        .route("/v1/logs/{ns}/proof/consistency", get(consistency))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(a);
    bkv_service::http::record_requests(router, "auditor")
}

/// Ready when the log can take an entry (its database commits).
async fn ready(State(a): State<Arc<Auditor>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::task::spawn_blocking(move || a.check_writable()).await {
        Ok(Ok(())) => Json(serde_json::json!({"status": "ready"})).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable", "reason": "the log is not writable"})),
        )
            .into_response(),
    }
}
