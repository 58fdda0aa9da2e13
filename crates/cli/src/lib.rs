//! The user's side of bkv as a command-line tool: the client config file (`client.toml`),
//! connecting to a deployment from it (a token, then the fleet key, pinned or from an
//! auditor-logged bundle), and the backup operations `bkv` runs. `bkv-admin` reuses it for
//! development deployments, the demo and load generation.
//!
//! It links the client library only — never a frontend, node or auditor crate: the user's
//! binary carries no service code, and nothing here sees a key the client library does not
//! hand the user.
#![forbid(unsafe_code)]

pub mod config;
mod connect;
pub mod ops;
mod sibling;

pub use config::{ClientConfig, ConfigKind};
pub use connect::{connect, storage_location, Global, UsageError};
pub use sibling::find_bin;
