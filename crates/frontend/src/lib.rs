//! bkv frontend: the untrusted relay between clients and HSM nodes.
//!
//! It authenticates the app user (a JWT from the app's identity provider), rate-limits, and relays opaque
//! Noise messages to a node. It never holds a key that could open them: it
//! sees ciphertext, sizes, timing and user ids only. HTTP API: `docs/api.md`.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod config;
pub mod passkeys;
pub mod token;

mod auth;
mod bundle;
mod error;
mod limits;
mod passkey_routes;
mod relay;
mod sessions;

use auth::*;
pub use auth::{DevTokenRequest, DevTokenResponse};
use bundle::*;
use error::*;
pub use error::{ApiError, ErrorBody};
use limits::*;
use passkey_routes::*;
use relay::*;
pub use sessions::FleetInfo;
use sessions::*;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bkv_wire::node::{NodeRequest, NodeResponse};
use bkv_wire::MAX_NOISE_MESSAGE;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Header carrying the session id of `POST /v1/sessions`.
pub const SESSION_HEADER: &str = "bkv-session";
/// Audience every token must carry unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "bkv";
/// Time allowed for one node round trip.
const NODE_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for a node to open a session before the next node is tried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// Header carrying a passkey grant (`DELETE /v1/passkeys…`).
pub const GRANT_HEADER: &str = "bkv-grant";

/// What one client address, one user and everyone together may use. Every
/// bounded resource is bounded per user and per address as well as
/// globally, so a flood from many accounts or one address only uses up its
/// own share (the nodes bound sessions per user the same way).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a client has to send a request's headers, which is also how
    /// long a kept-alive connection may sit idle.
    pub idle_timeout: Duration,
    /// Time for a whole request (body and answer).
    pub request_timeout: Duration,
    /// Client connections served at once (all addresses; more wait in the
    /// kernel's accept queue).
    pub max_connections: usize,
    /// Client connections one address may hold.
    pub max_connections_per_address: usize,
    /// Requests per second (and burst) from one address.
    pub address_rate: (u32, u32),
    /// Session opens and passkey ceremonies per second (and burst) from one
    /// address.
    pub address_open_rate: (u32, u32),
    /// Session opens and passkey ceremonies per second (and burst) per user.
    pub user_open_rate: (u32, u32),
    /// Messages inside sessions per second (and burst) per user: generous, so
    /// that a login the vault already counted is not cut off half-way (an
    /// unfinished login still spends a guess).
    pub user_message_rate: (u32, u32),
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_address: 256,
            address_rate: (2000, 4000),
            address_open_rate: (500, 1000),
            user_open_rate: (10, 30),
            user_message_rate: (150, 300),
        }
    }
}

/// What the frontend serves, and how.
pub struct FrontendConfig {
    /// The fleets' node addresses (relay links), preferred fleet first.
    /// Shared so a deployment can add a fleet or a node while serving.
    pub routes: Routes,
    /// The keys and policy user tokens are verified with.
    pub tokens: Arc<token::Verifier>,
    /// Development only: lets `POST /v1/dev/token` mint tokens for any user.
    pub dev_token_key: Option<SigningKey>,
    /// Where `GET /v1/bundle` gets the fleet's validation bundle ("over the air").
    pub bundle_source: Option<BundleSource>,
    /// WebAuthn relying party for passkey protectors (`/v1/passkeys`).
    pub passkeys: Option<Arc<passkeys::RelyingParty>>,
    /// Per-user and per-address limits.
    pub limits: Limits,
    /// Serves `GET /metrics` (Prometheus text) from this recorder when set.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// One fleet's nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetRoute {
    /// The fleet's id.
    pub fleet_id: String,
    /// Its nodes' relay addresses.
    pub nodes: Vec<SocketAddr>,
}

/// Where sessions go: every (fleet, node) the frontend has learned, in an
/// append-only list whose index is part of session ids (so a session keeps
/// its node while routes grow).
#[derive(Clone, Default)]
pub struct Routes(Arc<std::sync::RwLock<Vec<(String, SocketAddr)>>>);

impl Routes {
    /// The routes of `fleets`.
    pub fn new(fleets: &[FleetRoute]) -> Self {
        let r = Routes::default();
        r.learn(fleets);
        r
    }

    /// Adds every (fleet, node) not known yet; never removes one.
    pub fn learn(&self, fleets: &[FleetRoute]) {
        if let Ok(mut v) = self.0.write() {
            for f in fleets {
                for a in &f.nodes {
                    if !v.iter().any(|(id, x)| id == &f.fleet_id && x == a) {
                        v.push((f.fleet_id.clone(), *a));
                    }
                }
            }
        }
    }

    fn snapshot(&self) -> Vec<(String, SocketAddr)> {
        self.0.read().map(|v| v.clone()).unwrap_or_default()
    }

    fn get(&self, i: usize) -> Option<(String, SocketAddr)> {
        self.0.read().ok().and_then(|v| v.get(i).cloned())
    }

    fn len(&self) -> usize {
        self.0.read().map(|v| v.len()).unwrap_or(0)
    }

    /// The fleet sessions go to when a client names none: the first learned.
    fn default_fleet(&self) -> Option<String> {
        self.0
            .read()
            .ok()
            .and_then(|v| v.first().map(|(f, _)| f.clone()))
    }
}

/// The auditor log the frontend serves the current bundle from.
#[derive(Debug, Clone)]
pub struct BundleSource {
    /// The auditor's base URL.
    pub auditor_url: String,
    /// The namespace the fleet's bundles are logged in.
    pub namespace: String,
    /// The only CA (PEM) trusted for the auditor's HTTPS certificate, if set.
    pub auditor_ca_pem: Option<Vec<u8>>,
}

struct AppState {
    config: FrontendConfig,
    http: reqwest::Client,
    /// Idle connections per node address, with when they were parked.
    pools: Mutex<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
    rates: RateLimits,
    /// Route index of the node that last opened a session.
    preferred: std::sync::atomic::AtomicUsize,
    /// Fleets of the latest bundle, and when they were fetched.
    bundle_fleets: Mutex<Option<(Instant, Vec<String>)>>,
    /// The proofs of the latest bundle's previous fleets, for (bundle index, checkpoint size).
    previous_proofs: Mutex<Option<PreviousProofs>>,
}

/// Proofs of a bundle's previous fleets, for (bundle index, checkpoint size).
type PreviousProofs = ((u64, u64), Vec<bkv_transparency::bundle::EarlierBundle>);

/// Header naming the fleet a session is for (`POST /v1/sessions`).
pub const FLEET_HEADER: &str = "bkv-fleet";
/// How long the frontend reuses the latest bundle's fleet list.
const BUNDLE_FLEETS_TTL: Duration = Duration::from_secs(1);

/// The frontend's HTTP routes (docs/api.md), serving `config`.
pub fn router(config: FrontendConfig) -> Router {
    let pools = Mutex::new(HashMap::new());
    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
    // (Checked when the config was read.)
    let ca = config
        .bundle_source
        .as_ref()
        .and_then(|b| b.auditor_ca_pem.as_deref())
        .and_then(|pem| reqwest::Certificate::from_pem(pem).ok());
    if let Some(ca) = ca {
        http = http.tls_built_in_root_certs(false).add_root_certificate(ca);
    }
    let http = http.build().unwrap_or_default();
    let state = Arc::new(AppState {
        rates: RateLimits::new(&config.limits),
        config,
        http,
        pools,
        preferred: std::sync::atomic::AtomicUsize::new(0),
        bundle_fleets: Mutex::new(None),
        previous_proofs: Mutex::new(None),
    });
    let router = Router::new()
        .route("/v1/health", get(health))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/v1/fleet", get(fleet))
        .route("/v1/fleet/status", get(fleet_status))
        .route("/v1/bundle", get(bundle))
        .route("/v1/sessions", post(open_session))
        .route("/v1/sessions/{id}", post(session_message))
        .route("/v1/dev/token", post(dev_token))
        .route(
            "/v1/passkeys",
            get(passkeys_list).delete(passkeys_delete_all),
        )
        .route("/v1/passkeys/{id}", axum::routing::delete(passkeys_delete))
        .route("/v1/passkeys/registrations", post(passkeys_register_start))
        .route(
            "/v1/passkeys/registrations/{ceremony}",
            post(passkeys_register_finish),
        )
        .route("/v1/passkeys/grants", post(passkeys_grant))
        .route("/v1/passkeys/assertions", post(passkeys_assert_start))
        .route(
            "/v1/passkeys/assertions/{ceremony}",
            post(passkeys_assert_finish),
        )
        .layer(DefaultBodyLimit::max(MAX_NOISE_MESSAGE))
        .route("/metrics", get(metrics_text))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_address,
        ))
        .with_state(state);
    // Outermost, so rate-limited requests are counted too.
    bkv_service::http::record_requests(router, "frontend")
}

/// Serves the frontend on `listener` until `shutdown` resolves: HTTP/1.1
/// with a header-read (and keep-alive idle) timeout, a whole-request
/// timeout, and connection caps per address and overall.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: FrontendConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(listener, config, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given (the handshake must finish within the idle timeout).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: FrontendConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let l = &config.limits;
    let options = bkv_service::http::Options {
        service: "frontend",
        tls,
        idle_timeout: l.idle_timeout,
        request_timeout: l.request_timeout,
        max_connections: l.max_connections,
        max_connections_per_address: l.max_connections_per_address,
    };
    bkv_service::http::serve(listener, router(config), options, shutdown).await
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    bkv_service::http::metrics_response(state.config.metrics.as_ref())
}

/// Creates `path` readable and writable by its owner only (or narrows an
/// existing file to that), before a library opens it.
pub(crate) fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when a node answers and knows its fleet's leader (so it can commit).
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let ask = |i: usize, req: NodeRequest| {
        let state = state.clone();
        async move { tokio::time::timeout(Duration::from_secs(1), node_call(&state, i, &req)).await }
    };
    for i in 0..state.config.routes.len() {
        let ready = match ask(i, NodeRequest::Health).await {
            // The node sees a leader that a majority acknowledges.
            Ok(Ok(NodeResponse::Health { ready })) => ready,
            Err(_) => false,
            // A node of the previous release does not know `Health`: whether it knows a leader.
            Ok(_) => matches!(
                ask(i, NodeRequest::FleetStatus).await,
                Ok(Ok(NodeResponse::FleetStatus(s))) if s.leader.is_some()
            ),
        };
        if ready {
            return Json(serde_json::json!({ "status": "ready" })).into_response();
        }
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "status": "unavailable", "reason": "no node answered that it sees a leader with a majority" })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_roundtrip_and_reject_garbage() {
        let id = [9u8; 16];
        let s = format_session(1, &id);
        assert_eq!(parse_session(&s, 2).unwrap(), (1, id));
        for bad in [
            "",
            "1",
            "5.00",
            "x.00112233445566778899aabbccddeeff",
            "2.00112233445566778899aabbccddeeff",
            "0.zz112233445566778899aabbccddeeff",
        ] {
            assert!(parse_session(bad, 2).is_err(), "{bad}");
        }
    }
}
