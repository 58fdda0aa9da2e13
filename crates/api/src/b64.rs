//! serde helpers: bytes as standard base64 strings in JSON.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serializer};

/// The most hashes a Merkle proof holds (a tree of up to 2⁶⁴ leaves), checked before decoding.
pub const MAX_PROOF_LEN: usize = 64;

/// Writes bytes as one base64 string.
pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&B64.encode(v))
}

/// Reads bytes from one base64 string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s).map_err(serde::de::Error::custom)
}

/// An optional byte string.
pub mod opt {
    use super::*;

    /// Writes the bytes as a base64 string, or `null`.
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&B64.encode(b)),
            None => s.serialize_none(),
        }
    }

    /// Reads a base64 string, or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| B64.decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A list of 32-byte hashes (a Merkle proof), at most [`MAX_PROOF_LEN`].
pub mod hashes {
    use super::*;

    /// Writes each hash as a base64 string.
    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|h| B64.encode(h)))
    }

    /// Reads at most [`MAX_PROOF_LEN`] base64 strings of 32 bytes each.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        if v.len() > MAX_PROOF_LEN {
            return Err(serde::de::Error::custom("proof too long"));
        }
        v.iter()
            .map(|s| {
                B64.decode(s)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| serde::de::Error::custom("expected a base64 32-byte hash"))
            })
            .collect()
    }
}
