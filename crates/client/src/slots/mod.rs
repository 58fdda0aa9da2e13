//! Non-vault protectors of the backup key (recovery keys, passkeys) and the
//! authenticated manifest that holds their slots next to the backups.
//!
//! Each slot has an X25519 key pair whose secret is derived from the
//! protector; K is sealed to the slot's public key. So a new K can be sealed
//! to every remaining slot without the protectors being present (rotation).
//!
//! Manifest bytes: `encode(SignedManifest { manifest, mac })` where
//! `mac = HMAC-SHA256(HKDF(K, "bkv manifest mac v1"), encode(manifest))`.
//! Storage can delete a manifest (losing those protectors) but any change
//! to it is detected as soon as K is known.

use crate::keys::BackupKey;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use hkdf::Hkdf;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

mod recovery_key;
pub use recovery_key::{RecoveryKey, RecoveryKeyError};

/// Largest manifest accepted.
pub(crate) const MAX_MANIFEST: usize = 64 * 1024;
const MAX_SLOTS: usize = 32;

/// Why a protector manifest or one of its slots cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The manifest or a slot envelope does not decode, or has an unknown version or over 32 slots.
    #[error("protector manifest is malformed")]
    Malformed,
    /// The manifest fails authentication under K or names another key or user: storage changed it.
    #[error("protector manifest was modified (authentication failed)")]
    Tampered,
    /// The protector opens no slot in the manifest.
    #[error("no protector of this kind opens the backup key")]
    NoMatch,
    /// The manifest already holds the most slots allowed (32).
    #[error("too many protectors")]
    TooMany,
}

/// A protector's X25519 secret for one slot. Derived from the protector
/// (recovery key, or passkey PRF output + relying-party share); never stored.
pub struct SlotSecret(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SlotSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotSecret(<redacted>)")
    }
}

impl SlotSecret {
    fn derive(ikm: &[u8], slot_id: &str, info: &[u8]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(slot_id.as_bytes()), ikm);
        let mut k = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = hk.expand(info, k.as_mut());
        SlotSecret(k)
    }

    /// Passkey slots: HKDF(PRF output || relying-party share, salt = slot id).
    pub fn from_passkey(prf_output: &[u8; 32], rp_share: &[u8; 32], slot_id: &str) -> Self {
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(prf_output);
        ikm[32..].copy_from_slice(rp_share);
        SlotSecret::derive(ikm.as_ref(), slot_id, b"bkv passkey slot v1")
    }

    /// The X25519 public key of this secret (what the slot stores).
    pub fn public_key(&self) -> [u8; 32] {
        MontgomeryPoint::mul_base_clamped(*self.0).to_bytes()
    }
}

/// The kind of protector a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotKind {
    /// A recovery key (slot ids `rk-…`).
    RecoveryKey,
    /// A passkey with the PRF extension (slot ids `pk-…`).
    Passkey,
}

impl SlotKind {
    /// The name users see: `recovery-key` or `passkey`.
    pub fn name(self) -> &'static str {
        match self {
            SlotKind::RecoveryKey => "recovery-key",
            SlotKind::Passkey => "passkey",
        }
    }
}

/// What a client needs to ask an authenticator for a passkey slot's PRF output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyParams {
    /// The relying party the passkey is registered with (the app's WebAuthn origin).
    pub rp_id: String,
    /// The credential to ask the authenticator for (raw WebAuthn credential id).
    pub credential_id: Vec<u8>,
    /// PRF input (`eval.first`), random per slot.
    pub prf_salt: [u8; 32],
}

/// One protector's slot in a manifest: K sealed to the protector's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// `rk-` or `pk-` and 16 random hex digits; envelopes and slot secrets are bound to it.
    pub id: String,
    /// Which kind of protector opens the slot.
    pub kind: SlotKind,
    /// When the slot was added, in seconds since the Unix epoch.
    pub created_unix: u64,
    /// The slot's X25519 public key: rotation re-seals a new K to it without
    /// needing the protector itself.
    pub public_key: [u8; 32],
    /// `ephemeral X25519 public (32) || nonce (24) || XChaCha20-Poly1305(K)`.
    pub envelope: Vec<u8>,
    /// How to get a passkey slot's PRF output; `None` for a recovery key.
    pub passkey: Option<PasskeyParams>,
}

/// The slots of one backup key: `protectors/<key id>.bin`, authenticated under that key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version; only 1 is accepted.
    pub version: u8,
    /// The user the manifest belongs to; every envelope is bound to it.
    pub user_id: String,
    /// Identifies K without revealing it: SHA-256("bkv key id v1" || K), first 16 bytes.
    pub key_id: [u8; 16],
    /// Increases with every key rotation; the newest manifest is tried first.
    pub generation: u64,
    /// The slots, at most 32.
    pub slots: Vec<Slot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SignedManifest {
    manifest: Manifest,
    mac: [u8; 32],
}

/// K's public id: the first 16 bytes of SHA-256("bkv key id v1" || K).
pub fn key_id(key: &BackupKey) -> [u8; 16] {
    let d = Sha256::new()
        .chain_update(b"bkv key id v1")
        .chain_update(key.expose())
        .finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

fn mac(key: &BackupKey, m: &Manifest) -> [u8; 32] {
    use hmac::Mac;
    let hk = Hkdf::<Sha256>::new(None, key.expose());
    let mut mk = Zeroizing::new([0u8; 32]);
    let _ = hk.expand(b"bkv manifest mac v1", mk.as_mut());
    let mut h = <hmac::Hmac<Sha256> as Mac>::new_from_slice(mk.as_ref())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    h.update(&bkv_wire::encode(m));
    h.finalize().into_bytes().into()
}

/// Everything an envelope is bound to: a sealed K opens only in the slot,
/// for the user and for the key id it was made for.
fn envelope_context(
    eph: &[u8; 32],
    slot_pk: &[u8; 32],
    user_id: &str,
    slot_id: &str,
    key_id: &[u8; 16],
) -> Vec<u8> {
    let mut c = b"bkv slot envelope v1\0".to_vec();
    c.extend_from_slice(eph);
    c.extend_from_slice(slot_pk);
    c.extend_from_slice(key_id);
    c.extend_from_slice(user_id.as_bytes());
    c.push(0);
    c.extend_from_slice(slot_id.as_bytes());
    c
}

fn envelope_cipher(shared: &MontgomeryPoint, context: &[u8]) -> XChaCha20Poly1305 {
    let hk = Hkdf::<Sha256>::new(None, shared.as_bytes());
    let mut k = Zeroizing::new([0u8; 32]);
    let _ = hk.expand(context, k.as_mut());
    XChaCha20Poly1305::new(k.as_ref().into())
}

/// Seals K to a slot's public key (ephemeral-static X25519, HKDF-SHA256,
/// XChaCha20-Poly1305).
fn seal_envelope(
    key: &BackupKey,
    slot_pk: &[u8; 32],
    user_id: &str,
    slot_id: &str,
) -> Result<Vec<u8>, ManifestError> {
    let mut eph_sk = Zeroizing::new([0u8; 32]);
    crate::random::OsRng.fill_bytes(eph_sk.as_mut());
    let eph = MontgomeryPoint::mul_base_clamped(*eph_sk).to_bytes();
    let shared = MontgomeryPoint(*slot_pk).mul_clamped(*eph_sk);
    if shared.to_bytes() == [0u8; 32] {
        return Err(ManifestError::Malformed); // low-order slot key
    }
    let ctx = envelope_context(&eph, slot_pk, user_id, slot_id, &key_id(key));
    let mut nonce = [0u8; 24];
    crate::random::OsRng.fill_bytes(&mut nonce);
    let ct = envelope_cipher(&shared, &ctx)
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: key.expose(),
                aad: &ctx,
            },
        )
        .map_err(|_| ManifestError::Malformed)?;
    let mut out = eph.to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn now_unix() -> u64 {
    crate::clock::now_unix()
}

/// A fresh slot id: kind prefix and 64 random bits.
pub(crate) fn new_slot_id(kind: SlotKind) -> String {
    let mut id = [0u8; 8];
    crate::random::OsRng.fill_bytes(&mut id);
    let prefix = match kind {
        SlotKind::RecoveryKey => "rk",
        SlotKind::Passkey => "pk",
    };
    format!("{prefix}-{}", hex::encode(id))
}

impl Manifest {
    /// An empty manifest (generation 1) of `user_id` for `key`.
    pub fn new(user_id: &str, key: &BackupKey) -> Self {
        Manifest {
            version: 1,
            user_id: user_id.to_owned(),
            key_id: key_id(key),
            generation: 1,
            slots: Vec::new(),
        }
    }

    /// Encodes and authenticates the manifest under K.
    pub fn seal(&self, key: &BackupKey) -> Vec<u8> {
        bkv_wire::encode(&SignedManifest {
            manifest: self.clone(),
            mac: mac(key, self),
        })
    }

    /// Decodes without authenticating (for listing, and to find a slot that
    /// yields K; [`Manifest::verify`] must follow before anything is trusted).
    pub fn decode_unverified(bytes: &[u8]) -> Result<(Self, [u8; 32]), ManifestError> {
        let s: SignedManifest =
            bkv_wire::decode(bytes, MAX_MANIFEST).map_err(|_| ManifestError::Malformed)?;
        if s.manifest.version != 1 || s.manifest.slots.len() > MAX_SLOTS {
            return Err(ManifestError::Malformed);
        }
        Ok((s.manifest, s.mac))
    }

    /// Checks the MAC (constant time) and that the manifest is for this K.
    pub fn verify(&self, tag: &[u8; 32], key: &BackupKey) -> Result<(), ManifestError> {
        let ok = mac(key, self).ct_eq(tag).into() && self.key_id == key_id(key);
        if ok {
            Ok(())
        } else {
            Err(ManifestError::Tampered)
        }
    }

    /// Adds a slot whose secret is `secret` (the caller derived it from the
    /// protector for `slot_id`) and seals K into it.
    pub fn add_slot(
        &mut self,
        key: &BackupKey,
        kind: SlotKind,
        slot_id: &str,
        secret: &SlotSecret,
        passkey: Option<PasskeyParams>,
    ) -> Result<(), ManifestError> {
        if self.slots.len() >= MAX_SLOTS {
            return Err(ManifestError::TooMany);
        }
        let public_key = secret.public_key();
        let envelope = seal_envelope(key, &public_key, &self.user_id, slot_id)?;
        self.slots.push(Slot {
            id: slot_id.to_owned(),
            kind,
            created_unix: now_unix(),
            public_key,
            envelope,
            passkey,
        });
        Ok(())
    }

    /// Adds a recovery-key slot and returns its id.
    pub fn add_recovery_key(
        &mut self,
        key: &BackupKey,
        rk: &RecoveryKey,
    ) -> Result<String, ManifestError> {
        let id = new_slot_id(SlotKind::RecoveryKey);
        self.add_slot(key, SlotKind::RecoveryKey, &id, &rk.slot_secret(&id), None)?;
        Ok(id)
    }

    /// Opens one slot with its secret.
    pub fn open_slot(&self, slot: &Slot, secret: &SlotSecret) -> Result<BackupKey, ManifestError> {
        if secret.public_key().ct_eq(&slot.public_key).unwrap_u8() != 1 {
            return Err(ManifestError::NoMatch);
        }
        let (eph, rest) = slot
            .envelope
            .split_first_chunk::<32>()
            .ok_or(ManifestError::Malformed)?;
        let (nonce, ct) = rest
            .split_first_chunk::<24>()
            .ok_or(ManifestError::Malformed)?;
        let shared = MontgomeryPoint(*eph).mul_clamped(*secret.0);
        let ctx = envelope_context(eph, &slot.public_key, &self.user_id, &slot.id, &self.key_id);
        let pt = envelope_cipher(&shared, &ctx)
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &ctx })
            .map_err(|_| ManifestError::NoMatch)?;
        let pt = Zeroizing::new(pt);
        let k = <[u8; 32]>::try_from(pt.as_slice()).map_err(|_| ManifestError::Malformed)?;
        Ok(BackupKey::from_bytes(k))
    }

    /// Finds the recovery-key slot `rk` opens and returns K.
    pub fn open_with_recovery_key(&self, rk: &RecoveryKey) -> Result<BackupKey, ManifestError> {
        self.slots
            .iter()
            .filter(|s| s.kind == SlotKind::RecoveryKey)
            .find_map(|s| self.open_slot(s, &rk.slot_secret(&s.id)).ok())
            .ok_or(ManifestError::NoMatch)
    }

    /// The slot with id `slot_id`, if any.
    pub fn slot(&self, slot_id: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.id == slot_id)
    }

    /// The manifest for a new key: every slot except `drop`, re-sealed to its
    /// public key, so rotation needs no protector but the one that unlocked.
    pub fn rotated(&self, new_key: &BackupKey, drop: &[&str]) -> Result<Manifest, ManifestError> {
        let mut m = Manifest {
            version: 1,
            user_id: self.user_id.clone(),
            key_id: key_id(new_key),
            generation: self.generation.saturating_add(1),
            slots: Vec::new(),
        };
        for s in self.slots.iter().filter(|s| !drop.contains(&s.id.as_str())) {
            let envelope = seal_envelope(new_key, &s.public_key, &self.user_id, &s.id)?;
            m.slots.push(Slot {
                envelope,
                ..s.clone()
            });
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_parse_roundtrip_and_tolerance() {
        for _ in 0..50 {
            let k = RecoveryKey::generate();
            let s = k.display();
            assert_eq!(s.len(), 53 + 13);
            assert_eq!(*RecoveryKey::parse(&s).unwrap().0, *k.0);
            let loose = s.to_lowercase().replace('-', " ");
            assert_eq!(*RecoveryKey::parse(&loose).unwrap().0, *k.0);
            let squashed = s.replace('-', "");
            assert_eq!(*RecoveryKey::parse(&squashed).unwrap().0, *k.0);
        }
        assert_eq!(
            RecoveryKey::parse("ABC").unwrap_err(),
            RecoveryKeyError::Length(3)
        );
        assert!(format!("{:?}", RecoveryKey::generate()).contains("redacted"));
    }

    #[test]
    fn a_typo_report_is_specific() {
        let s = RecoveryKey::generate().display();
        let mut t: Vec<char> = s.chars().collect();
        t[5] = if t[5] == 'A' { 'B' } else { 'A' };
        let typed: String = t.into_iter().collect();
        assert_eq!(
            RecoveryKey::parse(&typed).unwrap_err(),
            RecoveryKeyError::Checksum
        );
        let bad = format!("{}!{}", &s[..3], &s[4..]);
        assert_eq!(
            RecoveryKey::parse(&bad).unwrap_err(),
            RecoveryKeyError::Character('!', 4)
        );
    }

    proptest! {
        /// Arbitrary bytes never panic the manifest decoder; a sealed
        /// manifest decodes back to itself.
        #[test]
        fn manifest_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), n in 0usize..4) {
            let _ = Manifest::decode_unverified(&bytes);
            let k = BackupKey::generate();
            let mut m = Manifest::new("u", &k);
            for _ in 0..n {
                m.add_recovery_key(&k, &RecoveryKey::generate()).unwrap();
            }
            let (back, tag) = Manifest::decode_unverified(&m.seal(&k)).unwrap();
            prop_assert_eq!(&back, &m);
            prop_assert!(back.verify(&tag, &k).is_ok());
        }

        /// Every single-character substitution and every swap of two
        /// adjacent different characters is rejected.
        #[test]
        fn every_single_typo_and_adjacent_swap_is_caught(seed in any::<[u8; 32]>()) {
            let k = RecoveryKey(Zeroizing::new(seed));
            let s: Vec<char> = k.display().chars().filter(|c| *c != '-').collect();
            for i in 0..s.len() {
                for &c in recovery_key::ALPHABET.iter() {
                    let c = c as char;
                    if c == s[i] {
                        continue;
                    }
                    let mut t = s.clone();
                    t[i] = c;
                    let typed: String = t.iter().collect();
                    prop_assert!(RecoveryKey::parse(&typed).is_err(), "typo at {} accepted", i);
                }
                if i + 1 < s.len() && s[i] != s[i + 1] {
                    let mut t = s.clone();
                    t.swap(i, i + 1);
                    let typed: String = t.iter().collect();
                    prop_assert!(RecoveryKey::parse(&typed).is_err(), "swap at {} accepted", i);
                }
            }
        }
    }

    #[test]
    fn manifest_opens_with_the_right_key_and_detects_tampering() {
        let k = BackupKey::generate();
        let rk = RecoveryKey::generate();
        let mut m = Manifest::new("alice", &k);
        m.add_recovery_key(&k, &rk).unwrap();
        let bytes = m.seal(&k);
        let (m2, tag) = Manifest::decode_unverified(&bytes).unwrap();
        let k2 = m2.open_with_recovery_key(&rk).unwrap();
        assert_eq!(k2.expose(), k.expose());
        m2.verify(&tag, &k2).unwrap();
        assert_eq!(
            m2.open_with_recovery_key(&RecoveryKey::generate())
                .unwrap_err(),
            ManifestError::NoMatch
        );
        // Any modified manifest: a removed or added slot, another user id.
        let mut m3 = m2.clone();
        m3.slots.clear();
        assert_eq!(m3.verify(&tag, &k).unwrap_err(), ManifestError::Tampered);
        let mut m4 = m2.clone();
        m4.user_id = "bob".into();
        assert_eq!(m4.verify(&tag, &k).unwrap_err(), ManifestError::Tampered);
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        let (m5, tag5) = Manifest::decode_unverified(&flipped).unwrap();
        assert_eq!(m5.verify(&tag5, &k).unwrap_err(), ManifestError::Tampered);
        assert!(Manifest::decode_unverified(&[1, 2, 3]).is_err());
    }

    #[test]
    fn passkey_slot_needs_the_right_prf_output_and_share() {
        let k = BackupKey::generate();
        let mut m = Manifest::new("alice", &k);
        let id = new_slot_id(SlotKind::Passkey);
        let (prf, share) = ([7u8; 32], [9u8; 32]);
        m.add_slot(
            &k,
            SlotKind::Passkey,
            &id,
            &SlotSecret::from_passkey(&prf, &share, &id),
            None,
        )
        .unwrap();
        let slot = m.slot(&id).unwrap();
        let good = m
            .open_slot(slot, &SlotSecret::from_passkey(&prf, &share, &id))
            .unwrap();
        assert_eq!(good.expose(), k.expose());
        let mut wrong_prf = prf;
        wrong_prf[0] ^= 1;
        for secret in [
            SlotSecret::from_passkey(&wrong_prf, &share, &id),
            SlotSecret::from_passkey(&prf, &[0u8; 32], &id),
            SlotSecret::from_passkey(&prf, &share, "pk-other"),
        ] {
            assert_eq!(
                m.open_slot(slot, &secret).unwrap_err(),
                ManifestError::NoMatch
            );
        }
    }

    #[test]
    fn rotation_reseals_remaining_slots_and_drops_removed_ones() {
        let k = BackupKey::generate();
        let (rk1, rk2) = (RecoveryKey::generate(), RecoveryKey::generate());
        let mut m = Manifest::new("alice", &k);
        let id1 = m.add_recovery_key(&k, &rk1).unwrap();
        m.add_recovery_key(&k, &rk2).unwrap();
        let k2 = BackupKey::generate();
        let m2 = m.rotated(&k2, &[id1.as_str()]).unwrap();
        assert_eq!(m2.generation, m.generation + 1);
        assert_eq!(m2.key_id, key_id(&k2));
        assert_eq!(
            m2.open_with_recovery_key(&rk2).unwrap().expose(),
            k2.expose()
        );
        assert_eq!(
            m2.open_with_recovery_key(&rk1).unwrap_err(),
            ManifestError::NoMatch
        );
        // An envelope moved from the new manifest into the old one (same
        // slot, different key id) does not open.
        let mut spliced = m.clone();
        spliced.slots[1].envelope = m2.slots[0].envelope.clone();
        assert!(spliced.open_with_recovery_key(&rk2).is_err());
    }
}
