//! `bkv audit fleet EVIDENCE`: checks one fleet's deployment evidence —
//! offline (transcript chain, every node and witness signature, agreement
//! of the statements, fleet keys, measurement), against the auditor's log
//! (the evidence, every member's record and the bundle naming the evidence
//! are in it, with inclusion and consistency proofs), and optionally against
//! a local reproducible build of the core service `bkv-core`. Every failure names its check.

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

/// A membership change the log shows for the fleet after its ceremony: a node added later holds
/// the fleet keys too.
#[derive(Debug, Serialize)]
pub struct LaterMember {
    pub log_index: u64,
    pub change: String,
    pub node_id: u64,
    pub identity_key: String,
    pub platform: Option<String>,
    pub binary_sha256: Option<String>,
}

/// What the fleet's cores enforce, as every node's fleet statement states it.
#[derive(Debug, Serialize)]
pub struct PolicyRow {
    pub max_guess_limit: u32,
    pub move_key: String,
    /// `fleet id=move key` of every fleet whose records may move here.
    pub predecessors: Vec<String>,
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
    /// The fleet's policy (`None`: its nodes, of an earlier release, state none).
    pub policy: Option<PolicyRow>,
    /// Members the log admitted (or removed) after the ceremony.
    pub later_members: Vec<LaterMember>,
    pub checks: Vec<String>,
    /// Checks that could not be made for want of a pinned key or the auditor: the audit fails.
    pub not_checked: Vec<String>,
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
        policy: v.policy.as_ref().map(|p| PolicyRow {
            max_guess_limit: p.max_guess_limit,
            move_key: hex::encode(p.move_key),
            predecessors: p
                .predecessors
                .iter()
                .map(|q| format!("{}={}", q.fleet_id, hex::encode(q.move_key)))
                .collect(),
        }),
        later_members: Vec::new(),
        checks: Vec::new(),
        not_checked: Vec::new(),
    };
    // Every audit fails closed: a check that needs a pinned key it was not given is reported as
    // not made, and the audit fails.
    if a.witnesses.is_empty() {
        report.not_checked.push(
            "witnesses: no --witness key pinned, so who signed the transcript is unknown".into(),
        );
    }
    if let Some(p) = &v.policy {
        checks.push(format!(
            "policy: every node states the same (at most {} guesses per record, {} predecessor fleets)",
            p.max_guess_limit,
            p.predecessors.len()
        ));
    } else {
        report
            .not_checked
            .push("policy: the nodes (of an earlier release) state no guess-limit policy".into());
    }
    match a.auditor {
        None => report.not_checked.push(
            "auditor log: no --auditor, so nothing shows the evidence, its members and bundles were logged".into(),
        ),
        Some(_) if a.auditor_key.is_none() || a.operator_key.is_none() => {
            report.not_checked.push(
                "auditor log: --auditor-key and --operator-key must both be pinned (keys the auditor presents prove nothing)".into(),
            )
        }
        Some(_) => {}
    }
    if let (Some(url), Some(operator), Some(auditor_key)) =
        (a.auditor, a.operator_key, a.auditor_key)
    {
        let snap = fetch_snapshot(&a.http, url, &e.namespace).await?;
        verify_snapshot(&snap, &e.namespace, &operator, Some(auditor_key))
            .context("auditor log")?;
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
        // A node admitted to this fleet after the ceremony holds the keys too: every later
        // membership change of the fleet is listed.
        let ceremony: std::collections::BTreeSet<u64> =
            v.nodes.iter().map(|n| n.log_index).collect();
        for x in &snap.entries {
            let Some(record) = &x.record else { continue };
            let Ok(r) = bkv_transparency::membership::MembershipRecord::decode(record) else {
                continue;
            };
            if r.fleet_id != e.fleet_id || ceremony.contains(&x.index) {
                continue;
            }
            use bkv_transparency::membership::{verify_statement, MembershipChange};
            let (change, node_id, identity, st) = match &r.change {
                MembershipChange::Found { node_id, statement } => {
                    let st = verify_statement(statement).ok();
                    ("found", *node_id, st.as_ref().map(|s| s.identity_key), st)
                }
                MembershipChange::Add { node_id, statement } => {
                    let st = verify_statement(statement).ok();
                    ("add", *node_id, st.as_ref().map(|s| s.identity_key), st)
                }
                MembershipChange::Remove {
                    node_id,
                    identity_key,
                } => ("remove", *node_id, Some(*identity_key), None),
                _ => ("unknown change", 0, None, None),
            };
            report.later_members.push(LaterMember {
                log_index: x.index,
                change: change.into(),
                node_id,
                identity_key: identity.map(hex::encode).unwrap_or_default(),
                platform: st.as_ref().map(|s| s.platform.kind.name().to_owned()),
                binary_sha256: st.as_ref().map(|s| hex::encode(s.binary_sha256)),
            });
        }
        checks.push(format!(
            "auditor log: {} membership changes of this fleet after the ceremony (listed)",
            report.later_members.len()
        ));
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
                "rebuild: the measured bkv-core {} is not reproduced by a local build ({rebuilt}); check out commit {} with {}",
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

pub fn print_report(r: &FleetReport) {
    println!(
        "fleet {}  namespace {}  evidence digest {}",
        r.fleet_id, r.namespace, r.digest
    );
    println!("noise static key {}", r.noise_static);
    println!(
        "bkv-core sha256 {}  (commit {}, {})",
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
    if let Some(p) = &r.policy {
        println!(
            "policy: at most {} guesses per record; move key {}; records may move here from [{}]",
            p.max_guess_limit,
            p.move_key,
            p.predecessors.join(", ")
        );
    }
    for m in &r.later_members {
        println!(
            "  later: log #{} {} node {} identity {}… {} bkv-core {}",
            m.log_index,
            m.change,
            m.node_id,
            m.identity_key.get(..16).unwrap_or(&m.identity_key),
            m.platform.as_deref().unwrap_or("-"),
            m.binary_sha256.as_deref().unwrap_or("-"),
        );
    }
    for c in &r.checks {
        println!("ok: {c}");
    }
    if r.rebuilt_sha256.is_none() {
        println!("not requested: that a reproducible build of the named commit gives this hash (use --rebuild)");
    }
}
