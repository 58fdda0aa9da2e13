//! `bkv-hsm`: one vault node.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "bkv-hsm", version, about = "bkv HSM vault node")]
struct Args {
    /// Node data directory (sealed state, software platform keys).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to serve the frontend link on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7301")]
    listen: String,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("bkv-hsm: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let node = Arc::new(
        bkv_hsm_node::Node::open(&args.data_dir)
            .with_context(|| format!("open node data in {}", args.data_dir.display()))?,
    );
    bkv_hsm_node::write_public_info(&node, &args.data_dir)?;
    let server = bkv_hsm_node::serve(node.clone(), &args.listen)?;
    tracing::info!(addr = %server.addr, fleet = %node.info().fleet_id, "serving");
    println!(
        "bkv-hsm ready listen={} fleet={} noise_public_key={}",
        server.addr,
        node.info().fleet_id,
        bkv_wire::key_to_hex(&node.info().noise_public_key)
    );
    // Every commit is already durable, so the process may be killed at any
    // moment; it simply serves until then.
    loop {
        std::thread::park();
    }
}
