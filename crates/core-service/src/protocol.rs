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
pub const PROTOCOL_VERSION: u16 = 2;
/// Largest message either side accepts (a batch of applied entries, a bucket list chunk).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Buckets per [`ToCore::Buckets`] chunk are cut at about this many bytes.
pub const BUCKET_CHUNK_BYTES: usize = 4 << 20;

/// Which of the agent's two connections this is: the core's requests (the state machine and
/// sessions, in order), or the host's own operations (its counter-bound state, peer-link
/// handshakes), which must not wait behind a request of the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Core,
    Host,
}

/// A message from the agent.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToCore {
    /// The first message on a connection.
    Hello { version: u16, role: Role },
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
    Hello {
        version: u16,
    },
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
        sealed: Option<Vec<u8>>,
    },
    /// The node's platform statement (identity, platform, the core service binary's hash).
    Statement,
    /// Opens the fleet secrets the platform sealed.
    LoadSecrets {
        sealed: Vec<u8>,
    },
    /// Makes a new fleet's secrets.
    FoundSecrets {
        trust: FleetTrust,
    },
    /// Opens fleet secrets a member's core encrypted to this node's identity.
    JoinSecrets {
        envelope: Vec<u8>,
    },
    /// Starts the core over the opened secrets (an empty state until [`Request::Restore`]).
    StartCore,
    SetSessionLimits {
        max_sessions: u64,
        idle_secs: u64,
    },
    /// Session count and live records.
    Status,
    Members,
    /// Whether the state admits the member with this identity key (`None`: it names no member
    /// yet).
    Admits {
        identity: [u8; 32],
    },
    OpenSession {
        user_id: String,
        handshake: Vec<u8>,
    },
    CheckLogin {
        session_id: SessionId,
        user_id: String,
    },
    /// A session's request; `fresh`: the agent brought its replica up to date after the
    /// message arrived (a read barrier), so the core asks for none (`Core::session_message_at`).
    SessionMessage {
        session_id: SessionId,
        user_id: String,
        ciphertext: Vec<u8>,
        fresh: bool,
    },
    ResumeFresh {
        session_id: SessionId,
        ciphertext: Vec<u8>,
    },
    Resume {
        session_id: SessionId,
    },
    CommitFailed {
        session_id: SessionId,
    },
    AdminEntry(SignedAdminCommand),
    FleetStatement {
        node_id: u64,
    },
    FoundEntry {
        node_id: u64,
        addr: String,
    },
    /// Applies committed entries in order, then seals the records' summary at `position`.
    Apply {
        entries: Vec<LogEntry>,
        position: Vec<u8>,
    },
    /// Restores the records from the agent's table (read through [`FromCore::ListBuckets`] and
    /// [`FromCore::ReadBucket`] from then on) and its sealed summary.
    Restore {
        summary: Option<Vec<u8>>,
    },
    /// The position a sealed summary names.
    SummaryPosition {
        summary: Vec<u8>,
    },
    ExportSecrets {
        identity: [u8; 32],
    },
    SnapshotHeader {
        summary: Vec<u8>,
    },
    SnapshotFrame {
        nonce: [u8; 32],
        bucket: u16,
        sealed: Vec<u8>,
    },
    InstallBegin {
        header: Vec<u8>,
    },
    InstallFrame {
        bucket: u16,
        frame: Vec<u8>,
    },
    InstallSummary,
    InstallFinish,
    /// Host: the platform's description and signing key.
    Describe,
    /// Host: seals the agent's own `raft-state` (the only slot the agent may name).
    SealHost {
        label: Vec<u8>,
        plaintext: Vec<u8>,
    },
    /// Host: opens the agent's own `raft-state`.
    UnsealHost {
        label: Vec<u8>,
        sealed: Vec<u8>,
    },
    /// Host: the platform's monotonic counter.
    CounterRead,
    CounterAdvance {
        value: u64,
    },
    /// Host: starts a peer-link handshake to the node with identity key `remote`.
    LinkInitiate {
        remote: [u8; 32],
    },
    /// Host: the responder's answer to handshake `id`.
    LinkFinish {
        id: u64,
        message: Vec<u8>,
    },
    /// Host: answers an initiator's first message.
    LinkRespond {
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
    pub remote: [u8; 32],
    pub send: [u8; 32],
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

/// The service's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Failed(String),
    Platform(PlatformError),
    Bytes(Vec<u8>),
    Identity {
        public: [u8; 32],
        sealed_new: Option<Vec<u8>>,
    },
    Statement(SignedStatement),
    Secrets {
        sealed_new: Option<Vec<u8>>,
        fleet_id: String,
        noise_public_key: [u8; 32],
    },
    Started {
        move_public_key: [u8; 32],
    },
    Status {
        sessions: u64,
        live_records: u64,
    },
    Members(Box<Members>),
    Admits(Option<bool>),
    SessionOpened(Result<(SessionId, Vec<u8>), NodeError>),
    LoggedIn(Result<bool, NodeError>),
    Step(Result<Step, NodeError>),
    AdminEntry(Result<LogEntry, AdminError>),
    FleetStatement(SignedFleetStatement),
    Entry(LogEntry),
    /// What an `Apply` did, and the reply of every session of this core it decided
    /// (`Core::release_ready`), so the agent needs no `Resume` for them.
    Applied {
        outcomes: Vec<Outcome>,
        writes: Vec<(u16, Option<Vec<u8>>)>,
        summary: Vec<u8>,
        /// (session, sequence number of the entry that decided it, reply or why none)
        released: Vec<(SessionId, u64, Result<Vec<u8>, NodeError>)>,
    },
    Restored(Option<Vec<u8>>),
    StreamStart {
        header: Vec<u8>,
        position: Vec<u8>,
        nonce: [u8; 32],
    },
    Described {
        description: PlatformDescription,
        signing_key: [u8; 32],
    },
    Counter(u64),
    Handshake {
        id: u64,
        message: Vec<u8>,
    },
    Link(LinkKeys),
    Responded {
        message: Vec<u8>,
        keys: LinkKeys,
    },
}

/// Why a message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("core boundary: {0}")]
    Io(#[from] std::io::Error),
    #[error("core boundary: message of {0} bytes is over the limit")]
    TooLarge(usize),
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
