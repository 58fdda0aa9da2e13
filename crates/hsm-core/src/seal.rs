//! The software sealing format (version 1), used by platforms whose sealing
//! key lives in this process (the insecure software platform, and the test
//! platform): `0x01 || nonce (24) || XChaCha20-Poly1305(plaintext) || tag`,
//! with associated data [`crate::platform::seal_aad`]. A PKCS#11 platform
//! seals inside its token with its own format (version 2, AES-256-GCM).
//!
//! These functions take a key and never return one.

use crate::platform::{seal_aad, PlatformError};
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use zeroize::Zeroizing;

/// First byte of a value sealed in the software format.
pub const SOFTWARE_SEAL_VERSION: u8 = 1;
/// Length in bytes of the XChaCha20-Poly1305 nonce that follows the version byte.
pub const XNONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Seals `plaintext` under `key` with a caller-supplied random nonce.
pub fn seal_xchacha(
    key: &[u8; 32],
    nonce: [u8; XNONCE_LEN],
    slot: &str,
    label: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let aad = seal_aad(slot, label);
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
    let mut out = Vec::with_capacity(1 + XNONCE_LEN + ct.len());
    out.push(SOFTWARE_SEAL_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens a value sealed by [`seal_xchacha`] under the same key, slot and label.
pub fn unseal_xchacha(
    key: &[u8; 32],
    slot: &str,
    label: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, PlatformError> {
    let (version, rest) = sealed.split_first().ok_or(PlatformError::Malformed)?;
    if *version != SOFTWARE_SEAL_VERSION || rest.len() < XNONCE_LEN + TAG_LEN {
        return Err(PlatformError::Malformed);
    }
    let (nonce, ct) = rest.split_at(XNONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: &seal_aad(slot, label),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| PlatformError::Auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_roundtrip_and_binding() {
        let k = [1; 32];
        let s = seal_xchacha(&k, [5; XNONCE_LEN], "record", b"id1", b"hello");
        assert_eq!(
            unseal_xchacha(&k, "record", b"id1", &s).unwrap().as_slice(),
            b"hello"
        );
        assert_eq!(
            unseal_xchacha(&k, "record", b"id2", &s),
            Err(PlatformError::Auth)
        );
        assert_eq!(
            unseal_xchacha(&k, "meta", b"id1", &s),
            Err(PlatformError::Auth)
        );
        assert_eq!(
            unseal_xchacha(&[2; 32], "record", b"id1", &s),
            Err(PlatformError::Auth)
        );
        let mut t = s.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(
            unseal_xchacha(&k, "record", b"id1", &t),
            Err(PlatformError::Auth)
        );
        assert_eq!(
            unseal_xchacha(&k, "record", b"id1", &s[..10]),
            Err(PlatformError::Malformed)
        );
        // Slot and label are separated: ("ab", "c") is not ("a", "bc").
        let s2 = seal_xchacha(&k, [6; XNONCE_LEN], "ab", b"c", b"x");
        assert_eq!(
            unseal_xchacha(&k, "a", b"bc", &s2),
            Err(PlatformError::Auth)
        );
    }
}
