//! Deployment evidence of a fleet: the ordered, hash-chained transcript of
//! the ceremony that formed it, every node's platform and fleet statements,
//! the measured `bkv-hsm`, and witness signatures over the transcript.
//!
//! `evidence.json` is the published artifact; its digest is SHA-256 of the
//! file's exact bytes, so any change to the file is a different digest. The
//! operator logs the evidence with the auditor and names the digest in the
//! fleet's validation bundle. [`verify`] checks everything that can be
//! checked offline; `bkv audit fleet` adds the auditor's log. Format:
//! `docs/formats.md`, "Deployment evidence".

use crate::bundle::verify_sig;
use crate::membership::{verify_statement, MembershipChange, MembershipRecord};
use bkv_wire::admin::{
    FleetPublicKeys, FleetStatement, KeyOrigin, PlatformStatement, SignedFleetStatement,
    SignedStatement, FLEET_STATEMENT_CONTEXT, FLEET_STATEMENT_VERSION,
};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Version of the evidence file format ([`Evidence::version`]).
pub const EVIDENCE_VERSION: u8 = 1;
/// Largest evidence file accepted.
pub const MAX_EVIDENCE: usize = 256 * 1024;
const STEP_CONTEXT: &[u8] = b"bkv ceremony transcript v1\0";
const WITNESS_CONTEXT: &[u8] = b"bkv ceremony witness v1\0";

/// A fleet's deployment evidence, `evidence.json`: JSON, unknown fields rejected, at most
/// [`MAX_EVIDENCE`] bytes (docs/formats.md, "Deployment evidence").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// File format version, [`EVIDENCE_VERSION`].
    pub version: u8,
    /// The auditor-log namespace of the fleet.
    pub namespace: String,
    /// Id of the fleet the ceremony formed.
    pub fleet_id: String,
    /// The fleet's public keys; every node's fleet statement must state them.
    pub fleet_keys: FleetKeysHex,
    /// The `bkv-hsm` binary every node ran, and how to rebuild it.
    pub measurement: Measurement,
    /// The ceremony's hash-chained steps, in order.
    pub transcript: Vec<Step>,
    /// Witnesses' signatures over the transcript head.
    pub witnesses: Vec<Witness>,
}

/// The fleet's public keys as the evidence states them (hex strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetKeysHex {
    /// Noise static public key (hex).
    pub noise_static: String,
    /// OPAQUE server public key (hex).
    pub opaque_server: String,
}

/// What `bkv-hsm` the nodes ran, and how to rebuild it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    /// SHA-256 of the `bkv-hsm` binary (hex); every node's statements name it.
    pub binary_sha256: String,
    /// The source commit the binary is built from.
    pub source_commit: String,
    /// `rustc --version` of the pinned toolchain.
    pub toolchain: String,
    /// The command that reproduces the binary from that commit.
    pub recipe: String,
}

/// What a transcript step records (its kebab-case name is in the JSON and the step hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// A node's platform statement (`encode(SignedStatement)`), before the fleet exists.
    NodeStatement,
    /// The generating node's fleet statement (`encode(SignedFleetStatement)`).
    FleetFormed,
    /// A node's membership record as logged (`encode((leaf index, record bytes))`).
    MemberLogged,
    /// A receiving node's fleet statement (`encode(SignedFleetStatement)`).
    FleetStatement,
}

impl StepKind {
    fn name(self) -> &'static str {
        match self {
            StepKind::NodeStatement => "node-statement",
            StepKind::FleetFormed => "fleet-formed",
            StepKind::MemberLogged => "member-logged",
            StepKind::FleetStatement => "fleet-statement",
        }
    }
}

/// One step of the ceremony. `hash = SHA-256("bkv ceremony transcript v1\0"
/// || previous hash (zeros for the first) || index (u64 BE) || kind || 0x00
/// || node id (u64 BE) || SHA-256(payload))`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Position in the transcript, from 0.
    pub index: u64,
    /// What the step records.
    pub kind: StepKind,
    /// The node the step is about.
    pub node_id: u64,
    /// Hex of the payload bytes (see [`StepKind`]).
    pub payload: String,
    /// Hex of this step's chained hash.
    pub hash: String,
}

/// A witness's Ed25519 signature over `"bkv ceremony witness v1\0" ||
/// encode((namespace, fleet_id, transcript head))`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Witness {
    /// The witness's name, for people (its key identifies it).
    pub name: String,
    /// The witness's Ed25519 public key (hex).
    pub key: String,
    /// Its Ed25519 signature over [`witness_message`] of the transcript head (hex).
    pub signature: String,
}

/// Why evidence is rejected; each names the failed check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The file is too large, not evidence JSON of [`EVIDENCE_VERSION`], or has a bad hex field.
    #[error("evidence is not valid JSON of version {EVIDENCE_VERSION}: {0}")]
    Malformed(String),
    /// A step's index is not its position (the position given).
    #[error("transcript step {0}: index out of order")]
    StepIndex(u64),
    /// The step's hash (its index given) does not chain from the previous one.
    #[error("transcript step {0}: hash does not chain (the transcript was changed)")]
    StepHash(u64),
    /// A step's payload does not decode as its kind says.
    #[error("transcript step {index}: {what}")]
    StepPayload {
        /// The step's index.
        index: u64,
        /// What is wrong with the payload.
        what: String,
    },
    /// A node's statements or record fail a check or disagree with the evidence.
    #[error("node {node}: {what}")]
    Node {
        /// The node's id.
        node: u64,
        /// Which check failed.
        what: String,
    },
    /// A node (its id) lacks a step it needs (named).
    #[error("node {0} is missing its {1}")]
    Incomplete(u64, &'static str),
    /// Not exactly one node generated the fleet keys (the number that did).
    #[error("exactly one node must have generated the fleet keys, found {0}")]
    Generators(usize),
    /// A witness's signature (its name given) does not verify.
    #[error("witness {0}: signature over the transcript does not verify")]
    WitnessSignature(String),
    /// The evidence carries no witness signature.
    #[error("no witness signed the transcript")]
    NoWitness,
    /// A required witness key (hex) did not sign.
    #[error("required witness {0} did not sign")]
    MissingWitness(String),
}

/// SHA-256 of the evidence file's bytes: what bundles and the log name.
pub fn digest(file: &[u8]) -> [u8; 32] {
    Sha256::digest(file).into()
}

/// The log leaf of an evidence file: `"bkv-evidence-leaf-v1\0" || SHA-256(file)`.
pub fn leaf_data(digest: &[u8; 32]) -> Vec<u8> {
    let mut m = b"bkv-evidence-leaf-v1\0".to_vec();
    m.extend_from_slice(digest);
    m
}

/// What the auditor signs for logged evidence.
pub fn auditor_message(namespace: &str, digest: &[u8; 32]) -> Vec<u8> {
    let mut m = b"bkv evidence auditor signature v1\0".to_vec();
    m.extend_from_slice(&bkv_wire::encode(&(namespace, digest)));
    m
}

/// What the operator signs to ask the auditor to log evidence.
pub fn append_message(file: &[u8]) -> Vec<u8> {
    let mut m = b"bkv auditor append evidence v1\0".to_vec();
    m.extend_from_slice(file);
    m
}

/// The chained hash of a step.
pub fn step_hash(
    prev: &[u8; 32],
    index: u64,
    kind: StepKind,
    node_id: u64,
    payload: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(STEP_CONTEXT);
    h.update(prev);
    h.update(index.to_be_bytes());
    h.update(kind.name().as_bytes());
    h.update([0]);
    h.update(node_id.to_be_bytes());
    h.update(Sha256::digest(payload));
    h.finalize().into()
}

/// What a witness signs.
pub fn witness_message(namespace: &str, fleet_id: &str, head: &[u8; 32]) -> Vec<u8> {
    let mut m = WITNESS_CONTEXT.to_vec();
    m.extend_from_slice(&bkv_wire::encode(&(namespace, fleet_id, head)));
    m
}

/// Builds a transcript step by step (the ceremony tool).
#[derive(Default, Clone)]
pub struct TranscriptBuilder {
    steps: Vec<Step>,
    head: [u8; 32],
}

impl TranscriptBuilder {
    /// Appends the next step, its hash chained from the current head.
    pub fn push(&mut self, kind: StepKind, node_id: u64, payload: &[u8]) {
        let index = self.steps.len() as u64;
        self.head = step_hash(&self.head, index, kind, node_id, payload);
        self.steps.push(Step {
            index,
            kind,
            node_id,
            payload: hex::encode(payload),
            hash: hex::encode(self.head),
        });
    }

    /// The current head: the last step's hash (zeros before the first).
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    /// The steps pushed so far, for [`Evidence::transcript`].
    pub fn steps(self) -> Vec<Step> {
        self.steps
    }
}

/// Decodes a signed fleet statement and checks its signature by the
/// platform key it names.
pub fn verify_fleet_statement(s: &SignedFleetStatement) -> Result<FleetStatement, String> {
    let st = FleetStatement::decode(&s.statement, crate::membership::MAX_RECORD)
        .map_err(|e| format!("fleet statement is malformed: {e}"))?;
    let policy_ok = match st.version {
        1 => st.policy.is_none(),
        FLEET_STATEMENT_VERSION => st.policy.is_some(),
        v => return Err(format!("fleet statement version {v}")),
    };
    if !policy_ok {
        return Err("fleet statement's policy does not match its version".into());
    }
    let key = VerifyingKey::from_bytes(&st.signing_key)
        .map_err(|_| "fleet statement names no valid signing key".to_string())?;
    let mut msg = FLEET_STATEMENT_CONTEXT.to_vec();
    msg.extend_from_slice(&s.statement);
    if !verify_sig(&key, &msg, &s.signature) {
        return Err("fleet statement is not signed by the platform key it names".into());
    }
    Ok(st)
}

/// One node as the evidence shows it.
#[derive(Debug, Clone)]
pub struct EvidenceNode {
    /// The node's id.
    pub node_id: u64,
    /// Its verified platform statement.
    pub statement: PlatformStatement,
    /// Its verified fleet statement.
    pub fleet_statement: FleetStatement,
    /// Where its membership record is in the auditor's log, and the record.
    pub log_index: u64,
    /// Canonical bytes of its membership record (a `Found` or `Add` naming it).
    pub record: Vec<u8>,
}

/// What offline verification established.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The transcript head (the last step's hash): what witnesses sign.
    pub head: [u8; 32],
    /// The fleet's public keys, as the evidence and every node's fleet statement state them.
    pub fleet_keys: FleetPublicKeys,
    /// SHA-256 of the measured `bkv-hsm`, which every node ran.
    pub binary_sha256: [u8; 32],
    /// Every node of the transcript, by ascending node id.
    pub nodes: Vec<EvidenceNode>,
    /// What every node's fleet statement says the fleet enforces (all agree); `None` for a fleet
    /// formed by an earlier release, whose statements state none.
    pub policy: Option<bkv_wire::admin::FleetPolicy>,
    /// (name, key) of every witness whose signature verified.
    pub witnesses: Vec<(String, [u8; 32])>,
}

fn unhex(what: &str, s: &str) -> Result<Vec<u8>, EvidenceError> {
    hex::decode(s).map_err(|_| EvidenceError::Malformed(format!("{what} is not hex")))
}

fn unhex32(what: &str, s: &str) -> Result<[u8; 32], EvidenceError> {
    unhex(what, s)?
        .try_into()
        .map_err(|_| EvidenceError::Malformed(format!("{what} is not 32 bytes")))
}

/// Parses an evidence file (size-limited, unknown fields rejected).
pub fn parse(file: &[u8]) -> Result<Evidence, EvidenceError> {
    if file.len() > MAX_EVIDENCE {
        return Err(EvidenceError::Malformed("larger than 256 KiB".into()));
    }
    let e: Evidence =
        serde_json::from_slice(file).map_err(|e| EvidenceError::Malformed(e.to_string()))?;
    if e.version != EVIDENCE_VERSION {
        return Err(EvidenceError::Malformed(format!("version {}", e.version)));
    }
    Ok(e)
}

#[derive(Default)]
struct Partial {
    statement: Option<PlatformStatement>,
    signed_statement: Option<SignedStatement>,
    fleet_statement: Option<FleetStatement>,
    logged: Option<(u64, Vec<u8>)>,
}

/// Everything about the evidence that needs no network: the transcript
/// chain, every node's statements and their agreement with each other, the
/// fleet keys and measurement, the logged records' contents, and the
/// witnesses' signatures (at least one, and every one in `required`).
pub fn verify(e: &Evidence, required: &[[u8; 32]]) -> Result<Verified, EvidenceError> {
    let mut v = verify_transcript(e)?;
    if e.witnesses.is_empty() {
        return Err(EvidenceError::NoWitness);
    }
    let msg = witness_message(&e.namespace, &e.fleet_id, &v.head);
    for w in &e.witnesses {
        let key = unhex32("witness key", &w.key)?;
        let sig = unhex("witness signature", &w.signature)?;
        let vk = VerifyingKey::from_bytes(&key)
            .map_err(|_| EvidenceError::WitnessSignature(w.name.clone()))?;
        if !verify_sig(&vk, &msg, &sig) {
            return Err(EvidenceError::WitnessSignature(w.name.clone()));
        }
        v.witnesses.push((w.name.clone(), key));
    }
    for r in required {
        if !v.witnesses.iter().any(|(_, k)| k == r) {
            return Err(EvidenceError::MissingWitness(hex::encode(r)));
        }
    }
    Ok(v)
}

/// Everything [`verify`] checks but the witnesses (whatever signatures the file carries): what a
/// witness checks of a draft before it signs the head ([`Verified::head`]).
pub fn verify_transcript(e: &Evidence) -> Result<Verified, EvidenceError> {
    let fleet_keys = FleetPublicKeys {
        noise_static: unhex32("fleet_keys.noise_static", &e.fleet_keys.noise_static)?,
        opaque_server: unhex("fleet_keys.opaque_server", &e.fleet_keys.opaque_server)?,
    };
    let binary_sha256 = unhex32("measurement.binary_sha256", &e.measurement.binary_sha256)?;
    let mut head = [0u8; 32];
    let mut nodes: BTreeMap<u64, Partial> = BTreeMap::new();
    let mut generators = 0;
    for (i, step) in (0u64..).zip(&e.transcript) {
        if step.index != i {
            return Err(EvidenceError::StepIndex(i));
        }
        let payload = unhex("step payload", &step.payload)?;
        let h = step_hash(&head, i, step.kind, step.node_id, &payload);
        if hex::encode(h) != step.hash {
            return Err(EvidenceError::StepHash(i));
        }
        head = h;
        let bad = |what: String| EvidenceError::StepPayload { index: i, what };
        let node = nodes.entry(step.node_id).or_default();
        let node_err = |what: String| EvidenceError::Node {
            node: step.node_id,
            what,
        };
        match step.kind {
            StepKind::NodeStatement => {
                let signed: SignedStatement =
                    bkv_wire::decode(&payload, crate::membership::MAX_RECORD)
                        .map_err(|e| bad(e.to_string()))?;
                let st = verify_statement(&signed).map_err(|e| node_err(e.to_string()))?;
                node.statement = Some(st);
                node.signed_statement = Some(signed);
            }
            StepKind::FleetFormed | StepKind::FleetStatement => {
                let signed: SignedFleetStatement =
                    bkv_wire::decode(&payload, crate::membership::MAX_RECORD)
                        .map_err(|e| bad(e.to_string()))?;
                let fs = verify_fleet_statement(&signed).map_err(node_err)?;
                let want = if step.kind == StepKind::FleetFormed {
                    generators += 1;
                    KeyOrigin::Generated
                } else {
                    KeyOrigin::Received
                };
                if fs.origin != want {
                    return Err(node_err(format!(
                        "its fleet statement says the keys were {:?}, the transcript {:?}",
                        fs.origin, want
                    )));
                }
                node.fleet_statement = Some(fs);
            }
            StepKind::MemberLogged => {
                let (index, record): (u64, Vec<u8>) =
                    bkv_wire::decode(&payload, crate::membership::MAX_RECORD + 64)
                        .map_err(|e| bad(e.to_string()))?;
                node.logged = Some((index, record));
            }
        }
    }
    if generators != 1 {
        return Err(EvidenceError::Generators(generators));
    }
    let mut out = Vec::new();
    let mut policies = Vec::new();
    for (id, p) in nodes {
        let err = |what: String| EvidenceError::Node { node: id, what };
        let st = p
            .statement
            .ok_or(EvidenceError::Incomplete(id, "platform statement"))?;
        let signed = p
            .signed_statement
            .ok_or(EvidenceError::Incomplete(id, "platform statement"))?;
        let fs = p
            .fleet_statement
            .ok_or(EvidenceError::Incomplete(id, "fleet statement"))?;
        let (log_index, record) = p
            .logged
            .ok_or(EvidenceError::Incomplete(id, "membership record"))?;
        if fs.node_id != id {
            return Err(err(format!(
                "its fleet statement names node {}",
                fs.node_id
            )));
        }
        if fs.identity_key != st.identity_key
            || fs.signing_key != st.signing_key
            || fs.platform != st.platform
        {
            return Err(err(
                "its fleet statement names another identity, signing key or platform than its platform statement".into(),
            ));
        }
        if fs.fleet_id != e.fleet_id || fs.namespace != e.namespace {
            return Err(err(format!(
                "its fleet statement is for fleet {:?} in {:?}",
                fs.fleet_id, fs.namespace
            )));
        }
        if fs.fleet_keys != fleet_keys {
            return Err(err(
                "it holds other fleet keys than the evidence names".into()
            ));
        }
        if fs.binary_sha256 != binary_sha256 || st.binary_sha256 != binary_sha256 {
            return Err(err(format!(
                "its core ran {}, not the measured {}",
                hex::encode(fs.binary_sha256),
                e.measurement.binary_sha256
            )));
        }
        let r = MembershipRecord::decode(&record).map_err(|e| err(e.to_string()))?;
        let (node_id, statement) = match &r.change {
            MembershipChange::Found { node_id, statement }
            | MembershipChange::Add { node_id, statement } => (*node_id, statement),
            _ => return Err(err("its membership record is not a join".into())),
        };
        if r.fleet_id != e.fleet_id
            || r.namespace != e.namespace
            || node_id != id
            || *statement != signed
        {
            return Err(err(
                "its membership record names another fleet, node or statement".into(),
            ));
        }
        policies.push((id, fs.policy.clone()));
        out.push(EvidenceNode {
            node_id: id,
            statement: st,
            fleet_statement: fs,
            log_index,
            record,
        });
    }
    // Every node states the same policy (the cores of one fleet enforce one policy).
    let policy = policies.first().and_then(|(_, p)| p.clone());
    if let Some((id, _)) = policies.iter().find(|(_, p)| *p != policy) {
        return Err(EvidenceError::Node {
            node: *id,
            what: "its fleet statement states another policy than the other nodes'".into(),
        });
    }
    Ok(Verified {
        head,
        fleet_keys,
        binary_sha256,
        nodes: out,
        policy,
        witnesses: Vec::new(),
    })
}

/// A witness's signature over the transcript head of `e` (checked first, all but witnesses):
/// what `bkv witness ceremony` makes.
pub fn witness(
    e: &Evidence,
    name: &str,
    key: &ed25519_dalek::SigningKey,
) -> Result<Witness, EvidenceError> {
    use ed25519_dalek::Signer;
    let v = verify_transcript(e)?;
    let msg = witness_message(&e.namespace, &e.fleet_id, &v.head);
    Ok(Witness {
        name: name.to_owned(),
        key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(key.sign(&msg).to_bytes()),
    })
}
