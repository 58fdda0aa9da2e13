//! What one crossing of the core boundary costs: the same request answered by a core in this
//! process (`CoreHandle::Local`) and by a core service on a Unix socket (`CoreHandle::Remote`,
//! its server on a thread here; in a node it is another process, which adds scheduling but no
//! copies). `Status` is the smallest round trip; `Apply` of 1, 8 and 64 log entries is the one
//! crossing on a commit's path (once per batch of committed entries, on every node), measured
//! with entries the core refuses at once, so the time is the crossing's, not the record rules'.
//! Run: `cargo bench -p bkv-core-service --bench boundary`; BENCHMARKS.md "The core boundary".

use bkv_core_service::client::CoreHandle;
use bkv_core_service::protocol::{Reply, Request};
use bkv_core_service::service::CoreService;
use bkv_hsm_core::sealed_state::NoBuckets;
use bkv_hsm_core::{FleetTrust, LogEntry, MemoryPlatform};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn trust() -> FleetTrust {
    let key = |b| {
        ed25519_dalek::SigningKey::from_bytes(&[b; 32])
            .verifying_key()
            .to_bytes()
    };
    FleetTrust {
        namespace: "bench".into(),
        auditor_name: "auditor".into(),
        auditor_key: key(1),
        operator_key: key(2),
        max_guess_limit: 10,
        predecessors: vec![],
    }
}

/// A started core behind `core`, and an entry of its own it has applied already (so applying it
/// again is refused at the first check).
fn start(mut core: CoreHandle) -> (CoreHandle, LogEntry) {
    core.call(Request::OpenIdentity { sealed: None }).unwrap();
    core.call(Request::FoundSecrets { trust: trust() }).unwrap();
    core.call(Request::StartCore).unwrap();
    core.restore(Box::new(NoBuckets), None).unwrap();
    let entry = match core
        .call(Request::FoundEntry {
            node_id: 1,
            addr: "127.0.0.1:1".into(),
        })
        .unwrap()
    {
        Reply::Entry(e) => e,
        r => panic!("{r:?}"),
    };
    core.call(Request::Apply {
        entries: vec![entry.clone()],
        position: vec![0; 64],
    })
    .unwrap();
    (core, entry)
}

fn local() -> CoreHandle {
    CoreHandle::local(CoreService::new(MemoryPlatform::shared([3; 32]), [0; 32]))
}

fn remote(dir: &std::path::Path) -> CoreHandle {
    let socket = dir.join("core.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let service = CoreService::new(MemoryPlatform::shared([3; 32]), [0; 32]);
    std::thread::spawn(move || bkv_core_service::server::serve(listener, service));
    CoreHandle::remote(&socket).unwrap()
}

fn boundary(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("core_boundary");
    for (name, handle) in [("in_process", local()), ("unix_socket", remote(dir.path()))] {
        let (mut core, entry) = start(handle);
        g.bench_function(BenchmarkId::new("status", name), |b| {
            b.iter(|| core.call(Request::Status).unwrap())
        });
        for n in [1usize, 8, 64] {
            let entries = vec![entry.clone(); n];
            g.bench_function(BenchmarkId::new(format!("apply_{n}"), name), |b| {
                b.iter(|| {
                    core.call(Request::Apply {
                        entries: entries.clone(),
                        position: vec![0; 64],
                    })
                    .unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, boundary);
criterion_main!(benches);
