//! Peer links between fleet nodes: TCP, mutually authenticated and encrypted
//! with Noise `IK` under each node's identity key. The initiator pins the
//! responder's identity key from the membership; the responder accepts an
//! initiator only if its static key belongs to a current, admitted member.
//! Anything else is dropped after the handshake. The identity key never
//! leaves the core: the core service runs the handshake
//! ([`bkv_hsm_core::PeerHandshake`], through [`HostHandle`]) and hands the
//! agent only the link's session keys, used here as Noise's transport cipher
//! states (ChaCha20-Poly1305, nonce `0^32 || le64(n)`). What a link carries
//! is sealed or authenticated by cores already; the link proves which
//! member's core is at the other end.
//!
//! Framing: handshake messages are `u16 len || bytes`. After it, a message is
//! `u32 plaintext len || (u16 len || Noise ciphertext)*` in pieces of at most
//! [`PIECE`] plaintext bytes; the plaintext is `bkv_wire::encode` of a
//! [`PeerRequest`] or [`PeerResponse`], at most [`MAX_PEER_MESSAGE`] bytes.

use super::{PeerNode, TypeConfig};
use bkv_core_service::client::HostHandle;
use bkv_core_service::protocol::LinkKeys;
use bkv_core_service::service::HostService;
use bkv_hsm_core::state::Outcome;
use bkv_hsm_core::{Entries, SharedPlatform};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

/// Largest peer message (a snapshot chunk or a batch of log entries).
pub const MAX_PEER_MESSAGE: usize = 16 * 1024 * 1024;
/// Plaintext bytes per Noise message (below Noise's 65535-byte limit).
pub(crate) const PIECE: usize = 60_000;
/// Time allowed for connecting plus the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a node opens and answers peer links with: its identity key, held by the core, which
/// runs the handshakes.
#[derive(Clone)]
pub struct LinkIdentity {
    /// The identity public key (X25519) peers know this node by.
    pub public: [u8; 32],
    /// The core that holds the identity key and runs the handshakes.
    pub host: Arc<HostHandle>,
}

impl LinkIdentity {
    /// The identity public key peers pin and accept this node by.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// A new identity whose core runs in this process over `platform` (the replication
    /// layer's tests and benchmarks, whose members have bare states).
    pub fn in_process(platform: SharedPlatform) -> Result<Self, bkv_hsm_core::CoreError> {
        let identity = Arc::new(bkv_hsm_core::NodeIdentity::generate(&*platform)?);
        Ok(LinkIdentity {
            public: identity.public_key(),
            host: Arc::new(HostHandle::Local(HostService::new(platform, identity))),
        })
    }

    /// The platform of an in-process core (`None` across a boundary).
    pub fn in_process_platform(&self) -> Option<SharedPlatform> {
        match &*self.host {
            HostHandle::Local(s) => Some(s.platform().clone()),
            HostHandle::Remote { .. } => None,
        }
    }
}

impl std::fmt::Debug for LinkIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkIdentity({})", hex::encode(&self.public[..6]))
    }
}

/// One direction of a link: Noise's transport cipher state over a session key.
struct CipherState {
    cipher: ChaCha20Poly1305,
    n: u64,
}

impl CipherState {
    fn new(key: &[u8; 32]) -> Self {
        CipherState {
            cipher: ChaCha20Poly1305::new(key.into()),
            n: 0,
        }
    }

    fn nonce(&mut self) -> io::Result<chacha20poly1305::Nonce> {
        let n = self.n;
        // Noise reserves the last nonce; a link never gets near it.
        self.n = n
            .checked_add(1)
            .filter(|n| *n < u64::MAX)
            .ok_or_else(|| proto("link nonce exhausted"))?;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        Ok(nonce.into())
    }

    fn seal(&mut self, plain: &[u8]) -> io::Result<Vec<u8>> {
        let nonce = self.nonce()?;
        self.cipher
            .encrypt(&nonce, plain)
            .map_err(|_| proto("link encryption failed"))
    }

    fn open(&mut self, ct: &[u8]) -> io::Result<Zeroizing<Vec<u8>>> {
        let nonce = self.nonce()?;
        self.cipher
            .decrypt(&nonce, ct)
            .map(Zeroizing::new)
            .map_err(|_| proto("peer message failed authentication"))
    }
}

/// Messages on a peer link.
#[derive(Serialize, Deserialize)]
pub enum PeerRequest {
    /// Raft log replication (or a heartbeat) from the leader.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// A candidate's request for a vote.
    Vote(VoteRequest<u64>),
    /// One chunk of a snapshot the leader sends.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower forwards entries its core made, in the core's order, to the leader (one
    /// batch at a time, so that they reach the log in that order).
    Propose(Entries),
    /// A follower asks the leader for a linearizable read index.
    ReadIndex,
    /// A member without the fleet secrets (a new node) asks for them; the
    /// answer is encrypted to the identity key this link authenticated.
    FleetSecrets,
}

/// Answers on a peer link, one per [`PeerRequest`] of the same name.
#[derive(Serialize, Deserialize)]
pub enum PeerResponse {
    /// openraft's answer to [`PeerRequest::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// openraft's answer to [`PeerRequest::Vote`].
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// openraft's answer to [`PeerRequest::InstallSnapshot`].
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// The entries' applied outcomes and their log index, or why not.
    Proposed(Result<(Vec<Outcome>, u64), ProposeError>),
    /// The index a read must wait for, or why not.
    ReadIndex(Result<Option<u64>, ReadIndexError>),
    /// The fleet secrets encrypted (by the core) to the asking node's
    /// identity key, or why the core refused.
    FleetSecrets(Result<Vec<u8>, String>),
}

/// Why a node could not name a read index. Every one means "try again": the asking node retries
/// until its read deadline (a leader's answer is only good from the leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ReadIndexError {
    /// The asked node is not the leader (the leader it knows, if any).
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<u64>),
    /// No majority confirmed the leadership (this leader may be deposed).
    #[error("no majority confirmed the leadership")]
    NoQuorum,
    /// The leadership check did not finish within the read's time.
    #[error("leadership check timed out")]
    TimedOut,
    /// The node's raft stopped (a fatal error or shutdown).
    #[error("raft stopped")]
    Stopped,
}

/// Why a forwarded proposal has no outcome. Only [`ProposeError::NotLeader`]
/// means the mutation was certainly not appended: the follower may then try
/// again elsewhere. After the others it may still commit, so retrying could
/// apply it twice (a guess counted twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    /// The asked node is not the leader (the leader it knows, if any): nothing was appended.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<u64>),
    /// No commit within the proposal timeout: the entries may still commit.
    #[error("commit timed out")]
    TimedOut,
    /// Refused before anything was appended, and refused again if sent again: a forwarded
    /// batch holds 1 to `super::group_commit::MAX_BATCH` entries, every one made by the
    /// forwarding member's core (the identity its link authenticated).
    #[error(
        "refused: a forwarded batch must hold 1 to 64 entries of the forwarding member's core"
    )]
    BatchRefused,
    /// The leader's commit failed: the entries may still commit.
    #[error("commit failed (the entries may still commit): {0}")]
    CommitFailed(String),
}

/// Whether a failed peer call reached the other side.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No link could be made: the request was not sent.
    #[error("{0}")]
    NotSent(io::Error),
    /// The request may have been delivered (the answer is missing).
    #[error("{0}")]
    Unanswered(io::Error),
}

impl From<CallError> for io::Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::NotSent(e) | CallError::Unanswered(e) => e,
        }
    }
}

/// An established, encrypted link.
pub struct Link {
    stream: TcpStream,
    send: CipherState,
    recv: CipherState,
}

impl Link {
    fn over(stream: TcpStream, keys: &LinkKeys) -> Link {
        Link {
            stream,
            send: CipherState::new(&keys.send),
            recv: CipherState::new(&keys.recv),
        }
    }
}

fn proto(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A call to the core service (a blocking round trip) off the async workers.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, bkv_core_service::client::BoundaryError> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(proto)?
        .map_err(proto)
}

async fn write_u16_frame(s: &mut TcpStream, b: &[u8]) -> io::Result<()> {
    let n = u16::try_from(b.len()).map_err(proto)?;
    s.write_all(&n.to_be_bytes()).await?;
    s.write_all(b).await
}

async fn read_u16_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let n = s.read_u16().await? as usize;
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).await?;
    Ok(b)
}

impl Link {
    /// Whether the other side has closed this (idle) link: an open, quiet
    /// connection has nothing to read, a closed one reads end-of-file (or
    /// an error) at once. Checked before a cached link is reused, so that a
    /// request is not sent into a connection that is already gone.
    fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Initiator: connects to `addr` and proves `me`; the peer must hold the
    /// private key of `peer_identity`.
    pub async fn connect(
        addr: &str,
        me: &LinkIdentity,
        peer_identity: &[u8; 32],
    ) -> io::Result<Link> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (host, peer) = (me.host.clone(), *peer_identity);
            let (id, first) = off_runtime(move || host.link_initiate(&peer)).await?;
            write_u16_frame(&mut stream, &first).await?;
            let reply = read_u16_frame(&mut stream).await?;
            let host = me.host.clone();
            let keys = off_runtime(move || host.link_finish(id, reply)).await?;
            if &keys.remote != peer_identity {
                return Err(proto("the peer proved another identity key"));
            }
            Ok(Link::over(stream, &keys))
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer handshake timed out"))?
    }

    /// Responder: completes the handshake and returns the link and the
    /// initiator's identity key (the caller decides whether to accept it).
    pub async fn accept(mut stream: TcpStream, me: &LinkIdentity) -> io::Result<(Link, [u8; 32])> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            stream.set_nodelay(true)?;
            let first = read_u16_frame(&mut stream).await?;
            let host = me.host.clone();
            let (answer, keys) = off_runtime(move || host.link_respond(first)).await?;
            write_u16_frame(&mut stream, &answer).await?;
            let remote = keys.remote;
            Ok((Link::over(stream, &keys), remote))
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer handshake timed out"))?
    }

    /// Sends one message (at most [`MAX_PEER_MESSAGE`] bytes encoded), encrypted in pieces of
    /// `PIECE` bytes.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> io::Result<()> {
        let plain = bkv_wire::encode(msg);
        if plain.len() > MAX_PEER_MESSAGE {
            return Err(proto("peer message too large"));
        }
        self.stream.write_u32(plain.len() as u32).await?;
        for piece in plain.chunks(PIECE) {
            let ct = self.send.seal(piece)?;
            write_u16_frame(&mut self.stream, &ct).await?;
        }
        self.stream.flush().await
    }

    /// Receives and decrypts one message (at most [`MAX_PEER_MESSAGE`] bytes).
    pub async fn recv<T: serde::de::DeserializeOwned>(&mut self) -> io::Result<T> {
        let total = self.stream.read_u32().await? as usize;
        if total == 0 || total > MAX_PEER_MESSAGE {
            return Err(proto("peer message length out of range"));
        }
        let mut plain = Zeroizing::new(Vec::with_capacity(total));
        while plain.len() < total {
            let ct = read_u16_frame(&mut self.stream).await?;
            let piece = self.recv.open(&ct)?;
            if piece.is_empty() || plain.len() + piece.len() > total {
                return Err(proto("peer message framing"));
            }
            plain.extend_from_slice(&piece);
        }
        bkv_wire::decode(&plain, MAX_PEER_MESSAGE).map_err(proto)
    }

    /// One request, one response.
    pub async fn call(&mut self, req: &PeerRequest) -> io::Result<PeerResponse> {
        self.send(req).await?;
        self.recv().await
    }
}

/// Links to one target: idle ones ready for reuse, and a bound on how many calls run at once.
/// Several links rather than one, so that concurrent calls — above all proposals a follower
/// forwards to the leader, which the leader commits together — do not wait for each other's
/// commit round trip (one link measured ~190 forwarded registrations/s at 10⁶ users).
struct Pool {
    idle: std::sync::Mutex<Vec<(PeerNode, Link)>>,
    calls: tokio::sync::Semaphore,
}

/// Most calls in flight to one target (and so most links to it).
const LINKS_PER_TARGET: usize = 32;
/// Most idle links kept per target.
const IDLE_LINKS_PER_TARGET: usize = 16;

type Slot = Arc<Pool>;

/// openraft's network: a small pool of cached links per target node.
#[derive(Clone)]
pub struct PeerNetwork {
    me: LinkIdentity,
    links: Arc<std::sync::Mutex<HashMap<u64, Slot>>>,
}

impl PeerNetwork {
    /// A network without links yet; each opens on first use, as `me`.
    pub fn new(me: LinkIdentity) -> Self {
        PeerNetwork {
            me,
            links: Arc::new(std::sync::Mutex::new(HashMap::new())),
        }
    }

    fn slot(&self, target: u64) -> Slot {
        let fresh = || {
            Arc::new(Pool {
                idle: std::sync::Mutex::new(Vec::new()),
                calls: tokio::sync::Semaphore::new(LINKS_PER_TARGET),
            })
        };
        match self.links.lock() {
            Ok(mut m) => m.entry(target).or_insert_with(fresh).clone(),
            Err(_) => fresh(),
        }
    }

    /// Sends `req` to `node` over the cached link (connecting if needed).
    pub async fn call(
        &self,
        target: u64,
        node: &PeerNode,
        req: &PeerRequest,
        ttl: Duration,
    ) -> io::Result<PeerResponse> {
        Ok(self.call_checked(target, node, req, ttl).await?)
    }

    /// [`PeerNetwork::call`], telling a request that was never sent (no
    /// link) from one whose answer is missing.
    pub async fn call_checked(
        &self,
        target: u64,
        node: &PeerNode,
        req: &PeerRequest,
        ttl: Duration,
    ) -> Result<PeerResponse, CallError> {
        let pool = self.slot(target);
        // Waiting for a free slot counts against `ttl`; a request still waiting was never sent.
        let _permit = match tokio::time::timeout(ttl, pool.calls.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => {
                return Err(CallError::NotSent(io::Error::other(
                    "peer link pool closed",
                )))
            }
            Err(_) => {
                return Err(CallError::NotSent(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "every link to the peer is busy",
                )))
            }
        };
        // A link leaves the pool for the exchange and goes back only
        // after a whole request/response. If the caller gives up half-way
        // (openraft drops an RPC future on its own timeout), the link is
        // dropped with the future: a later request must never read the
        // answer to an earlier one from a reused link.
        let cached = match pool.idle.lock() {
            Ok(mut idle) => {
                // Links to an address the target no longer has, or closed ones, are dropped.
                idle.retain(|(n, link)| n == node && !link.is_closed());
                idle.pop().map(|(_, link)| link)
            }
            Err(_) => None,
        };
        let attempt = async {
            let mut link = match cached {
                Some(link) => link,
                None => Link::connect(&node.addr, &self.me, &node.identity)
                    .await
                    .map_err(CallError::NotSent)?,
            };
            // A failed send delivered no complete request (the other side
            // acts on whole messages only); a failed receive may follow a
            // request that was acted on.
            link.send(req).await.map_err(CallError::NotSent)?;
            let resp = link.recv().await.map_err(CallError::Unanswered)?;
            Ok((link, resp))
        };
        match tokio::time::timeout(ttl, attempt).await {
            Ok(Ok((link, resp))) => {
                if let Ok(mut idle) = pool.idle.lock() {
                    if idle.len() < IDLE_LINKS_PER_TARGET {
                        idle.push((node.clone(), link));
                    }
                }
                Ok(resp)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CallError::Unanswered(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer call timed out",
            ))),
        }
    }
}

/// A handle openraft uses to reach one target.
pub struct PeerClient {
    net: PeerNetwork,
    target: u64,
    node: PeerNode,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Self::Network {
        PeerClient {
            net: self.clone(),
            target,
            node: node.clone(),
        }
    }
}

fn rpc_err<E: std::error::Error>(e: io::Error) -> RPCError<u64, PeerNode, E> {
    match e.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::NotConnected
        | io::ErrorKind::TimedOut
        | io::ErrorKind::UnexpectedEof => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<u64, PeerNode, E> {
    RPCError::Network(NetworkError::new(&proto("unexpected peer response")))
}

impl PeerClient {
    async fn call(&self, req: PeerRequest, option: &RPCOption) -> io::Result<PeerResponse> {
        self.net
            .call(self.target, &self.node, &req, option.hard_ttl())
            .await
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        match self.call(PeerRequest::AppendEntries(rpc), &option).await {
            Ok(PeerResponse::AppendEntries(Ok(r))) => Ok(r),
            Ok(PeerResponse::AppendEntries(Err(e))) => Err(RPCError::RemoteError(
                openraft::error::RemoteError::new(self.target, e),
            )),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(rpc_err(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, PeerNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self.call(PeerRequest::InstallSnapshot(rpc), &option).await {
            Ok(PeerResponse::InstallSnapshot(Ok(r))) => Ok(r),
            Ok(PeerResponse::InstallSnapshot(Err(e))) => Err(RPCError::RemoteError(
                openraft::error::RemoteError::new(self.target, e),
            )),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(rpc_err(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        match self.call(PeerRequest::Vote(rpc), &option).await {
            Ok(PeerResponse::Vote(Ok(r))) => Ok(r),
            Ok(PeerResponse::Vote(Err(e))) => Err(RPCError::RemoteError(
                openraft::error::RemoteError::new(self.target, e),
            )),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(rpc_err(e)),
        }
    }
}
