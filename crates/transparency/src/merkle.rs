//! RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing, inclusion and
//! consistency proofs, and their verification (sections 2.1.1–2.1.4).

use sha2::{Digest, Sha256};

/// A SHA-256 hash: of a leaf, an interior node or a tree.
pub type Hash = [u8; 32];

/// Largest proof accepted by verifiers: a tree of 2^64 leaves needs at most 64.
pub const MAX_PROOF_LEN: usize = bkv_api::b64::MAX_PROOF_LEN;

/// RFC 9162 leaf hash: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// RFC 9162 interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Root hash of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly smaller than `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// `MTH(D[n])` over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// `PATH(m, D[n])`: the inclusion proof of leaf `m` in the tree of `leaves`.
pub fn inclusion_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || m >= n {
        return Vec::new();
    }
    let k = split(n);
    if m < k {
        let mut p = inclusion_proof(m, &leaves[..k]);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof(m - k, &leaves[k..]);
        p.push(root(&leaves[..k]));
        p
    }
}

/// `PROOF(m, D[n])`: the consistency proof from the first `m` leaves to all of `leaves`.
pub fn consistency_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    if m == 0 || m >= leaves.len() {
        return Vec::new();
    }
    subproof(m, leaves, true)
}

fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { Vec::new() } else { vec![root(d)] };
    }
    let k = split(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(root(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(root(&d[..k]));
        p
    }
}

/// RFC 9162 2.1.3.2.
pub fn verify_inclusion(
    leaf_index: u64,
    tree_size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if leaf_index >= tree_size || proof.len() > MAX_PROOF_LEN {
        return false;
    }
    let (mut f, mut s) = (leaf_index, tree_size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// RFC 9162 2.1.4.2. A first size of 0 is consistent with anything (empty proof).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second || proof.len() > MAX_PROOF_LEN {
        return false;
    }
    if first == 0 {
        return proof.is_empty();
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((head, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *first_root && sr == *second_root && s == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn known_small_trees() {
        let l = leaves(3);
        assert_eq!(root(&l), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
        assert_eq!(root(&[]), empty_root());
        // RFC 6962 test vector: empty tree hash.
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// Every (index, size) and every (first size, second size) pair up to 160 leaves.
    #[test]
    fn exhaustive_up_to_160() {
        let all = leaves(160);
        let prefix_roots: Vec<Hash> = (0..=160).map(|m| root(&all[..m])).collect();
        for n in 1..=160usize {
            let r = root(&all[..n]);
            for m in 0..n {
                let p = inclusion_proof(m, &all[..n]);
                assert!(
                    verify_inclusion(m as u64, n as u64, &all[m], &p, &r),
                    "incl {m} {n}"
                );
            }
            for m in 1..=n {
                let p = consistency_proof(m, &all[..n]);
                assert!(
                    verify_consistency(m as u64, n as u64, &prefix_roots[m], &r, &p),
                    "cons {m} {n}"
                );
                // The same proof never vouches for a different first tree.
                if m > 1 {
                    assert!(!verify_consistency(
                        m as u64,
                        n as u64,
                        &prefix_roots[m - 1],
                        &r,
                        &p
                    ));
                }
            }
        }
    }

    fn sizes() -> impl Strategy<Value = (usize, usize)> {
        (1usize..3000).prop_flat_map(|n| (1..=n, Just(n)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn proofs_verify_for_any_sizes((m, n) in sizes()) {
            let all = leaves(n);
            let r = root(&all);
            let p = inclusion_proof(m - 1, &all);
            prop_assert!(verify_inclusion((m - 1) as u64, n as u64, &all[m - 1], &p, &r));
            let c = consistency_proof(m, &all);
            prop_assert!(verify_consistency(m as u64, n as u64, &root(&all[..m]), &r, &c));
        }

        #[test]
        fn altered_proofs_fail((m, n) in sizes(), which in any::<proptest::sample::Index>(), bit in 0usize..256) {
            let all = leaves(n);
            let r = root(&all);
            let mut p = inclusion_proof(m - 1, &all);
            if !p.is_empty() {
                let i = which.index(p.len());
                p[i][bit / 8] ^= 1 << (bit % 8);
                prop_assert!(!verify_inclusion((m - 1) as u64, n as u64, &all[m - 1], &p, &r));
            }
            // Wrong index, wrong size, dropped or extra hash.
            let p = inclusion_proof(m - 1, &all);
            if n > 1 {
                prop_assert!(!verify_inclusion((m % n) as u64 ^ 1, n as u64, &all[m - 1], &p, &r) || (m % n) ^ 1 == m - 1);
            }
            let mut longer = p.clone();
            longer.push(r);
            prop_assert!(!verify_inclusion((m - 1) as u64, n as u64, &all[m - 1], &longer, &r));
            let mut c = consistency_proof(m, &all);
            if !c.is_empty() {
                let i = which.index(c.len());
                c[i][bit / 8] ^= 1 << (bit % 8);
                prop_assert!(!verify_consistency(m as u64, n as u64, &root(&all[..m]), &r, &c));
                let mut short = consistency_proof(m, &all);
                short.pop();
                prop_assert!(!verify_consistency(m as u64, n as u64, &root(&all[..m]), &r, &short));
            }
            // A forked history: same size, one leaf different.
            if m < n {
                let mut forked = all.clone();
                forked[m - 1] = leaf_hash(b"forged");
                let c = consistency_proof(m, &all);
                prop_assert!(!verify_consistency(m as u64, n as u64, &root(&forked[..m]), &r, &c));
            }
        }
    }
}
