//! Client bundle verification: every check of the brief, each with its own error.

use bkv_transparency::bundle::*;
use bkv_transparency::merkle::{self, Hash};
use bkv_transparency::note::Checkpoint;
use ed25519_dalek::SigningKey;

const NOW: u64 = 1_800_000_000;

struct Log {
    name: String,
    origin: String,
    key: SigningKey,
    leaves: Vec<Hash>,
    entries: Vec<(Vec<u8>, [u8; 64])>,
}

impl Log {
    fn new(key: SigningKey) -> Self {
        Log {
            name: "auditor".into(),
            origin: "auditor.test/ns".into(),
            key,
            leaves: vec![],
            entries: vec![],
        }
    }
    fn append(&mut self, b: &Bundle) -> usize {
        let bytes = b.encode();
        let sig = sign_auditor(&self.key, &bytes, b);
        self.leaves
            .push(merkle::leaf_hash(&leaf_data(b.epoch, &digest(&bytes))));
        self.entries.push((bytes, sig));
        self.entries.len() - 1
    }
    fn package(&self, idx: usize, op: &SigningKey, known: u64) -> BundlePackage {
        let (bytes, sig) = &self.entries[idx];
        let n = self.leaves.len();
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size: n as u64,
            root: merkle::root(&self.leaves),
        };
        BundlePackage {
            bundle: bytes.clone(),
            auditor_signature: sig.to_vec(),
            operator_signature: sign_operator(op, sig).to_vec(),
            leaf_index: idx as u64,
            checkpoint: cp.sign(&self.name, &self.key).unwrap(),
            inclusion_proof: merkle::inclusion_proof(idx, &self.leaves),
            consistency_from: known,
            consistency_proof: merkle::consistency_proof(known as usize, &self.leaves),
            previous_proofs: Vec::new(),
        }
    }
}

fn bundle(epoch: u64) -> Bundle {
    Bundle {
        version: bkv_transparency::bundle::BUNDLE_VERSION,
        namespace: "ns".into(),
        epoch,
        fleet_id: format!("fleet-{epoch}"),
        keys: vec![FleetKey {
            role: KeyRole::NoiseStatic,
            key: [epoch as u8; 32],
        }],
        not_before: NOW - 100,
        not_after: NOW + 100,
        evidence_digest: [0; 32],
        previous: Vec::new(),
    }
}

fn keys() -> (SigningKey, SigningKey) {
    (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    )
}

fn anchors(a: &SigningKey, o: &SigningKey) -> TrustAnchors {
    TrustAnchors {
        namespace: "ns".into(),
        origin: "auditor.test/ns".into(),
        auditor_name: "auditor".into(),
        auditor_key: a.verifying_key(),
        operator_key: o.verifying_key(),
    }
}

#[test]
fn accepts_a_good_bundle_and_advances_state() {
    let (a, o) = keys();
    let mut log = Log::new(a.clone());
    log.append(&bundle(1));
    let (b, st) = verify(
        &anchors(&a, &o),
        &ClientLogState::default(),
        &log.package(0, &o, 0),
        NOW,
    )
    .unwrap();
    assert_eq!(b.noise_key(), Some([1; 32]));
    assert_eq!((st.checkpoint_size, st.accepted_epoch), (1, 1));
    log.append(&bundle(2));
    log.append(&bundle(3));
    let (b, st2) = verify(&anchors(&a, &o), &st, &log.package(2, &o, 1), NOW).unwrap();
    assert_eq!(b.epoch, 3);
    assert_eq!(st2.checkpoint_size, 3);
}

#[test]
fn signatures_are_both_required_and_must_be_by_the_pinned_keys() {
    let (a, o) = keys();
    let mut log = Log::new(a.clone());
    log.append(&bundle(1));
    let good = log.package(0, &o, 0);
    let st = ClientLogState::default();
    let an = anchors(&a, &o);
    // Only the operator signed (no auditor signature).
    let mut p = good.clone();
    p.auditor_signature = vec![];
    assert_eq!(
        verify(&an, &st, &p, NOW).unwrap_err(),
        BundleError::AuditorSignature
    );
    // Only the auditor signed (no operator counter-signature).
    let mut p = good.clone();
    p.operator_signature = vec![];
    assert_eq!(
        verify(&an, &st, &p, NOW).unwrap_err(),
        BundleError::OperatorSignature
    );
    // Signed by a wrong operator key.
    let p = log.package(0, &SigningKey::from_bytes(&[7; 32]), 0);
    assert_eq!(
        verify(&an, &st, &p, NOW).unwrap_err(),
        BundleError::OperatorSignature
    );
    // Signed by a wrong auditor key.
    let mut other = Log::new(SigningKey::from_bytes(&[8; 32]));
    other.append(&bundle(1));
    assert_eq!(
        verify(&an, &st, &other.package(0, &o, 0), NOW).unwrap_err(),
        BundleError::AuditorSignature
    );
    // Operator signing the bundle instead of the auditor signature.
    let mut p = good.clone();
    p.operator_signature = ed25519_dalek::Signer::sign(&o, &p.bundle)
        .to_bytes()
        .to_vec();
    assert_eq!(
        verify(&an, &st, &p, NOW).unwrap_err(),
        BundleError::OperatorSignature
    );
}

#[test]
fn changed_bundle_bytes_are_rejected() {
    let (a, o) = keys();
    let mut log = Log::new(a.clone());
    log.append(&bundle(1));
    let mut p = log.package(0, &o, 0);
    let mut b = Bundle::decode(&p.bundle).unwrap();
    b.keys[0].key = [0xee; 32];
    p.bundle = b.encode();
    assert_eq!(
        verify(&anchors(&a, &o), &ClientLogState::default(), &p, NOW).unwrap_err(),
        BundleError::AuditorSignature
    );
    let mut p = log.package(0, &o, 0);
    p.bundle.push(0);
    assert_eq!(
        verify(&anchors(&a, &o), &ClientLogState::default(), &p, NOW).unwrap_err(),
        BundleError::Malformed
    );
}

#[test]
fn a_bundle_not_in_the_log_is_rejected() {
    let (a, o) = keys();
    let mut log = Log::new(a.clone());
    log.append(&bundle(1));
    // Properly signed, but never appended: the checkpoint does not include it.
    let extra = bundle(2);
    let bytes = extra.encode();
    let sig = sign_auditor(&a, &bytes, &extra);
    let mut p = log.package(0, &o, 0);
    p.bundle = bytes;
    p.auditor_signature = sig.to_vec();
    p.operator_signature = sign_operator(&o, &sig).to_vec();
    assert_eq!(
        verify(&anchors(&a, &o), &ClientLogState::default(), &p, NOW).unwrap_err(),
        BundleError::NotInLog
    );
    // A checkpoint not signed by the auditor.
    let mut p = log.package(0, &o, 0);
    p.checkpoint = Checkpoint {
        origin: "auditor.test/ns".into(),
        size: 1,
        root: [0; 32],
    }
    .sign("auditor", &SigningKey::from_bytes(&[9; 32]))
    .unwrap();
    assert!(matches!(
        verify(&anchors(&a, &o), &ClientLogState::default(), &p, NOW).unwrap_err(),
        BundleError::Checkpoint(_)
    ));
}

#[test]
fn a_forked_auditor_is_detected() {
    let (a, o) = keys();
    // Honest history: epochs 1, 2. The client sees it.
    let mut honest = Log::new(a.clone());
    honest.append(&bundle(1));
    honest.append(&bundle(2));
    let (_, seen) = verify(
        &anchors(&a, &o),
        &ClientLogState::default(),
        &honest.package(1, &o, 0),
        NOW,
    )
    .unwrap();
    // The same auditor key shows another client a different history of the same length plus one.
    let mut forked = Log::new(a.clone());
    forked.append(&bundle(1));
    let mut evil = bundle(2);
    evil.keys[0].key = [0x66; 32];
    forked.append(&evil);
    forked.append(&bundle(3));
    let p = forked.package(2, &o, seen.checkpoint_size);
    assert_eq!(
        verify(&anchors(&a, &o), &seen, &p, NOW).unwrap_err(),
        BundleError::InconsistentLog { seen: 2 }
    );
    // A proof for a different starting size is no proof.
    honest.append(&bundle(3));
    let p = honest.package(2, &o, 1);
    assert_eq!(
        verify(&anchors(&a, &o), &seen, &p, NOW).unwrap_err(),
        BundleError::InconsistentLog { seen: 2 }
    );
    // A log that shrinks.
    let mut small = Log::new(a.clone());
    small.append(&bundle(1));
    assert_eq!(
        verify(&anchors(&a, &o), &seen, &small.package(0, &o, 0), NOW).unwrap_err(),
        BundleError::LogRolledBack { seen: 2, shown: 1 }
    );
    // The honest continuation is accepted.
    assert!(verify(&anchors(&a, &o), &seen, &honest.package(2, &o, 2), NOW).is_ok());
}

#[test]
fn old_epochs_and_validity_window_are_enforced() {
    let (a, o) = keys();
    let mut log = Log::new(a.clone());
    log.append(&bundle(1));
    log.append(&bundle(2));
    let (_, seen) = verify(
        &anchors(&a, &o),
        &ClientLogState::default(),
        &log.package(1, &o, 0),
        NOW,
    )
    .unwrap();
    // Serving the older epoch-1 bundle (validly logged) is a rollback.
    assert_eq!(
        verify(&anchors(&a, &o), &seen, &log.package(0, &o, 2), NOW).unwrap_err(),
        BundleError::EpochRollback {
            epoch: 1,
            accepted: 2
        }
    );
    // Expired and not-yet-valid.
    let p = log.package(1, &o, 2);
    assert_eq!(
        verify(&anchors(&a, &o), &seen, &p, NOW + 100).unwrap_err(),
        BundleError::Expired {
            not_after: NOW + 100,
            now: NOW + 100
        }
    );
    assert_eq!(
        verify(&anchors(&a, &o), &seen, &p, NOW - 101).unwrap_err(),
        BundleError::NotYetValid {
            not_before: NOW - 100,
            now: NOW - 101
        }
    );
    // Another namespace.
    let mut an = anchors(&a, &o);
    an.namespace = "other".into();
    assert!(matches!(
        verify(&an, &seen, &p, NOW).unwrap_err(),
        BundleError::Namespace { .. }
    ));
}
