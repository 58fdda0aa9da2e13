//! Cross-test against an independent RFC 6962/9162 implementation
//! (`ct-merkle`): same roots, byte-identical proofs, and each side's proofs
//! verify with the other side's verifier.

use bkv_transparency::merkle::{self, Hash};
use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use sha2_011::Sha256;

fn concat(p: &[Hash]) -> Vec<u8> {
    p.iter().flatten().copied().collect()
}

fn split(b: &[u8]) -> Vec<Hash> {
    b.chunks(32).map(|c| c.try_into().unwrap()).collect()
}

fn check_size(n: usize) {
    let data: Vec<Vec<u8>> = (0..n).map(|i| format!("entry {i}").into_bytes()).collect();
    let mut theirs = MemoryBackedTree::<Sha256, Vec<u8>>::new();
    let mut ours: Vec<Hash> = Vec::new();
    for d in &data {
        theirs.push(d.clone());
        ours.push(merkle::leaf_hash(d));
    }
    let root = merkle::root(&ours);
    let their_root = theirs.root();
    assert_eq!(
        their_root.as_bytes().as_slice(),
        root.as_slice(),
        "root of {n}"
    );
    for i in 0..n {
        let our_proof = merkle::inclusion_proof(i, &ours);
        let their_proof = theirs.prove_inclusion(i);
        assert_eq!(
            their_proof.as_bytes(),
            concat(&our_proof).as_slice(),
            "inclusion {i} of {n}"
        );
        their_root
            .verify_inclusion(
                &data[i],
                i as u64,
                &InclusionProof::<Sha256>::from_bytes(concat(&our_proof)),
            )
            .unwrap();
        assert!(merkle::verify_inclusion(
            i as u64,
            n as u64,
            &ours[i],
            &split(their_proof.as_bytes()),
            &root
        ));
    }
    for m in 1..n {
        let our_proof = merkle::consistency_proof(m, &ours);
        let their_proof = theirs.prove_consistency(n - m);
        assert_eq!(
            their_proof.as_bytes(),
            concat(&our_proof).as_slice(),
            "consistency {m} -> {n}"
        );
        let old = merkle::root(&ours[..m]);
        let old_root = RootHash::<Sha256>::new(old.into(), m as u64);
        their_root
            .verify_consistency(
                &old_root,
                &ConsistencyProof::<Sha256>::try_from_bytes(concat(&our_proof)).unwrap(),
            )
            .unwrap();
        assert!(merkle::verify_consistency(
            m as u64,
            n as u64,
            &old,
            &root,
            &split(their_proof.as_bytes())
        ));
    }
}

#[test]
fn identical_to_ct_merkle_up_to_130_leaves() {
    for n in 1..=130 {
        check_size(n);
    }
}

#[test]
fn identical_to_ct_merkle_at_larger_sizes() {
    for n in [255, 256, 257, 1000, 1023, 1025] {
        check_size(n);
    }
}
