//! The boundary end to end over a real Unix socket: a core service on a memory platform, the
//! agent's handles, and what the agent can and cannot get through them.

use crate::client::{CoreHandle, HostHandle};
use crate::protocol::{
    read_message, write_message, Failure, FromCore, Reply, Request, Role, ToCore, PROTOCOL_VERSION,
};
use crate::service::CoreService;
use bkv_hsm_core::sealed_state::NoBuckets;
use bkv_hsm_core::{Counter, FleetTrust, MemoryPlatform, NodeIdentity, Platform, SealSlot};
use proptest::prelude::*;
use std::os::unix::net::{UnixListener, UnixStream};

fn trust() -> FleetTrust {
    FleetTrust {
        namespace: "test".into(),
        auditor_name: "auditor".into(),
        auditor_key: ed25519_dalek::SigningKey::from_bytes(&[1; 32])
            .verifying_key()
            .to_bytes(),
        operator_key: ed25519_dalek::SigningKey::from_bytes(&[2; 32])
            .verifying_key()
            .to_bytes(),
        max_guess_limit: 10,
        predecessors: vec![],
    }
}

/// A core service on a socket in `dir`, served by a thread.
fn service(dir: &std::path::Path) -> std::path::PathBuf {
    let socket = dir.join("core.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let platform = MemoryPlatform::shared([3; 32]);
    std::thread::spawn(move || crate::server::serve(listener, CoreService::new(platform, [9; 32])));
    socket
}

fn started(socket: &std::path::Path) -> (CoreHandle, HostHandle, [u8; 32]) {
    let mut core = CoreHandle::remote(socket).unwrap();
    let public = match core.call(Request::OpenIdentity { sealed: None }).unwrap() {
        Reply::Identity {
            public,
            sealed_new: Some(_),
        } => public,
        r => panic!("{r:?}"),
    };
    let host = HostHandle::remote(socket).unwrap();
    let r = core.call(Request::FoundSecrets { trust: trust() }).unwrap();
    assert!(
        matches!(
            r,
            Reply::Secrets {
                sealed_new: Some(_),
                ..
            }
        ),
        "{r:?}"
    );
    assert!(matches!(
        core.call(Request::StartCore).unwrap(),
        Reply::Started { .. }
    ));
    assert_eq!(core.restore(Box::new(NoBuckets), None).unwrap(), None);
    (core, host, public)
}

#[test]
fn a_founder_applies_its_entry_across_the_socket_and_gets_only_sealed_and_public_values() {
    let t = tempfile::tempdir().unwrap();
    let socket = service(t.path());
    let (mut core, _host, public) = started(&socket);
    let entry = match core
        .call(Request::FoundEntry {
            node_id: 1,
            addr: "127.0.0.1:1".into(),
        })
        .unwrap()
    {
        Reply::Entry(e) => e,
        r => panic!("{r:?}"),
    };
    match core
        .call(Request::Apply {
            entries: vec![entry.clone()],
            position: b"position-1".to_vec(),
        })
        .unwrap()
    {
        Reply::Applied {
            outcomes, summary, ..
        } => {
            assert_eq!(outcomes, vec![bkv_hsm_core::Outcome::Founded]);
            match core.call(Request::SummaryPosition { summary }).unwrap() {
                Reply::Bytes(p) => assert_eq!(p, b"position-1"),
                r => panic!("{r:?}"),
            }
        }
        r => panic!("{r:?}"),
    }
    match core.call(Request::Admits { identity: public }).unwrap() {
        Reply::Admits(Some(true)) => {}
        r => panic!("{r:?}"),
    }
    // The same entry again is refused (applied twice), not applied.
    match core
        .call(Request::Apply {
            entries: vec![entry],
            position: b"position-2".to_vec(),
        })
        .unwrap()
    {
        Reply::Applied { outcomes, .. } => {
            assert!(matches!(outcomes[..], [bkv_hsm_core::Outcome::Refused(_)]))
        }
        r => panic!("{r:?}"),
    }
    // Secrets go only to admitted members, encrypted to them.
    assert!(matches!(
        core.call(Request::ExportSecrets { identity: [7; 32] })
            .unwrap(),
        Reply::Failed(Failure::Refused(_))
    ));
}

#[test]
fn the_agent_cannot_name_a_slot_or_the_counter_of_the_core_or_sign() {
    let t = tempfile::tempdir().unwrap();
    let socket = service(t.path());
    let (mut core, host, _) = started(&socket);
    // Its own raft-state seals and opens; the counter moves forward only.
    let sealed = host.seal(SealSlot::RaftState, b"label", b"state").unwrap();
    assert_eq!(
        &*host.unseal(SealSlot::RaftState, b"label", &sealed).unwrap(),
        b"state"
    );
    host.counter_advance_to(Counter::Raft, 5).unwrap();
    host.counter_advance_to(Counter::Raft, 3).unwrap();
    assert_eq!(host.counter_read(Counter::Raft).unwrap(), 5);
    assert!(host.sign(b"anything").is_err());
    // The core's counter is not the agent's to read or raise.
    let core_counter = Counter::CORE_FOR_TESTS;
    assert!(host.counter_read(core_counter).is_err());
    assert!(host.counter_advance_to(core_counter, 9).is_err());
    // A value of the core's (the identity the core sealed) does not open as the host's.
    let id_sealed = match core.call(Request::OpenIdentity { sealed: None }).unwrap() {
        Reply::Identity {
            sealed_new: Some(s),
            ..
        } => s,
        r => panic!("{r:?}"),
    };
    assert!(host.unseal(SealSlot::RaftState, b"", &id_sealed).is_err());
    let p = MemoryPlatform::shared([3; 32]);
    assert!(
        NodeIdentity::unseal(&*p, &id_sealed).is_ok(),
        "the core's own slot opens it"
    );
    // Requests go on their own connection only.
    assert!(matches!(
        core.call(Request::CounterRead).unwrap(),
        Reply::Failed(Failure::WrongConnection(_))
    ));
    let mut s = UnixStream::connect(&socket).unwrap();
    write_message(
        &mut s,
        &ToCore::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Host,
        },
    )
    .unwrap();
    let _: FromCore = read_message(&mut s).unwrap();
    write_message(&mut s, &ToCore::Call(Request::Members)).unwrap();
    match read_message::<FromCore>(&mut s).unwrap() {
        FromCore::Reply(Reply::Failed(Failure::WrongConnection(r))) => assert_eq!(r, "Members"),
        r => panic!("{r:?}"),
    }
}

#[test]
fn another_protocol_version_is_named_and_refused() {
    let t = tempfile::tempdir().unwrap();
    let socket = service(t.path());
    let mut s = UnixStream::connect(&socket).unwrap();
    write_message(
        &mut s,
        &ToCore::Hello {
            version: PROTOCOL_VERSION + 1,
            role: Role::Core,
        },
    )
    .unwrap();
    match read_message::<FromCore>(&mut s).unwrap() {
        FromCore::Hello { version } => assert_eq!(version, PROTOCOL_VERSION),
        r => panic!("{r:?}"),
    }
    // And closed: nothing more is read.
    write_message(&mut s, &ToCore::Call(Request::Status)).ok();
    assert!(read_message::<FromCore>(&mut s).is_err());
    // An agent of this version gets through.
    assert!(CoreHandle::remote(&socket).is_ok());
}

/// The agent pipelines (`crate::pipe`): a request can arrive while the service waits for a
/// bucket answer inside another. It is queued and answered after that one, in order.
#[test]
fn a_request_that_arrives_during_a_bucket_question_is_answered_after_it() {
    let t = tempfile::tempdir().unwrap();
    let socket = service(t.path());
    let mut s = UnixStream::connect(&socket).unwrap();
    let call = |s: &mut UnixStream, r: Request| {
        write_message(s, &ToCore::Call(r)).unwrap();
    };
    write_message(
        &mut s,
        &ToCore::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Core,
        },
    )
    .unwrap();
    assert!(matches!(
        read_message::<FromCore>(&mut s).unwrap(),
        FromCore::Hello {
            version: PROTOCOL_VERSION
        }
    ));
    for r in [
        Request::OpenIdentity { sealed: None },
        Request::FoundSecrets { trust: trust() },
        Request::StartCore,
    ] {
        call(&mut s, r);
        assert!(matches!(
            read_message::<FromCore>(&mut s).unwrap(),
            FromCore::Reply(_)
        ));
    }
    // A restore asks for the agent's buckets; a status request goes out before the answer.
    call(&mut s, Request::Restore { summary: None });
    assert!(matches!(
        read_message::<FromCore>(&mut s).unwrap(),
        FromCore::ListBuckets
    ));
    call(&mut s, Request::Status);
    write_message(&mut s, &ToCore::BucketsEnd(Ok(()))).unwrap();
    assert!(matches!(
        read_message::<FromCore>(&mut s).unwrap(),
        FromCore::Reply(Reply::Restored(None))
    ));
    assert!(matches!(
        read_message::<FromCore>(&mut s).unwrap(),
        FromCore::Reply(Reply::Status { .. })
    ));
}

/// Many threads share one pipelined connection, each holding the handle only to send: every
/// caller gets its own reply.
#[test]
fn concurrent_callers_on_one_connection_each_get_their_own_reply() {
    let t = tempfile::tempdir().unwrap();
    let socket = service(t.path());
    let (core, _host, public) = started(&socket);
    let core = std::sync::Arc::new(std::sync::Mutex::new(core));
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let core = core.clone();
            std::thread::spawn(move || {
                for n in 0..50 {
                    // Two kinds of request, so a reply handed to the wrong caller shows.
                    let (req, admits) = match (i + n) % 2 {
                        0 => (Request::Status, false),
                        _ => (Request::Admits { identity: public }, true),
                    };
                    let sent = core.lock().unwrap().send(req).unwrap();
                    let (reply, turn) = sent.wait().unwrap();
                    assert!(turn.is_none());
                    match (reply, admits) {
                        (Reply::Status { .. }, false) | (Reply::Admits(_), true) => {}
                        (r, _) => panic!("{r:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Turns end in the order they were handed out, whichever thread ends its turn first.
#[test]
fn turns_end_in_order() {
    let seq = std::sync::Arc::new(crate::pipe::Sequencer::default());
    let turns: Vec<_> = (0..6).map(|_| seq.turn()).collect();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = turns
        .into_iter()
        .enumerate()
        .rev()
        .map(|(i, mut turn)| {
            let order = order.clone();
            std::thread::spawn(move || {
                turn.reach();
                order.lock().unwrap().push(i);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
}

proptest! {
    #[test]
    fn any_bytes_from_the_agent_are_a_message_or_an_error_never_a_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        let _ = read_message::<ToCore>(&mut bytes.as_slice());
        let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let _ = read_message::<ToCore>(&mut framed.as_slice());
        let _ = read_message::<FromCore>(&mut framed.as_slice());
    }

    #[test]
    fn requests_round_trip(user in "[a-z]{1,16}", ct in proptest::collection::vec(any::<u8>(), 0..256), sid in any::<[u8; 16]>(), fresh in any::<bool>()) {
        let req = ToCore::Call(Request::SessionMessage { session_id: sid, user_id: user.clone(), ciphertext: ct.clone(), fresh });
        let mut buf = Vec::new();
        write_message(&mut buf, &req).unwrap();
        match read_message::<ToCore>(&mut buf.as_slice()).unwrap() {
            ToCore::Call(Request::SessionMessage { session_id, user_id, ciphertext, fresh: f }) => {
                prop_assert_eq!(f, fresh);
                prop_assert_eq!(session_id, sid);
                prop_assert_eq!(user_id, user);
                prop_assert_eq!(ciphertext, ct);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
