//! The `bkv` commands, one module each.

pub mod audit;
pub mod backup;
pub mod protectors;
pub mod witness;

use bkv_cli::UsageError;

pub fn validate_user(user: &str) -> anyhow::Result<()> {
    bkv_wire::validate_user_id(user).map_err(|e| UsageError(format!("--user: {e}")).into())
}
