//! Records on disk at scale (issue 13, part 4): what the state would cost as sealed buckets in
//! redb behind the core's commitment, before the state machine is moved onto them.
//!
//! Fills a [`RecordTable`] with N records of a registered user's size (a live credential: a
//! 192-byte OPAQUE record and a 60-byte wrapped key) in their buckets, then reports disk per
//! record (pages in use, bytes stored, and the file's length, which redb grows in steps), the
//! time a restart takes to rebuild the commitment from the table, the latency of opening one
//! record the way a session would (read the bucket, check it against the commitment, unseal,
//! decode), the cost per record of a guess-count update batched 64 to a durable transaction
//! (read, open, change, seal, commit, write), and the process's peak memory (the table is not
//! held in memory: redb's page cache, `--cache-mib`, is the bound; the commitment is 4 MiB).
//!
//! `cargo bench -p bkv-hsm-node --bench records -- [--records N] [--samples S] [--cache-mib M]`
//! prints one JSON line (progress goes to stderr).

use bkv_hsm_core::commitment::{Bucket, RecordCommitment};
use bkv_hsm_core::state::{Credential, Live, Record};
use bkv_hsm_core::{MemoryPlatform, RecordId};
use bkv_hsm_node::{RecordTable, RecordTableError};
use std::collections::BTreeMap;
use std::time::Instant;

fn rid(n: u64) -> RecordId {
    bkv_wire::record_id(&format!("user-{n}"))
}

fn record(n: u64) -> Record {
    Record {
        generation: n,
        live: Some(Live::Active {
            credential: Credential {
                opaque_record: vec![(n % 251) as u8; 225],
                wrapped_key: vec![7; 60],
                guess_limit: 10,
                confirm_hash: [3; 32],
            },
            attempts: 0,
        }),
        pending: None,
        register_starts: Default::default(),
        moving_in: None,
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Table(#[from] RecordTableError),
    #[error(transparent)]
    Commitment(#[from] bkv_hsm_core::commitment::CommitmentError),
}

fn main() -> anyhow::Result<()> {
    let (mut records, mut samples, mut cache_mib) = (100_000u64, 20_000usize, 64usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--records" => records = it.next().unwrap_or_default().parse()?,
            "--samples" => samples = it.next().unwrap_or_default().parse()?,
            "--cache-mib" => cache_mib = it.next().unwrap_or_default().parse()?,
            _ => {} // cargo bench passes `--bench`
        }
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("records.redb");
    let platform = MemoryPlatform::new([4; 32]);
    let key = [6; 32];
    let table = RecordTable::open(&path, cache_mib << 20)?;
    let mut c = RecordCommitment::new(key);

    // Fill bucket by bucket (the order a snapshot being installed arrives in), 1,024 buckets to
    // a transaction.
    let t = Instant::now();
    let mut order: Vec<(u16, u64)> = (0..records).map(|n| (c.bucket(&rid(n)), n)).collect();
    order.sort_unstable();
    let mut pending = Vec::with_capacity(1024);
    let mut start = 0;
    while start < order.len() {
        let b = order[start].0;
        let end = start + order[start..].iter().take_while(|(x, _)| *x == b).count();
        let mut bucket = Bucket::default();
        for (_, n) in &order[start..end] {
            bucket.set(rid(*n), Some(record(*n)));
        }
        pending.push((b, c.update(&platform, b, None, &bucket)?));
        start = end;
        if pending.len() == 1024 || start == order.len() {
            table.write(&pending, None, true)?;
            pending.clear();
            eprint!("\r{start} records");
        }
    }
    eprintln!();
    drop(order);
    let fill_s = t.elapsed().as_secs_f64();
    let (allocated, stored) = table.usage()?;
    let file = std::fs::metadata(&path)?.len();

    // A restart: the commitment rebuilt from the table.
    let t = Instant::now();
    let mut rebuilt = RecordCommitment::new(key);
    table.for_each(|b, sealed| rebuilt.load(&platform, b, sealed).map_err(LoadError::from))?;
    let rebuild_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(rebuilt.root() == c.root(), "rebuilt root differs");

    // The same pseudo-random record numbers in every run.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % records.max(1)
    };
    let mut open_us = Vec::with_capacity(samples);
    let mut bucket_records = 0usize;
    for _ in 0..samples {
        let id = rid(next());
        let t = Instant::now();
        let b = c.bucket(&id);
        let bucket = c.open(&platform, b, table.read(b)?.as_deref())?;
        let found = bucket.get(&id).is_some();
        open_us.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(found, "record missing");
        bucket_records += bucket.len();
    }
    open_us.sort_by(f64::total_cmp);

    // Guess-count updates, 64 to a transaction, durable (fsync'd) and not (the log being the
    // durable copy); a bucket changed twice in a batch is sealed once.
    let rounds = (samples / 64).max(1);
    let mut update_us = [0.0f64; 2];
    for (durable, out) in [true, false].into_iter().zip(update_us.iter_mut()) {
        let t = Instant::now();
        for _ in 0..rounds {
            let mut changed: BTreeMap<u16, (Option<Vec<u8>>, Bucket)> = BTreeMap::new();
            for _ in 0..64 {
                let id = rid(next());
                let b = c.bucket(&id);
                if let std::collections::btree_map::Entry::Vacant(v) = changed.entry(b) {
                    let old = table.read(b)?;
                    let bucket = c.open(&platform, b, old.as_deref())?;
                    v.insert((old, bucket));
                }
                if let Some((_, bucket)) = changed.get_mut(&b) {
                    if let Some(mut r) = bucket.get(&id).cloned() {
                        if let Some(Live::Active { attempts, .. }) = r.live.as_mut() {
                            *attempts += 1;
                        }
                        bucket.set(id, Some(r));
                    }
                }
            }
            let mut writes = Vec::with_capacity(changed.len());
            for (b, (old, bucket)) in changed {
                writes.push((b, c.update(&platform, b, old.as_deref(), &bucket)?));
            }
            table.write(&writes, None, durable)?;
        }
        *out = t.elapsed().as_secs_f64() * 1e6 / (rounds * 64) as f64;
    }

    let n = records.max(1) as f64;
    println!(
        "{{\"records\":{records},\"allocated_bytes_per_record\":{:.0},\
         \"stored_bytes_per_record\":{:.0},\"file_bytes_per_record\":{:.0},\
         \"fill_records_per_s\":{:.0},\"rebuild_s\":{rebuild_s:.2},\"open_p50_us\":{:.1},\
         \"open_p99_us\":{:.1},\"mean_bucket_records\":{:.1},\
         \"update_us_per_record_batch64\":{:.1},\"update_us_per_record_batch64_no_fsync\":{:.1},\"cache_mib\":{cache_mib},\
         \"commitment_mib\":{:.1},\"peak_rss_mib\":{:.0}}}",
        allocated as f64 / n,
        stored as f64 / n,
        file as f64 / n,
        n / fill_s,
        percentile(&open_us, 0.5),
        percentile(&open_us, 0.99),
        bucket_records as f64 / samples.max(1) as f64,
        update_us[0],
        update_us[1],
        c.memory_bytes() as f64 / f64::from(1 << 20),
        peak_rss_mib(),
    );
    Ok(())
}
