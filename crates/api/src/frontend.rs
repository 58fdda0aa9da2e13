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
