//! bkv frontend: the untrusted relay between clients and HSM nodes.
//!
//! It authenticates the app user (Ed25519 JWT), rate-limits, and relays opaque
//! Noise messages to a node. It never holds a key that could open them: it
//! sees ciphertext, sizes, timing and user ids only. HTTP API: `docs/api.md`.

pub mod config;
pub mod passkeys;
pub mod token;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bkv_wire::node::{NodeError, NodeRequest, NodeResponse, SessionId};
use bkv_wire::MAX_NOISE_MESSAGE;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    pub limits: Limits,
    /// Serves `GET /metrics` (Prometheus text) from this recorder when set.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// One fleet's nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetRoute {
    pub fleet_id: String,
    pub nodes: Vec<SocketAddr>,
}

/// Where sessions go: every (fleet, node) the frontend has learned, in an
/// append-only list whose index is part of session ids (so a session keeps
/// its node while routes grow).
#[derive(Clone, Default)]
pub struct Routes(Arc<std::sync::RwLock<Vec<(String, SocketAddr)>>>);

impl Routes {
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
    pub auditor_url: String,
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
}

/// Header naming the fleet a session is for (`POST /v1/sessions`).
pub const FLEET_HEADER: &str = "bkv-fleet";
/// How long the frontend reuses the latest bundle's fleet list.
const BUNDLE_FLEETS_TTL: Duration = Duration::from_secs(1);

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

use bkv_service::http::address_key;

type KeyedLimiter<K> = governor::DefaultKeyedRateLimiter<K>;

/// Token buckets (`governor`) per user and per client address.
struct RateLimits {
    address: KeyedLimiter<std::net::IpAddr>,
    address_opens: KeyedLimiter<std::net::IpAddr>,
    user_opens: KeyedLimiter<String>,
    user_messages: KeyedLimiter<String>,
    /// Checks since the tables were last pruned of idle keys.
    checks: std::sync::atomic::AtomicU64,
}

fn quota((per_sec, burst): (u32, u32)) -> governor::Quota {
    let nz = |n: u32| std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    governor::Quota::per_second(nz(per_sec)).allow_burst(nz(burst))
}

impl RateLimits {
    fn new(l: &Limits) -> Self {
        RateLimits {
            address: governor::RateLimiter::keyed(quota(l.address_rate)),
            address_opens: governor::RateLimiter::keyed(quota(l.address_open_rate)),
            user_opens: governor::RateLimiter::keyed(quota(l.user_open_rate)),
            user_messages: governor::RateLimiter::keyed(quota(l.user_message_rate)),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Forgets keys whose buckets are full again, every so many checks, so
    /// the tables stay as large as the set of recently active keys.
    fn prune(&self) {
        if self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(10_000)
        {
            for l in [&self.address, &self.address_opens] {
                l.retain_recent();
                l.shrink_to_fit();
            }
            for l in [&self.user_opens, &self.user_messages] {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }
}

fn rate_limited(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests {what}; slow down"),
    )
}

/// The client address of a request (unspecified when served without one,
/// as in-process tests do).
fn client_address(req_ext: &axum::http::Extensions) -> std::net::IpAddr {
    req_ext
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| address_key(c.0.ip()))
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    bkv_service::http::metrics_response(state.config.metrics.as_ref())
}

/// Every request counts against its address's budget; session opens and
/// passkey ceremonies also against the address's budget for those.
async fn limit_address(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let address = client_address(req.extensions());
    state.rates.prune();
    if state.rates.address.check_key(&address).is_err() {
        return rate_limited("from this address").into_response();
    }
    let opens = req.method() == axum::http::Method::POST
        && matches!(
            req.uri().path(),
            "/v1/sessions" | "/v1/passkeys/registrations" | "/v1/passkeys/assertions"
        );
    if opens && state.rates.address_opens.check_key(&address).is_err() {
        return rate_limited("opening sessions from this address").into_response();
    }
    next.run(req).await
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.into(),
            message: self.message,
        };
        let mut resp = (self.status, Json(body)).into_response();
        // RFC 6750: a refused bearer token says so in a challenge.
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(
                    "Bearer realm=\"bkv\", error=\"invalid_token\"",
                ),
            );
        }
        resp
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let (status, code) = match &e {
            NodeError::UnknownSession => (StatusCode::NOT_FOUND, "unknown_session"),
            // The token is valid but names another user than the session (or the encrypted
            // hello): not a credential for this request, so 401 like any other refused token.
            NodeError::WrongUser => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "wrong_user",
                    "the token was issued for another user than this session's",
                )
            }
            NodeError::Handshake => (StatusCode::BAD_REQUEST, "handshake_failed"),
            NodeError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            NodeError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            NodeError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            NodeError::InProgress => (StatusCode::SERVICE_UNAVAILABLE, "in_progress"),
        };
        ApiError::new(status, code, e.to_string())
    }
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

#[derive(Clone, Copy)]
enum Budget {
    Open,
    Message,
}

fn authenticate(state: &AppState, headers: &HeaderMap, budget: Budget) -> Result<String, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("Authorization must be a Bearer token"))?;
    let claims = state
        .config
        .tokens
        .verify(now_secs(), token)
        .map_err(|e| unauthorized(&e.to_string()))?;
    rate_limit(state, &claims.sub, budget)?;
    Ok(claims.sub)
}

fn rate_limit(state: &AppState, user: &str, budget: Budget) -> Result<(), ApiError> {
    let (limiter, what) = match budget {
        Budget::Open => (&state.rates.user_opens, "opening sessions for this user"),
        Budget::Message => (&state.rates.user_messages, "for this user"),
    };
    // Keyed by the verified user id: `sub` is short (validated length).
    limiter
        .check_key(&user.to_owned())
        .map_err(|_| rate_limited(what))
}

/// Session ids given to clients: `<node index>.<hex of the node's session id>`,
/// so the frontend routes without keeping session state.
fn format_session(node: usize, id: &SessionId) -> String {
    format!("{node}.{}", hex::encode(id))
}

fn parse_session(s: &str, routes: usize) -> Result<(usize, SessionId), ApiError> {
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

async fn node_call(
    state: &AppState,
    node: usize,
    req: &NodeRequest,
) -> Result<NodeResponse, ApiError> {
    node_call_within(state, node, req, NODE_TIMEOUT).await
}

async fn node_call_within(
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
const MAX_PARKED: Duration = Duration::from_secs(20);

/// A parked connection to `addr` that is still open, if any.
fn take_parked(state: &AppState, addr: SocketAddr) -> Option<TcpStream> {
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
async fn roundtrip(conn: &mut TcpStream, frame: &[u8]) -> Option<NodeResponse> {
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

#[derive(Debug, Serialize, Deserialize)]
pub struct FleetInfo {
    pub fleet_id: String,
    pub noise_public_key: String,
}

/// Informational only: clients must pin the fleet key from their config (or a
/// verified bundle), never from this answer.
async fn fleet(State(state): State<Arc<AppState>>) -> Result<Json<FleetInfo>, ApiError> {
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
async fn fleet_status(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let mut nodes = Vec::new();
    let mut leader = None;
    let mut term = 0;
    for (i, (fleet_id, addr)) in state.config.routes.snapshot().into_iter().enumerate() {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            node_call(&state, i, &NodeRequest::FleetStatus),
        )
        .await;
        match r {
            Ok(Ok(NodeResponse::FleetStatus(s))) => {
                if s.term >= term {
                    term = s.term;
                    leader = s.leader.or(leader);
                }
                nodes.push(serde_json::json!({
                    "index": i, "fleet_id": fleet_id, "addr": addr.to_string(), "reachable": true,
                    "node_id": s.node_id, "role": s.role, "leader": s.leader, "term": s.term,
                    "last_log_index": s.last_log_index, "applied_index": s.applied_index,
                    "voters": s.voters, "learners": s.learners,
                }))
            }
            _ => nodes.push(serde_json::json!({
                "index": i, "fleet_id": fleet_id, "addr": addr.to_string(), "reachable": false,
            })),
        }
    }
    Json(serde_json::json!({ "nodes": nodes, "leader": leader, "term": term }))
}

fn unexpected() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        "unexpected answer from vault node",
    )
}

async fn open_session(
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
            Ok(NodeResponse::Error(NodeError::Unavailable)) => {
                last = NodeError::Unavailable.into();
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

async fn session_message(
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
async fn check_not_retired(state: &AppState, fleet: &str) -> Result<(), ApiError> {
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

#[derive(Debug, Deserialize)]
struct BundleQuery {
    #[serde(default)]
    known_size: u64,
}

async fn auditor_get(state: &AppState, path: &str) -> Result<reqwest::Response, ApiError> {
    let unavailable =
        |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "auditor_unavailable", m);
    let src = state.config.bundle_source.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this frontend serves no validation bundle",
        )
    })?;
    let url = format!(
        "{}/v1/logs/{}{path}",
        src.auditor_url.trim_end_matches('/'),
        src.namespace
    );
    let resp = state
        .http
        .get(&url)
        .send()
        .await
        .map_err(|e| unavailable(format!("auditor unreachable: {e}")))?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "auditor_not_found",
            format!("the auditor has nothing at {path}"),
        ));
    }
    if !resp.status().is_success() {
        return Err(unavailable(format!(
            "auditor answered {} for {path}",
            resp.status()
        )));
    }
    Ok(resp)
}

/// Largest auditor answer the frontend reads.
const MAX_AUDITOR_BODY: usize = 256 * 1024;

async fn auditor_body(state: &AppState, path: &str) -> Result<Vec<u8>, ApiError> {
    let mut resp = auditor_get(state, path).await?;
    let too_big = || {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "auditor answer too large",
        )
    };
    let mut out = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            format!("auditor answer: {e}"),
        )
    })? {
        if out.len() + c.len() > MAX_AUDITOR_BODY {
            return Err(too_big());
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

async fn auditor_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    path: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(&auditor_body(state, path).await?).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            format!("auditor answer: {e}"),
        )
    })
}

/// The current validation bundle with its signatures, the auditor's signed
/// checkpoint, an inclusion proof, and a consistency proof from the size the
/// client already knows. The frontend is untrusted: the client checks all of it.
async fn bundle(
    State(state): State<Arc<AppState>>,
    q: Result<axum::extract::Query<BundleQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<bkv_transparency::bundle::BundlePackage>, ApiError> {
    let axum::extract::Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let bad_gateway = |m: &str| ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", m.to_owned());
    // The newest bundle first, then a checkpoint (which covers it: the log
    // only grows). Membership records share the log; they are not bundles.
    let entry: serde_json::Value = match auditor_json(&state, "/bundles/latest").await {
        Err(e) if e.code == "auditor_not_found" => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_bundle",
                "no validation bundle has been published",
            ))
        }
        r => r?,
    };
    let index = entry
        .get("index")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad_gateway("auditor entry has no index"))?;
    let note = String::from_utf8(auditor_body(&state, "/checkpoint").await?)
        .map_err(|_| bad_gateway("auditor checkpoint is not UTF-8"))?;
    let text = note.split("\n\n").next().unwrap_or_default();
    let cp = bkv_transparency::note::Checkpoint::parse(&format!("{text}\n"))
        .map_err(|_| bad_gateway("auditor checkpoint is malformed"))?;
    if cp.size <= index {
        return Err(bad_gateway(
            "auditor checkpoint does not cover its newest bundle",
        ));
    }
    let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let b64 = |k: &str| -> Result<Vec<u8>, ApiError> {
        use base64::Engine;
        let s = field(k).ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_countersigned",
                format!("latest bundle has no {k} yet"),
            )
        })?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| bad_gateway("auditor entry encoding"))
    };
    #[derive(Deserialize)]
    struct Proof {
        #[serde(with = "bkv_transparency::b64::hashes")]
        proof: Vec<[u8; 32]>,
    }
    let inclusion: Proof = auditor_json(
        &state,
        &format!("/proof/inclusion?index={index}&size={}", cp.size),
    )
    .await?;
    let consistency = if q.known_size > 0 && q.known_size <= cp.size {
        auditor_json::<Proof>(
            &state,
            &format!("/proof/consistency?from={}&to={}", q.known_size, cp.size),
        )
        .await?
        .proof
    } else {
        Vec::new()
    };
    Ok(Json(bkv_transparency::bundle::BundlePackage {
        bundle: b64("bundle")?,
        auditor_signature: b64("auditor_signature")?,
        operator_signature: b64("operator_signature")?,
        leaf_index: index,
        checkpoint: note,
        inclusion_proof: inclusion.proof,
        consistency_from: q.known_size,
        consistency_proof: consistency,
    }))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DevTokenRequest {
    pub user: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DevTokenResponse {
    pub token: String,
    pub expires_at: u64,
}

async fn dev_token(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<DevTokenResponse>, ApiError> {
    let Some(key) = &state.config.dev_token_key else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "dev tokens are disabled",
        ));
    };
    let req: DevTokenRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected {{\"user\": ...}}: {e}"),
        )
    })?;
    bkv_wire::validate_user_id(&req.user)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_user", e))?;
    let now = now_secs();
    let expires_at = now + 3600;
    let token = token::mint(
        key,
        &token::Claims {
            sub: req.user,
            aud: state.config.tokens.policy.audience.clone(),
            exp: expires_at,
            iat: Some(now),
            nbf: None,
        },
    );
    Ok(Json(DevTokenResponse { token, expires_at }))
}

fn relying_party(state: &AppState) -> Result<&passkeys::RelyingParty, ApiError> {
    state.config.passkeys.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "passkeys are not enabled on this frontend",
        )
    })
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("body: {e}")))
}

#[derive(Deserialize)]
struct CredentialBody<T> {
    credential: T,
}

#[derive(Deserialize)]
struct AssertStartBody {
    credential_id: String,
}

#[derive(Deserialize, Default)]
struct RegisterStartBody {
    /// Needed once the user has a passkey (see [`passkeys`]).
    #[serde(default)]
    grant: Option<String>,
}

fn grant_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(GRANT_HEADER).and_then(|v| v.to_str().ok())
}

async fn passkeys_register_start(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Open)?;
    let b: RegisterStartBody = if body.is_empty() {
        RegisterStartBody::default()
    } else {
        json_body(&body)?
    };
    let rp = relying_party(&state)?;
    Ok(Json(rp.start_registration(&user, b.grant.as_deref())?).into_response())
}

/// Exchanges a vault session logged in with the user's password (header
/// `bkv-session`) for a grant. The node answers whether the session is
/// logged in; a token alone gets nothing.
async fn passkeys_grant(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let rp = relying_party(&state)?;
    let id = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "a grant needs the bkv-session header of a logged-in vault session",
            )
        })?;
    let (node, session_id) = parse_session(id, state.config.routes.len())?;
    let req = NodeRequest::CheckLogin {
        session_id,
        user_id: user.clone(),
    };
    match node_call(&state, node, &req).await? {
        NodeResponse::LoginChecked { logged_in: true } => Ok(Json(
            serde_json::json!({ "grant": rp.issue_grant(&user)?, "expires_in": passkeys::GRANT_TTL.as_secs() }),
        )
        .into_response()),
        NodeResponse::LoginChecked { logged_in: false } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "protector_required",
            "that vault session has not logged in with the password",
        )),
        NodeResponse::Error(e) => Err(e.into()),
        _ => Err(unexpected()),
    }
}

async fn passkeys_register_finish(
    State(state): State<Arc<AppState>>,
    Path(ceremony): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let b: CredentialBody<webauthn_rs::prelude::RegisterPublicKeyCredential> = json_body(&body)?;
    let rp = relying_party(&state)?;
    Ok(Json(rp.finish_registration(&user, &ceremony, &b.credential)?).into_response())
}

async fn passkeys_assert_start(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Open)?;
    let b: AssertStartBody = json_body(&body)?;
    Ok(Json(relying_party(&state)?.start_assertion(&user, &b.credential_id)?).into_response())
}

async fn passkeys_assert_finish(
    State(state): State<Arc<AppState>>,
    Path(ceremony): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let b: CredentialBody<webauthn_rs::prelude::PublicKeyCredential> = json_body(&body)?;
    let rp = relying_party(&state)?;
    Ok(Json(rp.finish_assertion(&user, &ceremony, &b.credential)?).into_response())
}

async fn passkeys_list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let list = relying_party(&state)?.list(&user)?;
    Ok(Json(serde_json::json!({ "passkeys": list })).into_response())
}

async fn passkeys_delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let n = relying_party(&state)?.delete(&user, Some(&id), grant_header(&headers))?;
    if n == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_passkey",
            "no such passkey for this user",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn passkeys_delete_all(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let n = relying_party(&state)?.delete(&user, None, grant_header(&headers))?;
    Ok(Json(serde_json::json!({ "deleted": n })).into_response())
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
