//! The PKCS#11 platform against a real SoftHSM2 token (Debian `softhsm2`;
//! `scripts/test-all.sh` installs it): keys generated inside the token,
//! sensitive and never extractable; sealing, signing and the counter in the
//! token; a lost token or key is a clear error.
//!
//! One test function: a process can hold one initialised PKCS#11 module.

use bkv_hsm_core::{Counter, Platform, PlatformError, SealSlot};
use bkv_hsm_platform::pkcs11::{Pkcs11Config, Pkcs11Platform, SEALING_LABEL, SIGNING_LABEL};
use bkv_hsm_platform::PlatformOpenError;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use ed25519_dalek::Verifier;
use std::path::Path;

fn init_token(dir: &Path, label: &str) -> Pkcs11Config {
    let t = bkv_hsm_platform::softhsm::init_token(dir, label, "1234", "5678")
        .expect("softhsm2-util (Debian package softhsm2) must be installed");
    // SoftHSM reads its configuration from this variable at C_Initialize.
    std::env::set_var("SOFTHSM2_CONF", &t.conf);
    t.config
}

/// Reads the key objects' protection attributes directly through PKCS#11.
fn key_attributes(cfg: &Pkcs11Config) -> Vec<(String, bool, bool, bool, bool)> {
    let ctx = Pkcs11::new(&cfg.module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == cfg.token_label)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from("1234".to_owned())))
        .unwrap();
    let mut out = Vec::new();
    for (class, label) in [
        (ObjectClass::SECRET_KEY, SEALING_LABEL),
        (ObjectClass::PRIVATE_KEY, SIGNING_LABEL),
    ] {
        let h = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .unwrap()[0];
        let attrs = session
            .get_attributes(
                h,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                ],
            )
            .unwrap();
        let get = |t: AttributeType| {
            attrs.iter().any(|a| {
                matches!(
                    (a, t),
                    (Attribute::Sensitive(true), AttributeType::Sensitive)
                        | (Attribute::Extractable(true), AttributeType::Extractable)
                        | (
                            Attribute::AlwaysSensitive(true),
                            AttributeType::AlwaysSensitive
                        )
                        | (
                            Attribute::NeverExtractable(true),
                            AttributeType::NeverExtractable
                        )
                )
            })
        };
        // The key value itself cannot be read.
        assert!(session
            .get_attributes(h, &[AttributeType::Value])
            .map(|v| v.is_empty())
            .unwrap_or(true));
        out.push((
            label.to_owned(),
            get(AttributeType::Sensitive),
            get(AttributeType::Extractable),
            get(AttributeType::AlwaysSensitive),
            get(AttributeType::NeverExtractable),
        ));
    }
    out
}

#[test]
fn keys_live_in_the_token_and_a_lost_token_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let cfg = init_token(t.path(), "bkv-test");

    // A fresh token without keys: opening without `create` refuses.
    match Pkcs11Platform::open(&cfg, false) {
        Err(PlatformOpenError::Missing(m)) => assert!(m.contains("sealing key"), "{m}"),
        other => panic!("expected a missing key, got {:?}", other.err()),
    }
    let p = Pkcs11Platform::open(&cfg, true).unwrap();
    let d = p.describe();
    assert!(
        d.token.contains("SoftHSM") && d.token.contains("bkv-test"),
        "{}",
        d.token
    );

    // Sealing in the token: round trip, binding, tamper detection.
    let sealed = p
        .seal(SealSlot::RaftState, b"label", b"secret record")
        .unwrap();
    assert_eq!(sealed[0], 2);
    assert!(!sealed.windows(13).any(|w| w == b"secret record"));
    assert_eq!(
        p.unseal(SealSlot::RaftState, b"label", &sealed)
            .unwrap()
            .as_slice(),
        b"secret record"
    );
    assert_eq!(
        p.unseal(SealSlot::RaftState, b"other", &sealed),
        Err(PlatformError::Auth)
    );
    let mut bad = sealed.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        p.unseal(SealSlot::RaftState, b"label", &bad),
        Err(PlatformError::Auth)
    );
    assert_eq!(
        p.unseal(SealSlot::RaftState, b"label", &sealed[..10]),
        Err(PlatformError::Malformed)
    );
    // IVs never repeat within a process.
    let again = p
        .seal(SealSlot::RaftState, b"label", b"secret record")
        .unwrap();
    assert_ne!(sealed[1..13], again[1..13]);

    // Signing in the token verifies with the public key it reports.
    let sig = p.sign(b"statement").unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&p.signing_public_key()).unwrap();
    vk.verify(b"statement", &ed25519_dalek::Signature::from_bytes(&sig))
        .unwrap();

    // The counter lives in the token and only grows.
    let core = Counter::CORE_FOR_TESTS;
    assert_eq!(p.counter_read(Counter::Raft).unwrap(), 0);
    p.counter_advance_to(Counter::Raft, 7).unwrap();
    p.counter_advance_to(Counter::Raft, 3).unwrap();
    assert_eq!(p.counter_read(Counter::Raft).unwrap(), 7);
    // The core's counter is another object.
    assert_eq!(p.counter_read(core).unwrap(), 0);
    p.counter_advance_to(core, 11).unwrap();
    assert_eq!(p.counter_read(Counter::Raft).unwrap(), 7);
    let mut r = [0u8; 32];
    p.fill_random(&mut r).unwrap();
    assert_ne!(r, [0u8; 32]);
    let public = p.signing_public_key();
    drop(p);

    // The keys are sensitive and were never extractable.
    for (label, sensitive, extractable, always, never) in key_attributes(&cfg) {
        assert!(sensitive && always && never && !extractable, "{label}");
    }

    // Reopened (a restart): same keys, same counter, the old seal opens,
    // and a new process reserves a fresh IV epoch.
    let p = Pkcs11Platform::open(&cfg, false).unwrap();
    assert_eq!(p.signing_public_key(), public);
    assert_eq!(p.counter_read(Counter::Raft).unwrap(), 7);
    assert_eq!(p.counter_read(core).unwrap(), 11);
    assert_eq!(
        p.unseal(SealSlot::RaftState, b"label", &sealed)
            .unwrap()
            .as_slice(),
        b"secret record"
    );
    let later = p.seal(SealSlot::RaftState, b"label", b"x").unwrap();
    assert!(later[1..9] > sealed[1..9], "IV epoch must advance");
    drop(p);

    // A wrong PIN is named as such.
    std::fs::write(&cfg.pin_file, "0000\n").unwrap();
    match Pkcs11Platform::open(&cfg, false) {
        Err(PlatformOpenError::Token(m)) => assert!(m.contains("PIN"), "{m}"),
        other => panic!("expected a PIN error, got {:?}", other.err()),
    }
    std::fs::write(&cfg.pin_file, "1234").unwrap();

    // The token deleted: a clear error, never new keys.
    std::fs::remove_dir_all(t.path().join("tokens")).unwrap();
    std::fs::create_dir_all(t.path().join("tokens")).unwrap();
    match Pkcs11Platform::open(&cfg, false) {
        Err(PlatformOpenError::Missing(m)) => {
            assert!(m.contains("not found") && m.contains("bkv-test"), "{m}")
        }
        other => panic!("expected a missing token, got {:?}", other.err()),
    }
}
