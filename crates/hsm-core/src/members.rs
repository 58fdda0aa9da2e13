//! The fleet's membership as the replicated state records it, and the
//! checks every core runs on an operator command before it changes it.
//!
//! A node becomes a member only through a committed [`Mutation::Admin`]
//! whose operator signature, sequence number and auditor log proof every
//! member's core verified when applying it (the founding node through
//! [`Mutation::Found`], valid only while there is no member). Peer links and
//! fleet secrets are granted only to members recorded here.
//!
//! [`Mutation::Admin`]: crate::state::Mutation::Admin
//! [`Mutation::Found`]: crate::state::Mutation::Found

use crate::keys::FleetTrust;
use crate::state::Outcome;
use bkv_transparency::bundle::verify_sig;
use bkv_transparency::membership::{verify_logged_record, verify_statement, MembershipChange};
use bkv_wire::admin::{
    AdminAction, AdminCommand, AdminError, MemberInfo, SignedAdminCommand, SignedStatement,
    ADMIN_COMMAND_VERSION, ADMIN_CONTEXT, MAX_ADMIN_FRAME, MAX_TEXT,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most members a fleet may have (Raft groups of 3–9 voters, plus learners
/// being added).
pub const MAX_MEMBERS: usize = 16;

/// An admitted member node, as the replicated state records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's peer-link address.
    pub addr: String,
    /// The node's X25519 identity key (from its verified platform statement): its peer links
    /// and fleet-secret transfers are bound to it.
    pub identity_key: [u8; 32],
    /// Whether the node votes in Raft; an added node starts as a learner until promoted.
    pub voter: bool,
    /// The node's platform statement, signed by its platform key.
    pub statement: SignedStatement,
    /// Leaf index of its membership record in the auditor's log (`None` for the founder).
    pub log_index: Option<u64>,
}

/// The fleet's membership (state encoding 2; encoding 1 had only `admin_seq` and `nodes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// Sequence number of the last executed admin command.
    pub admin_seq: u64,
    /// The members by node id (at most [`MAX_MEMBERS`]).
    pub nodes: BTreeMap<u64, Member>,
    /// Leaf index, in the auditor's log, of the last membership record an applied `Add` or
    /// `Remove` named: each later one must sit higher, so a logged record is applied once.
    pub last_record_leaf: Option<u64>,
    /// The latest time an applied command was proposed at (unix seconds): a command's time may
    /// not go back behind it.
    pub clock: u64,
}

/// What a verified command does (with the leaf index of the logged record it applies).
#[derive(Debug)]
pub(crate) enum Effect {
    Add(u64, Member, u64),
    Promote(u64),
    Remove(u64, u64),
}

impl Members {
    /// Is `identity` the identity key of an admitted member?
    pub fn admits(&self, identity: &[u8; 32]) -> bool {
        self.nodes.values().any(|m| &m.identity_key == identity)
    }

    /// The members as the wire reports them ([`MemberInfo`]), in node-id order.
    pub fn info(&self) -> Vec<MemberInfo> {
        self.nodes
            .iter()
            .map(|(id, m)| MemberInfo {
                node_id: *id,
                addr: m.addr.clone(),
                identity_key: m.identity_key,
                voter: m.voter,
                statement: m.statement.clone(),
                log_index: m.log_index,
            })
            .collect()
    }

    pub(crate) fn found(
        &mut self,
        node_id: u64,
        addr: &str,
        statement: &SignedStatement,
    ) -> Outcome {
        if !self.nodes.is_empty() {
            return Outcome::AdminRefused(AdminError::Refused(
                "the fleet already has members".into(),
            ));
        }
        let st = match verify_statement(statement) {
            Ok(s) => s,
            Err(e) => return Outcome::AdminRefused(AdminError::BadStatement(e.to_string())),
        };
        self.nodes.insert(
            node_id,
            Member {
                addr: addr.to_owned(),
                identity_key: st.identity_key,
                voter: true,
                statement: statement.clone(),
                log_index: None,
            },
        );
        Outcome::Founded
    }

    /// Verifies a signed command against the fleet's trust anchors and this
    /// membership, without changing anything.
    pub(crate) fn check(
        &self,
        trust: &FleetTrust,
        fleet_id: &str,
        signed: &SignedAdminCommand,
    ) -> Result<(AdminCommand, Effect), AdminError> {
        let anchors = trust
            .anchors()
            .map_err(|e| AdminError::Refused(e.to_string()))?;
        let mut msg = ADMIN_CONTEXT.to_vec();
        msg.extend_from_slice(&signed.command);
        if !verify_sig(&anchors.operator_key, &msg, &signed.signature) {
            return Err(AdminError::BadSignature);
        }
        let cmd: AdminCommand = bkv_wire::decode(&signed.command, MAX_ADMIN_FRAME)
            .map_err(|e| AdminError::Malformed(e.to_string()))?;
        if cmd.version != ADMIN_COMMAND_VERSION {
            return Err(AdminError::Malformed(format!(
                "unsupported command version {}",
                cmd.version
            )));
        }
        if cmd.fleet_id != fleet_id {
            return Err(AdminError::WrongFleet {
                expected: fleet_id.to_owned(),
                found: cmd.fleet_id,
            });
        }
        let expected = self.admin_seq.saturating_add(1);
        if cmd.seq != expected {
            return Err(AdminError::Replayed {
                expected,
                found: cmd.seq,
            });
        }
        // A logged record applies once: each applied one sits higher in the log than the last
        // (else a removed node comes back with its original Add, while the log says removed).
        let fresh = |proof: &bkv_wire::admin::LogProof| match self.last_record_leaf {
            Some(last) if proof.leaf_index <= last => Err(AdminError::Refused(format!(
                "the membership record at log index {} is not newer than the last one applied \
                 ({last}): a logged record applies once",
                proof.leaf_index
            ))),
            _ => Ok(()),
        };
        let logged = |record: &[u8], proof| {
            let r = verify_logged_record(&anchors, record, proof)
                .map_err(|e| AdminError::NotLogged(e.to_string()))?;
            if r.fleet_id != fleet_id {
                return Err(AdminError::NotLogged(format!(
                    "the logged record is for fleet {:?}",
                    r.fleet_id
                )));
            }
            Ok(r.change)
        };
        let effect = match &cmd.action {
            AdminAction::AddMember {
                node_id,
                addr,
                record,
                proof,
            } => {
                if addr.is_empty() || addr.len() > MAX_TEXT {
                    return Err(AdminError::Malformed("peer address".into()));
                }
                if self.nodes.contains_key(node_id) {
                    return Err(AdminError::Refused(format!(
                        "node {node_id} is already a member"
                    )));
                }
                if self.nodes.len() >= MAX_MEMBERS {
                    return Err(AdminError::Refused("the fleet is full".into()));
                }
                let MembershipChange::Add {
                    node_id: logged_id,
                    statement,
                } = logged(record, proof)?
                else {
                    return Err(AdminError::NotLogged(
                        "the logged record is not an Add".into(),
                    ));
                };
                fresh(proof)?;
                if logged_id != *node_id {
                    return Err(AdminError::NotLogged(format!(
                        "the logged record adds node {logged_id}, not {node_id}"
                    )));
                }
                let st = verify_statement(&statement)
                    .map_err(|e| AdminError::BadStatement(e.to_string()))?;
                if self.admits(&st.identity_key) {
                    return Err(AdminError::Refused(
                        "that identity key already belongs to a member".into(),
                    ));
                }
                Effect::Add(
                    *node_id,
                    Member {
                        addr: addr.clone(),
                        identity_key: st.identity_key,
                        voter: false,
                        statement,
                        log_index: Some(proof.leaf_index),
                    },
                    proof.leaf_index,
                )
            }
            AdminAction::Promote { node_id } => match self.nodes.get(node_id) {
                Some(m) if !m.voter => Effect::Promote(*node_id),
                Some(_) => {
                    return Err(AdminError::Refused(format!(
                        "node {node_id} is already a voter"
                    )))
                }
                None => return Err(AdminError::Refused(format!("no member {node_id}"))),
            },
            AdminAction::RemoveMember {
                node_id,
                record,
                proof,
            } => {
                let Some(m) = self.nodes.get(node_id) else {
                    return Err(AdminError::Refused(format!("no member {node_id}")));
                };
                let MembershipChange::Remove {
                    node_id: logged_id,
                    identity_key,
                } = logged(record, proof)?
                else {
                    return Err(AdminError::NotLogged(
                        "the logged record is not a Remove".into(),
                    ));
                };
                fresh(proof)?;
                if logged_id != *node_id || identity_key != m.identity_key {
                    return Err(AdminError::NotLogged(
                        "the logged record names another node".into(),
                    ));
                }
                let voters = self.nodes.values().filter(|m| m.voter).count();
                if m.voter && voters <= 1 {
                    return Err(AdminError::Refused(
                        "cannot remove the fleet's last voter".into(),
                    ));
                }
                Effect::Remove(*node_id, proof.leaf_index)
            }
            _ => return Err(AdminError::Malformed("unknown action".into())),
        };
        Ok((cmd, effect))
    }

    pub(crate) fn execute(&mut self, seq: u64, effect: Effect) -> Outcome {
        match effect {
            Effect::Add(id, m, leaf) => {
                self.nodes.insert(id, m);
                self.last_record_leaf = Some(leaf);
            }
            Effect::Promote(id) => {
                if let Some(m) = self.nodes.get_mut(&id) {
                    m.voter = true;
                }
            }
            Effect::Remove(id, leaf) => {
                self.nodes.remove(&id);
                self.last_record_leaf = Some(leaf);
            }
        }
        self.admin_seq = seq;
        Outcome::AdminApplied { seq }
    }
}

#[cfg(test)]
mod tests;
