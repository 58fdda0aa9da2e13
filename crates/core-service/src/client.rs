//! The agent's side of the boundary: the core as a [`CoreHandle`] and the host's own operations
//! as a [`HostHandle`], each either in this process (a single-binary node, tests) or a core
//! service process over a Unix-domain socket ([`crate::protocol`]). Both carry the same
//! requests, so the agent's code is the same either way.

use crate::pipe::{carries_entry, Answer, Pending, Pipe, Sequencer};
use crate::protocol::{
    read_message, write_message, FrameError, FromCore, LinkKeys, Reply, Request, Role, ToCore,
    PROTOCOL_VERSION,
};
use crate::service::{CoreService, HostService};
use bkv_hsm_core::{BucketHost, Counter, Platform, PlatformError, SealSlot};
use bkv_wire::admin::PlatformDescription;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the agent waits for one message of the core service.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

static CALLS: AtomicU64 = AtomicU64::new(0);
static APPLIES: AtomicU64 = AtomicU64::new(0);
static APPLIED_ENTRIES: AtomicU64 = AtomicU64::new(0);
pub(crate) static CALLBACKS: AtomicU64 = AtomicU64::new(0);
static HOST_CALLS: AtomicU64 = AtomicU64::new(0);

static ON_BROKEN: std::sync::OnceLock<fn(&str)> = std::sync::OnceLock::new();

/// Sets what happens when the core is gone: a connection to it broke, or the child running it
/// exited. A node's binary exits, so that its supervisor restarts agent and core together
/// (nothing is lost: every answer waited for its commit). Without a hook, requests fail.
pub fn on_core_gone(hook: fn(&str)) {
    let _ = ON_BROKEN.set(hook);
}

/// Set once this process stops a core service child on purpose: connections to it breaking
/// then are the stop, not the core gone.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn stopping_core() {
    STOPPING.store(true, Ordering::SeqCst);
}

pub(crate) fn core_gone(why: &str) {
    if STOPPING.load(Ordering::SeqCst) {
        return;
    }
    if let Some(hook) = ON_BROKEN.get() {
        hook(why);
    }
}

/// Core-boundary crossings so far in this process (BENCHMARKS.md "The core boundary").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Crossings {
    /// Requests to the core (each a round trip), all kinds.
    pub requests: u64,
    /// Of those, `Apply` requests (one per batch of committed entries openraft applies).
    pub applies: u64,
    /// Log entries those `Apply` requests carried.
    pub applied_entries: u64,
    /// Bucket questions the core asked within requests (round trips too across processes).
    pub bucket_reads: u64,
    /// Requests on the host connection (the agent's `raft-state` seal and open, the counter,
    /// peer-link handshakes): two per raft log write (seal, then advance the counter).
    pub host_requests: u64,
}

/// The crossings counted so far.
pub fn crossings() -> Crossings {
    Crossings {
        requests: CALLS.load(Ordering::Relaxed),
        applies: APPLIES.load(Ordering::Relaxed),
        applied_entries: APPLIED_ENTRIES.load(Ordering::Relaxed),
        bucket_reads: CALLBACKS.load(Ordering::Relaxed),
        host_requests: HOST_CALLS.load(Ordering::Relaxed),
    }
}

/// Why a request across the boundary failed.
#[derive(Debug, thiserror::Error)]
pub enum BoundaryError {
    /// The socket failed, or a message was too large or malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The core service speaks another protocol version (the one given).
    #[error("core service speaks protocol version {0}, this agent {PROTOCOL_VERSION}")]
    Version(u16),
    /// The service sent a message of the wrong kind, or the connection is broken already.
    #[error("core service: unexpected {0}")]
    Unexpected(&'static str),
    /// The service failed or refused the request ([`Reply::Failed`]).
    #[error("core service: {0}")]
    Failed(crate::protocol::Failure),
    /// A host request's platform operation failed ([`Reply::Platform`]).
    #[error("core service: {0}")]
    Platform(PlatformError),
}

/// A reply of the wrong kind, or the service's failure, as an error.
pub fn unexpected(r: Reply) -> BoundaryError {
    match r {
        Reply::Failed(e) => BoundaryError::Failed(e),
        Reply::Platform(e) => BoundaryError::Platform(e),
        _ => BoundaryError::Unexpected("reply"),
    }
}

/// One connection to a core service. After any failed exchange it is broken for good: a late
/// reply must never be read as the answer to the next request.
pub struct Conn {
    stream: UnixStream,
    broken: bool,
    /// Requests sent with [`Conn::call_deferred`] whose replies are still unread.
    deferred: usize,
}

impl Conn {
    /// Connects to the core service at `socket` in `role` and checks its protocol version.
    pub fn connect(socket: &Path, role: Role) -> Result<Conn, BoundaryError> {
        let stream = UnixStream::connect(socket).map_err(FrameError::Io)?;
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(FrameError::Io)?;
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .map_err(FrameError::Io)?;
        let mut conn = Conn {
            stream,
            broken: false,
            deferred: 0,
        };
        conn.send(&ToCore::Hello {
            version: PROTOCOL_VERSION,
            role,
        })?;
        match conn.recv()? {
            FromCore::Hello { version } if version == PROTOCOL_VERSION => Ok(conn),
            FromCore::Hello { version } => Err(BoundaryError::Version(version)),
            _ => Err(BoundaryError::Unexpected("greeting")),
        }
    }

    fn send(&mut self, m: &ToCore) -> Result<(), BoundaryError> {
        Ok(write_message(&mut self.stream, m)?)
    }

    /// The socket, for a [`Pipe`] to take over.
    pub(crate) fn into_stream(self) -> UnixStream {
        self.stream
    }

    fn recv(&mut self) -> Result<FromCore, BoundaryError> {
        Ok(read_message(&mut self.stream)?)
    }

    /// One request of the host connection. A broken connection is the core gone
    /// ([`on_core_gone`]). (The core connection is a [`Pipe`], which answers the core's bucket
    /// questions; none comes on this one.)
    fn call(&mut self, req: Request) -> Result<Reply, BoundaryError> {
        self.settle()?;
        let r = self.exchange(req);
        self.check(r)
    }

    /// Sends a request whose reply must be `Done` and reads that reply only before the next
    /// request ([`Conn::settle`]): a deferred counter advance (`HostHandle::counter_advance_soon`).
    fn call_deferred(&mut self, req: Request) -> Result<(), BoundaryError> {
        self.settle()?;
        let r = self.send(&ToCore::Call(req));
        self.check(r)?;
        self.deferred += 1;
        Ok(())
    }

    /// Reads the replies of deferred requests. One that is not `Done` (the raft counter did
    /// not advance) ends the connection like a broken one: whichever request finds it (the
    /// next raft write, or a link handshake of another thread) fails, and so does every later
    /// one, and the node stops ([`on_core_gone`]) instead of going on with its counter behind
    /// its disk.
    fn settle(&mut self) -> Result<(), BoundaryError> {
        if self.broken {
            return Err(BoundaryError::Unexpected("request on a broken connection"));
        }
        while self.deferred > 0 {
            self.deferred -= 1;
            let r = self.reply();
            match self.check(r)? {
                Reply::Done => {}
                r => {
                    let e = unexpected(r);
                    self.broken = true;
                    core_gone(&format!("the raft counter did not advance: {e}"));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn check<T>(&mut self, r: Result<T, BoundaryError>) -> Result<T, BoundaryError> {
        if let Err(e) = &r {
            self.broken = true;
            core_gone(&format!("the connection to the core service broke: {e}"));
        }
        r
    }

    fn exchange(&mut self, req: Request) -> Result<Reply, BoundaryError> {
        self.send(&ToCore::Call(req))?;
        self.reply()
    }

    fn reply(&mut self) -> Result<Reply, BoundaryError> {
        match self.recv()? {
            FromCore::Reply(r) => Ok(r),
            FromCore::ReadBucket(_) | FromCore::ListBuckets => Err(BoundaryError::Unexpected(
                "a bucket question on the host connection",
            )),
            FromCore::Hello { .. } => Err(BoundaryError::Unexpected("greeting")),
        }
    }
}

/// The core, in this process or in a core service.
pub enum CoreHandle {
    /// The core service in this process.
    Local {
        /// The service answering the core's requests.
        service: Box<CoreService>,
        /// Hands out the turns of entry-carrying replies, in the order the core made them.
        order: Arc<Sequencer>,
    },
    /// A core service's core connection, pipelined ([`crate::pipe`]).
    Remote(Pipe),
}

/// A request sent: its answer is ready (in this process) or on its way ([`Pending`]).
pub enum Sent {
    /// Answered already (a core in this process).
    Ready(Answer),
    /// Written to a core service; the reply is still to be read.
    Waiting(Pending),
}

impl Sent {
    /// The reply, and the turn of the entry it carries, if any ([`Turn`]: end it once the
    /// entry is submitted).
    pub fn wait(self) -> Result<Answer, BoundaryError> {
        self.wait_with(|_| {})
    }

    /// [`Sent::wait`], running `seen` on the reply before any later request's reply or bucket
    /// question is read ([`Pending::wait_with`]).
    pub fn wait_with(self, mut seen: impl FnMut(&Reply)) -> Result<Answer, BoundaryError> {
        match self {
            Sent::Ready(a) => {
                seen(&a.0);
                Ok(a)
            }
            Sent::Waiting(p) => p.wait_with(seen),
        }
    }
}

impl CoreHandle {
    /// The core in this process.
    pub fn local(service: CoreService) -> Self {
        CoreHandle::Local {
            service: Box::new(service),
            order: Arc::default(),
        }
    }

    /// A core service's core connection.
    pub fn remote(socket: &Path) -> Result<Self, BoundaryError> {
        Ok(CoreHandle::Remote(Pipe::start(
            Conn::connect(socket, Role::Core)?,
            READ_TIMEOUT,
        )?))
    }

    /// The service, when it runs in this process.
    pub fn local_service(&self) -> Option<&CoreService> {
        match self {
            CoreHandle::Local { service, .. } => Some(service),
            CoreHandle::Remote(_) => None,
        }
    }

    /// Sends one request to the core. A caller that holds the handle behind a lock lets go of
    /// it before [`Sent::wait`], so other requests queue up behind this one meanwhile.
    pub fn send(&mut self, req: Request) -> Result<Sent, BoundaryError> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        if let Request::Apply { entries, .. } = &req {
            APPLIES.fetch_add(1, Ordering::Relaxed);
            APPLIED_ENTRIES.fetch_add(entries.len() as u64, Ordering::Relaxed);
        }
        match self {
            CoreHandle::Local { service, order } => {
                let reply = service.handle(req);
                let turn = carries_entry(&reply).then(|| order.turn());
                Ok(Sent::Ready((reply, turn)))
            }
            CoreHandle::Remote(pipe) => Ok(Sent::Waiting(pipe.send(req)?)),
        }
    }

    /// One request and its reply, with the turn of the entry it carries (hold it until the
    /// entry is submitted).
    pub fn call_ordered(&mut self, req: Request) -> Result<Answer, BoundaryError> {
        self.send(req)?.wait()
    }

    /// One request and its reply (an entry it carries is not submitted in the core's order:
    /// see [`Self::call_ordered`]).
    pub fn call(&mut self, req: Request) -> Result<Reply, BoundaryError> {
        Ok(self.call_ordered(req)?.0)
    }

    /// Restores the core's records from `host` (the agent's table of sealed buckets) and its
    /// sealed `summary`; returns the position the summary names.
    pub fn restore(
        &mut self,
        host: Box<dyn BucketHost>,
        summary: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, BoundaryError> {
        let reply = match self {
            CoreHandle::Local { service, .. } => {
                CALLS.fetch_add(1, Ordering::Relaxed);
                service.restore(host, summary)
            }
            CoreHandle::Remote(pipe) => {
                pipe.set_buckets(host)?;
                self.call(Request::Restore {
                    summary: summary.map(<[u8]>::to_vec),
                })?
            }
        };
        match reply {
            Reply::Restored(p) => Ok(p),
            r => Err(unexpected(r)),
        }
    }
}

/// The host's own operations: its counter-bound `raft-state` and the counter (as a
/// [`Platform`] that can name no slot of the core's and sign nothing), and peer-link handshakes.
pub enum HostHandle {
    /// The host's operations of a core in this process.
    Local(HostService),
    /// A core service's host connection.
    Remote {
        /// The host connection, one request at a time.
        conn: Mutex<Conn>,
        /// The platform's description, read once when connecting.
        description: PlatformDescription,
        /// The platform signing key's Ed25519 public key, read once when connecting.
        signing_key: [u8; 32],
    },
}

impl HostHandle {
    /// A core service's host connection.
    pub fn remote(socket: &Path) -> Result<Self, BoundaryError> {
        let mut conn = Conn::connect(socket, Role::Host)?;
        match conn.call(Request::Describe)? {
            Reply::Described {
                description,
                signing_key,
            } => Ok(HostHandle::Remote {
                conn: Mutex::new(conn),
                description,
                signing_key,
            }),
            r => Err(unexpected(r)),
        }
    }

    fn call(&self, req: Request) -> Result<Reply, BoundaryError> {
        HOST_CALLS.fetch_add(1, Ordering::Relaxed);
        match self {
            HostHandle::Local(s) => Ok(s.handle(req)),
            HostHandle::Remote { conn, .. } => conn
                .lock()
                .map_err(|_| BoundaryError::Unexpected("poisoned connection"))?
                .call(req),
        }
    }

    /// Starts a peer-link handshake to `remote`: the handshake's id and first message.
    pub fn link_initiate(&self, remote: &[u8; 32]) -> Result<(u64, Vec<u8>), BoundaryError> {
        match self.call(Request::LinkInitiate { remote: *remote })? {
            Reply::Handshake { id, message } => Ok((id, message)),
            r => Err(unexpected(r)),
        }
    }

    /// Finishes handshake `id` with the responder's answer.
    pub fn link_finish(&self, id: u64, message: Vec<u8>) -> Result<LinkKeys, BoundaryError> {
        match self.call(Request::LinkFinish { id, message })? {
            Reply::Link(keys) => Ok(keys),
            r => Err(unexpected(r)),
        }
    }

    /// Answers an initiator's first message: the answer and the link's keys.
    pub fn link_respond(&self, message: Vec<u8>) -> Result<(Vec<u8>, LinkKeys), BoundaryError> {
        match self.call(Request::LinkRespond { message })? {
            Reply::Responded { message, keys } => Ok((message, keys)),
            r => Err(unexpected(r)),
        }
    }

    fn platform_call(&self, req: Request) -> Result<Reply, PlatformError> {
        match self.call(req) {
            Ok(Reply::Platform(e)) => Err(e),
            Ok(r) => Ok(r),
            Err(e) => Err(PlatformError::KeyStore(e.to_string())),
        }
    }
}

fn not_the_agents(what: &str) -> PlatformError {
    PlatformError::KeyStore(format!("the host agent cannot {what}"))
}

impl Platform for HostHandle {
    fn describe(&self) -> PlatformDescription {
        match self {
            HostHandle::Local(s) => s.platform().describe(),
            HostHandle::Remote { description, .. } => description.clone(),
        }
    }
    fn fill_random(&self, out: &mut [u8]) -> Result<(), PlatformError> {
        rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, out)
            .map_err(|e| PlatformError::Random(e.to_string()))
    }
    fn now_unix_secs(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
    fn seal(&self, slot: SealSlot, label: &[u8], plain: &[u8]) -> Result<Vec<u8>, PlatformError> {
        if slot != SealSlot::RaftState {
            return Err(not_the_agents("seal a value of the core's"));
        }
        match self.platform_call(Request::SealHost {
            label: label.to_vec(),
            plaintext: plain.to_vec(),
        })? {
            Reply::Bytes(b) => Ok(b),
            _ => Err(PlatformError::Malformed),
        }
    }
    fn unseal(
        &self,
        slot: SealSlot,
        label: &[u8],
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, PlatformError> {
        if slot != SealSlot::RaftState {
            return Err(not_the_agents("open a value of the core's"));
        }
        match self.platform_call(Request::UnsealHost {
            label: label.to_vec(),
            sealed: sealed.to_vec(),
        })? {
            Reply::Bytes(b) => Ok(zeroize::Zeroizing::new(b)),
            _ => Err(PlatformError::Malformed),
        }
    }
    fn signing_public_key(&self) -> [u8; 32] {
        match self {
            HostHandle::Local(s) => s.platform().signing_public_key(),
            HostHandle::Remote { signing_key, .. } => *signing_key,
        }
    }
    fn sign(&self, _: &[u8]) -> Result<[u8; 64], PlatformError> {
        Err(not_the_agents("sign"))
    }
    fn counter_read(&self, c: Counter) -> Result<u64, PlatformError> {
        if c != Counter::Raft {
            return Err(not_the_agents("read the core's counter"));
        }
        match self.platform_call(Request::CounterRead)? {
            Reply::Counter(v) => Ok(v),
            _ => Err(PlatformError::Malformed),
        }
    }
    fn counter_advance_to(&self, c: Counter, value: u64) -> Result<(), PlatformError> {
        if c != Counter::Raft {
            return Err(not_the_agents("raise the core's counter"));
        }
        match self.platform_call(Request::CounterAdvance { value })? {
            Reply::Done => Ok(()),
            _ => Err(PlatformError::Malformed),
        }
    }
    /// Over the socket: the advance is written and its reply read before the next host
    /// request, so the raft thread does not wait a round trip per log write (BENCHMARKS.md,
    /// "Issue 28, item 4"). A failed advance fails that next request.
    fn counter_advance_soon(&self, c: Counter, value: u64) -> Result<(), PlatformError> {
        if c != Counter::Raft {
            return Err(not_the_agents("raise the core's counter"));
        }
        HOST_CALLS.fetch_add(1, Ordering::Relaxed);
        let req = Request::CounterAdvance { value };
        let sent = match self {
            HostHandle::Local(s) => match s.handle(req) {
                Reply::Done => Ok(()),
                r => Err(unexpected(r)),
            },
            HostHandle::Remote { conn, .. } => conn
                .lock()
                .map_err(|_| BoundaryError::Unexpected("poisoned connection"))
                .and_then(|mut c| c.call_deferred(req)),
        };
        sent.map_err(|e| match e {
            BoundaryError::Platform(p) => p,
            e => PlatformError::KeyStore(e.to_string()),
        })
    }
}
