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

/// The state without the log's bookkeeping (the entry chain and the proposers' numbers, which
/// every entry moves, applied or refused): what a refused command must leave as it was.
fn domain(s: &State) -> State {
    State {
        proposers: Default::default(),
        chain: [0; 32],
        entries: 0,
        ..s.clone()
    }
}

/// An operator, an auditor with a log, and a founded fleet.
struct World {
    operator: SigningKey,
    auditor: SigningKey,
    leaves: Vec<merkle::Hash>,
    core: Core,
    platform: crate::SharedPlatform,
    /// The fleet secrets, sealed: another member's core is made from them.
    sealed: Vec<u8>,
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
        let sealed = secrets.seal(&*p).unwrap();
        let me = NodeIdentity::generate(&*p).unwrap();
        let mut core = Core::new(p.clone(), secrets, &me).unwrap();
        let found = core.found_entry(0, "127.0.0.1:1", &me, [0; 32]).unwrap();
        assert_eq!(core.apply(&found).unwrap(), Outcome::Founded);
        // The same entry again is a replay; a second Found is refused once the fleet has a
        // member.
        assert!(matches!(
            core.apply(&found).unwrap(),
            Outcome::Refused(crate::Refusal::OutOfOrder { .. })
        ));
        let again = core.found_entry(0, "127.0.0.1:1", &me, [0; 32]).unwrap();
        assert!(matches!(
            core.apply(&again).unwrap(),
            Outcome::AdminRefused(_)
        ));
        World {
            operator,
            auditor,
            leaves: Vec::new(),
            core,
            platform: p,
            sealed,
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
        w.core.apply_for_tests(Mutation::Admin(cmd.clone())),
        Outcome::AdminApplied { seq: 1 }
    );
    let env = w.core.export_secrets_to(&id.public_key()).unwrap();
    assert_eq!(id.open_secrets(&env).unwrap().fleet_id(), w.core.fleet_id());
    let m = &w.core.state().members.nodes[&1];
    assert!(!m.voter && m.identity_key == id.public_key());
    // Replaying the same captured command is refused and changes nothing.
    let before = w.core.state().clone();
    assert_eq!(
        refused(w.core.apply_for_tests(Mutation::Admin(cmd))),
        AdminError::Replayed {
            expected: 2,
            found: 1
        }
    );
    assert_eq!(domain(w.core.state()), domain(&before));
    // Promote, then remove with a logged record.
    let promote = w.sign(&w.operator, 2, AdminAction::Promote { node_id: 1 });
    assert_eq!(
        w.core.apply_for_tests(Mutation::Admin(promote)),
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
        w.core.apply_for_tests(Mutation::Admin(remove)),
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
        let applied = refused(w.core.apply_for_tests(Mutation::Admin(cmd)));
        assert_eq!(pre, applied);
        assert_eq!(domain(w.core.state()), domain(&before));
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
    let AdminCommand { action: add, .. } = bkv_wire::decode(&cmd.command, MAX_ADMIN_FRAME).unwrap();
    assert_eq!(
        w.core.apply_for_tests(Mutation::Admin(cmd)),
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
        w.core.apply_for_tests(Mutation::Admin(remove)),
        Outcome::AdminApplied { seq: 2 }
    );
    let before = w.core.state().clone();
    let again = w.sign(&w.operator, 3, add);
    let e = refused(w.core.apply_for_tests(Mutation::Admin(again)));
    assert!(
        matches!(&e, AdminError::Refused(m) if m.contains("applies once")),
        "{e:?}"
    );
    assert_eq!(domain(w.core.state()), domain(&before));
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
        refused(w.core.apply_for_tests(late)),
        AdminError::Expired { .. }
    ));
    let in_time = Mutation::AdminAt {
        command: signed,
        proposed_at: 999,
    };
    assert_eq!(
        w.core.apply_for_tests(in_time),
        Outcome::AdminApplied { seq: 1 }
    );
    // The next command may not be stamped before the last one.
    let promote = expiring(&w, 2, u64::MAX, AdminAction::Promote { node_id: 1 });
    let earlier = Mutation::AdminAt {
        command: promote.clone(),
        proposed_at: 998,
    };
    assert!(matches!(
        refused(w.core.apply_for_tests(earlier)),
        AdminError::Refused(_)
    ));
    // Nor go without a stamp.
    assert!(matches!(
        refused(w.core.apply_for_tests(Mutation::Admin(promote))),
        AdminError::Refused(_)
    ));
    // What the node proposes is stamped with its core's time.
    let next = expiring(&w, 2, u64::MAX, AdminAction::Promote { node_id: 1 });
    let e = w.core.admin_entry(next).unwrap();
    assert_eq!(w.core.apply(&e).unwrap(), Outcome::AdminApplied { seq: 2 });
    assert!(w.core.state().members.clock > 999);
}

/// Issue 28: a member's core's entries apply while it is a member; once the log removed it,
/// every core refuses them (its host may keep links and hand in whatever its core makes).
#[test]
fn a_removed_members_entries_are_refused() {
    let mut w = World::new();
    let (id, cmd) = w.add_command(1);
    assert_eq!(
        w.core.apply_for_tests(Mutation::Admin(cmd)),
        Outcome::AdminApplied { seq: 1 }
    );
    let secrets = FleetSecrets::unseal(&*w.platform, &w.sealed).unwrap();
    let mut theirs = Core::new(w.platform.clone(), secrets, &id).unwrap();
    let m = Mutation::CountRegisterStart {
        record_id: [5; 32],
        day: 0,
    };
    let while_member = theirs.entry_for_tests(&m);
    assert_eq!(
        w.core.apply(&while_member).unwrap(),
        Outcome::RegisterStartCounted
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
        w.core.apply_for_tests(Mutation::Admin(remove)),
        Outcome::AdminApplied { seq: 2 }
    );
    let after = theirs.entry_for_tests(&m);
    assert_eq!(
        w.core.apply(&after).unwrap(),
        Outcome::Refused(crate::Refusal::NotAMember)
    );
    let starts = w
        .core
        .records()
        .record(&[5; 32])
        .unwrap()
        .unwrap()
        .register_starts;
    assert_eq!(starts.count, 1);
}
