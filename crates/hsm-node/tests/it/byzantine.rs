//! A Byzantine host against a three-node fleet (issue 28): the leader's host writes whatever it
//! likes into the log — a forged entry, a replayed `ResetGuesses`, two entries swapped, an entry
//! renumbered or reattributed — and a follower's host forwards entries that are not its core's.
//! Every core refuses each the same way (their states stay identical, chain included), no guess
//! count moves down, and the honest majority keeps counting.
//!
//! A session resumed with a made-up outcome cannot be expressed any more (the core keeps its
//! own outcomes: `a_session_goes_on_only_with_the_outcome_its_core_computed` in
//! `crates/hsm-core/tests/byzantine.rs`); forged and stale snapshots are refused by the
//! receiving core (`a_stream_missing_altered_or_forged_installs_nothing`,
//! `a_stale_or_other_history_snapshot_installs_nothing`); a removed member's entries are refused
//! by membership at apply (`a_removed_members_entries_are_refused` in the core, and end to end
//! `a_removed_member_cannot_propose_over_a_link_it_opened_before`).

use crate::fleet::{
    attempts, leader, register, sealed_entry, three_node_fleet, Member, ProposeMutation, RID,
};
use bkv_hsm_core::entry::Refusal;
use bkv_hsm_core::state::{Mutation, Outcome, State};
use bkv_hsm_core::{EntryKey, LogEntry};
use bkv_hsm_node::replication::{Link, PeerRequest, PeerResponse, ProposeError};
use std::time::Duration;

/// What every member's state must agree on after each attack: the fleet part (proposers'
/// numbers, the chain over every entry processed) and the record's count.
fn states(members: &[Member]) -> Vec<(State, Option<u32>)> {
    members
        .iter()
        .map(|m| {
            // Two statements: the guard must be gone before `attempts` locks again.
            let fleet = m.state.lock().unwrap().state.fleet().clone();
            (fleet, attempts(&m.state))
        })
        .collect()
}

/// Waits until every member processed as many entries as the leader, then checks they agree.
async fn agreed(members: &[Member]) -> (State, Option<u32>) {
    for _ in 0..100 {
        let s = states(members);
        if s.iter().all(|x| x.0.entries == s[0].0.entries) {
            for x in &s[1..] {
                assert_eq!(
                    x.0.chain, s[0].0.chain,
                    "members processed different entries"
                );
                assert_eq!(x.0.proposers, s[0].0.proposers);
                assert_eq!(x.1, s[0].1, "members count differently");
            }
            return s[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "members did not catch up: {:?}",
        states(members)
            .iter()
            .map(|s| s.0.entries)
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byzantine_host_gets_no_entry_past_the_cores() {
    let t = tempfile::tempdir().unwrap();
    let members = three_node_fleet(t.path()).await;
    let l = leader(&members).await as usize;
    let follower = (l + 1) % 3;
    let lead = members[l].fleet.as_ref().unwrap();
    let generation = register(members[follower].fleet.as_ref().unwrap()).await;
    // The follower's core resets the count once (the user logged in); its host keeps the entry.
    let me = members[follower].identity.public();
    let reset = Mutation::ResetGuesses {
        record_id: RID,
        generation,
    };
    let guess = Mutation::CountGuess {
        record_id: RID,
        generation,
    };
    let base = 1u64 << 40;
    let kept = sealed_entry(me, &reset, base);
    assert_eq!(lead.propose(kept.clone()).await.unwrap(), Outcome::Reset);
    for i in 1..=3u64 {
        let o = lead
            .propose(sealed_entry(me, &guess, base + i))
            .await
            .unwrap();
        assert!(matches!(o, Outcome::Counted { .. }), "{o:?}");
    }
    let (_, count) = agreed(&members).await;
    assert_eq!(count, Some(3));

    let refused = |o: Outcome| match o {
        Outcome::Refused(r) => r,
        o => panic!("the cores applied what a host made up: {o:?}"),
    };
    // 1. A forged entry: a ResetGuesses under a key no core of this fleet holds.
    let forged = EntryKey::from_bytes([6; 32], "test-fleet").seal(
        me,
        base + 10,
        &mut rand::rngs::OsRng,
        &reset,
    );
    assert_eq!(
        refused(lead.propose(forged).await.unwrap()),
        Refusal::Forged
    );
    // 2. The kept ResetGuesses replayed as it was.
    assert!(matches!(
        refused(lead.propose(kept.clone()).await.unwrap()),
        Refusal::OutOfOrder { .. }
    ));
    // 3. Replayed under a new number, or as another member's: the number and the proposer are
    //    authenticated.
    let renumbered = LogEntry {
        seq: base + 20,
        ..kept.clone()
    };
    assert_eq!(
        refused(lead.propose(renumbered).await.unwrap()),
        Refusal::Forged
    );
    let reattributed = LogEntry {
        proposer: members[l].identity.public(),
        ..kept.clone()
    };
    assert_eq!(
        refused(lead.propose(reattributed).await.unwrap()),
        Refusal::Forged
    );
    // 4. Two entries of the follower's core swapped: the later one applies, the earlier one
    //    comes after it and is refused (a reset made before those guesses cannot undo them).
    let first = sealed_entry(me, &reset, base + 30);
    let second = sealed_entry(me, &guess, base + 31);
    let s2 = lead.submit(second);
    let s1 = lead.submit(first);
    assert!(matches!(
        lead.wait(s2).await.unwrap(),
        Outcome::Counted { attempts: 4, .. }
    ));
    assert!(matches!(
        refused(lead.wait(s1).await.unwrap()),
        Refusal::OutOfOrder { .. }
    ));
    // 5. Bytes changed in a stored entry's ciphertext.
    let mut flipped = sealed_entry(me, &reset, base + 40);
    flipped.sealed[3] ^= 1;
    assert_eq!(
        refused(lead.propose(flipped).await.unwrap()),
        Refusal::Forged
    );
    let (_, count) = agreed(&members).await;
    assert_eq!(count, Some(4), "no count moved down");

    // 6. A follower's host forwards another member's entry over its own link: the leader's
    //    host refuses it (and every core would refuse a replay of it anyway).
    let other = (l + 2) % 3;
    let mut link = Link::connect(
        &members[l].addr,
        &members[follower].identity,
        &members[l].identity.public(),
    )
    .await
    .unwrap();
    let theirs = sealed_entry(members[other].identity.public(), &reset, base + 50);
    match link
        .call(&PeerRequest::Propose(bkv_hsm_core::Entries(vec![theirs])))
        .await
        .unwrap()
    {
        PeerResponse::Proposed(Err(ProposeError::BatchRefused)) => {}
        PeerResponse::Proposed(r) => panic!("a member forwarded another member's entry: {r:?}"),
        _ => panic!("unexpected answer to a forwarded proposal"),
    }

    // The honest majority keeps serving: a guess through a follower counts.
    let o = members[other]
        .fleet
        .as_ref()
        .unwrap()
        .propose_mutation(guess)
        .await
        .unwrap();
    assert!(matches!(o, Outcome::Counted { attempts: 5, .. }), "{o:?}");
    let (state, count) = agreed(&members).await;
    assert_eq!(count, Some(5));
    assert_eq!(state.proposers.get(&me), Some(&(base + 31)));
}
