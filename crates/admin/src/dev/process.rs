//! Starting, finding and stopping the service processes of a dev deployment.
// Signals and reaping by pid go through libc (`kill`, `waitpid`): plain system calls on
// integers, with no memory-safety preconditions.
#![allow(unsafe_code)]

use super::*;
use anyhow::{anyhow, bail, Context};
use ed25519_dalek::VerifyingKey;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts `bin ARGS` in its own process group (so a Ctrl-C aimed at the
/// terminal is handled by `dev up`, which stops it), logging stderr to
/// `log`, writes `dir/pid`, and returns (pid, first stdout line).
pub(crate) fn spawn_ready(
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

pub(crate) fn ready_field(line: &str, k: &str) -> anyhow::Result<String> {
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
    if let Ok(addr) = ready_field(&line, "metrics") {
        std::fs::write(dir.join("metrics"), format!("{addr}\n"))?;
    }
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

/// Waits until no process holds the data directory's lock: a killed node's
/// threads may still be finishing a write (the process looks dead before
/// its files are closed).
pub(crate) fn wait_unlocked(data_dir: &Path) -> anyhow::Result<()> {
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

/// The node's signed platform statement (`bkv-hsm --print-statement`;
/// creates its keys on a fresh data directory).
pub(crate) fn print_statement(
    rec: &NodeRecord,
) -> anyhow::Result<bkv_wire::admin::SignedStatement> {
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
    let printed: bkv_api::statement::PrintedStatement = serde_json::from_slice(&out.stdout)
        .context("bkv-hsm --print-statement printed something else")?;
    let bytes = hex::decode(&printed.signed_statement)?;
    Ok(bkv_wire::decode(&bytes, bkv_wire::admin::MAX_ADMIN_FRAME)?)
}
