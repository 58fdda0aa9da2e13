//! Server-side cost of the vault's hot paths in the I/O-free core (no disk,
//! no network): opening a Noise session, and a counted OPAQUE LoginStart.
//! Also prints the encoded size of one record (bytes per user at rest,
//! before sealing overhead of 41 bytes).
//! Run: `cargo bench -p bkv-hsm-core --bench core`

use argon2::Argon2;
use bkv_hsm_core::{Core, FleetSecrets, FleetTrust, MemoryPlatform, Step};
use bkv_wire::vault::{SessionHello, VaultRequest};
use bkv_wire::{OpaqueSuite, NOISE_PATTERN, NOISE_PROLOGUE};
use criterion::{criterion_group, criterion_main, Criterion};
use opaque_ke::{
    ClientLogin, ClientRegistration, ClientRegistrationFinishParameters, Identifiers,
    RegistrationResponse,
};
use rand::rngs::OsRng;
use std::sync::Arc;

fn handshake(core: &mut Core, user: &str) -> ([u8; 16], snow::TransportState) {
    let key = core.noise_public_key();
    let mut hs = snow::Builder::new(NOISE_PATTERN.parse().unwrap())
        .remote_public_key(&key)
        .unwrap()
        .prologue(NOISE_PROLOGUE)
        .unwrap()
        .build_initiator()
        .unwrap();
    let hello = bkv_wire::encode(&SessionHello {
        version: 1,
        user_id: user.into(),
    });
    let mut m1 = vec![0u8; 1024];
    let n = hs.write_message(&hello, &mut m1).unwrap();
    let (sid, m2) = core.open_session(user, &m1[..n]).unwrap();
    let mut p = vec![0u8; 1024];
    hs.read_message(&m2, &mut p).unwrap();
    (sid, hs.into_transport_mode().unwrap())
}

fn call(core: &mut Core, sid: &[u8; 16], t: &mut snow::TransportState, req: &VaultRequest) {
    let plain = bkv_wire::encode(req);
    let mut ct = vec![0u8; plain.len() + 64];
    let n = t.write_message(&plain, &mut ct).unwrap();
    let reply = bkv_testkit::one_node::drive(core, sid, "bench", &ct[..n]).unwrap();
    let mut out = vec![0u8; 65535];
    t.read_message(&reply, &mut out).unwrap();
}

fn bench(c: &mut Criterion) {
    let platform = Arc::new(MemoryPlatform::new([1; 32]));
    let secrets = FleetSecrets::generate(&*platform, FleetTrust::for_tests()).unwrap();
    let identity = bkv_hsm_core::NodeIdentity::generate(&*platform).unwrap();
    let mut core = Core::new(platform, secrets, &identity).unwrap();
    core.set_session_limits(1_000_000, 3600);
    // Register "bench" with a high guess limit.
    let (sid, mut t) = handshake(&mut core, "bench");
    let start = ClientRegistration::<OpaqueSuite>::start(&mut OsRng, b"pw").unwrap();
    let plain = bkv_wire::encode(&VaultRequest::RegisterStart {
        registration_request: start.message.serialize().to_vec(),
    });
    let mut ct = vec![0u8; plain.len() + 64];
    let n = t.write_message(&plain, &mut ct).unwrap();
    let Ok(Step::Reply(r)) = core.session_message(&sid, "bench", &ct[..n]) else {
        panic!()
    };
    let mut out = vec![0u8; 65535];
    let n = t.read_message(&r, &mut out).unwrap();
    let resp: bkv_wire::vault::VaultResponse = bkv_wire::decode(&out[..n], 1 << 16).unwrap();
    let bkv_wire::vault::VaultResponse::RegisterStarted {
        registration_response,
    } = resp
    else {
        panic!()
    };
    let ksf = Argon2::default();
    let fin = start
        .state
        .finish(
            &mut OsRng,
            b"pw",
            RegistrationResponse::deserialize(&registration_response).unwrap(),
            ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&ksf)),
        )
        .unwrap();
    call(
        &mut core,
        &sid,
        &mut t,
        &VaultRequest::RegisterFinish {
            upload: fin.message.serialize().to_vec(),
            wrapped_key: vec![0; 73],
            guess_limit: 100,
            confirm_hash: sha2_of([5; 32]),
        },
    );
    call(
        &mut core,
        &sid,
        &mut t,
        &VaultRequest::RegisterConfirm {
            confirm_secret: [5; 32],
        },
    );
    let id = bkv_wire::record_id("bench");
    let rec = core.records().record(&id).unwrap().unwrap();
    let rec = &rec;
    println!(
        "encoded record: {} bytes (sealed: {} bytes)",
        bkv_wire::encode(rec).len(),
        bkv_wire::encode(rec).len() + 41
    );

    c.bench_function("core/open_session (Noise NK, both sides)", |b| {
        b.iter(|| {
            // The user's oldest session makes room (per-user cap).
            handshake(&mut core, "bench");
        })
    });
    let req = ClientLogin::<OpaqueSuite>::start(&mut OsRng, b"pw")
        .unwrap()
        .message
        .serialize()
        .to_vec();
    c.bench_function("core/login_start (count guess + OPAQUE KE2)", |b| {
        b.iter(|| {
            call(
                &mut core,
                &sid,
                &mut t,
                &VaultRequest::LoginStart {
                    credential_request: req.clone(),
                },
            );
            // Keep the counter below the limit; resets are part of real logins too.
            let gen = core.records().record(&id).unwrap().unwrap().generation;
            core.apply_for_tests(bkv_hsm_core::Mutation::ResetGuesses {
                record_id: id,
                generation: gen,
            });
        })
    });
}

fn sha2_of(x: [u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(x).into()
}

criterion_group!(benches, bench);
criterion_main!(benches);
