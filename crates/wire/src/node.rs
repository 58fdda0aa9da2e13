//! Frames on the relay link between the (untrusted) frontend and an HSM
//! node: sessions and public information only. Operator commands travel on
//! the separate admin link ([`crate::admin`]).
//! Framing: a 4-byte big-endian length, then an [`crate::encode`]d value of at
//! most [`crate::MAX_NODE_FRAME`] bytes.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// A session's id: 16 random bytes the node's core draws when it opens the session.
pub type SessionId = [u8; 16];

/// A retired request: decoding it always fails (the frame is malformed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retired;

impl<'de> Deserialize<'de> for Retired {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("retired request"))
    }
}

/// A frame the frontend sends a node on the relay link (variant order is part of the format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// First Noise message of a session for `user_id` (as authenticated by the frontend).
    OpenSession {
        /// The user the frontend authenticated; the session hello must name the same one.
        user_id: String,
        /// The client's first Noise NK message; its payload is the encrypted session hello.
        handshake: Vec<u8>,
    },
    /// A Noise transport message of an open session.
    SessionMessage {
        /// The session, as [`NodeResponse::SessionOpened`] named it.
        session_id: SessionId,
        /// The user the frontend authenticated; must be the session's.
        user_id: String,
        /// A Noise transport message carrying an encoded [`crate::vault::VaultRequest`].
        ciphertext: Vec<u8>,
    },
    /// Whether `session_id` is `user_id`'s session and logged in to the
    /// user's live record (the frontend's proof of the password protector).
    /// Ending a session is an encrypted in-session request
    /// ([`crate::vault::VaultRequest::Close`]), never a relay-link frame.
    CheckLogin {
        /// The session to check.
        session_id: SessionId,
        /// The user the session must belong to.
        user_id: String,
    },
    /// Public node information.
    Info,
    /// Replication status of this node (for `bkv-admin fleet status`).
    FleetStatus,
    /// Index 5 was a membership change on this link (`AddLearner`), retired when membership
    /// moved to the operator-signed admin link. Kept so the index is never reused: it never
    /// decodes.
    Retired(Retired),
    /// Whether this node sees a leader with a majority (readiness). Appended, so frontends and
    /// nodes of the previous release still understand each other: such a node refuses it, and
    /// the frontend falls back to `FleetStatus`.
    Health,
}

/// A node's answer to a [`NodeRequest`] (variant order is part of the format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeResponse {
    /// The session is open (the answer to [`NodeRequest::OpenSession`]).
    SessionOpened {
        /// The id later frames of the session name.
        session_id: SessionId,
        /// The node's Noise NK reply message, relayed to the client.
        handshake: Vec<u8>,
    },
    /// The node's encrypted answer to a [`NodeRequest::SessionMessage`].
    SessionMessage {
        /// A Noise transport message carrying an encoded [`crate::vault::VaultResponse`].
        ciphertext: Vec<u8>,
    },
    /// The answer to [`NodeRequest::CheckLogin`].
    LoginChecked {
        /// Whether the session is the user's and logged in to the user's live record.
        logged_in: bool,
    },
    /// The answer to [`NodeRequest::Info`].
    Info(NodeInfo),
    /// The request was refused or failed (also the answer to a retired request).
    Error(NodeError),
    /// The answer to [`NodeRequest::FleetStatus`].
    FleetStatus(FleetStatus),
    /// The answer to [`NodeRequest::Health`].
    Health {
        /// Whether the node sees a leader with a majority of the fleet.
        ready: bool,
    },
}

/// One node's view of the replicated fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The answering node's id (its Raft node id).
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// Node id of the current leader, if this node knows one.
    pub leader: Option<u64>,
    /// The current Raft term.
    pub term: u64,
    /// Index of the last entry in this node's Raft log (`None`: empty log).
    pub last_log_index: Option<u64>,
    /// Index of the last entry this node's state machine applied (`None`: none yet).
    pub applied_index: Option<u64>,
    /// Node ids of the voting members.
    pub voters: Vec<u64>,
    /// Node ids of the learners (replicating, not voting).
    pub learners: Vec<u64>,
}

/// Public information about a node's fleet (the answer to [`NodeRequest::Info`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Id of the fleet the node serves.
    pub fleet_id: String,
    /// The fleet's Noise static public key (X25519), which clients pin.
    pub noise_public_key: [u8; 32],
}

/// Why a node refused a relay-link request (sent in [`NodeResponse::Error`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NodeError {
    /// No open session has this id (never opened, expired, ended or evicted).
    #[error("unknown or expired session")]
    UnknownSession,
    /// The session, or its session hello, is for another user than the frame names.
    #[error("session belongs to another user")]
    WrongUser,
    /// The Noise handshake failed (e.g. the client pinned another fleet key).
    #[error("noise handshake failed (is the client pinning the right fleet key?)")]
    Handshake,
    /// The request is malformed or not allowed; the text says why.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The session table, or the user's share of it, is full and no session may be ended.
    #[error("too many open sessions")]
    Busy,
    /// No majority is reachable or the core cannot answer; nothing changed unless it committed.
    #[error("no majority of the vault fleet is reachable; nothing was counted or changed unless it committed")]
    Unavailable,
    /// The same request is still being committed; resend it shortly to get
    /// its reply.
    #[error("this request is still being processed")]
    InProgress,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// An I/O error on the stream (including an end inside a frame's body).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The frame's length (given, in bytes) is over the limit.
    #[error("frame too large: {0} bytes")]
    TooLarge(usize),
    /// The frame's body is not a valid encoded value of the expected type.
    #[error(transparent)]
    Codec(#[from] crate::CodecError),
}

/// Writes one length-prefixed frame of the relay link (at most [`crate::MAX_NODE_FRAME`]).
pub fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> Result<(), FrameError> {
    write_frame_limited(w, value, crate::MAX_NODE_FRAME)
}

/// Reads one length-prefixed frame of the relay link; `Ok(None)` on a clean end of stream.
pub fn read_frame<T: serde::de::DeserializeOwned>(
    r: &mut impl Read,
) -> Result<Option<T>, FrameError> {
    read_frame_limited(r, crate::MAX_NODE_FRAME)
}

/// Writes one frame, `u32 big-endian length || encode(value)`, of at most `limit` bytes, in one
/// write (the one frame encoder of bkv's stream links: the relay link and the core boundary).
pub fn write_frame_limited<T: Serialize>(
    w: &mut impl Write,
    value: &T,
    limit: usize,
) -> Result<(), FrameError> {
    let body = crate::encode(value);
    if body.len() > limit {
        return Err(FrameError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len()))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame of at most `limit` bytes (checked before the body is read); `Ok(None)` on a
/// clean end of stream.
pub fn read_frame_limited<T: serde::de::DeserializeOwned>(
    r: &mut impl Read,
    limit: usize,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(crate::decode(&body, limit)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retired_index_never_decodes_and_health_keeps_its_place() {
        // The old relay-link membership frame: variant 5, then its fields.
        let mut old = vec![crate::CODEC_VERSION, 5, 0, 9, 11];
        old.extend_from_slice(b"127.0.0.1:9");
        assert!(crate::decode::<NodeRequest>(&old, 1024).is_err());
        assert!(crate::decode::<NodeRequest>(&[crate::CODEC_VERSION, 5], 1024).is_err());
        assert_eq!(
            crate::encode(&NodeRequest::Health),
            [crate::CODEC_VERSION, 6]
        );
    }
}
