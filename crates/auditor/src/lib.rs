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

pub mod config;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bkv_transparency::bundle::{self, Bundle};
use bkv_transparency::membership::{self, MembershipChange, MembershipRecord};
use bkv_transparency::merkle::{self, Hash};
use bkv_transparency::note::Checkpoint;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};

const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
const MAX_ENTRY: usize = 512 * 1024;
/// Request bodies: evidence files (up to 256 KiB, base64) are the largest.
const MAX_BODY: usize = 384 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuditorError {
    #[error("database: {0}")]
    Db(String),
    #[error("namespace {0:?} is registered with another operator key; refusing to change it")]
    OperatorMismatch(String),
    #[error("invalid namespace name {0:?} (1-64 chars of [a-z0-9._-])")]
    BadNamespace(String),
    #[error("stored entry is corrupt: {0}")]
    Corrupt(String),
}

fn dberr<E: std::fmt::Display>(e: E) -> AuditorError {
    AuditorError::Db(e.to_string())
}

pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// A log entry as stored (`bkv_wire::encode`d).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum StoredEntry {
    Bundle {
        bundle: Vec<u8>,
        auditor_signature: Vec<u8>,
        /// The operator's counter-signature, added after the append.
        operator_signature: Option<Vec<u8>>,
    },
    Membership {
        record: Vec<u8>,
        auditor_signature: Vec<u8>,
        /// The operator's signature over the append request.
        operator_signature: Vec<u8>,
    },
    Evidence {
        /// The evidence file's exact bytes.
        evidence: Vec<u8>,
        auditor_signature: Vec<u8>,
        /// The operator's signature over the append request.
        operator_signature: Vec<u8>,
    },
}

impl StoredEntry {
    /// The entry's Merkle leaf, its digest, and its epoch if a bundle.
    fn leaf(&self) -> Result<(Hash, Hash, Option<u64>), String> {
        match self {
            StoredEntry::Bundle { bundle: bytes, .. } => {
                let b = Bundle::decode(bytes).map_err(|e| e.to_string())?;
                let d = bundle::digest(bytes);
                Ok((
                    merkle::leaf_hash(&bundle::leaf_data(b.epoch, &d)),
                    d,
                    Some(b.epoch),
                ))
            }
            StoredEntry::Membership { record, .. } => {
                let d = membership::record_digest(record);
                Ok((
                    merkle::leaf_hash(&membership::record_leaf_data(&d)),
                    d,
                    None,
                ))
            }
            StoredEntry::Evidence { evidence, .. } => {
                let d = bkv_transparency::evidence::digest(evidence);
                Ok((
                    merkle::leaf_hash(&bkv_transparency::evidence::leaf_data(&d)),
                    d,
                    None,
                ))
            }
        }
    }
}

struct NsLog {
    operator: VerifyingKey,
    leaves: Vec<Hash>,
    /// (epoch, index) of every bundle, in log order (epochs increase).
    bundles: Vec<(u64, u64)>,
    digests: HashSet<Hash>,
}

impl NsLog {
    fn push(&mut self, leaf: Hash, digest: Hash, epoch: Option<u64>) {
        if let Some(e) = epoch {
            self.bundles.push((e, self.leaves.len() as u64));
        }
        self.leaves.push(leaf);
        self.digests.insert(digest);
    }
}

pub struct Auditor {
    db: Database,
    key: SigningKey,
    name: String,
    logs: Mutex<HashMap<String, NsLog>>,
}

impl Auditor {
    /// Opens the log database; registers `namespaces` (name, operator key)
    /// that are new, refuses a changed operator key.
    pub fn open(
        path: &FsPath,
        key: SigningKey,
        name: &str,
        namespaces: &[(String, VerifyingKey)],
    ) -> Result<Self, AuditorError> {
        let db = Database::create(path).map_err(dberr)?;
        let tx = db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(NAMESPACES).map_err(dberr)?;
            tx.open_table(ENTRIES).map_err(dberr)?;
            for (ns, k) in namespaces {
                if !valid_namespace(ns) {
                    return Err(AuditorError::BadNamespace(ns.clone()));
                }
                let existing = t
                    .get(ns.as_str())
                    .map_err(dberr)?
                    .map(|v| v.value().to_vec());
                match existing {
                    Some(v) if v != k.as_bytes() => {
                        return Err(AuditorError::OperatorMismatch(ns.clone()))
                    }
                    Some(_) => {}
                    None => {
                        t.insert(ns.as_str(), k.as_bytes().as_slice())
                            .map_err(dberr)?;
                    }
                }
            }
        }
        tx.commit().map_err(dberr)?;
        let mut logs = HashMap::new();
        let tx = db.begin_read().map_err(dberr)?;
        let nst = tx.open_table(NAMESPACES).map_err(dberr)?;
        let et = tx.open_table(ENTRIES).map_err(dberr)?;
        for row in nst.iter().map_err(dberr)? {
            let (ns, k) = row.map_err(dberr)?;
            let ns = ns.value().to_owned();
            let kb: [u8; 32] = k
                .value()
                .try_into()
                .map_err(|_| AuditorError::Corrupt("operator key".into()))?;
            let operator = VerifyingKey::from_bytes(&kb)
                .map_err(|_| AuditorError::Corrupt("operator key".into()))?;
            let mut log = NsLog {
                operator,
                leaves: Vec::new(),
                bundles: Vec::new(),
                digests: HashSet::new(),
            };
            for row in et
                .range((ns.as_str(), 0u64)..=(ns.as_str(), u64::MAX))
                .map_err(dberr)?
            {
                let (k, v) = row.map_err(dberr)?;
                let (_, idx) = k.value();
                if idx != log.leaves.len() as u64 {
                    return Err(AuditorError::Corrupt(format!("gap at {ns}/{idx}")));
                }
                let e: StoredEntry = bkv_wire::decode(v.value(), MAX_ENTRY)
                    .map_err(|e| AuditorError::Corrupt(e.to_string()))?;
                let (leaf, d, epoch) = e.leaf().map_err(AuditorError::Corrupt)?;
                log.push(leaf, d, epoch);
            }
            logs.insert(ns, log);
        }
        drop(et);
        drop(nst);
        drop(tx);
        Ok(Auditor {
            db,
            key,
            name: name.to_owned(),
            logs: Mutex::new(logs),
        })
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn origin(&self, ns: &str) -> String {
        format!("{}/{ns}", self.name)
    }

    /// Stores `entry` as the next index of `ns` in one fsynced transaction
    /// (durable before acknowledged), then extends the in-memory tree.
    fn store_new(&self, ns: &str, log: &mut NsLog, entry: StoredEntry) -> Result<u64, ApiError> {
        let (leaf, d, epoch) = entry.leaf().map_err(internal)?;
        let index = log.leaves.len() as u64;
        let tx = self.db.begin_write().map_err(internal)?;
        {
            let mut t = tx.open_table(ENTRIES).map_err(internal)?;
            t.insert((ns, index), bkv_wire::encode(&entry).as_slice())
                .map_err(internal)?;
        }
        tx.commit().map_err(internal)?;
        log.push(leaf, d, epoch);
        metrics::gauge!("bkv_auditor_log_size", "namespace" => ns.to_owned())
            .set(log.leaves.len() as f64);
        Ok(index)
    }

    /// Whether the log can take an entry now: an empty write transaction commits (and syncs).
    pub fn check_writable(&self) -> Result<(), AuditorError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        tx.commit().map_err(dberr)
    }

    fn read_entry(&self, ns: &str, index: u64) -> Result<Option<StoredEntry>, AuditorError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(ENTRIES).map_err(dberr)?;
        match t.get((ns, index)).map_err(dberr)? {
            Some(v) => Ok(Some(
                bkv_wire::decode(v.value(), MAX_ENTRY)
                    .map_err(|e| AuditorError::Corrupt(e.to_string()))?,
            )),
            None => Ok(None),
        }
    }
}

#[derive(Debug)]
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(serde_json::json!({ "error": self.1, "message": self.2 })),
        )
            .into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "internal error");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error".into(),
    )
}

fn not_found(what: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} not found"),
    )
}

fn bad(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, code, msg.into())
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

#[derive(Serialize, Deserialize)]
pub struct KeyInfo {
    pub name: String,
    pub public_key: String,
    pub verifier_key: String,
}

async fn key_info(State(a): State<Arc<Auditor>>) -> Json<KeyInfo> {
    Json(KeyInfo {
        name: a.name.clone(),
        public_key: hex::encode(a.public_key().as_bytes()),
        verifier_key: bkv_transparency::note::verifier_key(&a.name, &a.public_key()),
    })
}

#[derive(Serialize, Deserialize)]
pub struct LogInfo {
    pub namespace: String,
    pub origin: String,
    pub size: u64,
    pub operator_key: String,
}

async fn log_info(
    State(a): State<Arc<Auditor>>,
    Path(ns): Path<String>,
) -> Result<Json<LogInfo>, ApiError> {
    let logs = a.logs.lock().map_err(internal)?;
    let log = logs.get(&ns).ok_or_else(|| not_found("namespace"))?;
    Ok(Json(LogInfo {
        origin: a.origin(&ns),
        size: log.leaves.len() as u64,
        operator_key: hex::encode(log.operator.as_bytes()),
        namespace: ns,
    }))
}

#[derive(Serialize, Deserialize)]
pub struct AppendRequest {
    #[serde(with = "bkv_transparency::b64")]
    pub bundle: Vec<u8>,
    /// Operator's Ed25519 signature over `append_message(bundle)`.
    #[serde(with = "bkv_transparency::b64")]
    pub operator_signature: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
pub struct AppendResponse {
    pub index: u64,
    #[serde(with = "bkv_transparency::b64")]
    pub auditor_signature: Vec<u8>,
}

async fn append(
    State(a): State<Arc<Auditor>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<Json<AppendResponse>, ApiError> {
    let req: AppendRequest = serde_json::from_slice(&body)
        .map_err(|e| bad("bad_request", format!("append body: {e}")))?;
    let mut logs = a.logs.lock().map_err(internal)?;
    let log = logs.get_mut(&ns).ok_or_else(|| not_found("namespace"))?;
    if !bundle::verify_sig(
        &log.operator,
        &bundle::append_message(&req.bundle),
        &req.operator_signature,
    ) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "append not signed by this namespace's operator".into(),
        ));
    }
    let b = Bundle::decode(&req.bundle).map_err(|e| bad("bad_bundle", e.to_string()))?;
    if b.namespace != ns {
        return Err(bad("bad_bundle", "bundle namespace differs from the log's"));
    }
    if b.not_before >= b.not_after {
        return Err(bad("bad_bundle", "validity window is empty"));
    }
    if let Some((last, _)) = log.bundles.last() {
        if b.epoch <= *last {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "epoch_not_increasing",
                format!(
                    "epoch {} is not above the last logged epoch {last}",
                    b.epoch
                ),
            ));
        }
    }
    let d = bundle::digest(&req.bundle);
    if log.digests.contains(&d) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "duplicate",
            "this bundle is already logged".into(),
        ));
    }
    let sig = bundle::sign_auditor(&a.key, &req.bundle, &b);
    let index = a.store_new(
        &ns,
        log,
        StoredEntry::Bundle {
            bundle: req.bundle.clone(),
            auditor_signature: sig.to_vec(),
            operator_signature: None,
        },
    )?;
    tracing::info!(namespace = %ns, index, epoch = b.epoch, "appended a bundle");
    Ok(Json(AppendResponse {
        index,
        auditor_signature: sig.to_vec(),
    }))
}

#[derive(Serialize, Deserialize)]
pub struct CountersignRequest {
    #[serde(with = "bkv_transparency::b64")]
    pub operator_signature: Vec<u8>,
}

async fn countersign(
    State(a): State<Arc<Auditor>>,
    Path((ns, index)): Path<(String, u64)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: CountersignRequest =
        serde_json::from_slice(&body).map_err(|e| bad("bad_request", e.to_string()))?;
    let logs = a.logs.lock().map_err(internal)?;
    let log = logs.get(&ns).ok_or_else(|| not_found("namespace"))?;
    let e = a
        .read_entry(&ns, index)
        .map_err(internal)?
        .ok_or_else(|| not_found("entry"))?;
    let StoredEntry::Bundle {
        bundle: bundle_bytes,
        auditor_signature,
        operator_signature,
    } = e
    else {
        return Err(bad(
            "not_a_bundle",
            "only bundle entries take a counter-signature",
        ));
    };
    let asig: [u8; 64] = auditor_signature.as_slice().try_into().map_err(internal)?;
    if !bundle::verify_sig(
        &log.operator,
        &bundle::operator_message(&asig),
        &req.operator_signature,
    ) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "not a valid operator counter-signature".into(),
        ));
    }
    match &operator_signature {
        Some(s) if *s == req.operator_signature => return Ok(StatusCode::NO_CONTENT),
        Some(_) => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "already_countersigned",
                "entry already has a counter-signature".into(),
            ))
        }
        None => {}
    }
    let e = StoredEntry::Bundle {
        bundle: bundle_bytes,
        auditor_signature,
        operator_signature: Some(req.operator_signature),
    };
    let tx = a.db.begin_write().map_err(internal)?;
    {
        let mut t = tx.open_table(ENTRIES).map_err(internal)?;
        t.insert((ns.as_str(), index), bkv_wire::encode(&e).as_slice())
            .map_err(internal)?;
    }
    tx.commit().map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Bundle,
    Membership,
    Evidence,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryResponse {
    pub index: u64,
    pub kind: EntryKind,
    /// The bundle's epoch (bundles only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(
        default,
        with = "bkv_transparency::b64::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub bundle: Option<Vec<u8>>,
    /// The membership record (membership entries only).
    #[serde(
        default,
        with = "bkv_transparency::b64::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub record: Option<Vec<u8>>,
    /// The evidence file (evidence entries only).
    #[serde(
        default,
        with = "bkv_transparency::b64::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub evidence: Option<Vec<u8>>,
    #[serde(with = "bkv_transparency::b64")]
    pub auditor_signature: Vec<u8>,
    /// Bundles: the operator's counter-signature (once given). Membership
    /// records: the operator's signature over the append request.
    #[serde(default, with = "bkv_transparency::b64::opt")]
    pub operator_signature: Option<Vec<u8>>,
}

fn entry_response(a: &Auditor, ns: &str, index: u64) -> Result<EntryResponse, ApiError> {
    let e = a
        .read_entry(ns, index)
        .map_err(internal)?
        .ok_or_else(|| not_found("entry"))?;
    Ok(match e {
        StoredEntry::Bundle {
            bundle: bytes,
            auditor_signature,
            operator_signature,
        } => EntryResponse {
            index,
            kind: EntryKind::Bundle,
            epoch: Some(Bundle::decode(&bytes).map_err(internal)?.epoch),
            bundle: Some(bytes),
            record: None,
            evidence: None,
            auditor_signature,
            operator_signature,
        },
        StoredEntry::Membership {
            record,
            auditor_signature,
            operator_signature,
        } => EntryResponse {
            index,
            kind: EntryKind::Membership,
            epoch: None,
            bundle: None,
            record: Some(record),
            evidence: None,
            auditor_signature,
            operator_signature: Some(operator_signature),
        },
        StoredEntry::Evidence {
            evidence,
            auditor_signature,
            operator_signature,
        } => EntryResponse {
            index,
            kind: EntryKind::Evidence,
            epoch: None,
            bundle: None,
            record: None,
            evidence: Some(evidence),
            auditor_signature,
            operator_signature: Some(operator_signature),
        },
    })
}

async fn get_entry(
    State(a): State<Arc<Auditor>>,
    Path((ns, index)): Path<(String, u64)>,
) -> Result<Json<EntryResponse>, ApiError> {
    {
        let logs = a.logs.lock().map_err(internal)?;
        let log = logs.get(&ns).ok_or_else(|| not_found("namespace"))?;
        if index >= log.leaves.len() as u64 {
            return Err(not_found("entry"));
        }
    }
    Ok(Json(entry_response(&a, &ns, index)?))
}

async fn get_by_epoch(
    State(a): State<Arc<Auditor>>,
    Path((ns, epoch)): Path<(String, u64)>,
) -> Result<Json<EntryResponse>, ApiError> {
    let index = {
        let logs = a.logs.lock().map_err(internal)?;
        let log = logs.get(&ns).ok_or_else(|| not_found("namespace"))?;
        let i = log
            .bundles
            .binary_search_by_key(&epoch, |(e, _)| *e)
            .map_err(|_| not_found("epoch"))?;
        log.bundles
            .get(i)
            .map(|(_, idx)| *idx)
            .ok_or_else(|| not_found("epoch"))?
    };
    Ok(Json(entry_response(&a, &ns, index)?))
}

/// The namespace's newest bundle entry (what the frontend serves).
async fn latest_bundle(
    State(a): State<Arc<Auditor>>,
    Path(ns): Path<String>,
) -> Result<Json<EntryResponse>, ApiError> {
    let index = {
        let logs = a.logs.lock().map_err(internal)?;
        let log = logs.get(&ns).ok_or_else(|| not_found("namespace"))?;
        log.bundles
            .last()
            .map(|(_, i)| *i)
            .ok_or_else(|| not_found("bundle"))?
    };
    Ok(Json(entry_response(&a, &ns, index)?))
}

#[derive(Serialize, Deserialize)]
pub struct AppendRecordRequest {
    /// Canonical `MembershipRecord` bytes.
    #[serde(with = "bkv_transparency::b64")]
    pub record: Vec<u8>,
    /// Operator's Ed25519 signature over `append_record_message(record)`.
    #[serde(with = "bkv_transparency::b64")]
    pub operator_signature: Vec<u8>,
}

/// Logs a fleet membership record (a node joining or leaving).
async fn append_record(
    State(a): State<Arc<Auditor>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<Json<AppendResponse>, ApiError> {
    let req: AppendRecordRequest = serde_json::from_slice(&body)
        .map_err(|e| bad("bad_request", format!("append body: {e}")))?;
    let mut logs = a.logs.lock().map_err(internal)?;
    let log = logs.get_mut(&ns).ok_or_else(|| not_found("namespace"))?;
    if !bundle::verify_sig(
        &log.operator,
        &membership::append_record_message(&req.record),
        &req.operator_signature,
    ) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "append not signed by this namespace's operator".into(),
        ));
    }
    let r = MembershipRecord::decode(&req.record).map_err(|e| bad("bad_record", e.to_string()))?;
    if r.namespace != ns {
        return Err(bad("bad_record", "record namespace differs from the log's"));
    }
    match &r.change {
        MembershipChange::Found { statement, .. } | MembershipChange::Add { statement, .. } => {
            membership::verify_statement(statement)
                .map_err(|e| bad("bad_statement", e.to_string()))?;
        }
        MembershipChange::Remove { .. } => {}
        _ => return Err(bad("bad_record", "unknown membership change")),
    }
    let d = membership::record_digest(&req.record);
    if log.digests.contains(&d) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "duplicate",
            "this record is already logged".into(),
        ));
    }
    let sig = a
        .key
        .sign(&membership::auditor_record_message(&ns, &d))
        .to_bytes();
    let index = a.store_new(
        &ns,
        log,
        StoredEntry::Membership {
            record: req.record.clone(),
            auditor_signature: sig.to_vec(),
            operator_signature: req.operator_signature,
        },
    )?;
    tracing::info!(namespace = %ns, index, fleet = %r.fleet_id, "appended a membership record");
    Ok(Json(AppendResponse {
        index,
        auditor_signature: sig.to_vec(),
    }))
}

#[derive(Serialize, Deserialize)]
pub struct AppendEvidenceRequest {
    /// The evidence file's exact bytes.
    #[serde(with = "bkv_transparency::b64")]
    pub evidence: Vec<u8>,
    /// Operator's Ed25519 signature over `append_evidence_message(evidence)`.
    #[serde(with = "bkv_transparency::b64")]
    pub operator_signature: Vec<u8>,
}

/// Logs a fleet's deployment evidence. The auditor checks it offline first
/// (transcript chain, statements, witnesses): the log holds no evidence
/// that does not verify on its own.
async fn append_evidence(
    State(a): State<Arc<Auditor>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<Json<AppendResponse>, ApiError> {
    use bkv_transparency::evidence as ev;
    let req: AppendEvidenceRequest = serde_json::from_slice(&body)
        .map_err(|e| bad("bad_request", format!("append body: {e}")))?;
    let mut logs = a.logs.lock().map_err(internal)?;
    let log = logs.get_mut(&ns).ok_or_else(|| not_found("namespace"))?;
    if !bundle::verify_sig(
        &log.operator,
        &ev::append_message(&req.evidence),
        &req.operator_signature,
    ) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "append not signed by this namespace's operator".into(),
        ));
    }
    let e = ev::parse(&req.evidence).map_err(|e| bad("bad_evidence", e.to_string()))?;
    if e.namespace != ns {
        return Err(bad(
            "bad_evidence",
            "evidence namespace differs from the log's",
        ));
    }
    ev::verify(&e, &[]).map_err(|e| bad("bad_evidence", e.to_string()))?;
    let d = ev::digest(&req.evidence);
    if log.digests.contains(&d) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "duplicate",
            "this evidence is already logged".into(),
        ));
    }
    let sig = a.key.sign(&ev::auditor_message(&ns, &d)).to_bytes();
    let index = a.store_new(
        &ns,
        log,
        StoredEntry::Evidence {
            evidence: req.evidence.clone(),
            auditor_signature: sig.to_vec(),
            operator_signature: req.operator_signature,
        },
    )?;
    tracing::info!(namespace = %ns, index, fleet = %e.fleet_id, "appended deployment evidence");
    Ok(Json(AppendResponse {
        index,
        auditor_signature: sig.to_vec(),
    }))
}

async fn checkpoint(
    State(a): State<Arc<Auditor>>,
    Path(ns): Path<String>,
) -> Result<Response, ApiError> {
    let logs = a.logs.lock().map_err(internal)?;
    let log = logs.get(&ns).ok_or_else(|| not_found("namespace"))?;
    let cp = Checkpoint {
        origin: a.origin(&ns),
        size: log.leaves.len() as u64,
        root: merkle::root(&log.leaves),
    };
    let note = cp.sign(&a.name, &a.key).map_err(internal)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        note,
    )
        .into_response())
}

#[derive(Deserialize)]
struct InclusionQuery {
    index: u64,
    size: u64,
}

#[derive(Serialize, Deserialize)]
pub struct ProofResponse {
    #[serde(with = "bkv_transparency::b64::hashes")]
    pub proof: Vec<Hash>,
}

fn query_err(e: axum::extract::rejection::QueryRejection) -> ApiError {
    bad("bad_query", e.body_text())
}

async fn inclusion(
    State(a): State<Arc<Auditor>>,
    Path(ns): Path<String>,
    q: Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ProofResponse>, ApiError> {
    let Query(q) = q.map_err(query_err)?;
    let logs = a.logs.lock().map_err(internal)?;
    let log = logs.get(&ns).ok_or_else(|| not_found("namespace"))?;
    if q.size == 0 || q.size > log.leaves.len() as u64 || q.index >= q.size {
        return Err(bad("bad_query", "need index < size <= tree size"));
    }
    Ok(Json(ProofResponse {
        proof: merkle::inclusion_proof(q.index as usize, &log.leaves[..q.size as usize]),
    }))
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

async fn consistency(
    State(a): State<Arc<Auditor>>,
    Path(ns): Path<String>,
    q: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ProofResponse>, ApiError> {
    let Query(q) = q.map_err(query_err)?;
    let logs = a.logs.lock().map_err(internal)?;
    let log = logs.get(&ns).ok_or_else(|| not_found("namespace"))?;
    if q.from > q.to || q.to > log.leaves.len() as u64 {
        return Err(bad("bad_query", "need from <= to <= tree size"));
    }
    Ok(Json(ProofResponse {
        proof: merkle::consistency_proof(q.from as usize, &log.leaves[..q.to as usize]),
    }))
}
