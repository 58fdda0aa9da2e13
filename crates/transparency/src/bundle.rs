//! Validation bundles: the fleet's public keys for an epoch, signed by the
//! independent auditor and counter-signed by the operator, and the client's
//! verification of a bundle delivered over the air.

use crate::merkle::{self, Hash};
use crate::note::Checkpoint;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest encoded bundle.
pub const MAX_BUNDLE: usize = 16 * 1024;
/// Version 2 adds the fleets still serving during a rotation.
pub const BUNDLE_VERSION: u8 = 2;
/// Most fleets a bundle lists besides the preferred one.
pub const MAX_PREVIOUS_FLEETS: usize = 4;

/// What a key a bundle lists is for (encoded by variant index: 0 NoiseStatic, 1 NodeIdentity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRole {
    /// The fleet's Noise static key, pinned by clients for sessions.
    NoiseStatic,
    /// A node's identity key (peer links, deployment evidence).
    NodeIdentity,
}

/// One public key a bundle lists for a fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetKey {
    /// What the key is for.
    pub role: KeyRole,
    /// The X25519 public key.
    pub key: [u8; 32],
}

/// A fleet a bundle lists besides the preferred one: still serving the
/// records that have not moved yet during a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFleet {
    /// Id of the fleet.
    pub fleet_id: String,
    /// The fleet's public keys; verification needs its Noise static key.
    pub keys: Vec<FleetKey>,
    /// SHA-256 of the fleet's `evidence.json` (zero if none).
    pub evidence_digest: [u8; 32],
}

impl BundleFleet {
    /// The fleet's Noise static key, if the bundle lists one.
    pub fn noise_key(&self) -> Option<[u8; 32]> {
        noise_key_of(&self.keys)
    }
}

fn noise_key_of(keys: &[FleetKey]) -> Option<[u8; 32]> {
    keys.iter()
        .find(|k| k.role == KeyRole::NoiseStatic)
        .map(|k| k.key)
}

/// Canonical bytes: `bkv_wire::encode(Bundle)`. The top-level fleet is the
/// preferred one: new records go there. `previous` lists fleets still
/// serving records that have not moved yet (a rotation in progress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Layout version, [`BUNDLE_VERSION`] (decoding refuses any other).
    pub version: u8,
    /// The auditor-log namespace the bundle is for.
    pub namespace: String,
    /// Strictly increasing per namespace.
    pub epoch: u64,
    /// Id of the preferred fleet.
    pub fleet_id: String,
    /// The preferred fleet's public keys.
    pub keys: Vec<FleetKey>,
    /// Validity window, Unix seconds, inclusive start, exclusive end.
    pub not_before: u64,
    /// End of the validity window (Unix seconds, exclusive).
    pub not_after: u64,
    /// SHA-256 of the fleet's deployment evidence (zero if none).
    pub evidence_digest: [u8; 32],
    /// Older fleets still serving (at most [`MAX_PREVIOUS_FLEETS`]).
    pub previous: Vec<BundleFleet>,
}

impl Bundle {
    /// The canonical bytes, `bkv_wire::encode(self)`: what is signed, logged and served.
    pub fn encode(&self) -> Vec<u8> {
        bkv_wire::encode(self)
    }

    /// Decodes canonical bytes (at most [`MAX_BUNDLE`]), refusing another version, more than
    /// [`MAX_PREVIOUS_FLEETS`] previous fleets, or a previous fleet with the preferred fleet's id.
    pub fn decode(bytes: &[u8]) -> Result<Self, BundleError> {
        let b: Bundle = bkv_wire::decode(bytes, MAX_BUNDLE).map_err(|_| BundleError::Malformed)?;
        if b.version != BUNDLE_VERSION
            || b.previous.len() > MAX_PREVIOUS_FLEETS
            || b.previous.iter().any(|p| p.fleet_id == b.fleet_id)
        {
            return Err(BundleError::Malformed);
        }
        Ok(b)
    }

    /// The preferred fleet's Noise static key, if the bundle lists one.
    pub fn noise_key(&self) -> Option<[u8; 32]> {
        noise_key_of(&self.keys)
    }

    /// Every fleet the bundle lists, the preferred first.
    pub fn fleets(&self) -> Vec<BundleFleet> {
        let mut v = vec![BundleFleet {
            fleet_id: self.fleet_id.clone(),
            keys: self.keys.clone(),
            evidence_digest: self.evidence_digest,
        }];
        v.extend(self.previous.iter().cloned());
        v
    }
}

/// SHA-256 of a bundle's canonical bytes.
pub fn digest(bundle_bytes: &[u8]) -> Hash {
    Sha256::digest(bundle_bytes).into()
}

/// What the auditor signs: the namespace, the epoch and the bundle digest.
pub fn auditor_message(namespace: &str, epoch: u64, digest: &Hash) -> Vec<u8> {
    let mut m = b"bkv bundle auditor signature v1\0".to_vec();
    m.extend_from_slice(&bkv_wire::encode(&(namespace, epoch, digest)));
    m
}

/// What the operator signs: the auditor's signature bytes.
pub fn operator_message(auditor_signature: &[u8; 64]) -> Vec<u8> {
    let mut m = b"bkv bundle operator countersignature v1\0".to_vec();
    m.extend_from_slice(auditor_signature);
    m
}

/// What the operator signs to authenticate an append request.
pub fn append_message(bundle_bytes: &[u8]) -> Vec<u8> {
    let mut m = b"bkv auditor append v1\0".to_vec();
    m.extend_from_slice(bundle_bytes);
    m
}

/// The log leaf for a bundle: `"bkv-leaf-v1\0" || epoch (u64 BE) || SHA-256(bundle)`.
pub fn leaf_data(epoch: u64, digest: &Hash) -> Vec<u8> {
    let mut m = b"bkv-leaf-v1\0".to_vec();
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(digest);
    m
}

/// The auditor's signature over [`auditor_message`] of `b` (`bundle_bytes`: its encoding).
pub fn sign_auditor(key: &SigningKey, bundle_bytes: &[u8], b: &Bundle) -> [u8; 64] {
    key.sign(&auditor_message(
        &b.namespace,
        b.epoch,
        &digest(bundle_bytes),
    ))
    .to_bytes()
}

/// The operator's Ed25519 counter-signature over [`operator_message`].
pub fn sign_operator(key: &SigningKey, auditor_signature: &[u8; 64]) -> [u8; 64] {
    key.sign(&operator_message(auditor_signature)).to_bytes()
}

/// Whether `sig` is a 64-byte Ed25519 signature by `key` over `msg` (strict verification).
pub fn verify_sig(key: &VerifyingKey, msg: &[u8], sig: &[u8]) -> bool {
    let Ok(s) = <[u8; 64]>::try_from(sig) else {
        return false;
    };
    key.verify_strict(msg, &Signature::from_bytes(&s)).is_ok()
}

/// Everything a client needs to accept a bundle, as served by the frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundlePackage {
    /// The bundle's canonical bytes (base64 in JSON).
    #[serde(with = "crate::b64")]
    pub bundle: Vec<u8>,
    /// The auditor's signature over [`auditor_message`] (base64).
    #[serde(with = "crate::b64")]
    pub auditor_signature: Vec<u8>,
    /// The operator's counter-signature over [`operator_message`] (base64).
    #[serde(with = "crate::b64")]
    pub operator_signature: Vec<u8>,
    /// Index of the bundle's leaf ([`leaf_data`]) in the auditor's log.
    pub leaf_index: u64,
    /// The auditor's signed checkpoint note.
    pub checkpoint: String,
    /// RFC 9162 inclusion proof of the leaf in the checkpoint's tree (base64 hashes).
    #[serde(with = "crate::b64::hashes")]
    pub inclusion_proof: Vec<Hash>,
    /// Consistency proof from `consistency_from` (the size the client said it
    /// knows) to the checkpoint's size.
    pub consistency_from: u64,
    /// RFC 9162 consistency proof from `consistency_from` to the checkpoint (base64 hashes).
    #[serde(with = "crate::b64::hashes")]
    pub consistency_proof: Vec<Hash>,
    /// For each fleet the bundle lists besides the preferred one: a logged bundle of an earlier
    /// epoch in which that fleet, with the same keys, was the preferred one, included in the
    /// same checkpoint. A client that accepted such an epoch itself needs none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_proofs: Vec<EarlierBundle>,
}

/// A logged bundle of an earlier epoch and its inclusion in the package's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierBundle {
    /// The earlier bundle's canonical bytes (base64 in JSON).
    #[serde(with = "crate::b64")]
    pub bundle: Vec<u8>,
    /// The auditor's signature over its [`auditor_message`] (base64).
    #[serde(with = "crate::b64")]
    pub auditor_signature: Vec<u8>,
    /// The operator's counter-signature over [`operator_message`] (base64).
    #[serde(with = "crate::b64")]
    pub operator_signature: Vec<u8>,
    /// Index of its leaf in the auditor's log.
    pub leaf_index: u64,
    /// RFC 9162 inclusion proof of its leaf in the package's checkpoint (base64 hashes).
    #[serde(with = "crate::b64::hashes")]
    pub inclusion_proof: Vec<Hash>,
}

/// What the client pins in `ota` mode.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    /// The namespace whose bundles the client accepts.
    pub namespace: String,
    /// Checkpoint origin of the namespace's log.
    pub origin: String,
    /// The auditor's signed-note key name (checkpoint signature lines).
    pub auditor_name: String,
    /// The auditor's Ed25519 key: its bundle and record signatures and checkpoints.
    pub auditor_key: VerifyingKey,
    /// The operator's Ed25519 key: bundle counter-signatures.
    pub operator_key: VerifyingKey,
}

/// What the client remembers between runs (persisted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLogState {
    /// Tree size of the newest checkpoint this client accepted (0: none yet).
    pub checkpoint_size: u64,
    /// That checkpoint's root hash (hex in JSON).
    #[serde(with = "hex_hash")]
    pub checkpoint_root: Hash,
    /// Newest bundle epoch this client accepted.
    pub accepted_epoch: u64,
    /// Fleets this client accepted as the preferred fleet of an epoch (or saw proven so by the
    /// log), newest last, at most [`MAX_KNOWN_FLEETS`]: the only ones it uses as a previous fleet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_fleets: Vec<KnownFleet>,
}

/// Most preferred fleets a client remembers.
pub const MAX_KNOWN_FLEETS: usize = 16;

/// A fleet that was the preferred one of an accepted epoch: its id and Noise key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownFleet {
    /// Id of the fleet.
    pub fleet_id: String,
    /// Its Noise static key (hex in JSON).
    #[serde(with = "hex_hash")]
    pub noise_key: [u8; 32],
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("expected 32 hex bytes"))
    }
}

/// Why [`verify`] refused a bundle package; each names the failed check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BundleError {
    /// The bundle bytes do not decode as a valid bundle ([`Bundle::decode`]).
    #[error("bundle bytes are malformed")]
    Malformed,
    /// The bundle is for another namespace than the pinned one.
    #[error("bundle is for namespace {found:?}, expected {expected:?}")]
    Namespace {
        /// The pinned namespace.
        expected: String,
        /// The bundle's namespace.
        found: String,
    },
    /// The auditor's signature is missing or does not verify under the pinned key.
    #[error("auditor signature over the bundle is missing or invalid")]
    AuditorSignature,
    /// The operator's counter-signature is missing or does not verify under the pinned key.
    #[error("operator counter-signature is missing or invalid")]
    OperatorSignature,
    /// The checkpoint is malformed or not signed by the pinned auditor key; the text says why.
    #[error("checkpoint is not signed by the pinned auditor key, or is malformed: {0}")]
    Checkpoint(String),
    /// The checkpoint is for another log than the pinned origin names.
    #[error("checkpoint is for log {found:?}, expected {expected:?}")]
    Origin {
        /// The pinned origin.
        expected: String,
        /// The checkpoint's origin.
        found: String,
    },
    /// The inclusion proof does not place the bundle's leaf in the checkpoint's tree.
    #[error("bundle is not included in the auditor's log (inclusion proof failed)")]
    NotInLog,
    /// The checkpoint does not extend the one the client saw before: a forked or rewritten log.
    #[error("auditor log is inconsistent with the checkpoint this client saw before (size {seen}): the log was forked or rewritten")]
    InconsistentLog {
        /// Size of the checkpoint the client saw before.
        seen: u64,
    },
    /// The checkpoint is smaller than the one the client saw before.
    #[error("auditor log shrank from size {seen} to {shown}: a rolled-back or forked log")]
    LogRolledBack {
        /// Size of the checkpoint the client saw before.
        seen: u64,
        /// Size of the checkpoint served now.
        shown: u64,
    },
    /// The bundle's epoch is older than one the client already accepted.
    #[error("bundle epoch {epoch} is older than the already accepted epoch {accepted}")]
    EpochRollback {
        /// The bundle's epoch.
        epoch: u64,
        /// The newest epoch the client accepted.
        accepted: u64,
    },
    /// The client's clock is before the bundle's `not_before`.
    #[error("bundle is not valid yet (not before {not_before}, now {now})")]
    NotYetValid {
        /// Start of the validity window (Unix seconds).
        not_before: u64,
        /// The client's clock (Unix seconds).
        now: u64,
    },
    /// The client's clock is at or after the bundle's `not_after`.
    #[error("bundle expired (not after {not_after}, now {now})")]
    Expired {
        /// End of the validity window (Unix seconds, exclusive).
        not_after: u64,
        /// The client's clock (Unix seconds).
        now: u64,
    },
    /// A fleet the bundle lists has no Noise static key.
    #[error("bundle names no Noise static key")]
    NoNoiseKey,
    /// A previous fleet (its id) not known or proven to have been an epoch's preferred fleet.
    #[error("the bundle lists fleet {0} as a previous fleet, but it was never the preferred fleet of an epoch this client accepted or the log proves")]
    UnprovenPreviousFleet(String),
}

/// Checks a delivered bundle against the pinned anchors and what this client
/// saw before. On success returns the bundle and the state to persist.
pub fn verify(
    anchors: &TrustAnchors,
    seen: &ClientLogState,
    pkg: &BundlePackage,
    now: u64,
) -> Result<(Bundle, ClientLogState), BundleError> {
    let bundle = Bundle::decode(&pkg.bundle)?;
    if bundle.namespace != anchors.namespace {
        return Err(BundleError::Namespace {
            expected: anchors.namespace.clone(),
            found: bundle.namespace,
        });
    }
    let d = digest(&pkg.bundle);
    if !verify_sig(
        &anchors.auditor_key,
        &auditor_message(&bundle.namespace, bundle.epoch, &d),
        &pkg.auditor_signature,
    ) {
        return Err(BundleError::AuditorSignature);
    }
    let auditor_sig: [u8; 64] = pkg
        .auditor_signature
        .as_slice()
        .try_into()
        .map_err(|_| BundleError::AuditorSignature)?;
    if !verify_sig(
        &anchors.operator_key,
        &operator_message(&auditor_sig),
        &pkg.operator_signature,
    ) {
        return Err(BundleError::OperatorSignature);
    }
    let cp = Checkpoint::open(&pkg.checkpoint, &anchors.auditor_name, &anchors.auditor_key)
        .map_err(|e| BundleError::Checkpoint(e.to_string()))?;
    if cp.origin != anchors.origin {
        return Err(BundleError::Origin {
            expected: anchors.origin.clone(),
            found: cp.origin,
        });
    }
    let leaf = merkle::leaf_hash(&leaf_data(bundle.epoch, &d));
    if !merkle::verify_inclusion(
        pkg.leaf_index,
        cp.size,
        &leaf,
        &pkg.inclusion_proof,
        &cp.root,
    ) {
        return Err(BundleError::NotInLog);
    }
    if cp.size < seen.checkpoint_size {
        return Err(BundleError::LogRolledBack {
            seen: seen.checkpoint_size,
            shown: cp.size,
        });
    }
    if seen.checkpoint_size > 0
        && (pkg.consistency_from != seen.checkpoint_size
            || !merkle::verify_consistency(
                seen.checkpoint_size,
                cp.size,
                &seen.checkpoint_root,
                &cp.root,
                &pkg.consistency_proof,
            ))
    {
        return Err(BundleError::InconsistentLog {
            seen: seen.checkpoint_size,
        });
    }
    if bundle.epoch < seen.accepted_epoch {
        return Err(BundleError::EpochRollback {
            epoch: bundle.epoch,
            accepted: seen.accepted_epoch,
        });
    }
    if now < bundle.not_before {
        return Err(BundleError::NotYetValid {
            not_before: bundle.not_before,
            now,
        });
    }
    if now >= bundle.not_after {
        return Err(BundleError::Expired {
            not_after: bundle.not_after,
            now,
        });
    }
    let Some(preferred_key) = bundle.noise_key() else {
        return Err(BundleError::NoNoiseKey);
    };
    let mut known = seen.preferred_fleets.clone();
    // A previous fleet is one clients used before: the preferred fleet of an epoch this client
    // accepted, or of an earlier logged epoch the package proves (a client new to the log).
    for p in &bundle.previous {
        let key = p.noise_key().ok_or(BundleError::NoNoiseKey)?;
        let this = KnownFleet {
            fleet_id: p.fleet_id.clone(),
            noise_key: key,
        };
        if known.contains(&this) {
            continue;
        }
        let proven = pkg
            .previous_proofs
            .iter()
            .any(|e| proves_preferred(anchors, &cp, bundle.epoch, e, &this));
        if !proven {
            return Err(BundleError::UnprovenPreviousFleet(p.fleet_id.clone()));
        }
        known.push(this);
    }
    let preferred = KnownFleet {
        fleet_id: bundle.fleet_id.clone(),
        noise_key: preferred_key,
    };
    known.retain(|k| *k != preferred);
    known.push(preferred);
    let excess = known.len().saturating_sub(MAX_KNOWN_FLEETS);
    known.drain(..excess);
    let next = ClientLogState {
        checkpoint_size: cp.size,
        checkpoint_root: cp.root,
        accepted_epoch: bundle.epoch.max(seen.accepted_epoch),
        preferred_fleets: known,
    };
    Ok((bundle, next))
}

/// Whether `e` is a bundle of an epoch before `epoch`, signed by the auditor and the operator and
/// included in `cp`, whose preferred fleet is `fleet`.
fn proves_preferred(
    anchors: &TrustAnchors,
    cp: &Checkpoint,
    epoch: u64,
    e: &EarlierBundle,
    fleet: &KnownFleet,
) -> bool {
    let Ok(b) = Bundle::decode(&e.bundle) else {
        return false;
    };
    let d = digest(&e.bundle);
    let Ok(auditor_sig) = <[u8; 64]>::try_from(e.auditor_signature.as_slice()) else {
        return false;
    };
    b.namespace == anchors.namespace
        && b.epoch < epoch
        && b.fleet_id == fleet.fleet_id
        && b.noise_key() == Some(fleet.noise_key)
        && verify_sig(
            &anchors.auditor_key,
            &auditor_message(&b.namespace, b.epoch, &d),
            &auditor_sig,
        )
        && verify_sig(
            &anchors.operator_key,
            &operator_message(&auditor_sig),
            &e.operator_signature,
        )
        && merkle::verify_inclusion(
            e.leaf_index,
            cp.size,
            &merkle::leaf_hash(&leaf_data(b.epoch, &d)),
            &e.inclusion_proof,
            &cp.root,
        )
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes and packages are rejected with an error, never a panic.
        #[test]
        fn decoding_and_verifying_garbage_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            sig in proptest::collection::vec(any::<u8>(), 0..80),
            idx in any::<u64>(),
            from in any::<u64>(),
        ) {
            let _ = Bundle::decode(&bytes);
            let k = SigningKey::from_bytes(&[1; 32]).verifying_key();
            let anchors = TrustAnchors {
                namespace: "ns".into(),
                origin: "o".into(),
                auditor_name: "a".into(),
                auditor_key: k,
                operator_key: k,
            };
            let pkg = BundlePackage {
                bundle: bytes.clone(),
                auditor_signature: sig.clone(),
                operator_signature: sig,
                leaf_index: idx,
                checkpoint: String::from_utf8_lossy(&bytes).into_owned(),
                inclusion_proof: vec![[0; 32]; (idx % 70) as usize],
                consistency_from: from,
                consistency_proof: vec![[1; 32]; (from % 70) as usize],
                previous_proofs: Vec::new(),
            };
            let seen = ClientLogState { checkpoint_size: from, checkpoint_root: [0; 32], accepted_epoch: idx, preferred_fleets: Vec::new() };
            prop_assert!(verify(&anchors, &seen, &pkg, idx).is_err());
            let _ = serde_json::from_slice::<BundlePackage>(&bytes);
        }
    }
}
