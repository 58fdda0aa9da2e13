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
    /// Software platform directory (sealing key and monotonic counter, the
    /// HSM stand-in). Default DATA_DIR/platform; put it elsewhere so that a
    /// rolled-back data directory is detected.
    #[arg(long)]
    platform_dir: Option<PathBuf>,
    /// This node's id in the fleet.
    #[arg(long, default_value_t = 0)]
    node_id: u64,
    /// Address of the peer link (Raft, Noise IK). Must match this node's
    /// entry in --members.
    #[arg(long, default_value = "127.0.0.1:0")]
    peer_listen: String,
    /// JSON list of the fleet's members `[{"id","addr","identity"}]`; without
    /// it the node runs a one-node fleet.
    #[arg(long)]
    members: Option<PathBuf>,
    /// Form the fleet from --members (first start of the first node only).
    #[arg(long)]
    initialize: bool,
    /// Print this node's identity public key (hex) and exit.
    #[arg(long)]
    print_identity: bool,
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
    if args.print_identity {
        let k = bkv_hsm_node::identity_public_key(&args.data_dir, args.platform_dir.as_deref())?;
        println!("{}", bkv_wire::key_to_hex(&k));
        return Ok(());
    }
    let members = match &args.members {
        Some(path) => {
            let meta =
                std::fs::metadata(path).with_context(|| format!("read {}", path.display()))?;
            anyhow::ensure!(meta.len() < 1024 * 1024, "{} is too large", path.display());
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            let list: Vec<bkv_hsm_node::Member> = serde_json::from_str(&text)
                .with_context(|| format!("parse members file {}", path.display()))?;
            anyhow::ensure!(
                list.iter().any(|m| m.id == args.node_id),
                "--node-id {} is not in {}",
                args.node_id,
                path.display()
            );
            Some(list)
        }
        None => None,
    };
    let node = Arc::new(
        bkv_hsm_node::Node::open(&bkv_hsm_node::NodeConfig {
            data_dir: args.data_dir.clone(),
            platform_dir: args.platform_dir.clone(),
            node_id: args.node_id,
            peer_listen: args.peer_listen.clone(),
            members,
            initialize: args.initialize,
        })
        .with_context(|| format!("open node data in {}", args.data_dir.display()))?,
    );
    bkv_hsm_node::write_public_info(&node, &args.data_dir)?;
    let server = bkv_hsm_node::serve(node.clone(), &args.listen)?;
    tracing::info!(addr = %server.addr, fleet = %node.info().fleet_id, "serving");
    println!(
        "bkv-hsm ready listen={} peer={} node_id={} fleet={} noise_public_key={}",
        server.addr,
        node.peer_addr,
        args.node_id,
        node.info().fleet_id,
        bkv_wire::key_to_hex(&node.info().noise_public_key)
    );
    // Every commit is already durable, so the process may be killed at any
    // moment; it simply serves until then.
    loop {
        std::thread::park();
    }
}
