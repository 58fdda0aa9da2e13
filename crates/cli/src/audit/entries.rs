//! Checking single log entries: deployment evidence and membership records, each against
//! the log (inclusion) and the bundles that name them.

use super::*;
use anyhow::{anyhow, bail};
use bkv_transparency::bundle::{self};
use bkv_transparency::merkle::{self, Hash};
use bkv_transparency::note::Checkpoint;
use ed25519_dalek::VerifyingKey;

/// Links each bundle to the evidence it names (which must be logged before
/// it and name the same fleet key) and each membership change to the
/// ceremony evidence that records it; flags every one without.
pub(super) fn link_evidence(
    snap: &Snapshot,
    rows: &mut [EpochRow],
    members: &mut [MemberRow],
    evidence: &std::collections::HashMap<[u8; 32], LoggedEvidence>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    for r in rows.iter_mut() {
        if r.evidence_digest == hex::encode([0u8; 32]) {
            continue;
        }
        let d: [u8; 32] = hex::decode(&r.evidence_digest)?
            .try_into()
            .map_err(|_| anyhow!("digest length"))?;
        match evidence.get(&d) {
            Some(l) if l.index < r.index && hex::encode(l.noise_key) == r.noise_key => {
                r.evidence = Some(l.index)
            }
            Some(l) if l.index > r.index => warnings.push(format!(
                "epoch {}: its evidence was logged after the bundle (index {})",
                r.epoch, l.index
            )),
            Some(_) => warnings.push(format!(
                "epoch {}: its evidence names other fleet keys than the bundle",
                r.epoch
            )),
            None => warnings.push(format!(
                "epoch {}: names evidence {} that is not in the log",
                r.epoch, r.evidence_digest
            )),
        }
    }
    for m in members.iter_mut() {
        let record = snap
            .entries
            .get(m.index as usize)
            .and_then(|e| e.record.as_ref());
        m.evidence = evidence
            .values()
            .find(|l| record.is_some_and(|r| l.records.contains(r)))
            .map(|l| l.index);
        if m.evidence.is_none() && m.change != "remove" {
            warnings.push(format!(
                "entry {}: node {} joined fleet {} without ceremony evidence (admitted after formation; its statement is listed above)",
                m.index, m.node_id, m.fleet_id
            ));
        }
    }
    Ok(())
}

/// Verifies an evidence entry: the auditor's and operator's signatures and
/// the evidence itself (offline checks). Returns its leaf, its row, and
/// what linking needs.
pub(super) fn verify_evidence_entry(
    i: u64,
    e: &Entry,
    file: &[u8],
    namespace: &str,
    akey: &VerifyingKey,
    operator_key: &VerifyingKey,
) -> anyhow::Result<(Hash, EvidenceRow, LoggedEvidence)> {
    use bkv_transparency::evidence as ev;
    let d = ev::digest(file);
    if !bundle::verify_sig(
        akey,
        &ev::auditor_message(namespace, &d),
        &e.auditor_signature,
    ) {
        bail!("entry {i} (evidence): auditor signature invalid");
    }
    match &e.operator_signature {
        Some(s) if bundle::verify_sig(operator_key, &ev::append_message(file), s) => {}
        _ => bail!("entry {i} (evidence): not signed by the given operator key"),
    }
    let parsed = ev::parse(file).map_err(|err| anyhow!("entry {i} (evidence): {err}"))?;
    if parsed.namespace != namespace {
        bail!("entry {i}: evidence for namespace {:?}", parsed.namespace);
    }
    let v = ev::verify(&parsed, &[]).map_err(|err| anyhow!("entry {i} (evidence): {err}"))?;
    Ok((
        merkle::leaf_hash(&ev::leaf_data(&d)),
        EvidenceRow {
            index: i,
            fleet_id: parsed.fleet_id.clone(),
            digest: hex::encode(d),
            nodes: v.nodes.len(),
            witnesses: v.witnesses.iter().map(|(n, _)| n.clone()).collect(),
            binary_sha256: parsed.measurement.binary_sha256.clone(),
            source_commit: parsed.measurement.source_commit.clone(),
        },
        LoggedEvidence {
            index: i,
            noise_key: v.fleet_keys.noise_static,
            records: v.nodes.into_iter().map(|n| n.record).collect(),
        },
    ))
}

/// Adds entry `i`'s leaf and checks its inclusion in the checkpoint and
/// the consistency of the tree up to it with the checkpoint.
pub(super) fn check_in_log(
    snap: &Snapshot,
    cp: &Checkpoint,
    leaves: &mut Vec<Hash>,
    i: u64,
    leaf: Hash,
) -> anyhow::Result<()> {
    leaves.push(leaf);
    let idx = i as usize;
    let (Some(inclusion), Some(consistency)) = (snap.inclusion.get(idx), snap.consistency.get(idx))
    else {
        bail!("entry {i}: no proofs");
    };
    if !merkle::verify_inclusion(i, cp.size, &leaf, inclusion, &cp.root) {
        bail!("entry {i}: not included in the checkpoint (inclusion proof fails)");
    }
    let size = i + 1;
    if !merkle::verify_consistency(size, cp.size, &merkle::root(leaves), &cp.root, consistency) {
        bail!("tree size {size} is not consistent with the checkpoint (size {}): the log was rewritten or forked", cp.size);
    }
    Ok(())
}

/// Verifies a membership entry: the record, the auditor's signature, the
/// operator's signature over the append, and the node's platform statement.
pub(super) fn verify_member_entry(
    i: u64,
    e: &Entry,
    record: &[u8],
    namespace: &str,
    akey: &VerifyingKey,
    operator_key: &VerifyingKey,
) -> anyhow::Result<(Hash, MemberRow)> {
    use bkv_transparency::membership::{self as m, MembershipChange, MembershipRecord};
    let r = MembershipRecord::decode(record).map_err(|err| anyhow!("entry {i}: {err}"))?;
    if r.namespace != namespace {
        bail!("entry {i}: membership record namespace {:?}", r.namespace);
    }
    let d = m::record_digest(record);
    if !bundle::verify_sig(
        akey,
        &m::auditor_record_message(namespace, &d),
        &e.auditor_signature,
    ) {
        bail!("entry {i} (membership): auditor signature invalid");
    }
    match &e.operator_signature {
        Some(s) if bundle::verify_sig(operator_key, &m::append_record_message(record), s) => {}
        _ => bail!("entry {i} (membership): not signed by the given operator key"),
    }
    let (change, node_id, st, identity) = match &r.change {
        MembershipChange::Found { node_id, statement } => {
            ("found", *node_id, Some(statement), None)
        }
        MembershipChange::Add { node_id, statement } => ("add", *node_id, Some(statement), None),
        MembershipChange::Remove {
            node_id,
            identity_key,
        } => ("remove", *node_id, None, Some(*identity_key)),
        _ => bail!("entry {i}: unknown membership change"),
    };
    let st = st
        .map(|s| m::verify_statement(s).map_err(|err| anyhow!("entry {i}: {err}")))
        .transpose()?;
    let identity = identity
        .or(st.as_ref().map(|s| s.identity_key))
        .unwrap_or_default();
    Ok((
        merkle::leaf_hash(&m::record_leaf_data(&d)),
        MemberRow {
            index: i,
            fleet_id: r.fleet_id,
            change: change.into(),
            node_id,
            identity_key: hex::encode(identity),
            platform: st.as_ref().map(|s| s.platform.kind.name().to_owned()),
            token: st.as_ref().map(|s| s.platform.token.clone()),
            signing_key: st.as_ref().map(|s| hex::encode(s.signing_key)),
            binary_sha256: st.as_ref().map(|s| hex::encode(s.binary_sha256)),
            evidence: None,
        },
    ))
}

/// Verifies a web build entry: the manifest's form and both signatures. Returns its leaf and
/// its row.
pub(super) fn verify_web_entry(
    i: u64,
    e: &Entry,
    manifest: &[u8],
    namespace: &str,
    akey: &VerifyingKey,
    operator_key: &VerifyingKey,
) -> anyhow::Result<(Hash, WebRow)> {
    use bkv_transparency::web;
    let d = web::digest(manifest);
    if !bundle::verify_sig(
        akey,
        &web::auditor_message(namespace, &d),
        &e.auditor_signature,
    ) {
        bail!("entry {i} (web build): auditor signature invalid");
    }
    match &e.operator_signature {
        Some(s) if bundle::verify_sig(operator_key, &web::append_message(manifest), s) => {}
        _ => bail!("entry {i} (web build): not signed by the given operator key"),
    }
    let m =
        web::Manifest::parse(manifest).map_err(|err| anyhow!("entry {i} (web build): {err}"))?;
    Ok((
        merkle::leaf_hash(&web::leaf_data(&d)),
        WebRow {
            index: i,
            digest: hex::encode(d),
            files: m.files.len(),
        },
    ))
}
