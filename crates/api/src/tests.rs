use crate::auditor::*;

#[test]
fn entries_round_trip_and_keep_their_field_names() {
    let e = EntryResponse {
        index: 3,
        kind: EntryKind::Bundle,
        epoch: Some(7),
        bundle: Some(vec![1, 2, 3]),
        record: None,
        evidence: None,
        auditor_signature: vec![9; 64],
        operator_signature: None,
    };
    let j = serde_json::to_value(&e).unwrap();
    assert_eq!(j["kind"], "bundle");
    assert_eq!(j["bundle"], "AQID");
    assert!(j.get("record").is_none());
    assert_eq!(serde_json::from_value::<EntryResponse>(j).unwrap(), e);
}

#[test]
fn a_proof_longer_than_any_tree_is_refused() {
    let long = serde_json::json!({ "proof": vec!["A".repeat(44); crate::b64::MAX_PROOF_LEN + 1] });
    assert!(serde_json::from_value::<ProofResponse>(long).is_err());
    let p = ProofResponse {
        proof: vec![[5; 32]; 3],
    };
    let back: ProofResponse = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}
