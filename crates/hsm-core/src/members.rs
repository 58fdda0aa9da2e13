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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub addr: String,
    pub identity_key: [u8; 32],
    pub voter: bool,
    pub statement: SignedStatement,
    pub log_index: Option<u64>,
}

/// The fleet's membership (state encoding 2; encoding 1 had only `admin_seq` and `nodes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// Sequence number of the last executed admin command.
    pub admin_seq: u64,
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
mod tests {
    use super::*;
    use crate::keys::{FleetSecrets, NodeIdentity};
    use crate::platform::MemoryPlatform;
    use crate::state::{Mutation, State};
    use crate::Core;
    use bkv_transparency::membership::{
        auditor_record_message, record_digest, record_leaf_data, MembershipRecord, RECORD_VERSION,
    };
    use bkv_transparency::{merkle, note::Checkpoint};
    use bkv_wire::admin::{LogProof, SignedAdminCommand};
    use ed25519_dalek::{Signer, SigningKey};

    /// An operator, an auditor with a log, and a founded fleet.
    struct World {
        operator: SigningKey,
        auditor: SigningKey,
        leaves: Vec<merkle::Hash>,
        core: Core,
    }

    impl World {
        fn new() -> World {
            let operator = SigningKey::from_bytes(&[11; 32]);
            let auditor = SigningKey::from_bytes(&[12; 32]);
            let trust = FleetTrust {
                namespace: "ns".into(),
                auditor_name: "aud".into(),
                auditor_key: auditor.verifying_key().to_bytes(),
                operator_key: operator.verifying_key().to_bytes(),
                max_guess_limit: bkv_wire::vault::MAX_GUESS_LIMIT,
                predecessors: Vec::new(),
            };
            let p = MemoryPlatform::shared([1; 32]);
            let secrets = FleetSecrets::generate(&*p, trust).unwrap();
            let mut core = Core::new(p.clone(), secrets, State::default()).unwrap();
            let me = NodeIdentity::generate(&*p).unwrap();
            let found = core.found_mutation(0, "127.0.0.1:1", &me, [0; 32]).unwrap();
            assert_eq!(core.apply(&found).unwrap(), Outcome::Founded);
            // A second Found is refused once the fleet has a member.
            assert!(matches!(
                core.apply(&found).unwrap(),
                Outcome::AdminRefused(_)
            ));
            World {
                operator,
                auditor,
                leaves: Vec::new(),
                core,
            }
        }

        /// Logs `change` with the auditor; returns (record bytes, proof).
        fn log(&mut self, fleet_id: &str, change: MembershipChange) -> (Vec<u8>, LogProof) {
            let record = MembershipRecord {
                version: RECORD_VERSION,
                namespace: "ns".into(),
                fleet_id: fleet_id.into(),
                change,
            }
            .encode();
            let d = record_digest(&record);
            self.leaves.push(merkle::leaf_hash(&record_leaf_data(&d)));
            let index = self.leaves.len() - 1;
            let cp = Checkpoint {
                origin: "aud/ns".into(),
                size: self.leaves.len() as u64,
                root: merkle::root(&self.leaves),
            };
            let proof = LogProof {
                auditor_signature: self
                    .auditor
                    .sign(&auditor_record_message("ns", &d))
                    .to_bytes()
                    .to_vec(),
                leaf_index: index as u64,
                checkpoint: cp.sign("aud", &self.auditor).unwrap(),
                inclusion_proof: merkle::inclusion_proof(index, &self.leaves),
            };
            (record, proof)
        }

        fn sign(&self, key: &SigningKey, seq: u64, action: AdminAction) -> SignedAdminCommand {
            let command = bkv_wire::encode(&AdminCommand {
                version: ADMIN_COMMAND_VERSION,
                fleet_id: self.core.fleet_id().into(),
                seq,
                not_after: u64::MAX,
                action,
            });
            let mut msg = ADMIN_CONTEXT.to_vec();
            msg.extend_from_slice(&command);
            SignedAdminCommand {
                signature: key.sign(&msg).to_bytes().to_vec(),
                command,
            }
        }

        fn next_seq(&self) -> u64 {
            self.core.state().members.admin_seq + 1
        }

        /// A new node's identity and a logged, signed AddMember for it.
        fn add_command(&mut self, node_id: u64) -> (NodeIdentity, SignedAdminCommand) {
            let p = MemoryPlatform::new([node_id as u8 + 40; 32]);
            let id = NodeIdentity::generate(&p).unwrap();
            let statement = id.statement(&p, [1; 32]).unwrap();
            let fleet = self.core.fleet_id().to_owned();
            let (record, proof) = self.log(&fleet, MembershipChange::Add { node_id, statement });
            let cmd = self.sign(
                &self.operator,
                self.next_seq(),
                AdminAction::AddMember {
                    node_id,
                    addr: "127.0.0.1:2".into(),
                    record,
                    proof,
                },
            );
            (id, cmd)
        }
    }

    fn refused(o: Outcome) -> AdminError {
        match o {
            Outcome::AdminRefused(e) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_logged_signed_command_admits_a_node_and_only_then_are_secrets_sent() {
        let mut w = World::new();
        let (id, cmd) = w.add_command(1);
        // Not yet admitted: no secrets.
        assert!(w.core.export_secrets_to(&id.public_key()).is_err());
        w.core.check_admin(&cmd).unwrap();
        assert_eq!(
            w.core.apply(&Mutation::Admin(cmd.clone())).unwrap(),
            Outcome::AdminApplied { seq: 1 }
        );
        let env = w.core.export_secrets_to(&id.public_key()).unwrap();
        assert_eq!(id.open_secrets(&env).unwrap().fleet_id(), w.core.fleet_id());
        let m = &w.core.state().members.nodes[&1];
        assert!(!m.voter && m.identity_key == id.public_key());
        // Replaying the same captured command is refused and changes nothing.
        let before = w.core.state().clone();
        assert_eq!(
            refused(w.core.apply(&Mutation::Admin(cmd)).unwrap()),
            AdminError::Replayed {
                expected: 2,
                found: 1
            }
        );
        assert_eq!(w.core.state(), &before);
        // Promote, then remove with a logged record.
        let promote = w.sign(&w.operator, 2, AdminAction::Promote { node_id: 1 });
        assert_eq!(
            w.core.apply(&Mutation::Admin(promote)).unwrap(),
            Outcome::AdminApplied { seq: 2 }
        );
        assert!(w.core.state().members.nodes[&1].voter);
        let fleet = w.core.fleet_id().to_owned();
        let (record, proof) = w.log(
            &fleet,
            MembershipChange::Remove {
                node_id: 1,
                identity_key: id.public_key(),
            },
        );
        let remove = w.sign(
            &w.operator,
            3,
            AdminAction::RemoveMember {
                node_id: 1,
                record,
                proof,
            },
        );
        assert_eq!(
            w.core.apply(&Mutation::Admin(remove)).unwrap(),
            Outcome::AdminApplied { seq: 3 }
        );
        assert!(w.core.export_secrets_to(&id.public_key()).is_err());
    }

    #[test]
    fn unsigned_forged_unlogged_and_mismatched_commands_change_nothing() {
        let mut w = World::new();
        let before = w.core.state().clone();
        let (id, good) = w.add_command(1);
        let check = |w: &mut World, cmd: SignedAdminCommand| {
            let pre = w.core.check_admin(&cmd).unwrap_err();
            let applied = refused(w.core.apply(&Mutation::Admin(cmd)).unwrap());
            assert_eq!(pre, applied);
            assert_eq!(w.core.state(), &before);
            assert!(w.core.export_secrets_to(&id.public_key()).is_err());
            applied
        };
        // Unsigned, and signed by someone else (e.g. the frontend).
        let mut unsigned = good.clone();
        unsigned.signature.clear();
        assert_eq!(check(&mut w, unsigned), AdminError::BadSignature);
        let stranger = SigningKey::from_bytes(&[66; 32]);
        let AdminCommand { action, .. } = bkv_wire::decode(&good.command, MAX_ADMIN_FRAME).unwrap();
        let forged = w.sign(&stranger, 1, action.clone());
        assert_eq!(check(&mut w, forged), AdminError::BadSignature);
        // Signed, but the record is not in the auditor's log.
        let AdminAction::AddMember {
            record, mut proof, ..
        } = action.clone()
        else {
            panic!()
        };
        let other_auditor = SigningKey::from_bytes(&[67; 32]);
        proof.auditor_signature = other_auditor
            .sign(&auditor_record_message("ns", &record_digest(&record)))
            .to_bytes()
            .to_vec();
        let unlogged = w.sign(
            &w.operator,
            1,
            AdminAction::AddMember {
                node_id: 1,
                addr: "127.0.0.1:2".into(),
                record: record.clone(),
                proof,
            },
        );
        assert!(matches!(check(&mut w, unlogged), AdminError::NotLogged(_)));
        // A logged record for node 1, used to add node 2.
        let AdminAction::AddMember { proof, .. } = action.clone() else {
            panic!()
        };
        let renamed = w.sign(
            &w.operator,
            1,
            AdminAction::AddMember {
                node_id: 2,
                addr: "127.0.0.1:2".into(),
                record,
                proof,
            },
        );
        assert!(matches!(check(&mut w, renamed), AdminError::NotLogged(_)));
        // A future sequence number.
        let ahead = w.sign(&w.operator, 5, action);
        assert!(matches!(check(&mut w, ahead), AdminError::Replayed { .. }));
        // Garbage command bytes under a valid signature.
        let garbage = {
            let command = vec![1, 2, 3];
            let mut msg = ADMIN_CONTEXT.to_vec();
            msg.extend_from_slice(&command);
            SignedAdminCommand {
                signature: w.operator.sign(&msg).to_bytes().to_vec(),
                command,
            }
        };
        assert!(matches!(check(&mut w, garbage), AdminError::Malformed(_)));
        // A replica without trust anchors refuses every command.
        let mut bare = State::default();
        assert!(matches!(
            bare.apply(&Mutation::Admin(good)),
            Outcome::AdminRefused(_)
        ));
    }

    #[test]
    fn an_expired_command_is_not_started() {
        let mut w = World::new();
        let (_, cmd) = w.add_command(1);
        let AdminCommand { action, .. } = bkv_wire::decode(&cmd.command, MAX_ADMIN_FRAME).unwrap();
        let command = bkv_wire::encode(&AdminCommand {
            version: ADMIN_COMMAND_VERSION,
            fleet_id: w.core.fleet_id().into(),
            seq: 1,
            not_after: 5,
            action,
        });
        let mut msg = ADMIN_CONTEXT.to_vec();
        msg.extend_from_slice(&command);
        let expired = SignedAdminCommand {
            signature: w.operator.sign(&msg).to_bytes().to_vec(),
            command,
        };
        assert!(matches!(
            w.core.check_admin(&expired),
            Err(AdminError::Expired { .. })
        ));
    }

    /// Issue 27, item 3: a logged membership record applies once. A removed node is not
    /// re-admitted with its original `Add` record and proof (the log shows it removed), even
    /// under a fresh, correctly signed command.
    #[test]
    fn a_removed_node_is_not_readmitted_with_its_original_record() {
        let mut w = World::new();
        let (id, cmd) = w.add_command(1);
        let AdminCommand { action: add, .. } =
            bkv_wire::decode(&cmd.command, MAX_ADMIN_FRAME).unwrap();
        assert_eq!(
            w.core.apply(&Mutation::Admin(cmd)).unwrap(),
            Outcome::AdminApplied { seq: 1 }
        );
        let fleet = w.core.fleet_id().to_owned();
        let (record, proof) = w.log(
            &fleet,
            MembershipChange::Remove {
                node_id: 1,
                identity_key: id.public_key(),
            },
        );
        let remove = w.sign(
            &w.operator,
            2,
            AdminAction::RemoveMember {
                node_id: 1,
                record,
                proof,
            },
        );
        assert_eq!(
            w.core.apply(&Mutation::Admin(remove)).unwrap(),
            Outcome::AdminApplied { seq: 2 }
        );
        let before = w.core.state().clone();
        let again = w.sign(&w.operator, 3, add);
        let e = refused(w.core.apply(&Mutation::Admin(again)).unwrap());
        assert!(
            matches!(&e, AdminError::Refused(m) if m.contains("applies once")),
            "{e:?}"
        );
        assert_eq!(w.core.state(), &before);
        assert!(w.core.export_secrets_to(&id.public_key()).is_err());
    }

    /// Issue 27, item 3: every member checks a command's expiry when it applies it, against the
    /// time the proposing core stamped on the entry (not only the leader's check before
    /// proposing), and a stamp may not go back behind the fleet's last command; an unstamped
    /// command is refused once stamped ones applied.
    #[test]
    fn every_member_checks_expiry_at_apply_against_the_entrys_time() {
        let mut w = World::new();
        let (_, cmd) = w.add_command(1);
        let AdminCommand { action, .. } = bkv_wire::decode(&cmd.command, MAX_ADMIN_FRAME).unwrap();
        let expiring = |w: &World, seq: u64, not_after: u64, action: AdminAction| {
            let command = bkv_wire::encode(&AdminCommand {
                version: ADMIN_COMMAND_VERSION,
                fleet_id: w.core.fleet_id().into(),
                seq,
                not_after,
                action,
            });
            let mut msg = ADMIN_CONTEXT.to_vec();
            msg.extend_from_slice(&command);
            SignedAdminCommand {
                signature: w.operator.sign(&msg).to_bytes().to_vec(),
                command,
            }
        };
        let signed = expiring(&w, 1, 1_000, action.clone());
        let late = Mutation::AdminAt {
            command: signed.clone(),
            proposed_at: 1_001,
        };
        assert!(matches!(
            refused(w.core.apply(&late).unwrap()),
            AdminError::Expired { .. }
        ));
        let in_time = Mutation::AdminAt {
            command: signed,
            proposed_at: 999,
        };
        assert_eq!(
            w.core.apply(&in_time).unwrap(),
            Outcome::AdminApplied { seq: 1 }
        );
        // The next command may not be stamped before the last one.
        let promote = expiring(&w, 2, u64::MAX, AdminAction::Promote { node_id: 1 });
        let earlier = Mutation::AdminAt {
            command: promote.clone(),
            proposed_at: 998,
        };
        assert!(matches!(
            refused(w.core.apply(&earlier).unwrap()),
            AdminError::Refused(_)
        ));
        // Nor go without a stamp.
        assert!(matches!(
            refused(w.core.apply(&Mutation::Admin(promote)).unwrap()),
            AdminError::Refused(_)
        ));
        // What the node proposes is stamped with its core's time.
        let next = expiring(&w, 2, u64::MAX, AdminAction::Promote { node_id: 1 });
        let m = w.core.admin_mutation(next).unwrap();
        assert!(matches!(m, Mutation::AdminAt { proposed_at, .. } if proposed_at > 999));
        assert_eq!(w.core.apply(&m).unwrap(), Outcome::AdminApplied { seq: 2 });
    }
}
