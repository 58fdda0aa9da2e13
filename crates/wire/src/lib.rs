//! Shared wire types and canonical codecs of bkv.
//!
//! Everything that crosses a process boundary or is stored is encoded with
//! [`encode`] / [`decode`]: a version byte followed by `postcard` bytes. Decoding
//! enforces a size limit before parsing and rejects trailing bytes, so every
//! value has exactly one accepted encoding. Layouts are documented in
//! `docs/formats.md`.
//!
//! Its surface is curated by protocol rather than flattened: each public module is one
//! protocol's messages ([`vault`]: client ↔ core inside Noise; [`node`]: relay ↔ node;
//! [`admin`]: operator ↔ node), and the crate root holds the codec and what all three share.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod admin;
pub mod node;
pub mod vault;

use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

/// Version byte prefixed to every encoded value. Bumped on any layout change.
pub const CODEC_VERSION: u8 = 1;

/// Largest Noise message (the Noise spec limit).
pub const MAX_NOISE_MESSAGE: usize = 65_535;

/// Largest frame on the frontend <-> node link: a Noise message plus routing fields.
pub const MAX_NODE_FRAME: usize = MAX_NOISE_MESSAGE + 1024;

/// Longest accepted user id (bytes).
pub const MAX_USER_ID: usize = 128;

/// The OPAQUE cipher suite of bkv (RFC 9807): ristretto255 OPRF and 3DH with
/// SHA-512, Argon2id as the key stretching function (run by the client only).
pub struct OpaqueSuite;

impl opaque_ke::CipherSuite for OpaqueSuite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

/// Noise protocol name of client sessions: NK (client anonymous, fleet key
/// known to the client in advance).
pub const NOISE_PATTERN: &str = "Noise_NK_25519_ChaChaPoly_SHA256";
/// Noise prologue: binds the session to this protocol and version.
pub const NOISE_PROLOGUE: &[u8] = b"bkv session v1";
/// OPAQUE context string (RFC 9807 `context`), shared by client and server.
pub const OPAQUE_CONTEXT: &[u8] = b"bkv opaque v1";

/// Why [`decode`] (or another decoder of this crate) refused bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The input is longer than the caller's limit (checked before parsing).
    #[error("message too large: {len} bytes (limit {limit})")]
    TooLarge {
        /// The input's length, in bytes.
        len: usize,
        /// The limit it exceeds, in bytes.
        limit: usize,
    },
    /// The input has no bytes, not even the version byte.
    #[error("empty message")]
    Empty,
    /// The first byte (given) is not the expected encoding version.
    #[error("unsupported encoding version {0}")]
    Version(u8),
    /// The bytes after the version byte are not a valid postcard value of the type.
    #[error("malformed message")]
    Malformed,
    /// Bytes remain after the value, so the input is not its canonical encoding.
    #[error("trailing bytes after message")]
    Trailing,
}

/// Canonical encoding: version byte then postcard.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![CODEC_VERSION];
    // postcard serialisation of our own types cannot fail (no maps with
    // non-serialisable keys, no io); an error here is a programming bug.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard encoding failed: {e}"),
    }
}

/// Decodes a value produced by [`encode`], refusing anything over `limit` bytes,
/// an unknown version, malformed bytes or trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if *version != CODEC_VERSION {
        return Err(CodecError::Version(*version));
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|_| CodecError::Malformed)?;
    if !rest.is_empty() {
        return Err(CodecError::Trailing);
    }
    Ok(value)
}

/// Encoding version `version` of a value whose layout changed: `version || postcard(value)`.
/// Readers of such a value look at [`encoding_version`] first and decode each version with its
/// own type ([`decode_as`]); version 1 is [`encode`].
pub fn encode_as<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    match postcard::to_extend(value, vec![version]) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard encoding failed: {e}"),
    }
}

/// The version byte of an encoded value (size limit checked first).
pub fn encoding_version(bytes: &[u8], limit: usize) -> Result<u8, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    bytes.first().copied().ok_or(CodecError::Empty)
}

/// Decodes a value of encoding version `version` ([`encode_as`]), with [`decode`]'s checks.
pub fn decode_as<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
    version: u8,
) -> Result<T, CodecError> {
    let found = encoding_version(bytes, limit)?;
    if found != version {
        return Err(CodecError::Version(found));
    }
    let body = bytes.get(1..).unwrap_or_default();
    let (value, rest) = postcard::take_from_bytes(body).map_err(|_| CodecError::Malformed)?;
    if !rest.is_empty() {
        return Err(CodecError::Trailing);
    }
    Ok(value)
}

/// The value at the start of an encoded value (after its version byte), whatever follows: a
/// layout whose first field is its version reads it here before choosing the type to decode.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    encoding_version(bytes, limit)?;
    let body = bytes.get(1..).unwrap_or_default();
    postcard::take_from_bytes(body)
        .map(|(v, _)| v)
        .map_err(|_| CodecError::Malformed)
}

/// Record id: the vault key of a user's record, bound to the authenticated
/// user id. Domain-separated SHA-256 so ids of other purposes never collide.
pub fn record_id(user_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"bkv/record-id/v1\0");
    h.update(user_id.as_bytes());
    h.finalize().into()
}

/// Checks a user id: 1..=128 bytes of `[A-Za-z0-9._@+-]`. Keeps ids printable
/// and unambiguous in logs and storage paths.
pub fn validate_user_id(user_id: &str) -> Result<(), &'static str> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID {
        return Err("user id must be 1 to 128 characters");
    }
    if !user_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
    {
        return Err("user id may contain only letters, digits and . _ @ + -");
    }
    Ok(())
}

/// Lower-case hex of a 32-byte key, the form used in configs and APIs.
pub fn key_to_hex(key: &[u8; 32]) -> String {
    hex::encode(key)
}

/// Parses a 32-byte key from hex.
pub fn key_from_hex(s: &str) -> Result<[u8; 32], &'static str> {
    let v = hex::decode(s.trim()).map_err(|_| "not hex")?;
    v.try_into().map_err(|_| "key must be 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{SessionHello, VaultRequest};
    use proptest::prelude::*;

    #[test]
    fn rejects_oversize_version_trailing() {
        let m = encode(&VaultRequest::Status);
        assert_eq!(
            decode::<VaultRequest>(&m, 1),
            Err(CodecError::TooLarge {
                len: m.len(),
                limit: 1
            })
        );
        let mut bad = m.clone();
        bad[0] = 9;
        assert_eq!(
            decode::<VaultRequest>(&bad, 100),
            Err(CodecError::Version(9))
        );
        let mut long = m.clone();
        long.push(0);
        assert_eq!(
            decode::<VaultRequest>(&long, 100),
            Err(CodecError::Trailing)
        );
        assert_eq!(decode::<VaultRequest>(&[], 100), Err(CodecError::Empty));
    }

    #[test]
    fn user_ids() {
        assert!(validate_user_id("alice@example.com").is_ok());
        assert!(validate_user_id("").is_err());
        assert!(validate_user_id("a/b").is_err());
        assert!(validate_user_id(&"a".repeat(129)).is_err());
        assert_ne!(record_id("a"), record_id("b"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<VaultRequest>(&bytes, 4096);
            let _ = decode::<crate::vault::VaultResponse>(&bytes, 4096);
            let _ = decode::<crate::node::NodeRequest>(&bytes, 4096);
            let _ = decode::<crate::node::NodeResponse>(&bytes, 4096);
            let _ = decode::<SessionHello>(&bytes, 4096);
        }

        #[test]
        fn roundtrip_is_canonical(user in "[a-z0-9]{1,40}", upload in proptest::collection::vec(any::<u8>(), 0..300), limit in 1u32..100) {
            let reqs = vec![
                VaultRequest::Status,
                VaultRequest::RegisterFinish { upload: upload.clone(), wrapped_key: upload.clone(), guess_limit: limit, confirm_hash: [7; 32] },
                VaultRequest::LoginStart { credential_request: upload.clone() },
            ];
            for r in reqs {
                let e = encode(&r);
                let d: VaultRequest = decode(&e, 1 << 20).unwrap();
                prop_assert_eq!(encode(&d), e);
            }
            let h = SessionHello { version: 1, user_id: user };
            let e = encode(&h);
            prop_assert_eq!(decode::<SessionHello>(&e, 1024).unwrap(), h);
        }
    }
}
