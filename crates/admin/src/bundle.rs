//! Publishing a validation bundle: the fleets a namespace's clients may use, the preferred one
//! first, signed by the auditor and counter-signed by the operator.

use anyhow::anyhow;
use bkv_operator::fleet::Operator;
use bkv_transparency::bundle::{Bundle, BundleFleet};

/// How long a published bundle is valid.
const BUNDLE_LIFETIME_SECS: u64 = 30 * 86_400;

/// Publishes a bundle naming `fleets` (the preferred one first, the older ones still serving)
/// in the operator's namespace — unless the log's latest bundle already says exactly that, is
/// counter-signed and is valid for at least another day. Returns the epoch published, if any.
pub async fn publish(op: &Operator, fleets: Vec<BundleFleet>) -> anyhow::Result<Option<u64>> {
    let base = format!(
        "{}/v1/logs/{}",
        op.auditor_url.trim_end_matches('/'),
        op.namespace
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut wanted = fleets.into_iter();
    let preferred = wanted.next().ok_or_else(|| anyhow!("no active fleet"))?;
    let previous: Vec<BundleFleet> = wanted.collect();
    let mut epoch = 1;
    let latest = op.http.get(format!("{base}/bundles/latest")).send().await?;
    if latest.status() != reqwest::StatusCode::NOT_FOUND {
        let e: bkv_api::auditor::EntryResponse = latest.error_for_status()?.json().await?;
        let bytes = e.bundle.unwrap_or_default();
        let last = Bundle::decode(&bytes).map_err(|e| anyhow!("latest bundle: {e}"))?;
        let countersigned = e.operator_signature.is_some();
        let same = last.fleets().first() == Some(&preferred) && last.previous == previous;
        if same && last.not_after > now + 86_400 && countersigned {
            return Ok(None);
        }
        epoch = last.epoch + 1;
    }
    let b = Bundle {
        version: bkv_transparency::bundle::BUNDLE_VERSION,
        namespace: op.namespace.clone(),
        epoch,
        fleet_id: preferred.fleet_id,
        keys: preferred.keys,
        not_before: now.saturating_sub(300),
        not_after: now + BUNDLE_LIFETIME_SECS,
        evidence_digest: preferred.evidence_digest,
        previous,
    };
    op.auditor().publish(&b).await?;
    Ok(Some(epoch))
}
