//! Administering a fleet over its nodes' admin links. Every command is
//! signed with the operator key (the one pinned in the fleet when it was
//! formed) and carries the fleet's next admin sequence number, so a captured
//! command never runs twice; membership changes are logged with the auditor
//! first, because the nodes' cores admit no one the log does not show.

use crate::auditor::AuditorClient;
use crate::{OperatorError, Result};
use bkv_transparency::membership::{MembershipChange, MembershipRecord, RECORD_VERSION};
use bkv_wire::admin::{
    AdminAction, AdminCommand, AdminError, AdminRequest, AdminResponse, MembersView,
    SignedAdminCommand, SignedStatement, ADMIN_COMMAND_VERSION, ADMIN_CONTEXT,
};
use ed25519_dalek::{Signer, SigningKey};
use std::collections::BTreeMap;
use std::io::BufReader;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a signed command stays executable.
pub const COMMAND_LIFETIME_SECS: u64 = 300;

/// Who administers a fleet, and where its membership is logged.
pub struct Operator {
    /// The operator's signing key (commands, log appends).
    pub key: SigningKey,
    /// The auditor that logs the fleet's membership.
    pub auditor_url: String,
    /// The auditor namespace of the fleet's family.
    pub namespace: String,
    /// The HTTP client to use.
    pub http: reqwest::Client,
    /// The operator's record of the commands it signed ([`crate::ledger`]); without one it
    /// signs no command.
    pub ledger: Option<crate::ledger::Ledger>,
}

impl Operator {
    /// A client for the fleet's auditor, as this operator.
    pub fn auditor(&self) -> AuditorClient<'_> {
        AuditorClient {
            http: &self.http,
            url: &self.auditor_url,
            operator: &self.key,
        }
    }
}

/// One request on a node's admin link (blocking; bounded by timeouts).
pub fn admin_request(addr: SocketAddr, req: &AdminRequest) -> Result<AdminResponse> {
    let link = |message: String| OperatorError::AdminLink { addr, message };
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| link(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| link(e.to_string()))?;
    bkv_wire::node::write_frame(&mut s, req).map_err(|e| link(e.to_string()))?;
    let mut r = BufReader::new(s);
    bkv_wire::node::read_frame(&mut r)
        .map_err(|e| link(e.to_string()))?
        .ok_or_else(|| link("the node closed the admin link".into()))
}

/// The fleet's membership as the leader sees it, and the leader's admin
/// address (`admins` maps node ids to admin addresses).
pub fn members(admins: &BTreeMap<u64, SocketAddr>) -> Result<(SocketAddr, MembersView)> {
    let mut last = String::from("no node to ask");
    for _ in 0..100 {
        for addr in admins.values() {
            match admin_request(*addr, &AdminRequest::Members) {
                Ok(AdminResponse::Members(v)) => {
                    if let Some(l) = v.status.leader.and_then(|l| admins.get(&l)) {
                        if let Ok(AdminResponse::Members(lv)) =
                            admin_request(*l, &AdminRequest::Members)
                        {
                            return Ok((*l, lv));
                        }
                    }
                    last = "no leader yet".into();
                }
                Ok(AdminResponse::Error(e)) => last = e.to_string(),
                Ok(other) => last = format!("unexpected answer {other:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(OperatorError::Fleet(format!(
        "no leader found among the nodes: {last}"
    )))
}

/// Signs `action` for `fleet_id` as command number `seq`, valid for
/// [`COMMAND_LIFETIME_SECS`] from `now` (Unix seconds).
pub fn sign_command(
    key: &SigningKey,
    fleet_id: &str,
    seq: u64,
    now: u64,
    action: AdminAction,
) -> SignedAdminCommand {
    let command = bkv_wire::encode(&AdminCommand {
        version: ADMIN_COMMAND_VERSION,
        fleet_id: fleet_id.to_owned(),
        seq,
        not_after: now + COMMAND_LIFETIME_SECS,
        action,
    });
    let mut msg = ADMIN_CONTEXT.to_vec();
    msg.extend_from_slice(&command);
    SignedAdminCommand {
        signature: key.sign(&msg).to_bytes().to_vec(),
        command,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs and executes `action` on fleet `fleet_id`'s leader, following leadership changes. The
/// command is signed only for `fleet_id` and the sequence number the operator's ledger allows,
/// whatever the (unauthenticated) admin link answers.
pub fn execute(
    op: &Operator,
    admins: &BTreeMap<u64, SocketAddr>,
    fleet_id: &str,
    action: AdminAction,
) -> Result<MembersView> {
    let ledger = op.ledger.as_ref().ok_or_else(|| {
        OperatorError::Fleet(
            "this operator keeps no ledger of its commands: refusing to sign".into(),
        )
    })?;
    let mut last = String::new();
    for _ in 0..20 {
        let (leader, view) = members(admins)?;
        if view.fleet_id != fleet_id {
            return Err(OperatorError::Fleet(format!(
                "the admin link answers for fleet {}, not {fleet_id}: refusing to sign",
                view.fleet_id
            )));
        }
        let seq = ledger.check(fleet_id, view.next_seq)?;
        ledger.record(fleet_id, seq)?;
        let signed = sign_command(&op.key, fleet_id, seq, unix_now(), action.clone());
        match admin_request(leader, &AdminRequest::Execute(signed))? {
            AdminResponse::Executed(v) => return Ok(v),
            AdminResponse::Error(AdminError::NotLeader { .. } | AdminError::Unavailable(_)) => {
                last = "leadership changed".into();
                std::thread::sleep(Duration::from_millis(200));
            }
            AdminResponse::Error(e) => return Err(OperatorError::Refused(e)),
            other => return Err(OperatorError::Fleet(format!("unexpected answer {other:?}"))),
        }
    }
    Err(OperatorError::Fleet(format!(
        "the command did not execute: {last}"
    )))
}

fn record(fleet_id: &str, op: &Operator, change: MembershipChange) -> MembershipRecord {
    MembershipRecord {
        version: RECORD_VERSION,
        namespace: op.namespace.clone(),
        fleet_id: fleet_id.to_owned(),
        change,
    }
}

/// Logs the founding node of a freshly formed fleet; returns the record
/// and its log proof.
pub async fn log_founder(
    op: &Operator,
    fleet_id: &str,
    node_id: u64,
    statement: SignedStatement,
) -> Result<(MembershipRecord, bkv_wire::admin::LogProof)> {
    let r = record(fleet_id, op, MembershipChange::Found { node_id, statement });
    let proof = op.auditor().log_record(&r).await?;
    Ok((r, proof))
}

/// The `AddMember` for a node of fleet `fleet_id`, after logging its membership record (with its
/// platform statement) with the auditor. Not yet signed or sent.
pub async fn admission(
    op: &Operator,
    fleet_id: &str,
    node_id: u64,
    peer_addr: &str,
    statement: SignedStatement,
) -> Result<AdminAction> {
    let r = record(fleet_id, op, MembershipChange::Add { node_id, statement });
    let proof = op.auditor().log_record(&r).await?;
    Ok(AdminAction::AddMember {
        node_id,
        addr: peer_addr.to_owned(),
        record: r.encode(),
        proof,
    })
}

/// Admits a node to fleet `fleet_id` as a learner: logs its membership record with the
/// auditor, then executes a signed `AddMember` carrying the log proof.
pub async fn admit(
    op: &Operator,
    admins: &BTreeMap<u64, SocketAddr>,
    fleet_id: &str,
    node_id: u64,
    peer_addr: &str,
    statement: SignedStatement,
) -> Result<MembersView> {
    let action = admission(op, fleet_id, node_id, peer_addr, statement).await?;
    execute(op, admins, fleet_id, action)
}

/// A node's signed fleet statement (from its admin link).
pub fn fleet_statement(addr: SocketAddr) -> Result<bkv_wire::admin::SignedFleetStatement> {
    match admin_request(addr, &AdminRequest::FleetStatement)? {
        AdminResponse::FleetStatement(s) => Ok(s),
        AdminResponse::Error(e) => Err(OperatorError::Refused(e)),
        other => Err(OperatorError::Fleet(format!("unexpected answer {other:?}"))),
    }
}

/// Makes an admitted learner of fleet `fleet_id` a voter.
pub fn promote(
    op: &Operator,
    admins: &BTreeMap<u64, SocketAddr>,
    fleet_id: &str,
    node_id: u64,
) -> Result<MembersView> {
    execute(op, admins, fleet_id, AdminAction::Promote { node_id })
}

/// Removes a member of fleet `fleet_id`: logs the removal with the auditor, then executes a
/// signed `RemoveMember`.
pub async fn remove(
    op: &Operator,
    admins: &BTreeMap<u64, SocketAddr>,
    fleet_id: &str,
    node_id: u64,
) -> Result<MembersView> {
    let (_, view) = members(admins)?;
    if view.fleet_id != fleet_id {
        return Err(OperatorError::Fleet(format!(
            "the admin link answers for fleet {}, not {fleet_id}",
            view.fleet_id
        )));
    }
    let m = view
        .members
        .iter()
        .find(|m| m.node_id == node_id)
        .ok_or_else(|| {
            OperatorError::Fleet(format!(
                "node {node_id} is not a member of fleet {}",
                view.fleet_id
            ))
        })?;
    let r = record(
        fleet_id,
        op,
        MembershipChange::Remove {
            node_id,
            identity_key: m.identity_key,
        },
    );
    let proof = op.auditor().log_record(&r).await?;
    execute(
        op,
        admins,
        fleet_id,
        AdminAction::RemoveMember {
            node_id,
            record: r.encode(),
            proof,
        },
    )
}
