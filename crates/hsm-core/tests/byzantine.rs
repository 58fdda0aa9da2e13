//! The host is untrusted for integrity (issue 28): whatever entries it hands a core — forged,
//! replayed, reordered, of another fleet — the core refuses them the same way every core does,
//! no counter moves down, and a session continues only with the outcome the core itself
//! computed. (A removed member's entries: `members::tests` in the crate.)

mod support;
use support::*;

use bkv_hsm_core::{
    Core, EntryKey, FleetSecrets, FleetTrust, LogEntry, MemoryPlatform, NodeIdentity, Outcome,
    Platform, Refusal, Step,
};
use bkv_wire::node::NodeError;
use bkv_wire::vault::{VaultError, VaultRequest, VaultResponse};
use opaque_ke::ClientLogin;
use rand::rngs::OsRng;
use std::sync::Arc;

/// `LoginStart` with `pw` in session `s`, stopped where the core asks for the guess to be
/// committed: the entry it made, not yet applied.
fn login_start_entry(c: &mut Core, s: &mut Client, pw: &str) -> (LogEntry, Vec<u8>) {
    let start = ClientLogin::<bkv_wire::OpaqueSuite>::start(&mut OsRng, pw.as_bytes()).unwrap();
    let ct = s.seal(&VaultRequest::LoginStart {
        credential_request: start.message.serialize().to_vec(),
    });
    assert!(matches!(
        c.session_message(&s.sid, &s.user, &ct),
        Ok(Step::ReadFresh)
    ));
    let Ok(Step::Commit(e)) = c.resume_fresh(&s.sid, &ct) else {
        panic!("expected the guess to be committed first")
    };
    (e, ct)
}

/// A forged entry, or one of another fleet, is refused and changes nothing but the chain.
#[test]
fn entries_not_made_by_a_core_of_this_fleet_are_refused() {
    let mut c = core();
    open(&mut c, "ann").register(&mut c, "right", 5).unwrap();
    let rid = bkv_wire::record_id("ann");
    let generation = c.records().record(&rid).unwrap().unwrap().generation;
    let reset = bkv_hsm_core::Mutation::ResetGuesses {
        record_id: rid,
        generation,
    };
    assert!(open(&mut c, "ann").login(&mut c, "wrong").is_err());
    assert_eq!(attempts(&mut c, "ann"), 1);
    // Made up by a host: any key but the fleet's.
    let forged = EntryKey::from_bytes([1; 32], c.fleet_id()).seal([2; 32], 1, &mut OsRng, &reset);
    assert_eq!(c.apply(&forged).unwrap(), Outcome::Refused(Refusal::Forged));
    // Made by a core of another fleet.
    let mut other = core_on(Arc::new(MemoryPlatform::new([3; 32])));
    let theirs = other.entry_for_tests(&reset);
    assert_eq!(c.apply(&theirs).unwrap(), Outcome::Refused(Refusal::Forged));
    // Made by this fleet's core and changed on the way (its proposer, number or bytes).
    let mine = c.entry_for_tests(&reset);
    for change in [
        |e: &mut LogEntry| e.seq += 1,
        |e: &mut LogEntry| e.proposer = [9; 32],
        |e: &mut LogEntry| e.sealed[3] ^= 0x40,
    ] {
        let mut e = mine.clone();
        change(&mut e);
        assert_eq!(c.apply(&e).unwrap(), Outcome::Refused(Refusal::Forged));
    }
    assert_eq!(attempts(&mut c, "ann"), 1);
}

/// Issue 28's replay: the host keeps the `ResetGuesses` a right password made, lets an attacker
/// guess, and hands the old entry in again. Refused: the counter stays where the guesses put it.
#[test]
fn a_replayed_reset_is_refused_and_the_count_stands() {
    let mut c = core();
    open(&mut c, "bo").register(&mut c, "right", 10).unwrap();
    assert!(open(&mut c, "bo").login(&mut c, "wrong").is_err());
    // The owner logs in: the host keeps the entry that resets the count.
    let mut s = open(&mut c, "bo");
    let (cr, state) = s.login_start(&mut c, "right").unwrap();
    let finish = s.finish_message("right", &cr, state);
    let Ok(Step::Commit(reset)) = c.session_message(&s.sid, "bo", &finish) else {
        panic!("expected the reset to be committed")
    };
    assert_eq!(c.apply(&reset).unwrap(), Outcome::Reset);
    let Ok(Step::Reply(r)) = c.resume(&s.sid) else {
        panic!("expected the login's reply")
    };
    assert!(matches!(s.open_reply(&r), VaultResponse::LoginOk { .. }));
    // Someone guesses three times.
    for _ in 0..3 {
        assert!(open(&mut c, "bo").login(&mut c, "guess").is_err());
    }
    assert_eq!(attempts(&mut c, "bo"), 3);
    // The old reset again, as it was.
    assert!(matches!(
        c.apply(&reset).unwrap(),
        Outcome::Refused(Refusal::OutOfOrder { .. })
    ));
    assert_eq!(attempts(&mut c, "bo"), 3);
}

/// Two entries the core made, applied in the other order: the one now out of order is refused
/// on every core alike, its session is told (no answer without a counted guess), the other
/// goes through.
#[test]
fn reordered_entries_are_refused_and_their_sessions_told() {
    let mut c = core();
    open(&mut c, "cy").register(&mut c, "right", 10).unwrap();
    let (mut s1, mut s2) = (open(&mut c, "cy"), open(&mut c, "cy"));
    let (first, _) = login_start_entry(&mut c, &mut s1, "a");
    let (second, _) = login_start_entry(&mut c, &mut s2, "b");
    assert!(second.seq > first.seq);
    assert!(matches!(
        c.apply(&second).unwrap(),
        Outcome::Counted { attempts: 1, .. }
    ));
    assert!(matches!(
        c.apply(&first).unwrap(),
        Outcome::Refused(Refusal::OutOfOrder { .. })
    ));
    let Ok(Step::Reply(r1)) = c.resume(&s1.sid) else {
        panic!("the refused entry's session is answered")
    };
    assert_eq!(
        s1.open_reply(&r1),
        VaultResponse::Error(VaultError::Conflict)
    );
    let Ok(Step::Reply(r2)) = c.resume(&s2.sid) else {
        panic!("the applied entry's session goes on")
    };
    assert!(matches!(
        s2.open_reply(&r2),
        VaultResponse::LoginStarted { .. }
    ));
    assert_eq!(attempts(&mut c, "cy"), 1);
}

/// The host cannot make a session go on before (or without) its entry applying: there is no
/// outcome to hand in, and resuming early changes nothing.
#[test]
fn a_session_goes_on_only_with_the_outcome_its_core_computed() {
    let mut c = core();
    open(&mut c, "di").register(&mut c, "right", 10).unwrap();
    let mut other = open(&mut c, "di");
    let (e2, _) = login_start_entry(&mut c, &mut other, "x");
    let mut s = open(&mut c, "di");
    let (e, _) = login_start_entry(&mut c, &mut s, "guess");
    assert_eq!(c.resume(&s.sid).err(), Some(NodeError::InProgress));
    assert_eq!(c.resume(&s.sid).err(), Some(NodeError::InProgress));
    assert_eq!(attempts(&mut c, "di"), 0);
    // An entry of another session applied meanwhile does not answer this one.
    assert!(matches!(c.apply(&e2).unwrap(), Outcome::Counted { .. }));
    assert_eq!(c.resume(&s.sid).err(), Some(NodeError::InProgress));
    assert!(matches!(c.apply(&e).unwrap(), Outcome::Counted { .. }));
    assert!(matches!(c.resume(&s.sid), Ok(Step::Reply(_))));
    assert!(matches!(c.resume(&other.sid), Ok(Step::Reply(_))));
    assert_eq!(attempts(&mut c, "di"), 2);
}

/// Entries of one core apply on every replica of the fleet, in the core's order; a core's own
/// numbers restart above what it made before a restart.
#[test]
fn replicas_apply_each_others_entries_in_order_and_numbers_survive_a_restart() {
    let p = Arc::new(MemoryPlatform::new([4; 32]));
    let secrets = FleetSecrets::generate(&*p, FleetTrust::for_tests()).unwrap();
    let sealed = secrets.seal(&*p).unwrap();
    let (ia, ib) = (
        NodeIdentity::generate(&*p).unwrap(),
        NodeIdentity::generate(&*p).unwrap(),
    );
    let mut a = Core::new(p.clone(), secrets, &ia).unwrap();
    let mut b = Core::new(p.clone(), FleetSecrets::unseal(&*p, &sealed).unwrap(), &ib).unwrap();
    let m = |n: u8| bkv_hsm_core::Mutation::CountRegisterStart {
        record_id: [n; 32],
        day: 0,
    };
    let (a1, b1, a2) = (
        a.entry_for_tests(&m(1)),
        b.entry_for_tests(&m(2)),
        a.entry_for_tests(&m(3)),
    );
    for core in [&mut a, &mut b] {
        for e in [&a1, &b1, &a2] {
            assert_eq!(core.apply(e).unwrap(), Outcome::RegisterStartCounted);
        }
    }
    assert_eq!(a.state().chain, b.state().chain);
    // Core a restarts from its state: its next entry still comes after the ones it made.
    let state = a.records().export().unwrap();
    let mut a = Core::from_state_for_tests(
        p.clone(),
        FleetSecrets::unseal(&*p, &sealed).unwrap(),
        &ia,
        state,
    )
    .unwrap();
    let a3 = a.entry_for_tests(&m(4));
    assert!(a3.seq > a2.seq);
    assert_eq!(b.apply(&a3).unwrap(), Outcome::RegisterStartCounted);
}

/// A sequence number can come round again (the host sets the platform clock back across a
/// restart); another entry with the session's number — a restarted twin's, applied in its
/// place — never answers the session: the session ends unanswered, its own entry is then
/// refused as out of order, the guess it asked for was never counted, and nothing was released.
/// (The same path ends a session whose entry a snapshot carried past this core.)
/// (Found by review: before, the session took whatever outcome came with its number.)
#[test]
fn a_session_never_takes_the_outcome_of_another_entry_with_its_number() {
    let p = Arc::new(MemoryPlatform::new([6; 32]));
    let secrets = FleetSecrets::generate(&*p, FleetTrust::for_tests()).unwrap();
    let sealed = secrets.seal(&*p).unwrap();
    let identity = NodeIdentity::generate(&*p).unwrap();
    let mut c = Core::new(p.clone(), secrets, &identity).unwrap();
    open(&mut c, "vic").register(&mut c, "right", 10).unwrap();
    let mut s = open(&mut c, "vic");
    let (mine, _) = login_start_entry(&mut c, &mut s, "guess");
    // The same core restarted with its clock where it was, before the entries it made applied
    // anywhere it can see: its numbers start over and reach this session's.
    let mut twin = Core::new(
        p.clone(),
        FleetSecrets::unseal(&*p, &sealed).unwrap(),
        &identity,
    )
    .unwrap();
    let m = bkv_hsm_core::Mutation::CountRegisterStart {
        record_id: [7; 32],
        day: 0,
    };
    let mut other = twin.entry_for_tests(&m);
    while other.seq < mine.seq {
        other = twin.entry_for_tests(&m);
    }
    assert_eq!((other.seq, other.proposer), (mine.seq, mine.proposer));
    assert!(matches!(
        c.apply(&other).unwrap(),
        Outcome::RegisterStartCounted
    ));
    // The session's number has passed without its entry: its outcome is unknown here, and the
    // session ends unanswered (as after a failed commit), never with the other entry's outcome.
    assert_eq!(c.resume(&s.sid).err(), Some(NodeError::Unavailable));
    assert_eq!(c.resume(&s.sid).err(), Some(NodeError::UnknownSession));
    assert!(matches!(
        c.apply(&mine).unwrap(),
        Outcome::Refused(Refusal::OutOfOrder { .. })
    ));
    assert_eq!(attempts(&mut c, "vic"), 0);
}

/// A frame's key and nonce follow from its stream's nonce and bucket number: a host that had the
/// core frame one bucket of a stream twice, with the sealed values before and after a change,
/// would get two plaintexts under one keystream (and their XOR). Found by review of the core
/// service split, where the host names the stream nonce and the sealed value in each request.
#[test]
fn a_bucket_is_framed_once_per_stream_and_only_in_streams_the_core_opened() {
    let mut c = core();
    let mut victim = open(&mut c, "victim");
    victim.register(&mut c, "right password", 10).unwrap();
    let written = |c: &mut Core| {
        c.records()
            .take_writes()
            .into_iter()
            .find_map(|(b, v)| v.map(|v| (b, v)))
            .unwrap()
    };
    let (b, before) = written(&mut c);
    // A wrong guess rewrites the victim's bucket.
    assert!(victim.login(&mut c, "wrong password").is_err());
    let (b2, after) = written(&mut c);
    assert_eq!(b, b2);
    assert_ne!(before, after);
    let summary = c.records().seal_summary(b"position").unwrap();
    let stream = c.snapshot_header(&summary).unwrap();
    let first = c.snapshot_frame(stream.nonce, b, &after).unwrap();
    // Asked again for the same value (a piece resent): the same frame.
    assert_eq!(c.snapshot_frame(stream.nonce, b, &after).unwrap(), first);
    // Another value of that bucket in the same stream: refused.
    let e = c.snapshot_frame(stream.nonce, b, &before).unwrap_err();
    assert!(e.to_string().contains("another value"), "{e}");
    // A stream the core never opened: refused.
    assert!(c.snapshot_frame([7; 32], b, &before).is_err());
    // A new stream (a new nonce, so a new keystream) may frame the other value.
    let again = c.snapshot_header(&summary).unwrap();
    assert_ne!(again.nonce, stream.nonce);
    c.snapshot_frame(again.nonce, b, &before).unwrap();
}

/// The host's record table as a map (what it would hand a restarted core).
struct Table(std::collections::BTreeMap<u16, Vec<u8>>);

impl Table {
    fn take(&mut self, c: &mut Core) {
        for (b, v) in c.records().take_writes() {
            match v {
                Some(v) => self.0.insert(b, v),
                None => self.0.remove(&b),
            };
        }
    }
}

impl bkv_hsm_core::BucketHost for Table {
    fn read(&self, b: u16) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.get(&b).cloned())
    }
    fn for_each(
        &self,
        f: &mut bkv_hsm_core::sealed_state::BucketVisitor<'_>,
    ) -> Result<(), bkv_hsm_core::SealedError> {
        self.0.iter().try_for_each(|(b, v)| f(*b, v))
    }
}

/// Issue 28, item 3: rollback protection is the core's own, not the host's start-up check. A
/// host keeps a copy of its record table (summary and buckets), lets two guesses count, then
/// restarts the core on that copy with the log cut before them (what `Fleet::start` would
/// refuse, if the host ran it). The core's counter says its state covered those entries when it
/// answered them: from the older state it answers nothing ("unavailable", however the host
/// asks), and once the log's entries are applied again it serves, every guess counted.
#[test]
fn a_core_put_back_behind_its_counter_answers_nothing_until_the_log_brings_it_forward() {
    let p = Arc::new(MemoryPlatform::new([8; 32]));
    let secrets = FleetSecrets::generate(&*p, FleetTrust::for_tests()).unwrap();
    let sealed = secrets.seal(&*p).unwrap();
    let identity = NodeIdentity::generate(&*p).unwrap();
    let mut c = Core::new(p.clone(), secrets, &identity).unwrap();
    open(&mut c, "eve").register(&mut c, "right", 10).unwrap();
    let mut table = Table(Default::default());
    table.take(&mut c);
    let old = Table(table.0.clone());
    let old_summary = c.records().seal_summary(b"old").unwrap();
    // Two guesses: each entry applied, and its answer (the OPRF evaluation) let out.
    let mut cut = Vec::new();
    for pw in ["guess 1", "guess 2"] {
        let mut s = open(&mut c, "eve");
        let (e, _) = login_start_entry(&mut c, &mut s, pw);
        assert!(matches!(c.apply(&e).unwrap(), Outcome::Counted { .. }));
        assert!(matches!(c.resume(&s.sid), Ok(Step::Reply(_))));
        cut.push(e);
    }
    assert_eq!(attempts(&mut c, "eve"), 2);
    let covered = c.state().entries;
    // Put back under the running core (no restart): it answers nothing either.
    let mut s = open(&mut c, "eve");
    let ct = s.seal(&VaultRequest::Status);
    c.records()
        .restore(Box::new(Table(old.0.clone())), Some(&old_summary))
        .unwrap();
    assert_eq!(
        c.session_message(&s.sid, "eve", &ct).err(),
        Some(NodeError::Unavailable)
    );
    assert!(c.export_secrets_to(&[5; 32]).is_err());
    assert_eq!(
        p.counter_read(bkv_hsm_core::Counter::CORE_FOR_TESTS)
            .unwrap(),
        covered,
        "the counter covered the state before its answers left"
    );
    drop(c);

    // Restarted on the old copy: it restores (the copy is consistent), but serves nothing.
    let mut c = Core::new(
        p.clone(),
        FleetSecrets::unseal(&*p, &sealed).unwrap(),
        &identity,
    )
    .unwrap();
    c.records()
        .restore(Box::new(old), Some(&old_summary))
        .unwrap();
    assert!(c.state().entries < covered);
    let mut s = open(&mut c, "eve");
    let ct = s.seal(&VaultRequest::Status);
    assert_eq!(
        c.session_message(&s.sid, "eve", &ct).err(),
        Some(NodeError::Unavailable)
    );
    assert_eq!(
        c.resume_fresh(&s.sid, &ct).err(),
        Some(NodeError::Unavailable)
    );
    assert_eq!(c.resume(&s.sid).err(), Some(NodeError::Unavailable));
    // Half the cut log: still behind.
    assert!(matches!(c.apply(&cut[0]).unwrap(), Outcome::Counted { .. }));
    assert_eq!(
        c.session_message(&s.sid, "eve", &ct).err(),
        Some(NodeError::Unavailable)
    );
    // All of it: the state covers what was answered, and both guesses stand.
    assert!(matches!(c.apply(&cut[1]).unwrap(), Outcome::Counted { .. }));
    assert_eq!(attempts(&mut c, "eve"), 2);
    assert!(open(&mut c, "eve").login(&mut c, "guess 3").is_err());
    assert_eq!(attempts(&mut c, "eve"), 3);
}
