//! `bkv dev up` / `bkv dev restart-node`: a local deployment for development
//! and tests. Nodes run as separate `bkv-hsm` processes; the frontend runs in
//! this process.

use crate::config::{AuthConfig, ClientConfig, FleetConfig};
use anyhow::{anyhow, bail, Context};
use ed25519_dalek::SigningKey;
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
    pub hsm_bin: PathBuf,
}

pub fn node_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join("nodes").join(i.to_string())
}

/// Finds the `bkv-hsm` binary: explicit path, `BKV_HSM_BIN`, or next to this executable.
pub fn find_hsm_bin(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit.or_else(|| std::env::var_os("BKV_HSM_BIN").map(PathBuf::from)) {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locate the bkv executable")?;
    let candidate = exe.with_file_name("bkv-hsm");
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!(
        "bkv-hsm binary not found next to {} (build it with `cargo build --release --workspace`, or pass --hsm-bin)",
        exe.display()
    )
}

pub struct StartedNode {
    pub pid: u32,
    pub listen: SocketAddr,
    pub fleet_id: String,
    pub noise_public_key: String,
}

/// Starts a `bkv-hsm` process in its own process group (so a Ctrl-C aimed at
/// the terminal is handled by `dev up`, which stops it), logging to
/// `<node dir>/node.log`, and waits for its ready line.
pub fn start_node(rec: &NodeRecord, dir: &Path) -> anyhow::Result<StartedNode> {
    std::fs::create_dir_all(&rec.data_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .context("open node.log")?;
    let mut cmd = Command::new(&rec.hsm_bin);
    cmd.arg("--data-dir")
        .arg(&rec.data_dir)
        .arg("--listen")
        .arg(rec.listen.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", rec.hsm_bin.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = match lines.next() {
        Some(Ok(l)) => l,
        _ => {
            let status = child.wait().ok();
            bail!(
                "bkv-hsm exited before it was ready ({status:?}); see {}",
                dir.join("node.log").display()
            );
        }
    };
    // Keep draining (the node prints nothing more, but never let it block).
    std::thread::spawn(move || for _ in lines {});
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_owned))
            .ok_or_else(|| anyhow!("unexpected bkv-hsm ready line: {line}"))
    };
    let listen: SocketAddr = field("listen")?.parse()?;
    let started = StartedNode {
        pid: child.id(),
        listen,
        fleet_id: field("fleet")?,
        noise_public_key: field("noise_public_key")?,
    };
    std::fs::write(dir.join("pid"), format!("{}\n", started.pid))?;
    // The child is reaped by whoever stops it; dropping the handle does not kill it.
    std::mem::forget(child);
    Ok(started)
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
    pub port_base: Option<u16>,
    pub hsm_bin: Option<PathBuf>,
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let hsm_bin = find_hsm_bin(args.hsm_bin)?;
    let ndir = node_dir(&dir, 0);
    std::fs::create_dir_all(&ndir)?;
    if let Some(pid) = read_pid(&ndir) {
        if pid_alive(pid) {
            bail!(
                "node 0 of {} is already running (pid {pid}); stop it first",
                dir.display()
            );
        }
    }
    // Reuse the recorded node address on a restart of the same directory.
    let record_path = ndir.join("node.json");
    let listen = match std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<NodeRecord>(&b).ok())
    {
        Some(r) if args.port_base.is_none() => r.listen,
        _ => format!("127.0.0.1:{}", args.port_base.map(|p| p + 1).unwrap_or(0)).parse()?,
    };
    let mut rec = NodeRecord {
        listen,
        data_dir: ndir.join("data"),
        hsm_bin,
    };
    let node = start_node(&rec, &ndir)?;
    rec.listen = node.listen;
    std::fs::write(&record_path, serde_json::to_vec_pretty(&rec)?)?;

    let frontend_dir = dir.join("frontend");
    std::fs::create_dir_all(&frontend_dir)?;
    let dev_key = load_or_create_key(&frontend_dir.join("dev-token-signing.key"))?;
    let listener =
        tokio::net::TcpListener::bind(format!("127.0.0.1:{}", args.port_base.unwrap_or(0)))
            .await
            .context("bind frontend")?;
    let frontend_addr = listener.local_addr()?;
    let config = bkv_frontend::FrontendConfig {
        nodes: vec![node.listen],
        token_key: dev_key.verifying_key(),
        audience: bkv_frontend::DEFAULT_AUDIENCE.into(),
        dev_token_key: Some(dev_key),
    };
    let storage_dir = dir.join("storage");
    std::fs::create_dir_all(&storage_dir)?;
    let frontend_url = format!("http://{frontend_addr}");
    let client = ClientConfig {
        version: 1,
        frontend_url: frontend_url.clone(),
        storage_dir,
        guess_limit: bkv_wire::vault::DEFAULT_GUESS_LIMIT,
        fleet: FleetConfig {
            mode: "pinned".into(),
            fleet_id: node.fleet_id.clone(),
            noise_public_key: node.noise_public_key.clone(),
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
        "bkv dev: ready frontend={frontend_url} node0={} pid0={} fleet={} config={}",
        node.listen,
        node.pid,
        node.fleet_id,
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
    // The node may have been restarted by `restart-node`: stop whatever pid is current.
    if let Some(pid) = read_pid(&ndir) {
        if pid_alive(pid) {
            stop_pid(pid);
        }
    }
    eprintln!("bkv dev: stopped");
    Ok(())
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
