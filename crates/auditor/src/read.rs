//! Reads: the auditor's key, log heads, entries by index or epoch, the latest bundle,
//! checkpoints, and inclusion and consistency proofs.

use crate::*;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bkv_api::auditor::{
    ConsistencyQuery, EntryKind, EntryResponse, InclusionQuery, KeyInfo, LogInfo, ProofResponse,
};
use bkv_transparency::bundle::Bundle;
use bkv_transparency::merkle;
use bkv_transparency::note::Checkpoint;
use std::sync::Arc;

pub(crate) async fn key_info(State(a): State<Arc<Auditor>>) -> Json<KeyInfo> {
    Json(KeyInfo {
        name: a.name.clone(),
        public_key: hex::encode(a.public_key().as_bytes()),
        verifier_key: bkv_transparency::note::verifier_key(&a.name, &a.public_key()),
    })
}

pub(crate) async fn log_info(
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

pub(crate) fn entry_response(a: &Auditor, ns: &str, index: u64) -> Result<EntryResponse, ApiError> {
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
            web: None,
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
            web: None,
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
            web: None,
            auditor_signature,
            operator_signature: Some(operator_signature),
        },
        StoredEntry::Web {
            manifest,
            auditor_signature,
            operator_signature,
        } => EntryResponse {
            index,
            kind: EntryKind::Web,
            epoch: None,
            bundle: None,
            record: None,
            evidence: None,
            web: Some(manifest),
            auditor_signature,
            operator_signature: Some(operator_signature),
        },
    })
}

pub(crate) async fn get_entry(
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

pub(crate) async fn get_by_epoch(
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
pub(crate) async fn latest_bundle(
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

pub(crate) async fn checkpoint(
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

pub(crate) fn query_err(e: axum::extract::rejection::QueryRejection) -> ApiError {
    bad("bad_query", e.body_text())
}

pub(crate) async fn inclusion(
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

pub(crate) async fn consistency(
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
