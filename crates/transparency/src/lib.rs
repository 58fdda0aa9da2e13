//! Fleet-key transparency for bkv: validation bundles co-signed by an
//! independent auditor and the operator, the auditor's append-only Merkle log
//! (RFC 9162 hashing), C2SP signed-note checkpoints, and the client-side checks
//! that make a forked or rewritten log detectable.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod evidence;
pub mod membership;
pub mod merkle;
pub mod note;

/// serde helpers: bytes as standard base64 strings in JSON.
pub mod b64 {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }

    pub mod opt {
        use super::*;
        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => s.serialize_some(&B64.encode(b)),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| B64.decode(s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }

    pub mod hashes {
        use super::*;
        pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|h| B64.encode(h)))
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
            let v = Vec::<String>::deserialize(d)?;
            if v.len() > crate::merkle::MAX_PROOF_LEN {
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
}
