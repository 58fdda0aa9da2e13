//! `bkv audit log`: an independent walk over a namespace's whole auditor log
//! (bundles, membership records, deployment evidence), verifying every
//! signature and proof and linking each key and membership change to the
//! evidence of the ceremony that made it. `bkv audit fleet` ([`fleet`])
//! checks one fleet's evidence.

pub mod fleet;
pub mod web;

mod entries;
mod table;

use entries::*;
pub use table::print_table;

use anyhow::{anyhow, bail, Context};
use bkv_transparency::bundle::{self, Bundle};
use bkv_transparency::merkle::{self, Hash};
use bkv_transparency::note::Checkpoint;
use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use bkv_api::auditor::{KeyInfo, ProofResponse as Proof};

/// A log entry as the auditor serves it: a bundle, a membership record or evidence.
pub type Entry = bkv_api::auditor::EntryResponse;

/// Largest auditor answer read (entries and proofs are a few KiB).
const MAX_AUDITOR_BODY: usize = 1024 * 1024;

async fn body_json<T: serde::de::DeserializeOwned>(r: reqwest::Response) -> anyhow::Result<T> {
    let b = bkv_client::read_limited(r, MAX_AUDITOR_BODY).await?;
    Ok(serde_json::from_slice(&b)?)
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<T> {
    let r = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !r.status().is_success() {
        bail!("GET {url}: {}", r.status());
    }
    body_json(r).await.with_context(|| format!("GET {url}"))
}

#[derive(Debug, Serialize)]
pub struct EpochRow {
    pub index: u64,
    pub epoch: u64,
    pub fleet_id: String,
    pub noise_key: String,
    pub node_keys: usize,
    pub not_before: u64,
    pub not_after: u64,
    pub evidence_digest: String,
    /// Other fleets the bundle lists as still serving (rotation).
    pub previous: Vec<String>,
    pub change: String,
    /// Log index of the evidence the bundle names, if it is in the log.
    pub evidence: Option<u64>,
}

/// Logged evidence as the walk needs it: its log index, the fleet's Noise
/// key, and the membership records its ceremony covers.
struct LoggedEvidence {
    index: u64,
    noise_key: [u8; 32],
    records: Vec<Vec<u8>>,
}

/// A fleet's deployment evidence, as logged.
#[derive(Debug, Serialize)]
pub struct EvidenceRow {
    pub index: u64,
    pub fleet_id: String,
    pub digest: String,
    pub nodes: usize,
    pub witnesses: Vec<String>,
    pub binary_sha256: String,
    pub source_commit: String,
}

/// A logged browser-client build (`bkv_transparency::web`).
#[derive(Debug, Serialize)]
pub struct WebRow {
    pub index: u64,
    /// SHA-256 of its manifest.
    pub digest: String,
    pub files: usize,
}

/// One fleet membership change, with the node's platform statement.
#[derive(Debug, Serialize)]
pub struct MemberRow {
    pub index: u64,
    pub fleet_id: String,
    /// `found`, `add` or `remove`.
    pub change: String,
    pub node_id: u64,
    pub identity_key: String,
    /// From the signed platform statement (joins only).
    pub platform: Option<String>,
    pub token: Option<String>,
    pub signing_key: Option<String>,
    pub binary_sha256: Option<String>,
    /// Log index of the evidence of the ceremony this change was part of.
    pub evidence: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct LogReport {
    pub auditor: String,
    pub namespace: String,
    pub origin: String,
    pub size: u64,
    pub root: String,
    pub epochs: Vec<EpochRow>,
    pub members: Vec<MemberRow>,
    pub evidence: Vec<EvidenceRow>,
    pub web: Vec<WebRow>,
    pub warnings: Vec<String>,
}

/// Everything `bkv audit log` fetches from the auditor, verified offline by
/// [`verify_snapshot`].
pub struct Snapshot {
    pub auditor_name: String,
    pub auditor_key: VerifyingKey,
    pub checkpoint_note: String,
    pub entries: Vec<Entry>,
    /// Inclusion proof of entry i in the checkpoint's tree.
    pub inclusion: Vec<Vec<Hash>>,
    /// Consistency proof from tree size i+1 to the checkpoint's size.
    pub consistency: Vec<Vec<Hash>>,
}

/// The HTTP client of an audit: the system's roots, or only the CA in `ca_file` (an auditor
/// behind a private PKI).
pub fn http_client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        b = b.tls_built_in_root_certs(false).add_root_certificate(ca);
    }
    Ok(b.build()?)
}

/// Fetches the whole log of `namespace` (checkpoint, entries, proofs).
pub async fn fetch_snapshot(
    http: &reqwest::Client,
    auditor_url: &str,
    namespace: &str,
) -> anyhow::Result<Snapshot> {
    let http = http.clone();
    let root_url = auditor_url.trim_end_matches('/');
    let info: KeyInfo = get_json(&http, &format!("{root_url}/v1/key")).await?;
    let auditor_key = VerifyingKey::from_bytes(
        &bkv_wire::key_from_hex(&info.public_key).map_err(|e| anyhow!("auditor key: {e}"))?,
    )?;
    let base = format!("{root_url}/v1/logs/{namespace}");
    let note = http
        .get(format!("{base}/checkpoint"))
        .send()
        .await?
        .error_for_status()?;
    let note =
        String::from_utf8(bkv_client::read_limited(note, bkv_transparency::note::MAX_NOTE).await?)?;
    let size = Checkpoint::parse(note.split("\n\n").next().unwrap_or_default())
        .map_err(|e| anyhow!("checkpoint: {e}"))?
        .size;
    let (mut entries, mut inclusion, mut consistency) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..size {
        entries.push(get_json(&http, &format!("{base}/entries/{i}")).await?);
        let p: Proof = get_json(
            &http,
            &format!("{base}/proof/inclusion?index={i}&size={size}"),
        )
        .await?;
        inclusion.push(p.proof);
        let p: Proof = get_json(
            &http,
            &format!("{base}/proof/consistency?from={}&to={size}", i + 1),
        )
        .await?;
        consistency.push(p.proof);
    }
    Ok(Snapshot {
        auditor_name: info.name,
        auditor_key,
        checkpoint_note: note,
        entries,
        inclusion,
        consistency,
    })
}

pub async fn audit_log(
    http: &reqwest::Client,
    auditor_url: &str,
    namespace: &str,
    operator_key: &VerifyingKey,
    pinned_auditor_key: Option<VerifyingKey>,
) -> anyhow::Result<LogReport> {
    let snap = fetch_snapshot(http, auditor_url, namespace).await?;
    verify_snapshot(&snap, namespace, operator_key, pinned_auditor_key)
}

/// Verifies every entry: digests, both signatures, increasing epochs,
/// inclusion of every entry and consistency of every earlier tree size with
/// the latest checkpoint. Any failure is an error.
pub fn verify_snapshot(
    snap: &Snapshot,
    namespace: &str,
    operator_key: &VerifyingKey,
    pinned_auditor_key: Option<VerifyingKey>,
) -> anyhow::Result<LogReport> {
    let akey = snap.auditor_key;
    if let Some(p) = pinned_auditor_key {
        if p != akey {
            bail!(
                "the auditor presents key {} but --auditor-key pins {}",
                hex::encode(akey.as_bytes()),
                hex::encode(p.as_bytes())
            );
        }
    }
    let cp = Checkpoint::open(&snap.checkpoint_note, &snap.auditor_name, &akey)
        .map_err(|e| anyhow!("checkpoint: {e}"))?;
    let origin = format!("{}/{namespace}", snap.auditor_name);
    if cp.origin != origin {
        bail!("checkpoint origin {:?} is not {origin:?}", cp.origin);
    }
    if snap.entries.len() as u64 != cp.size
        || snap.inclusion.len() != snap.entries.len()
        || snap.consistency.len() != snap.entries.len()
    {
        bail!(
            "the auditor served {} entries for a checkpoint of size {}",
            snap.entries.len(),
            cp.size
        );
    }
    let mut leaves: Vec<Hash> = Vec::new();
    let mut rows: Vec<EpochRow> = Vec::new();
    let mut members: Vec<MemberRow> = Vec::new();
    let mut evidence: Vec<EvidenceRow> = Vec::new();
    let mut web: Vec<WebRow> = Vec::new();
    // Evidence digest → (log index, fleet keys, logged records it covers).
    let mut evidence_by_digest: std::collections::HashMap<[u8; 32], LoggedEvidence> =
        std::collections::HashMap::new();
    let mut warnings = Vec::new();
    let mut digests = std::collections::HashSet::new();
    let mut prev: Option<Bundle> = None;
    // Fleet id → Noise key of every fleet an epoch named as preferred so far, and the previous
    // fleets every bundle named (checked against the evidence once it is all read).
    let mut preferred: std::collections::HashMap<String, [u8; 32]> = Default::default();
    let mut previous_fleets: Vec<(u64, u64, bundle::BundleFleet)> = Vec::new();
    for (i, e) in (0u64..).zip(&snap.entries) {
        if e.index != i {
            bail!("entry {i}: auditor returned index {}", e.index);
        }
        if let Some(manifest) = &e.web {
            if e.bundle.is_some() || e.record.is_some() || e.evidence.is_some() {
                bail!("entry {i}: a web build and something else");
            }
            let (leaf, row) = verify_web_entry(i, e, manifest, namespace, &akey, operator_key)?;
            if !digests.insert(bkv_transparency::web::digest(manifest)) {
                bail!("entry {i}: digest logged twice");
            }
            web.push(row);
            check_in_log(snap, &cp, &mut leaves, i, leaf)?;
            continue;
        }
        let bundle_bytes = match (&e.bundle, &e.record, &e.evidence) {
            (Some(b), None, None) => b,
            (None, None, Some(file)) => {
                let d = bkv_transparency::evidence::digest(file);
                let (leaf, row, logged) =
                    verify_evidence_entry(i, e, file, namespace, &akey, operator_key)?;
                if !digests.insert(d) {
                    bail!("entry {i}: digest logged twice");
                }
                evidence_by_digest.insert(d, logged);
                evidence.push(row);
                check_in_log(snap, &cp, &mut leaves, i, leaf)?;
                continue;
            }
            (None, Some(r), None) => {
                let (leaf, row) = verify_member_entry(i, e, r, namespace, &akey, operator_key)?;
                if !digests.insert(bkv_transparency::membership::record_digest(r)) {
                    bail!("entry {i}: digest logged twice");
                }
                members.push(row);
                check_in_log(snap, &cp, &mut leaves, i, leaf)?;
                continue;
            }
            _ => bail!("entry {i}: not exactly one of a bundle, a membership record, evidence"),
        };
        let b = Bundle::decode(bundle_bytes).map_err(|err| anyhow!("entry {i}: {err}"))?;
        let d = bundle::digest(bundle_bytes);
        if b.namespace != namespace {
            bail!("entry {i}: bundle namespace {:?}", b.namespace);
        }
        if !digests.insert(d) {
            bail!("entry {i}: digest logged twice");
        }
        if !bundle::verify_sig(
            &akey,
            &bundle::auditor_message(namespace, b.epoch, &d),
            &e.auditor_signature,
        ) {
            bail!("entry {i} (epoch {}): auditor signature invalid", b.epoch);
        }
        let asig: [u8; 64] = e
            .auditor_signature
            .as_slice()
            .try_into()
            .map_err(|_| anyhow!("entry {i}: signature length"))?;
        match &e.operator_signature {
            Some(s) if bundle::verify_sig(operator_key, &bundle::operator_message(&asig), s) => {}
            Some(_) => bail!(
                "entry {i} (epoch {}): operator counter-signature invalid for the given operator key",
                b.epoch
            ),
            None => bail!("entry {i} (epoch {}): no operator counter-signature", b.epoch),
        }
        if let Some(p) = &prev {
            if b.epoch <= p.epoch {
                bail!(
                    "entry {i}: epoch {} does not increase (previous {})",
                    b.epoch,
                    p.epoch
                );
            }
        }
        let leaf = merkle::leaf_hash(&bundle::leaf_data(b.epoch, &d));
        check_in_log(snap, &cp, &mut leaves, i, leaf)?;
        let keys_of = |b: &Bundle| {
            let mut k: Vec<_> = b
                .keys
                .iter()
                .map(|k| (format!("{:?}", k.role), k.key))
                .collect();
            k.sort();
            k
        };
        let change = match &prev {
            None => "initial".to_owned(),
            Some(p) if keys_of(p) == keys_of(&b) => "same keys".to_owned(),
            Some(_) => "KEYS CHANGED".to_owned(),
        };
        if change != "same keys" && b.evidence_digest == [0u8; 32] {
            warnings.push(format!(
                "epoch {}: fleet keys {} without deployment evidence",
                b.epoch,
                if prev.is_none() {
                    "introduced"
                } else {
                    "changed"
                }
            ));
        }
        // A previous fleet is one clients used before: the preferred fleet, with the same keys,
        // of an earlier epoch. Anything else introduces keys no epoch vouched for.
        for p in &b.previous {
            match (preferred.get(&p.fleet_id), p.noise_key()) {
                (Some(k), Some(n)) if *k == n => {}
                (Some(_), _) => warnings.push(format!(
                    "epoch {}: previous fleet {} with other keys than when it was preferred",
                    b.epoch, p.fleet_id
                )),
                (None, _) => warnings.push(format!(
                    "epoch {}: previous fleet {} was never the preferred fleet of an earlier epoch (keys no epoch vouched for)",
                    b.epoch, p.fleet_id
                )),
            }
            previous_fleets.push((i, b.epoch, p.clone()));
        }
        if let Some(k) = b.noise_key() {
            preferred.insert(b.fleet_id.clone(), k);
        }
        rows.push(EpochRow {
            index: i,
            epoch: b.epoch,
            fleet_id: b.fleet_id.clone(),
            noise_key: b.noise_key().map(hex::encode).unwrap_or_default(),
            node_keys: b
                .keys
                .iter()
                .filter(|k| k.role == bundle::KeyRole::NodeIdentity)
                .count(),
            not_before: b.not_before,
            not_after: b.not_after,
            evidence_digest: hex::encode(b.evidence_digest),
            previous: b.previous.iter().map(|p| p.fleet_id.clone()).collect(),
            change,
            evidence: None,
        });
        prev = Some(b);
    }
    if merkle::root(&leaves) != cp.root {
        bail!("the entries do not hash to the checkpoint's root");
    }
    link_evidence(
        snap,
        &mut rows,
        &mut members,
        &evidence_by_digest,
        &mut warnings,
    )?;
    // Every fleet of every bundle comes with its evidence, logged before the bundle.
    for (index, epoch, p) in &previous_fleets {
        match evidence_by_digest.get(&p.evidence_digest) {
            Some(l) if l.index < *index && Some(l.noise_key) == p.noise_key() => {}
            _ => warnings.push(format!(
                "epoch {epoch}: previous fleet {} without matching deployment evidence logged before it",
                p.fleet_id
            )),
        }
    }
    Ok(LogReport {
        auditor: hex::encode(akey.as_bytes()),
        namespace: namespace.to_owned(),
        origin,
        size: cp.size,
        root: hex::encode(cp.root),
        epochs: rows,
        members,
        evidence,
        web,
        warnings,
    })
}

#[cfg(test)]
mod tests;
