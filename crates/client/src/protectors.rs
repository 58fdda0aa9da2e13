//! Non-vault protectors of the backup key: the recovery key, and the
//! authenticated manifest that holds their wrapped copies of K next to the
//! backups in storage.
//!
//! Manifest bytes: `encode(SignedManifest { manifest, mac })` where
//! `mac = HMAC-SHA256(HKDF(K, "bkv manifest mac v1"), encode(manifest))`.
//! Storage can delete the manifest (losing those protectors) but any change
//! to it is detected as soon as K is known.

use crate::keys::BackupKey;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Largest manifest accepted.
pub const MAX_MANIFEST: usize = 64 * 1024;
const MAX_SLOTS: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecoveryKeyError {
    #[error("the recovery key has {0} characters; it should have 53 (13 groups of 4 and one check character)")]
    Length(usize),
    #[error(
        "the recovery key contains {0:?} at position {1}, which is not a recovery key character"
    )]
    Character(char, usize),
    #[error("the recovery key has a typo: its check character does not match (look for a mistyped or swapped character)")]
    Checksum,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("protector manifest is malformed")]
    Malformed,
    #[error("protector manifest was modified (authentication failed)")]
    Tampered,
    #[error("no protector of this kind opens the backup key")]
    NoMatch,
    #[error("too many protectors")]
    TooMany,
}

// Crockford base32: no I, L, O, U; check symbols add *~$=U (mod 37).
const ALPHABET: &[u8; 37] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ*~$=U";
const DATA_SYMBOLS: usize = 52; // 260 bits >= 256
const GROUP: usize = 4;

/// A 256-bit recovery key, shown to the user once.
pub struct RecoveryKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(<redacted>)")
    }
}

fn symbol_value(c: char) -> Option<u8> {
    let c = c.to_ascii_uppercase();
    let c = match c {
        'O' => '0',
        'I' | 'L' => '1',
        c => c,
    };
    ALPHABET
        .iter()
        .position(|&a| a as char == c)
        .map(|p| p as u8)
}

/// The check symbol: the key's 52 base-32 digits as a number, mod 37. Since
/// 37 is prime and larger than 32, any single changed digit and any swap of
/// two adjacent different digits changes the remainder, so both are always
/// caught (the difference is d·32^i or d·32^i·31 with 0 < |d| < 32).
fn check_symbol(digits: &[u8]) -> u8 {
    digits
        .iter()
        .fold(0u32, |acc, &d| (acc * 32 + u32::from(d)) % 37) as u8
}

impl RecoveryKey {
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        RecoveryKey(k)
    }

    /// The key as 52 base-32 digits: 4 zero bits, then the 256 key bits, MSB first.
    fn digits(&self) -> Zeroizing<Vec<u8>> {
        let mut bits = Zeroizing::new(vec![false; 4]);
        for &b in self.0.iter() {
            bits.extend((0..8).rev().map(|i| (b >> i) & 1 == 1));
        }
        Zeroizing::new(
            bits.chunks(5)
                .map(|c| c.iter().fold(0u8, |acc, &bit| (acc << 1) | u8::from(bit)))
                .collect(),
        )
    }

    /// Grouped display form: 13 groups of 4 and the check character.
    pub fn display(&self) -> String {
        let d = self.digits();
        let mut s = String::new();
        for (i, &x) in d.iter().enumerate() {
            if i > 0 && i % GROUP == 0 {
                s.push('-');
            }
            s.push(ALPHABET[x as usize] as char);
        }
        s.push('-');
        s.push(ALPHABET[check_symbol(&d) as usize] as char);
        s
    }

    /// Parses a typed key: spaces, dashes and case are ignored; O/I/L read as 0/1/1.
    pub fn parse(input: &str) -> Result<Self, RecoveryKeyError> {
        let chars: Vec<(usize, char)> = input
            .chars()
            .enumerate()
            .filter(|(_, c)| !c.is_whitespace() && *c != '-')
            .collect();
        if chars.len() != DATA_SYMBOLS + 1 {
            return Err(RecoveryKeyError::Length(chars.len()));
        }
        let mut digits = Zeroizing::new(Vec::with_capacity(DATA_SYMBOLS));
        for &(pos, c) in &chars[..DATA_SYMBOLS] {
            match symbol_value(c) {
                Some(v) if v < 32 => digits.push(v),
                _ => return Err(RecoveryKeyError::Character(c, pos + 1)),
            }
        }
        let (pos, c) = chars[DATA_SYMBOLS];
        let check = symbol_value(c).ok_or(RecoveryKeyError::Character(c, pos + 1))?;
        if check != check_symbol(&digits) {
            return Err(RecoveryKeyError::Checksum);
        }
        let mut bits = Zeroizing::new(Vec::with_capacity(DATA_SYMBOLS * 5));
        for &d in digits.iter() {
            bits.extend((0..5).rev().map(|i| (d >> i) & 1 == 1));
        }
        // The 4 padding bits are always zero in a key we issued.
        if bits[..4].iter().any(|&b| b) {
            return Err(RecoveryKeyError::Checksum);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        for (i, byte) in bits[4..].chunks(8).enumerate() {
            key[i] = byte
                .iter()
                .fold(0u8, |acc, &bit| (acc << 1) | u8::from(bit));
        }
        Ok(RecoveryKey(key))
    }

    fn wrapping_key(&self, slot_id: &str) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(slot_id.as_bytes()), self.0.as_ref());
        let mut k = Zeroizing::new([0u8; 32]);
        let _ = hk.expand(b"bkv recovery-key protector v1", k.as_mut());
        k
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotKind {
    RecoveryKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub id: String,
    pub kind: SlotKind,
    pub created_unix: u64,
    /// `nonce[24] || XChaCha20-Poly1305(K)`, AAD = user id || 0 || slot id.
    pub wrapped_key: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u8,
    pub user_id: String,
    /// Identifies K without revealing it: SHA-256("bkv key id v1" || K), first 16 bytes.
    pub key_id: [u8; 16],
    pub slots: Vec<Slot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SignedManifest {
    manifest: Manifest,
    mac: [u8; 32],
}

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

fn aad(user_id: &str, slot_id: &str) -> Vec<u8> {
    let mut a = user_id.as_bytes().to_vec();
    a.push(0);
    a.extend_from_slice(slot_id.as_bytes());
    a
}

impl Manifest {
    pub fn new(user_id: &str, key: &BackupKey) -> Self {
        Manifest {
            version: 1,
            user_id: user_id.to_owned(),
            key_id: key_id(key),
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

    pub fn add_recovery_key(
        &mut self,
        key: &BackupKey,
        rk: &RecoveryKey,
        now: u64,
    ) -> Result<String, ManifestError> {
        if self.slots.len() >= MAX_SLOTS {
            return Err(ManifestError::TooMany);
        }
        let mut id = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let slot_id = format!("rk-{}", hex::encode(id));
        let wk = rk.wrapping_key(&slot_id);
        let cipher = XChaCha20Poly1305::new(wk.as_ref().into());
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: key.expose(),
                    aad: &aad(&self.user_id, &slot_id),
                },
            )
            .map_err(|_| ManifestError::Malformed)?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&ct);
        self.slots.push(Slot {
            id: slot_id.clone(),
            kind: SlotKind::RecoveryKey,
            created_unix: now,
            wrapped_key: wrapped,
        });
        Ok(slot_id)
    }

    /// Finds the recovery-key slot `rk` opens and returns K.
    pub fn open_with_recovery_key(&self, rk: &RecoveryKey) -> Result<BackupKey, ManifestError> {
        for s in self
            .slots
            .iter()
            .filter(|s| s.kind == SlotKind::RecoveryKey)
        {
            let Some((nonce, ct)) = s.wrapped_key.split_at_checked(24) else {
                continue;
            };
            let wk = rk.wrapping_key(&s.id);
            let cipher = XChaCha20Poly1305::new(wk.as_ref().into());
            if let Ok(pt) = cipher.decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &aad(&self.user_id, &s.id),
                },
            ) {
                let pt = Zeroizing::new(pt);
                if let Ok(k) = <[u8; 32]>::try_from(pt.as_slice()) {
                    return Ok(BackupKey::from_bytes(k));
                }
            }
        }
        Err(ManifestError::NoMatch)
    }

    pub fn remove(&mut self, slot_id: &str) -> bool {
        let before = self.slots.len();
        self.slots.retain(|s| s.id != slot_id);
        self.slots.len() != before
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
        /// Every single-character substitution and every swap of two
        /// adjacent different characters is rejected.
        #[test]
        fn every_single_typo_and_adjacent_swap_is_caught(seed in any::<[u8; 32]>()) {
            let k = RecoveryKey(Zeroizing::new(seed));
            let s: Vec<char> = k.display().chars().filter(|c| *c != '-').collect();
            for i in 0..s.len() {
                for &c in ALPHABET.iter() {
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
        m.add_recovery_key(&k, &rk, 1).unwrap();
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
}
