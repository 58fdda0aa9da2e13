//! Frames on the relay link between the (untrusted) frontend and an HSM
//! node: sessions and public information only. Operator commands travel on
//! the separate admin link ([`crate::admin`]).
//! Framing: a 4-byte big-endian length, then an [`crate::encode`]d value of at
//! most [`crate::MAX_NODE_FRAME`] bytes.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

pub type SessionId = [u8; 16];

/// A retired request: decoding it always fails (the frame is malformed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retired;

impl<'de> Deserialize<'de> for Retired {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("retired request"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// First Noise message of a session for `user_id` (as authenticated by the frontend).
    OpenSession { user_id: String, handshake: Vec<u8> },
    /// A Noise transport message of an open session.
    SessionMessage {
        session_id: SessionId,
        user_id: String,
        ciphertext: Vec<u8>,
    },
    /// Whether `session_id` is `user_id`'s session and logged in to the
    /// user's live record (the frontend's proof of the password protector).
    /// Ending a session is an encrypted in-session request
    /// ([`crate::vault::VaultRequest::Close`]), never a relay-link frame.
    CheckLogin {
        session_id: SessionId,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeResponse {
    SessionOpened {
        session_id: SessionId,
        handshake: Vec<u8>,
    },
    SessionMessage {
        ciphertext: Vec<u8>,
    },
    LoginChecked {
        logged_in: bool,
    },
    Info(NodeInfo),
    Error(NodeError),
    FleetStatus(FleetStatus),
    /// The answer to [`NodeRequest::Health`].
    Health {
        ready: bool,
    },
}

/// One node's view of the replicated fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub fleet_id: String,
    pub noise_public_key: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NodeError {
    #[error("unknown or expired session")]
    UnknownSession,
    #[error("session belongs to another user")]
    WrongUser,
    #[error("noise handshake failed (is the client pinning the right fleet key?)")]
    Handshake,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("too many open sessions")]
    Busy,
    #[error("no majority of the vault fleet is reachable; nothing was counted or changed unless it committed")]
    Unavailable,
    /// The same request is still being committed; resend it shortly to get
    /// its reply.
    #[error("this request is still being processed")]
    InProgress,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame too large: {0} bytes")]
    TooLarge(usize),
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
