//! Over-the-air fleet keys: fetch the current validation bundle from the
//! frontend, verify it against the pinned auditor and operator keys and the
//! log state this client saw before, persist the new state, and return the
//! fleet's Noise key. Never falls back to an unverified key.

use crate::error::{ClientError, Result};
use bkv_transparency::bundle::{self, BundlePackage, ClientLogState, TrustAnchors};
#[cfg(feature = "native")]
use std::path::Path;

/// Largest bundle package accepted from the frontend.
const MAX_PACKAGE: usize = 64 * 1024;

#[cfg(feature = "native")]
/// Reads the saved log state at `path`; no file means first contact (the empty state).
pub(crate) fn load_state(path: &Path) -> Result<ClientLogState> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            ClientError::Protocol(format!("client log state {}: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientLogState::default()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(feature = "native")]
fn save_state(path: &Path, st: &ClientLogState) -> Result<()> {
    let body = serde_json::to_vec_pretty(st).map_err(|e| ClientError::Protocol(e.to_string()))?;
    crate::write_private_file(path, &body)?;
    Ok(())
}

/// Fetches and verifies the current bundle; returns its fleets, the
/// preferred one first (older ones still serve records during a rotation).
///
/// `saved_before`: this client saved a checkpoint before (its config says
/// so). Then a missing state file is an error, not a first contact: trusting
/// whatever log is served next would undo the log's consistency check.
#[cfg(feature = "native")]
pub async fn fleets(
    http: &dyn crate::http::Http,
    frontend_url: &str,
    anchors: &TrustAnchors,
    state_path: &Path,
    saved_before: bool,
) -> Result<Vec<crate::session::FleetTarget>> {
    if saved_before && !state_path.exists() {
        return Err(ClientError::CheckpointLost {
            path: state_path.display().to_string(),
        });
    }
    let seen = load_state(state_path)?;
    let (fleets, next) = fleets_after(http, frontend_url, anchors, &seen).await?;
    if next != seen {
        save_state(state_path, &next)?;
    }
    Ok(fleets)
}

/// [`fleets`] with the log state held by the caller (a browser keeps it in its own storage):
/// verifies the bundle against `seen` and returns the fleets and the state to keep from now on.
/// The caller must keep the returned state before it uses the fleets, and must not offer a
/// missing state as a first contact once it has kept one.
pub async fn fleets_after(
    http: &dyn crate::http::Http,
    frontend_url: &str,
    anchors: &TrustAnchors,
    seen: &ClientLogState,
) -> Result<(Vec<crate::session::FleetTarget>, ClientLogState)> {
    let url = format!(
        "{}/v1/bundle?known_size={}",
        frontend_url.trim_end_matches('/'),
        seen.checkpoint_size
    );
    let req = crate::http::HttpRequest::new(crate::http::Method::Get, url, MAX_PACKAGE);
    let resp = http.send(req).await?;
    if !resp.is_success() {
        let text = String::from_utf8_lossy(&resp.body);
        return Err(ClientError::Unavailable(format!(
            "no validation bundle from the frontend ({}): {}",
            resp.status,
            text.chars().take(200).collect::<String>()
        )));
    }
    let body = resp.body;
    let pkg: BundlePackage = serde_json::from_slice(&body)
        .map_err(|e| ClientError::Protocol(format!("bundle package: {e}")))?;
    let (b, next) = bundle::verify(anchors, seen, &pkg, crate::clock::now_unix())
        .map_err(ClientError::Bundle)?;
    let fleets = b
        .fleets()
        .into_iter()
        .map(|f| {
            Ok(crate::session::FleetTarget {
                key: f
                    .noise_key()
                    .ok_or(ClientError::Bundle(bundle::BundleError::NoNoiseKey))?,
                fleet_id: f.fleet_id,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((fleets, next))
}
