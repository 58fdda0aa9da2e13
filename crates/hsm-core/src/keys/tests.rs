use super::*;
use crate::platform::MemoryPlatform;

/// Frozen (docs/formats.md): nodes of different versions transfer fleet secrets under it.
/// Hex, so a text search-and-replace cannot change the expectation along with the constant.
#[test]
fn the_transfer_salt_is_frozen() {
    let hex: String = TRANSFER_SALT.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "626b7620666c6565742073656372657473207472616e73666572207631"
    );
}

fn trust() -> FleetTrust {
    FleetTrust::for_tests()
}

#[test]
fn secrets_travel_only_to_the_identity_they_were_encrypted_to() {
    let a = MemoryPlatform::new([1; 32]);
    let b = MemoryPlatform::new([2; 32]);
    let s = FleetSecrets::generate(&a, trust()).unwrap();
    let bob = NodeIdentity::generate(&b).unwrap();
    let eve = NodeIdentity::generate(&b).unwrap();
    let env = s.encrypt_to(&a, &bob.public_key()).unwrap();
    let got = bob.open_secrets(&env).unwrap();
    assert_eq!(got.fleet_id(), s.fleet_id());
    assert_eq!(got.noise_public_key(), s.noise_public_key());
    assert_eq!(got.trust(), s.trust());
    assert!(eve.open_secrets(&env).is_err());
    let mut t = env.clone();
    t[40] ^= 1;
    assert!(bob.open_secrets(&t).is_err());
    assert!(bob.open_secrets(&env[..20]).is_err());
    // A low-order recipient key is refused.
    assert!(s.encrypt_to(&a, &[0; 32]).is_err());
    // Debug never shows key material.
    assert!(!format!("{s:?} {bob:?}").contains(&hex_lower(bob.private.as_ref())));
}

#[test]
fn sealed_keys_open_only_on_their_platform() {
    let a = MemoryPlatform::new([1; 32]);
    let b = MemoryPlatform::new([2; 32]);
    let s = FleetSecrets::generate(&a, trust()).unwrap();
    let sealed = s.seal(&a).unwrap();
    assert_eq!(
        FleetSecrets::unseal(&a, &sealed).unwrap().fleet_id(),
        s.fleet_id()
    );
    assert!(FleetSecrets::unseal(&b, &sealed).is_err());
    let id = NodeIdentity::generate(&a).unwrap();
    let sealed = id.seal(&a).unwrap();
    assert_eq!(
        NodeIdentity::unseal(&a, &sealed).unwrap().public_key(),
        id.public_key()
    );
    assert!(NodeIdentity::unseal(&b, &sealed).is_err());
    // A sealed identity is not a sealed secret (slots are bound).
    assert!(FleetSecrets::unseal(&a, &sealed).is_err());
}

#[test]
fn a_statement_names_the_identity_and_verifies() {
    let p = MemoryPlatform::new([1; 32]);
    let id = NodeIdentity::generate(&p).unwrap();
    let st = id.statement(&p, [5; 32]).unwrap();
    let s = bkv_transparency::membership::verify_statement(&st).unwrap();
    assert_eq!(s.identity_key, id.public_key());
    assert_eq!(s.signing_key, p.signing_public_key());
    assert_eq!(s.binary_sha256, [5; 32]);
}

#[test]
fn peer_handshake_authenticates_both_sides() {
    let p: SharedPlatform = MemoryPlatform::shared([1; 32]);
    let a = NodeIdentity::generate(&*p).unwrap();
    let b = NodeIdentity::generate(&*p).unwrap();
    let mut i = a.initiate(&p, &b.public_key()).unwrap();
    let mut r = b.respond(&p).unwrap();
    let mut m1 = [0u8; 256];
    let mut m2 = [0u8; 256];
    let mut scratch = [0u8; 256];
    let n = i.write_message(&[], &mut m1).unwrap();
    r.read_message(&m1[..n], &mut scratch).unwrap();
    assert_eq!(r.remote_static(), Some(a.public_key()));
    let n = r.write_message(&[], &mut m2).unwrap();
    i.read_message(&m2[..n], &mut scratch).unwrap();
    // Each side's send key is the other's receive key.
    let (i_send, i_recv) = i.into_link_keys().unwrap();
    let (r_send, r_recv) = r.into_link_keys().unwrap();
    assert_eq!(*i_send, *r_recv);
    assert_eq!(*i_recv, *r_send);
    assert_ne!(*i_send, *i_recv);
    // An initiator pinning the wrong responder key fails.
    let c = NodeIdentity::generate(&*p).unwrap();
    let mut i = a.initiate(&p, &c.public_key()).unwrap();
    let mut r = b.respond(&p).unwrap();
    let n = i.write_message(&[], &mut m1).unwrap();
    assert!(r.read_message(&m1[..n], &mut scratch).is_err());
    // No keys before the handshake is done.
    let i = a.initiate(&p, &b.public_key()).unwrap();
    assert!(i.into_link_keys().is_err());
}
