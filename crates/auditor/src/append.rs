//! Writes: `POST` a bundle, an operator counter-signature, a membership record, deployment
//! evidence. Each is checked before it is appended; nothing is ever changed or removed.

use crate::*;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bkv_api::auditor::{
    AppendEvidenceRequest, AppendRecordRequest, AppendRequest, AppendResponse, AppendWebRequest,
    CountersignRequest,
};
use bkv_transparency::bundle::{self, Bundle};
use bkv_transparency::membership::{self, MembershipChange, MembershipRecord};
use ed25519_dalek::Signer;
use std::sync::Arc;

pub(crate) async fn append(
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

pub(crate) async fn countersign(
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

/// Logs a fleet membership record (a node joining or leaving).
pub(crate) async fn append_record(
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

/// Logs a fleet's deployment evidence. The auditor checks it offline first
/// (transcript chain, statements, witnesses): the log holds no evidence
/// that does not verify on its own.
pub(crate) async fn append_evidence(
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

/// Logs a web build's manifest (`bkv_transparency::web`), signed by the namespace's operator:
/// what `bkv audit web` finds a served or rebuilt page in.
pub(crate) async fn append_web(
    State(a): State<Arc<Auditor>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<Json<AppendResponse>, ApiError> {
    use bkv_transparency::web;
    let req: AppendWebRequest = serde_json::from_slice(&body)
        .map_err(|e| bad("bad_request", format!("append body: {e}")))?;
    let mut logs = a.logs.lock().map_err(internal)?;
    let log = logs.get_mut(&ns).ok_or_else(|| not_found("namespace"))?;
    if !bundle::verify_sig(
        &log.operator,
        &web::append_message(&req.manifest),
        &req.operator_signature,
    ) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "append not signed by this namespace's operator".into(),
        ));
    }
    let m = web::Manifest::parse(&req.manifest).map_err(|e| bad("bad_manifest", e.to_string()))?;
    let d = web::digest(&req.manifest);
    if log.digests.contains(&d) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "duplicate",
            "this web build is already logged".into(),
        ));
    }
    let sig = a.key.sign(&web::auditor_message(&ns, &d)).to_bytes();
    let index = a.store_new(
        &ns,
        log,
        StoredEntry::Web {
            manifest: req.manifest.clone(),
            auditor_signature: sig.to_vec(),
            operator_signature: req.operator_signature,
        },
    )?;
    tracing::info!(namespace = %ns, index, files = m.files.len(), "appended a web build");
    Ok(Json(AppendResponse {
        index,
        auditor_signature: sig.to_vec(),
    }))
}
