//! Cost of the platform operations a node performs per durable write (seal
//! a log entry, advance the monotonic counter) and per statement (sign), on
//! the software platform and on a SoftHSM2 token, side by side.
//! Run: `cargo bench -p bkv-hsm-platform --bench platform` (needs softhsm2).

use bkv_hsm_core::{Counter, Platform, SealSlot};
use bkv_hsm_platform::pkcs11::Pkcs11Platform;
use bkv_hsm_platform::software::SoftwarePlatform;
use criterion::{criterion_group, criterion_main, Criterion};

fn softhsm(dir: &std::path::Path) -> Pkcs11Platform {
    let t = bkv_hsm_platform::softhsm::init_token(dir, "bench", "1234", "5678").unwrap();
    std::env::set_var("SOFTHSM2_CONF", &t.conf);
    Pkcs11Platform::open(&t.config, true).unwrap()
}

fn bench(c: &mut Criterion) {
    let t = tempfile::tempdir().unwrap();
    let software = SoftwarePlatform::open(&t.path().join("software"), true).unwrap();
    let token = softhsm(&t.path().join("softhsm"));
    let platforms: [(&str, &dyn Platform); 2] = [("software", &software), ("softhsm", &token)];
    // A log entry of a counted guess is about 100 bytes; a stored
    // registration about 300.
    let entry = vec![7u8; 256];
    for (name, p) in platforms {
        let mut g = c.benchmark_group(format!("platform/{name}"));
        g.bench_function("seal 256 B", |b| {
            b.iter(|| {
                p.seal(SealSlot::RaftState, &1u64.to_be_bytes(), &entry)
                    .unwrap()
            })
        });
        let sealed = p
            .seal(SealSlot::RaftState, &1u64.to_be_bytes(), &entry)
            .unwrap();
        g.bench_function("unseal 256 B", |b| {
            b.iter(|| {
                p.unseal(SealSlot::RaftState, &1u64.to_be_bytes(), &sealed)
                    .unwrap()
            })
        });
        let mut v = p.counter_read(Counter::Raft).unwrap();
        g.bench_function("counter advance (durable)", |b| {
            b.iter(|| {
                v += 1;
                p.counter_advance_to(Counter::Raft, v).unwrap()
            })
        });
        g.bench_function("sealed write (seal entry + epoch, advance counter)", |b| {
            b.iter(|| {
                v += 1;
                p.seal(SealSlot::RaftState, &v.to_be_bytes(), &entry)
                    .unwrap();
                p.seal(SealSlot::RaftState, b"raft-epoch", &v.to_be_bytes())
                    .unwrap();
                p.counter_advance_to(Counter::Raft, v).unwrap()
            })
        });
        g.bench_function("sign", |b| b.iter(|| p.sign(b"statement").unwrap()));
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
