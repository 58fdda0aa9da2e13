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
        web: None,
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

#[test]
fn a_node_that_did_not_answer_has_no_view_and_one_that_did_has_all_of_it() {
    use crate::frontend::*;
    let down = NodeStatusRow {
        index: 1,
        fleet_id: "f".into(),
        addr: "127.0.0.1:1".into(),
        reachable: false,
        view: None,
    };
    let j = serde_json::to_value(&down).unwrap();
    assert!(j.get("role").is_none());
    assert_eq!(serde_json::from_value::<NodeStatusRow>(j).unwrap(), down);
    let up = NodeStatusRow {
        reachable: true,
        view: Some(NodeView {
            node_id: 2,
            role: "leader".into(),
            leader: Some(2),
            term: 3,
            last_log_index: Some(9),
            applied_index: Some(9),
            voters: vec![0, 1, 2],
            learners: vec![],
        }),
        ..down
    };
    let j = serde_json::to_value(&up).unwrap();
    assert_eq!(j["role"], "leader");
    assert_eq!(serde_json::from_value::<NodeStatusRow>(j).unwrap(), up);
}
