//! Client-side cost of accepting an over-the-air bundle: decode, two Ed25519
//! signatures, the checkpoint note signature, an inclusion proof and a
//! consistency proof, in a log of 10,000 entries.
//! Run: `cargo bench -p bkv-transparency --bench verify`

use bkv_transparency::bundle::*;
use bkv_transparency::merkle;
use bkv_transparency::note::Checkpoint;
use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::SigningKey;

fn bench(c: &mut Criterion) {
    let a = SigningKey::from_bytes(&[1; 32]);
    let o = SigningKey::from_bytes(&[2; 32]);
    let n = 10_000usize;
    let mk = |epoch: u64| Bundle {
        version: bkv_transparency::bundle::BUNDLE_VERSION,
        namespace: "ns".into(),
        epoch,
        fleet_id: "fleet".into(),
        keys: vec![
            FleetKey {
                role: KeyRole::NoiseStatic,
                key: [1; 32],
            },
            FleetKey {
                role: KeyRole::NodeIdentity,
                key: [2; 32],
            },
            FleetKey {
                role: KeyRole::NodeIdentity,
                key: [3; 32],
            },
            FleetKey {
                role: KeyRole::NodeIdentity,
                key: [4; 32],
            },
        ],
        not_before: 0,
        not_after: u64::MAX,
        evidence_digest: [5; 32],
        previous: Vec::new(),
    };
    let leaves: Vec<_> = (1..=n as u64)
        .map(|e| merkle::leaf_hash(&leaf_data(e, &digest(&mk(e).encode()))))
        .collect();
    let last = mk(n as u64);
    let bytes = last.encode();
    let asig = sign_auditor(&a, &bytes, &last);
    let cp = Checkpoint {
        origin: "a/ns".into(),
        size: n as u64,
        root: merkle::root(&leaves),
    };
    let known = n as u64 - 17;
    let pkg = BundlePackage {
        bundle: bytes,
        auditor_signature: asig.to_vec(),
        operator_signature: sign_operator(&o, &asig).to_vec(),
        leaf_index: n as u64 - 1,
        checkpoint: cp.sign("a", &a).unwrap(),
        inclusion_proof: merkle::inclusion_proof(n - 1, &leaves),
        consistency_from: known,
        consistency_proof: merkle::consistency_proof(known as usize, &leaves),
        previous_proofs: Vec::new(),
    };
    let anchors = TrustAnchors {
        namespace: "ns".into(),
        origin: "a/ns".into(),
        auditor_name: "a".into(),
        auditor_key: a.verifying_key(),
        operator_key: o.verifying_key(),
    };
    let seen = ClientLogState {
        checkpoint_size: known,
        checkpoint_root: merkle::root(&leaves[..known as usize]),
        accepted_epoch: 1,
        preferred_fleets: Vec::new(),
    };
    verify(&anchors, &seen, &pkg, 1).unwrap();
    c.bench_function("verify_bundle (10k-entry log)", |b| {
        b.iter(|| verify(&anchors, &seen, &pkg, 1).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
