//! Operator administration of a fleet over the nodes' admin links. Every
//! command is signed with the operator key (the one pinned in the fleet when
//! it was formed) and carries the fleet's next admin sequence number, so a
//! captured command never runs twice; membership changes are logged with the
//! auditor first, because the nodes' cores admit no one the log does not show.

use anyhow::{anyhow, bail, Context};
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
const COMMAND_LIFETIME_SECS: u64 = 300;

/// Who administers a fleet, and where its membership is logged.
pub struct Operator {
    pub key: SigningKey,
    pub auditor_url: String,
    pub namespace: String,
}

/// One request on a node's admin link.
pub fn admin_request(addr: SocketAddr, req: &AdminRequest) -> anyhow::Result<AdminResponse> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect to the admin link at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    bkv_wire::node::write_frame(&mut s, req)?;
    let mut r = BufReader::new(s);
    bkv_wire::node::read_frame(&mut r)?
        .ok_or_else(|| anyhow!("node at {addr} closed the admin link"))
}

/// The fleet's membership as the leader sees it, and the leader's admin
/// address (`admins` maps node ids to admin addresses).
pub fn members(admins: &BTreeMap<u64, SocketAddr>) -> anyhow::Result<(SocketAddr, MembersView)> {
    let mut last = anyhow!("no node to ask");
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
                    last = anyhow!("no leader yet");
                }
                Ok(AdminResponse::Error(e)) => last = anyhow!("{e}"),
                Ok(other) => last = anyhow!("unexpected answer {other:?}"),
                Err(e) => last = e,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.context("find the fleet's leader"))
}

/// Signs `action` for `fleet_id` as command number `seq`.
pub fn sign_command(
    key: &SigningKey,
    fleet_id: &str,
    seq: u64,
    action: AdminAction,
) -> SignedAdminCommand {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
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

/// Signs and executes `action` on the leader, following leadership changes.
pub fn execute(
    op: &Operator,
    admins: &BTreeMap<u64, SocketAddr>,
    action: AdminAction,
) -> anyhow::Result<MembersView> {
    let mut last = String::new();
    for _ in 0..20 {
        let (leader, view) = members(admins)?;
        let signed = sign_command(&op.key, &view.fleet_id, view.next_seq, action.clone());
        match admin_request(leader, &AdminRequest::Execute(signed))? {
            AdminResponse::Executed(v) => return Ok(v),
            AdminResponse::Error(AdminError::NotLeader { .. } | AdminError::Unavailable(_)) => {
                last = "leadership changed".into();
                std::thread::sleep(Duration::from_millis(200));
            }
            AdminResponse::Error(e) => bail!("the fleet refused the command: {e}"),
            other => bail!("unexpected answer {other:?}"),
        }
    }
    bail!("the command did not execute: {last}")
}

fn record(fleet_id: &str, op: &Operator, change: MembershipChange) -> MembershipRecord {
    MembershipRecord {
        version: RECORD_VERSION,
        namespace: op.namespace.clone(),
        fleet_id: fleet_id.to_owned(),
        change,
    }
}

/// Logs the founding node of a freshly formed fleet.
pub async fn log_founder(
    op: &Operator,
    fleet_id: &str,
    node_id: u64,
    statement: SignedStatement,
) -> anyhow::Result<()> {
    let r = record(fleet_id, op, MembershipChange::Found { node_id, statement });
    crate::audit::log_record(&reqwest::Client::new(), &op.auditor_url, &op.key, &r).await?;
    Ok(())
}

/// Admits a node as a learner: logs its membership record (with its
/// platform statement) with the auditor, then executes a signed `AddMember`
/// carrying the log proof.
pub async fn admit(
    op: &Operator,
    admins: &BTreeMap<u64, SocketAddr>,
    node_id: u64,
    peer_addr: &str,
    statement: SignedStatement,
) -> anyhow::Result<MembersView> {
    let (_, view) = members(admins)?;
    let r = record(
        &view.fleet_id,
        op,
        MembershipChange::Add { node_id, statement },
    );
    let proof = crate::audit::log_record(&reqwest::Client::new(), &op.auditor_url, &op.key, &r)
        .await
        .context("log the new member with the auditor")?;
    execute(
        op,
        admins,
        AdminAction::AddMember {
            node_id,
            addr: peer_addr.to_owned(),
            record: r.encode(),
            proof,
        },
    )
}

/// Makes an admitted learner a voter.
pub fn promote(
    op: &Operator,
    admins: &BTreeMap<u64, SocketAddr>,
    node_id: u64,
) -> anyhow::Result<MembersView> {
    execute(op, admins, AdminAction::Promote { node_id })
}

/// Removes a member: logs the removal with the auditor, then executes a
/// signed `RemoveMember`.
pub async fn remove(
    op: &Operator,
    admins: &BTreeMap<u64, SocketAddr>,
    node_id: u64,
) -> anyhow::Result<MembersView> {
    let (_, view) = members(admins)?;
    let m = view
        .members
        .iter()
        .find(|m| m.node_id == node_id)
        .ok_or_else(|| anyhow!("node {node_id} is not a member of fleet {}", view.fleet_id))?;
    let r = record(
        &view.fleet_id,
        op,
        MembershipChange::Remove {
            node_id,
            identity_key: m.identity_key,
        },
    );
    let proof = crate::audit::log_record(&reqwest::Client::new(), &op.auditor_url, &op.key, &r)
        .await
        .context("log the removal with the auditor")?;
    execute(
        op,
        admins,
        AdminAction::RemoveMember {
            node_id,
            record: r.encode(),
            proof,
        },
    )
}
