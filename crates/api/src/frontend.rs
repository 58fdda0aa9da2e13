//! The frontend's JSON bodies that are not the vault protocol (docs/api.md).

use serde::{Deserialize, Serialize};

/// `POST /v1/dev/token` (development deployments only): a token for `user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevTokenRequest {
    /// The user id the token names.
    pub user: String,
}

/// The dev token and when it expires (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevTokenResponse {
    /// The bearer token.
    pub token: String,
    /// When it expires, unix seconds.
    pub expires_at: u64,
}

/// `GET /v1/fleet`: informational only (clients pin the fleet key from their config or a
/// verified bundle, never from this answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetInfo {
    /// The fleet's id.
    pub fleet_id: String,
    /// The fleet's Noise static public key, hex.
    pub noise_public_key: String,
}

/// `GET /v1/fleet/status` (and `bkv-admin fleet status`): each routed node's view of the
/// replicated fleet, and the newest leader and term among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatusView {
    /// One row per routed node.
    pub nodes: Vec<NodeStatusRow>,
    /// The leader named in the newest term any node reported.
    pub leader: Option<u64>,
    /// The newest term any node reported.
    pub term: u64,
}

/// One routed node: where it is, and its view if it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatusRow {
    /// Its index in the frontend's routes.
    pub index: u64,
    /// The fleet the route belongs to.
    pub fleet_id: String,
    /// The node's relay address.
    pub addr: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Absent when the node did not answer.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub view: Option<NodeView>,
}

/// What a node says of the fleet (its Raft state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Its Raft node id.
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Its current term.
    pub term: u64,
    /// Its log's last index.
    pub last_log_index: Option<u64>,
    /// How far its state machine applied.
    pub applied_index: Option<u64>,
    /// The voting members it knows of.
    pub voters: Vec<u64>,
    /// The non-voting members (catching up) it knows of.
    pub learners: Vec<u64>,
}
