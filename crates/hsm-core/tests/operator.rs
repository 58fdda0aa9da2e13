//! Attacks with the operator's powers (issue 27) against the I/O-free core: the attacker holds
//! the user's token (so it can open sessions as the user) and runs the host (so it controls the
//! platform's clock and restarts the core at will). Each test shows a way to a guess the core
//! must refuse.

mod support;
use support::*;

use bkv_hsm_core::{Core, FleetSecrets, FleetTrust, MemoryPlatform, Step};
use bkv_testkit::oprf_oracle;
use bkv_wire::node::NodeError;
use bkv_wire::vault::{RecordState, VaultError, VaultRequest, VaultResponse};
use bkv_wire::{OpaqueSuite, OPAQUE_CONTEXT};
use opaque_ke::{ClientLogin, ClientLoginFinishParameters, CredentialResponse, Identifiers};
use rand::rngs::OsRng;
use std::sync::Arc;

/// The attacker's dictionary: the user's password is one of these.
fn dictionary() -> Vec<String> {
    (0..50).map(|i| format!("candidate-{i:02}")).collect()
}

const DAY: u64 = 86_400;

/// One `RegisterStart` of a raw blinded element in a fresh session of `user`.
fn register_start(core: &mut Core, user: &str, request: &[u8]) -> VaultResponse {
    open(core, user).call(
        core,
        &VaultRequest::RegisterStart {
            registration_request: request.to_vec(),
        },
    )
}

/// Evaluates every word of the dictionary through `RegisterStart` on `core` (the operator moves
/// the clock a day on whenever the core refuses for the day's budget), then lets `user` register
/// `password` with `register`, spends one counted `LoginStart` and tests every candidate offline.
/// Returns the candidates that unmask the login's response.
fn dictionary_attack(
    core: &mut Core,
    platform: &MemoryPlatform,
    user: &str,
    password: &str,
    register: impl FnOnce(&mut Core),
) -> Vec<String> {
    let mut evaluations = Vec::new();
    let mut server_key = None;
    for word in dictionary() {
        let blinded = oprf_oracle::blind(word.as_bytes());
        let response = loop {
            match register_start(core, user, &blinded.request) {
                VaultResponse::RegisterStarted {
                    registration_response,
                } => break registration_response,
                VaultResponse::Error(VaultError::TooManyRegistrations) => {
                    platform.advance_clock(DAY)
                }
                r => panic!("{r:?}"),
            }
        };
        server_key = oprf_oracle::server_public_key(&response);
        evaluations.push((word, blinded.finalize(&response).expect("an evaluation")));
    }
    let server_key = server_key.expect("the fleet's OPAQUE key");
    register(core);
    // The one counted guess, blinding the right word: its own evaluation shows the offline
    // test works (it unmasks), so a clean result below is the core's doing.
    let probe = oprf_oracle::blind(password.as_bytes());
    let r = open(core, user).call(
        core,
        &VaultRequest::LoginStart {
            credential_request: oprf_oracle::credential_request(&probe),
        },
    );
    let VaultResponse::LoginStarted {
        credential_response,
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    let own = probe.finalize(&credential_response).expect("an evaluation");
    assert!(
        oprf_oracle::unmasks(&own, &credential_response, &server_key),
        "the offline test does not recognise the login's own evaluation"
    );
    evaluations
        .into_iter()
        .filter(|(_, output)| oprf_oracle::unmasks(output, &credential_response, &server_key))
        .map(|(word, _)| word)
        .collect()
}

/// Issue 27, item 1: an OPRF evaluation outside a counted login says nothing about the password
/// registered later, so a dictionary evaluated through `RegisterStart` before the user registers
/// cannot be tested offline against one counted `LoginStart`.
#[test]
fn a_dictionary_evaluated_before_registration_finds_nothing() {
    let p = Arc::new(MemoryPlatform::new([9; 32]));
    let mut c = core_on(p.clone());
    let password = dictionary()[17].clone();
    let found = dictionary_attack(&mut c, &p, "victim", &password, |c| {
        open(c, "victim").register(c, &password, 10).unwrap();
    });
    assert!(
        found.is_empty(),
        "one counted guess tested the whole dictionary offline and found {found:?}"
    );
    assert_eq!(
        status(&mut c, "victim"),
        RecordState::Active {
            attempts: 1,
            guess_limit: 10
        }
    );
}

/// The same across a fleet rotation: the dictionary is evaluated on the new fleet while the
/// user's record still lives on the old one; the user then moves (logs in on the old fleet,
/// registers on the new one).
#[test]
fn a_dictionary_evaluated_on_the_next_fleet_before_the_move_finds_nothing() {
    let old = &mut core();
    let password = dictionary()[3].clone();
    open(old, "mover").register(old, &password, 10).unwrap();
    let p = Arc::new(MemoryPlatform::new([8; 32]));
    let mut new = core_on(p.clone());
    let found = dictionary_attack(&mut new, &p, "mover", &password, |new| {
        let mut s = open(old, "mover");
        s.login(old, &password).unwrap();
        open(new, "mover").register(new, &password, 10).unwrap();
    });
    assert!(found.is_empty(), "found {found:?}");
}

/// `RegisterStart`s are budgeted: a few per session and a bounded number per record id per day,
/// committed with the record so that restarting the core does not reset them.
#[test]
fn register_starts_are_budgeted_and_a_restart_does_not_reset_the_budget() {
    let p = Arc::new(MemoryPlatform::new([9; 32]));
    let secrets = FleetSecrets::generate(&*p, FleetTrust::for_tests()).unwrap();
    let sealed = secrets.seal(&*p).unwrap();
    let secrets_copy = |sealed: &[u8]| FleetSecrets::unseal(&*p, sealed).unwrap();
    let identity = bkv_hsm_core::NodeIdentity::generate(&*p).unwrap();
    let mut c = Core::new(p.clone(), secrets, &identity).unwrap();
    let request = oprf_oracle::blind(b"x").request;
    let start = |c: &mut Core, s: &mut Client| {
        s.call(
            c,
            &VaultRequest::RegisterStart {
                registration_request: request.clone(),
            },
        )
    };
    let is_started = |r: &VaultResponse| matches!(r, VaultResponse::RegisterStarted { .. });
    // Per session.
    let mut s = open(&mut c, "budget");
    for _ in 0..bkv_hsm_core::MAX_REGISTER_STARTS_PER_SESSION {
        assert!(is_started(&start(&mut c, &mut s)));
    }
    assert_eq!(
        start(&mut c, &mut s),
        VaultResponse::Error(VaultError::TooManyRegistrations)
    );
    // Per record and day, across sessions and a restart of the core.
    let mut used = bkv_hsm_core::MAX_REGISTER_STARTS_PER_SESSION;
    while used < bkv_hsm_core::MAX_REGISTER_STARTS_PER_DAY {
        let mut s = open(&mut c, "budget");
        assert!(is_started(&start(&mut c, &mut s)));
        used += 1;
    }
    let state = c.records().export().unwrap();
    let mut restarted =
        Core::from_state_for_tests(p.clone(), secrets_copy(&sealed), &identity, state).unwrap();
    let mut s = open(&mut restarted, "budget");
    assert_eq!(
        start(&mut restarted, &mut s),
        VaultResponse::Error(VaultError::TooManyRegistrations)
    );
    // Other users are not affected, and the next day the user may start again.
    let mut other = open(&mut restarted, "someone-else");
    assert!(is_started(&start(&mut restarted, &mut other)));
    p.advance_clock(DAY);
    let mut s = open(&mut restarted, "budget");
    assert!(is_started(&start(&mut restarted, &mut s)));
}

/// Sends `LoginStart` in session `s` and stops where a host whose commit never comes back
/// stops: the core asked for the guess to be committed.
fn login_start_never_committed(c: &mut Core, s: &mut Client) {
    let start = ClientLogin::<OpaqueSuite>::start(&mut OsRng, b"whatever").unwrap();
    let ct = s.seal(&VaultRequest::LoginStart {
        credential_request: start.message.serialize().to_vec(),
    });
    assert!(matches!(
        c.session_message(&s.sid, &s.user, &ct),
        Ok(Step::ReadFresh)
    ));
    assert!(matches!(c.resume_fresh(&s.sid, &ct), Ok(Step::Commit(_))));
}

/// Issue 27, item 4: a session whose commit failed (no leader, a timeout) does not hold its
/// place forever. Four of them used to lock the user out of the node until it restarted, and
/// enough of them filled the table; now they expire like idle sessions, and a host that reports
/// the failure frees the place at once.
#[test]
fn sessions_whose_commit_never_came_back_expire_and_make_room() {
    let p = Arc::new(MemoryPlatform::new([9; 32]));
    let mut c = core_on(p.clone());
    c.set_session_limits(8, bkv_hsm_core::DEFAULT_SESSION_IDLE_SECS);
    open(&mut c, "stuck").register(&mut c, "pw", 10).unwrap();
    for _ in 0..bkv_hsm_core::MAX_SESSIONS_PER_USER {
        let mut s = open(&mut c, "stuck");
        login_start_never_committed(&mut c, &mut s);
    }
    let key = c.noise_public_key();
    assert_eq!(
        open_with_key(&mut c, "stuck", &key).err(),
        Some(NodeError::Busy)
    );
    // Other users' stuck sessions fill the table.
    for i in 0..4 {
        let user = format!("other{i}");
        open(&mut c, &user).register(&mut c, "pw", 10).unwrap();
        let mut s = open(&mut c, &user);
        login_start_never_committed(&mut c, &mut s);
    }
    assert_eq!(c.session_count(), 8);
    assert_eq!(
        open_with_key(&mut c, "newcomer", &key).err(),
        Some(NodeError::Busy)
    );
    // They expire like idle sessions once their commit is overdue.
    p.advance_clock(bkv_hsm_core::COMMIT_WAIT_SECS + bkv_hsm_core::DEFAULT_SESSION_IDLE_SECS);
    open(&mut c, "stuck").login(&mut c, "pw").unwrap();
    open(&mut c, "newcomer");
    // A host that reports the failed commit frees the place at once.
    let mut s = open(&mut c, "stuck");
    login_start_never_committed(&mut c, &mut s);
    let before = c.session_count();
    c.commit_failed(&s.sid);
    assert_eq!(c.session_count(), before - 1);
}

/// Issue 27, item 4: a full session table never evicts a session that holds a counted login.
/// Throwaway accounts, each with one session in use, used to be able to evict the user between
/// `LoginStart` and `LoginFinish` (ties between single-session holders were broken arbitrarily),
/// burning the guess.
#[test]
fn a_full_table_never_evicts_a_session_holding_a_counted_login() {
    let p = Arc::new(MemoryPlatform::new([9; 32]));
    let mut c = core_on(p.clone());
    c.set_session_limits(20, 300);
    open(&mut c, "victim").register(&mut c, "pw", 10).unwrap();
    let mut v = open(&mut c, "victim");
    let (response, state) = v.login_start(&mut c, "pw").unwrap();
    // The victim's session is the least recently used of all from here on.
    p.advance_clock(1);
    for i in 0..200 {
        let mut s = open(&mut c, &format!("throwaway{i}"));
        s.touch(&mut c);
    }
    assert!(c.session_count() <= 20);
    let fin = state
        .finish(
            &mut OsRng,
            b"pw",
            CredentialResponse::deserialize(&response).unwrap(),
            ClientLoginFinishParameters::new(
                Some(OPAQUE_CONTEXT),
                Identifiers::default(),
                Some(&argon2::Argon2::default()),
            ),
        )
        .unwrap();
    let plain = bkv_wire::encode(&VaultRequest::LoginFinish {
        credential_finalization: fin.message.serialize().to_vec(),
    });
    let mut ct = vec![0u8; plain.len() + 64];
    let n = v.t.write_message(&plain, &mut ct).unwrap();
    let reply = drive(&mut c, &v.sid, "victim", &ct[..n])
        .expect("the victim's session holding its counted login was evicted");
    assert!(matches!(
        v.open_reply(&reply),
        VaultResponse::LoginOk { .. }
    ));
}
