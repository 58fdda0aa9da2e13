//! The auditor's HTTP API (docs/auditor-api.md): request and response bodies, and query
//! strings.

use serde::{Deserialize, Serialize};

/// `GET /v1/key`: the auditor's name and keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The auditor's name (its signed-note key name).
    pub name: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
    /// The C2SP signed-note verifier key (`name+keyid+base64`).
    pub verifier_key: String,
}

/// `GET /v1/logs/{ns}`: one log's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogInfo {
    /// The log's namespace (one per operator and fleet family).
    pub namespace: String,
    /// The checkpoint origin line of the log.
    pub origin: String,
    /// How many entries the log holds.
    pub size: u64,
    /// The operator key the namespace was created with, hex.
    pub operator_key: String,
}

/// What a log entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// An OTA key bundle (`bundle`, `epoch`).
    Bundle,
    /// A fleet membership record (`record`).
    Membership,
    /// A fleet's deployment evidence (`evidence`).
    Evidence,
    /// A browser-client build's manifest (`web`).
    Web,
}

/// `GET /v1/logs/{ns}/entries/{i}`, `…/epochs/{e}`, `…/bundles/latest`: one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryResponse {
    /// The entry's position in the log.
    pub index: u64,
    /// What it holds.
    pub kind: EntryKind,
    /// The bundle's epoch (bundles only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(
        default,
        with = "crate::b64::opt",
        skip_serializing_if = "Option::is_none"
    )]
    /// The canonical bundle bytes (bundles only).
    pub bundle: Option<Vec<u8>>,
    /// The membership record (membership entries only).
    #[serde(
        default,
        with = "crate::b64::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub record: Option<Vec<u8>>,
    /// The evidence file (evidence entries only).
    #[serde(
        default,
        with = "crate::b64::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub evidence: Option<Vec<u8>>,
    /// The web build's manifest (web entries only).
    #[serde(
        default,
        with = "crate::b64::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub web: Option<Vec<u8>>,
    /// The auditor's Ed25519 signature over the entry's append message.
    #[serde(with = "crate::b64")]
    pub auditor_signature: Vec<u8>,
    /// Bundles: the operator's counter-signature (once given). Membership records: the
    /// operator's signature over the append request.
    #[serde(default, with = "crate::b64::opt")]
    pub operator_signature: Option<Vec<u8>>,
}

/// `GET …/proof/inclusion` and `…/proof/consistency`: the proof's hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofResponse {
    /// The RFC 9162 proof's hashes, in order.
    #[serde(with = "crate::b64::hashes")]
    pub proof: Vec<[u8; 32]>,
}

/// `…/proof/inclusion?index=&size=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionQuery {
    /// The entry to prove.
    pub index: u64,
    /// The tree size to prove it in.
    pub size: u64,
}

/// `…/proof/consistency?from=&to=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyQuery {
    /// The older tree size.
    pub from: u64,
    /// The newer tree size.
    pub to: u64,
}

/// `POST /v1/logs/{ns}/entries`: a bundle to log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    /// The canonical bundle bytes.
    #[serde(with = "crate::b64")]
    pub bundle: Vec<u8>,
    /// The operator's Ed25519 signature over the append message of the bundle.
    #[serde(with = "crate::b64")]
    pub operator_signature: Vec<u8>,
}

/// What an append answers: the entry's index and the auditor's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    /// The new entry's position in the log.
    pub index: u64,
    /// The auditor's Ed25519 signature over the entry's append message.
    #[serde(with = "crate::b64")]
    pub auditor_signature: Vec<u8>,
}

/// `POST /v1/logs/{ns}/entries/{i}/countersignature`: the operator's counter-signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersignRequest {
    /// The operator's Ed25519 signature over the auditor's signature.
    #[serde(with = "crate::b64")]
    pub operator_signature: Vec<u8>,
}

/// `POST /v1/logs/{ns}/records`: a fleet membership record to log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRecordRequest {
    /// Canonical `MembershipRecord` bytes.
    #[serde(with = "crate::b64")]
    pub record: Vec<u8>,
    /// The operator's Ed25519 signature over the record's append message.
    #[serde(with = "crate::b64")]
    pub operator_signature: Vec<u8>,
}

/// `POST /v1/logs/{ns}/evidence`: a fleet's deployment evidence to log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEvidenceRequest {
    /// The evidence file's exact bytes.
    #[serde(with = "crate::b64")]
    pub evidence: Vec<u8>,
    /// The operator's Ed25519 signature over the evidence's append message.
    #[serde(with = "crate::b64")]
    pub operator_signature: Vec<u8>,
}

/// `POST /v1/logs/{ns}/web`: a web build's manifest to log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendWebRequest {
    /// The manifest's exact bytes (`bkv_transparency::web`).
    #[serde(with = "crate::b64")]
    pub manifest: Vec<u8>,
    /// The operator's Ed25519 signature over the manifest's append message.
    #[serde(with = "crate::b64")]
    pub operator_signature: Vec<u8>,
}

/// Every error of the auditor and the frontend: a stable code and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The stable, machine-readable code (`unknown_session`, `protector_required`, …).
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
}
