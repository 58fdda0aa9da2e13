//! `bkv-admin fleet form --plan FILE`: forms a fleet on real hosts by the deployment ceremony.
//!
//! The operator collects every node's platform statement (`bkv-hsm --config node.toml
//! --print-statement > node-N.statement.json` on its host), writes a plan naming them, and runs
//! this tool; it says when to start each node and waits for it: the first founds the fleet, each
//! further one is admitted (membership record logged with the auditor, a command signed with the
//! operator key), started with `[fleet] join = members.json`, caught up and promoted. The draft
//! evidence goes to the witnesses, who check it and sign its transcript head with their own tool
//! and keys (`bkv witness ceremony`); this tool waits for their signature files and imports them.
//! The evidence is written, logged with the auditor, and a bundle naming the fleet is published.
//! `deploy/form.toml` is a sample plan.

use crate::ceremony::{Formed, Hosts, PlannedNode, Terms};
use anyhow::{anyhow, bail, Context};
use bkv_operator::fleet::Operator;
use bkv_wire::admin::SignedStatement;
use ed25519_dalek::SigningKey;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest plan or statement file read.
const MAX_FILE: u64 = 256 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The log namespace of the fleet's bundles and membership records.
    pub namespace: String,
    /// The auditor's base URL.
    pub auditor_url: String,
    /// Trust only this CA (PEM) for the auditor's HTTPS certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The operator's Ed25519 signing key (32 bytes, raw or hex; mode 0600).
    pub operator_key_file: PathBuf,
    /// Who signs the ceremony transcript (with their own tool and keys).
    pub witnesses: Vec<WitnessPlan>,
    /// The fleet's guess-limit policy, for the founder's config (`[fleet] max_guess_limit`).
    #[serde(default = "default_guess_limit")]
    pub max_guess_limit: u32,
    /// Earlier fleets whose records may move here, `FLEET_ID=MOVE_KEY_HEX`, for the founder's
    /// config (`[fleet] predecessors`; their nodes print the move key in their ready line).
    #[serde(default)]
    pub predecessors: Vec<String>,
    /// Where `members.json` (what joining nodes read) and `evidence.json` go.
    pub out_dir: PathBuf,
    /// How long to wait for each node to answer on its admin link.
    #[serde(default = "default_wait")]
    pub wait_secs: u64,
    /// The source commit and toolchain the nodes' binary was built from (recorded in the
    /// evidence; default: this checkout's and this machine's).
    #[serde(default)]
    pub source_commit: Option<String>,
    #[serde(default)]
    pub toolchain: Option<String>,
    /// The nodes, the founder first.
    pub nodes: Vec<NodePlan>,
}

fn default_wait() -> u64 {
    600
}

fn default_guess_limit() -> u32 {
    bkv_wire::vault::DEFAULT_GUESS_LIMIT
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessPlan {
    pub name: String,
    /// The witness's Ed25519 public key (hex; `bkv witness key` prints it): its signature
    /// must verify under it.
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePlan {
    /// Its id in the fleet.
    pub id: u64,
    /// Output of `bkv-hsm --print-statement` on its host.
    pub statement_file: PathBuf,
    /// Its peer-link address as the other nodes reach it.
    pub peer: String,
    /// Its admin link, as this tool reaches it.
    pub admin: SocketAddr,
}

impl Plan {
    fn load(path: &Path) -> anyhow::Result<(Plan, PathBuf)> {
        let text = bkv_service::read_limited(path, MAX_FILE)?;
        let text =
            String::from_utf8(text).with_context(|| format!("{} is not UTF-8", path.display()))?;
        let plan: Plan =
            toml::from_str(&text).with_context(|| format!("plan {}", path.display()))?;
        if plan.nodes.is_empty() {
            bail!("plan {}: no nodes", path.display());
        }
        let mut ids: Vec<u64> = plan.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != plan.nodes.len() {
            bail!("plan {}: node ids repeat", path.display());
        }
        if !(plan.auditor_url.starts_with("https://") || plan.auditor_url.starts_with("http://")) {
            bail!(
                "plan {}: auditor_url must be an http(s) URL",
                path.display()
            );
        }
        if plan.witnesses.is_empty() {
            bail!(
                "plan {}: a ceremony needs at least one witness",
                path.display()
            );
        }
        for w in &plan.witnesses {
            bkv_wire::key_from_hex(&w.key)
                .map_err(|e| anyhow!("plan {}: witness {}: key: {e}", path.display(), w.name))?;
        }
        for p in &plan.predecessors {
            bkv_hsm_node::parse_predecessor(p)
                .map_err(|e| anyhow!("plan {}: {e}", path.display()))?;
        }
        // Relative paths are relative to the plan.
        let base = path.parent().unwrap_or(Path::new(".")).to_owned();
        Ok((plan, base))
    }
}

fn key(path: &Path) -> anyhow::Result<SigningKey> {
    let k = bkv_service::read_key32(path)?;
    Ok(SigningKey::from_bytes(&k))
}

/// A node's signed platform statement from `--print-statement` output (JSON with
/// `signed_statement` in hex).
fn statement(path: &Path) -> anyhow::Result<SignedStatement> {
    let raw = bkv_service::read_limited(path, MAX_FILE)?;
    let printed: bkv_api::statement::PrintedStatement =
        serde_json::from_slice(&raw).with_context(|| {
            format!(
                "{} is not a bkv-hsm --print-statement output",
                path.display()
            )
        })?;
    let bytes = hex::decode(&printed.signed_statement)
        .with_context(|| format!("{}: signed_statement", path.display()))?;
    bkv_wire::decode(&bytes, 16 * 1024)
        .map_err(|e| anyhow!("{}: signed_statement: {e}", path.display()))
}

fn say(line: &str) {
    // Stdout, one line per step: an operator reads it, a script waits on it.
    println!("form: {line}");
}

/// Waits for a witness's signature file (written by `bkv witness ceremony`) and reads it.
async fn wait_for_signature(
    file: &Path,
    wait: Duration,
) -> anyhow::Result<bkv_transparency::evidence::Witness> {
    let started = Instant::now();
    loop {
        if let Ok(b) = bkv_service::read_limited(file, MAX_FILE) {
            if let Ok(w) = serde_json::from_slice(&b) {
                return Ok(w);
            }
        }
        if started.elapsed() > wait {
            bail!("no witness signature in {} after {wait:?}", file.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_members(path: &Path, members: &[bkv_hsm_node::Member]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(members)?)?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// `config check` of a plan: its fields and, unless `skip_files`, the keys, certificate and
/// statements it names.
pub fn check(plan_path: &Path, skip_files: bool) -> anyhow::Result<()> {
    let (plan, base) = Plan::load(plan_path)?;
    if skip_files {
        return Ok(());
    }
    let at = |p: &Path| base.join(p);
    key(&at(&plan.operator_key_file))?;
    for n in &plan.nodes {
        statement(&at(&n.statement_file))?;
    }
    if let Some(ca) = &plan.ca_file {
        let pem = bkv_service::read_limited(&at(ca), MAX_FILE)?;
        reqwest::Certificate::from_pem(&pem).context("ca_file")?;
    }
    Ok(())
}

pub async fn run(plan_path: &Path) -> anyhow::Result<()> {
    let (plan, base) = Plan::load(plan_path)?;
    let at = |p: &Path| base.join(p);
    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(ca) = &plan.ca_file {
        let pem = bkv_service::read_limited(&at(ca), MAX_FILE)?;
        http = http
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    // The operator's record of the commands it signs, beside its key.
    let mut ledger_path = at(&plan.operator_key_file).into_os_string();
    ledger_path.push(".ledger.json");
    let op = Operator {
        key: key(&at(&plan.operator_key_file))?,
        auditor_url: plan.auditor_url.trim_end_matches('/').to_owned(),
        namespace: plan.namespace.clone(),
        http: http.build()?,
        ledger: Some(bkv_operator::ledger::Ledger::at(Path::new(&ledger_path))),
    };
    let witness_keys = plan
        .witnesses
        .iter()
        .map(|w| bkv_wire::key_from_hex(&w.key).map_err(|e| anyhow!("witness {}: {e}", w.name)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let statements = plan
        .nodes
        .iter()
        .map(|n| Ok((n.id, statement(&at(&n.statement_file))?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out = at(&plan.out_dir);
    std::fs::create_dir_all(&out)?;
    let members_path = out.join("members.json");
    let wait = Duration::from_secs(plan.wait_secs);
    let predecessors = plan
        .predecessors
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let nodes = plan
        .nodes
        .iter()
        .zip(statements)
        .map(|(n, (_, statement))| PlannedNode {
            id: n.id,
            peer: n.peer.clone(),
            statement,
        })
        .collect::<Vec<_>>();
    let terms = Terms {
        operator: &op,
        witness_keys: &witness_keys,
        source_commit: plan
            .source_commit
            .clone()
            .unwrap_or_else(crate::dev::source_commit),
        toolchain: plan.toolchain.clone().unwrap_or_else(crate::dev::toolchain),
        wait,
    };
    let mut prompt = Prompt {
        plan: &plan,
        founding: format!(
            "[fleet] found = true, namespace = \"{}\", max_guess_limit = {}, predecessors = [{predecessors}]",
            plan.namespace, plan.max_guess_limit
        ),
        members_path,
        out: out.clone(),
        wait,
    };
    let Formed { evidence, .. } = crate::ceremony::form(&terms, &nodes, &mut prompt).await?;
    let evidence_path = prompt.evidence_path();
    let parsed = bkv_transparency::evidence::parse(&evidence).map_err(|e| anyhow!("{e}"))?;
    let fleet = bkv_transparency::bundle::BundleFleet {
        fleet_id: parsed.fleet_id.clone(),
        keys: vec![bkv_transparency::bundle::FleetKey {
            role: bkv_transparency::bundle::KeyRole::NoiseStatic,
            key: bkv_wire::key_from_hex(&parsed.fleet_keys.noise_static).map_err(|e| anyhow!(e))?,
        }],
        evidence_digest: bkv_transparency::evidence::digest(&evidence),
    };
    let epoch = crate::bundle::publish(&op, vec![fleet]).await?;
    say(&format!(
        "done fleet={} noise_public_key={} evidence={} bundle_epoch={}",
        parsed.fleet_id,
        parsed.fleet_keys.noise_static,
        evidence_path.display(),
        epoch.map_or_else(|| "unchanged".to_owned(), |e| e.to_string())
    ));
    Ok(())
}

/// The ceremony's hosts on real machines: the operator is told when to start each node and
/// each witness when to sign, and this tool waits for them.
struct Prompt<'a> {
    plan: &'a Plan,
    /// The founder's `[fleet]` settings, as the prompt names them.
    founding: String,
    members_path: PathBuf,
    out: PathBuf,
    wait: Duration,
}

impl Prompt<'_> {
    /// Where the finished evidence goes.
    fn evidence_path(&self) -> PathBuf {
        self.out.join("evidence.json")
    }

    fn admin_of(&self, id: u64) -> anyhow::Result<SocketAddr> {
        self.plan
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.admin)
            .ok_or_else(|| anyhow!("node {id} is not in the plan"))
    }
}

impl Hosts for Prompt<'_> {
    async fn found(&mut self, node: &PlannedNode) -> anyhow::Result<SocketAddr> {
        let admin = self.admin_of(node.id)?;
        say(&format!(
            "start node {} to found the fleet ({}); waiting for its admin link {admin}",
            node.id, self.founding
        ));
        crate::ceremony::fleet_statement(admin, self.wait).await?;
        Ok(admin)
    }

    fn members(&mut self, members: &[bkv_hsm_node::Member]) -> anyhow::Result<()> {
        write_members(&self.members_path, members)
    }

    async fn join(&mut self, node: &PlannedNode) -> anyhow::Result<SocketAddr> {
        let admin = self.admin_of(node.id)?;
        say(&format!(
            "node {} admitted; start it with [fleet] join = \"{}\"; waiting for its admin link {admin}",
            node.id,
            self.members_path.display(),
        ));
        crate::ceremony::fleet_statement(admin, self.wait).await?;
        Ok(admin)
    }

    async fn witness(
        &mut self,
        _fleet_id: &str,
        draft: &[u8],
    ) -> anyhow::Result<Vec<bkv_transparency::evidence::Witness>> {
        let draft_path = self.out.join("evidence.draft.json");
        std::fs::write(&draft_path, draft)?;
        let mut signatures = Vec::new();
        for w in &self.plan.witnesses {
            let file = self.out.join(format!("witness-{}.json", w.name));
            say(&format!(
                "witness {}: check and sign the draft with `bkv witness ceremony --key KEY --name {} {}` and put its output in {}; waiting",
                w.name,
                w.name,
                draft_path.display(),
                file.display()
            ));
            signatures.push(wait_for_signature(&file, self.wait).await?);
        }
        Ok(signatures)
    }

    fn evidence(&mut self, _fleet_id: &str, evidence: &[u8]) -> anyhow::Result<()> {
        let path = self.evidence_path();
        std::fs::write(&path, evidence).with_context(|| format!("write {}", path.display()))
    }

    fn founded(&mut self, node: u64) {
        say(&format!("node {node} founded the fleet"));
    }

    fn joined(&mut self, node: u64) {
        say(&format!("node {node} joined as a voter"));
    }
}
