//! `bkv-core`: the core service (the vault core and its platform) on a Unix-domain socket. A
//! node's host agent (`bkv-hsm`) starts it as a child, or connects to one an operator runs.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "bkv-core",
    version,
    about = "bkv core service: the vault core and its keys"
)]
struct Args {
    /// The Unix-domain socket to listen on (made owner-only; a stale one is replaced).
    #[arg(long)]
    socket: PathBuf,
    #[command(flatten)]
    platform: bkv_core_service::flags::PlatformFlags,
    /// Create the platform's keys if they are missing (a new node only: otherwise a missing
    /// key means the token or key directory was lost, and the node's data is unreadable).
    #[arg(long)]
    create_keys: bool,
    /// Exit when standard input closes (a child of the agent ends with it).
    #[arg(long)]
    exit_with_stdin: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args.platform.config(None)?;
    let platform = bkv_hsm_platform::open(&cfg, args.create_keys).context("open the platform")?;
    let binary = bkv_core_service::own_binary_sha256().context("hash this binary")?;
    match std::fs::remove_file(&args.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("remove a stale socket"),
    }
    let listener = std::os::unix::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("listen on {}", args.socket.display()))?;
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600))
        .context("make the socket owner-only")?;
    if args.exit_with_stdin {
        let socket = args.socket.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            // EOF or an error: the agent is gone.
            while matches!(std::io::Read::read(&mut std::io::stdin(), &mut sink), Ok(n) if n > 0) {}
            remove_runtime_dir(&socket);
            std::process::exit(0);
        });
    }
    tracing::info!(socket = %args.socket.display(), "core service listening");
    bkv_core_service::server::serve(
        listener,
        bkv_core_service::service::CoreService::new(platform, binary),
    );
    Ok(())
}

/// Removes the socket and the directory the agent made for it (`CoreChild::start`): an agent
/// killed outright never ran its own cleanup, and each start makes a new directory.
fn remove_runtime_dir(socket: &std::path::Path) {
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        let ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(bkv_core_service::RUNTIME_DIR_PREFIX));
        if ours {
            // Only if empty: nothing else is removed.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("bkv-core: error: {e:#}");
        std::process::exit(1);
    }
}
