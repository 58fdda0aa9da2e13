//! A dev deployment's directory: node records, fleets, members files, ports, SoftHSM tokens.

use anyhow::{anyhow, Context};
use bkv_operator::fleet::Operator;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Which platform a dev node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DevPlatform {
    /// Keys in files beside each node's data (INSECURE; the default).
    Software,
    /// A SoftHSM2 token per node (`DIR/nodes/<i>/softhsm2.conf`, PIN in `DIR/nodes/<i>/pin`).
    Softhsm,
}

/// Where one dev node keeps its keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum NodePlatform {
    Software {
        dir: PathBuf,
    },
    Softhsm {
        conf: PathBuf,
        token_label: String,
        pin_file: PathBuf,
        module: PathBuf,
    },
}

/// How a node was started, so `restart-node` can start it again identically.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: u64,
    /// Relay link (frontend).
    pub listen: SocketAddr,
    /// Admin link (operator).
    pub admin: SocketAddr,
    /// Peer link (Raft): where the node listens.
    pub peer_listen: String,
    /// Where other members reach the peer link, if not at `peer_listen`
    /// (the chaos tests put a fault-injecting proxy there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_advertise: Option<String>,
    pub data_dir: PathBuf,
    pub platform: NodePlatform,
    pub hsm_bin: PathBuf,
    /// Members file to ask for the fleet secrets (joining nodes).
    #[serde(default)]
    pub join: Option<PathBuf>,
    /// Which of the deployment's fleets: 1, 2, … in the order formed.
    #[serde(default = "first_fleet")]
    pub fleet: usize,
    /// The fleet's id, once the node reported it.
    #[serde(default)]
    pub fleet_id: Option<String>,
}

pub(crate) fn first_fleet() -> usize {
    1
}

/// A fleet of the deployment (`DIR/fleets.json`), for the bundles.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetEntry {
    pub index: usize,
    pub fleet_id: String,
    /// Noise static public key (hex).
    pub noise_key: String,
    /// SHA-256 of its evidence (hex).
    pub evidence_digest: String,
    #[serde(default)]
    pub retired: bool,
}

pub(crate) fn load_fleets(dir: &Path) -> anyhow::Result<Vec<FleetEntry>> {
    match std::fs::read(dir.join("fleets.json")) {
        Ok(b) => Ok(serde_json::from_slice(&b).context("fleets.json")?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn save_fleets(dir: &Path, fleets: &[FleetEntry]) -> anyhow::Result<()> {
    std::fs::write(dir.join("fleets.json"), serde_json::to_vec_pretty(fleets)?)?;
    Ok(())
}

/// The members file new nodes of fleet `k` ask for the fleet secrets.
pub(crate) fn members_file(dir: &Path, fleet: usize) -> PathBuf {
    if fleet == 1 {
        dir.join("fleet.json")
    } else {
        dir.join(format!("fleet-{fleet}.json"))
    }
}

impl NodeRecord {
    pub(crate) fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--data-dir".to_owned(),
            self.data_dir.display().to_string(),
            "--listen".to_owned(),
            self.listen.to_string(),
            "--admin-listen".to_owned(),
            self.admin.to_string(),
            "--node-id".to_owned(),
            self.node_id.to_string(),
            "--peer-listen".to_owned(),
            self.peer_listen.clone(),
            // Health and metrics on a port of the kernel's choosing (written to
            // `nodes/<i>/metrics` at each start; benchmarks read the core-boundary counters there).
            "--metrics-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        if let Some(adv) = &self.peer_advertise {
            a.extend(["--peer-advertise".to_owned(), adv.clone()]);
        }
        match &self.platform {
            NodePlatform::Software { dir } => {
                a.extend(["--platform-dir".to_owned(), dir.display().to_string()])
            }
            NodePlatform::Softhsm {
                token_label,
                pin_file,
                module,
                ..
            } => a.extend([
                "--platform".to_owned(),
                "pkcs11".to_owned(),
                "--pkcs11-module".to_owned(),
                module.display().to_string(),
                "--token-label".to_owned(),
                token_label.clone(),
                "--pin-file".to_owned(),
                pin_file.display().to_string(),
            ]),
        }
        if let Some(j) = &self.join {
            a.extend(["--join".to_owned(), j.display().to_string()]);
        }
        a
    }

    pub(crate) fn env(&self) -> Vec<(String, PathBuf)> {
        match &self.platform {
            NodePlatform::Softhsm { conf, .. } => vec![("SOFTHSM2_CONF".to_owned(), conf.clone())],
            NodePlatform::Software { .. } => Vec::new(),
        }
    }
}

impl NodeRecord {
    /// The peer address the membership records for this node.
    pub fn peer_addr(&self) -> &str {
        self.peer_advertise.as_deref().unwrap_or(&self.peer_listen)
    }
}

/// `BKV_DEV_PEER_VIA=p0,p1,…`: node i's peer link is reached at
/// 127.0.0.1:p_i (a fault-injecting proxy the chaos tests run) instead of
/// where it listens. A testing hook of `dev up` only.
pub(crate) fn peer_via(i: usize) -> anyhow::Result<Option<String>> {
    let Ok(list) = std::env::var("BKV_DEV_PEER_VIA") else {
        return Ok(None);
    };
    let port = list
        .split(',')
        .nth(i)
        .ok_or_else(|| anyhow!("BKV_DEV_PEER_VIA names no port for node {i}"))?;
    let port: u16 = port
        .trim()
        .parse()
        .with_context(|| format!("BKV_DEV_PEER_VIA port {port:?}"))?;
    Ok(Some(format!("127.0.0.1:{port}")))
}

pub fn node_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join("nodes").join(i.to_string())
}

/// A port for a node's peer link, which must be known before the node starts (the operator's
/// admission names it): see [`bkv_service::free_loopback_port`].
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(bkv_service::free_loopback_port()?)
}

/// A fresh SoftHSM2 token for one node: its own token directory and
/// configuration (`DIR/nodes/<i>/softhsm2.conf`) and a random PIN in
/// `DIR/nodes/<i>/pin` (mode 0600). The token is initialised with
/// `softhsm2-util` (Debian package `softhsm2`); the node generates its keys
/// inside it on first start.
pub fn init_softhsm_token(ndir: &Path, i: usize) -> anyhow::Result<NodePlatform> {
    let secret = || {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        hex::encode(b)
    };
    // The SO PIN is not kept: a dev token is never re-initialised.
    let t = bkv_hsm_platform::softhsm::init_token(
        ndir,
        &format!("bkv-node-{i}"),
        &secret(),
        &secret(),
    )?;
    Ok(NodePlatform::Softhsm {
        conf: t.conf,
        token_label: t.config.token_label,
        pin_file: t.config.pin_file,
        module: t.config.module,
    })
}

/// Rewrites fleet `fleet`'s members file (whom new nodes ask for the secrets).
pub(crate) fn update_members(
    dir: &Path,
    fleet: usize,
    f: impl FnOnce(&mut Vec<bkv_hsm_node::Member>),
) -> anyhow::Result<()> {
    let path = members_file(dir, fleet);
    let mut members: Vec<bkv_hsm_node::Member> = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)?,
        Err(_) => Vec::new(),
    };
    f(&mut members);
    std::fs::write(&path, serde_json::to_vec_pretty(&members)?)?;
    Ok(())
}

pub(crate) fn node_records(dir: &Path) -> Vec<(usize, NodeRecord)> {
    (0..9)
        .filter_map(|i| {
            let b = std::fs::read(node_dir(dir, i).join("node.json")).ok()?;
            Some((i, serde_json::from_slice(&b).ok()?))
        })
        .collect()
}

/// Publishes a bundle naming the deployment's active fleets, the newest preferred (see
/// [`crate::bundle::publish`]).
pub(crate) async fn publish_fleets(op: &Operator, fleets: &[FleetEntry]) -> anyhow::Result<()> {
    use bkv_transparency::bundle::{BundleFleet, FleetKey, KeyRole};
    let mut active: Vec<&FleetEntry> = fleets.iter().filter(|f| !f.retired).collect();
    active.sort_by_key(|f| std::cmp::Reverse(f.index));
    let wanted = active
        .iter()
        .map(|f| {
            Ok(BundleFleet {
                fleet_id: f.fleet_id.clone(),
                keys: vec![FleetKey {
                    role: KeyRole::NoiseStatic,
                    key: bkv_wire::key_from_hex(&f.noise_key).map_err(|e| anyhow!(e))?,
                }],
                evidence_digest: bkv_wire::key_from_hex(&f.evidence_digest)
                    .map_err(|e| anyhow!(e))?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    crate::bundle::publish(op, wanted).await?;
    Ok(())
}
