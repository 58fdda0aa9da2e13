//! `bkv-auditor`: the independent auditor's log server.

use anyhow::{anyhow, Context};
use clap::Parser;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngCore;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "bkv-auditor",
    version,
    about = "bkv independent auditor: append-only log of validation bundles"
)]
struct Args {
    /// Data directory (log database, signing key).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// Key name in signed notes; also the prefix of each log's origin.
    #[arg(long, default_value = "bkv-auditor")]
    name: String,
    /// Register NS with its operator's Ed25519 public key (hex): NS=KEY. Repeatable.
    #[arg(long = "namespace", value_name = "NS=KEY")]
    namespaces: Vec<String>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bkv-auditor: error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(Args::parse())) {
        eprintln!("bkv-auditor: error: {e:#}");
        std::process::exit(1);
    }
}

fn load_or_create_key(path: &std::path::Path) -> anyhow::Result<SigningKey> {
    if let Ok(b) = std::fs::read(path) {
        let arr: [u8; 32] = b
            .as_slice()
            .try_into()
            .map_err(|_| anyhow!("{} is corrupt", path.display()))?;
        return Ok(SigningKey::from_bytes(&arr));
    }
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(&k)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(SigningKey::from_bytes(&k))
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)?;
    // The signing key and the log database are the auditor's alone.
    std::fs::set_permissions(
        &args.data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let key = load_or_create_key(&args.data_dir.join("auditor-signing.key"))?;
    let mut namespaces = Vec::new();
    for spec in &args.namespaces {
        let (ns, k) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--namespace wants NS=KEY, got {spec:?}"))?;
        let kb = bkv_wire::key_from_hex(k).map_err(|e| anyhow!("--namespace {ns}: {e}"))?;
        let vk = VerifyingKey::from_bytes(&kb)
            .map_err(|_| anyhow!("--namespace {ns}: not an Ed25519 key"))?;
        namespaces.push((ns.to_owned(), vk));
    }
    if args.name.contains(char::is_whitespace) || args.name.contains('+') || args.name.is_empty() {
        return Err(anyhow!("--name must be non-empty without spaces or '+'"));
    }
    let auditor = Arc::new(
        bkv_auditor::Auditor::open(
            &args.data_dir.join("log.redb"),
            key,
            &args.name,
            &namespaces,
        )
        .context("open auditor log")?,
    );
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "bkv-auditor ready listen={addr} name={} key={}",
        auditor.name(),
        hex::encode(auditor.public_key().as_bytes())
    );
    axum::serve(listener, bkv_auditor::router(auditor))
        .await
        .context("serve")?;
    Ok(())
}
