use super::*;
use proptest::prelude::*;

fn cred(tag: u8, limit: u32) -> Credential {
    Credential {
        opaque_record: vec![tag; 8],
        wrapped_key: vec![tag; 4],
        guess_limit: limit,
        confirm_hash: [tag; 32],
    }
}

fn activate(s: &mut State, id: RecordId, tag: u8, limit: u32) -> u64 {
    assert_eq!(
        s.apply(&Mutation::StorePending {
            record_id: id,
            pending: Pending {
                credential: cred(tag, limit),
                replaces: None
            }
        }),
        Outcome::Stored
    );
    match s.apply(&Mutation::Activate {
        record_id: id,
        confirm_hash: [tag; 32],
    }) {
        Outcome::Activated { generation } => generation,
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_copy_taken_for_a_snapshot_keeps_its_state_while_the_original_changes() {
    let mut s = State::default();
    let (a, b) = ([1; 32], [2; 32]);
    let gen_a = activate(&mut s, a, 1, 10);
    activate(&mut s, b, 2, 10);
    let copy = s.clone();
    let encoded = bkv_wire::encode(&copy);
    assert!(
        Arc::ptr_eq(&s.records[&a], &copy.records[&a]),
        "records are shared"
    );
    s.apply(&Mutation::CountGuess {
        record_id: a,
        generation: gen_a,
    });
    s.apply(&Mutation::Delete {
        record_id: b,
        generation: s.records[&b].generation,
    });
    activate(&mut s, [3; 32], 3, 10);
    assert_eq!(bkv_wire::encode(&copy), encoded, "the copy did not change");
    assert_eq!(
        copy.status(&a),
        RecordState::Active {
            attempts: 0,
            guess_limit: 10
        }
    );
    assert_eq!(
        s.status(&a),
        RecordState::Active {
            attempts: 1,
            guess_limit: 10
        }
    );
    assert_eq!(copy.records.len(), 2);
    // The encoding is that of the records themselves: a decoded copy equals the original.
    let decoded = State::decode(&s.encode(), 1 << 20).unwrap();
    assert_eq!(decoded, s);
}

#[test]
fn pending_is_not_usable_and_retry_cannot_reset_counter() {
    let mut s = State::default();
    let id = [1; 32];
    let gen = activate(&mut s, id, 1, 10);
    for _ in 0..9 {
        s.apply(&Mutation::CountGuess {
            record_id: id,
            generation: gen,
        });
    }
    // A retried fresh registration (dropped response) cannot replace the live record...
    assert_eq!(
        s.apply(&Mutation::StorePending {
            record_id: id,
            pending: Pending {
                credential: cred(2, 10),
                replaces: None
            }
        }),
        Outcome::RecordExists
    );
    // ...and a retried confirmation is idempotent, not a reset.
    assert_eq!(
        s.apply(&Mutation::Activate {
            record_id: id,
            confirm_hash: [1; 32]
        }),
        Outcome::AlreadyActive
    );
    assert_eq!(
        s.status(&id),
        RecordState::Active {
            attempts: 9,
            guess_limit: 10
        }
    );
}

#[test]
fn destroy_is_final_for_that_generation() {
    let mut s = State::default();
    let id = [3; 32];
    let gen = activate(&mut s, id, 3, 2);
    for _ in 0..2 {
        assert!(matches!(
            s.apply(&Mutation::CountGuess {
                record_id: id,
                generation: gen
            }),
            Outcome::Counted { .. }
        ));
    }
    assert_eq!(
        s.apply(&Mutation::CountGuess {
            record_id: id,
            generation: gen
        }),
        Outcome::Exhausted
    );
    assert_eq!(
        s.apply(&Mutation::Destroy {
            record_id: id,
            generation: gen
        }),
        Outcome::Destroyed
    );
    assert_eq!(s.status(&id), RecordState::Destroyed);
    // Stale mutations from before the destruction do nothing.
    assert_eq!(
        s.apply(&Mutation::ResetGuesses {
            record_id: id,
            generation: gen
        }),
        Outcome::Stale
    );
    assert_eq!(s.status(&id), RecordState::Destroyed);
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let id = prop_oneof![Just([1u8; 32]), Just([2u8; 32])];
    let gen = 0u64..12;
    let tag = 1u8..4;
    prop_oneof![
        (id.clone(), tag.clone(), proptest::option::of(gen.clone())).prop_map(
            |(record_id, t, replaces)| Mutation::StorePending {
                record_id,
                pending: Pending {
                    credential: cred(t, 3),
                    replaces
                }
            }
        ),
        (id.clone(), tag).prop_map(|(record_id, t)| Mutation::Activate {
            record_id,
            confirm_hash: [t; 32]
        }),
        (id.clone(), gen.clone()).prop_map(|(record_id, generation)| Mutation::CountGuess {
            record_id,
            generation
        }),
        (id.clone(), gen.clone()).prop_map(|(record_id, generation)| Mutation::ResetGuesses {
            record_id,
            generation
        }),
        (id.clone(), gen.clone()).prop_map(|(record_id, generation)| Mutation::Destroy {
            record_id,
            generation
        }),
        (id.clone(), gen.clone()).prop_map(|(record_id, generation)| Mutation::Delete {
            record_id,
            generation
        }),
        (id.clone(), 0u32..3)
            .prop_map(|(record_id, day)| Mutation::CountRegisterStart { record_id, day }),
        (id.clone(), gen, 1u8..4).prop_map(|(record_id, generation, t)| Mutation::MoveOut {
            record_id,
            generation,
            to_fleet: "next".into(),
            pending_digest: [t; 32],
        }),
        (id.clone(), 1u8..4).prop_map(|(record_id, t)| Mutation::StorePendingMove {
            record_id,
            credential: cred(t, 3),
            intent: ticket(bkv_wire::vault::MoveStep::Intent, t, 0),
        }),
        (id, 1u8..4, 0u32..5).prop_map(|(record_id, t, attempts)| Mutation::MoveIn {
            record_id,
            ticket: ticket(bkv_wire::vault::MoveStep::Moved, t, attempts),
        }),
    ]
}

/// An (unsigned: the bare state does not check signatures) ticket naming digest `[t; 32]`.
fn ticket(step: bkv_wire::vault::MoveStep, t: u8, attempts: u32) -> SignedMoveTicket {
    SignedMoveTicket {
        ticket: bkv_wire::encode(&bkv_wire::vault::MoveTicket {
            version: 1,
            step,
            from_fleet: "old".into(),
            to_fleet: "next".into(),
            record_id: [0; 32],
            pending_digest: [t; 32],
            attempts,
        }),
        signature: Vec::new(),
    }
}

proptest! {
    /// Invariants over any sequence of mutations: attempts never exceed the
    /// limit; counted guesses since the last reset/activation never exceed
    /// the limit; applying is deterministic; the encoding roundtrips.
    #[test]
    fn state_machine_invariants(ms in proptest::collection::vec(arb_mutation(), 0..60)) {
        let mut a = State::default();
        let mut b = State::default();
        let mut counted_since_reset: BTreeMap<RecordId, u32> = BTreeMap::new();
        for m in &ms {
            let rid = *m.record_id().unwrap();
            let before = a.status(&rid);
            let oa = a.apply(m);
            let ob = b.apply(m);
            prop_assert_eq!(&oa, &ob);
            match oa {
                Outcome::Counted { attempts, guess_limit } => {
                    prop_assert!(attempts <= guess_limit);
                    let c = counted_since_reset.entry(rid).or_default();
                    *c += 1;
                    prop_assert!(*c <= guess_limit);
                }
                Outcome::Reset | Outcome::Activated { .. } | Outcome::Deleted => {
                    counted_since_reset.remove(&rid);
                }
                _ => {}
            }
            if before == RecordState::Destroyed {
                // Only a fresh confirmed registration (here or moved in, carrying the old
                // fleet's count) or a delete leaves the tombstone.
                let after = a.status(&rid);
                let leaves = matches!(
                    m,
                    Mutation::Activate { .. } | Mutation::Delete { .. } | Mutation::MoveIn { .. }
                );
                prop_assert!(after == RecordState::Destroyed || leaves, "tombstone left by {:?}", m);
            }
            if let RecordState::Active { attempts, guess_limit } = a.status(&rid) {
                prop_assert!(attempts <= guess_limit);
            }
            // A record that moved away stays moved (only a delete removes it), and grants
            // nothing here.
            if before == RecordState::Moved {
                let after = a.status(&rid);
                let deleted = matches!(m, Mutation::Delete { .. }) && after == RecordState::Absent;
                prop_assert!(after == RecordState::Moved || deleted, "moved record left by {:?}", m);
            }
            // The day's registration budget holds.
            if let Some(r) = a.records.get(&rid) {
                prop_assert!(r.register_starts.count <= MAX_REGISTER_STARTS_PER_DAY);
            }
            let enc = bkv_wire::encode(m);
            prop_assert_eq!(&bkv_wire::decode::<Mutation>(&enc, 1 << 16).unwrap(), m);
        }
        prop_assert_eq!(a, b);
    }

    /// A batch mutation (an earlier release's group commit; the log batches entries now) is
    /// refused and changes nothing, whatever it holds.
    #[test]
    fn a_batch_mutation_is_refused_and_changes_nothing(
        before in proptest::collection::vec(arb_mutation(), 0..30),
        inside in proptest::collection::vec(arb_mutation(), 0..8),
    ) {
        let mut s = State::default();
        for m in &before {
            s.apply(m);
        }
        let was = s.clone();
        prop_assert_eq!(s.apply(&Mutation::Batch(inside)), Outcome::NotBatchable);
        prop_assert_eq!(s, was);
    }
}
