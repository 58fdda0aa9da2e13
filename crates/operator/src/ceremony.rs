//! The deployment ceremony's record keeping: every step of forming a fleet
//! goes into an ordered, hash-chained transcript; witnesses sign its head;
//! the result is the fleet's `evidence.json`, logged with the auditor and
//! named by the fleet's validation bundle. Starting the nodes is the
//! caller's part (a dev deployment starts processes; production hosts are
//! started by their operators); this module records and publishes.
//!
//! Order of steps: every node's platform statement; the generating node's
//! fleet statement and its logged membership record; then for each further
//! node its logged membership record (it is admitted by a signed command)
//! and its fleet statement (it holds the keys, received encrypted to its
//! identity key).

use crate::fleet::{self, Operator};
use crate::{OperatorError, Result};
use bkv_transparency::evidence::{
    self as ev, Evidence, FleetKeysHex, Measurement, StepKind, TranscriptBuilder, Witness,
};
use bkv_wire::admin::{MembersView, SignedFleetStatement, SignedStatement};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// A fleet being formed.
pub struct Ceremony<'a> {
    op: &'a Operator,
    transcript: TranscriptBuilder,
    fleet_id: Option<String>,
    fleet_keys: Option<bkv_wire::admin::FleetPublicKeys>,
    binaries: BTreeMap<u64, [u8; 32]>,
}

fn fleet_statement_of(s: &SignedFleetStatement) -> Result<bkv_wire::admin::FleetStatement> {
    ev::verify_fleet_statement(s).map_err(OperatorError::Fleet)
}

impl<'a> Ceremony<'a> {
    /// Starts the transcript with every node's platform statement.
    pub fn begin(op: &'a Operator, statements: &[(u64, SignedStatement)]) -> Result<Self> {
        let mut c = Ceremony {
            op,
            transcript: TranscriptBuilder::default(),
            fleet_id: None,
            fleet_keys: None,
            binaries: BTreeMap::new(),
        };
        for (id, s) in statements {
            let st = bkv_transparency::membership::verify_statement(s)
                .map_err(|e| OperatorError::Fleet(format!("node {id}: {e}")))?;
            c.binaries.insert(*id, st.binary_sha256);
            c.transcript
                .push(StepKind::NodeStatement, *id, &bkv_wire::encode(s));
        }
        Ok(c)
    }

    /// The generating node formed the fleet: its fleet statement, then its
    /// membership record, logged with the auditor.
    pub async fn formed(
        &mut self,
        node_id: u64,
        statement: SignedStatement,
        fleet_statement: SignedFleetStatement,
    ) -> Result<()> {
        let fs = fleet_statement_of(&fleet_statement)?;
        self.fleet_id = Some(fs.fleet_id.clone());
        self.fleet_keys = Some(fs.fleet_keys.clone());
        self.transcript.push(
            StepKind::FleetFormed,
            node_id,
            &bkv_wire::encode(&fleet_statement),
        );
        let (record, proof) = fleet::log_founder(self.op, &fs.fleet_id, node_id, statement).await?;
        self.transcript.push(
            StepKind::MemberLogged,
            node_id,
            &bkv_wire::encode(&(proof.leaf_index, record.encode())),
        );
        Ok(())
    }

    /// Admits a further node: its record logged, a signed `AddMember`
    /// executed. The caller starts the node next, then calls [`Self::joined`].
    pub async fn admit(
        &mut self,
        admins: &BTreeMap<u64, SocketAddr>,
        node_id: u64,
        peer_addr: &str,
        statement: SignedStatement,
    ) -> Result<MembersView> {
        let fleet_id = self
            .fleet_id
            .clone()
            .ok_or_else(|| OperatorError::Fleet("the fleet was never formed".into()))?;
        let action = fleet::admission(self.op, &fleet_id, node_id, peer_addr, statement).await?;
        if let bkv_wire::admin::AdminAction::AddMember { record, proof, .. } = &action {
            self.transcript.push(
                StepKind::MemberLogged,
                node_id,
                &bkv_wire::encode(&(proof.leaf_index, record.clone())),
            );
        }
        fleet::execute(self.op, admins, &fleet_id, action)
    }

    /// A further node holds the fleet keys: its fleet statement.
    pub fn joined(&mut self, node_id: u64, fleet_statement: SignedFleetStatement) -> Result<()> {
        let fs = fleet_statement_of(&fleet_statement)?;
        if Some(&fs.fleet_keys) != self.fleet_keys.as_ref() {
            return Err(OperatorError::Fleet(format!(
                "node {node_id} holds other fleet keys than the generating node"
            )));
        }
        self.transcript.push(
            StepKind::FleetStatement,
            node_id,
            &bkv_wire::encode(&fleet_statement),
        );
        Ok(())
    }

    /// The transcript's head: what witnesses sign.
    pub fn head(&self) -> [u8; 32] {
        self.transcript.head()
    }

    /// The evidence before any witness signed it (`witnesses: []`), for the witnesses to check
    /// and sign with their own tool (`bkv witness ceremony`): pretty JSON.
    pub fn draft(&self, source_commit: &str, toolchain: &str) -> Result<Vec<u8>> {
        let fleet_id = self
            .fleet_id
            .clone()
            .ok_or_else(|| OperatorError::Fleet("the fleet was never formed".into()))?;
        let keys = self
            .fleet_keys
            .clone()
            .ok_or_else(|| OperatorError::Fleet("the fleet was never formed".into()))?;
        let mut binaries = self.binaries.values();
        let binary = *binaries
            .next()
            .ok_or_else(|| OperatorError::Fleet("no node".into()))?;
        if binaries.any(|b| *b != binary) {
            return Err(OperatorError::Fleet(
                "the nodes run different bkv-hsm binaries".into(),
            ));
        }
        let e = Evidence {
            version: ev::EVIDENCE_VERSION,
            namespace: self.op.namespace.clone(),
            fleet_id,
            fleet_keys: FleetKeysHex {
                noise_static: hex::encode(keys.noise_static),
                opaque_server: hex::encode(&keys.opaque_server),
            },
            measurement: Measurement {
                binary_sha256: hex::encode(binary),
                source_commit: source_commit.to_owned(),
                toolchain: toolchain.to_owned(),
                recipe: "scripts/build-hsm-reproducible.sh".into(),
            },
            transcript: self.transcript.clone().steps(),
            witnesses: Vec::new(),
        };
        // What the witnesses and the auditor will check, checked here first.
        ev::verify_transcript(&e)
            .map_err(|e| OperatorError::Fleet(format!("the evidence does not verify: {e}")))?;
        json(&e)
    }
}

/// Closes a ceremony: `draft` ([`Ceremony::draft`]) with the signatures its witnesses made with
/// their own tool and keys. Every signature must verify over the draft's transcript head, and
/// every key in `expected` must have signed (the witnesses the operator named). Returns the
/// evidence file's bytes (pretty JSON, the published artifact).
pub fn finish(draft: &[u8], signatures: Vec<Witness>, expected: &[[u8; 32]]) -> Result<Vec<u8>> {
    let mut e = ev::parse(draft).map_err(|e| OperatorError::Fleet(e.to_string()))?;
    if signatures.is_empty() {
        return Err(OperatorError::Fleet("a ceremony needs a witness".into()));
    }
    e.witnesses = signatures;
    ev::verify(&e, expected)
        .map_err(|e| OperatorError::Fleet(format!("the evidence does not verify: {e}")))?;
    json(&e)
}

fn json(e: &Evidence) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(e)
        .map_err(|e| OperatorError::Fleet(format!("encode evidence: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The predecessor entry for fleet `fleet_id`, from one of its nodes' signed fleet statement:
/// the move key its cores sign move tickets with. Refused when the statement is not that
/// fleet's, does not verify, or (a node of an earlier release) states no policy.
pub fn predecessor(
    statement: &SignedFleetStatement,
    fleet_id: &str,
) -> std::result::Result<bkv_wire::admin::PredecessorFleet, String> {
    let st = bkv_transparency::evidence::verify_fleet_statement(statement)?;
    if st.fleet_id != fleet_id {
        return Err(format!(
            "asked for fleet {fleet_id}'s move key, a node of {} answered",
            st.fleet_id
        ));
    }
    let policy = st.policy.ok_or_else(|| {
        format!(
            "fleet {fleet_id} runs an earlier release with no move key: upgrade its nodes first"
        )
    })?;
    Ok(bkv_wire::admin::PredecessorFleet {
        fleet_id: fleet_id.to_owned(),
        move_key: policy.move_key,
    })
}
