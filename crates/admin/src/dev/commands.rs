//! `bkv-admin fleet add-node|remove-node|ceremony|retire` on a dev deployment.

use super::*;
use anyhow::{anyhow, bail};
use bkv_operator::fleet::{self as fleet_admin};
use std::path::Path;

/// `bkv-admin fleet add-node --dir DIR [--fleet K]`: a new `bkv-hsm` joins fleet K
/// of a `dev up` deployment, admitted by a command signed with the
/// deployment's operator key after its membership record is in the
/// auditor's log.
pub async fn add_node(dir: &Path, fleet: usize) -> anyhow::Result<()> {
    let d = Deployment::load(dir, fleet)?;
    if !members_file(dir, fleet).exists() {
        bail!("{} holds no fleet {fleet}", dir.display());
    }
    let i = d.free_dir_index(0);
    if i >= 9 {
        bail!("at most 9 nodes");
    }
    let node = d.add(i).await?;
    println!(
        "bkv-admin fleet: node {i} added pid={} listen={} admin={} fleet={}",
        node.pid, node.listen, node.admin, node.fleet_id
    );
    Ok(())
}

/// `bkv-admin fleet remove-node --dir DIR [--fleet K] ID`: the removal is logged
/// with the auditor, a signed command removes node ID (peers refuse its
/// identity afterwards), and its process is stopped.
pub async fn remove_node(dir: &Path, fleet: usize, id: u64) -> anyhow::Result<()> {
    let d = Deployment::load(dir, fleet)?;
    let i = d
        .dir_of(id)
        .ok_or_else(|| anyhow!("fleet {fleet} of {} has no node {id}", dir.display()))?;
    fleet_admin::remove(&d.operator, &d.admins(), &d.fleet_id()?, id).await?;
    let ndir = node_dir(dir, i);
    if let Some(pid) = read_pid(&ndir) {
        if pid_alive(pid) {
            stop_pid(pid);
        }
    }
    update_members(dir, fleet, |m| m.retain(|m| m.id != id))?;
    // Keep the data for forensics, but never start it again.
    let _ = std::fs::rename(ndir.join("node.json"), ndir.join("removed.json"));
    println!("bkv-admin fleet: node {id} of fleet {fleet} removed and stopped");
    Ok(())
}

/// `bkv-admin fleet ceremony --dir DIR --nodes N`: forms the deployment's next
/// fleet from N new nodes by the ceremony, logs its evidence, and publishes
/// a bundle naming it as the preferred fleet (the older active fleets stay
/// listed until retired: their records move on their users' next recovery).
pub async fn ceremony(dir: &Path, n: usize) -> anyhow::Result<()> {
    if !(1..=9).contains(&n) {
        bail!("--nodes must be between 1 and 9");
    }
    let mut fleets = load_fleets(dir)?;
    let k = fleets.iter().map(|f| f.index).max().unwrap_or(0) + 1;
    let mut d = Deployment::load(dir, 1)?;
    d.fleet = k;
    let dirs: Vec<usize> = (0..n).map(|s| d.free_dir_index(s)).collect();
    if dirs.iter().any(|i| *i >= 9) {
        bail!("a dev deployment holds at most 9 nodes in all");
    }
    let key_info: bkv_api::auditor::KeyInfo = d
        .operator
        .http
        .get(format!("{}/v1/key", d.operator.auditor_url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let verifier = key_info.verifier_key.as_str();
    // Records of the active fleets may move to the new one: it pins their move keys, which
    // their nodes state in their signed fleet statements.
    let mut predecessors = Vec::new();
    for f in fleets.iter().filter(|f| !f.retired) {
        let old = Deployment::load(dir, f.index)?;
        let predecessor = old
            .admins()
            .values()
            .find_map(|a| fleet_admin::fleet_statement(*a).ok())
            .ok_or_else(|| anyhow!("no node of fleet {} answers", f.index))
            .and_then(|s| {
                bkv_operator::ceremony::predecessor(&s, &f.fleet_id).map_err(|e| anyhow!(e))
            })?;
        predecessors.push(predecessor);
    }
    let (started, evidence) = d.ceremony(&dirs, verifier, &predecessors).await?;
    let node = started.first().ok_or_else(|| anyhow!("no node"))?;
    fleets.push(FleetEntry {
        index: k,
        fleet_id: node.fleet_id.clone(),
        noise_key: node.noise_public_key.clone(),
        evidence_digest: hex::encode(bkv_transparency::evidence::digest(&evidence)),
        retired: false,
    });
    save_fleets(dir, &fleets)?;
    publish_fleets(&d.operator, &fleets).await?;
    println!(
        "bkv-admin fleet: fleet {k} formed fleet={} nodes={} evidence={}",
        node.fleet_id,
        started.len(),
        dir.join("evidence")
            .join(format!("{}.json", node.fleet_id))
            .display()
    );
    Ok(())
}

/// `bkv-admin fleet retire --dir DIR --fleet K [--force]`: publishes a bundle
/// without fleet K. Refused while K still holds records (they move on their
/// users' next recovery) unless `--force` (the deadline passed: records not
/// moved by then can no longer be recovered with a password).
pub async fn retire(dir: &Path, fleet: usize, force: bool) -> anyhow::Result<()> {
    let mut fleets = load_fleets(dir)?;
    let preferred = fleets.iter().filter(|f| !f.retired).map(|f| f.index).max();
    if preferred == Some(fleet) {
        bail!(
            "fleet {fleet} is the preferred fleet; form its successor first (`bkv-admin fleet ceremony`)"
        );
    }
    let entry = fleets
        .iter_mut()
        .find(|f| f.index == fleet && !f.retired)
        .ok_or_else(|| anyhow!("{} has no active fleet {fleet}", dir.display()))?;
    let d = Deployment::load(dir, fleet)?;
    if !force {
        let (_, view) = fleet_admin::members(&d.admins())?;
        if view.records > 0 {
            bail!(
                "fleet {fleet} still holds {} records: they move to the new fleet on their users' next password recovery; retire with --force once the deadline has passed",
                view.records
            );
        }
    }
    entry.retired = true;
    let id = entry.fleet_id.clone();
    save_fleets(dir, &fleets)?;
    publish_fleets(&d.operator, &fleets).await?;
    println!("bkv-admin fleet: fleet {fleet} ({id}) retired: the new bundle no longer lists it");
    Ok(())
}
