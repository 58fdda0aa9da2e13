//! Per-record sealed state at scale (issue 13, part 4): what records on disk behind the core's
//! commitment would cost, before the state machine is moved onto them.
//!
//! Fills a [`RecordTable`] with N sealed records of a registered user's size (a live credential:
//! a 192-byte OPAQUE record and a 60-byte wrapped key), then reports disk per record, the time a
//! restart takes to rebuild the commitment from the table, the latency of opening one record the
//! way a session would (read the bucket, check it against the commitment, unseal, decode), the
//! cost per record of a guess-count update batched 64 to a durable transaction (read, check,
//! seal, update the commitment, write), and the process's peak memory (the table is not held in
//! memory; the commitment is 4 MiB).
//!
//! `cargo bench -p bkv-hsm-node --bench records -- [--records N] [--samples S]` prints one JSON
//! line (progress goes to stderr).

use bkv_hsm_core::commitment::{open_record, seal_record, RecordCommitment};
use bkv_hsm_core::state::{Credential, Live, Record};
use bkv_hsm_core::{MemoryPlatform, RecordId};
use bkv_hsm_node::records::{Change, RecordTable, RecordTableError};
use std::time::Instant;

fn rid(n: u64) -> RecordId {
    bkv_wire::record_id(&format!("user-{n}"))
}

fn record(n: u64, attempts: u32) -> Record {
    Record {
        generation: n,
        live: Some(Live::Active {
            credential: Credential {
                opaque_record: vec![(n % 251) as u8; 192],
                wrapped_key: vec![7; 60],
                guess_limit: 10,
                confirm_hash: [3; 32],
            },
            attempts,
        }),
        pending: None,
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

#[derive(Clone, Copy)]
struct Args {
    records: u64,
    samples: usize,
    sorted: bool,
    cache_mib: usize,
}

fn main() -> anyhow::Result<()> {
    let mut a = Args {
        records: 100_000,
        samples: 20_000,
        sorted: false,
        cache_mib: 64,
    };
    let mut bucket_layout = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--records" => a.records = it.next().unwrap_or_default().parse()?,
            "--samples" => a.samples = it.next().unwrap_or_default().parse()?,
            // Fill in key order, the order a snapshot being installed arrives in.
            "--sorted" => a.sorted = true,
            "--cache-mib" => a.cache_mib = it.next().unwrap_or_default().parse()?,
            // One sealed value per bucket instead of per record (the alternative layout).
            "--per-bucket" => bucket_layout = true,
            _ => {} // cargo bench passes `--bench`
        }
    }
    if bucket_layout {
        per_bucket(&a)
    } else {
        per_record(&a)
    }
}

/// A xorshift over the record numbers: the same sequence in every run and layout.
fn sampler(records: u64) -> impl FnMut() -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % records.max(1)
    }
}

fn per_record(a: &Args) -> anyhow::Result<()> {
    let Args {
        records,
        samples,
        sorted,
        cache_mib,
    } = *a;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("records.redb");
    let platform = MemoryPlatform::new([4; 32]);
    let key = [6; 32];
    let table = RecordTable::open(&path, cache_mib << 20)?;
    let mut c = RecordCommitment::new(key);

    // Fill: sealed values written in transactions of 10,000; the commitment is built after, the
    // way a restart builds it.
    let t = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    let mut order: Vec<(u16, RecordId, u64)> = (0..records)
        .map(|n| (c.bucket(&rid(n)), rid(n), n))
        .collect();
    if sorted {
        order.sort_unstable();
    }
    for (i, (_, id, n)) in order.into_iter().enumerate() {
        let n_done = i as u64;
        batch.push(Change {
            bucket: c.bucket(&id),
            id,
            sealed: Some(seal_record(&platform, &id, &record(n, 0))?),
        });
        if batch.len() == 10_000 || n_done + 1 == records {
            table.write(&batch)?;
            batch.clear();
            eprint!("\r{} records", n_done + 1);
        }
    }
    eprintln!();
    let fill_s = t.elapsed().as_secs_f64();
    drop(table);
    let mut table = RecordTable::open(&path, cache_mib << 20)?;
    let disk = std::fs::metadata(&path)?.len();
    table.compact()?;
    let compacted = std::fs::metadata(&path)?.len();
    let (allocated, stored) = table.usage()?;
    let sealed_bytes = seal_record(&platform, &rid(0), &record(0, 0))?.len();

    let t = Instant::now();
    table.for_each_bucket(|b, listing| {
        c.load_bucket(b, listing)
            .map_err(|e| RecordTableError::Db(e.to_string()))
    })?;
    let rebuild_s = t.elapsed().as_secs_f64();

    // Opens of random records.
    let mut open_us = Vec::with_capacity(samples);
    let mut next = sampler(records);
    let mut listing_entries = 0usize;
    for _ in 0..samples {
        let id = rid(next());
        let t = Instant::now();
        let (listing, sealed) = table.read(c.bucket(&id), &id)?;
        let r = open_record(&c, &platform, &id, &listing, sealed.as_deref())?;
        open_us.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(r.is_some(), "record missing");
        listing_entries += listing.len();
    }
    open_us.sort_by(f64::total_cmp);

    // Guess-count updates, 64 to a durable transaction.
    let rounds = (samples / 64).max(1);
    let t = Instant::now();
    for _ in 0..rounds {
        let mut changes: Vec<Change> = Vec::with_capacity(64);
        for _ in 0..64 {
            let id = rid(next());
            if changes.iter().any(|ch| ch.id == id) {
                continue;
            }
            let b = c.bucket(&id);
            let (mut listing, sealed) = table.read(b, &id)?;
            // Changes to this bucket earlier in the batch are not on disk yet.
            for ch in changes.iter().filter(|ch| ch.bucket == b) {
                if let (Some(e), Some(v)) = (listing.iter_mut().find(|e| e.id == ch.id), &ch.sealed)
                {
                    e.hash = bkv_hsm_core::commitment::entry_hash(v);
                }
            }
            let Some(mut r) = open_record(&c, &platform, &id, &listing, sealed.as_deref())? else {
                anyhow::bail!("record missing");
            };
            r.generation += 1;
            let new = seal_record(&platform, &id, &r)?;
            c.update(&id, &listing, sealed.as_deref(), Some(&new))?;
            changes.push(Change {
                bucket: b,
                id,
                sealed: Some(new),
            });
        }
        table.write(&changes)?;
    }
    let update_us = t.elapsed().as_secs_f64() * 1e6 / (rounds * 64) as f64;

    println!(
        "{{\"layout\":\"per-record\",\"records\":{records},\"sorted_fill\":{sorted},\"sealed_record_bytes\":{sealed_bytes},\"disk_bytes_per_record\":{:.0},\"compacted_bytes_per_record\":{:.0},\"allocated_bytes_per_record\":{:.0},\"stored_bytes_per_record\":{:.0},\"cache_mib\":{cache_mib},\"fill_records_per_s\":{:.0},\
         \"rebuild_s\":{rebuild_s:.2},\"open_p50_us\":{:.1},\"open_p99_us\":{:.1},\
         \"mean_listing_entries\":{:.1},\"update_us_per_record_batch64\":{update_us:.1},\
         \"commitment_mib\":{:.1},\"peak_rss_mib\":{:.0}}}",
        disk as f64 / records.max(1) as f64,
        compacted as f64 / records.max(1) as f64,
        allocated as f64 / records.max(1) as f64,
        stored as f64 / records.max(1) as f64,
        records as f64 / fill_s,
        percentile(&open_us, 0.5),
        percentile(&open_us, 0.99),
        listing_entries as f64 / samples.max(1) as f64,
        c.memory_bytes() as f64 / (1 << 20) as f64,
        peak_rss_mib(),
    );
    Ok(())
}

/// The alternative layout: each bucket's records encoded together and sealed as one value
/// (label: the bucket), the commitment's leaf the hash of that sealed value. No listing travels
/// (the value is its own proof), and redb holds 2^16 values of a few KiB instead of 10⁶ small
/// ones; the price is a whole bucket unsealed per read and resealed per write.
fn per_bucket(a: &Args) -> anyhow::Result<()> {
    use bkv_hsm_core::commitment::entry_hash;
    use bkv_hsm_core::Platform;
    use redb::TableDefinition;
    const BUCKETS: TableDefinition<u16, &[u8]> = TableDefinition::new("vault-buckets");
    type Bucket = Vec<(RecordId, Record)>;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("buckets.redb");
    let platform = MemoryPlatform::new([4; 32]);
    let c = RecordCommitment::new([6; 32]);
    let db = redb::Builder::new()
        .set_cache_size(a.cache_mib << 20)
        .create(&path)?;
    let seal = |b: u16, bucket: &Bucket| -> anyhow::Result<Vec<u8>> {
        let plain = zeroize::Zeroizing::new(bkv_wire::encode(bucket));
        Ok(platform.seal("vault-bucket", &b.to_be_bytes(), &plain)?)
    };
    let open = |b: u16, sealed: &[u8]| -> anyhow::Result<Bucket> {
        let plain = platform.unseal("vault-bucket", &b.to_be_bytes(), sealed)?;
        Ok(bkv_wire::decode(&plain, 64 << 20)?)
    };
    // The commitment's leaves (its Merkle path costs 16 hashes per change, left out here).
    let mut leaves = vec![[0u8; 32]; 1 << 16];

    let t = Instant::now();
    let mut order: Vec<(u16, u64)> = (0..a.records).map(|n| (c.bucket(&rid(n)), n)).collect();
    order.sort_unstable();
    let mut i = 0;
    while i < order.len() {
        let tx = db.begin_write()?;
        {
            let mut t = tx.open_table(BUCKETS)?;
            let mut buckets_done = 0;
            while i < order.len() && buckets_done < 1024 {
                let b = order[i].0;
                let mut bucket: Bucket = Vec::new();
                while i < order.len() && order[i].0 == b {
                    bucket.push((rid(order[i].1), record(order[i].1, 0)));
                    i += 1;
                }
                bucket.sort_by_key(|(id, _)| *id);
                let sealed = seal(b, &bucket)?;
                leaves[usize::from(b)] = entry_hash(&sealed);
                t.insert(b, sealed.as_slice())?;
                buckets_done += 1;
            }
        }
        tx.commit()?;
        eprint!("\r{i} records");
    }
    eprintln!();
    let fill_s = t.elapsed().as_secs_f64();
    let usage = {
        let tx = db.begin_write()?;
        let st = tx.stats()?;
        tx.abort()?;
        (
            st.allocated_pages() * st.page_size() as u64,
            st.stored_bytes(),
        )
    };
    let disk = std::fs::metadata(&path)?.len();

    let read = |b: u16, leaves: &[[u8; 32]]| -> anyhow::Result<(Vec<u8>, Bucket)> {
        let tx = db.begin_read()?;
        let t = tx.open_table(BUCKETS)?;
        let sealed = t
            .get(b)?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| anyhow::anyhow!("bucket missing"))?;
        anyhow::ensure!(
            entry_hash(&sealed) == leaves[usize::from(b)],
            "stale bucket"
        );
        let bucket = open(b, &sealed)?;
        Ok((sealed, bucket))
    };
    let mut next = sampler(a.records);
    let mut open_us = Vec::with_capacity(a.samples);
    let mut per_bucket_records = 0usize;
    for _ in 0..a.samples {
        let id = rid(next());
        let t = Instant::now();
        let (_, bucket) = read(c.bucket(&id), &leaves)?;
        let found = bucket.iter().find(|(i, _)| *i == id).is_some();
        open_us.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(found, "record missing");
        per_bucket_records += bucket.len();
    }
    open_us.sort_by(f64::total_cmp);

    let rounds = (a.samples / 64).max(1);
    let t = Instant::now();
    for _ in 0..rounds {
        let mut changed: std::collections::BTreeMap<u16, Bucket> = Default::default();
        for _ in 0..64 {
            let id = rid(next());
            let b = c.bucket(&id);
            if let std::collections::btree_map::Entry::Vacant(v) = changed.entry(b) {
                v.insert(read(b, &leaves)?.1);
            }
            if let Some((_, r)) = changed
                .get_mut(&b)
                .and_then(|bk| bk.iter_mut().find(|(i, _)| *i == id))
            {
                r.generation += 1;
            }
        }
        let tx = db.begin_write()?;
        {
            let mut t = tx.open_table(BUCKETS)?;
            for (b, bucket) in &changed {
                let sealed = seal(*b, bucket)?;
                leaves[usize::from(*b)] = entry_hash(&sealed);
                t.insert(*b, sealed.as_slice())?;
            }
        }
        tx.commit()?;
    }
    let update_us = t.elapsed().as_secs_f64() * 1e6 / (rounds * 64) as f64;
    let n = a.records.max(1) as f64;
    println!(
        "{{\"layout\":\"per-bucket\",\"records\":{},\"disk_bytes_per_record\":{:.0},\
         \"allocated_bytes_per_record\":{:.0},\"stored_bytes_per_record\":{:.0},\
         \"cache_mib\":{},\"fill_records_per_s\":{:.0},\"open_p50_us\":{:.1},\
         \"open_p99_us\":{:.1},\"mean_bucket_records\":{:.1},\
         \"update_us_per_record_batch64\":{update_us:.1},\"peak_rss_mib\":{:.0}}}",
        a.records,
        disk as f64 / n,
        usage.0 as f64 / n,
        usage.1 as f64 / n,
        a.cache_mib,
        n / fill_s,
        percentile(&open_us, 0.5),
        percentile(&open_us, 0.99),
        per_bucket_records as f64 / a.samples.max(1) as f64,
        peak_rss_mib(),
    );
    Ok(())
}
