//! The deployment ceremony as one choreography. The order of its steps lives here once: every
//! node's platform statement; the founder starts and forms the fleet; each further node is
//! admitted (its membership record logged, a signed command), started, caught up and promoted,
//! and states the fleet keys it received; the witnesses sign the transcript's head; the
//! evidence is stored and logged with the auditor. What differs between deployments is who
//! starts a node and how witnesses are asked ([`Hosts`]): `dev up` starts local processes
//! (`dev::DevHosts`), `bkv-admin fleet form` prompts the operator and waits (`form::Prompt`).
//! The record keeping itself is `bkv_operator::ceremony`.

use anyhow::{anyhow, bail};
use bkv_operator::ceremony::Ceremony;
use bkv_operator::fleet::{self as fleet_admin, Operator};
use bkv_transparency::evidence::Witness;
use bkv_wire::admin::{AdminRequest, AdminResponse, SignedFleetStatement, SignedStatement};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A node the fleet is formed from.
pub(crate) struct PlannedNode {
    /// Its id in the fleet (the founder's comes first in a plan).
    pub(crate) id: u64,
    /// Its peer-link address as the other nodes reach it.
    pub(crate) peer: String,
    /// What `bkv-hsm --print-statement` printed on its host.
    pub(crate) statement: SignedStatement,
}

/// The parts of a ceremony a deployment does its own way.
pub(crate) trait Hosts {
    /// Has the founding node started (`[fleet] found`); its admin address once it answers.
    async fn found(&mut self, node: &PlannedNode) -> anyhow::Result<SocketAddr>;
    /// The fleet's members so far, for where joining nodes read them (`[fleet] join`).
    fn members(&mut self, members: &[bkv_hsm_node::Member]) -> anyhow::Result<()>;
    /// Has an admitted node started; its admin address once it answers.
    async fn join(&mut self, node: &PlannedNode) -> anyhow::Result<SocketAddr>;
    /// Has every witness check `draft` and sign its transcript head with their own tool and
    /// keys (`bkv witness ceremony`); their signatures.
    async fn witness(&mut self, fleet_id: &str, draft: &[u8]) -> anyhow::Result<Vec<Witness>>;
    /// Stores the finished evidence (before it is logged).
    fn evidence(&mut self, fleet_id: &str, evidence: &[u8]) -> anyhow::Result<()>;
    /// The founder's fleet is formed: its statement checked and its record logged.
    fn founded(&mut self, _node: u64) {}
    /// A further node is a voter and stated the fleet keys it holds.
    fn joined(&mut self, _node: u64) {}
}

/// What the ceremony needs besides the nodes.
pub(crate) struct Terms<'a> {
    /// Who signs admissions and logs records and evidence.
    pub(crate) operator: &'a Operator,
    /// The witnesses' public keys: each must have signed.
    pub(crate) witness_keys: &'a [[u8; 32]],
    /// The source commit and toolchain the nodes' binary was built from (in the evidence).
    pub(crate) source_commit: String,
    /// See `source_commit`.
    pub(crate) toolchain: String,
    /// How long a node may take to catch up before it is promoted.
    pub(crate) wait: Duration,
}

/// A formed fleet: its evidence file's bytes (stored by [`Hosts::evidence`] and logged).
pub(crate) struct Formed {
    pub(crate) evidence: Vec<u8>,
}

/// Forms a fleet of `nodes` (the founder first) by the ceremony.
pub(crate) async fn form(
    terms: &Terms<'_>,
    nodes: &[PlannedNode],
    hosts: &mut impl Hosts,
) -> anyhow::Result<Formed> {
    let op = terms.operator;
    let statements: Vec<_> = nodes.iter().map(|n| (n.id, n.statement.clone())).collect();
    let mut c = Ceremony::begin(op, &statements)?;
    let (first, rest) = nodes
        .split_first()
        .ok_or_else(|| anyhow!("a ceremony needs a node"))?;
    let admin = hosts.found(first).await?;
    let fs = fleet_statement(admin, terms.wait).await?;
    let fleet_id = bkv_transparency::evidence::verify_fleet_statement(&fs)
        .map_err(|e| anyhow!("node {}'s fleet statement: {e}", first.id))?
        .fleet_id;
    c.formed(first.id, first.statement.clone(), fs).await?;
    let mut members = vec![member(first)?];
    hosts.members(&members)?;
    let mut admins = BTreeMap::from([(first.id, admin)]);
    hosts.founded(first.id);
    for n in rest {
        c.admit(&admins, n.id, &n.peer, n.statement.clone()).await?;
        members.push(member(n)?);
        hosts.members(&members)?;
        let admin = hosts.join(n).await?;
        admins.insert(n.id, admin);
        promote_when_caught_up(op, &admins, &fleet_id, n.id, terms.wait).await?;
        c.joined(n.id, fleet_statement(admin, terms.wait).await?)?;
        hosts.joined(n.id);
    }
    let draft = c.draft(&terms.source_commit, &terms.toolchain)?;
    let signatures = hosts.witness(&fleet_id, &draft).await?;
    let evidence = bkv_operator::ceremony::finish(&draft, signatures, terms.witness_keys)?;
    hosts.evidence(&fleet_id, &evidence)?;
    op.auditor().log_evidence(&op.namespace, &evidence).await?;
    Ok(Formed { evidence })
}

/// The signed fleet statement of the node at `admin`, asked again until it answers (it may
/// still be starting) or `wait` has passed.
pub(crate) async fn fleet_statement(
    admin: SocketAddr,
    wait: Duration,
) -> anyhow::Result<SignedFleetStatement> {
    let deadline = Instant::now() + wait;
    loop {
        match tokio::task::spawn_blocking(move || fleet_admin::fleet_statement(admin)).await? {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                bail!("node at {admin} did not answer within {wait:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The members-file entry of a planned node: its identity key from its statement.
fn member(n: &PlannedNode) -> anyhow::Result<bkv_hsm_node::Member> {
    let st = bkv_transparency::membership::verify_statement(&n.statement)
        .map_err(|e| anyhow!("node {}'s statement: {e}", n.id))?;
    Ok(bkv_hsm_node::Member {
        id: n.id,
        addr: n.peer.clone(),
        identity: hex::encode(st.identity_key),
    })
}

/// Promotes admitted node `id` (at `admins[id]`) to a voter once it applied what the leader
/// had applied: a voter that lags would only slow every commit down.
pub(crate) async fn promote_when_caught_up(
    op: &Operator,
    admins: &BTreeMap<u64, SocketAddr>,
    fleet_id: &str,
    id: u64,
    wait: Duration,
) -> anyhow::Result<()> {
    let admin = *admins
        .get(&id)
        .ok_or_else(|| anyhow!("node {id} has no admin address"))?;
    let (_, leader) = fleet_admin::members(admins)?;
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(AdminResponse::Members(v)) =
            fleet_admin::admin_request(admin, &AdminRequest::Members)
        {
            if v.status.applied_index >= leader.status.applied_index {
                break;
            }
        }
        if Instant::now() >= deadline {
            bail!("node {id} at {admin} did not catch up within {wait:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet_admin::promote(op, admins, fleet_id, id)?;
    Ok(())
}
