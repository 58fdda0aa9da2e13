//! Sealing: authenticated encryption of everything a node writes to disk.
//!
//! Layout (version 1): `0x01 || nonce (24) || XChaCha20-Poly1305(ciphertext||tag)`,
//! with associated data `"bkv-seal-v1" || purpose || 0x00 || label`. The label
//! (e.g. the record id) binds a sealed value to where it is stored, so the host
//! cannot swap sealed values between keys.

use crate::platform::SealingKey;
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use rand_core::{CryptoRng, RngCore};

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value failed authentication (tampered, or sealed under another key or label)")]
    Auth,
}

fn aad(purpose: &str, label: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(16 + purpose.len() + label.len());
    a.extend_from_slice(b"bkv-seal-v1");
    a.extend_from_slice(purpose.as_bytes());
    a.push(0);
    a.extend_from_slice(label);
    a
}

pub fn seal<R: RngCore + CryptoRng>(
    key: &SealingKey,
    rng: &mut R,
    purpose: &str,
    label: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let aad = aad(purpose, label);
    // Encryption with a valid key and in-memory buffers cannot fail.
    let ct = match cipher.encrypt(
        XNonce::from_slice(&nonce),
        Payload {
            msg: plaintext,
            aad: &aad,
        },
    ) {
        Ok(ct) => ct,
        Err(_) => unreachable!("XChaCha20-Poly1305 encryption failed"),
    };
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

pub fn unseal(
    key: &SealingKey,
    purpose: &str,
    label: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    let (version, rest) = sealed.split_first().ok_or(SealError::Malformed)?;
    if *version != SEAL_VERSION || rest.len() < NONCE_LEN + 16 {
        return Err(SealError::Malformed);
    }
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: &aad(purpose, label),
            },
        )
        .map_err(|_| SealError::Auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_roundtrip_and_binding() {
        let k = SealingKey([1; 32]);
        let mut rng = rand_core::OsRng;
        let s = seal(&k, &mut rng, "record", b"id1", b"hello");
        assert_eq!(unseal(&k, "record", b"id1", &s).unwrap(), b"hello");
        assert_eq!(unseal(&k, "record", b"id2", &s), Err(SealError::Auth));
        assert_eq!(unseal(&k, "meta", b"id1", &s), Err(SealError::Auth));
        assert_eq!(
            unseal(&SealingKey([2; 32]), "record", b"id1", &s),
            Err(SealError::Auth)
        );
        let mut t = s.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(unseal(&k, "record", b"id1", &t), Err(SealError::Auth));
        assert_eq!(
            unseal(&k, "record", b"id1", &s[..10]),
            Err(SealError::Malformed)
        );
    }
}
