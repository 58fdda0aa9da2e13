//! What `bkv` hands to `bkv-admin`: the demo (a whole deployment in one process) and checking
//! a service's config file. `bkv` links no service code, so it runs the sibling binary; under
//! `cargo run` it first has cargo build that binary (a no-op when it is current), so the
//! README's `cargo run --release --bin bkv -- demo` works on a fresh clone.

use anyhow::{bail, Context};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `bkv-admin ARGS` in the foreground; its failure exits this process with its code (it
/// has printed why).
pub fn run(args: &[OsString]) -> anyhow::Result<()> {
    let bin = admin_bin()?;
    let status = Command::new(&bin)
        .args(args)
        .status()
        .with_context(|| format!("run {}", bin.display()))?;
    if status.success() {
        return Ok(());
    }
    std::process::exit(status.code().unwrap_or(crate::EXIT_ERROR));
}

fn admin_bin() -> anyhow::Result<PathBuf> {
    if std::env::var_os("BKV_ADMIN_BIN").is_none() {
        if let (Some(cargo), Some(manifest)) = (
            std::env::var_os("CARGO"),
            std::env::var_os("CARGO_MANIFEST_DIR"),
        ) {
            build_with_cargo(Path::new(&cargo), Path::new(&manifest))?;
        }
    }
    bkv_cli::find_bin("bkv-admin", "BKV_ADMIN_BIN", None)
}

/// `cargo build` of bkv-admin into this executable's target directory and profile.
fn build_with_cargo(cargo: &Path, manifest_dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locate the bkv executable")?;
    let (Some(profile_dir), Some(target_dir)) = (exe.parent(), exe.parent().and_then(Path::parent))
    else {
        bail!("{} is not in a cargo target directory", exe.display());
    };
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .args(["-p", "bkv-admin", "--bin", "bkv-admin"])
        .env("CARGO_TARGET_DIR", target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!(
        "bkv: building bkv-admin (the demo runs the services' code, which bkv does not link)"
    );
    let status = cmd.status().context("run cargo build")?;
    if !status.success() {
        bail!("cargo build of bkv-admin failed ({status})");
    }
    Ok(())
}
