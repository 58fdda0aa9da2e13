//! Fleet membership in the auditor's log, and nodes' platform statements.
//!
//! Every node that joins or leaves a fleet is a [`MembershipRecord`] in the
//! same append-only log as the validation bundles (a leaf kind of its own, so
//! a record can never be read as a bundle). A node's cores admit a new member,
//! and encrypt fleet secrets to it, only after [`verify_logged_record`]
//! accepted the record against the auditor key pinned in the fleet. So no
//! node joins in secret — not even with the operator's key.

use crate::bundle::{verify_sig, TrustAnchors};
use crate::merkle::{self, Hash};
use crate::note::Checkpoint;
use bkv_wire::admin::{
    LogProof, PlatformStatement, SignedStatement, MAX_TEXT, STATEMENT_CONTEXT, STATEMENT_VERSION,
};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of [`MembershipRecord`].
pub const RECORD_VERSION: u8 = 1;
/// Largest encoded membership record or statement.
pub const MAX_RECORD: usize = 8 * 1024;

/// One change to a fleet's membership, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    /// Layout version, [`RECORD_VERSION`].
    pub version: u8,
    /// The auditor-log namespace of the fleet.
    pub namespace: String,
    /// Id of the fleet whose membership changes.
    pub fleet_id: String,
    /// Which node joins or leaves, and how.
    pub change: MembershipChange,
}

/// What a membership record changes (variant order is part of the format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MembershipChange {
    /// The node that formed the fleet (and generated its keys).
    Found {
        /// The founding node's id.
        node_id: u64,
        /// Its signed platform statement.
        statement: SignedStatement,
    },
    /// A node admitted to the fleet.
    Add {
        /// The admitted node's id.
        node_id: u64,
        /// Its signed platform statement.
        statement: SignedStatement,
    },
    /// A node removed from the fleet.
    Remove {
        /// The removed node's id.
        node_id: u64,
        /// Its peer-link identity key (X25519 public key).
        identity_key: [u8; 32],
    },
}

impl MembershipRecord {
    /// The canonical bytes, `bkv_wire::encode(self)`: what is logged and signed.
    pub fn encode(&self) -> Vec<u8> {
        bkv_wire::encode(self)
    }

    /// Decodes canonical bytes (at most [`MAX_RECORD`]), refusing another record version.
    pub fn decode(bytes: &[u8]) -> Result<Self, MembershipError> {
        let r: MembershipRecord = bkv_wire::decode(bytes, MAX_RECORD)
            .map_err(|e| MembershipError::Malformed(e.to_string()))?;
        if r.version != RECORD_VERSION {
            return Err(MembershipError::Malformed(format!(
                "unsupported record version {}",
                r.version
            )));
        }
        Ok(r)
    }
}

/// Why a membership record, its log proof or a platform statement was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipError {
    /// The record does not decode or has another version; the text says why.
    #[error("membership record is malformed: {0}")]
    Malformed(String),
    /// The record is for another namespace than the fleet logs in.
    #[error("record is for namespace {found:?}, the fleet logs in {expected:?}")]
    Namespace {
        /// The fleet's pinned namespace.
        expected: String,
        /// The record's namespace.
        found: String,
    },
    /// The auditor's signature over the record does not verify.
    #[error("the auditor's signature over the record is invalid")]
    AuditorSignature,
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
    /// The inclusion proof does not place the record's leaf in the checkpoint's tree.
    #[error("record is not included in the auditor's checkpoint (inclusion proof failed)")]
    NotInLog,
    /// The platform statement does not decode, has another version or too long a token text.
    #[error("platform statement is malformed: {0}")]
    StatementMalformed(String),
    /// The platform statement is not signed by the signing key it names.
    #[error("platform statement is not signed by the platform key it names")]
    StatementSignature,
}

/// SHA-256 of a membership record's canonical bytes.
pub fn record_digest(record_bytes: &[u8]) -> Hash {
    Sha256::digest(record_bytes).into()
}

/// The log leaf of a membership record: `"bkv-membership-leaf-v1\0" || SHA-256(record)`.
pub fn record_leaf_data(digest: &Hash) -> Vec<u8> {
    let mut m = b"bkv-membership-leaf-v1\0".to_vec();
    m.extend_from_slice(digest);
    m
}

/// What the auditor signs for a membership record.
pub fn auditor_record_message(namespace: &str, digest: &Hash) -> Vec<u8> {
    let mut m = b"bkv membership auditor signature v1\0".to_vec();
    m.extend_from_slice(&bkv_wire::encode(&(namespace, digest)));
    m
}

/// What the operator signs to ask the auditor to log a membership record.
pub fn append_record_message(record_bytes: &[u8]) -> Vec<u8> {
    let mut m = b"bkv auditor append membership v1\0".to_vec();
    m.extend_from_slice(record_bytes);
    m
}

/// Checks that `record_bytes` is in the auditor's log: the auditor's
/// signature over it, a checkpoint signed by the pinned auditor key for the
/// fleet's log, and the inclusion of its leaf in that checkpoint. Returns
/// the decoded record.
pub fn verify_logged_record(
    anchors: &TrustAnchors,
    record_bytes: &[u8],
    proof: &LogProof,
) -> Result<MembershipRecord, MembershipError> {
    let record = MembershipRecord::decode(record_bytes)?;
    if record.namespace != anchors.namespace {
        return Err(MembershipError::Namespace {
            expected: anchors.namespace.clone(),
            found: record.namespace,
        });
    }
    let d = record_digest(record_bytes);
    if !verify_sig(
        &anchors.auditor_key,
        &auditor_record_message(&record.namespace, &d),
        &proof.auditor_signature,
    ) {
        return Err(MembershipError::AuditorSignature);
    }
    let cp = Checkpoint::open(
        &proof.checkpoint,
        &anchors.auditor_name,
        &anchors.auditor_key,
    )
    .map_err(|e| MembershipError::Checkpoint(e.to_string()))?;
    if cp.origin != anchors.origin {
        return Err(MembershipError::Origin {
            expected: anchors.origin.clone(),
            found: cp.origin,
        });
    }
    let leaf = merkle::leaf_hash(&record_leaf_data(&d));
    if !merkle::verify_inclusion(
        proof.leaf_index,
        cp.size,
        &leaf,
        &proof.inclusion_proof,
        &cp.root,
    ) {
        return Err(MembershipError::NotInLog);
    }
    Ok(record)
}

/// The bytes a platform signs for a statement.
pub fn statement_message(statement_bytes: &[u8]) -> Vec<u8> {
    let mut m = STATEMENT_CONTEXT.to_vec();
    m.extend_from_slice(statement_bytes);
    m
}

/// Decodes a signed statement and checks its signature by the platform
/// signing key it names. (That proves possession of that key, nothing about
/// the platform itself: a statement is only as strong as its platform.)
pub fn verify_statement(signed: &SignedStatement) -> Result<PlatformStatement, MembershipError> {
    let s: PlatformStatement = bkv_wire::decode(&signed.statement, MAX_RECORD)
        .map_err(|e| MembershipError::StatementMalformed(e.to_string()))?;
    if s.version != STATEMENT_VERSION {
        return Err(MembershipError::StatementMalformed(format!(
            "unsupported statement version {}",
            s.version
        )));
    }
    if s.platform.token.len() > MAX_TEXT {
        return Err(MembershipError::StatementMalformed(
            "token description too long".into(),
        ));
    }
    let key = VerifyingKey::from_bytes(&s.signing_key)
        .map_err(|_| MembershipError::StatementSignature)?;
    if !verify_sig(
        &key,
        &statement_message(&signed.statement),
        &signed.signature,
    ) {
        return Err(MembershipError::StatementSignature);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bkv_wire::admin::{PlatformDescription, PlatformKind};
    use ed25519_dalek::{Signer, SigningKey};

    fn statement(platform: &SigningKey) -> SignedStatement {
        let s = PlatformStatement {
            version: STATEMENT_VERSION,
            identity_key: [7; 32],
            signing_key: platform.verifying_key().to_bytes(),
            platform: PlatformDescription {
                kind: PlatformKind::Memory,
                token: "test".into(),
            },
            binary_sha256: [9; 32],
        };
        let bytes = bkv_wire::encode(&s);
        let signature = platform
            .sign(&statement_message(&bytes))
            .to_bytes()
            .to_vec();
        SignedStatement {
            statement: bytes,
            signature,
        }
    }

    /// A log of `records` (plus a bundle-kind leaf in front) and anchors for it.
    fn log(auditor: &SigningKey, records: &[Vec<u8>]) -> (TrustAnchors, Vec<Hash>) {
        let anchors = TrustAnchors {
            namespace: "ns".into(),
            origin: "aud/ns".into(),
            auditor_name: "aud".into(),
            auditor_key: auditor.verifying_key(),
            operator_key: auditor.verifying_key(),
        };
        let mut leaves = vec![merkle::leaf_hash(&crate::bundle::leaf_data(1, &[0; 32]))];
        for r in records {
            leaves.push(merkle::leaf_hash(&record_leaf_data(&record_digest(r))));
        }
        (anchors, leaves)
    }

    fn proof(auditor: &SigningKey, leaves: &[Hash], index: usize, record: &[u8]) -> LogProof {
        let cp = Checkpoint {
            origin: "aud/ns".into(),
            size: leaves.len() as u64,
            root: merkle::root(leaves),
        };
        LogProof {
            auditor_signature: auditor
                .sign(&auditor_record_message("ns", &record_digest(record)))
                .to_bytes()
                .to_vec(),
            leaf_index: index as u64,
            checkpoint: cp.sign("aud", auditor).unwrap(),
            inclusion_proof: merkle::inclusion_proof(index, leaves),
        }
    }

    #[test]
    fn a_logged_record_verifies_and_every_forgery_is_named() {
        let auditor = SigningKey::from_bytes(&[1; 32]);
        let platform = SigningKey::from_bytes(&[2; 32]);
        let rec = MembershipRecord {
            version: RECORD_VERSION,
            namespace: "ns".into(),
            fleet_id: "fleet-1".into(),
            change: MembershipChange::Add {
                node_id: 3,
                statement: statement(&platform),
            },
        }
        .encode();
        let (anchors, leaves) = log(&auditor, std::slice::from_ref(&rec));
        let p = proof(&auditor, &leaves, 1, &rec);
        let got = verify_logged_record(&anchors, &rec, &p).unwrap();
        let MembershipChange::Add { statement: st, .. } = got.change else {
            panic!("wrong change")
        };
        assert_eq!(verify_statement(&st).unwrap().identity_key, [7; 32]);

        // The bundle leaf at index 0 is not this record.
        let mut wrong_index = p.clone();
        wrong_index.leaf_index = 0;
        wrong_index.inclusion_proof = merkle::inclusion_proof(0, &leaves);
        assert_eq!(
            verify_logged_record(&anchors, &rec, &wrong_index),
            Err(MembershipError::NotInLog)
        );
        // A record the auditor never logged, signed by someone else.
        let other = SigningKey::from_bytes(&[3; 32]);
        let (_, fake_leaves) = log(&other, std::slice::from_ref(&rec));
        let fake = proof(&other, &fake_leaves, 1, &rec);
        assert_eq!(
            verify_logged_record(&anchors, &rec, &fake),
            Err(MembershipError::AuditorSignature)
        );
        let mut fake_cp = p.clone();
        fake_cp.checkpoint = fake.checkpoint.clone();
        assert!(matches!(
            verify_logged_record(&anchors, &rec, &fake_cp),
            Err(MembershipError::Checkpoint(_))
        ));
        // Another namespace's anchors.
        let mut other_ns = anchors.clone();
        other_ns.namespace = "other".into();
        assert!(matches!(
            verify_logged_record(&other_ns, &rec, &p),
            Err(MembershipError::Namespace { .. })
        ));
        let mut other_origin = anchors.clone();
        other_origin.origin = "aud/other".into();
        assert!(matches!(
            verify_logged_record(&other_origin, &rec, &p),
            Err(MembershipError::Origin { .. })
        ));
        // A changed byte in the record.
        let mut tampered = rec.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(verify_logged_record(&anchors, &tampered, &p).is_err());
    }

    #[test]
    fn a_statement_must_be_signed_by_the_key_it_names() {
        let platform = SigningKey::from_bytes(&[2; 32]);
        let good = statement(&platform);
        assert!(verify_statement(&good).is_ok());
        let mut bad = good.clone();
        bad.signature[0] ^= 1;
        assert_eq!(
            verify_statement(&bad),
            Err(MembershipError::StatementSignature)
        );
        // Re-signed by another key than the one it names.
        let other = SigningKey::from_bytes(&[4; 32]);
        let mut swapped = good.clone();
        swapped.signature = other
            .sign(&statement_message(&good.statement))
            .to_bytes()
            .to_vec();
        assert_eq!(
            verify_statement(&swapped),
            Err(MembershipError::StatementSignature)
        );
        assert!(matches!(
            verify_statement(&SignedStatement {
                statement: vec![1, 2, 3],
                signature: vec![]
            }),
            Err(MembershipError::StatementMalformed(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn garbage_records_and_proofs_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            idx in proptest::prelude::any::<u64>(),
        ) {
            let k = SigningKey::from_bytes(&[1; 32]);
            let (anchors, _) = log(&k, &[]);
            let p = LogProof {
                auditor_signature: bytes.clone(),
                leaf_index: idx,
                checkpoint: String::from_utf8_lossy(&bytes).into_owned(),
                inclusion_proof: vec![[0; 32]; (idx % 70) as usize],
            };
            proptest::prop_assert!(verify_logged_record(&anchors, &bytes, &p).is_err());
            let _ = MembershipRecord::decode(&bytes);
            let _ = verify_statement(&SignedStatement { statement: bytes.clone(), signature: bytes });
        }
    }
}
