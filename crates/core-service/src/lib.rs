//! bkv core service: the vault core and its platform as a process of their own, behind a narrow,
//! versioned request/response protocol on a Unix-domain socket ([`protocol`]). The host agent
//! (`bkv-hsm`: Raft, storage, links, listeners) holds no key and no plain record; it sends
//! sealed or authenticated bytes and public values, and gets the same back. This is the binary
//! that would run inside an HSM's code environment or a TEE, and the one a fleet's evidence
//! measures (docs/architecture.md "The core's boundary").
//!
//! - [`protocol`]: the messages and their framing.
//! - [`service`]: what the core service does with each request.
//! - [`server`]: the socket listener of the `bkv-core` binary.
//! - [`client`]: the agent's side, with the core in this process or in a core service.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod client;
pub mod flags;
pub mod pipe;
pub mod protocol;
pub mod server;
pub mod service;

use bkv_hsm_platform::PlatformConfig;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a started core service may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A core service this agent started. It ends when the agent does: it exits when its standard
/// input closes (also when the agent is killed), and is killed when this value is dropped.
pub struct CoreChild {
    child: Arc<Mutex<Child>>,
    stopping: Arc<AtomicBool>,
    pid: u32,
    socket: PathBuf,
    dir: PathBuf,
}

/// How the directories for a child's socket begin. The agent removes its child's when it stops
/// it; a child whose agent went away without that (its standard input closed) removes its own.
pub const RUNTIME_DIR_PREFIX: &str = "bkv-core-";

/// A new directory only this user can enter, for a child's socket.
fn private_runtime_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for attempt in 0u32..100 {
        let dir = std::env::temp_dir().join(format!(
            "{RUNTIME_DIR_PREFIX}{}-{:x}",
            std::process::id(),
            nanos.wrapping_add(attempt)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "no fresh directory for the core socket",
    ))
}

impl CoreChild {
    /// Starts `bin` with platform `cfg` (`create_keys`: a new node), listening on a socket in a
    /// new owner-only directory under the system's temporary directory (not in the node's data
    /// directory, which operators copy and back up), and waits until it listens.
    pub fn start(
        bin: &Path,
        cfg: &PlatformConfig,
        create_keys: bool,
    ) -> std::io::Result<CoreChild> {
        let dir = private_runtime_dir()?;
        let socket = dir.join("core.sock");
        let mut cmd = Command::new(bin);
        cmd.arg("--socket")
            .arg(&socket)
            .args(flags::platform_args(cfg));
        if create_keys {
            cmd.arg("--create-keys");
        }
        let child = cmd
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("start {}: {e}", bin.display())))?;
        let pid = child.id();
        let me = CoreChild {
            child: Arc::new(Mutex::new(child)),
            stopping: Arc::new(AtomicBool::new(false)),
            pid,
            socket,
            dir,
        };
        let started = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(&me.socket).is_ok() {
                me.watch();
                return Ok(me);
            }
            if let Some(status) = me.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "the core service {} exited at start ({status})",
                    bin.display()
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the core service did not listen in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn try_wait(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        match self.child.lock() {
            Ok(mut c) => c.try_wait(),
            Err(_) => Err(std::io::Error::other("core child lock poisoned")),
        }
    }

    /// Watches the child: if it exits before this value is dropped, the core is gone
    /// ([`client::on_core_gone`]).
    fn watch(&self) {
        let (child, stopping) = (self.child.clone(), self.stopping.clone());
        let spawned = std::thread::Builder::new()
            .name("bkv-core-watch".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(200));
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let status = match child.lock() {
                    Ok(mut c) => c.try_wait(),
                    Err(_) => return,
                };
                if let Ok(Some(status)) = status {
                    if !stopping.load(Ordering::SeqCst) {
                        client::core_gone(&format!("the core service exited ({status})"));
                    }
                    return;
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread to watch the core service");
        }
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its process id (tests read its memory).
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for CoreChild {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        client::stopping_core();
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The SHA-256 of the running executable (what statements name as the measured binary).
pub fn own_binary_sha256() -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    let exe = std::env::current_exe()?;
    let mut f = std::fs::File::open(&exe)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests;
