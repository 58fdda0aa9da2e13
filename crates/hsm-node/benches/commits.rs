//! Durable-commit load on the replication layer alone, for comparison with etcd puts
//! (`scripts/bench-fleet.sh` runs both in one run), and the fleet at scale
//! (`scripts/bench-scale.sh`); `../BENCHMARKS.md` has the tables.
//!
//! Fleet members in this process (each its own data directory, software platform with its
//! fdatasync'd monotonic counter, Noise IK peer links over loopback TCP) and `C` workers
//! proposing to the leader, each one record: `CountGuess`, `ResetGuesses`, `CountGuess`, … —
//! exactly the path a guess-count write takes (propose, seal, append, fsync on a majority,
//! advance the counter, apply), without the OPAQUE and Noise session work around it. One
//! proposal is one durable commit, like one etcd put.
//!
//! With `--users N`, N users are registered first (a pending record and its activation each);
//! with `--rejoin`, after the load the leader snapshots, purges its log, and a new, empty member
//! joins as a learner and catches up from the snapshot: the time that takes, the snapshot's
//! size, disk per node and the process's peak memory are reported.
//!
//! `cargo bench -p bkv-hsm-node --bench commits -- [--nodes N] [--concurrency C] [--seconds S]
//! [--users N] [--rejoin] [--max-disk-gib G]` prints one JSON line like `bkv-admin dev loadgen`
//! (registration progress goes to stderr; the run stops once a node's directory passes G GiB,
//! default 4).

use bkv_hsm_core::state::{Credential, Mutation, Outcome, Pending};
use bkv_hsm_core::SharedPlatform;
use bkv_hsm_node::replication::BareReplica;
use bkv_hsm_node::replication::LinkIdentity;
use bkv_hsm_node::replication::PeerNode;
use bkv_hsm_node::replication::{Fleet, FleetOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    nodes: u64,
    concurrency: usize,
    seconds: f64,
    users: u64,
    rejoin: bool,
    max_disk_gib: f64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        nodes: 3,
        concurrency: 8,
        seconds: 10.0,
        users: 0,
        rejoin: false,
        max_disk_gib: 4.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // cargo bench passes `--bench`; ignore what is not ours.
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--nodes" => a.nodes = value()?.parse()?,
            "--concurrency" => a.concurrency = value()?.parse()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--users" => a.users = value()?.parse()?,
            "--rejoin" => a.rejoin = true,
            "--max-disk-gib" => a.max_disk_gib = value()?.parse()?,
            _ => {}
        }
    }
    anyhow::ensure!(
        a.nodes >= 1 && a.concurrency >= 1,
        "nodes and concurrency >= 1"
    );
    Ok(a)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(a))
}

/// A member's parts before it starts.
struct Parts {
    dir: PathBuf,
    platform: SharedPlatform,
    identity: LinkIdentity,
    listener: tokio::net::TcpListener,
    node: PeerNode,
}

async fn parts(root: &Path, id: u64) -> anyhow::Result<Parts> {
    let dir = root.join(format!("n{id}"));
    let platform: SharedPlatform = Arc::new(bkv_hsm_platform::software::SoftwarePlatform::open(
        &dir.join("platform"),
        true,
    )?);
    let identity = LinkIdentity::in_process(platform.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let node = PeerNode {
        addr: listener.local_addr()?.to_string(),
        identity: identity.public(),
    };
    Ok(Parts {
        dir,
        platform,
        identity,
        listener,
        node,
    })
}

async fn start(id: u64, p: Parts, bootstrap: &BTreeSet<[u8; 32]>) -> anyhow::Result<Arc<Fleet>> {
    Ok(Arc::new(
        Fleet::start(
            FleetOptions {
                id,
                dir: p.dir,
                platform: p.platform.clone(),
                identity: p.identity,
                bootstrap: bootstrap.clone(),
                snapshot_log_min: bkv_hsm_node::replication::SNAPSHOT_LOG_MIN,
            },
            p.listener,
            Arc::new(Mutex::new(BareReplica::new(
                bkv_hsm_core::SealedState::new(p.platform, [7; 32]),
                [5; 32],
                "bench",
            ))),
        )
        .await?,
    ))
}

/// The bench's entry key (a fleet's comes from its secrets; the bench has bare replicas).
fn entry_key() -> bkv_hsm_core::EntryKey {
    bkv_hsm_core::EntryKey::from_bytes([5; 32], "bench")
}

/// Numbers entries and hands them over together, as the core lock does in a node: entries of
/// one proposer must reach the log in their order. Nonces come from a CSPRNG seeded once, as a
/// core's do (`bkv_hsm_core::platform::operation_rng`), not from a system call per entry.
static PROPOSER: std::sync::Mutex<Option<(u64, rand::rngs::StdRng)>> = std::sync::Mutex::new(None);

/// Proposes `m` as the leader's core would: sealed into the leader's next entry (the sealing is
/// part of what a commit costs).
async fn propose(
    leader: &Fleet,
    m: Mutation,
) -> Result<Outcome, bkv_hsm_node::replication::FleetError> {
    let submitted = {
        let mut p = PROPOSER.lock().unwrap_or_else(|e| e.into_inner());
        let (seq, rng) = p.get_or_insert_with(|| (0, rand::SeedableRng::from_entropy()));
        *seq += 1;
        let e = entry_key().seal(leader.identity_key, *seq, rng, &m);
        leader.submit(e)
    };
    leader.wait(submitted).await
}

fn record_id(n: u64) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id
}

/// Registers (pending record, then activation) the records `ids` through `leader`, 64 at a
/// time; returns their generations.
async fn register(
    leader: &Arc<Fleet>,
    ids: std::ops::Range<u64>,
    retried: &Arc<std::sync::atomic::AtomicU64>,
    done: &Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<Vec<u64>> {
    const RETRIES: usize = 20;
    let workers = 64u64.min(ids.end - ids.start).max(1);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (leader, ids, retried, done) =
            (leader.clone(), ids.clone(), retried.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut gens = Vec::new();
            let mut n = ids.start + w;
            while n < ids.end {
                let record_id = record_id(n);
                let pending = Pending {
                    credential: Credential {
                        // The sizes of a real registration (OPAQUE record, wrapped key).
                        opaque_record: vec![1; 192],
                        wrapped_key: vec![2; 80],
                        guess_limit: 10,
                        confirm_hash: [3; 32],
                    },
                    replaces: None,
                };
                // A proposal whose outcome is unknown (a leader change under load) is tried
                // again, as a client would: both steps are idempotent for a new record.
                let mut generation = None;
                for attempt in 0..RETRIES {
                    let r = async {
                        let stored = propose(
                            &leader,
                            Mutation::StorePending {
                                record_id,
                                pending: pending.clone(),
                            },
                        )
                        .await?;
                        let activated = propose(
                            &leader,
                            Mutation::Activate {
                                record_id,
                                confirm_hash: [3; 32],
                            },
                        )
                        .await?;
                        anyhow::Ok((stored, activated))
                    }
                    .await;
                    match r {
                        Ok((_, Outcome::Activated { generation: g })) => {
                            generation = Some(g);
                            break;
                        }
                        Ok((_, Outcome::AlreadyActive)) => {
                            generation = Some(0); // activated by an earlier attempt
                            break;
                        }
                        Ok((s, a)) => anyhow::bail!("record not activated: {s:?}, {a:?}"),
                        Err(e) if attempt + 1 == RETRIES => return Err(e),
                        Err(_) => {
                            retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                gens.push((n, generation.unwrap_or(0)));
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                n += workers;
            }
            Ok(gens)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort();
    Ok(all.into_iter().map(|(_, g)| g).collect())
}

/// Apparent size of the files under `dir` (what `ls` shows).
fn dir_bytes(dir: &Path) -> u64 {
    dir_sum(dir, &|m| m.len())
}

/// Disk blocks allocated to the files under `dir` (what `du` shows): redb grows a file by
/// doubling it and the part not yet written is a hole, so this is the disk actually taken.
fn dir_allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    dir_sum(dir, &|m| m.blocks() * 512)
}

fn dir_sum(dir: &Path, size: &dyn Fn(&std::fs::Metadata) -> u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_sum(&e.path(), size),
            Ok(m) => size(&m),
            Err(_) => 0,
        })
        .sum()
}

/// Sizes of the files directly in `dir`, as a JSON object (where a node's disk goes).
fn file_sizes(dir: &Path) -> String {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?)))
                .filter(|(_, m)| m.is_file())
                .map(|(n, m)| (n, m.len()))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let fields: Vec<String> = files.iter().map(|(n, l)| format!("{n:?}:{l}")).collect();
    format!("{{{}}}", fields.join(","))
}

/// Prints registration progress to stderr every 10 s, and gives up (returns the reason) once
/// node 0's directory passes `max_disk_gib` — a run must not fill the machine's disk.
async fn progress(
    dir: PathBuf,
    done: Arc<std::sync::atomic::AtomicU64>,
    max_disk_gib: f64,
) -> anyhow::Error {
    let t = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let n = done.load(std::sync::atomic::Ordering::Relaxed);
        let disk = dir_bytes(&dir) as f64;
        eprintln!(
            "{:>5.0} s: {n} users registered, node 0 disk {:.0} MiB ({:.0} B/user), peak memory {:.0} MiB",
            t.elapsed().as_secs_f64(),
            disk / 1048576.0,
            disk / n.max(1) as f64,
            peak_rss_mib()
        );
        if disk > max_disk_gib * 1073741824.0 {
            return anyhow::anyhow!(
                "stopped at {n} users: node 0 uses {:.1} GiB of disk (limit --max-disk-gib {max_disk_gib})",
                disk / 1073741824.0
            );
        }
    }
}

/// Peak resident memory of this process (all members together), MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn run(a: Args) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut all = Vec::new();
    for id in 0..a.nodes {
        all.push(parts(root.path(), id).await?);
    }
    // One more identity, accepted from the start, for the member that joins later.
    let late = parts(root.path(), a.nodes).await?;
    let nodes: BTreeMap<u64, PeerNode> = (0..a.nodes)
        .zip(&all)
        .map(|(id, p)| (id, p.node.clone()))
        .collect();
    let mut bootstrap: BTreeSet<[u8; 32]> = nodes.values().map(|n| n.identity).collect();
    bootstrap.insert(late.node.identity);
    let mut fleets = Vec::new();
    for (id, p) in (0..a.nodes).zip(all) {
        fleets.push(start(id, p, &bootstrap).await?);
    }
    fleets[0].initialize(nodes).await?;
    let leader = loop {
        if let Some(l) = fleets[0].leader().await {
            break fleets[l as usize].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let t = Instant::now();
    let retried = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut watch = tokio::spawn(progress(
        root.path().join("n0"),
        done.clone(),
        a.max_disk_gib,
    ));
    let registered = tokio::select! {
        r = register(&leader, 0..a.users, &retried, &done) => r,
        e = &mut watch => Err(e?),
    };
    watch.abort();
    registered?;
    let register_secs = t.elapsed().as_secs_f64();
    // One record per worker, after the users.
    let gens = register(
        &leader,
        a.users..a.users + a.concurrency as u64,
        &retried,
        &done,
    )
    .await?;
    anyhow::ensure!(
        !gens.contains(&0),
        "a load record's generation is unknown (activated by a retried attempt)"
    );
    // The leader may have changed while registering.
    let leader = loop {
        if let Some(l) = leader.leader().await {
            break fleets[l as usize].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let start_at = Instant::now();
    let mut tasks = Vec::new();
    for (w, generation) in gens.into_iter().enumerate() {
        let leader = leader.clone();
        let record_id = record_id(a.users + w as u64);
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            let mut count = true;
            while Instant::now() < deadline {
                let m = if count {
                    Mutation::CountGuess {
                        record_id,
                        generation,
                    }
                } else {
                    Mutation::ResetGuesses {
                        record_id,
                        generation,
                    }
                };
                count = !count;
                let t = Instant::now();
                match propose(&leader, m).await {
                    Ok(Outcome::Counted { .. } | Outcome::Reset) => lat.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let secs = start_at.elapsed().as_secs_f64();
    lat.sort();
    let mut report = format!(
        "{{\"nodes\":{},\"concurrency\":{},\"seconds\":{secs:.2},\"commits\":{},\"errors\":{errors},\
         \"per_second\":{:.1},\"p50_ms\":{:.2},\"p90_ms\":{:.2},\"p99_ms\":{:.2}",
        a.nodes,
        a.concurrency,
        lat.len(),
        lat.len() as f64 / secs,
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
    );
    if a.users > 0 {
        report += &format!(
            ",\"users\":{},\"register_secs\":{register_secs:.1},\"users_per_second\":{:.0},\
             \"register_retries\":{}",
            a.users,
            a.users as f64 / register_secs,
            retried.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    if a.rejoin {
        report += &rejoin(&leader, late, &bootstrap, a.nodes).await?;
    }
    println!("{report}}}");
    for f in fleets {
        let _ = f.raft.shutdown().await;
    }
    Ok(())
}

/// How long a new member may take to catch up (the target: under two minutes).
const REJOIN_LIMIT: Duration = Duration::from_secs(120);

/// Snapshot and purge on the leader, then a new empty member catches up as a learner; returns
/// the JSON fields to add.
async fn rejoin(
    leader: &Arc<Fleet>,
    late: Parts,
    bootstrap: &BTreeSet<[u8; 32]>,
    id: u64,
) -> anyhow::Result<String> {
    let last = leader
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map(|l| l.index)
        .unwrap_or(0);
    let t = Instant::now();
    leader
        .snapshot_through(last, Duration::from_secs(600))
        .await?;
    let snapshot_secs = t.elapsed().as_secs_f64();
    leader.raft.trigger().purge_log(last).await?;
    leader
        .raft
        .wait(Some(Duration::from_secs(60)))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "log purged")
        .await?;
    let leader_path = late.dir.with_file_name(format!("n{}", leader.id));
    let leader_dir = dir_bytes(&leader_path);
    let leader_allocated = dir_allocated_bytes(&leader_path);
    let leader_files = file_sizes(&leader_path);
    let newcomer_path = late.dir.clone();
    let node = late.node.clone();
    let newcomer = start(id, late, bootstrap).await?;
    let t = Instant::now();
    // The target is under two minutes; past that, say so instead of waiting on.
    let caught_up = async {
        leader.raft.add_learner(id, node, false).await?;
        newcomer
            .raft
            .wait(Some(REJOIN_LIMIT))
            .applied_index_at_least(Some(last), "caught up")
            .await?;
        anyhow::Ok(())
    };
    let rejoin = match caught_up.await {
        Ok(()) => format!("\"rejoin_secs\":{:.2}", t.elapsed().as_secs_f64()),
        Err(e) => format!(
            "\"rejoin_secs\":null,\"rejoin_error\":{:?}",
            format!(
                "not caught up after {:.0} s: {e}",
                t.elapsed().as_secs_f64()
            )
        ),
    };
    Ok(format!(
        ",\"snapshot_secs\":{snapshot_secs:.2},\"leader_disk_bytes\":{leader_dir},\
         \"leader_disk_allocated_bytes\":{leader_allocated},\
         \"leader_files\":{leader_files},\"newcomer_disk_bytes\":{},\
         \"newcomer_disk_allocated_bytes\":{},{rejoin},\
         \"peak_rss_mib_all_members\":{:.0}",
        dir_bytes(&newcomer_path),
        dir_allocated_bytes(&newcomer_path),
        peak_rss_mib()
    ))
}
