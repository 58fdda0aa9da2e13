//! Forming and growing a dev deployment's fleets by the ceremony (keys, witnesses, evidence).

use super::*;
use crate::ceremony::{Hosts, PlannedNode, Terms};
use anyhow::{anyhow, bail, Context};
use bkv_operator::fleet::{self as fleet_admin, Operator};
use ed25519_dalek::SigningKey;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Deployment parameters shared by `dev up` and `bkv-admin fleet add-node|remove-node`.
pub(crate) struct Deployment {
    pub(crate) dir: PathBuf,
    pub(crate) hsm_bin: PathBuf,
    pub(crate) platform: DevPlatform,
    pub(crate) port_base: Option<u16>,
    pub(crate) operator: Operator,
    /// Which fleet of the deployment this administers.
    pub(crate) fleet: usize,
}

impl Deployment {
    /// Reads an existing `dev up` directory, to administer fleet `fleet`.
    pub(crate) fn load(dir: &Path, fleet: usize) -> anyhow::Result<Self> {
        let records = node_records(dir);
        let (_, first) = records
            .first()
            .ok_or_else(|| anyhow!("{} holds no dev deployment", dir.display()))?;
        let auditor = std::fs::read_to_string(dir.join("auditor/listen"))
            .with_context(|| format!("{} has no auditor", dir.display()))?;
        let key = load_key(&dir.join("operator/operator-signing.key"))?;
        Ok(Deployment {
            dir: dir.to_owned(),
            hsm_bin: first.hsm_bin.clone(),
            platform: match first.platform {
                NodePlatform::Software { .. } => DevPlatform::Software,
                NodePlatform::Softhsm { .. } => DevPlatform::Softhsm,
            },
            port_base: None,
            operator: Operator {
                key,
                auditor_url: format!("http://{}", auditor.trim()),
                namespace: DEV_NAMESPACE.into(),
                http: reqwest::Client::new(),
                ledger: Some(operator_ledger(dir)),
            },
            fleet,
        })
    }

    /// The id of the fleet this administers, as its nodes' records name it (what the operator
    /// signs commands for, whatever an admin link answers).
    pub(crate) fn fleet_id(&self) -> anyhow::Result<String> {
        node_records(&self.dir)
            .into_iter()
            .filter(|(_, r)| r.fleet == self.fleet)
            .find_map(|(_, r)| r.fleet_id)
            .ok_or_else(|| anyhow!("no node of fleet {} names its fleet id", self.fleet))
    }

    /// The next unused node directory index.
    pub(crate) fn free_dir_index(&self, skip: usize) -> usize {
        (0..)
            .filter(|i| {
                let n = node_dir(&self.dir, *i);
                !n.join("node.json").exists() && !n.join("removed.json").exists()
            })
            .nth(skip)
            .unwrap_or(usize::MAX)
    }

    /// The next unused node id in this fleet (removed ones stay used).
    pub(crate) fn free_node_id(&self) -> u64 {
        (0..9)
            .flat_map(|i| {
                let n = node_dir(&self.dir, i);
                ["node.json", "removed.json"].map(|f| n.join(f))
            })
            .filter_map(|p| std::fs::read(p).ok())
            .filter_map(|b| serde_json::from_slice::<NodeRecord>(&b).ok())
            .filter(|r| r.fleet == self.fleet)
            .map(|r| r.node_id + 1)
            .max()
            .unwrap_or(0)
    }

    /// A new node's record: its directory `i`, id, platform and addresses.
    pub(crate) fn new_record(&self, i: usize, node_id: u64) -> anyhow::Result<NodeRecord> {
        let ndir = node_dir(&self.dir, i);
        let data_dir = ndir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let platform = match self.platform {
            // The platform sits beside the data directory, so that a
            // rolled-back data directory is detected as one.
            DevPlatform::Software => NodePlatform::Software {
                dir: ndir.join("platform"),
            },
            DevPlatform::Softhsm => init_softhsm_token(&ndir, i)?,
        };
        // Every port below the kernel's ephemeral range (`free_port`), not just the peer port
        // admission names: a restarted node rebinds its ports, and a port the kernel handed
        // out (port 0) can meanwhile be the local end of some outgoing connection — seen in CI
        // as "Address already in use" when a killed node came back.
        let port = |offset: u16| -> anyhow::Result<u16> {
            Ok(match self.port_base {
                Some(b) => b + 3 + 3 * i as u16 + offset,
                None => free_port()?,
            })
        };
        Ok(NodeRecord {
            node_id,
            listen: format!("127.0.0.1:{}", port(0)?).parse()?,
            peer_listen: format!("127.0.0.1:{}", port(1)?),
            peer_advertise: peer_via(i)?,
            admin: format!("127.0.0.1:{}", port(2)?).parse()?,
            data_dir,
            platform,
            hsm_bin: self.hsm_bin.clone(),
            join: (node_id > 0).then(|| members_file(&self.dir, self.fleet)),
            fleet: self.fleet,
            fleet_id: None,
        })
    }

    /// Node id → admin address of every recorded node of this fleet.
    pub(crate) fn admins(&self) -> BTreeMap<u64, SocketAddr> {
        node_records(&self.dir)
            .into_iter()
            .filter(|(_, r)| r.fleet == self.fleet)
            .map(|(_, r)| (r.node_id, r.admin))
            .collect()
    }

    /// The directory index of this fleet's node `node_id`.
    pub(crate) fn dir_of(&self, node_id: u64) -> Option<usize> {
        node_records(&self.dir)
            .into_iter()
            .find(|(_, r)| r.fleet == self.fleet && r.node_id == node_id)
            .map(|(i, _)| i)
    }

    /// Adds node `i` after formation: its statement, a logged and signed
    /// admission, its start, catch-up and promotion. (No ceremony evidence:
    /// `bkv audit log` flags such later admissions.)
    pub(crate) async fn add(&self, i: usize) -> anyhow::Result<StartedNode> {
        let rec = self.new_record(i, self.free_node_id())?;
        let statement = print_statement(&rec)?;
        let fleet_id = self.fleet_id()?;
        fleet_admin::admit(
            &self.operator,
            &self.admins(),
            &fleet_id,
            rec.node_id,
            rec.peer_addr(),
            statement.clone(),
        )
        .await?;
        let id = rec.node_id;
        let st = bkv_transparency::membership::verify_statement(&statement)
            .map_err(|e| anyhow!("node {id}'s statement: {e}"))?;
        update_members(&self.dir, self.fleet, |m| {
            m.retain(|m| m.id != id);
            m.push(bkv_hsm_node::Member {
                id,
                addr: rec.peer_addr().to_owned(),
                identity: hex::encode(st.identity_key),
            });
        })?;
        let node = self.start(i, rec, &[])?;
        crate::ceremony::promote_when_caught_up(
            &self.operator,
            &self.admins(),
            &fleet_id,
            id,
            CATCH_UP,
        )
        .await?;
        Ok(node)
    }

    /// Starts node `i` as recorded (with `extra` arguments) and records its addresses.
    fn start(
        &self,
        i: usize,
        mut rec: NodeRecord,
        extra: &[String],
    ) -> anyhow::Result<StartedNode> {
        let ndir = node_dir(&self.dir, i);
        let node = start_node_with(&rec, &ndir, extra)?;
        rec.listen = node.listen;
        rec.admin = node.admin;
        rec.fleet_id = Some(node.fleet_id.clone());
        std::fs::write(ndir.join("node.json"), serde_json::to_vec_pretty(&rec)?)?;
        Ok(node)
    }

    /// Forms the fleet of nodes `0..n` by the ceremony (see
    /// `bkv_operator::ceremony`): node 0 generates the fleet keys pinning
    /// the operator and auditor keys; every other node is admitted by a
    /// logged, signed command and receives the keys encrypted to its
    /// identity key; every step goes into the transcript; the witnesses
    /// sign it; the evidence is written to `DIR/evidence/<fleet id>.json`
    /// and logged with the auditor. Returns the nodes and the evidence.
    pub(crate) async fn ceremony(
        &self,
        dirs: &[usize],
        auditor_verifier_key: &str,
        predecessors: &[bkv_wire::admin::PredecessorFleet],
    ) -> anyhow::Result<(Vec<StartedNode>, Vec<u8>)> {
        let mut records = BTreeMap::new();
        let mut nodes = Vec::new();
        for (id, i) in dirs.iter().enumerate() {
            let rec = self.new_record(*i, id as u64)?;
            nodes.push(PlannedNode {
                id: id as u64,
                peer: rec.peer_addr().to_owned(),
                statement: print_statement(&rec)?,
            });
            records.insert(id as u64, (*i, rec));
        }
        let mut found = vec![
            "--found".to_owned(),
            "--operator-key".to_owned(),
            hex::encode(self.operator.key.verifying_key().as_bytes()),
            "--auditor-key".to_owned(),
            auditor_verifier_key.to_owned(),
            "--namespace".to_owned(),
            self.operator.namespace.clone(),
        ];
        for p in predecessors {
            found.push("--predecessor".to_owned());
            found.push(format!("{}={}", p.fleet_id, hex::encode(p.move_key)));
        }
        let witnesses = dev_witnesses(&self.dir)?;
        let witness_keys: Vec<[u8; 32]> = witnesses.iter().map(|w| w.public).collect();
        let terms = Terms {
            operator: &self.operator,
            witness_keys: &witness_keys,
            source_commit: source_commit(),
            toolchain: toolchain(),
            wait: CATCH_UP,
        };
        let mut hosts = DevHosts {
            d: self,
            records,
            found,
            witnesses,
            started: Vec::new(),
        };
        let formed = crate::ceremony::form(&terms, &nodes, &mut hosts).await?;
        Ok((hosts.started, formed.evidence))
    }
}

/// How long a dev node may take to catch up before it is promoted (generous: a loaded CI
/// machine runs several fleets at once).
const CATCH_UP: Duration = Duration::from_secs(120);

/// The ceremony's hosts in a dev deployment: local `bkv-hsm` processes, and witnesses whose
/// keys and tool (`bkv witness`) live under the deployment's directory.
struct DevHosts<'a> {
    d: &'a Deployment,
    /// Node id → its directory index and record, until it starts.
    records: BTreeMap<u64, (usize, NodeRecord)>,
    /// The founder's arguments (`--found …`).
    found: Vec<String>,
    witnesses: Vec<DevWitness>,
    started: Vec<StartedNode>,
}

impl DevHosts<'_> {
    fn start(&mut self, id: u64, extra: &[String]) -> anyhow::Result<SocketAddr> {
        let (i, rec) = self
            .records
            .remove(&id)
            .ok_or_else(|| anyhow!("node {id} is not planned"))?;
        let node = self.d.start(i, rec, extra)?;
        let admin = node.admin;
        self.started.push(node);
        Ok(admin)
    }

    fn evidence_dir(&self) -> anyhow::Result<PathBuf> {
        let edir = self.d.dir.join("evidence");
        std::fs::create_dir_all(&edir)?;
        Ok(edir)
    }
}

impl Hosts for DevHosts<'_> {
    async fn found(&mut self, node: &PlannedNode) -> anyhow::Result<SocketAddr> {
        let found = std::mem::take(&mut self.found);
        self.start(node.id, &found)
    }

    fn members(&mut self, members: &[bkv_hsm_node::Member]) -> anyhow::Result<()> {
        update_members(&self.d.dir, self.d.fleet, |m| *m = members.to_vec())
    }

    async fn join(&mut self, node: &PlannedNode) -> anyhow::Result<SocketAddr> {
        self.start(node.id, &[])
    }

    async fn witness(
        &mut self,
        fleet_id: &str,
        draft: &[u8],
    ) -> anyhow::Result<Vec<bkv_transparency::evidence::Witness>> {
        let draft_path = self.evidence_dir()?.join(format!("{fleet_id}.draft.json"));
        std::fs::write(&draft_path, draft)?;
        let signatures = self
            .witnesses
            .iter()
            .map(|w| witness_signs(w, &draft_path))
            .collect();
        let _ = std::fs::remove_file(&draft_path);
        signatures
    }

    fn evidence(&mut self, fleet_id: &str, evidence: &[u8]) -> anyhow::Result<()> {
        let path = self.evidence_dir()?.join(format!("{fleet_id}.json"));
        std::fs::write(&path, evidence).with_context(|| format!("write {}", path.display()))
    }
}

/// A dev deployment's witness: its name, its key file (kept by its own tool) and public key.
pub(crate) struct DevWitness {
    pub(crate) name: String,
    pub(crate) key_file: PathBuf,
    pub(crate) public: [u8; 32],
}

/// The two witnesses of a dev deployment (`DIR/witnesses/witness-N.key`, with the public key in
/// hex beside it as `witness-N.pub`). Their keys are made and used by the witness's own tool
/// (`bkv witness`), never by the operator's: a real ceremony's witnesses run it on their own
/// machines.
pub(crate) fn dev_witnesses(dir: &Path) -> anyhow::Result<Vec<DevWitness>> {
    let wdir = dir.join("witnesses");
    std::fs::create_dir_all(&wdir)?;
    (1..=2)
        .map(|i| {
            let key_file = wdir.join(format!("witness-{i}.key"));
            let out = Command::new(bkv_bin()?)
                .args(["witness", "key", "--key"])
                .arg(&key_file)
                .output()
                .context("run bkv witness key")?;
            if !out.status.success() {
                bail!(
                    "bkv witness key: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let hex_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let public = bkv_wire::key_from_hex(&hex_key)
                .map_err(|e| anyhow!("bkv witness key printed {hex_key:?}: {e}"))?;
            std::fs::write(
                wdir.join(format!("witness-{i}.pub")),
                format!("{hex_key}\n"),
            )?;
            Ok(DevWitness {
                name: format!("dev-witness-{i}"),
                key_file,
                public,
            })
        })
        .collect()
}

/// `bkv witness ceremony`: the witness checks the draft and signs its head.
fn witness_signs(
    w: &DevWitness,
    draft: &Path,
) -> anyhow::Result<bkv_transparency::evidence::Witness> {
    let out = Command::new(bkv_bin()?)
        .args(["witness", "ceremony", "--key"])
        .arg(&w.key_file)
        .args(["--name", &w.name])
        .arg(draft)
        .output()
        .context("run bkv witness ceremony")?;
    if !out.status.success() {
        bail!(
            "witness {} refused the draft: {}",
            w.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("witness {}'s signature", w.name))
}

/// The user's `bkv` (the witness tool), next to this executable.
fn bkv_bin() -> anyhow::Result<PathBuf> {
    bkv_cli::find_bin("bkv", "BKV_BIN", None)
}

/// The dev operator's record of the admin commands it signed.
pub(crate) fn operator_ledger(dir: &Path) -> bkv_operator::ledger::Ledger {
    bkv_operator::ledger::Ledger::at(&dir.join("operator/operator-ledger.json"))
}

/// The source commit of the running build, when run from a git checkout.
pub(crate) fn source_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The pinned toolchain's version (`rustc --version`).
pub(crate) fn toolchain() -> String {
    Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let k = bkv_private_files::read_key::<32>(path)?;
    Ok(SigningKey::from_bytes(&k))
}

/// A dev deployment's key, created only when no file exists (never replaced on a read error).
pub(crate) fn load_or_create_key(path: &Path) -> anyhow::Result<SigningKey> {
    let k = bkv_private_files::load_or_create_key::<32>(path)?;
    Ok(SigningKey::from_bytes(&k))
}

/// Starts the fleet's `n` nodes. A directory that already holds a fleet
/// (`fleet.json`) restarts its recorded nodes. Otherwise the fleet is formed
/// by the ceremony ([`Deployment::ceremony`]) and its evidence returned.
pub(crate) async fn start_fleet(
    dir: &Path,
    hsm_bin: &Path,
    n: usize,
    port_base: Option<u16>,
    platform: DevPlatform,
    auditor: &StartedAuditor,
    operator: &SigningKey,
) -> anyhow::Result<(Vec<StartedNode>, Option<Vec<u8>>)> {
    let d = Deployment {
        dir: dir.to_owned(),
        hsm_bin: hsm_bin.to_owned(),
        platform,
        port_base,
        operator: Operator {
            key: operator.clone(),
            auditor_url: auditor.url.clone(),
            namespace: DEV_NAMESPACE.into(),
            http: reqwest::Client::new(),
            ledger: Some(operator_ledger(dir)),
        },
        fleet: 1,
    };
    for i in 0..9 {
        if let Some(pid) = read_pid(&node_dir(dir, i)) {
            if pid_alive(pid) {
                bail!(
                    "node {i} of {} is already running (pid {pid}); stop it first",
                    dir.display()
                );
            }
        }
    }
    let mut started = Vec::new();
    if dir.join("fleet.json").exists() {
        for (i, mut rec) in node_records(dir) {
            let ndir = node_dir(dir, i);
            let node = start_node(&rec, &ndir)?;
            rec.listen = node.listen;
            rec.admin = node.admin;
            rec.fleet_id = Some(node.fleet_id.clone());
            std::fs::write(ndir.join("node.json"), serde_json::to_vec_pretty(&rec)?)?;
            started.push(node);
        }
        // The preferred (newest active) fleet's node first.
        let preferred = load_fleets(dir)?
            .into_iter()
            .filter(|f| !f.retired)
            .max_by_key(|f| f.index)
            .map(|f| f.fleet_id);
        if let Some(p) = preferred {
            started.sort_by_key(|n| n.fleet_id != p);
        }
        return Ok((started, None));
    }
    let dirs: Vec<usize> = (0..n).collect();
    let (started, evidence) = d.ceremony(&dirs, &auditor.verifier_key, &[]).await?;
    Ok((started, Some(evidence)))
}
