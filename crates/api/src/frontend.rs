//! The frontend's JSON bodies that are not the vault protocol (docs/api.md).

use serde::{Deserialize, Serialize};

/// `POST /v1/dev/token` (development deployments only): a token for `user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevTokenRequest {
    pub user: String,
}

/// The dev token and when it expires (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevTokenResponse {
    pub token: String,
    pub expires_at: u64,
}

/// `GET /v1/fleet`: informational only (clients pin the fleet key from their config or a
/// verified bundle, never from this answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetInfo {
    pub fleet_id: String,
    /// The fleet's Noise static public key, hex.
    pub noise_public_key: String,
}

/// `GET /v1/fleet/status` (and `bkv-admin fleet status`): each routed node's view of the
/// replicated fleet, and the newest leader and term among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatusView {
    pub nodes: Vec<NodeStatusRow>,
    pub leader: Option<u64>,
    pub term: u64,
}

/// One routed node: where it is, and its view if it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatusRow {
    /// Its index in the frontend's routes.
    pub index: u64,
    pub fleet_id: String,
    pub addr: String,
    pub reachable: bool,
    /// Absent when the node did not answer.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub view: Option<NodeView>,
}

/// What a node says of the fleet (its Raft state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
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
