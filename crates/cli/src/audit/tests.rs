use super::*;
use bkv_transparency::bundle::{FleetKey, KeyRole};
use ed25519_dalek::SigningKey;

fn bundle_for(epoch: u64) -> Bundle {
    Bundle {
        version: bkv_transparency::bundle::BUNDLE_VERSION,
        namespace: "ns".into(),
        epoch,
        fleet_id: "f".into(),
        keys: vec![FleetKey {
            role: KeyRole::NoiseStatic,
            key: [epoch as u8; 32],
        }],
        not_before: 0,
        not_after: 10,
        evidence_digest: [0; 32],
        previous: Vec::new(),
    }
}

/// An honest snapshot of `epochs`, built the way the auditor builds it.
fn snapshot(a: &SigningKey, o: &SigningKey, bundles: &[Bundle]) -> Snapshot {
    let mut leaves = Vec::new();
    let mut entries = Vec::new();
    for (i, b) in bundles.iter().enumerate() {
        let bytes = b.encode();
        let asig = bundle::sign_auditor(a, &bytes, b);
        leaves.push(merkle::leaf_hash(&bundle::leaf_data(
            b.epoch,
            &bundle::digest(&bytes),
        )));
        entries.push(Entry {
            index: i as u64,
            kind: bkv_api::auditor::EntryKind::Bundle,
            epoch: Some(b.epoch),
            bundle: Some(bytes),
            record: None,
            evidence: None,
            web: None,
            auditor_signature: asig.to_vec(),
            operator_signature: Some(bundle::sign_operator(o, &asig).to_vec()),
        });
    }
    let n = leaves.len();
    let cp = Checkpoint {
        origin: "aud/ns".into(),
        size: n as u64,
        root: merkle::root(&leaves),
    };
    Snapshot {
        auditor_name: "aud".into(),
        auditor_key: a.verifying_key(),
        checkpoint_note: cp.sign("aud", a).unwrap(),
        entries,
        inclusion: (0..n)
            .map(|i| merkle::inclusion_proof(i, &leaves))
            .collect(),
        consistency: (1..=n)
            .map(|m| merkle::consistency_proof(m, &leaves))
            .collect(),
    }
}

fn check(s: &Snapshot, o: &SigningKey) -> Result<LogReport, String> {
    verify_snapshot(s, "ns", &o.verifying_key(), None).map_err(|e| e.to_string())
}

#[test]
fn audit_rejects_every_kind_of_bad_log() {
    let a = SigningKey::from_bytes(&[1; 32]);
    let o = SigningKey::from_bytes(&[2; 32]);
    let bundles: Vec<_> = (1..=5).map(bundle_for).collect();
    let good = snapshot(&a, &o, &bundles);
    let r = check(&good, &o).unwrap();
    assert_eq!(r.epochs.len(), 5);
    assert_eq!(r.epochs[1].change, "KEYS CHANGED");

    // Signed only by the operator (the auditor's signature is missing or forged).
    let mut s = snapshot(&a, &o, &bundles);
    s.entries[2].auditor_signature = vec![0; 64];
    assert!(check(&s, &o)
        .unwrap_err()
        .contains("auditor signature invalid"));
    // Signed only by the auditor.
    let mut s = snapshot(&a, &o, &bundles);
    s.entries[2].operator_signature = None;
    assert!(check(&s, &o)
        .unwrap_err()
        .contains("no operator counter-signature"));
    // By a wrong operator key.
    assert!(check(&good, &SigningKey::from_bytes(&[3; 32]))
        .unwrap_err()
        .contains("counter-signature invalid"));
    // By a wrong auditor key (a pinned key that differs).
    let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
    assert!(
        verify_snapshot(&good, "ns", &o.verifying_key(), Some(other))
            .unwrap_err()
            .to_string()
            .contains("--auditor-key")
    );
    // Bundle bytes changed after signing.
    let mut s = snapshot(&a, &o, &bundles);
    let mut b = Bundle::decode(s.entries[3].bundle.as_ref().unwrap()).unwrap();
    b.keys[0].key = [0xaa; 32];
    s.entries[3].bundle = Some(b.encode());
    assert!(check(&s, &o)
        .unwrap_err()
        .contains("auditor signature invalid"));
    // A bundle that is not in the log the checkpoint commits to.
    let mut s = snapshot(&a, &o, &bundles);
    let other_log = snapshot(
        &a,
        &o,
        &[
            bundle_for(1),
            bundle_for(2),
            bundle_for(3),
            bundle_for(9),
            bundle_for(10),
        ],
    );
    s.entries[4] = other_log.entries[4].clone();
    assert!(check(&s, &o).unwrap_err().contains("entry 4"));
    // A forked auditor: entries of one history, checkpoint of another.
    let mut s = snapshot(&a, &o, &bundles);
    s.checkpoint_note = other_log.checkpoint_note.clone();
    assert!(check(&s, &o).is_err());
    // Epochs that do not increase (logged by a misbehaving auditor).
    let s = snapshot(&a, &o, &[bundle_for(1), bundle_for(3), bundle_for(2)]);
    assert!(check(&s, &o).unwrap_err().contains("does not increase"));
    // A checkpoint not signed by the auditor.
    let mut s = snapshot(&a, &o, &bundles);
    s.checkpoint_note = s.checkpoint_note.replacen("\n5\n", "\n4\n", 1);
    assert!(check(&s, &o).unwrap_err().contains("checkpoint"));
    // A consistency proof that does not verify (a rewritten prefix).
    let mut s = snapshot(&a, &o, &bundles);
    s.consistency[1] = vec![[7; 32]];
    assert!(check(&s, &o).unwrap_err().contains("not consistent"));
}

/// Issue 27: every fleet of every bundle is checked. A previous fleet that was the preferred
/// fleet of an earlier epoch, with the same keys, is fine; one no epoch named as preferred,
/// or one whose keys changed, is flagged, as is a previous fleet without evidence.
#[test]
fn previous_fleets_must_have_been_preferred_with_the_same_keys() {
    let a = SigningKey::from_bytes(&[1; 32]);
    let o = SigningKey::from_bytes(&[2; 32]);
    let rotated = |epoch: u64, old_id: &str, old_key: u8| {
        let mut b = bundle_for(epoch);
        b.fleet_id = "g".into();
        b.previous = vec![bundle::BundleFleet {
            fleet_id: old_id.into(),
            keys: vec![FleetKey {
                role: KeyRole::NoiseStatic,
                key: [old_key; 32],
            }],
            evidence_digest: [0; 32],
        }];
        b
    };
    let flagged = |bundles: &[Bundle]| -> Vec<String> {
        let r = check(&snapshot(&a, &o, bundles), &o).unwrap();
        r.warnings
            .into_iter()
            .filter(|w| w.contains("previous fleet"))
            .collect()
    };
    // Fleet f preferred at epoch 2 (key [2; 32]), then listed as previous: only its missing
    // evidence is flagged.
    let w = flagged(&[bundle_for(1), bundle_for(2), rotated(3, "f", 2)]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("without matching deployment evidence"),
        "{w:?}"
    );
    // A previous fleet never preferred before.
    let w = flagged(&[bundle_for(1), rotated(2, "stranger", 9)]);
    assert!(
        w.iter()
            .any(|w| w.contains("was never the preferred fleet")),
        "{w:?}"
    );
    // A previous fleet whose keys changed since it was preferred.
    let w = flagged(&[bundle_for(1), bundle_for(2), rotated(3, "f", 7)]);
    assert!(w.iter().any(|w| w.contains("other keys")), "{w:?}");
}
