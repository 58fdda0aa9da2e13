//! `bkv dev up` / `bkv dev restart-node`: a local deployment for development
//! and tests. Nodes and the auditor run as separate processes; the frontend
//! runs in this process. The fleet is formed the way a real one is: the
//! first node generates the fleet keys, every further node is admitted by a
//! signed operator command whose membership record is in the auditor's log
//! (`bkv_operator::fleet`).

use crate::config::{AuthConfig, ClientConfig, FleetConfig, OtaConfig};
use anyhow::{anyhow, bail, Context};
use bkv_operator::fleet::{self as fleet_admin, Operator};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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

fn first_fleet() -> usize {
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

fn load_fleets(dir: &Path) -> anyhow::Result<Vec<FleetEntry>> {
    match std::fs::read(dir.join("fleets.json")) {
        Ok(b) => Ok(serde_json::from_slice(&b).context("fleets.json")?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn save_fleets(dir: &Path, fleets: &[FleetEntry]) -> anyhow::Result<()> {
    std::fs::write(dir.join("fleets.json"), serde_json::to_vec_pretty(fleets)?)?;
    Ok(())
}

/// The members file new nodes of fleet `k` ask for the fleet secrets.
fn members_file(dir: &Path, fleet: usize) -> PathBuf {
    if fleet == 1 {
        dir.join("fleet.json")
    } else {
        dir.join(format!("fleet-{fleet}.json"))
    }
}

impl NodeRecord {
    fn args(&self) -> Vec<String> {
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

    fn env(&self) -> Vec<(String, PathBuf)> {
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
fn peer_via(i: usize) -> anyhow::Result<Option<String>> {
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

/// Finds a sibling binary (`bkv-hsm`, `bkv-auditor`): explicit path, the
/// environment variable `env`, or next to this executable.
pub fn find_bin(name: &str, env: &str, explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit.or_else(|| std::env::var_os(env).map(PathBuf::from)) {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locate the bkv executable")?;
    let candidate = exe.with_file_name(name);
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!(
        "{name} binary not found next to {} (build it with `cargo build --release --workspace`, or set {env})",
        exe.display()
    )
}

/// Starts `bin ARGS` in its own process group (so a Ctrl-C aimed at the
/// terminal is handled by `dev up`, which stops it), logging stderr to
/// `log`, writes `dir/pid`, and returns (pid, first stdout line).
fn spawn_ready(
    bin: &Path,
    args: &[String],
    env: &[(String, PathBuf)],
    dir: &Path,
    log: &str,
) -> anyhow::Result<(u32, String)> {
    std::fs::create_dir_all(dir)?;
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(log))
        .with_context(|| format!("open {log}"))?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(logf));
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = match lines.next() {
        Some(Ok(l)) if l.contains("ready") => l,
        _ => {
            let status = child.wait().ok();
            bail!(
                "{} exited before it was ready ({status:?}); see {}",
                bin.display(),
                dir.join(log).display()
            );
        }
    };
    // Keep draining (nothing more is printed, but never let it block).
    std::thread::spawn(move || for _ in lines {});
    let pid = child.id();
    std::fs::write(dir.join("pid"), format!("{pid}\n"))?;
    // Reaped by whoever stops it; dropping the handle does not kill it.
    std::mem::forget(child);
    Ok((pid, line))
}

fn ready_field(line: &str, k: &str) -> anyhow::Result<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_owned))
        .ok_or_else(|| anyhow!("unexpected ready line: {line}"))
}

pub struct StartedNode {
    pub pid: u32,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub fleet_id: String,
    pub noise_public_key: String,
}

/// Starts a `bkv-hsm` process as recorded and waits for its ready line.
pub fn start_node(rec: &NodeRecord, dir: &Path) -> anyhow::Result<StartedNode> {
    start_node_with(rec, dir, &[])
}

/// Starts a `bkv-hsm` process with `extra` arguments (the founder's
/// `--found …` on its first start).
pub fn start_node_with(
    rec: &NodeRecord,
    dir: &Path,
    extra: &[String],
) -> anyhow::Result<StartedNode> {
    let mut args = rec.args();
    args.extend_from_slice(extra);
    let (pid, line) = spawn_ready(&rec.hsm_bin, &args, &rec.env(), dir, "node.log")?;
    Ok(StartedNode {
        pid,
        listen: ready_field(&line, "listen")?.parse()?,
        admin: ready_field(&line, "admin")?.parse()?,
        fleet_id: ready_field(&line, "fleet")?,
        noise_public_key: ready_field(&line, "noise_public_key")?,
    })
}

pub struct StartedAuditor {
    pub url: String,
    pub name: String,
    /// Public key, hex.
    pub key: String,
    /// C2SP verifier key (`name+id+base64`), what a fleet pins.
    pub verifier_key: String,
}

/// Starts `bkv-auditor` for `namespace` with `operator` as its operator.
pub fn start_auditor(
    bin: &Path,
    dir: &Path,
    listen: &str,
    namespace: &str,
    operator: &VerifyingKey,
) -> anyhow::Result<StartedAuditor> {
    let args = vec![
        "--data-dir".to_owned(),
        dir.join("data").display().to_string(),
        "--listen".to_owned(),
        listen.to_owned(),
        "--namespace".to_owned(),
        format!("{namespace}={}", hex::encode(operator.as_bytes())),
    ];
    let (_, line) = spawn_ready(bin, &args, &[], dir, "auditor.log")?;
    let name = ready_field(&line, "name")?;
    let key = ready_field(&line, "key")?;
    let vk = VerifyingKey::from_bytes(&bkv_wire::key_from_hex(&key).map_err(|e| anyhow!(e))?)?;
    Ok(StartedAuditor {
        url: format!("http://{}", ready_field(&line, "listen")?),
        verifier_key: bkv_transparency::note::verifier_key(&name, &vk),
        name,
        key,
    })
}

pub fn read_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn pid_alive(pid: i32) -> bool {
    // Reap it if it is our child; a zombie of another parent counts as dead.
    let exists = unsafe {
        let mut status = 0;
        libc::waitpid(pid, &mut status, libc::WNOHANG);
        libc::kill(pid, 0) == 0
    };
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => true,
    }
}

/// Reaps exited children (nodes killed by the user) so they do not linger as zombies.
pub fn reap_children() {
    loop {
        let mut status = 0;
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            return;
        }
    }
}

pub fn stop_pid(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    for _ in 0..50 {
        if !pid_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

fn load_or_create_key(path: &Path) -> anyhow::Result<SigningKey> {
    if let Ok(b) = std::fs::read(path) {
        let arr: [u8; 32] = b
            .as_slice()
            .try_into()
            .map_err(|_| anyhow!("{} is corrupt", path.display()))?;
        return Ok(SigningKey::from_bytes(&arr));
    }
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    bkv_hsm_platform::write_private_file(path, &k)?;
    Ok(SigningKey::from_bytes(&k))
}

/// The development frontend's signing key for `POST /v1/dev/token` (in `DIR/frontend`).
const DEV_TOKEN_KEY_FILE: &str = "dev-token-signing.key";

/// Writes the development frontend's config: dev mode (tokens for any user), routes from
/// `routes.json` (kept current by `dev up`), the auditor's bundle, a `localhost` relying party.
/// Test hooks: `BKV_FRONTEND_IDLE_TIMEOUT` (seconds) shortens the header/keep-alive timeout, as
/// tests of idle gaps do; `BKV_FRONTEND_MAX_CEREMONIES` bounds the passkey ceremony table.
fn write_frontend_config(path: &Path, listen: &str, auditor_url: &str) -> anyhow::Result<()> {
    use bkv_frontend::config as fc;
    let mut limits = fc::LimitsConfig::default();
    if let Ok(v) = std::env::var("BKV_FRONTEND_IDLE_TIMEOUT") {
        limits.idle_timeout_secs = v
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .context("BKV_FRONTEND_IDLE_TIMEOUT must be a positive number of seconds")?;
    }
    let max_ceremonies = match std::env::var("BKV_FRONTEND_MAX_CEREMONIES") {
        Ok(v) => v
            .parse()
            .context("BKV_FRONTEND_MAX_CEREMONIES must be a number")?,
        Err(_) => bkv_frontend::passkeys::DEFAULT_MAX_CEREMONIES,
    };
    let file = fc::FrontendFile {
        listen: fc::ListenConfig {
            addr: listen.parse().context("frontend listen address")?,
            plain_http_beyond_loopback: false,
        },
        tokens: fc::TokenConfig {
            dev_mode: true,
            dev_signing_key_file: Some(PathBuf::from(DEV_TOKEN_KEY_FILE)),
            ..Default::default()
        },
        fleets: fc::FleetsConfig {
            routes: Vec::new(),
            routes_file: Some(PathBuf::from("routes.json")),
        },
        bundle: Some(fc::BundleConfig {
            auditor_url: auditor_url.to_owned(),
            namespace: DEV_NAMESPACE.into(),
        }),
        passkeys: Some(fc::PasskeysConfig {
            rp_id: crate::config::DEV_PASSKEY_RP_ID.into(),
            origin: crate::config::DEV_PASSKEY_ORIGIN.into(),
            store: PathBuf::from("passkeys.redb"),
            max_ceremonies,
        }),
        limits,
        log: Default::default(),
        tls: None,
        metrics: Default::default(),
    };
    let text = format!(
        "# Written by `bkv dev up`: a development frontend (dev mode mints tokens for anyone).\n\
         # Fields: docs/operations.md.\n{}",
        toml::to_string(&file).context("serialize the frontend config")?
    );
    bkv_hsm_platform::write_private_file(path, text.as_bytes())?;
    Ok(())
}

/// Writes `DIR/frontend/routes.json` (every fleet's relay addresses) when it changed; the
/// frontend re-reads it while serving.
fn write_routes(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("frontend").join("routes.json");
    let json = serde_json::to_vec_pretty(&fleet_routes(dir))?;
    if std::fs::read(&path).ok().as_deref() == Some(json.as_slice()) {
        return Ok(());
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, &json)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

pub struct StartedFrontend {
    pub pid: u32,
    pub url: String,
}

/// Starts `bkv-frontend --config FILE` and waits for its ready line.
fn start_frontend(bin: &Path, dir: &Path, config: &Path) -> anyhow::Result<StartedFrontend> {
    if let Some(pid) = read_pid(dir) {
        if pid_alive(pid) {
            stop_pid(pid);
        }
    }
    let args = vec!["--config".to_owned(), config.display().to_string()];
    let (pid, line) = spawn_ready(bin, &args, &[], dir, "frontend.log")?;
    Ok(StartedFrontend {
        pid,
        url: ready_field(&line, "url")?,
    })
}

pub struct UpArgs {
    pub dir: PathBuf,
    /// Fleet size (1 = a one-node fleet).
    pub nodes: usize,
    pub port_base: Option<u16>,
    pub hsm_bin: Option<PathBuf>,
    /// Write a client config in `pinned` mode instead of `ota`.
    pub pinned: bool,
    pub platform: DevPlatform,
    /// Object storage for the client config (`storage_url`); DIR/storage when unset.
    pub storage_url: Option<String>,
}

/// The namespace `dev up` publishes bundles in.
pub const DEV_NAMESPACE: &str = "dev";

/// Publishes a bundle for the deployment's fleets — the newest active one
/// preferred, the older active ones still serving — unless the log's latest
/// bundle already says exactly that and is valid for at least another day.
async fn publish_fleets(
    auditor_url: &str,
    operator: &SigningKey,
    fleets: &[FleetEntry],
) -> anyhow::Result<()> {
    use bkv_transparency::bundle::{Bundle, BundleFleet, FleetKey, KeyRole};
    let http = reqwest::Client::new();
    let base = format!("{auditor_url}/v1/logs/{DEV_NAMESPACE}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut active: Vec<&FleetEntry> = fleets.iter().filter(|f| !f.retired).collect();
    active.sort_by_key(|f| std::cmp::Reverse(f.index));
    let entry = |f: &FleetEntry| -> anyhow::Result<BundleFleet> {
        Ok(BundleFleet {
            fleet_id: f.fleet_id.clone(),
            keys: vec![FleetKey {
                role: KeyRole::NoiseStatic,
                key: bkv_wire::key_from_hex(&f.noise_key).map_err(|e| anyhow!(e))?,
            }],
            evidence_digest: bkv_wire::key_from_hex(&f.evidence_digest).map_err(|e| anyhow!(e))?,
        })
    };
    let mut wanted = active
        .iter()
        .map(|f| entry(f))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter();
    let preferred = wanted.next().ok_or_else(|| anyhow!("no active fleet"))?;
    let previous: Vec<BundleFleet> = wanted.collect();
    let mut epoch = 1;
    let latest = http.get(format!("{base}/bundles/latest")).send().await?;
    if latest.status() != reqwest::StatusCode::NOT_FOUND {
        let e: serde_json::Value = latest.error_for_status()?.json().await?;
        let bytes = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(e["bundle"].as_str().unwrap_or_default())?
        };
        let last = Bundle::decode(&bytes).map_err(|e| anyhow!("latest bundle: {e}"))?;
        let countersigned = e["operator_signature"].is_string();
        let same = last.fleets().first() == Some(&preferred) && last.previous == previous;
        if same && last.not_after > now + 86_400 && countersigned {
            return Ok(());
        }
        epoch = last.epoch + 1;
    }
    let b = Bundle {
        version: bkv_transparency::bundle::BUNDLE_VERSION,
        namespace: DEV_NAMESPACE.into(),
        epoch,
        fleet_id: preferred.fleet_id,
        keys: preferred.keys,
        not_before: now.saturating_sub(300),
        not_after: now + 30 * 86_400,
        evidence_digest: preferred.evidence_digest,
        previous,
    };
    bkv_operator::auditor::AuditorClient {
        http: &http,
        url: auditor_url,
        operator,
    }
    .publish(&b)
    .await?;
    Ok(())
}

/// Every fleet's relay addresses, from the node records (the frontend's
/// routes; a fleet formed or a node added later is learned while serving).
fn fleet_routes(dir: &Path) -> Vec<bkv_frontend::FleetRoute> {
    let mut out: Vec<bkv_frontend::FleetRoute> = Vec::new();
    for (_, r) in node_records(dir) {
        let Some(id) = r.fleet_id else { continue };
        match out.iter_mut().find(|f| f.fleet_id == id) {
            Some(f) => f.nodes.push(r.listen),
            None => out.push(bkv_frontend::FleetRoute {
                fleet_id: id,
                nodes: vec![r.listen],
            }),
        }
    }
    out
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let hsm_bin = find_bin("bkv-hsm", "BKV_HSM_BIN", args.hsm_bin)?;
    let auditor_bin = find_bin("bkv-auditor", "BKV_AUDITOR_BIN", None)?;
    let frontend_bin = find_bin("bkv-frontend", "BKV_FRONTEND_BIN", None)?;
    if !(1..=9).contains(&args.nodes) {
        bail!("--nodes must be between 1 and 9");
    }

    // The independent auditor (its own process and data directory) and the
    // operator key: the fleet pins both when it is formed.
    let operator_dir = dir.join("operator");
    std::fs::create_dir_all(&operator_dir)?;
    let operator = load_or_create_key(&operator_dir.join("operator-signing.key"))?;
    let adir = dir.join("auditor");
    if let Some(pid) = read_pid(&adir) {
        if pid_alive(pid) {
            stop_pid(pid);
        }
    }
    let alisten = std::fs::read_to_string(adir.join("listen"))
        .ok()
        .filter(|_| args.port_base.is_none())
        .unwrap_or_else(|| format!("127.0.0.1:{}", args.port_base.map(|p| p + 2).unwrap_or(0)));
    let auditor = start_auditor(
        &auditor_bin,
        &adir,
        alisten.trim(),
        DEV_NAMESPACE,
        &operator.verifying_key(),
    )?;
    std::fs::write(
        adir.join("listen"),
        auditor.url.trim_start_matches("http://"),
    )?;
    let (started, evidence) = match start_fleet(
        &dir,
        &hsm_bin,
        args.nodes,
        args.port_base,
        args.platform,
        &auditor,
        &operator,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            stop_deployment(&dir);
            return Err(e);
        }
    };
    let node = &started[0];
    let evidence_path = dir.join("evidence").join(format!("{}.json", node.fleet_id));
    if let Some(evidence) = evidence {
        save_fleets(
            &dir,
            &[FleetEntry {
                index: 1,
                fleet_id: node.fleet_id.clone(),
                noise_key: node.noise_public_key.clone(),
                evidence_digest: hex::encode(bkv_transparency::evidence::digest(&evidence)),
                retired: false,
            }],
        )?;
    }
    let fleets = load_fleets(&dir)?;
    if let Err(e) = publish_fleets(&auditor.url, &operator, &fleets).await {
        stop_deployment(&dir);
        return Err(e.context("publish the fleet's validation bundle"));
    }

    let frontend_dir = dir.join("frontend");
    std::fs::create_dir_all(&frontend_dir)?;
    load_or_create_key(&frontend_dir.join(DEV_TOKEN_KEY_FILE))?;
    write_routes(&dir)?;
    let frontend_config = frontend_dir.join("frontend.toml");
    write_frontend_config(
        &frontend_config,
        &format!("127.0.0.1:{}", args.port_base.unwrap_or(0)),
        &auditor.url,
    )?;
    let frontend = match start_frontend(&frontend_bin, &frontend_dir, &frontend_config) {
        Ok(f) => f,
        Err(e) => {
            stop_deployment(&dir);
            return Err(e);
        }
    };
    let storage_dir = dir.join("storage");
    std::fs::create_dir_all(&storage_dir)?;
    let frontend_url = frontend.url.clone();
    let client = ClientConfig {
        version: 1,
        frontend_url: frontend_url.clone(),
        storage_dir,
        storage_url: args.storage_url.clone(),
        ca_file: None,
        guess_limit: bkv_wire::vault::DEFAULT_GUESS_LIMIT,
        passkeys: Default::default(),
        fleet: if args.pinned {
            FleetConfig {
                mode: "pinned".into(),
                fleet_id: Some(node.fleet_id.clone()),
                noise_public_key: Some(node.noise_public_key.clone()),
                ota: None,
            }
        } else {
            FleetConfig {
                mode: "ota".into(),
                fleet_id: None,
                noise_public_key: None,
                ota: Some(OtaConfig {
                    namespace: DEV_NAMESPACE.into(),
                    origin: format!("{}/{DEV_NAMESPACE}", auditor.name),
                    auditor_name: auditor.name.clone(),
                    auditor_key: auditor.key.clone(),
                    operator_key: hex::encode(operator.verifying_key().as_bytes()),
                    state_file: PathBuf::from("client-state/log-state.json"),
                    log_trusted_since: None,
                    new_log_trusted: Vec::new(),
                }),
            }
        },
        auth: AuthConfig {
            dev_token_url: Some(format!("{frontend_url}/v1/dev/token")),
        },
    };
    let config_path = dir.join("client.toml");
    client.save(&config_path)?;

    println!(
        "bkv dev: ready frontend={frontend_url} frontend_pid={} nodes={} node0={} pid0={} admin0={} fleet={} auditor={} config={} evidence={}",
        frontend.pid,
        started.len(),
        node.listen,
        node.pid,
        node.admin,
        node.fleet_id,
        auditor.url,
        config_path.display(),
        evidence_path.display()
    );
    eprintln!("bkv dev: serving; stop with Ctrl-C (SIGINT) or SIGTERM");

    let routes_dir = dir.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            reap_children();
            // Fleets formed and nodes added by `bkv fleet ceremony|add-node`: the frontend
            // re-reads its routes file.
            if let Err(e) = write_routes(&routes_dir) {
                eprintln!("bkv dev: routes file: {e:#}");
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("bkv dev: stopping");
    stop_deployment(&dir);
    eprintln!("bkv dev: stopped");
    Ok(())
}

/// Stops whatever node and auditor pids of the deployment are current
/// (nodes may have been restarted by `restart-node`).
fn stop_deployment(dir: &Path) {
    let mut dirs: Vec<PathBuf> = vec![dir.join("frontend")];
    dirs.extend((0..9).map(|i| node_dir(dir, i)));
    dirs.push(dir.join("auditor"));
    for d in &dirs {
        if let Some(pid) = read_pid(d) {
            if pid_alive(pid) {
                stop_pid(pid);
            }
        }
    }
}

/// A port for a node's peer link, which must be known before the node starts (the operator's
/// admission names it). Bound and released, so another process could take it in between; to
/// make that unlikely it is a random port below the kernel's ephemeral range, which no
/// `bind(0)` and no outgoing connection is ever given.
fn free_port() -> anyhow::Result<u16> {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768u16);
    let low = 10_000u16;
    if ephemeral_low > low + 1000 {
        let mut rng = rand::thread_rng();
        for _ in 0..64 {
            let port = rng.gen_range(low..ephemeral_low);
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return Ok(l.local_addr()?.port());
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
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

/// The node's signed platform statement (`bkv-hsm --print-statement`;
/// creates its keys on a fresh data directory).
fn print_statement(rec: &NodeRecord) -> anyhow::Result<bkv_wire::admin::SignedStatement> {
    let mut args = rec.args();
    args.push("--print-statement".into());
    let out = Command::new(&rec.hsm_bin)
        .args(&args)
        .envs(rec.env())
        .output()
        .with_context(|| format!("run {}", rec.hsm_bin.display()))?;
    if !out.status.success() {
        bail!(
            "bkv-hsm --print-statement failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let bytes = hex::decode(v["signed_statement"].as_str().unwrap_or_default())?;
    Ok(bkv_wire::decode(&bytes, bkv_wire::admin::MAX_ADMIN_FRAME)?)
}

/// Deployment parameters shared by `dev up` and `bkv fleet add-node|remove-node`.
struct Deployment {
    dir: PathBuf,
    hsm_bin: PathBuf,
    platform: DevPlatform,
    port_base: Option<u16>,
    operator: Operator,
    /// Which fleet of the deployment this administers.
    fleet: usize,
}

impl Deployment {
    /// Reads an existing `dev up` directory, to administer fleet `fleet`.
    fn load(dir: &Path, fleet: usize) -> anyhow::Result<Self> {
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
            },
            fleet,
        })
    }

    /// The next unused node directory index.
    fn free_dir_index(&self, skip: usize) -> usize {
        (0..)
            .filter(|i| {
                let n = node_dir(&self.dir, *i);
                !n.join("node.json").exists() && !n.join("removed.json").exists()
            })
            .nth(skip)
            .unwrap_or(usize::MAX)
    }

    /// The next unused node id in this fleet (removed ones stay used).
    fn free_node_id(&self) -> u64 {
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
    fn new_record(&self, i: usize, node_id: u64) -> anyhow::Result<NodeRecord> {
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
        let port = |offset: u16| -> anyhow::Result<u16> {
            Ok(match self.port_base {
                Some(b) => b + 3 + 3 * i as u16 + offset,
                None if offset == 1 => free_port()?,
                None => 0,
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
    fn admins(&self) -> BTreeMap<u64, SocketAddr> {
        node_records(&self.dir)
            .into_iter()
            .filter(|(_, r)| r.fleet == self.fleet)
            .map(|(_, r)| (r.node_id, r.admin))
            .collect()
    }

    /// The directory index of this fleet's node `node_id`.
    fn dir_of(&self, node_id: u64) -> Option<usize> {
        node_records(&self.dir)
            .into_iter()
            .find(|(_, r)| r.fleet == self.fleet && r.node_id == node_id)
            .map(|(i, _)| i)
    }

    /// Adds node `i` after formation: its statement, a logged and signed
    /// admission, its start, catch-up and promotion. (No ceremony evidence:
    /// `bkv audit log` flags such later admissions.)
    async fn add(&self, i: usize) -> anyhow::Result<StartedNode> {
        let rec = self.new_record(i, self.free_node_id())?;
        let statement = print_statement(&rec)?;
        fleet_admin::admit(
            &self.operator,
            &self.admins(),
            rec.node_id,
            rec.peer_addr(),
            statement.clone(),
        )
        .await?;
        self.join(i, rec, &statement).await
    }

    /// Starts an admitted node (it fetches the fleet secrets encrypted to
    /// its identity key), waits until it caught up, and promotes it.
    async fn join(
        &self,
        i: usize,
        mut rec: NodeRecord,
        statement: &bkv_wire::admin::SignedStatement,
    ) -> anyhow::Result<StartedNode> {
        let id = rec.node_id;
        let st = bkv_transparency::membership::verify_statement(statement)
            .map_err(|e| anyhow!("node {id}'s statement: {e}"))?;
        update_members(&self.dir, self.fleet, |m| {
            m.retain(|m| m.id != id);
            m.push(bkv_hsm_node::Member {
                id,
                addr: rec.peer_addr().to_owned(),
                identity: hex::encode(st.identity_key),
            });
        })?;
        let ndir = node_dir(&self.dir, i);
        let node = start_node(&rec, &ndir)?;
        rec.listen = node.listen;
        rec.admin = node.admin;
        rec.fleet_id = Some(node.fleet_id.clone());
        std::fs::write(ndir.join("node.json"), serde_json::to_vec_pretty(&rec)?)?;
        // Promote once it has the leader's log.
        let admins = self.admins();
        let (_, view) = fleet_admin::members(&admins)?;
        let leader_applied = view.status.applied_index;
        for _ in 0..300 {
            if status_of(node.listen).is_some_and(|s| s.applied_index >= leader_applied) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        fleet_admin::promote(&self.operator, &admins, id)?;
        Ok(node)
    }

    /// Forms the fleet of nodes `0..n` by the ceremony (see
    /// `bkv_operator::ceremony`): node 0 generates the fleet keys pinning
    /// the operator and auditor keys; every other node is admitted by a
    /// logged, signed command and receives the keys encrypted to its
    /// identity key; every step goes into the transcript; the witnesses
    /// sign it; the evidence is written to `DIR/evidence/<fleet id>.json`
    /// and logged with the auditor. Returns the nodes and the evidence.
    async fn ceremony(
        &self,
        dirs: &[usize],
        auditor_verifier_key: &str,
    ) -> anyhow::Result<(Vec<StartedNode>, Vec<u8>)> {
        let mut records = Vec::new();
        let mut statements = Vec::new();
        for (id, i) in dirs.iter().enumerate() {
            let rec = self.new_record(*i, id as u64)?;
            statements.push((id as u64, print_statement(&rec)?));
            records.push((*i, rec));
        }
        let mut c = bkv_operator::ceremony::Ceremony::begin(&self.operator, &statements)?;
        let mut records = records.into_iter();
        let (dir0, mut rec) = records.next().ok_or_else(|| anyhow!("no node"))?;
        let found = vec![
            "--found".to_owned(),
            "--operator-key".to_owned(),
            hex::encode(self.operator.key.verifying_key().as_bytes()),
            "--auditor-key".to_owned(),
            auditor_verifier_key.to_owned(),
            "--namespace".to_owned(),
            self.operator.namespace.clone(),
        ];
        let ndir = node_dir(&self.dir, dir0);
        let node = start_node_with(&rec, &ndir, &found)?;
        rec.listen = node.listen;
        rec.admin = node.admin;
        rec.fleet_id = Some(node.fleet_id.clone());
        std::fs::write(ndir.join("node.json"), serde_json::to_vec_pretty(&rec)?)?;
        let (_, statement0) = statements
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no node"))?;
        let st0 = bkv_transparency::membership::verify_statement(&statement0)
            .map_err(|e| anyhow!("node 0's statement: {e}"))?;
        update_members(&self.dir, self.fleet, |m| {
            *m = vec![bkv_hsm_node::Member {
                id: 0,
                addr: rec.peer_addr().to_owned(),
                identity: hex::encode(st0.identity_key),
            }]
        })?;
        c.formed(0, statement0, fleet_admin::fleet_statement(node.admin)?)
            .await?;
        let mut started = vec![node];
        for ((i, rec), (id, statement)) in records.zip(statements.iter().skip(1)) {
            c.admit(&self.admins(), *id, rec.peer_addr(), statement.clone())
                .await?;
            let node = self.join(i, rec, statement).await?;
            c.joined(*id, fleet_admin::fleet_statement(node.admin)?)?;
            started.push(node);
        }
        let witnesses = dev_witnesses(&self.dir)?;
        let evidence = c.finish(&witnesses, &source_commit(), &toolchain())?;
        let fleet_id = &started.first().ok_or_else(|| anyhow!("no node"))?.fleet_id;
        let edir = self.dir.join("evidence");
        std::fs::create_dir_all(&edir)?;
        std::fs::write(edir.join(format!("{fleet_id}.json")), &evidence)?;
        self.operator
            .auditor()
            .log_evidence(&self.operator.namespace, &evidence)
            .await?;
        Ok((started, evidence))
    }
}

/// The two witness keys of a dev deployment (`DIR/witnesses/witness-N.key`,
/// with the public key in hex beside it as `witness-N.pub`), made on first
/// use. A real ceremony names its witnesses' keys.
fn dev_witnesses(dir: &Path) -> anyhow::Result<Vec<(String, SigningKey)>> {
    let wdir = dir.join("witnesses");
    std::fs::create_dir_all(&wdir)?;
    (1..=2)
        .map(|i| {
            let key = load_or_create_key(&wdir.join(format!("witness-{i}.key")))?;
            std::fs::write(
                wdir.join(format!("witness-{i}.pub")),
                format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
            )?;
            Ok((format!("dev-witness-{i}"), key))
        })
        .collect()
}

/// The source commit of the running build, when run from a git checkout.
fn source_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The pinned toolchain's version (`rustc --version`).
fn toolchain() -> String {
    Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let b = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let arr: [u8; 32] = b
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("{} is corrupt", path.display()))?;
    Ok(SigningKey::from_bytes(&arr))
}

/// Rewrites fleet `fleet`'s members file (whom new nodes ask for the secrets).
fn update_members(
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

/// Starts the fleet's `n` nodes. A directory that already holds a fleet
/// (`fleet.json`) restarts its recorded nodes. Otherwise the fleet is formed
/// by the ceremony ([`Deployment::ceremony`]) and its evidence returned.
async fn start_fleet(
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
    let (started, evidence) = d.ceremony(&dirs, &auditor.verifier_key).await?;
    Ok((started, Some(evidence)))
}

/// Starts node `i` of a `dev up` directory again (after it died or was killed).
pub fn restart_node(dir: &Path, i: usize) -> anyhow::Result<()> {
    let ndir = node_dir(dir, i);
    let rec: NodeRecord = serde_json::from_slice(
        &std::fs::read(ndir.join("node.json"))
            .with_context(|| format!("node {i} of {} was never started", dir.display()))?,
    )?;
    if let Some(pid) = read_pid(&ndir) {
        if pid_alive(pid) {
            eprintln!("bkv dev: stopping node {i} (pid {pid})");
            stop_pid(pid);
        }
    }
    wait_unlocked(&rec.data_dir)?;
    let node = start_node(&rec, &ndir)?;
    println!(
        "bkv dev: node {i} restarted pid={} listen={}",
        node.pid, node.listen
    );
    Ok(())
}

/// Waits until no process holds the data directory's lock: a killed node's
/// threads may still be finishing a write (the process looks dead before
/// its files are closed).
fn wait_unlocked(data_dir: &Path) -> anyhow::Result<()> {
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .open(data_dir.join("lock"))
    else {
        return Ok(());
    };
    for _ in 0..300 {
        if f.try_lock().is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{} is still locked by another bkv-hsm", data_dir.display())
}

/// One request on a node's relay link (fleet status is public).
fn node_request(
    addr: SocketAddr,
    req: &bkv_wire::node::NodeRequest,
) -> anyhow::Result<bkv_wire::node::NodeResponse> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect to node at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    bkv_wire::node::write_frame(&mut s, req)?;
    let mut r = BufReader::new(s);
    bkv_wire::node::read_frame(&mut r)?.ok_or_else(|| anyhow!("node at {addr} closed the link"))
}

fn node_records(dir: &Path) -> Vec<(usize, NodeRecord)> {
    (0..9)
        .filter_map(|i| {
            let b = std::fs::read(node_dir(dir, i).join("node.json")).ok()?;
            Some((i, serde_json::from_slice(&b).ok()?))
        })
        .collect()
}

fn status_of(addr: SocketAddr) -> Option<bkv_wire::node::FleetStatus> {
    match node_request(addr, &bkv_wire::node::NodeRequest::FleetStatus) {
        Ok(bkv_wire::node::NodeResponse::FleetStatus(s)) => Some(s),
        _ => None,
    }
}

/// `bkv fleet add-node --dir DIR [--fleet K]`: a new `bkv-hsm` joins fleet K
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
        "bkv fleet: node {i} added pid={} listen={} admin={} fleet={}",
        node.pid, node.listen, node.admin, node.fleet_id
    );
    Ok(())
}

/// `bkv fleet remove-node --dir DIR [--fleet K] ID`: the removal is logged
/// with the auditor, a signed command removes node ID (peers refuse its
/// identity afterwards), and its process is stopped.
pub async fn remove_node(dir: &Path, fleet: usize, id: u64) -> anyhow::Result<()> {
    let d = Deployment::load(dir, fleet)?;
    let i = d
        .dir_of(id)
        .ok_or_else(|| anyhow!("fleet {fleet} of {} has no node {id}", dir.display()))?;
    fleet_admin::remove(&d.operator, &d.admins(), id).await?;
    let ndir = node_dir(dir, i);
    if let Some(pid) = read_pid(&ndir) {
        if pid_alive(pid) {
            stop_pid(pid);
        }
    }
    update_members(dir, fleet, |m| m.retain(|m| m.id != id))?;
    // Keep the data for forensics, but never start it again.
    let _ = std::fs::rename(ndir.join("node.json"), ndir.join("removed.json"));
    println!("bkv fleet: node {id} of fleet {fleet} removed and stopped");
    Ok(())
}

/// `bkv fleet ceremony --dir DIR --nodes N`: forms the deployment's next
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
    let key_info: serde_json::Value = d
        .operator
        .http
        .get(format!("{}/v1/key", d.operator.auditor_url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let verifier = key_info["verifier_key"]
        .as_str()
        .ok_or_else(|| anyhow!("the auditor sent no verifier key"))?;
    let (started, evidence) = d.ceremony(&dirs, verifier).await?;
    let node = started.first().ok_or_else(|| anyhow!("no node"))?;
    fleets.push(FleetEntry {
        index: k,
        fleet_id: node.fleet_id.clone(),
        noise_key: node.noise_public_key.clone(),
        evidence_digest: hex::encode(bkv_transparency::evidence::digest(&evidence)),
        retired: false,
    });
    save_fleets(dir, &fleets)?;
    publish_fleets(&d.operator.auditor_url, &d.operator.key, &fleets).await?;
    println!(
        "bkv fleet: fleet {k} formed fleet={} nodes={} evidence={}",
        node.fleet_id,
        started.len(),
        dir.join("evidence")
            .join(format!("{}.json", node.fleet_id))
            .display()
    );
    Ok(())
}

/// `bkv fleet retire --dir DIR --fleet K [--force]`: publishes a bundle
/// without fleet K. Refused while K still holds records (they move on their
/// users' next recovery) unless `--force` (the deadline passed: records not
/// moved by then can no longer be recovered with a password).
pub async fn retire(dir: &Path, fleet: usize, force: bool) -> anyhow::Result<()> {
    let mut fleets = load_fleets(dir)?;
    let preferred = fleets.iter().filter(|f| !f.retired).map(|f| f.index).max();
    if preferred == Some(fleet) {
        bail!(
            "fleet {fleet} is the preferred fleet; form its successor first (`bkv fleet ceremony`)"
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
    publish_fleets(&d.operator.auditor_url, &d.operator.key, &fleets).await?;
    println!("bkv fleet: fleet {fleet} ({id}) retired: the new bundle no longer lists it");
    Ok(())
}
