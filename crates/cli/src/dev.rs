//! `bkv dev up` / `bkv dev restart-node`: a local deployment for development
//! and tests. Nodes run as separate `bkv-hsm` processes; the frontend runs in
//! this process.

use crate::config::{AuthConfig, ClientConfig, FleetConfig, OtaConfig};
use anyhow::{anyhow, bail, Context};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How a node was started, so `restart-node` can start it again identically.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub platform_dir: Option<PathBuf>,
    pub hsm_bin: PathBuf,
    /// Fleet membership (absent for a one-node fleet).
    #[serde(default)]
    pub fleet: Option<FleetRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetRecord {
    pub node_id: u64,
    pub peer_listen: String,
    pub members_file: PathBuf,
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
    pub fleet_id: String,
    pub noise_public_key: String,
}

/// Starts a `bkv-hsm` process and waits for its ready line.
pub fn start_node(rec: &NodeRecord, dir: &Path) -> anyhow::Result<StartedNode> {
    start_node_with(rec, dir, false)
}

/// Starts a `bkv-hsm` process; `initialize` forms the fleet (first start of
/// node 0 only).
pub fn start_node_with(
    rec: &NodeRecord,
    dir: &Path,
    initialize: bool,
) -> anyhow::Result<StartedNode> {
    let mut args = vec![
        "--data-dir".to_owned(),
        rec.data_dir.display().to_string(),
        "--listen".to_owned(),
        rec.listen.to_string(),
    ];
    // The platform (key, counter) sits beside the data directory, so that a
    // rolled-back data directory is detected as one.
    if let Some(p) = &rec.platform_dir {
        args.extend(["--platform-dir".to_owned(), p.display().to_string()]);
    }
    if let Some(f) = &rec.fleet {
        args.extend([
            "--node-id".to_owned(),
            f.node_id.to_string(),
            "--peer-listen".to_owned(),
            f.peer_listen.clone(),
            "--members".to_owned(),
            f.members_file.display().to_string(),
        ]);
        if initialize {
            args.push("--initialize".to_owned());
        }
    }
    let (pid, line) = spawn_ready(&rec.hsm_bin, &args, dir, "node.log")?;
    Ok(StartedNode {
        pid,
        listen: ready_field(&line, "listen")?.parse()?,
        fleet_id: ready_field(&line, "fleet")?,
        noise_public_key: ready_field(&line, "noise_public_key")?,
    })
}

pub struct StartedAuditor {
    pub pid: u32,
    pub url: String,
    pub name: String,
    pub key: String,
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
    let (pid, line) = spawn_ready(bin, &args, dir, "auditor.log")?;
    Ok(StartedAuditor {
        pid,
        url: format!("http://{}", ready_field(&line, "listen")?),
        name: ready_field(&line, "name")?,
        key: ready_field(&line, "key")?,
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
    bkv_hsm_node::platform::write_private_file(path, &k)?;
    Ok(SigningKey::from_bytes(&k))
}

pub struct UpArgs {
    pub dir: PathBuf,
    /// Fleet size (1 = a one-node fleet).
    pub nodes: usize,
    pub port_base: Option<u16>,
    pub hsm_bin: Option<PathBuf>,
    /// Write a client config in `pinned` mode instead of `ota`.
    pub pinned: bool,
}

/// The namespace `dev up` publishes bundles in.
pub const DEV_NAMESPACE: &str = "dev";

/// Publishes a bundle for the node's current key unless the log's latest
/// bundle already carries it and is valid for at least another day.
async fn ensure_bundle(
    auditor_url: &str,
    operator: &SigningKey,
    fleet_id: &str,
    noise_key: [u8; 32],
) -> anyhow::Result<()> {
    use bkv_transparency::bundle::{Bundle, FleetKey, KeyRole};
    let http = reqwest::Client::new();
    let base = format!("{auditor_url}/v1/logs/{DEV_NAMESPACE}");
    let info: serde_json::Value = http
        .get(&base)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let size = info["size"].as_u64().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut epoch = 1;
    if size > 0 {
        let e: serde_json::Value = http
            .get(format!("{base}/entries/{}", size - 1))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let bytes = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(e["bundle"].as_str().unwrap_or_default())?
        };
        let last = Bundle::decode(&bytes).map_err(|e| anyhow!("latest bundle: {e}"))?;
        let countersigned = e["operator_signature"].is_string();
        if last.noise_key() == Some(noise_key) && last.not_after > now + 86_400 && countersigned {
            return Ok(());
        }
        epoch = last.epoch + 1;
    }
    let b = Bundle {
        version: bkv_transparency::bundle::BUNDLE_VERSION,
        namespace: DEV_NAMESPACE.into(),
        epoch,
        fleet_id: fleet_id.into(),
        keys: vec![FleetKey {
            role: KeyRole::NoiseStatic,
            key: noise_key,
        }],
        not_before: now.saturating_sub(300),
        not_after: now + 30 * 86_400,
        evidence_digest: [0; 32],
    };
    crate::audit::publish(&http, auditor_url, operator, &b).await?;
    Ok(())
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let hsm_bin = find_bin("bkv-hsm", "BKV_HSM_BIN", args.hsm_bin)?;
    let auditor_bin = find_bin("bkv-auditor", "BKV_AUDITOR_BIN", None)?;
    if !(1..=9).contains(&args.nodes) {
        bail!("--nodes must be between 1 and 9");
    }
    let started = start_fleet(&dir, &hsm_bin, args.nodes, args.port_base)?;
    let node = &started[0];
    let stop_nodes = |started: &[StartedNode]| {
        for n in started {
            stop_pid(n.pid as i32);
        }
    };

    // The independent auditor (its own process and data directory) and the
    // operator key that publishes bundles to it.
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
    let auditor = match start_auditor(
        &auditor_bin,
        &adir,
        alisten.trim(),
        DEV_NAMESPACE,
        &operator.verifying_key(),
    ) {
        Ok(a) => a,
        Err(e) => {
            stop_nodes(&started);
            return Err(e);
        }
    };
    std::fs::write(
        adir.join("listen"),
        auditor.url.trim_start_matches("http://"),
    )?;
    let node_key =
        bkv_wire::key_from_hex(&node.noise_public_key).map_err(|e| anyhow!("node key: {e}"))?;
    if let Err(e) = ensure_bundle(&auditor.url, &operator, &node.fleet_id, node_key).await {
        stop_nodes(&started);
        stop_pid(auditor.pid as i32);
        return Err(e.context("publish the fleet's validation bundle"));
    }

    let frontend_dir = dir.join("frontend");
    std::fs::create_dir_all(&frontend_dir)?;
    let dev_key = load_or_create_key(&frontend_dir.join("dev-token-signing.key"))?;
    let listener =
        tokio::net::TcpListener::bind(format!("127.0.0.1:{}", args.port_base.unwrap_or(0)))
            .await
            .context("bind frontend")?;
    let frontend_addr = listener.local_addr()?;
    let config = bkv_frontend::FrontendConfig {
        nodes: started.iter().map(|n| n.listen).collect(),
        token_key: dev_key.verifying_key(),
        audience: bkv_frontend::DEFAULT_AUDIENCE.into(),
        dev_token_key: Some(dev_key),
        bundle_source: Some(bkv_frontend::BundleSource {
            auditor_url: auditor.url.clone(),
            namespace: DEV_NAMESPACE.into(),
        }),
        passkeys: Some(relying_party(&frontend_dir)?),
    };
    let storage_dir = dir.join("storage");
    std::fs::create_dir_all(&storage_dir)?;
    let frontend_url = format!("http://{frontend_addr}");
    let client = ClientConfig {
        version: 1,
        frontend_url: frontend_url.clone(),
        storage_dir,
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
                }),
            }
        },
        auth: AuthConfig {
            dev_token_url: Some(format!("{frontend_url}/v1/dev/token")),
        },
    };
    let config_path = dir.join("client.toml");
    client.save(&config_path)?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bkv_frontend::serve(listener, config, async move {
        let _ = stop_rx.await;
    }));
    println!(
        "bkv dev: ready frontend={frontend_url} nodes={} node0={} pid0={} fleet={} auditor={} config={}",
        started.len(),
        node.listen,
        node.pid,
        node.fleet_id,
        auditor.url,
        config_path.display()
    );
    eprintln!("bkv dev: serving; stop with Ctrl-C (SIGINT) or SIGTERM");

    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            reap_children();
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("bkv dev: stopping");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    // Nodes may have been restarted by `restart-node`: stop whatever pids are current.
    let mut dirs: Vec<PathBuf> = (0..started.len()).map(|i| node_dir(&dir, i)).collect();
    dirs.push(adir.clone());
    for d in &dirs {
        if let Some(pid) = read_pid(d) {
            if pid_alive(pid) {
                stop_pid(pid);
            }
        }
    }
    eprintln!("bkv dev: stopped");
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    // Bound and released at once: a small race with other processes, fine
    // for a development deployment.
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn print_identity(hsm_bin: &Path, data_dir: &Path, platform_dir: &Path) -> anyhow::Result<String> {
    let out = Command::new(hsm_bin)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--platform-dir")
        .arg(platform_dir)
        .arg("--print-identity")
        .output()
        .with_context(|| format!("run {}", hsm_bin.display()))?;
    if !out.status.success() {
        bail!(
            "bkv-hsm --print-identity failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Starts the fleet's `n` nodes (reusing addresses recorded by an earlier
/// run of the same directory). With more than one node: identities first,
/// then `DIR/fleet.json` (the members), then node 0 (which forms the fleet on
/// its first start) and the others, which fetch the fleet secrets from it.
fn start_fleet(
    dir: &Path,
    hsm_bin: &Path,
    n: usize,
    port_base: Option<u16>,
) -> anyhow::Result<Vec<StartedNode>> {
    let members_file = dir.join("fleet.json");
    let mut records = Vec::new();
    let mut members = Vec::new();
    for i in 0..n {
        let ndir = node_dir(dir, i);
        std::fs::create_dir_all(&ndir)?;
        if let Some(pid) = read_pid(&ndir) {
            if pid_alive(pid) {
                bail!(
                    "node {i} of {} is already running (pid {pid}); stop it first",
                    dir.display()
                );
            }
        }
        let old: Option<NodeRecord> = std::fs::read(ndir.join("node.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let listen = match &old {
            Some(r) if port_base.is_none() => r.listen,
            _ => {
                let p = match port_base {
                    Some(b) => b + 3 + 2 * i as u16,
                    None => 0,
                };
                format!("127.0.0.1:{p}").parse()?
            }
        };
        let data_dir = ndir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let platform_dir = ndir.join("platform");
        let fleet = if n > 1 {
            let peer_listen = match old.as_ref().and_then(|r| r.fleet.clone()) {
                Some(f) if port_base.is_none() => f.peer_listen,
                _ => {
                    let p = match port_base {
                        Some(b) => b + 4 + 2 * i as u16,
                        None => free_port()?,
                    };
                    format!("127.0.0.1:{p}")
                }
            };
            members.push(bkv_hsm_node::Member {
                id: i as u64,
                addr: peer_listen.clone(),
                identity: print_identity(hsm_bin, &data_dir, &platform_dir)?,
            });
            Some(FleetRecord {
                node_id: i as u64,
                peer_listen,
                members_file: members_file.clone(),
            })
        } else {
            None
        };
        records.push(NodeRecord {
            listen,
            data_dir,
            platform_dir: Some(platform_dir),
            hsm_bin: hsm_bin.to_owned(),
            fleet,
        });
    }
    if n > 1 {
        std::fs::write(&members_file, serde_json::to_vec_pretty(&members)?)?;
    }
    let mut started = Vec::new();
    for (i, rec) in records.iter_mut().enumerate() {
        let ndir = node_dir(dir, i);
        // Form the fleet only on node 0's very first start.
        let fresh = !rec.data_dir.join("raft-log.redb").exists();
        let node = match start_node_with(rec, &ndir, n > 1 && i == 0 && fresh) {
            Ok(node) => node,
            Err(e) => {
                for s in &started {
                    let s: &StartedNode = s;
                    stop_pid(s.pid as i32);
                }
                return Err(e);
            }
        };
        rec.listen = node.listen;
        std::fs::write(ndir.join("node.json"), serde_json::to_vec_pretty(&rec)?)?;
        started.push(node);
    }
    Ok(started)
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
    let node = start_node(&rec, &ndir)?;
    println!(
        "bkv dev: node {i} restarted pid={} listen={}",
        node.pid, node.listen
    );
    Ok(())
}

/// The development relying party: RP id `localhost`, passkeys in DIR.
pub fn relying_party(
    dir: &Path,
) -> anyhow::Result<std::sync::Arc<bkv_frontend::passkeys::RelyingParty>> {
    let rp = bkv_frontend::passkeys::RelyingParty::open(&bkv_frontend::passkeys::PasskeyConfig {
        rp_id: crate::config::DEV_PASSKEY_RP_ID.into(),
        origin: crate::config::DEV_PASSKEY_ORIGIN.into(),
        db_path: dir.join("passkeys.redb"),
    })
    .context("open the passkey relying party")?;
    Ok(std::sync::Arc::new(rp))
}

/// One request on a node's link (operator tooling talks to nodes directly).
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

/// The leader's link address, asking each node of the deployment.
fn leader_addr(dir: &Path) -> anyhow::Result<SocketAddr> {
    let records = node_records(dir);
    for _ in 0..50 {
        for (_, r) in &records {
            if let Some(s) = status_of(r.listen) {
                if let Some(l) = s.leader {
                    if let Some((_, lr)) = records.iter().find(|(i, _)| *i as u64 == l) {
                        return Ok(lr.listen);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no leader found among the nodes of {}", dir.display())
}

fn change(dir: &Path, c: bkv_wire::node::MembershipChange) -> anyhow::Result<()> {
    let leader = leader_addr(dir)?;
    match node_request(leader, &bkv_wire::node::NodeRequest::ChangeMembership(c))? {
        bkv_wire::node::NodeResponse::FleetStatus(_) => Ok(()),
        bkv_wire::node::NodeResponse::Error(e) => bail!("membership change refused: {e}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// `bkv fleet add-node --dir DIR`: a new `bkv-hsm` joins the fleet of a
/// `dev up` deployment: added as a learner (so members accept its identity
/// key), started (it fetches the fleet secrets and the log), and promoted to
/// voter once it has caught up.
pub fn add_node(dir: &Path) -> anyhow::Result<()> {
    let records = node_records(dir);
    let members_file = dir.join("fleet.json");
    let mut members: Vec<bkv_hsm_node::Member> =
        serde_json::from_slice(&std::fs::read(&members_file).with_context(|| {
            format!(
                "{} is not a multi-node fleet (start it with --nodes 3)",
                dir.display()
            )
        })?)?;
    let i = (0..9)
        .find(|i| !node_dir(dir, *i).join("node.json").exists())
        .ok_or_else(|| anyhow!("at most 9 nodes"))?;
    let hsm_bin = records
        .first()
        .map(|(_, r)| r.hsm_bin.clone())
        .ok_or_else(|| anyhow!("no nodes in {}", dir.display()))?;
    let ndir = node_dir(dir, i);
    let data_dir = ndir.join("data");
    let platform_dir = ndir.join("platform");
    std::fs::create_dir_all(&data_dir)?;
    let identity = print_identity(&hsm_bin, &data_dir, &platform_dir)?;
    let peer_listen = format!("127.0.0.1:{}", free_port()?);
    let identity_bytes = bkv_wire::key_from_hex(&identity).map_err(|e| anyhow!("{e}"))?;
    change(
        dir,
        bkv_wire::node::MembershipChange::AddLearner {
            id: i as u64,
            addr: peer_listen.clone(),
            identity: identity_bytes,
        },
    )?;
    members.push(bkv_hsm_node::Member {
        id: i as u64,
        addr: peer_listen.clone(),
        identity,
    });
    std::fs::write(&members_file, serde_json::to_vec_pretty(&members)?)?;
    let mut rec = NodeRecord {
        listen: "127.0.0.1:0".parse()?,
        data_dir,
        platform_dir: Some(platform_dir),
        hsm_bin,
        fleet: Some(FleetRecord {
            node_id: i as u64,
            peer_listen,
            members_file,
        }),
    };
    let node = start_node(&rec, &ndir)?;
    rec.listen = node.listen;
    std::fs::write(ndir.join("node.json"), serde_json::to_vec_pretty(&rec)?)?;
    // Promote once it has the leader's log.
    let leader = leader_addr(dir)?;
    for _ in 0..300 {
        let (Some(l), Some(me)) = (status_of(leader), status_of(node.listen)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if me.applied_index >= l.applied_index {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    change(
        dir,
        bkv_wire::node::MembershipChange::Promote { id: i as u64 },
    )?;
    println!(
        "bkv fleet: node {i} added pid={} listen={} (the running frontend keeps its node list until `dev up` restarts)",
        node.pid, node.listen
    );
    Ok(())
}

/// `bkv fleet remove-node --dir DIR I`: node I leaves the voters (peers
/// refuse its identity afterwards) and its process is stopped.
pub fn remove_node(dir: &Path, i: usize) -> anyhow::Result<()> {
    change(
        dir,
        bkv_wire::node::MembershipChange::Remove { id: i as u64 },
    )?;
    let ndir = node_dir(dir, i);
    if let Some(pid) = read_pid(&ndir) {
        if pid_alive(pid) {
            stop_pid(pid);
        }
    }
    let members_file = dir.join("fleet.json");
    if let Ok(b) = std::fs::read(&members_file) {
        let mut members: Vec<bkv_hsm_node::Member> = serde_json::from_slice(&b)?;
        members.retain(|m| m.id != i as u64);
        std::fs::write(&members_file, serde_json::to_vec_pretty(&members)?)?;
    }
    // Keep the data for forensics, but never start it again as node I.
    let _ = std::fs::rename(ndir.join("node.json"), ndir.join("removed.json"));
    println!("bkv fleet: node {i} removed from the fleet and stopped");
    Ok(())
}
