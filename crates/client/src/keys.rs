//! The backup key K and its password wrapping.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The 256-bit backup key. Never printed, zeroized on drop.
pub struct BackupKey(SecretBox<[u8; 32]>);

impl BackupKey {
    /// A fresh random key from the OS RNG.
    pub fn generate() -> Self {
        let mut k = Box::new([0u8; 32]);
        crate::random::OsRng.fill_bytes(k.as_mut());
        BackupKey(SecretBox::new(k))
    }
    /// A key from its 32 bytes (as unwrapped or opened from a slot).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        BackupKey(SecretBox::new(Box::new(b)))
    }
    /// The raw key bytes, for key derivation and encryption; never to be logged or sent.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupKey(<redacted>)")
    }
}

const WRAP_VERSION: u8 = 1;

fn wrapping_key(export_key: &[u8], user_id: &str) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(b"bkv-wrap-v1"), export_key);
    let mut out = Zeroizing::new([0u8; 32]);
    let mut info = b"password protector\0".to_vec();
    info.extend_from_slice(user_id.as_bytes());
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = hk.expand(&info, out.as_mut());
    out
}

/// Wraps K under a key derived from the OPAQUE export key.
/// Layout: `0x01 || nonce(24) || XChaCha20-Poly1305(K)` (73 bytes), AAD = user id.
pub(crate) fn wrap(export_key: &[u8], user_id: &str, key: &BackupKey) -> Vec<u8> {
    let wk = wrapping_key(export_key, user_id);
    let cipher = XChaCha20Poly1305::new(wk.as_ref().into());
    let mut nonce = [0u8; 24];
    crate::random::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: key.expose(),
                aad: user_id.as_bytes(),
            },
        )
        .unwrap_or_default();
    let mut out = vec![WRAP_VERSION];
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens what [`wrap`] produced; `None` for a wrong export key or user id, or malformed input.
pub(crate) fn unwrap(export_key: &[u8], user_id: &str, wrapped: &[u8]) -> Option<BackupKey> {
    let (v, rest) = wrapped.split_first()?;
    if *v != WRAP_VERSION || rest.len() != 24 + 32 + 16 {
        return None;
    }
    let (nonce, ct) = rest.split_at(24);
    let wk = wrapping_key(export_key, user_id);
    let cipher = XChaCha20Poly1305::new(wk.as_ref().into());
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: user_id.as_bytes(),
                },
            )
            .ok()?,
    );
    let arr: [u8; 32] = plain.as_slice().try_into().ok()?;
    Some(BackupKey::from_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_roundtrip_and_debug_redacted() {
        let k = BackupKey::generate();
        let w = wrap(&[1; 64], "alice", &k);
        assert_eq!(w.len(), 73);
        assert_eq!(unwrap(&[1; 64], "alice", &w).unwrap().expose(), k.expose());
        assert!(unwrap(&[2; 64], "alice", &w).is_none());
        assert!(unwrap(&[1; 64], "bob", &w).is_none());
        let dbg = format!("{k:?}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains(&hex::encode(k.expose())));
    }
}
