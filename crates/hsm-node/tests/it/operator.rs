//! Attacks with the operator's powers on a fleet's replication (issue 27): the attacker runs the
//! hosts and keeps whatever links and files a node had.

use crate::fleet::*;
use bkv_hsm_core::state::{Mutation, Outcome};
use bkv_hsm_core::Entries;
use bkv_hsm_node::replication::{Link, PeerRequest, PeerResponse};
use std::time::Duration;

/// Issue 27, item 3: removing a node cuts the peer links it holds open at once. Its host kept a
/// link to the leader from before the removal; a `ResetGuesses` it proposes over that link is
/// refused and no counter moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_cannot_propose_over_a_link_it_opened_before() {
    let t = tempfile::tempdir().unwrap();
    let members = three_node_fleet(t.path()).await;
    let l = leader(&members).await as usize;
    let lf = members[l].fleet.as_ref().unwrap();
    let generation = register(lf).await;
    for _ in 0..3 {
        lf.propose_mutation(Mutation::CountGuess {
            record_id: RID,
            generation,
        })
        .await
        .unwrap();
    }
    let removed = (l + 1) % 3;
    // While a member, the host opens a link to the leader (it works).
    let mut link = Link::connect(
        &members[l].addr,
        &members[removed].identity,
        &members[l].identity.public(),
    )
    .await
    .unwrap();
    assert!(matches!(
        link.call(&PeerRequest::ReadIndex).await,
        Ok(PeerResponse::ReadIndex(Ok(_)))
    ));
    // The fleet removes it.
    let lf = members[l].fleet.as_ref().unwrap();
    lf.raft
        .change_membership(
            openraft::ChangeMembers::RemoveVoters([removed as u64].into()),
            false,
        )
        .await
        .unwrap();
    lf.raft
        .change_membership(
            openraft::ChangeMembers::RemoveNodes([removed as u64].into()),
            false,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The link it kept carries nothing any more.
    // An entry its own core made (the test numbers it well past anything proposed so far).
    let reset = PeerRequest::Propose(Entries(vec![sealed_entry(
        members[removed].identity.public(),
        &Mutation::ResetGuesses {
            record_id: RID,
            generation,
        },
        u64::MAX / 2,
    )]));
    let r = link.call(&reset).await;
    assert!(
        !matches!(r, Ok(PeerResponse::Proposed(Ok(_)))),
        "a removed member's proposal was committed"
    );
    assert_eq!(attempts(&members[l].state), Some(3));
    // Nor does a new link.
    if let Ok(mut again) = Link::connect(
        &members[l].addr,
        &members[removed].identity,
        &members[l].identity.public(),
    )
    .await
    {
        let r = again.call(&reset).await;
        assert!(!matches!(r, Ok(PeerResponse::Proposed(Ok(_)))));
    }
    assert_eq!(attempts(&members[l].state), Some(3));
    // The honest majority keeps counting.
    let o = lf
        .propose_mutation(Mutation::CountGuess {
            record_id: RID,
            generation,
        })
        .await
        .unwrap();
    assert!(matches!(o, Outcome::Counted { attempts: 4, .. }), "{o:?}");
}
