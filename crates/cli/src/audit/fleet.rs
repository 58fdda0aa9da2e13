//! `bkv audit fleet EVIDENCE`: checks one fleet's deployment evidence —
//! offline (transcript chain, every node and witness signature, agreement
//! of the statements, fleet keys, measurement), against the auditor's log
//! (the evidence, every member's record and the bundle naming the evidence
//! are in it, with inclusion and consistency proofs), and optionally against
//! a local reproducible build of `bkv-hsm`. Every failure names its check.

use super::{fetch_snapshot, verify_snapshot};
use anyhow::{anyhow, bail, Context};
use bkv_transparency::bundle::Bundle;
use bkv_transparency::evidence as ev;
use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct NodeRow {
    pub node_id: u64,
    pub identity_key: String,
    pub platform: String,
    pub token: String,
    pub origin: String,
    pub log_index: u64,
}

#[derive(Debug, Serialize)]
pub struct FleetReport {
    pub namespace: String,
    pub fleet_id: String,
    pub digest: String,
    pub noise_static: String,
    pub binary_sha256: String,
    pub source_commit: String,
    pub toolchain: String,
    pub nodes: Vec<NodeRow>,
    pub witnesses: Vec<String>,
    /// Log index of the evidence, and the epochs of the bundles naming it.
    pub evidence_index: Option<u64>,
    pub bundle_epochs: Vec<u64>,
    /// The hash a local reproducible build gave (with --rebuild).
    pub rebuilt_sha256: Option<String>,
    pub checks: Vec<String>,
}

pub struct FleetAudit<'a> {
    pub evidence: &'a Path,
    /// For the auditor (see [`super::http_client`]).
    pub http: reqwest::Client,
    pub auditor: Option<&'a str>,
    /// The operator key (default: the one the auditor reports for the namespace).
    pub operator_key: Option<VerifyingKey>,
    pub auditor_key: Option<VerifyingKey>,
    pub witnesses: Vec<[u8; 32]>,
    /// Run this reproducible-build script and compare its hash.
    pub rebuild: Option<&'a Path>,
}

pub async fn audit_fleet(a: &FleetAudit<'_>) -> anyhow::Result<FleetReport> {
    let meta =
        std::fs::metadata(a.evidence).with_context(|| format!("read {}", a.evidence.display()))?;
    if meta.len() > ev::MAX_EVIDENCE as u64 {
        bail!("evidence: {} is larger than 256 KiB", a.evidence.display());
    }
    let file =
        std::fs::read(a.evidence).with_context(|| format!("read {}", a.evidence.display()))?;
    let digest = ev::digest(&file);
    let e = ev::parse(&file).map_err(|err| anyhow!("evidence: {err}"))?;
    let v = ev::verify(&e, &a.witnesses).map_err(|err| anyhow!("evidence: {err}"))?;
    let mut checks = vec![
        format!(
            "transcript: {} steps, hash chain intact",
            e.transcript.len()
        ),
        format!(
            "nodes: {} platform and fleet statements verify and agree; one generated the keys",
            v.nodes.len()
        ),
        format!(
            "witnesses: {} signed the transcript head",
            v.witnesses.len()
        ),
    ];
    let mut report = FleetReport {
        namespace: e.namespace.clone(),
        fleet_id: e.fleet_id.clone(),
        digest: hex::encode(digest),
        noise_static: e.fleet_keys.noise_static.clone(),
        binary_sha256: e.measurement.binary_sha256.clone(),
        source_commit: e.measurement.source_commit.clone(),
        toolchain: e.measurement.toolchain.clone(),
        nodes: v
            .nodes
            .iter()
            .map(|n| NodeRow {
                node_id: n.node_id,
                identity_key: hex::encode(n.statement.identity_key),
                platform: n.statement.platform.kind.name().into(),
                token: n.statement.platform.token.clone(),
                origin: format!("{:?}", n.fleet_statement.origin).to_lowercase(),
                log_index: n.log_index,
            })
            .collect(),
        witnesses: v.witnesses.iter().map(|(n, _)| n.clone()).collect(),
        evidence_index: None,
        bundle_epochs: Vec::new(),
        rebuilt_sha256: None,
        checks: Vec::new(),
    };
    if let Some(url) = a.auditor {
        let snap = fetch_snapshot(&a.http, url, &e.namespace).await?;
        let operator = match a.operator_key {
            Some(k) => k,
            None => reported_operator(&a.http, url, &e.namespace).await?,
        };
        verify_snapshot(&snap, &e.namespace, &operator, a.auditor_key).context("auditor log")?;
        checks.push(format!(
            "auditor log: {} entries, every signature, inclusion and consistency proof verifies",
            snap.entries.len()
        ));
        let at = snap
            .entries
            .iter()
            .position(|x| x.evidence.as_deref() == Some(&file[..]))
            .ok_or_else(|| {
                anyhow!(
                    "auditor log: this evidence (digest {}) is not in the log",
                    hex::encode(digest)
                )
            })?;
        report.evidence_index = Some(at as u64);
        for n in &v.nodes {
            let logged = snap
                .entries
                .get(n.log_index as usize)
                .and_then(|x| x.record.as_ref());
            if logged != Some(&n.record) {
                bail!(
                    "auditor log: node {}'s membership record is not at log index {} as the evidence says",
                    n.node_id,
                    n.log_index
                );
            }
        }
        checks.push("auditor log: the evidence and every member's record are in it".into());
        for x in &snap.entries {
            let Some(bytes) = &x.bundle else { continue };
            let b = Bundle::decode(bytes).map_err(|err| anyhow!("bundle {}: {err}", x.index))?;
            if b.evidence_digest != digest {
                continue;
            }
            if b.noise_key() != Some(v.fleet_keys.noise_static) || b.fleet_id != e.fleet_id {
                bail!(
                    "bundle: epoch {} names this evidence but carries other fleet keys or another fleet id",
                    b.epoch
                );
            }
            report.bundle_epochs.push(b.epoch);
        }
        if report.bundle_epochs.is_empty() {
            bail!("bundle: no bundle in the log names this evidence");
        }
        checks.push(format!(
            "bundle: epochs {:?} name this evidence and carry its fleet keys",
            report.bundle_epochs
        ));
    }
    if let Some(script) = a.rebuild {
        let out = std::process::Command::new(script)
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "rebuild: {} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let rebuilt = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("sha256 "))
            .map(|h| h.trim().to_owned())
            .ok_or_else(|| anyhow!("rebuild: the script printed no `sha256 <hex>` line"))?;
        report.rebuilt_sha256 = Some(rebuilt.clone());
        if rebuilt != e.measurement.binary_sha256 {
            bail!(
                "rebuild: the measured bkv-hsm {} is not reproduced by a local build ({rebuilt}); check out commit {} with {}",
                e.measurement.binary_sha256,
                e.measurement.source_commit,
                e.measurement.toolchain
            );
        }
        checks.push("rebuild: a local reproducible build has the measured hash".into());
    }
    report.checks = checks;
    Ok(report)
}

async fn reported_operator(
    http: &reqwest::Client,
    url: &str,
    namespace: &str,
) -> anyhow::Result<VerifyingKey> {
    let u = format!("{}/v1/logs/{namespace}", url.trim_end_matches('/'));
    let r = http
        .get(&u)
        .send()
        .await
        .with_context(|| format!("GET {u}"))?;
    let b = bkv_client::session::read_limited(r, 64 * 1024).await?;
    let v: serde_json::Value = serde_json::from_slice(&b).with_context(|| format!("GET {u}"))?;
    let k = bkv_wire::key_from_hex(v["operator_key"].as_str().unwrap_or_default())
        .map_err(|e| anyhow!("operator key: {e}"))?;
    Ok(VerifyingKey::from_bytes(&k)?)
}

pub fn print_report(r: &FleetReport) {
    println!(
        "fleet {}  namespace {}  evidence digest {}",
        r.fleet_id, r.namespace, r.digest
    );
    println!("noise static key {}", r.noise_static);
    println!(
        "bkv-hsm sha256 {}  (commit {}, {})",
        r.binary_sha256, r.source_commit, r.toolchain
    );
    for n in &r.nodes {
        println!(
            "  node {}  identity {}…  {} ({})  keys {}  log #{}",
            n.node_id,
            n.identity_key.get(..16).unwrap_or(&n.identity_key),
            n.platform,
            n.token,
            n.origin,
            n.log_index
        );
    }
    println!("witnesses: {}", r.witnesses.join(", "));
    for c in &r.checks {
        println!("ok: {c}");
    }
    if r.rebuilt_sha256.is_none() {
        println!("not checked: that a reproducible build of the named commit gives this hash (use --rebuild)");
    }
}
