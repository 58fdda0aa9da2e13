// One file on purpose: every test of the guess rule (the property the product rests on) in one
// place, so a reviewer can check the rule's cases are all covered.
//! The vault's guess-counting and registration rules, driven through the real
//! Noise NK and OPAQUE protocols against the I/O-free core.

mod support;
use support::*;

use argon2::Argon2;
use bkv_hsm_core::{Core, FleetSecrets, FleetTrust, MemoryPlatform, NodeIdentity, Platform, Step};
use bkv_wire::node::NodeError;
use bkv_wire::vault::{RecordState, SessionHello, VaultError, VaultRequest, VaultResponse};
use bkv_wire::{OpaqueSuite, NOISE_PATTERN, NOISE_PROLOGUE, OPAQUE_CONTEXT};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, Identifiers, RegistrationResponse,
};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[test]
fn counts_before_answering_resets_on_success_destroys_at_limit() {
    let mut c = core();
    let wrapped = {
        let mut s = open(&mut c, "alice");
        s.register(&mut c, "right", 10).unwrap();
        s.login(&mut c, "right").unwrap()
    };
    for i in 1..=9 {
        let e = open(&mut c, "alice").login(&mut c, "wrong").unwrap_err();
        assert_eq!(
            e,
            VaultError::WrongPassword {
                guesses_remaining: 10 - i
            }
        );
    }
    assert_eq!(
        status(&mut c, "alice"),
        RecordState::Active {
            attempts: 9,
            guess_limit: 10
        }
    );
    // Success resets the counter and returns the same wrapped key.
    assert_eq!(
        open(&mut c, "alice").login(&mut c, "right").unwrap(),
        wrapped
    );
    assert_eq!(
        status(&mut c, "alice"),
        RecordState::Active {
            attempts: 0,
            guess_limit: 10
        }
    );
    for _ in 1..=9 {
        open(&mut c, "alice").login(&mut c, "wrong").unwrap_err();
    }
    // The 10th wrong guess destroys the record...
    assert_eq!(
        open(&mut c, "alice").login(&mut c, "wrong").unwrap_err(),
        VaultError::Destroyed
    );
    assert_eq!(status(&mut c, "alice"), RecordState::Destroyed);
    // ...for good: the right password no longer helps.
    assert_eq!(
        open(&mut c, "alice").login(&mut c, "right").unwrap_err(),
        VaultError::Destroyed
    );
}

#[test]
fn the_last_guess_can_still_succeed() {
    let mut c = core();
    open(&mut c, "u").register(&mut c, "pw", 3).unwrap();
    for _ in 0..2 {
        open(&mut c, "u").login(&mut c, "bad").unwrap_err();
    }
    open(&mut c, "u").login(&mut c, "pw").unwrap();
    assert_eq!(
        status(&mut c, "u"),
        RecordState::Active {
            attempts: 0,
            guess_limit: 3
        }
    );
}

#[test]
fn a_dropped_connection_after_credential_request_still_counts() {
    let mut c = core();
    open(&mut c, "bob").register(&mut c, "pw", 10).unwrap();
    for i in 1..=10u32 {
        // The client (or an attacker) sends CredentialRequest and vanishes.
        let mut s = open(&mut c, "bob");
        s.login_start(&mut c, "guess").unwrap();
        drop(s);
        assert_eq!(
            status(&mut c, "bob"),
            RecordState::Active {
                attempts: i,
                guess_limit: 10
            }
        );
    }
    // The limit is reached: the next attempt destroys instead of answering.
    let e = open(&mut c, "bob").login(&mut c, "pw").unwrap_err();
    assert_eq!(e, VaultError::Destroyed);
    assert_eq!(status(&mut c, "bob"), RecordState::Destroyed);
}

#[test]
fn retried_registration_cannot_reset_a_live_counter() {
    let mut c = core();
    let secret = open(&mut c, "carol").register(&mut c, "pw", 10).unwrap();
    for _ in 0..5 {
        open(&mut c, "carol").login(&mut c, "bad").unwrap_err();
    }
    // A fresh registration over the live record is refused without login.
    let e = open(&mut c, "carol")
        .register(&mut c, "attacker", 10)
        .unwrap_err();
    assert_eq!(e, VaultError::RecordExists);
    // A replayed confirmation (the response was dropped) is idempotent.
    let r = open(&mut c, "carol").call(
        &mut c,
        &VaultRequest::RegisterConfirm {
            confirm_secret: secret,
        },
    );
    assert_eq!(r, VaultResponse::RegisterConfirmed);
    // A guessed confirmation secret does nothing.
    let r = open(&mut c, "carol").call(
        &mut c,
        &VaultRequest::RegisterConfirm {
            confirm_secret: [0; 32],
        },
    );
    assert_eq!(r, VaultResponse::Error(VaultError::NoPendingRegistration));
    assert_eq!(
        status(&mut c, "carol"),
        RecordState::Active {
            attempts: 5,
            guess_limit: 10
        }
    );
}

#[test]
fn pending_registration_is_not_guessable() {
    let mut c = core();
    let mut s = open(&mut c, "dave");
    let start = ClientRegistration::<OpaqueSuite>::start(&mut OsRng, b"pw").unwrap();
    s.call(
        &mut c,
        &VaultRequest::RegisterStart {
            registration_request: start.message.serialize().to_vec(),
        },
    );
    assert_eq!(status(&mut c, "dave"), RecordState::Absent);
    assert_eq!(
        open(&mut c, "dave").login(&mut c, "pw").unwrap_err(),
        VaultError::NoRecord
    );
}

#[test]
fn password_change_needs_login_and_replaces_the_credential() {
    let mut c = core();
    open(&mut c, "erin").register(&mut c, "old", 10).unwrap();
    let mut s = open(&mut c, "erin");
    s.login(&mut c, "old").unwrap();
    s.register(&mut c, "new", 10).unwrap();
    assert_eq!(
        open(&mut c, "erin").login(&mut c, "old").unwrap_err(),
        VaultError::WrongPassword {
            guesses_remaining: 9
        }
    );
    open(&mut c, "erin").login(&mut c, "new").unwrap();
}

#[test]
fn delete_needs_login() {
    let mut c = core();
    open(&mut c, "fay").register(&mut c, "pw", 10).unwrap();
    let r = open(&mut c, "fay").call(&mut c, &VaultRequest::Delete);
    assert_eq!(r, VaultResponse::Error(VaultError::NotAuthenticated));
    let mut s = open(&mut c, "fay");
    s.login(&mut c, "pw").unwrap();
    assert_eq!(
        s.call(&mut c, &VaultRequest::Delete),
        VaultResponse::Deleted
    );
    assert_eq!(status(&mut c, "fay"), RecordState::Absent);
    assert_eq!(c.live_records(), 0);
    let fay = bkv_wire::record_id("fay");
    assert_eq!(c.records().record(&fay).unwrap(), None);
}

#[test]
fn bad_input_is_answered_and_changes_nothing() {
    let mut c = core();
    open(&mut c, "gus").register(&mut c, "pw", 10).unwrap();
    // The fleet part and the records' root: any bucket resealed would change the root.
    let before = (c.state().clone(), c.records().root());
    // Malformed OPAQUE messages inside a valid session.
    let mut s = open(&mut c, "gus");
    for req in [
        VaultRequest::LoginStart {
            credential_request: vec![1, 2, 3],
        },
        VaultRequest::LoginFinish {
            credential_finalization: vec![0; 10],
        },
        VaultRequest::RegisterStart {
            registration_request: vec![],
        },
        VaultRequest::RegisterFinish {
            upload: vec![9; 50],
            wrapped_key: vec![1],
            guess_limit: 10,
            confirm_hash: [0; 32],
        },
        VaultRequest::Delete,
    ] {
        assert!(matches!(s.call(&mut c, &req), VaultResponse::Error(_)));
    }
    // Garbage plaintext inside the session.
    let mut ct = vec![0u8; 200];
    let n = s.t.write_message(&[0xff; 40], &mut ct).unwrap();
    let resp = drive(&mut c, &s.sid, "gus", &ct[..n]).unwrap();
    let mut out = vec![0u8; 1024];
    let n = s.t.read_message(&resp, &mut out).unwrap();
    assert!(matches!(
        bkv_wire::decode::<VaultResponse>(&out[..n], 1024).unwrap(),
        VaultResponse::Error(VaultError::BadRequest(_))
    ));
    // A replay of the last request gets the same reply bytes again (what a
    // relay resending after a broken link needs); an older one fails to
    // decrypt and changes nothing, the session goes on.
    let mut old = vec![0u8; 200];
    let n_old =
        s.t.write_message(&bkv_wire::encode(&VaultRequest::Status), &mut old)
            .unwrap();
    let first = drive(&mut c, &s.sid, "gus", &old[..n_old]).unwrap();
    let mut ct = vec![0u8; 200];
    let n =
        s.t.write_message(&bkv_wire::encode(&VaultRequest::Status), &mut ct)
            .unwrap();
    let last = drive(&mut c, &s.sid, "gus", &ct[..n]).unwrap();
    assert_eq!(drive(&mut c, &s.sid, "gus", &ct[..n]).unwrap(), last);
    assert!(matches!(
        drive(&mut c, &s.sid, "gus", &old[..n_old]),
        Err(NodeError::BadRequest(_))
    ));
    let mut out = vec![0u8; 1024];
    s.t.read_message(&first, &mut out).unwrap();
    s.t.read_message(&last, &mut out).unwrap();
    assert!(matches!(
        s.call(&mut c, &VaultRequest::Status),
        VaultResponse::Status { .. }
    ));
    assert!(matches!(
        drive(&mut c, &s.sid, "gus", &ct[..n]),
        Err(NodeError::BadRequest(_))
    ));
    // Garbage handshakes, user mismatch, unknown sessions.
    assert_eq!(
        c.open_session("gus", &[1, 2, 3]).unwrap_err(),
        NodeError::Handshake
    );
    assert!(c.open_session("bad/user", &[1, 2, 3]).is_err());
    let mut s2 = open(&mut c, "gus");
    let mut ct = vec![0u8; 200];
    let n =
        s2.t.write_message(&bkv_wire::encode(&VaultRequest::Status), &mut ct)
            .unwrap();
    assert_eq!(
        drive(&mut c, &s2.sid, "mallory", &ct[..n]),
        Err(NodeError::WrongUser)
    );
    assert_eq!(
        drive(&mut c, &[0; 16], "gus", &ct[..n]),
        Err(NodeError::UnknownSession)
    );
    assert_eq!((c.state().clone(), c.records().root()), before);
}

#[test]
fn hello_must_name_the_authenticated_user() {
    let mut c = core();
    let key = c.noise_public_key();
    let mut hs = snow::Builder::new(NOISE_PATTERN.parse().unwrap())
        .remote_public_key(&key)
        .unwrap()
        .prologue(NOISE_PROLOGUE)
        .unwrap()
        .build_initiator()
        .unwrap();
    let hello = bkv_wire::encode(&SessionHello {
        version: 1,
        user_id: "victim".into(),
    });
    let mut m1 = vec![0u8; 1024];
    let n = hs.write_message(&hello, &mut m1).unwrap();
    assert_eq!(
        c.open_session("attacker", &m1[..n]).unwrap_err(),
        NodeError::WrongUser
    );
}

#[test]
fn wrong_pinned_fleet_key_is_rejected() {
    let mut c = core();
    let other = FleetSecrets::generate(&MemoryPlatform::new([1; 32]), FleetTrust::for_tests())
        .unwrap()
        .noise_public_key();
    assert_eq!(
        open_with_key(&mut c, "hal", &other).err(),
        Some(NodeError::Handshake)
    );
    assert_eq!(c.session_count(), 0);
}

#[test]
fn a_resent_request_gets_the_same_reply_and_is_counted_once() {
    let mut c = core();
    open(&mut c, "kim").register(&mut c, "pw", 5).unwrap();
    let mut s = open(&mut c, "kim");
    // It reads the record, so the host first makes the replica fresh; a
    // resend while that read barrier runs (or after it failed) asks again.
    let (ct, m) = s.login_start_delivered_twice(&mut c, b"wrong");
    // The commit is under way when the link breaks and the relay resends:
    // "in progress", nothing processed twice.
    assert_eq!(
        c.session_message(&s.sid, "kim", &ct).err(),
        Some(NodeError::InProgress)
    );
    c.apply(&m).unwrap();
    let Ok(Step::Reply(first)) = c.resume(&s.sid) else {
        panic!("expected a reply")
    };
    // Resent after the answer was lost: the same bytes again, not a new count.
    let again = drive(&mut c, &s.sid, "kim", &ct).unwrap();
    assert_eq!(again, first);
    assert_eq!(attempts(&mut c, "kim"), 1);
    assert!(matches!(
        s.open_reply(&first),
        VaultResponse::LoginStarted { .. }
    ));
    // A different request while one is committing is still refused.
    let mut t = open(&mut c, "kim");
    let start = ClientLogin::<OpaqueSuite>::start(&mut OsRng, b"wrong").unwrap();
    let ct1 = t.seal(&VaultRequest::LoginStart {
        credential_request: start.message.serialize().to_vec(),
    });
    let ct2 = t.seal(&VaultRequest::Status);
    assert!(matches!(
        c.session_message(&t.sid, "kim", &ct1),
        Ok(Step::ReadFresh)
    ));
    assert!(matches!(
        c.session_message(&t.sid, "kim", &ct2),
        Err(NodeError::BadRequest(_))
    ));
}

#[test]
fn only_the_sessions_own_key_ends_it() {
    let mut c = core();
    let mut alice = open(&mut c, "alice");
    let mut mallory = open(&mut c, "mallory");
    alice.touch(&mut c);
    // Another user's request for alice's session: refused, session stays.
    let ct = mallory.seal(&VaultRequest::Close);
    assert_eq!(
        drive(&mut c, &alice.sid, "mallory", &ct).err(),
        Some(NodeError::WrongUser)
    );
    // Garbage under alice's name cannot decrypt: refused, session stays.
    assert!(drive(&mut c, &alice.sid, "alice", &[7u8; 40]).is_err());
    assert_eq!(c.session_count(), 2);
    assert!(c.session_logged_in(&alice.sid, "alice").is_ok());
    assert_eq!(
        c.session_logged_in(&alice.sid, "mallory").err(),
        Some(NodeError::WrongUser)
    );
    // Alice's own Close ends it.
    assert_eq!(
        alice.call(&mut c, &VaultRequest::Close),
        VaultResponse::Closed
    );
    assert_eq!(c.session_count(), 1);
    let ct = alice.seal(&VaultRequest::Status);
    assert_eq!(
        drive(&mut c, &alice.sid, "alice", &ct).err(),
        Some(NodeError::UnknownSession)
    );
}

#[test]
fn login_check_is_true_only_after_a_password_login() {
    let mut c = core();
    open(&mut c, "lee").register(&mut c, "pw", 5).unwrap();
    let mut s = open(&mut c, "lee");
    assert_eq!(c.session_logged_in(&s.sid, "lee"), Ok(false));
    assert!(s.login(&mut c, "nope").is_err());
    assert_eq!(c.session_logged_in(&s.sid, "lee"), Ok(false));
    s.login(&mut c, "pw").unwrap();
    assert_eq!(c.session_logged_in(&s.sid, "lee"), Ok(true));
}

#[test]
fn session_table_is_bounded_and_expires() {
    let p = Arc::new(MemoryPlatform::new([9; 32]));
    let mut c = core_on(p.clone());
    c.set_session_limits(3, 60);
    let mut used = Vec::new();
    for u in ["ivy", "jo", "kay"] {
        let mut s = open(&mut c, u);
        s.touch(&mut c);
        used.push(s);
    }
    // Full: a newcomer takes the place of a least recently used session.
    open(&mut c, "lou");
    assert_eq!(c.session_count(), 3);
    p.advance_clock(61);
    open(&mut c, "ivy");
    assert_eq!(c.session_count(), 1);
}

#[test]
fn one_user_cannot_hold_more_than_their_share() {
    let mut c = core();
    let mut first = open(&mut c, "flood");
    first.touch(&mut c);
    for _ in 0..50 {
        open(&mut c, "flood");
    }
    assert_eq!(c.session_count(), bkv_hsm_core::MAX_SESSIONS_PER_USER);
    // Unused sessions went first: the one in use is still there.
    first.touch(&mut c);
    let mut other = open(&mut c, "other");
    other.touch(&mut c);
}

#[test]
fn many_accounts_cannot_lock_out_a_user() {
    let p = Arc::new(MemoryPlatform::new([9; 32]));
    let mut c = core_on(p.clone());
    c.set_session_limits(20, 300);
    open(&mut c, "victim").register(&mut c, "pw", 5).unwrap();
    let mut victim = open(&mut c, "victim");
    victim.touch(&mut c);
    // 500 throwaway accounts open sessions and never use them.
    for i in 0..500 {
        open(&mut c, &format!("throwaway{i}"));
    }
    assert!(c.session_count() <= 20);
    // The victim's session in use survived, and a new one opens and works.
    victim.touch(&mut c);
    let mut again = open(&mut c, "victim");
    again.login(&mut c, "pw").unwrap();
    // Unused sessions go fast; a used one stays for the idle time.
    p.advance_clock(bkv_hsm_core::UNUSED_SESSION_SECS + 1);
    open(&mut c, "victim");
    // Only the victim's sessions remain: registration, two in use, the new one.
    assert_eq!(c.session_count(), 4);
    victim.touch(&mut c);
}

#[test]
fn sealed_secrets_roundtrip_and_reject_other_platforms() {
    let a = MemoryPlatform::new([1; 32]);
    let s = FleetSecrets::generate(&a, FleetTrust::for_tests()).unwrap();
    let sealed = s.seal(&a).unwrap();
    let back = FleetSecrets::unseal(&a, &sealed).unwrap();
    assert_eq!(back.noise_public_key(), s.noise_public_key());
    assert_eq!(back.fleet_id(), s.fleet_id());
    assert!(FleetSecrets::unseal(&MemoryPlatform::new([2; 32]), &sealed).is_err());
    // Sealing goes through the platform: the sealed bytes are not the key.
    assert!(a.describe().token.contains("memory"));
}

/// Two replicas of one fleet and the committed log between them, driven as
/// the fleet host drives a core: a commit is applied on the proposing
/// replica together with everything before it in the log, and a request
/// that asks for a fresh read is continued only after the replica applied
/// the whole log. Otherwise a replica lags.
struct Replicas {
    cores: [Core; 2],
    log: Vec<bkv_hsm_core::LogEntry>,
    applied: [usize; 2],
    /// Every step each request took, in order (to check which asked for a
    /// fresh read).
    steps: Vec<&'static str>,
}

impl Replicas {
    fn new() -> Self {
        let p = Arc::new(MemoryPlatform::new([5; 32]));
        let secrets = FleetSecrets::generate(&*p, FleetTrust::for_tests()).unwrap();
        let copy = FleetSecrets::unseal(&*p, &secrets.seal(&*p).unwrap()).unwrap();
        Replicas {
            cores: [
                Core::new(p.clone(), secrets, &NodeIdentity::generate(&*p).unwrap()).unwrap(),
                Core::new(p.clone(), copy, &NodeIdentity::generate(&*p).unwrap()).unwrap(),
            ],
            log: Vec::new(),
            applied: [0, 0],
            steps: Vec::new(),
        }
    }

    /// Applies the log on replica `i` up to and including entry `upto`,
    /// returning the last entry's outcome.
    fn catch_up(&mut self, i: usize, upto: usize) -> Option<bkv_hsm_core::Outcome> {
        let mut last = None;
        while self.applied[i] < upto {
            last = Some(self.cores[i].apply(&self.log[self.applied[i]]).unwrap());
            self.applied[i] += 1;
        }
        last
    }

    fn call(&mut self, i: usize, c: &mut Client, req: &VaultRequest) -> VaultResponse {
        let plain = bkv_wire::encode(req);
        let mut ct = vec![0u8; plain.len() + 64];
        let n = c.t.write_message(&plain, &mut ct).unwrap();
        let mut step = self.cores[i].session_message(&c.sid, &c.user, &ct[..n]);
        let reply = loop {
            match step.unwrap() {
                Step::Reply(r) => break r,
                Step::Commit(m) => {
                    self.steps.push("commit");
                    self.log.push(m);
                    self.catch_up(i, self.log.len());
                    step = self.cores[i].resume(&c.sid);
                }
                Step::ReadFresh => {
                    self.steps.push("fresh");
                    self.catch_up(i, self.log.len());
                    step = self.cores[i].resume_fresh(&c.sid, &ct[..n]);
                }
            }
        };
        let mut out = vec![0u8; 65535];
        let n = c.t.read_message(&reply, &mut out).unwrap();
        bkv_wire::decode(&out[..n], 1 << 16).unwrap()
    }

    fn open(&mut self, i: usize, user: &str) -> Client {
        let key = self.cores[i].noise_public_key();
        open_with_key(&mut self.cores[i], user, &key).unwrap()
    }

    fn register(&mut self, i: usize, c: &mut Client, pw: &str) -> VaultResponse {
        let start = ClientRegistration::<OpaqueSuite>::start(&mut OsRng, pw.as_bytes()).unwrap();
        let VaultResponse::RegisterStarted {
            registration_response,
        } = self.call(
            i,
            c,
            &VaultRequest::RegisterStart {
                registration_request: start.message.serialize().to_vec(),
            },
        )
        else {
            panic!("registration refused")
        };
        let fin = start
            .state
            .finish(
                &mut OsRng,
                pw.as_bytes(),
                RegistrationResponse::deserialize(&registration_response).unwrap(),
                ClientRegistrationFinishParameters::new(
                    Identifiers::default(),
                    Some(&Argon2::default()),
                ),
            )
            .unwrap();
        let secret = [pw.len() as u8; 32];
        let stored = self.call(
            i,
            c,
            &VaultRequest::RegisterFinish {
                upload: fin.message.serialize().to_vec(),
                wrapped_key: pw.as_bytes().to_vec(),
                guess_limit: 5,
                confirm_hash: Sha256::digest(secret).into(),
            },
        );
        assert_eq!(stored, VaultResponse::RegisterStored);
        self.call(
            i,
            c,
            &VaultRequest::RegisterConfirm {
                confirm_secret: secret,
            },
        )
    }

    /// LoginStart; the client's state for the finish.
    fn login_start(&mut self, i: usize, c: &mut Client, pw: &str) -> ClientLogin<OpaqueSuite> {
        let start = ClientLogin::<OpaqueSuite>::start(&mut OsRng, pw.as_bytes()).unwrap();
        let r = self.call(
            i,
            c,
            &VaultRequest::LoginStart {
                credential_request: start.message.serialize().to_vec(),
            },
        );
        let VaultResponse::LoginStarted {
            credential_response,
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        c.pending_response = credential_response;
        start.state
    }

    fn login_finish(
        &mut self,
        i: usize,
        c: &mut Client,
        pw: &str,
        state: ClientLogin<OpaqueSuite>,
    ) -> VaultResponse {
        let fin = state
            .finish(
                &mut OsRng,
                pw.as_bytes(),
                CredentialResponse::deserialize(&c.pending_response).unwrap(),
                ClientLoginFinishParameters::new(
                    Some(OPAQUE_CONTEXT),
                    Identifiers::default(),
                    Some(&Argon2::default()),
                ),
            )
            .map(|f| f.message.serialize().to_vec())
            .unwrap_or_default();
        self.call(
            i,
            c,
            &VaultRequest::LoginFinish {
                credential_finalization: fin,
            },
        )
    }
}

#[test]
fn only_requests_that_read_state_wait_for_a_fresh_replica() {
    let mut r = Replicas::new();
    let mut c = r.open(0, "ana");
    assert_eq!(
        r.register(0, &mut c, "pw"),
        VaultResponse::RegisterConfirmed
    );
    // RegisterStart reads whether a record is live and commits its count before the OPRF is
    // evaluated; finish and confirm only commit (their apply re-checks the record).
    assert_eq!(r.steps, ["fresh", "commit", "commit", "commit"]);
    r.steps.clear();
    let mut s = r.open(1, "ana");
    let state = r.login_start(1, &mut s, "pw");
    assert_eq!(r.steps, ["fresh", "commit"]);
    r.steps.clear();
    let ok = r.login_finish(1, &mut s, "pw", state);
    assert!(matches!(ok, VaultResponse::LoginOk { .. }), "{ok:?}");
    // The finish reads only its session and its own commit's outcome.
    assert_eq!(r.steps, ["commit"]);
    r.steps.clear();
    assert!(matches!(
        r.call(1, &mut s, &VaultRequest::Status),
        VaultResponse::Status { .. }
    ));
    assert_eq!(r.steps, ["fresh"]);
    r.steps.clear();
    assert_eq!(
        r.call(1, &mut s, &VaultRequest::Delete),
        VaultResponse::Deleted
    );
    assert_eq!(r.steps, ["fresh", "commit"]);
    r.steps.clear();
    assert_eq!(
        r.call(1, &mut s, &VaultRequest::Close),
        VaultResponse::Closed
    );
    assert!(r.steps.is_empty());
}

#[test]
fn a_lagging_replica_answers_from_the_log_not_its_stale_state() {
    let mut r = Replicas::new();
    let mut c = r.open(0, "bo");
    assert_eq!(
        r.register(0, &mut c, "old"),
        VaultResponse::RegisterConfirmed
    );
    // Replica 1 has applied nothing: the record exists only in the log.
    assert_eq!(r.applied[1], 0);
    let mut s = r.open(1, "bo");
    assert!(matches!(
        r.call(1, &mut s, &VaultRequest::Status),
        VaultResponse::Status {
            state: RecordState::Active { attempts: 0, .. }
        }
    ));
    // A login begun on replica 1 ...
    let state = r.login_start(1, &mut s, "old");
    // ... while the user, on replica 0, logs in and replaces the record:
    // a new generation replica 1 has not applied when the finish arrives.
    let mut u = r.open(0, "bo");
    let st = r.login_start(0, &mut u, "old");
    assert!(matches!(
        r.login_finish(0, &mut u, "old", st),
        VaultResponse::LoginOk { .. }
    ));
    assert_eq!(
        r.register(0, &mut u, "new"),
        VaultResponse::RegisterConfirmed
    );
    assert!(r.applied[1] < r.log.len());
    // The finish does not wait for a fresh read, yet it cannot release the
    // replaced record's key: its reset names the old generation and is
    // applied after the replacement, so it is refused.
    r.steps.clear();
    let late = r.login_finish(1, &mut s, "old", state);
    assert_eq!(r.steps, ["commit"]);
    assert_eq!(late, VaultResponse::Error(VaultError::Conflict));
    // And the new password works there, counted from zero.
    let mut v = r.open(1, "bo");
    let st = r.login_start(1, &mut v, "new");
    assert_eq!(
        r.login_finish(1, &mut v, "new", st),
        VaultResponse::LoginOk {
            wrapped_key: b"new".to_vec()
        }
    );
}

/// Two deliveries of one request (a relay resent it on a fresh link) run side by side, both
/// waiting for a fresh read: the first goes on, the second gets "in progress" and then the
/// first's reply, and a late one never takes over the session's next request.
#[test]
fn two_deliveries_of_a_request_waiting_for_a_fresh_read_count_once() {
    let mut c = core();
    open(&mut c, "lu").register(&mut c, "pw", 5).unwrap();
    let mut s = open(&mut c, "lu");
    let (ct, m) = s.login_start_delivered_twice(&mut c, b"pw");
    assert_eq!(
        c.resume_fresh(&s.sid, &ct).err(),
        Some(NodeError::InProgress)
    );
    c.apply(&m).unwrap();
    let Ok(Step::Reply(first)) = c.resume(&s.sid) else {
        panic!("expected a reply")
    };
    let Ok(Step::Reply(again)) = c.resume_fresh(&s.sid, &ct) else {
        panic!("expected the same reply")
    };
    assert_eq!(again, first);
    assert_eq!(attempts(&mut c, "lu"), 1);
    assert!(matches!(
        s.open_reply(&first),
        VaultResponse::LoginStarted { .. }
    ));
    // The session's next request waits for its own fresh read; a late second delivery of the
    // first gets the first's reply and leaves the next one alone.
    let next = s.seal(&VaultRequest::Status);
    assert!(matches!(
        c.session_message(&s.sid, "lu", &next),
        Ok(Step::ReadFresh)
    ));
    let Ok(Step::Reply(late)) = c.resume_fresh(&s.sid, &ct) else {
        panic!("expected the first reply")
    };
    assert_eq!(late, first);
    let Ok(Step::Reply(status)) = c.resume_fresh(&s.sid, &next) else {
        panic!("expected the status")
    };
    assert!(matches!(
        s.open_reply(&status),
        VaultResponse::Status {
            state: RecordState::Active { attempts: 1, .. }
        }
    ));
}

/// A guess counted on one generation of a record is never tried against the record that
/// replaced it between the count and the answer (that guess would go uncounted).
#[test]
fn a_guess_counted_before_a_password_change_is_not_tried_on_the_new_record() {
    let mut c = core();
    open(&mut c, "mo").register(&mut c, "old", 5).unwrap();
    let mut s = open(&mut c, "mo");
    let start = ClientLogin::<OpaqueSuite>::start(&mut OsRng, b"new").unwrap();
    let ct = s.seal(&VaultRequest::LoginStart {
        credential_request: start.message.serialize().to_vec(),
    });
    assert!(matches!(
        c.session_message(&s.sid, "mo", &ct),
        Ok(Step::ReadFresh)
    ));
    let Ok(Step::Commit(m)) = c.resume_fresh(&s.sid, &ct) else {
        panic!("expected a commit")
    };
    c.apply(&m).unwrap();
    // The owner changes the password before this session's answer goes out.
    let mut owner = open(&mut c, "mo");
    owner.login(&mut c, "old").unwrap();
    owner.register(&mut c, "new", 5).unwrap();
    let Ok(Step::Reply(r)) = c.resume(&s.sid) else {
        panic!("expected a reply")
    };
    assert_eq!(s.open_reply(&r), VaultResponse::Error(VaultError::Conflict));
    // The new record's count is untouched and its password works.
    assert_eq!(attempts(&mut c, "mo"), 0);
    open(&mut c, "mo").login(&mut c, "new").unwrap();
}

/// The agent's fast path (BENCHMARKS.md, "Issue 28, item 4"): it runs the read barrier before a
/// session's first request (`session_message_at(.., fresh: true)`, no `ReadFresh` asked) and takes
/// the replies a batch decided from `release_ready` instead of one `resume` each. The guess is
/// counted before the answer all the same, each reply leaves once, and the counter covers it.
#[test]
fn replies_released_with_their_batch_count_before_answering_and_leave_once() {
    let p = Arc::new(MemoryPlatform::new([9; 32]));
    let mut c = core_on(p.clone());
    open(&mut c, "alice").register(&mut c, "right", 10).unwrap();
    let mut s = open(&mut c, "alice");
    let start = ClientLogin::<OpaqueSuite>::start(&mut OsRng, b"right").unwrap();
    let ct = s.seal(&VaultRequest::LoginStart {
        credential_request: start.message.serialize().to_vec(),
    });
    let Ok(Step::Commit(count)) = c.session_message_at(&s.sid, "alice", &ct, true) else {
        panic!("a fresh first request goes straight to its count")
    };
    assert!(c.release_ready().is_empty(), "nothing decided yet");
    c.apply(&count).unwrap();
    let released = c.release_ready();
    assert_eq!(released.len(), 1);
    let (sid, seq, reply) = &released[0];
    assert_eq!(*sid, s.sid);
    assert_eq!(*seq, count.seq, "named by the entry that decided it");
    let VaultResponse::LoginStarted {
        credential_response,
        ..
    } = s.open_reply(reply.as_ref().unwrap())
    else {
        panic!("expected the credential response")
    };
    // The counter covers every entry the reply rests on.
    let applied = c.state().entries;
    assert!(
        p.counter_read(bkv_hsm_core::Counter::CORE_FOR_TESTS)
            .unwrap()
            >= applied
    );
    // Released once: neither `resume` nor a second release hands it out again.
    assert!(matches!(c.resume(&s.sid), Err(NodeError::BadRequest(_))));
    assert!(c.release_ready().is_empty());
    assert_eq!(attempts(&mut c, "alice"), 1);
    // The finish, released the same way: the right password resets the count.
    let fin = s.finish_message("right", &credential_response, start.state);
    let Ok(Step::Commit(reset)) = c.session_message_at(&s.sid, "alice", &fin, false) else {
        panic!("a successful finish commits the reset")
    };
    c.apply(&reset).unwrap();
    let released = c.release_ready();
    assert!(matches!(
        s.open_reply(released[0].2.as_ref().unwrap()),
        VaultResponse::LoginOk { .. }
    ));
    assert_eq!(attempts(&mut c, "alice"), 0);
    // A host that resumed the old way first finds nothing left to release.
    let mut t = open(&mut c, "alice");
    let ct = t.seal(&VaultRequest::LoginStart {
        credential_request: ClientLogin::<OpaqueSuite>::start(&mut OsRng, b"x")
            .unwrap()
            .message
            .serialize()
            .to_vec(),
    });
    let Ok(Step::Commit(e)) = c.session_message_at(&t.sid, "alice", &ct, true) else {
        panic!("expected a commit")
    };
    c.apply(&e).unwrap();
    assert!(matches!(c.resume(&t.sid), Ok(Step::Reply(_))));
    assert!(c.release_ready().is_empty());
}

/// A count that finds the limit reached (two logins raced for the last guess) does not answer:
/// it commits the record's destruction, an entry the host must submit in its turn. So the batch
/// does not release it; the host's `resume` gets the entry, and the destruction's batch answers.
#[test]
fn a_count_that_destroys_is_left_to_resume_not_released_with_its_batch() {
    let mut c = core();
    open(&mut c, "bob").register(&mut c, "right", 2).unwrap();
    open(&mut c, "bob").login(&mut c, "wrong").unwrap_err();
    // One guess left; two sessions count at once, both before either count applied.
    let (mut s1, mut s2) = (open(&mut c, "bob"), open(&mut c, "bob"));
    let mut start = |s: &mut Client| {
        let ct = s.seal(&VaultRequest::LoginStart {
            credential_request: ClientLogin::<OpaqueSuite>::start(&mut OsRng, b"wrong")
                .unwrap()
                .message
                .serialize()
                .to_vec(),
        });
        let Ok(Step::Commit(e)) = c.session_message_at(&s.sid, "bob", &ct, true) else {
            panic!("expected a count")
        };
        e
    };
    let (e1, e2) = (start(&mut s1), start(&mut s2));
    c.apply(&e1).unwrap();
    c.apply(&e2).unwrap();
    let released = c.release_ready();
    assert_eq!(released.len(), 1, "only the count that fit is released");
    assert_eq!(released[0].0, s1.sid);
    let Ok(Step::Commit(destroy)) = c.resume(&s2.sid) else {
        panic!("the exhausted count commits the destruction")
    };
    c.apply(&destroy).unwrap();
    // The destruction's batch answers the session, named by that entry.
    let released = c.release_ready();
    assert_eq!(released.len(), 1);
    assert_eq!((released[0].0, released[0].1), (s2.sid, destroy.seq));
    let r = released[0].2.as_ref().unwrap();
    assert_eq!(err(s2.open_reply(r)), VaultError::Destroyed);
    assert_eq!(status(&mut c, "bob"), RecordState::Destroyed);
}
