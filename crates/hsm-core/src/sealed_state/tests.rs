use super::*;
use crate::platform::MemoryPlatform;
use crate::state::Pending;
use proptest::prelude::*;
use std::sync::Mutex;

/// A host keeping buckets in a map the test can tamper with.
#[derive(Clone, Default)]
struct MapHost(Arc<Mutex<BTreeMap<u16, Vec<u8>>>>);

impl BucketHost for MapHost {
    fn read(&self, b: u16) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.lock().unwrap().get(&b).cloned())
    }
    fn for_each(&self, f: &mut BucketVisitor<'_>) -> Result<(), SealedError> {
        for (b, v) in self.0.lock().unwrap().iter() {
            f(*b, v)?;
        }
        Ok(())
    }
}

impl MapHost {
    fn store(&self, writes: Vec<(u16, Option<Vec<u8>>)>) {
        let mut m = self.0.lock().unwrap();
        for (b, v) in writes {
            match v {
                Some(v) => m.insert(b, v),
                None => m.remove(&b),
            };
        }
    }
}

fn platform() -> SharedPlatform {
    Arc::new(MemoryPlatform::new([5; 32]))
}

fn store(id: u8, tag: u8) -> Mutation {
    Mutation::StorePending {
        record_id: [id; 32],
        pending: Pending {
            credential: Credential {
                opaque_record: vec![tag; 8],
                wrapped_key: vec![tag; 4],
                guess_limit: 3,
                confirm_hash: [tag; 32],
            },
            replaces: None,
        },
    }
}

fn activate(id: u8, tag: u8) -> Mutation {
    Mutation::Activate {
        record_id: [id; 32],
        confirm_hash: [tag; 32],
    }
}

/// A store with one host-held, active record; returns its generation.
fn one_record(p: &SharedPlatform) -> (SealedState, MapHost, u64) {
    let host = MapHost::default();
    let mut s = SealedState::new(p.clone(), [1; 32]);
    s.restore(Box::new(host.clone()), None).unwrap();
    s.apply(&store(7, 1)).unwrap();
    let Outcome::Activated { generation } = s.apply(&activate(7, 1)).unwrap() else {
        panic!("not activated")
    };
    host.store(s.take_writes());
    (s, host, generation)
}

#[test]
fn a_restart_restores_records_and_refuses_a_bucket_from_another_time() {
    let p = platform();
    let (mut s, host, generation) = one_record(&p);
    let count = Mutation::CountGuess {
        record_id: [7; 32],
        generation,
    };
    let old = host.0.lock().unwrap().clone();
    let summary_old = s.seal_summary(b"old").unwrap();
    assert!(matches!(
        s.apply(&count).unwrap(),
        Outcome::Counted { attempts: 1, .. }
    ));
    host.store(s.take_writes());
    let summary = s.seal_summary(b"at-2").unwrap();

    let mut again = SealedState::new(p.clone(), [1; 32]);
    let pos = again
        .restore(Box::new(host.clone()), Some(&summary))
        .unwrap();
    assert_eq!(pos.as_deref(), Some(&b"at-2"[..]));
    assert_eq!(again.live_records(), 1);
    assert!(matches!(
        again.status(&[7; 32]).unwrap(),
        RecordState::Active { attempts: 1, .. }
    ));

    // The buckets put back from before the guess, with the newer summary: refused.
    let rolled = MapHost(Arc::new(Mutex::new(old.clone())));
    let mut third = SealedState::new(p.clone(), [1; 32]);
    assert!(matches!(
        third.restore(Box::new(rolled.clone()), Some(&summary)),
        Err(SealedError::RootMismatch)
    ));
    // Rolled back as a whole (buckets and summary of one time): consistent, and the
    // position tells the host to re-apply the log from there.
    let pos = third.restore(Box::new(rolled), Some(&summary_old)).unwrap();
    assert_eq!(pos.as_deref(), Some(&b"old"[..]));
    // A store with buckets but no summary is refused.
    assert!(SealedState::new(p, [1; 32])
        .restore(Box::new(host), None)
        .is_err());
}

#[test]
fn a_bucket_swapped_under_a_running_state_is_refused() {
    let p = platform();
    let (mut s, host, generation) = one_record(&p);
    let old = host.0.lock().unwrap().clone();
    let count = Mutation::CountGuess {
        record_id: [7; 32],
        generation,
    };
    s.apply(&count).unwrap();
    host.store(s.take_writes());
    // A fresh state over the same store (the cache emptied), then the host swaps the old
    // bucket back: the next access is refused, and no guess goes uncounted.
    let summary = s.seal_summary(b"").unwrap();
    let mut s = SealedState::new(p, [1; 32]);
    s.restore(Box::new(host.clone()), Some(&summary)).unwrap();
    *host.0.lock().unwrap() = old;
    assert!(s.record(&[7; 32]).is_err());
    assert!(s.apply(&count).is_err());
}

#[test]
fn a_snapshot_view_collects_every_record_and_installs_elsewhere() {
    let p = platform();
    let host = MapHost::default();
    let mut s = SealedState::new(p.clone(), [1; 32]);
    s.restore(Box::new(host.clone()), None).unwrap();
    for i in 0..50u8 {
        s.apply(&store(i, i)).unwrap();
        s.apply(&activate(i, i)).unwrap();
    }
    host.store(s.take_writes());
    let summary = s.seal_summary(b"pos").unwrap();
    let (state, pos) = collect_state(&p, &summary, |f| host.for_each(f)).unwrap();
    assert_eq!(pos, b"pos");
    assert_eq!(state.records.len(), 50);
    assert_eq!(state.live_records(), 50);
    // A view with a bucket missing does not collect.
    let mut partial = host.0.lock().unwrap().clone();
    let first = *partial.keys().next().unwrap();
    partial.remove(&first);
    let partial = MapHost(Arc::new(Mutex::new(partial)));
    assert!(collect_state(&p, &summary, |f| partial.for_each(f)).is_err());

    // Installed on another node (its own sealing key): the same records and counts.
    let q: SharedPlatform = Arc::new(MemoryPlatform::new([6; 32]));
    let mut other = SealedState::new(q, [1; 32]);
    let buckets = other.install(state.clone()).unwrap();
    assert_eq!(other.live_records(), 50);
    let other_host = MapHost::default();
    other_host.store(buckets.into_iter().map(|(b, v)| (b, Some(v))).collect());
    let summary = other.seal_summary(b"").unwrap();
    other.restore(Box::new(other_host), Some(&summary)).unwrap();
    for i in 0..50u8 {
        assert_eq!(
            other.record(&[i; 32]).unwrap(),
            state.records.get(&[i; 32]).map(|r| (**r).clone())
        );
    }
}

#[derive(Debug, Clone)]
enum Op {
    Store(u8, u8),
    Activate(u8, u8),
    Count(u8),
    Reset(u8),
    Destroy(u8),
    Delete(u8),
    Batch(Vec<(u8, u8)>),
    /// The host stores what was written and the state restarts from it.
    Restart,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let id = 0u8..24;
    let op = prop_oneof![
        (id.clone(), 0u8..3).prop_map(|(i, t)| Op::Store(i, t)),
        (id.clone(), 0u8..3).prop_map(|(i, t)| Op::Activate(i, t)),
        id.clone().prop_map(Op::Count),
        id.clone().prop_map(Op::Reset),
        id.clone().prop_map(Op::Destroy),
        id.clone().prop_map(Op::Delete),
        proptest::collection::vec((id, 0u8..3), 1..6).prop_map(Op::Batch),
        Just(Op::Restart),
    ];
    proptest::collection::vec(op, 1..80)
}

fn mutation(model: &State, op: &Op) -> Option<Mutation> {
    let generation = |i: u8| {
        model
            .records
            .get(&[i; 32])
            .map(|r| r.generation)
            .unwrap_or(0)
    };
    Some(match *op {
        Op::Store(i, t) => store(i, t),
        Op::Activate(i, t) => activate(i, t),
        Op::Count(i) => Mutation::CountGuess {
            record_id: [i; 32],
            generation: generation(i),
        },
        Op::Reset(i) => Mutation::ResetGuesses {
            record_id: [i; 32],
            generation: generation(i),
        },
        Op::Destroy(i) => Mutation::Destroy {
            record_id: [i; 32],
            generation: generation(i),
        },
        Op::Delete(i) => Mutation::Delete {
            record_id: [i; 32],
            generation: generation(i),
        },
        Op::Batch(ref v) => Mutation::Batch(
            v.iter()
                .map(|&(i, t)| if t == 0 { store(i, 1) } else { activate(i, 1) })
                .collect(),
        ),
        Op::Restart => return None,
    })
}

proptest! {
    /// The sealed state answers exactly as the in-memory model (`State`) does, through
    /// restarts from the host's store; four buckets, so each holds several records.
    #[test]
    fn sealed_state_matches_the_model(ops in ops()) {
        let p = platform();
        let host = MapHost::default();
        let fresh = || SealedState::with_commitment(p.clone(), RecordCommitment::with_bits([3; 32], 2));
        let mut s = fresh();
        s.restore(Box::new(host.clone()), None).unwrap();
        let mut model = State::default();
        for op in &ops {
            match mutation(&model, op) {
                Some(m) => {
                    let want = model.apply(&m);
                    prop_assert_eq!(s.apply(&m).unwrap(), want);
                }
                None => {
                    host.store(s.take_writes());
                    let summary = s.seal_summary(b"").unwrap();
                    s = fresh();
                    s.restore(Box::new(host.clone()), Some(&summary)).unwrap();
                }
            }
            prop_assert_eq!(s.live_records(), model.live_records());
            prop_assert_eq!(s.fleet().next_generation, model.next_generation);
        }
        for i in 0..24u8 {
            prop_assert_eq!(
                s.record(&[i; 32]).unwrap(),
                model.records.get(&[i; 32]).map(|r| (**r).clone())
            );
        }
        prop_assert_eq!(s.export().unwrap(), model);
    }
}
