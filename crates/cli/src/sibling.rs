//! Finding the other bkv binaries (`bkv-admin`, `bkv-hsm`, `bkv-frontend`, `bkv-auditor`),
//! which are installed side by side.

use anyhow::{bail, Context};
use std::path::PathBuf;

/// Finds a sibling binary: the explicit path, else the environment variable `env`, else the
/// file `name` next to this executable.
pub fn find_bin(name: &str, env: &str, explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit.or_else(|| std::env::var_os(env).map(PathBuf::from)) {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locate this executable")?;
    let candidate = exe.with_file_name(name);
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!(
        "{name} binary not found next to {} (build it with `cargo build --release --workspace`, or set {env})",
        exe.display()
    )
}
