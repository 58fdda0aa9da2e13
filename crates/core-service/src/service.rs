//! The core service: the core plus its platform, answering [`Request`]s. It holds everything
//! secret (the node identity key, the fleet secrets, plain records in the core's cache, a
//! snapshot's frame key); the agent gets only what [`crate::protocol`] says crosses.

use crate::protocol::{Failure, LinkKeys, Opened, Reply, Request};
use bkv_hsm_core::sealed_state::{summary_position, Installer};
use bkv_hsm_core::{
    BucketHost, Core, Counter, FleetSecrets, NodeIdentity, PeerHandshake, SealSlot, SharedPlatform,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Handshakes the agent may leave unfinished at once; the oldest is dropped past this.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// The core's requests ([`crate::protocol::Role::Core`]).
pub struct CoreService {
    platform: SharedPlatform,
    binary_sha256: [u8; 32],
    identity: Option<Arc<NodeIdentity>>,
    secrets: Option<FleetSecrets>,
    core: Option<Core>,
    installer: Option<Installer>,
}

/// The core's (or its platform's) refusal.
fn failed(e: impl std::fmt::Display) -> Reply {
    Reply::Failed(Failure::Refused(e.to_string()))
}

fn not_open(what: Opened) -> Reply {
    Reply::Failed(Failure::NotOpen(what))
}

fn out_of_order(what: &str) -> Reply {
    Reply::Failed(Failure::OutOfOrder(what.to_owned()))
}

impl CoreService {
    /// A service over `platform`; `binary_sha256` is the hash statements name (the running core
    /// service binary's).
    pub fn new(platform: SharedPlatform, binary_sha256: [u8; 32]) -> Self {
        CoreService {
            platform,
            binary_sha256,
            identity: None,
            secrets: None,
            core: None,
            installer: None,
        }
    }

    /// The host's operations over the same platform and identity (after
    /// [`Request::OpenIdentity`]).
    pub fn host_service(&self) -> Option<HostService> {
        Some(HostService::new(
            self.platform.clone(),
            self.identity.clone()?,
        ))
    }

    /// Restores the records from `host` (the agent's table) and its sealed `summary`.
    pub fn restore(&mut self, host: Box<dyn BucketHost>, summary: Option<&[u8]>) -> Reply {
        self.installer = None;
        match &mut self.core {
            Some(core) => match core.records().restore(host, summary) {
                Ok(p) => Reply::Restored(p),
                Err(e) => failed(e),
            },
            None => not_open(Opened::Core),
        }
    }

    /// Answers one request of the core's connection.
    pub fn handle(&mut self, req: Request) -> Reply {
        match self.answer(req) {
            Ok(r) => r,
            Err(r) => r,
        }
    }

    fn core(&mut self) -> Result<&mut Core, Reply> {
        self.core.as_mut().ok_or_else(|| not_open(Opened::Core))
    }

    fn identity(&self) -> Result<Arc<NodeIdentity>, Reply> {
        self.identity
            .clone()
            .ok_or_else(|| not_open(Opened::Identity))
    }

    fn secrets_opened(&mut self, s: FleetSecrets, seal: bool) -> Result<Reply, Reply> {
        let sealed_new = match seal {
            true => Some(s.seal(&*self.platform).map_err(failed)?),
            false => None,
        };
        let reply = Reply::Secrets {
            sealed_new,
            fleet_id: s.fleet_id().to_owned(),
            noise_public_key: s.noise_public_key(),
        };
        self.secrets = Some(s);
        Ok(reply)
    }

    fn answer(&mut self, req: Request) -> Result<Reply, Reply> {
        let p = self.platform.clone();
        Ok(match req {
            Request::OpenIdentity { sealed } => {
                let (identity, sealed_new) = match sealed {
                    Some(s) => (NodeIdentity::unseal(&*p, &s).map_err(failed)?, None),
                    None => {
                        let id = NodeIdentity::generate(&*p).map_err(failed)?;
                        let s = id.seal(&*p).map_err(failed)?;
                        (id, Some(s))
                    }
                };
                let public = identity.public_key();
                self.identity = Some(Arc::new(identity));
                Reply::Identity { public, sealed_new }
            }
            Request::Statement => Reply::Statement(
                self.identity()?
                    .statement(&*p, self.binary_sha256)
                    .map_err(failed)?,
            ),
            Request::LoadSecrets { sealed } => {
                let s = FleetSecrets::unseal(&*p, &sealed).map_err(failed)?;
                self.secrets_opened(s, false)?
            }
            Request::FoundSecrets { trust } => {
                let s = FleetSecrets::generate(&*p, trust).map_err(failed)?;
                self.secrets_opened(s, true)?
            }
            Request::JoinSecrets { envelope } => {
                let s = self.identity()?.open_secrets(&envelope).map_err(failed)?;
                self.secrets_opened(s, true)?
            }
            Request::StartCore => {
                let identity = self.identity()?;
                let secrets = self
                    .secrets
                    .take()
                    .ok_or_else(|| not_open(Opened::Secrets))?;
                let core = Core::new(p, secrets, &identity).map_err(failed)?;
                let move_public_key = core.move_public_key();
                self.core = Some(core);
                self.installer = None;
                Reply::Started { move_public_key }
            }
            Request::SetSessionLimits {
                max_sessions,
                idle_secs,
            } => {
                let max = usize::try_from(max_sessions).unwrap_or(usize::MAX);
                self.core()?.set_session_limits(max, idle_secs);
                Reply::Done
            }
            Request::Status => {
                let core = self.core()?;
                Reply::Status {
                    sessions: core.session_count() as u64,
                    live_records: core.live_records(),
                }
            }
            Request::Members => Reply::Members(Box::new(self.core()?.state().members.clone())),
            Request::Admits { identity } => {
                let members = &self.core()?.state().members;
                Reply::Admits(match members.nodes.is_empty() {
                    true => None,
                    false => Some(members.admits(&identity)),
                })
            }
            Request::OpenSession { user_id, handshake } => {
                Reply::SessionOpened(self.core()?.open_session(&user_id, &handshake))
            }
            Request::CheckLogin {
                session_id,
                user_id,
            } => Reply::LoggedIn(self.core()?.session_logged_in(&session_id, &user_id)),
            Request::SessionMessage {
                session_id,
                user_id,
                ciphertext,
                fresh,
            } => Reply::Step(self.core()?.session_message_at(
                &session_id,
                &user_id,
                &ciphertext,
                fresh,
            )),
            Request::ResumeFresh {
                session_id,
                ciphertext,
            } => Reply::Step(self.core()?.resume_fresh(&session_id, &ciphertext)),
            Request::Resume { session_id } => Reply::Step(self.core()?.resume(&session_id)),
            Request::CommitFailed { session_id } => {
                self.core()?.commit_failed(&session_id);
                Reply::Done
            }
            Request::AdminEntry(signed) => Reply::AdminEntry(self.core()?.admin_entry(signed)),
            Request::FleetStatement { node_id } => {
                let (identity, bin) = (self.identity()?, self.binary_sha256);
                Reply::FleetStatement(
                    self.core()?
                        .fleet_statement(node_id, &identity, bin)
                        .map_err(failed)?,
                )
            }
            Request::FoundEntry { node_id, addr } => {
                let (identity, bin) = (self.identity()?, self.binary_sha256);
                Reply::Entry(
                    self.core()?
                        .found_entry(node_id, &addr, &identity, bin)
                        .map_err(failed)?,
                )
            }
            Request::Apply { entries, position } => {
                // A snapshot opened before these entries must not be finished after them.
                self.installer = None;
                let core = self.core()?;
                let mut outcomes = Vec::with_capacity(entries.len());
                for e in &entries {
                    outcomes.push(core.apply(e).map_err(failed)?);
                }
                let writes = core.records().take_writes();
                let summary = core.records().seal_summary(&position).map_err(failed)?;
                // The sessions the batch decided are answered with it, after one counter write
                // for all of them (`Core::release`): no `Resume` round trip each.
                let released = self.core()?.release_ready();
                Reply::Applied {
                    outcomes,
                    writes,
                    summary,
                    released,
                }
            }
            Request::Restore { .. } => out_of_order("a restore needs the agent's table"),
            Request::SummaryPosition { summary } => {
                Reply::Bytes(summary_position(&p, &summary).map_err(failed)?)
            }
            Request::ExportSecrets { identity } => {
                Reply::Bytes(self.core()?.export_secrets_to(&identity).map_err(failed)?)
            }
            Request::SnapshotHeader { summary } => {
                let s = self.core()?.snapshot_header(&summary).map_err(failed)?;
                Reply::StreamStart {
                    header: s.header,
                    position: s.position,
                    nonce: s.nonce,
                }
            }
            Request::SnapshotFrame {
                nonce,
                bucket,
                sealed,
            } => Reply::Bytes(
                self.core()?
                    .snapshot_frame(nonce, bucket, &sealed)
                    .map_err(failed)?,
            ),
            Request::InstallBegin { header } => {
                let installer = self.core()?.open_snapshot(&header).map_err(failed)?;
                let position = installer.position().to_vec();
                self.installer = Some(installer);
                Reply::Bytes(position)
            }
            Request::InstallFrame { bucket, frame } => {
                let installer = self.installer()?;
                Reply::Bytes(installer.add_frame(bucket, &frame).map_err(failed)?)
            }
            Request::InstallSummary => {
                Reply::Bytes(self.installer()?.seal_summary().map_err(failed)?)
            }
            Request::InstallFinish => {
                let installer = self
                    .installer
                    .take()
                    .ok_or_else(|| out_of_order("no snapshot is being installed"))?;
                self.core()?
                    .records()
                    .finish_install(installer)
                    .map_err(failed)?;
                Reply::Done
            }
            host => Reply::Failed(Failure::WrongConnection(request_name(&host))),
        })
    }

    fn installer(&mut self) -> Result<&mut Installer, Reply> {
        self.installer
            .as_mut()
            .ok_or_else(|| out_of_order("no snapshot is being installed"))
    }
}

/// A request's variant name, for a refusal (an error path only: it formats the request).
fn request_name(r: &Request) -> String {
    let debug = format!("{r:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The host's own operations ([`crate::protocol::Role::Host`]): its counter-bound state and the
/// peer-link handshakes. Only the `raft-state` slot can be named: nothing of the core's.
pub struct HostService {
    platform: SharedPlatform,
    identity: Arc<NodeIdentity>,
    pending: Mutex<(u64, HashMap<u64, PeerHandshake>)>,
}

/// A Noise handshake message is far below this.
const HANDSHAKE_BUF: usize = 1024;

impl HostService {
    /// The host's operations of a core in this process (a single-binary node, tests).
    pub fn new(platform: SharedPlatform, identity: Arc<NodeIdentity>) -> Self {
        HostService {
            platform,
            identity,
            pending: Mutex::default(),
        }
    }

    /// The platform (the agent in the same process describes it from here).
    pub fn platform(&self) -> &SharedPlatform {
        &self.platform
    }

    /// Answers one request of the host's connection.
    pub fn handle(&self, req: Request) -> Reply {
        let p = &self.platform;
        let platform =
            |r: Result<Reply, bkv_hsm_core::PlatformError>| r.unwrap_or_else(Reply::Platform);
        match req {
            Request::Describe => Reply::Described {
                description: p.describe(),
                signing_key: p.signing_public_key(),
            },
            Request::SealHost { label, plaintext } => platform(
                p.seal(SealSlot::RaftState, &label, &plaintext)
                    .map(Reply::Bytes),
            ),
            Request::UnsealHost { label, sealed } => platform(
                p.unseal(SealSlot::RaftState, &label, &sealed)
                    .map(|v| Reply::Bytes(v.to_vec())),
            ),
            // The host's connection names the raft log's counter only.
            Request::CounterRead => platform(p.counter_read(Counter::Raft).map(Reply::Counter)),
            Request::CounterAdvance { value } => platform(
                p.counter_advance_to(Counter::Raft, value)
                    .map(|()| Reply::Done),
            ),
            Request::LinkInitiate { remote } => self.initiate(&remote).unwrap_or_else(failed),
            Request::LinkFinish { id, message } => self.finish(id, &message).unwrap_or_else(failed),
            Request::LinkRespond { message } => self.respond(&message).unwrap_or_else(failed),
            _ => Reply::Failed(Failure::WrongConnection(request_name(&req))),
        }
    }

    fn initiate(&self, remote: &[u8; 32]) -> Result<Reply, bkv_hsm_core::CoreError> {
        let mut hs = self.identity.initiate(&self.platform, remote)?;
        let mut buf = vec![0u8; HANDSHAKE_BUF];
        let n = hs.write_message(&[], &mut buf)?;
        buf.truncate(n);
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| bkv_hsm_core::CoreError::Handshake)?;
        let (next, table) = &mut *pending;
        *next = next.wrapping_add(1);
        let id = *next;
        if table.len() >= MAX_PENDING_HANDSHAKES {
            // The oldest (smallest id) goes: its link has long timed out.
            if let Some(old) = table.keys().min().copied() {
                table.remove(&old);
            }
        }
        table.insert(id, hs);
        Ok(Reply::Handshake { id, message: buf })
    }

    fn finish(&self, id: u64, message: &[u8]) -> Result<Reply, bkv_hsm_core::CoreError> {
        let hs = self
            .pending
            .lock()
            .map_err(|_| bkv_hsm_core::CoreError::Handshake)?
            .1
            .remove(&id);
        let mut hs = hs.ok_or(bkv_hsm_core::CoreError::Handshake)?;
        let mut buf = vec![0u8; HANDSHAKE_BUF];
        hs.read_message(message, &mut buf)?;
        Ok(Reply::Link(link_keys(hs)?))
    }

    fn respond(&self, message: &[u8]) -> Result<Reply, bkv_hsm_core::CoreError> {
        let mut hs = self.identity.respond(&self.platform)?;
        let mut buf = vec![0u8; HANDSHAKE_BUF];
        hs.read_message(message, &mut buf)?;
        let n = hs.write_message(&[], &mut buf)?;
        buf.truncate(n);
        Ok(Reply::Responded {
            message: buf,
            keys: link_keys(hs)?,
        })
    }
}

fn link_keys(hs: PeerHandshake) -> Result<LinkKeys, bkv_hsm_core::CoreError> {
    let remote = hs
        .remote_static()
        .ok_or(bkv_hsm_core::CoreError::Handshake)?;
    let (send, recv) = hs.into_link_keys()?;
    Ok(LinkKeys {
        remote,
        send: *send,
        recv: *recv,
    })
}
