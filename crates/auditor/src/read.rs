//! Reads: the auditor's key, log heads, entries by index or epoch, the latest bundle,
//! checkpoints, and inclusion and consistency proofs.

use crate::*;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bkv_transparency::bundle::Bundle;
use bkv_transparency::merkle::{self, Hash};
use bkv_transparency::note::Checkpoint;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Serialize, Deserialize)]
pub struct KeyInfo {
    pub name: String,
    pub public_key: String,
    pub verifier_key: String,
}

pub(crate) async fn key_info(State(a): State<Arc<Auditor>>) -> Json<KeyInfo> {
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

#[derive(Deserialize)]
pub(crate) struct InclusionQuery {
    pub(crate) index: u64,
    pub(crate) size: u64,
}

#[derive(Serialize, Deserialize)]
pub struct ProofResponse {
    #[serde(with = "bkv_transparency::b64::hashes")]
    pub proof: Vec<Hash>,
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

#[derive(Deserialize)]
pub(crate) struct ConsistencyQuery {
    pub(crate) from: u64,
    pub(crate) to: u64,
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
