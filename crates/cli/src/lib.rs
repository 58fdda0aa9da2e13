//! The user's side of bkv as a command-line tool: the client config file (`client.toml`),
//! connecting to a deployment from it (a token, then the fleet key, pinned or from an
//! auditor-logged bundle), and the backup operations `bkv` runs. `bkv-admin` reuses it for
//! development deployments, the demo and load generation.
//!
//! It links the client library only — never a frontend, node or auditor crate: the user's
//! binary carries no service code, and nothing here sees a key the client library does not
//! hand the user.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod config;
mod connect;
pub mod ops;
mod sibling;

pub use config::{CheckArgs, ClientConfig, ConfigKind};
pub use connect::{connect, connect_reusing, storage_location, Global, UsageError};
pub use sibling::find_bin;

/// Runs a command-line tool's `run` on a multi-threaded runtime, with `RUST_LOG` (default
/// `warn`) logging to stderr; on error prints `NAME: error: …` with its causes and exits with
/// `exit_code(&error)`.
pub fn main_with<F>(name: &str, run: F, exit_code: fn(&anyhow::Error) -> i32)
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: error: start runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run) {
        eprintln!("{name}: error: {e:#}");
        std::process::exit(exit_code(&e));
    }
}
