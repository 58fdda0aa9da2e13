// One file on purpose: the chaos harness — schedule generator, fault injector, history recorder
// and linearizability checker — is one experiment whose parts only make sense together.
//! Jepsen-style chaos: a 5-node fleet (real `bkv-hsm` processes under
//! `bkv-admin dev up`) under randomized schedules of partitions (symmetric and
//! asymmetric), SIGKILLs with restarts, SIGSTOP pauses and wall-clock jumps,
//! while fresh users register and guess through the real frontend. A
//! checker records every operation and its outcome and asserts:
//!
//! - answered wrong guesses per record never exceed its guess limit;
//! - no acknowledged registration is lost;
//! - no destroyed record comes back (no later read or login sees it live);
//! - every acknowledged guess is visible to every later read, and no read
//!   shows a guess nobody made.
//!
//! Partitions go through a fault-injecting proxy in front of every node's
//! peer link (`BKV_DEV_PEER_VIA`): the proxy finds which node opened each
//! connection (its socket's owner in /proc), so it can stall any directed
//! pair of nodes — both ways for a symmetric partition, one way for an
//! asymmetric one — the way dropped packets stall TCP. Clock jumps use
//! libfaketime on the node processes (realtime only; Raft's timers are
//! monotonic).
//!
//! `BKV_CHAOS_SCHEDULES` (default 3) and `BKV_CHAOS_SEED` (default: from
//! the clock, printed) pick the run; `scripts/chaos.sh N [SEED]` runs N.

use crate::abuse::endpoint;
use bkv_client::{Endpoint, Session};
use bkv_testkit::system::*;
use bkv_wire::vault::{RecordState, VaultError, VaultRequest, VaultResponse};
use bkv_wire::{OpaqueSuite, OPAQUE_CONTEXT};
use opaque_ke::{ClientLogin, ClientLoginFinishParameters, CredentialResponse, Identifiers};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NODES: usize = 5;
const LIMIT: u32 = 3;
const USERS: usize = 2;
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Which directed node pairs are cut: `blocked[from][to]`.
#[derive(Default)]
struct Net {
    blocked: Mutex<[[bool; NODES]; NODES]>,
}

impl Net {
    fn is_blocked(&self, from: Option<usize>, to: usize) -> bool {
        from.is_some_and(|f| self.blocked.lock().unwrap()[f][to])
    }
    fn cut(&self, from: usize, to: usize) {
        self.blocked.lock().unwrap()[from][to] = true;
    }
    fn heal(&self) {
        *self.blocked.lock().unwrap() = Default::default();
    }
}

/// `/proc/net/tcp` form of an IPv4 socket address.
fn proc_addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    }
}

/// Which node's process owns the client side of a connection that came
/// from `peer` to `local`.
fn owner(dir: &Path, peer: SocketAddr, local: SocketAddr) -> Option<usize> {
    let (p, l) = (proc_addr(peer), proc_addr(local));
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = tcp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&p.as_str()) && f.get(2) == Some(&l.as_str()))
            .then(|| f.get(9).map(|s| s.to_string()))
            .flatten()
    })?;
    let want = format!("socket:[{inode}]");
    (0..NODES).find(|i| {
        let Ok(pid) = std::fs::read_to_string(dir.join(format!("nodes/{i}/pid"))) else {
            return false;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", pid.trim())) else {
            return false;
        };
        fds.filter_map(Result::ok)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == want))
    })
}

/// Copies `r` → `w`, stalling while `cut()` says the direction is cut
/// (the bytes wait, as TCP's do while packets are dropped).
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    cut: impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while cut() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while cut() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// The proxy in front of node `to`'s peer link.
async fn proxy(listener: TcpListener, to: usize, dir: PathBuf, net: Arc<Net>) {
    let local = listener.local_addr().unwrap();
    loop {
        let Ok((conn, peer)) = listener.accept().await else {
            continue;
        };
        let (dir, net) = (dir.clone(), net.clone());
        tokio::spawn(async move {
            let from = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || owner(&dir, peer, local))
                    .await
                    .ok()
                    .flatten()
            };
            // Where node `to` listens (read per connection: it may restart).
            let Ok(rec) = std::fs::read(dir.join(format!("nodes/{to}/node.json"))) else {
                return;
            };
            let Ok(rec) = serde_json::from_slice::<serde_json::Value>(&rec) else {
                return;
            };
            let Some(target) = rec["peer_listen"].as_str() else {
                return;
            };
            let Ok(up) = TcpStream::connect(target).await else {
                return;
            };
            let (cr, cw) = conn.into_split();
            let (ur, uw) = up.into_split();
            let n2 = net.clone();
            tokio::spawn(pump(cr, uw, move || n2.is_blocked(from, to)));
            // Replies travel to → from: cut when `to` cannot reach `from`.
            pump(ur, cw, move || {
                from.is_some_and(|f| net.is_blocked(Some(to), f))
            })
            .await;
        });
    }
}

#[derive(Debug, Clone)]
enum Fault {
    /// Both ways between `side` and the rest.
    Partition {
        side: Vec<usize>,
    },
    /// Nothing from `from` reaches any of `to` (replies the other way do).
    OneWay {
        from: usize,
        to: Vec<usize>,
    },
    Kill(usize),
    Pause(usize),
    /// Node's wall clock jumps by this many seconds.
    Clock(usize, i64),
}

/// One schedule: faults applied together for `window`.
#[derive(Debug)]
struct Schedule {
    faults: Vec<Fault>,
    delay: Duration,
    window: Duration,
}

fn schedule(seed: u64, leader: usize) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    let node = |rng: &mut StdRng| {
        if rng.gen_bool(0.5) {
            leader
        } else {
            rng.gen_range(0..NODES)
        }
    };
    let n = rng.gen_range(1..=3);
    let mut faults = Vec::new();
    // BKV_CHAOS_FAULTS=partition,one-way,kill,pause,clock narrows the mix
    // (to chase one kind of failure); the seed still decides the rest.
    let allowed: Vec<u32> = match std::env::var("BKV_CHAOS_FAULTS") {
        Ok(list) => ["partition", "one-way", "kill", "pause", "clock"]
            .iter()
            .enumerate()
            .filter(|(_, k)| list.split(',').any(|x| x.trim() == **k))
            .map(|(i, _)| i as u32)
            .collect(),
        Err(_) => (0..5).collect(),
    };
    assert!(!allowed.is_empty(), "BKV_CHAOS_FAULTS names no known fault");
    for _ in 0..n {
        let f = match allowed[rng.gen_range(0..allowed.len())] {
            0 => {
                let first = node(&mut rng);
                let mut side = vec![first];
                for _ in 0..rng.gen_range(0..=2) {
                    let x = rng.gen_range(0..NODES);
                    if !side.contains(&x) {
                        side.push(x);
                    }
                }
                Fault::Partition { side }
            }
            1 => {
                let from = node(&mut rng);
                let to: Vec<usize> = (0..NODES)
                    .filter(|&x| x != from && rng.gen_bool(0.6))
                    .collect();
                Fault::OneWay { from, to }
            }
            2 => Fault::Kill(node(&mut rng)),
            3 => Fault::Pause(node(&mut rng)),
            _ => {
                let secs = rng.gen_range(30..3600) * if rng.gen_bool(0.5) { 1 } else { -1 };
                Fault::Clock(node(&mut rng), secs)
            }
        };
        faults.push(f);
    }
    Schedule {
        faults,
        delay: Duration::from_millis(rng.gen_range(0..400)),
        window: Duration::from_millis(rng.gen_range(400..2000)),
    }
}

/// What one operation returned, as the checker sees it.
#[derive(Debug, Clone, PartialEq)]
enum Guess {
    /// The vault answered LoginStart: the guess was counted.
    Answered,
    /// The vault refused before counting (destroyed, no record).
    Refused(VaultError),
    /// No answer: it may or may not have counted.
    Unknown,
}

#[derive(Debug, Default)]
struct History {
    registered: Option<bool>,
    /// Wrong guesses, in order, with what each got.
    wrong: Vec<Guess>,
    /// The right password: LoginStart outcome, then whether LoginOk came.
    right: Option<(Guess, Option<bool>)>,
    /// Status reads: (answered wrong guesses acknowledged before the read
    /// began, what it returned).
    reads: Vec<(u32, RecordState)>,
}

fn small_ksf() -> argon2::Argon2<'static> {
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8, 1, 1, None).unwrap(),
    )
}

/// One login attempt with the vault's raw answers (the library's `login`
/// folds them into errors). Returns the LoginStart outcome and, for the
/// right password, whether LoginOk came back.
async fn attempt(ep: &Endpoint, user: &str, pw: &str) -> (Guess, Option<bool>) {
    let Ok(mut s) = Session::open(ep, user).await else {
        return (Guess::Unknown, None);
    };
    let start = ClientLogin::<OpaqueSuite>::start(&mut rand::rngs::OsRng, pw.as_bytes()).unwrap();
    let r = s
        .call(&VaultRequest::LoginStart {
            credential_request: start.message.serialize().to_vec(),
        })
        .await;
    let cr = match r {
        Ok(VaultResponse::LoginStarted {
            credential_response,
            ..
        }) => credential_response,
        Ok(VaultResponse::Error(e @ (VaultError::Destroyed | VaultError::NoRecord))) => {
            s.close().await;
            return (Guess::Refused(e), None);
        }
        _ => return (Guess::Unknown, None),
    };
    let ksf = small_ksf();
    let fin = start.state.finish(
        &mut rand::rngs::OsRng,
        pw.as_bytes(),
        CredentialResponse::deserialize(&cr).unwrap(),
        ClientLoginFinishParameters::new(Some(OPAQUE_CONTEXT), Identifiers::default(), Some(&ksf)),
    );
    match fin {
        Ok(f) => {
            let r = s
                .call(&VaultRequest::LoginFinish {
                    credential_finalization: f.message.serialize().to_vec(),
                })
                .await;
            s.close().await;
            let ok = matches!(r, Ok(VaultResponse::LoginOk { .. }));
            (Guess::Answered, Some(ok))
        }
        Err(_) => {
            // Wrong password: tell the vault (it may destroy at the limit).
            let _ = s
                .call(&VaultRequest::LoginFinish {
                    credential_finalization: Vec::new(),
                })
                .await;
            s.close().await;
            (Guess::Answered, None)
        }
    }
}

async fn read_status(ep: &Endpoint, user: &str) -> Option<RecordState> {
    let mut s = Session::open(ep, user).await.ok()?;
    let r = s.call(&VaultRequest::Status).await;
    s.close().await;
    match r {
        Ok(VaultResponse::Status { state }) => Some(state),
        _ => None,
    }
}

fn answered(h: &History) -> u32 {
    h.wrong.iter().filter(|g| **g == Guess::Answered).count() as u32
}

/// Registers, guesses wrong `LIMIT + 2` times with reads in between, then
/// tries the right password.
async fn workload(ep: Endpoint, user: String, hist: Arc<Mutex<History>>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let vault = bkv_client::VaultClient {
        endpoint: ep.clone(),
        user_id: user.clone(),
        ksf_params: argon2::Params::new(8, 1, 1, None).unwrap(),
    };
    let key = bkv_client::BackupKey::generate();
    let pw = SecretString::from(format!("right-{seed}"));
    let ok = vault.register(&pw, &key, LIMIT, None).await.is_ok();
    hist.lock().unwrap().registered = Some(ok);
    for i in 0..LIMIT + 2 {
        let (g, _) = attempt(&ep, &user, &format!("wrong-{i}")).await;
        hist.lock().unwrap().wrong.push(g);
        if rng.gen_bool(0.5) {
            let before = answered(&hist.lock().unwrap());
            if let Some(st) = read_status(&ep, &user).await {
                hist.lock().unwrap().reads.push((before, st));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..200))).await;
    }
    // The right password last: by then the record should be gone, so a
    // success means the limit was bypassed (a success in between would
    // reset the count, which the checker does not model).
    let r = attempt(&ep, &user, &format!("right-{seed}")).await;
    hist.lock().unwrap().right = Some(r);
}

/// Every violation the history shows, given the final read (after heal).
fn check(user: &str, h: &History, last: RecordState) -> Vec<String> {
    let mut v = Vec::new();
    let answered = answered(h);
    let unknown = h.wrong.iter().filter(|g| **g == Guess::Unknown).count() as u32;
    let right_counted_maybe = matches!(h.right, Some((Guess::Answered | Guess::Unknown, _)));
    let success = matches!(h.right, Some((_, Some(true))));
    if answered > LIMIT {
        v.push(format!(
            "{user}: {answered} wrong guesses answered, limit {LIMIT}"
        ));
    }
    if success && answered >= LIMIT {
        v.push(format!("{user}: right password accepted after {answered} answered wrong guesses (record revived)"));
    }
    let mut destroyed_seen = false;
    for (before, st) in &h.reads {
        match st {
            RecordState::Destroyed => destroyed_seen = true,
            RecordState::Active { attempts, .. } => {
                if destroyed_seen {
                    v.push(format!("{user}: read Active after a read saw Destroyed"));
                }
                if *attempts < *before {
                    v.push(format!("{user}: read {attempts} attempts after {before} acknowledged wrong guesses"));
                }
                if *attempts > answered + unknown {
                    v.push(format!(
                        "{user}: read {attempts} attempts; only {} guesses were made",
                        answered + unknown
                    ));
                }
            }
            RecordState::Absent | RecordState::Pending if h.registered == Some(true) => {
                v.push(format!("{user}: acknowledged registration read as {st:?}"));
            }
            _ => {}
        }
    }
    if destroyed_seen && success {
        v.push(format!(
            "{user}: login succeeded after a read saw Destroyed"
        ));
    }
    if h.registered == Some(true) {
        match last {
            // No record moves in a chaos run: a moved record is as lost as an absent one.
            RecordState::Absent | RecordState::Pending | RecordState::Moved => {
                v.push(format!(
                    "{user}: acknowledged registration lost (final read {last:?})"
                ));
            }
            RecordState::Destroyed => {
                if destroyed_seen || answered + unknown + u32::from(right_counted_maybe) >= LIMIT {
                } else {
                    v.push(format!("{user}: destroyed after {answered} answered + {unknown} unknown guesses (limit {LIMIT})"));
                }
                if success {
                    v.push(format!(
                        "{user}: destroyed record let the right password in"
                    ));
                }
            }
            RecordState::Active { attempts, .. } => {
                if destroyed_seen {
                    v.push(format!(
                        "{user}: final read Active after Destroyed was seen"
                    ));
                }
                if !success {
                    if attempts < answered {
                        v.push(format!(
                            "{user}: final read {attempts} attempts < {answered} acknowledged"
                        ));
                    }
                    if attempts > answered + unknown + u32::from(right_counted_maybe) {
                        v.push(format!(
                            "{user}: final read {attempts} attempts > guesses made"
                        ));
                    }
                }
            }
        }
    }
    v
}

fn clock_file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("nodes/{i}/clock"))
}

/// Sets node `i`'s clock offset; written aside and renamed, so that
/// libfaketime never reads a half-written file.
fn set_clock(dir: &Path, i: usize, spec: &str) {
    let f = clock_file(dir, i);
    let tmp = f.with_extension("new");
    std::fs::write(&tmp, format!("{spec}\n")).unwrap();
    std::fs::rename(&tmp, &f).unwrap();
}

/// A `bkv-hsm` wrapper that runs the real binary under libfaketime with a
/// per-node clock file (`nodes/<i>/clock`, "+0" normally).
fn faketime_wrapper(dir: &Path) -> PathBuf {
    assert!(
        Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: scripts/test-all.sh installs libfaketime"
    );
    let w = dir.join("bkv-hsm-faketime");
    std::fs::write(
        &w,
        format!(
            "#!/bin/sh\n\
             # the node's directory is the parent of its --data-dir\n\
             d=\"\"; prev=\"\"\n\
             for a in \"$@\"; do [ \"$prev\" = --data-dir ] && d=\"$a\"; prev=\"$a\"; done\n\
             if [ -n \"$d\" ]; then\n\
               c=\"$(dirname \"$d\")/clock\"; [ -f \"$c\" ] || echo +0 > \"$c\"\n\
               export LD_PRELOAD={FAKETIME} FAKETIME_TIMESTAMP_FILE=\"$c\" \
             FAKETIME_DONT_FAKE_MONOTONIC=1 FAKETIME_CACHE_DURATION=1\n\
             fi\n\
             exec {} \"$@\"\n",
            hsm_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    w
}

/// Counts of each fault kind a run applied.
#[derive(Default, Debug)]
struct Mix(BTreeMap<&'static str, u32>);

impl Mix {
    fn add(&mut self, f: &Fault) {
        let k = match f {
            Fault::Partition { .. } => "partition",
            Fault::OneWay { .. } => "one-way",
            Fault::Kill(_) => "kill",
            Fault::Pause(_) => "pause",
            Fault::Clock(_, s) if *s > 0 => "clock+",
            Fault::Clock(..) => "clock-",
        };
        *self.0.entry(k).or_default() += 1;
    }
}

fn env_u64(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|v| v.parse().ok())
}

#[test]
fn guess_limit_and_acknowledged_changes_survive_partitions_kills_pauses_and_clock_jumps() {
    let schedules = env_u64("BKV_CHAOS_SCHEDULES").unwrap_or(3);
    let base = env_u64("BKV_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    });
    println!("chaos: {schedules} schedules from seed {base} (replay: scripts/chaos.sh {schedules} {base})");
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let net = Arc::new(Net::default());
    // The proxies first: their ports go into the membership.
    let listeners: Vec<TcpListener> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..NODES {
            v.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        v
    });
    let via: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port().to_string())
        .collect();
    let dir = tmp.path().join("dev");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, l) in listeners.into_iter().enumerate() {
        rt.spawn(proxy(l, i, dir.clone(), net.clone()));
    }
    let wrapper = faketime_wrapper(tmp.path());
    let via = via.join(",");
    let dev = DevUp::start_full(
        &dir,
        &[("BKV_DEV_PEER_VIA", via.as_str())],
        NODES,
        "software",
        &wrapper,
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut mix = Mix::default();
    let mut violations = Vec::new();
    let mut reported = 0;
    for k in 0..schedules {
        let seed = base.wrapping_add(k);
        let leader = dev.leader();
        let s = schedule(seed, leader);
        for f in &s.faults {
            mix.add(f);
        }
        let users: Vec<String> = (0..USERS).map(|u| format!("chaos-{seed}-{u}")).collect();
        let hists: Vec<Arc<Mutex<History>>> = users.iter().map(|_| Arc::default()).collect();
        let eps: Vec<Endpoint> = rt.block_on(async {
            let mut v = Vec::new();
            for u in &users {
                v.push(endpoint(&http, &dev.frontend_url, u).await);
            }
            v
        });
        // The workload runs on the runtime while this thread injects faults.
        let tasks: Vec<_> = users
            .iter()
            .zip(&hists)
            .zip(&eps)
            .enumerate()
            .map(|(i, ((u, h), ep))| {
                rt.spawn(workload(
                    ep.clone(),
                    u.clone(),
                    h.clone(),
                    seed * 10 + i as u64,
                ))
            })
            .collect();
        std::thread::sleep(s.delay);
        let mut killed = Vec::new();
        let mut paused = Vec::new();
        let mut jumped = Vec::new();
        for f in &s.faults {
            match f {
                Fault::Partition { side } => {
                    for &a in side {
                        for b in (0..NODES).filter(|b| !side.contains(b)) {
                            net.cut(a, b);
                            net.cut(b, a);
                        }
                    }
                }
                Fault::OneWay { from, to } => to.iter().for_each(|&t| net.cut(*from, t)),
                Fault::Kill(i) if !killed.contains(i) && !paused.contains(i) => {
                    dev.kill_node(*i);
                    killed.push(*i);
                }
                Fault::Pause(i) if !killed.contains(i) && !paused.contains(i) => {
                    signal(dev.pid_of(*i), rustix::process::Signal::STOP);
                    paused.push(*i);
                }
                Fault::Clock(i, secs) => {
                    set_clock(&dir, *i, &format!("{secs:+}s"));
                    jumped.push(*i);
                }
                _ => {}
            }
        }
        std::thread::sleep(s.window);
        net.heal();
        for &i in &paused {
            signal(dev.pid_of(i), rustix::process::Signal::CONT);
        }
        for &i in &killed {
            dev.restart_node(i);
        }
        for &i in &jumped {
            set_clock(&dir, i, "+0");
        }
        rt.block_on(async {
            for t in tasks {
                t.await.unwrap();
            }
        });
        // Final reads after the heal must succeed (the fleet recovered).
        for ((u, h), ep) in users.iter().zip(&hists).zip(&eps) {
            let last = rt.block_on(async {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Some(st) = read_status(ep, u).await {
                        return Some(st);
                    }
                    if Instant::now() > deadline {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            let h = h.lock().unwrap();
            match last {
                Some(last) => {
                    for msg in check(u, &h, last) {
                        violations.push(format!(
                            "seed {seed} {:?}: {msg}\n    history {h:?}, final {last:?}",
                            s.faults
                        ));
                    }
                }
                None => violations.push(format!(
                    "seed {seed} {:?}: {u}: no read succeeded 30 s after the heal",
                    s.faults
                )),
            }
            // Said at once too: a long run may be stopped before its end.
            for v in &violations[reported..] {
                println!("chaos: VIOLATION {v}");
            }
            reported = violations.len();
        }
        if (k + 1).is_multiple_of(50) {
            println!(
                "chaos: {} schedules in {:.0} s, {} violations; mix {:?}",
                k + 1,
                started.elapsed().as_secs_f64(),
                violations.len(),
                mix.0
            );
        }
    }
    println!(
        "chaos: {schedules} schedules from seed {base} in {:.1} s; fault mix {:?}; {} violations",
        started.elapsed().as_secs_f64(),
        mix.0,
        violations.len()
    );
    if !violations.is_empty() {
        drop(dev);
        let kept = tmp.keep();
        panic!(
            "checker violations (deployment and node logs kept in {}):\n{}",
            kept.display(),
            violations.join("\n")
        );
    }
}

/// The checker itself: histories that break each property are caught.
#[test]
fn the_checker_flags_each_kind_of_violation() {
    let active = |a| RecordState::Active {
        attempts: a,
        guess_limit: LIMIT,
    };
    let h = |wrong: Vec<Guess>, right, reads| History {
        registered: Some(true),
        wrong,
        right,
        reads,
    };
    use Guess::*;
    // A clean history passes.
    let clean = h(
        vec![Answered, Answered, Unknown],
        Some((Refused(VaultError::Destroyed), None)),
        vec![(1, active(1))],
    );
    assert!(check("u", &clean, RecordState::Destroyed).is_empty());
    // Too many answered guesses.
    let over = h(vec![Answered; 4], None, vec![]);
    assert!(check("u", &over, RecordState::Destroyed)
        .iter()
        .any(|m| m.contains("limit")));
    // A lost registration.
    assert!(check("u", &h(vec![], None, vec![]), RecordState::Absent)
        .iter()
        .any(|m| m.contains("lost")));
    // A revived record.
    let revived = h(
        vec![Answered; 3],
        Some((Answered, Some(true))),
        vec![(3, RecordState::Destroyed)],
    );
    assert!(!check("u", &revived, active(0)).is_empty());
    // An acknowledged guess not visible to a later read.
    let stale = h(vec![Answered, Answered], None, vec![(2, active(1))]);
    assert!(check("u", &stale, active(2))
        .iter()
        .any(|m| m.contains("acknowledged")));
    // A phantom guess (counted twice).
    let phantom = h(vec![Answered], None, vec![]);
    assert!(check("u", &phantom, active(2))
        .iter()
        .any(|m| m.contains("guesses made")));
    // Destroyed without enough guesses.
    let early = h(
        vec![Answered],
        Some((Refused(VaultError::Destroyed), None)),
        vec![],
    );
    assert!(check("u", &early, RecordState::Destroyed)
        .iter()
        .any(|m| m.contains("destroyed after")));
}
