//! `GET /v1/bundle`: the validation bundle, relayed from the auditor's log (over the air).

use crate::*;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bkv_api::auditor::{EntryResponse, ProofResponse as Proof};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub(crate) struct BundleQuery {
    #[serde(default)]
    pub(crate) known_size: u64,
}

pub(crate) async fn auditor_get(
    state: &AppState,
    path: &str,
) -> Result<reqwest::Response, ApiError> {
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
pub(crate) const MAX_AUDITOR_BODY: usize = 256 * 1024;

pub(crate) async fn auditor_body(state: &AppState, path: &str) -> Result<Vec<u8>, ApiError> {
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

pub(crate) async fn auditor_json<T: serde::de::DeserializeOwned>(
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
pub(crate) async fn bundle(
    State(state): State<Arc<AppState>>,
    q: Result<axum::extract::Query<BundleQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<bkv_transparency::bundle::BundlePackage>, ApiError> {
    let axum::extract::Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let bad_gateway = |m: &str| ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", m.to_owned());
    // The newest bundle first, then a checkpoint (which covers it: the log
    // only grows). Membership records share the log; they are not bundles.
    let entry: EntryResponse = match auditor_json(&state, "/bundles/latest").await {
        Err(e) if e.code == "auditor_not_found" => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_bundle",
                "no validation bundle has been published",
            ))
        }
        r => r?,
    };
    let index = entry.index;
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
    let not_countersigned = |k: &str| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_countersigned",
            format!("latest bundle has no {k} yet"),
        )
    };
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
    let bundle = entry.bundle.ok_or_else(|| not_countersigned("bundle"))?;
    let previous_proofs = previous_proofs(&state, &bundle, index, cp.size).await?;
    Ok(Json(bkv_transparency::bundle::BundlePackage {
        bundle,
        auditor_signature: entry.auditor_signature,
        operator_signature: entry
            .operator_signature
            .ok_or_else(|| not_countersigned("operator_signature"))?,
        leaf_index: index,
        checkpoint: note,
        inclusion_proof: inclusion.proof,
        consistency_from: q.known_size,
        consistency_proof: consistency,
        previous_proofs,
    }))
}

/// Epochs the frontend looks back for the bundle in which a previous fleet was preferred.
const PROOF_LOOKBACK: u64 = 64;

/// For each fleet the bundle lists besides the preferred one, the newest earlier logged bundle
/// in which it was the preferred fleet, with its inclusion in the checkpoint of size `size`
/// (clients that never accepted such an epoch need it; the client checks all of it). Kept
/// for as long as the bundle and checkpoint stay the same.
async fn previous_proofs(
    state: &AppState,
    bundle_bytes: &[u8],
    index: u64,
    size: u64,
) -> Result<Vec<bkv_transparency::bundle::EarlierBundle>, ApiError> {
    use bkv_transparency::bundle::{Bundle, EarlierBundle};
    if let Ok(cache) = state.previous_proofs.lock() {
        if let Some((key, proofs)) = cache.as_ref() {
            if *key == (index, size) {
                return Ok(proofs.clone());
            }
        }
    }
    let bad_gateway = |m: &str| ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", m.to_owned());
    let bundle =
        Bundle::decode(bundle_bytes).map_err(|_| bad_gateway("auditor bundle is malformed"))?;
    let mut out = Vec::new();
    for p in &bundle.previous {
        let lowest = bundle.epoch.saturating_sub(PROOF_LOOKBACK).max(1);
        for epoch in (lowest..bundle.epoch).rev() {
            let entry: EntryResponse = match auditor_json(state, &format!("/epochs/{epoch}")).await
            {
                Err(e) if e.code == "auditor_not_found" => continue,
                r => r?,
            };
            let (Some(b), a, Some(o), i) = (
                entry.bundle,
                entry.auditor_signature,
                entry.operator_signature,
                entry.index,
            ) else {
                continue;
            };
            let Ok(earlier) = Bundle::decode(&b) else {
                continue;
            };
            if earlier.fleet_id != p.fleet_id || earlier.noise_key() != p.noise_key() {
                continue;
            }
            let inclusion: Proof =
                auditor_json(state, &format!("/proof/inclusion?index={i}&size={size}")).await?;
            out.push(EarlierBundle {
                bundle: b,
                auditor_signature: a,
                operator_signature: o,
                leaf_index: i,
                inclusion_proof: inclusion.proof,
            });
            break;
        }
    }
    if let Ok(mut cache) = state.previous_proofs.lock() {
        *cache = Some(((index, size), out.clone()));
    }
    Ok(out)
}
