//! Durable-commit load on the replication layer alone, for comparison with etcd puts
//! (`scripts/bench-fleet.sh` runs both in one run; `../BENCHMARKS.md` has the table).
//!
//! Three fleet members in this process (each its own data directory, software platform with
//! its fdatasync'd monotonic counter, Noise IK peer links over loopback TCP) and `C` workers
//! proposing to the leader, each one record: `CountGuess`, `ResetGuesses`, `CountGuess`, … —
//! exactly the path a guess-count write takes (propose, seal, append, fsync on a majority,
//! advance the counter, apply), without the OPAQUE and Noise session work around it. One
//! proposal is one durable commit, like one etcd put.
//!
//! `cargo bench -p bkv-hsm-node --bench commits -- [--nodes N] [--concurrency C] [--seconds S]`
//! prints one JSON line like `bkv-admin dev loadgen` and `etcd_put_lean.py`.

use bkv_hsm_core::state::{Credential, Mutation, Outcome, Pending, State};
use bkv_hsm_core::{NodeIdentity, SharedPlatform};
use bkv_hsm_node::replication::fleet::{Fleet, FleetOptions};
use bkv_hsm_node::replication::network::LinkIdentity;
use bkv_hsm_node::replication::PeerNode;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    nodes: u64,
    concurrency: usize,
    seconds: f64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        nodes: 3,
        concurrency: 8,
        seconds: 10.0,
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

async fn run(a: Args) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut members = Vec::new();
    let mut nodes = BTreeMap::new();
    for id in 0..a.nodes {
        let dir = root.path().join(format!("n{id}"));
        let platform: SharedPlatform = Arc::new(
            bkv_hsm_platform::software::SoftwarePlatform::open(&dir.join("platform"), true)?,
        );
        let identity = LinkIdentity {
            identity: Arc::new(NodeIdentity::generate(&*platform)?),
            platform: platform.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        nodes.insert(
            id,
            PeerNode {
                addr,
                identity: identity.public(),
            },
        );
        members.push((dir, platform, identity, listener));
    }
    let bootstrap: BTreeSet<[u8; 32]> = nodes.values().map(|n| n.identity).collect();
    let mut fleets = Vec::new();
    for (id, (dir, platform, identity, listener)) in members.into_iter().enumerate() {
        let fleet = Fleet::start(
            FleetOptions {
                id: id as u64,
                dir,
                platform,
                identity,
                bootstrap: bootstrap.clone(),
            },
            listener,
            Arc::new(Mutex::new(State::default())),
        )
        .await?;
        fleets.push(Arc::new(fleet));
    }
    fleets[0].initialize(nodes).await?;
    let leader = loop {
        if let Some(l) = fleets[0].leader().await {
            break fleets[l as usize].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // One record per worker.
    let mut records = Vec::new();
    for w in 0..a.concurrency {
        let mut record_id = [0u8; 32];
        record_id[..8].copy_from_slice(&(w as u64).to_be_bytes());
        let pending = Pending {
            credential: Credential {
                opaque_record: vec![1; 192],
                wrapped_key: vec![2; 80],
                guess_limit: 10,
                confirm_hash: [3; 32],
            },
            replaces: None,
        };
        leader
            .propose(Mutation::StorePending { record_id, pending })
            .await?;
        let generation = match leader
            .propose(Mutation::Activate {
                record_id,
                confirm_hash: [3; 32],
            })
            .await?
        {
            Outcome::Activated { generation } => generation,
            o => anyhow::bail!("record not activated: {o:?}"),
        };
        records.push((record_id, generation));
    }

    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (record_id, generation) in records {
        let leader = leader.clone();
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
                match leader.propose(m).await {
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
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "{{\"nodes\":{},\"concurrency\":{},\"seconds\":{secs:.2},\"commits\":{},\"errors\":{errors},\
         \"per_second\":{:.1},\"p50_ms\":{:.2},\"p90_ms\":{:.2},\"p99_ms\":{:.2}}}",
        a.nodes,
        a.concurrency,
        lat.len(),
        lat.len() as f64 / secs,
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
    );
    for f in fleets {
        let _ = f.raft.shutdown().await;
    }
    Ok(())
}
