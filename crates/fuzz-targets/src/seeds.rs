//! Valid examples of every format the targets decode, framed the way each
//! target reads its input.

use crate::{fixed_key, test_core, AUDITOR, NS, ORIGIN};
use bkv_transparency::bundle::{Bundle, ClientLogState, FleetKey, KeyRole};
use bkv_transparency::note::Checkpoint;
use bkv_wire::node::{NodeRequest, NodeResponse};
use bkv_wire::vault::{RecordState, SessionHello, VaultRequest, VaultResponse};
use bkv_wire::{OpaqueSuite, NOISE_PATTERN, NOISE_PROLOGUE, OPAQUE_CONTEXT};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, Identifiers, RegistrationResponse,
};
use rand_core::SeedableRng;

fn framed(selector: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![selector];
    v.extend_from_slice(body);
    v
}

fn piece(out: &mut Vec<u8>, p: &[u8]) {
    let n = u16::try_from(p.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(p.get(..usize::from(n)).unwrap_or(p));
}

/// Seeds for `name` (empty for an unknown name).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "node_frame" => node_frame(),
        "vault_session" => vault_session(),
        "transparency" => transparency(),
        "backup" => backup(),
        "client_files" => client_files(),
        "token" => token(),
        "node_storage" => node_storage(),
        _ => Vec::new(),
    }
}

fn node_frame() -> Vec<Vec<u8>> {
    fn e<T: serde::Serialize>(v: &T) -> Vec<u8> {
        bkv_wire::encode(v)
    }
    let mut stream = Vec::new();
    for r in [
        NodeRequest::Info,
        NodeRequest::OpenSession {
            user_id: "alice".into(),
            handshake: vec![7; 48],
        },
    ] {
        let body = bkv_wire::encode(&r);
        stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
        stream.extend_from_slice(&body);
    }
    vec![
        framed(0, &e(&NodeRequest::FleetStatus)),
        framed(
            0,
            &e(&NodeRequest::SessionMessage {
                session_id: [1; 16],
                user_id: "alice".into(),
                ciphertext: vec![2; 40],
            }),
        ),
        framed(
            0,
            &e(&NodeRequest::CheckLogin {
                session_id: [1; 16],
                user_id: "bob".into(),
            }),
        ),
        framed(
            1,
            &e(&NodeResponse::SessionOpened {
                session_id: [3; 16],
                handshake: vec![4; 48],
            }),
        ),
        framed(1, &e(&NodeResponse::LoginChecked { logged_in: true })),
        framed(2, &e(&VaultRequest::Status)),
        framed(
            2,
            &e(&VaultRequest::RegisterFinish {
                upload: vec![5; 64],
                wrapped_key: vec![6; 60],
                guess_limit: 10,
                confirm_hash: [7; 32],
            }),
        ),
        framed(
            3,
            &e(&VaultResponse::Status {
                state: RecordState::Active {
                    attempts: 1,
                    guess_limit: 10,
                },
            }),
        ),
        framed(
            4,
            &e(&SessionHello {
                version: 1,
                user_id: "alice".into(),
            }),
        ),
        framed(7, &stream),
    ]
}

/// A registration and two logins (right and wrong password) recorded
/// against the target's own core: replayed, the registration completes and
/// the logins reach the guess rule.
fn vault_session() -> Vec<Vec<u8>> {
    let mut core = test_core();
    let key = core.noise_public_key();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let Ok(mut hs) = snow::Builder::new(NOISE_PATTERN.parse().unwrap_or_else(|_| unreachable!()))
        .remote_public_key(&key)
        .and_then(|b| b.prologue(NOISE_PROLOGUE))
        .and_then(|b| b.build_initiator())
    else {
        return Vec::new();
    };
    let hello = bkv_wire::encode(&SessionHello {
        version: 1,
        user_id: "alice".into(),
    });
    let mut m1 = vec![0u8; 1024];
    let n = hs.write_message(&hello, &mut m1).unwrap_or(0);
    let Ok((sid, m2)) = core.open_session("alice", m1.get(..n).unwrap_or_default()) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; 70_000];
    if hs.read_message(&m2, &mut buf).is_err() {
        return Vec::new();
    }
    let Ok(mut t) = hs.into_transport_mode() else {
        return Vec::new();
    };
    // Mode 2 (well-formed hello), user "alice".
    let mut input = vec![2u8, 0];
    let mut call = |core: &mut bkv_hsm_core::Core, req: &VaultRequest, input: &mut Vec<u8>| {
        let plain = bkv_wire::encode(req);
        input.push(4);
        piece(input, &plain);
        let mut ct = vec![0u8; plain.len() + 64];
        let n = t.write_message(&plain, &mut ct).unwrap_or(0);
        let reply = crate::drive(core, &sid, "alice", ct.get(..n).unwrap_or_default())?;
        let n = t.read_message(&reply, &mut buf).ok()?;
        bkv_wire::decode::<VaultResponse>(buf.get(..n)?, 1 << 16).ok()
    };
    let pw = b"correct horse";
    let ksf = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(64, 1, 1, None).unwrap_or_default(),
    );
    let Ok(start) = ClientRegistration::<OpaqueSuite>::start(&mut rng, pw) else {
        return Vec::new();
    };
    let req = VaultRequest::RegisterStart {
        registration_request: start.message.serialize().to_vec(),
    };
    let Some(VaultResponse::RegisterStarted {
        registration_response,
    }) = call(&mut core, &req, &mut input)
    else {
        return Vec::new();
    };
    let Ok(resp) = RegistrationResponse::deserialize(&registration_response) else {
        return Vec::new();
    };
    let Ok(fin) = start.state.finish(
        &mut rng,
        pw,
        resp,
        ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&ksf)),
    ) else {
        return Vec::new();
    };
    let secret = [9u8; 32];
    use sha2::Digest;
    let finish = VaultRequest::RegisterFinish {
        upload: fin.message.serialize().to_vec(),
        wrapped_key: vec![1; 60],
        guess_limit: 3,
        confirm_hash: sha2::Sha256::digest(secret).into(),
    };
    let _ = call(&mut core, &finish, &mut input);
    let _ = call(
        &mut core,
        &VaultRequest::RegisterConfirm {
            confirm_secret: secret,
        },
        &mut input,
    );
    let registered = input.clone();
    let mut out = vec![registered.clone()];
    for attempt in [&b"wrong"[..], pw] {
        let Ok(start) = ClientLogin::<OpaqueSuite>::start(&mut rng, attempt) else {
            continue;
        };
        let req = VaultRequest::LoginStart {
            credential_request: start.message.serialize().to_vec(),
        };
        let Some(VaultResponse::LoginStarted {
            credential_response,
            ..
        }) = call(&mut core, &req, &mut input)
        else {
            continue;
        };
        let Ok(cr) = CredentialResponse::deserialize(&credential_response) else {
            continue;
        };
        let fin = start
            .state
            .finish(
                &mut rng,
                attempt,
                cr,
                ClientLoginFinishParameters::new(
                    Some(OPAQUE_CONTEXT),
                    Identifiers::default(),
                    Some(&ksf),
                ),
            )
            .map(|f| f.message.serialize().to_vec())
            .unwrap_or_default();
        let _ = call(
            &mut core,
            &VaultRequest::LoginFinish {
                credential_finalization: fin,
            },
            &mut input,
        );
        input.push(1); // resend the finish
        out.push(input.clone());
    }
    let mut status = vec![2u8, 1];
    status.push(4);
    piece(&mut status, &bkv_wire::encode(&VaultRequest::Status));
    status.push(4);
    piece(&mut status, &bkv_wire::encode(&VaultRequest::Delete));
    out.push(status);
    out.push(vec![0, 0, 1, 2, 3]);
    out.push(framed(1, &[0, 0, 5, 1, 5, b'a', b'l', b'i', b'c', b'e']));
    out
}

fn sample_bundle(epoch: u64) -> Bundle {
    Bundle {
        version: bkv_transparency::bundle::BUNDLE_VERSION,
        namespace: NS.into(),
        epoch,
        fleet_id: "fleet-1".into(),
        keys: vec![
            FleetKey {
                role: KeyRole::NoiseStatic,
                key: [1; 32],
            },
            FleetKey {
                role: KeyRole::NodeIdentity,
                key: [2; 32],
            },
        ],
        not_before: 0,
        not_after: 3_000_000_000,
        evidence_digest: [0; 32],
        previous: Vec::new(),
    }
}

fn transparency() -> Vec<Vec<u8>> {
    let b = sample_bundle(3).encode();
    let mut out = vec![framed(0, &b)];
    for (leaves, index, seen, tamper) in [
        (1u8, 0u8, 0u8, 0u8),
        (5, 3, 2, 0),
        (8, 7, 8, 0),
        (4, 1, 2, 2),
    ] {
        let mut v = vec![2, leaves, index, seen];
        v.extend_from_slice(&1_000_000u64.to_be_bytes());
        v.push(tamper);
        piece(&mut v, &b);
        v.extend_from_slice(&1u64.to_be_bytes());
        out.push(v);
    }
    let cp = Checkpoint {
        origin: ORIGIN.into(),
        size: 12,
        root: [4; 32],
    };
    if let Ok(note) = cp.sign(AUDITOR, &fixed_key(1)) {
        out.push(framed(3, note.as_bytes()));
    }
    out.push(framed(4, cp.text().as_bytes()));
    out.push(framed(
        3,
        bkv_transparency::note::verifier_key(AUDITOR, &fixed_key(1).verifying_key()).as_bytes(),
    ));
    let mut proof = vec![5];
    proof.extend_from_slice(&3u64.to_be_bytes());
    proof.extend_from_slice(&7u64.to_be_bytes());
    proof.extend_from_slice(&4u64.to_be_bytes());
    proof.extend_from_slice(&[9; 48]);
    out.push(proof);
    out.push(framed(
        1,
        br#"{"bundle":"AA","auditor_signature":"","operator_signature":"","leaf_index":0,"checkpoint":"","inclusion_proof":[],"consistency_from":0,"consistency_proof":[]}"#,
    ));
    out.push(framed(7, br#"{"version":1}"#));
    out
}

fn backup() -> Vec<Vec<u8>> {
    use bkv_client::{Compression, Content, EncryptWriter, Header};
    use std::io::Write;
    let key = bkv_client::BackupKey::from_bytes([5; 32]);
    let plain: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::new();
    for compression in [Compression::None, Compression::Zstd] {
        let header = Header::new(compression, Content::File, 4096);
        out.push(framed(0, &header.encode()));
        if let Ok(mut w) = EncryptWriter::new(Vec::new(), &key, &header) {
            if w.write_all(&plain).is_ok() {
                if let Ok(file) = w.finish() {
                    out.push(framed(1, &file));
                }
            }
        }
    }
    for (mode, z, flips) in [(2u8, 0u8, 0u8), (2, 1, 1), (3, 1, 0), (3, 0, 2)] {
        let mut v = vec![mode, z, 0, flips];
        for i in 0..flips {
            v.extend_from_slice(&[0, 60 + i, 0x10]);
        }
        v.extend_from_slice(&[0x30, 0x00]);
        v.extend_from_slice(&plain[..5000]);
        out.push(v);
    }
    out
}

fn client_files() -> Vec<Vec<u8>> {
    use bkv_client::{Manifest, RecoveryKey};
    let key = bkv_client::BackupKey::from_bytes([5; 32]);
    let m = Manifest {
        version: 1,
        user_id: "alice".into(),
        key_id: bkv_client::key_id(&key),
        generation: 2,
        slots: Vec::new(),
    };
    let config = r#"version = 1
frontend_url = "http://127.0.0.1:8080"
storage_dir = "backups"
guess_limit = 10

[fleet]
mode = "ota"

[fleet.ota]
namespace = "demo"
origin = "bkv.local/demo"
auditor_name = "auditor.local"
auditor_key = "auditor.local+01020304+AAAA"
operator_key = "0000000000000000000000000000000000000000000000000000000000000000"
state_file = "ota-state.json"
log_trusted_since = 1700000000

[auth]
dev_token_url = "http://127.0.0.1:8080/v1/dev/token"

[passkeys]
origin = "https://bkv.local"
"#;
    vec![
        framed(0, &m.seal(&key)),
        framed(1, RecoveryKey::generate().display().as_bytes()),
        framed(
            1,
            b"abcd efgh jkmn pqrs tvwx yz01 2345 6789 abcd efgh jkmn pqrs tvwx y",
        ),
        framed(2, config.as_bytes()),
        framed(
            3,
            serde_json::to_vec(&ClientLogState {
                checkpoint_size: 3,
                checkpoint_root: [7; 32],
                accepted_epoch: 2,
                preferred_fleets: Vec::new(),
            })
            .unwrap_or_default()
            .as_slice(),
        ),
    ]
}

fn token() -> Vec<Vec<u8>> {
    use bkv_frontend::token::{mint, Claims};
    let now = 1_700_000_000u64;
    let claims = Claims {
        sub: "alice".into(),
        aud: "bkv".into(),
        exp: now + 600,
        iat: Some(now),
        nbf: Some(now - 5),
    };
    let mut valid = vec![0];
    valid.extend_from_slice(&now.to_be_bytes());
    valid.extend_from_slice(mint(&fixed_key(3), &claims).as_bytes());
    let mut structured = vec![1];
    structured.extend_from_slice(&now.to_be_bytes());
    piece(&mut structured, br#"{"alg":"EdDSA","typ":"JWT"}"#);
    structured.extend_from_slice(&serde_json::to_vec(&claims).unwrap_or_default());
    let mut wrong_alg = vec![1];
    wrong_alg.extend_from_slice(&now.to_be_bytes());
    piece(&mut wrong_alg, br#"{"alg":"none"}"#);
    wrong_alg.extend_from_slice(br#"{"sub":"../x","aud":["bkv"],"exp":1}"#);
    vec![valid, structured, wrong_alg]
}

/// A real first message of the peer link's IK handshake to the target's
/// test identity.
fn peer_hello() -> Vec<u8> {
    crate::PEER.with(|(p, id)| {
        let Ok(other) = bkv_hsm_core::NodeIdentity::generate(&**p) else {
            return Vec::new();
        };
        let Ok(mut hs) = other.initiate(p, &id.public_key()) else {
            return Vec::new();
        };
        let mut out = vec![0u8; 1024];
        let n = hs.write_message(&[], &mut out).unwrap_or(0);
        out.truncate(n);
        out
    })
}

fn node_storage() -> Vec<Vec<u8>> {
    use bkv_hsm_core::state::{Credential, Mutation, Pending, State};
    let mut state = State::default();
    let id = bkv_wire::record_id("alice");
    let cred = Credential {
        opaque_record: vec![1; 64],
        wrapped_key: vec![2; 60],
        guess_limit: 10,
        confirm_hash: [3; 32],
    };
    let store = Mutation::StorePending {
        record_id: id,
        pending: Pending {
            credential: cred,
            replaces: None,
        },
    };
    let _ = state.apply(&store);
    let count = Mutation::CountGuess {
        record_id: id,
        generation: 1,
    };
    let mut with_state = framed(0, &state.encode());
    with_state.extend_from_slice(&bkv_wire::encode(&count));
    let entry = bkv_hsm_core::EntryKey::from_bytes([5; 32], "fleet").seal(
        [4; 32],
        9,
        &mut rand_core::OsRng,
        &count,
    );
    vec![
        framed(0, &State::default().encode()),
        framed(10, &bkv_wire::encode(&entry)),
        with_state,
        framed(1, &bkv_wire::encode(&store)),
        framed(1, &bkv_wire::encode(&count)),
        framed(5, &peer_hello()),
        framed(6, &[1; 80]),
        framed(
            1,
            &bkv_wire::encode(&Mutation::Destroy {
                record_id: id,
                generation: 1,
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use bkv_wire::vault::RecordState;

    /// The recorded transcript replays: registration completes, and the
    /// wrong-password login costs exactly one guess (the resend none).
    #[test]
    fn vault_seeds_reach_the_guess_rule() {
        let seeds = super::vault_session();
        let id = bkv_wire::record_id("alice");
        let mut registered = crate::run_vault_session(&seeds[0]);
        let status = registered.records().status(&id).unwrap();
        assert!(
            matches!(status, RecordState::Active { attempts: 0, .. }),
            "{status:?}"
        );
        let mut wrong = crate::run_vault_session(&seeds[1]);
        assert_eq!(
            wrong.records().status(&id).unwrap(),
            RecordState::Active {
                attempts: 1,
                guess_limit: 3
            }
        );
    }
}
