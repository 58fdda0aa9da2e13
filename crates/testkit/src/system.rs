//! The system-test harness: real `bkv-admin dev up`, `bkv` and `bkv-hsm` processes on
//! 127.0.0.1 with free ports, driven as a user and an operator would, cleaned up by pid. The
//! system tests (`crates/system-tests`) are written against it.

use rustix::process::{kill_process, test_kill_process, Pid, Signal};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Sends `sig` to process `pid`; a process that is already gone is not an error here.
pub fn signal(pid: i32, sig: Signal) {
    // Only a real process: 0 and negative values would name process groups.
    if pid <= 0 {
        return;
    }
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, sig);
    }
}

/// Whether process `pid` still exists (a zombie does).
pub fn exists(pid: i32) -> bool {
    pid > 0 && Pid::from_raw(pid).is_some_and(|p| test_kill_process(p).is_ok())
}

/// The directory of the workspace's binaries: the test executable runs from its `deps`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let deps = exe
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent", exe.display()));
    deps.parent().unwrap_or(deps).to_owned()
}

/// The operator's and developer's `bkv-admin`.
pub fn admin_bin() -> PathBuf {
    sibling("bkv-admin")
}

/// A workspace binary, beside the tests' executable. A test run does not build the binaries
/// the system tests start (no crate's tests depend on them): `cargo build --workspace
/// --all-targets` does, with the test-only features (`scripts/test-all.sh` runs it first).
fn sibling(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --all-targets` before the system tests",
        p.display()
    );
    p
}

/// The user's `bkv`.
pub fn bkv_bin() -> PathBuf {
    sibling("bkv")
}

/// A file the workspace build made, by its path under the target profile directory (e.g.
/// `libbkv_sdk.so`, `examples/uniffi-bindgen`).
pub fn built(rel: &str) -> PathBuf {
    sibling(rel)
}

/// The browser client's build (`scripts/build-web.sh` writes it beside the binaries).
pub fn web_build() -> PathBuf {
    built("../web/dist")
}

/// The HSM node, `bkv-hsm`.
pub fn hsm_bin() -> PathBuf {
    sibling("bkv-hsm")
}

/// A running `bkv-admin dev up`: stopped (and every process it started killed) when dropped.
pub struct DevUp {
    /// The `bkv-admin dev up` process.
    pub child: Child,
    /// The deployment's directory (`--dir`).
    pub dir: PathBuf,
    /// The client config it wrote for `bkv --config`.
    pub config: PathBuf,
    /// The frontend's base URL.
    pub frontend_url: String,
    /// The auditor's base URL.
    pub auditor_url: String,
    /// The fleet's deployment evidence (`evidence.json`).
    pub evidence: PathBuf,
    /// The web origin: the browser client's page, `/frontend/`, `/storage/` (`web=`).
    pub web_url: String,
    /// Where its standard error goes.
    pub stderr_log: PathBuf,
}

impl DevUp {
    /// `bkv-admin dev up` with one node.
    pub fn start(dir: &Path) -> DevUp {
        Self::start_with_env(dir, &[])
    }

    /// The same with extra environment (passed on to the nodes).
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> DevUp {
        Self::start_full(dir, env, 1, "software", &hsm_bin())
    }

    /// `bkv-admin dev up` serving the browser client's page (the web build must exist).
    pub fn start_with_page(dir: &Path) -> DevUp {
        let build = web_build();
        assert!(
            build.join("bkv-web-manifest.txt").is_file(),
            "no web build in {} (scripts/build-web.sh)",
            build.display()
        );
        Self::start_with_env(dir, &[("BKV_WEB_DIR", build.to_str().unwrap())])
    }

    /// `bkv-admin dev up --nodes n`.
    pub fn start_nodes(dir: &Path, n: usize) -> DevUp {
        Self::start_full(dir, &[], n, "software", &hsm_bin())
    }

    /// `bkv-admin dev up --nodes n` with extra environment (passed on to the nodes).
    pub fn start_nodes_env(dir: &Path, n: usize, env: &[(&str, &str)]) -> DevUp {
        Self::start_full(dir, env, n, "software", &hsm_bin())
    }

    /// `bkv-admin dev up --nodes n --platform p` (`software` or `softhsm`).
    pub fn start_on(dir: &Path, n: usize, platform: &str) -> DevUp {
        Self::start_full(dir, &[], n, platform, &hsm_bin())
    }

    /// The same with another `bkv-hsm` binary.
    pub fn start_with_hsm(dir: &Path, n: usize, platform: &str, hsm: &Path) -> DevUp {
        Self::start_full(dir, &[], n, platform, hsm)
    }

    /// `bkv-admin dev up` with extra arguments (and environment).
    pub fn start_args(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> DevUp {
        Self::start_inner(dir, env, 1, "software", &hsm_bin(), args)
    }

    /// `bkv-admin dev up --nodes nodes --platform platform --hsm-bin hsm` with environment `env`.
    pub fn start_full(
        dir: &Path,
        env: &[(&str, &str)],
        nodes: usize,
        platform: &str,
        hsm: &Path,
    ) -> DevUp {
        Self::start_inner(dir, env, nodes, platform, hsm, &[])
    }

    fn start_inner(
        dir: &Path,
        env: &[(&str, &str)],
        nodes: usize,
        platform: &str,
        hsm: &Path,
        extra: &[&str],
    ) -> DevUp {
        std::fs::create_dir_all(dir).unwrap();
        let stderr_log = dir.join("dev-up.stderr");
        let mut cmd = Command::new(admin_bin());
        cmd.args(["dev", "up", "--dir"])
            .arg(dir)
            .arg("--hsm-bin")
            .arg(hsm)
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--platform")
            .arg(platform)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr_log).unwrap()));
        // No page unless the test asks for one (start_with_page): the other tests then do not
        // depend on whether, or when, the web build exists (test-all.sh builds it beside them).
        cmd.env("BKV_WEB_DIR", dir.join("no-page"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // A bound on a hang, not a timing check: on 2 cores beside the reproducible-build test
        // (two release builds) a five-node dev up once took over a minute to be ready.
        let line = loop {
            match rx.recv_timeout(Duration::from_secs(180)) {
                Ok(l) if l.contains("ready") => break l,
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let err = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                    // The log of the process dev up names, before the temp dir goes.
                    let named = err
                        .split("see ")
                        .nth(1)
                        .and_then(|p| p.split_whitespace().next())
                        .and_then(|p| std::fs::read_to_string(p).ok())
                        .unwrap_or_default();
                    let tail: Vec<&str> = named.lines().rev().take(30).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    panic!(
                        "bkv-admin dev up did not become ready: {err}\n--- its log:\n{}",
                        tail.join("\n")
                    );
                }
            }
        };
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {line}"))
                .to_owned()
        };
        DevUp {
            child,
            dir: dir.to_owned(),
            config: PathBuf::from(field("config")),
            frontend_url: field("frontend"),
            auditor_url: field("auditor"),
            evidence: PathBuf::from(field("evidence")),
            web_url: field("web"),
            stderr_log,
        }
    }

    /// Node 0's process id.
    pub fn node_pid(&self) -> i32 {
        self.pid_of(0)
    }

    /// Node `i`'s process id, from its pid file.
    pub fn pid_of(&self, i: usize) -> i32 {
        std::fs::read_to_string(self.dir.join(format!("nodes/{i}/pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// SIGKILLs node `i` and waits until it is gone.
    pub fn kill_node(&self, i: usize) {
        let pid = self.pid_of(i);
        signal(pid, Signal::KILL);
        for _ in 0..100 {
            if !exists(pid) {
                return;
            }
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                if stat
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {i} (pid {pid}) did not die");
    }

    /// `bkv-admin dev restart-node --dir DIR i`.
    pub fn restart_node(&self, i: usize) {
        let o = Command::new(admin_bin())
            .args(["dev", "restart-node", "--dir"])
            .arg(&self.dir)
            .arg(i.to_string())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}\nnode log:\n{}",
            text(&o),
            self.node_log_tail(i)
        );
    }

    /// The last lines of node `i`'s log (for failure messages).
    pub fn node_log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("nodes/{i}/node.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `bkv-admin fleet status` as JSON.
    /// What an auditor of this deployment pins: `--auditor-key` and `--operator-key` (from the
    /// client config, as an app pins them) and every dev witness's `--witness`.
    pub fn audit_keys(&self) -> Vec<String> {
        let cfg: toml::Value = std::fs::read_to_string(&self.config)
            .unwrap()
            .parse()
            .unwrap();
        let ota = &cfg["fleet"]["ota"];
        let mut args = vec![
            "--auditor-key".to_owned(),
            ota["auditor_key"].as_str().unwrap().to_owned(),
            "--operator-key".to_owned(),
            ota["operator_key"].as_str().unwrap().to_owned(),
        ];
        for i in 1..=2 {
            let w = std::fs::read_to_string(self.dir.join(format!("witnesses/witness-{i}.pub")))
                .unwrap();
            args.push("--witness".to_owned());
            args.push(w.trim().to_owned());
        }
        args
    }

    /// The pinned keys `bkv audit log` takes (no witnesses).
    pub fn log_keys(&self) -> Vec<String> {
        self.audit_keys().into_iter().take(4).collect()
    }

    /// `bkv-admin fleet status`, read as the API's type.
    pub fn fleet_status(&self) -> bkv_api::frontend::FleetStatusView {
        let o = self.admin(&["fleet", "status"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The current leader's node index, waiting for an election if needed.
    pub fn leader(&self) -> usize {
        for _ in 0..100 {
            let v = self.fleet_status();
            let leader = v
                .nodes
                .iter()
                .find(|n| n.reachable && n.view.as_ref().is_some_and(|view| view.role == "leader"));
            if let Some(n) = leader {
                return n.index as usize;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader: {:?}", self.fleet_status());
    }

    /// Node `i`'s recorded start (addresses, platform).
    pub fn node_record(&self, i: usize) -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(self.dir.join(format!("nodes/{i}/node.json"))).unwrap(),
        )
        .unwrap()
    }

    /// `bkv-admin fleet ARGS --dir DIR`, asserting success.
    pub fn fleet_admin(&self, args: &[&str]) {
        let o = Command::new(admin_bin())
            .arg("fleet")
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }

    /// Node 0's client listener address, from its record.
    pub fn node_addr(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("nodes/0/node.json")).unwrap())
                .unwrap();
        v["listen"].as_str().unwrap().to_owned()
    }

    /// Runs `bkv-admin --config <this deployment> ARGS`.
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(admin_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `bkv --config <this deployment> ARGS` with `stdin`.
    pub fn bkv(&self, args: &[&str], stdin: &str) -> Output {
        bkv_with(&self.config, args, stdin, &[])
    }
}

impl Drop for DevUp {
    fn drop(&mut self) {
        signal(self.child.id() as i32, Signal::TERM);
        let _ = self.child.wait();
        // If dev up could not stop a node or the frontend (it was itself killed, or the node
        // was restarted by the test), do it here.
        let pid_files = (0..9)
            .map(|i| format!("nodes/{i}/pid"))
            .chain(["frontend/pid".to_owned()]);
        for f in pid_files {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(f)) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    signal(pid, Signal::KILL);
                }
            }
        }
    }
}

/// Runs `bkv --config config ARGS` with `stdin` and extra environment.
pub fn bkv_with(config: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bkv_bin());
    // What bkv hands to bkv-admin runs this build's bkv-admin (never a cargo build).
    cmd.env("BKV_ADMIN_BIN", admin_bin());
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `bkv backup create --user USER --password-stdin FILE` with `config`,
/// asserting success.
pub fn create_backup(config: &Path, user: &str, password: &str, file: &Path) {
    let o = bkv_with(
        config,
        &[
            "backup",
            "create",
            "--user",
            user,
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        password,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// `bkv backup restore --user USER --password-stdin --out OUT` with
/// `config` and extra environment.
pub fn restore_backup(
    config: &Path,
    user: &str,
    password: &str,
    out: &Path,
    env: &[(&str, &str)],
) -> Output {
    bkv_with(
        config,
        &[
            "backup",
            "restore",
            "--user",
            user,
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        password,
        env,
    )
}

/// A process's exit code, stdout and stderr, for an assertion's message.
pub fn text(o: &Output) -> String {
    format!(
        "exit={:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Deterministic incompressible bytes (xorshift).
pub fn write_noise(path: &Path, len: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// Byte-for-byte comparison of two files or trees, streaming.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ma = std::fs::symlink_metadata(a).unwrap();
    let mb = std::fs::symlink_metadata(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    assert_eq!(ma.is_dir(), mb.is_dir(), "{}", b.display());
    if ma.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        assert_eq!(na, nb, "{}", b.display());
        for n in na {
            assert_same_tree(&a.join(&n), &b.join(&n));
        }
    } else {
        assert_eq!(ma.len(), mb.len(), "{}", b.display());
        let mut ra = BufReader::with_capacity(1 << 20, std::fs::File::open(a).unwrap());
        let mut rb = BufReader::with_capacity(1 << 20, std::fs::File::open(b).unwrap());
        loop {
            let ba = ra.fill_buf().unwrap().to_vec();
            if ba.is_empty() {
                assert!(rb.fill_buf().unwrap().is_empty());
                break;
            }
            let mut bb = vec![0u8; ba.len()];
            std::io::Read::read_exact(&mut rb, &mut bb).unwrap();
            assert!(ba == bb, "{} differs", b.display());
            ra.consume(ba.len());
        }
    }
}
