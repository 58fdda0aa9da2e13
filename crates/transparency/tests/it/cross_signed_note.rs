//! Cross-test our C2SP signed-note / tlog-checkpoint code against Cloudflare's
//! independent implementations (`signed_note`, `tlog_tiles`): each side opens
//! and verifies the other's checkpoints, and verifier keys are identical.

use bkv_transparency::note::{self, Checkpoint};
use ed25519_dalek::SigningKey;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};

#[test]
fn our_checkpoints_verify_and_parse_with_signed_note_and_tlog_tiles() {
    let key = SigningKey::from_bytes(&[42; 32]);
    let vk = key.verifying_key();
    assert_eq!(
        note::verifier_key("bkv-auditor", &vk),
        signed_note::new_ed25519_verifier_key("bkv-auditor", &vk)
    );
    for size in [0u64, 1, 2, 77, 1 << 40] {
        let cp = Checkpoint {
            origin: "bkv-auditor/dev".into(),
            size,
            root: [size as u8; 32],
        };
        let signed = cp.sign("bkv-auditor", &key).unwrap();
        let parsed = Note::from_bytes(signed.as_bytes()).unwrap();
        let verifier = StandardVerifier::new(&note::verifier_key("bkv-auditor", &vk)).unwrap();
        let (verified, _) = parsed
            .verify(&VerifierList::new(vec![Box::new(verifier)]))
            .unwrap();
        assert_eq!(verified.len(), 1);
        let theirs = tlog_tiles::Checkpoint::from_bytes(parsed.text()).unwrap();
        assert_eq!(theirs.origin(), "bkv-auditor/dev");
        assert_eq!(theirs.size(), size);
        assert_eq!(theirs.hash().0, cp.root);
    }
}

#[test]
fn their_signed_checkpoints_open_with_ours_including_cosignatures() {
    let (skey, vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, "witness.example");
    let (skey2, _) = signed_note::generate_key(&mut rand::rngs::OsRng, "other.example");
    let cp = Checkpoint {
        origin: "bkv-auditor/dev".into(),
        size: 5,
        root: [7; 32],
    };
    let mut n = Note::new(cp.text().as_bytes(), &[]).unwrap();
    let s1 = StandardSigner::new(&skey).unwrap();
    let s2 = StandardSigner::new(&skey2).unwrap();
    n.add_sigs(&[&s2, &s1]).unwrap();
    let bytes = String::from_utf8(n.to_bytes()).unwrap();
    let (name, key) = note::parse_verifier_key(&vkey).unwrap();
    assert_eq!(Checkpoint::open(&bytes, &name, &key).unwrap(), cp);
    // Tampered text fails with ours too.
    let tampered = bytes.replacen("\n5\n", "\n6\n", 1);
    assert!(Checkpoint::open(&tampered, &name, &key).is_err());
}
