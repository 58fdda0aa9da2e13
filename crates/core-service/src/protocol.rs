//! The core boundary's protocol, version 1 (docs/formats.md "The core boundary").
//!
//! The host agent and the core service speak over one Unix-domain socket per role: each message
//! is a 4-byte big-endian length and a `bkv_wire` encoding (codec byte, postcard) of
//! [`ToCore`] or [`FromCore`], at most [`MAX_MESSAGE`] bytes. The agent opens with
//! [`ToCore::Hello`]; the service answers with its version and refuses any other. Then the agent
//! sends one [`ToCore::Call`] at a time and reads until [`FromCore::Reply`]; before the reply the
//! service may ask for sealed buckets ([`FromCore::ReadBucket`], [`FromCore::ListBuckets`]),
//! which the agent answers from its table.
//!
//! What crosses is sealed or encrypted-and-authenticated bytes (log entries, sealed buckets and
//! summaries, snapshot headers and frames, Noise messages of client sessions, sealed keys,
//! secrets encrypted to an identity key) and public values (keys, positions, outcomes, member
//! lists, counts). Two things the agent gets are secret but not the core's: a peer link's
//! session keys, which protect traffic that is itself sealed or authenticated, and the host's
//! own `raft-state` plaintext.

use bkv_hsm_core::members::Members;
use bkv_hsm_core::state::Outcome;
use bkv_hsm_core::{FleetTrust, LogEntry, PlatformError, Step};
use bkv_wire::admin::{
    AdminError, PlatformDescription, SignedAdminCommand, SignedFleetStatement, SignedStatement,
};
use bkv_wire::node::{NodeError, SessionId};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// This protocol's version.
/// 2: `SessionMessage` says whether the agent ran a read barrier first (`fresh`), and
/// `Applied` carries the replies of the sessions the batch decided (`released`).
pub const PROTOCOL_VERSION: u16 = 3;
/// Largest message either side accepts (a batch of applied entries, a bucket list chunk).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Buckets per [`ToCore::Buckets`] chunk are cut at about this many bytes.
pub const BUCKET_CHUNK_BYTES: usize = 4 << 20;

/// Which of the agent's two connections this is: the core's requests (the state machine and
/// sessions, in order), or the host's own operations (its counter-bound state, peer-link
/// handshakes), which must not wait behind a request of the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The core's requests: the state machine and client sessions, answered in order.
    Core,
    /// The host's own operations: its `raft-state` seal and counter, peer-link handshakes.
    Host,
}

/// A message from the agent.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToCore {
    /// The first message on a connection.
    Hello {
        /// The agent's [`PROTOCOL_VERSION`]; the service refuses any other.
        version: u16,
        /// Which connection this is.
        role: Role,
    },
    /// One request; the next message from the service is a bucket question or the reply.
    Call(Request),
    /// A bucket's sealed value (answer to [`FromCore::ReadBucket`]).
    Bucket(Result<Option<Vec<u8>>, String>),
    /// Stored buckets in bucket order, part of the answer to [`FromCore::ListBuckets`].
    Buckets(Vec<(u16, Vec<u8>)>),
    /// The end of the answer to [`FromCore::ListBuckets`].
    BucketsEnd(Result<(), String>),
}

/// A message from the core service.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromCore {
    /// The answer to [`ToCore::Hello`]; on a version mismatch the service then closes.
    Hello {
        /// The service's [`PROTOCOL_VERSION`].
        version: u16,
    },
    /// The answer to the pending [`ToCore::Call`].
    Reply(Reply),
    /// The agent's stored value of bucket `0`, if any.
    ReadBucket(u16),
    /// Every stored bucket, in chunks ([`ToCore::Buckets`], then [`ToCore::BucketsEnd`]).
    ListBuckets,
}

/// What the agent asks. The core's requests run on the [`Role::Core`] connection, the host's
/// (marked) on the [`Role::Host`] one.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Opens the node identity sealed by this platform, or makes one (`None`: a fresh data
    /// directory; the platform may then create its keys).
    OpenIdentity {
        /// The identity this platform sealed before (`None`: none stored yet).
        sealed: Option<Vec<u8>>,
    },
    /// The node's platform statement (identity, platform, the core service binary's hash).
    Statement,
    /// Opens the fleet secrets the platform sealed.
    LoadSecrets {
        /// The secrets as this platform sealed them ([`Reply::Secrets`]'s `sealed_new`).
        sealed: Vec<u8>,
    },
    /// Makes a new fleet's secrets.
    FoundSecrets {
        /// The trust anchors and policy the new fleet pins.
        trust: FleetTrust,
    },
    /// Opens fleet secrets a member's core encrypted to this node's identity.
    JoinSecrets {
        /// The encrypted secrets (a member's [`Request::ExportSecrets`]).
        envelope: Vec<u8>,
    },
    /// Starts the core over the opened secrets (an empty state until [`Request::Restore`]).
    StartCore,
    /// Sets the core's session table size and idle timeout (`Core::set_session_limits`).
    SetSessionLimits {
        /// Most sessions the core holds at once.
        max_sessions: u64,
        /// Idle seconds after which a used session is forgotten.
        idle_secs: u64,
    },
    /// Session count and live records.
    Status,
    /// The fleet's membership as the core's state records it.
    Members,
    /// Whether the state admits the member with this identity key (`None`: it names no member
    /// yet).
    Admits {
        /// The X25519 identity key asked about.
        identity: [u8; 32],
    },
    /// Opens a client session by answering its first Noise `NK` message.
    OpenSession {
        /// The user the frontend authenticated: the client must name the same one inside.
        user_id: String,
        /// The client's first Noise message.
        handshake: Vec<u8>,
    },
    /// Whether a session is the user's and logged in to the user's live record.
    CheckLogin {
        /// The session asked about.
        session_id: SessionId,
        /// The user the session must belong to.
        user_id: String,
    },
    /// A session's request; `fresh`: the agent brought its replica up to date after the
    /// message arrived (a read barrier), so the core asks for none (`Core::session_message_at`).
    SessionMessage {
        /// The session the message belongs to.
        session_id: SessionId,
        /// The user the frontend authenticated: must be the session's.
        user_id: String,
        /// The client's encrypted request (a Noise transport message).
        ciphertext: Vec<u8>,
        /// Whether the agent ran a read barrier after the message arrived.
        fresh: bool,
    },
    /// Continues a request that asked for a read barrier, once the agent ran one
    /// (`Core::resume_fresh`).
    ResumeFresh {
        /// The session whose request waits.
        session_id: SessionId,
        /// The waiting request's ciphertext, as first sent.
        ciphertext: Vec<u8>,
    },
    /// Continues a session once the entry it waits for applied (`Core::resume`).
    Resume {
        /// The session that waits.
        session_id: SessionId,
    },
    /// The agent could not commit a session's entry: the session ends (`Core::commit_failed`).
    CommitFailed {
        /// The session whose entry failed.
        session_id: SessionId,
    },
    /// Checks a signed operator command and makes the entry that proposes it.
    AdminEntry(SignedAdminCommand),
    /// This node's fleet statement, signed by the platform key.
    FleetStatement {
        /// This node's id, named in the statement.
        node_id: u64,
    },
    /// The entry that records this node as a new fleet's founding member.
    FoundEntry {
        /// This node's id.
        node_id: u64,
        /// This node's peer-link address.
        addr: String,
    },
    /// Applies committed entries in order, then seals the records' summary at `position`.
    Apply {
        /// Committed entries, in log order.
        entries: Vec<LogEntry>,
        /// The agent's log position after them (opaque to the core).
        position: Vec<u8>,
    },
    /// Restores the records from the agent's table (read through [`FromCore::ListBuckets`] and
    /// [`FromCore::ReadBucket`] from then on) and its sealed summary.
    Restore {
        /// The sealed summary stored with the table (`None`: a new store, which must hold no
        /// bucket).
        summary: Option<Vec<u8>>,
    },
    /// The position a sealed summary names.
    SummaryPosition {
        /// A summary this platform sealed.
        summary: Vec<u8>,
    },
    /// The fleet secrets encrypted to an admitted member's identity key
    /// (`Core::export_secrets_to`).
    ExportSecrets {
        /// The member's X25519 identity key.
        identity: [u8; 32],
    },
    /// Starts a snapshot stream of the state a stored summary describes.
    SnapshotHeader {
        /// The sealed summary of the table the snapshot is read from.
        summary: Vec<u8>,
    },
    /// One bucket's frame in a stream this core opened.
    SnapshotFrame {
        /// The stream nonce ([`Reply::StreamStart`]).
        nonce: [u8; 32],
        /// The bucket's number.
        bucket: u16,
        /// The bucket's sealed value from the agent's table.
        sealed: Vec<u8>,
    },
    /// Starts installing a snapshot a member's core sent; answers the log position it names.
    InstallBegin {
        /// The snapshot's sealed header.
        header: Vec<u8>,
    },
    /// One frame of the snapshot being installed, in increasing bucket order; answers the bucket
    /// resealed by this platform, for the agent's table.
    InstallFrame {
        /// The bucket's number.
        bucket: u16,
        /// The frame as the sending core made it.
        frame: Vec<u8>,
    },
    /// The installed state's sealed summary, once every frame came (refused unless the buckets
    /// hash to the root the header names).
    InstallSummary,
    /// Makes the installed snapshot the core's state.
    InstallFinish,
    /// Host: the platform's description and signing key.
    Describe,
    /// Host: seals the agent's own `raft-state` (the only slot the agent may name).
    SealHost {
        /// Where the agent stores the value (bound into the seal).
        label: Vec<u8>,
        /// The agent's `raft-state` bytes.
        plaintext: Vec<u8>,
    },
    /// Host: opens the agent's own `raft-state`.
    UnsealHost {
        /// The label the value was sealed with.
        label: Vec<u8>,
        /// The sealed value.
        sealed: Vec<u8>,
    },
    /// Host: the platform's monotonic counter.
    CounterRead,
    /// Host: raises the platform's monotonic counter to `value` (never lowers it).
    CounterAdvance {
        /// The value to raise the counter to.
        value: u64,
    },
    /// Host: starts a peer-link handshake to the node with identity key `remote`.
    LinkInitiate {
        /// The peer node's X25519 identity key.
        remote: [u8; 32],
    },
    /// Host: the responder's answer to handshake `id`.
    LinkFinish {
        /// The handshake's id ([`Reply::Handshake`]).
        id: u64,
        /// The responder's handshake message.
        message: Vec<u8>,
    },
    /// Host: answers an initiator's first message.
    LinkRespond {
        /// The initiator's first handshake message.
        message: Vec<u8>,
    },
}

impl Request {
    /// The connection this request belongs on.
    pub fn role(&self) -> Role {
        match self {
            Request::Describe
            | Request::SealHost { .. }
            | Request::UnsealHost { .. }
            | Request::CounterRead
            | Request::CounterAdvance { .. }
            | Request::LinkInitiate { .. }
            | Request::LinkFinish { .. }
            | Request::LinkRespond { .. } => Role::Host,
            _ => Role::Core,
        }
    }
}

/// A peer link's session keys (its traffic is sealed or authenticated already; the link proves
/// which member's core is at the other end).
#[derive(Serialize, Deserialize)]
pub struct LinkKeys {
    /// The peer's identity key, as the handshake proved it.
    pub remote: [u8; 32],
    /// The key of the traffic this side sends.
    pub send: [u8; 32],
    /// The key of the traffic this side receives.
    pub recv: [u8; 32],
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkKeys(remote {})", hex::encode(&self.remote[..6]))
    }
}

impl Drop for LinkKeys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.send);
        zeroize::Zeroize::zeroize(&mut self.recv);
    }
}

/// Why the core service did not carry out a request. Only [`Failure::Refused`] comes from the
/// core's own checks; the others mean the agent asked out of order or on the wrong connection
/// (a bug in the agent, or a host that is not following the protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Failure {
    /// The request needs something the agent has not opened yet.
    #[error("the {0} is not open yet")]
    NotOpen(Opened),
    /// A request of the other connection's role (named), sent on this one.
    #[error("{0} belongs on the other connection")]
    WrongConnection(String),
    /// A snapshot install step with no install begun, or a restore asked as a plain request.
    #[error("out of order: {0}")]
    OutOfOrder(String),
    /// The service's state is unusable (a thread failed while holding it): restart the service.
    #[error("the core service's state is poisoned")]
    Poisoned,
    /// The core or its platform refused or failed the request: the reason, as the core gives it.
    #[error("{0}")]
    Refused(String),
}

/// What the agent opens, in order, before the core answers vault requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Opened {
    /// The node identity (`OpenIdentity`).
    Identity,
    /// The fleet secrets (`OpenSecrets`, `FoundFleet` or `JoinSecrets`).
    Secrets,
    /// The core (`StartCore`).
    Core,
}

impl std::fmt::Display for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Opened::Identity => "node identity",
            Opened::Secrets => "fleet secrets",
            Opened::Core => "core",
        })
    }
}

/// The service's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The request was carried out; nothing to return.
    Done,
    /// The request failed or was refused, and why.
    Failed(Failure),
    /// A host request's platform operation failed.
    Platform(PlatformError),
    /// The bytes the request asks for (a sealed value, a position, a frame, encrypted secrets).
    Bytes(Vec<u8>),
    /// The node identity is open.
    Identity {
        /// Its X25519 public key.
        public: [u8; 32],
        /// The identity made now, sealed for the agent to store (`None`: it was opened).
        sealed_new: Option<Vec<u8>>,
    },
    /// The node's signed platform statement.
    Statement(SignedStatement),
    /// The fleet secrets are open in the service.
    Secrets {
        /// The secrets sealed by this platform, for the agent to store (`None`: loaded from there).
        sealed_new: Option<Vec<u8>>,
        /// The fleet's id.
        fleet_id: String,
        /// The fleet's Noise static public key, which clients open their sessions to.
        noise_public_key: [u8; 32],
    },
    /// The core started.
    Started {
        /// The key this fleet's cores sign move tickets with (a successor fleet pins it).
        move_public_key: [u8; 32],
    },
    /// The core's counts.
    Status {
        /// Sessions in the core's table.
        sessions: u64,
        /// Records that are active or pending.
        live_records: u64,
    },
    /// The fleet's membership.
    Members(Box<Members>),
    /// Whether the key is an admitted member's (`None`: the fleet has no member yet).
    Admits(Option<bool>),
    /// The new session's id and the Noise reply for the client, or why none opened.
    SessionOpened(Result<(SessionId, Vec<u8>), NodeError>),
    /// Whether the session is logged in to the user's live record, or why it cannot say.
    LoggedIn(Result<bool, NodeError>),
    /// What the agent does next for a session's request, or why the request failed.
    Step(Result<Step, NodeError>),
    /// The entry proposing the command, or why the command is refused.
    AdminEntry(Result<LogEntry, AdminError>),
    /// The node's signed fleet statement.
    FleetStatement(SignedFleetStatement),
    /// The founding entry.
    Entry(LogEntry),
    /// What an `Apply` did, and the reply of every session of this core it decided
    /// (`Core::release_ready`), so the agent needs no `Resume` for them.
    Applied {
        /// Each entry's outcome, in order.
        outcomes: Vec<Outcome>,
        /// Sealed buckets to store by number (`None`: the bucket is now empty).
        writes: Vec<(u16, Option<Vec<u8>>)>,
        /// The new sealed summary, to store with the writes in one transaction.
        summary: Vec<u8>,
        /// (session, sequence number of the entry that decided it, reply or why none)
        released: Vec<(SessionId, u64, Result<Vec<u8>, NodeError>)>,
    },
    /// The records were restored: the position the summary names (`None`: a new store).
    Restored(Option<Vec<u8>>),
    /// A snapshot stream started.
    StreamStart {
        /// The sealed header, sent first.
        header: Vec<u8>,
        /// The log position of the state the header describes.
        position: Vec<u8>,
        /// The stream nonce, for [`Request::SnapshotFrame`].
        nonce: [u8; 32],
    },
    /// The host platform's description and signing key.
    Described {
        /// The platform's kind and token.
        description: PlatformDescription,
        /// The platform signing key's Ed25519 public key.
        signing_key: [u8; 32],
    },
    /// The platform counter's value.
    Counter(u64),
    /// A peer-link handshake started.
    Handshake {
        /// Names the handshake in [`Request::LinkFinish`].
        id: u64,
        /// The initiator's first message, for the peer.
        message: Vec<u8>,
    },
    /// The handshake finished: the link's session keys.
    Link(LinkKeys),
    /// The responder's answer to the initiator, and the link's session keys.
    Responded {
        /// The responder's handshake message, for the initiator.
        message: Vec<u8>,
        /// The link's session keys.
        keys: LinkKeys,
    },
}

/// Why a message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading or writing the socket failed (the other side closing included).
    #[error("core boundary: {0}")]
    Io(#[from] std::io::Error),
    /// A message's length (the number given) is over [`MAX_MESSAGE`].
    #[error("core boundary: message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// A message does not decode.
    #[error("core boundary: malformed message: {0}")]
    Malformed(#[from] bkv_wire::CodecError),
}

impl From<bkv_wire::node::FrameError> for FrameError {
    fn from(e: bkv_wire::node::FrameError) -> Self {
        use bkv_wire::node::FrameError as Wire;
        match e {
            Wire::Io(e) => FrameError::Io(e),
            Wire::TooLarge(n) => FrameError::TooLarge(n),
            Wire::Codec(e) => FrameError::Malformed(e),
        }
    }
}

/// Writes one message (`bkv_wire`'s frame encoder, with this protocol's limit).
pub fn write_message<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    Ok(bkv_wire::node::write_frame_limited(w, msg, MAX_MESSAGE)?)
}

/// Reads one message (length checked before anything is allocated); the other side closing
/// between messages is an `UnexpectedEof` error.
pub fn read_message<T: serde::de::DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    bkv_wire::node::read_frame_limited(r, MAX_MESSAGE)?.ok_or_else(|| {
        FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the other side closed the connection",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_an_oversized_length_is_refused_before_reading() {
        let mut buf = Vec::new();
        write_message(
            &mut buf,
            &ToCore::Call(Request::CounterAdvance { value: 7 }),
        )
        .unwrap();
        let back: ToCore = read_message(&mut buf.as_slice()).unwrap();
        assert!(matches!(
            back,
            ToCore::Call(Request::CounterAdvance { value: 7 })
        ));

        let mut huge = ((MAX_MESSAGE as u32) + 1).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0u8; 16]);
        let e = read_message::<ToCore>(&mut huge.as_slice()).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge(_)), "{e}");

        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[1, 0xff, 0xff]);
        assert!(read_message::<ToCore>(&mut garbage.as_slice()).is_err());
    }

    #[test]
    fn host_requests_are_only_the_hosts_own_operations() {
        assert_eq!(Request::CounterRead.role(), Role::Host);
        assert_eq!(Request::LinkRespond { message: vec![] }.role(), Role::Host);
        assert_eq!(Request::StartCore.role(), Role::Core);
        assert_eq!(
            Request::ExportSecrets { identity: [0; 32] }.role(),
            Role::Core
        );
    }
}
