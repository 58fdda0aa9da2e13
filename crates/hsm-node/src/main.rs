//! `bkv-hsm`: one vault node.
#![forbid(unsafe_code)]

use anyhow::Context;
use bkv_core_service::flags::{PlatformFlags, PlatformKind};
use bkv_hsm_node::{NodeConfig, StartMode};
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "bkv-hsm", version, about = "bkv HSM vault node")]
struct Args {
    /// Read every setting from this TOML file (`docs/operations.md`; `BKV_HSM__SECTION__FIELD`
    /// overrides a field) instead of the flags below; only --print-statement may be added.
    #[arg(long, conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// Node data directory (sealed log, snapshots and keys).
    #[arg(long, required_unless_present = "config")]
    data_dir: Option<PathBuf>,
    /// Relay link for the frontend: sessions and public information only
    /// (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7301")]
    listen: String,
    /// Admin link for the operator's signed commands. Keep it off the
    /// network the frontend can reach.
    #[arg(long, default_value = "127.0.0.1:0")]
    admin_listen: String,
    /// This node's id in the fleet.
    #[arg(long, default_value_t = 0)]
    node_id: u64,
    /// Address of the peer link (Raft, Noise IK); the address the
    /// operator's admin command names for this node.
    #[arg(long, default_value = "127.0.0.1:0")]
    peer_listen: String,
    /// The peer-link address the fleet records for this node when it
    /// founds the fleet (default: the bound --peer-listen address). For a
    /// node behind a forwarding address (NAT, a proxy).
    #[arg(long)]
    peer_advertise: Option<String>,
    /// Serve `/healthz`, `/readyz` and Prometheus `/metrics` over plain HTTP here (off when
    /// not given). Counts and Raft state only; keep it on the monitoring network.
    #[arg(long)]
    metrics_listen: Option<String>,
    #[command(flatten)]
    platform: bkv_core_service::flags::PlatformFlags,
    /// The core service binary this node starts as a child (default: `bkv-core` beside this
    /// binary). The core and its keys run there; this process holds no key.
    #[arg(long, conflicts_with_all = ["core_socket", "in_process_core"])]
    core_service: Option<PathBuf>,
    /// Connect to a core service already listening on this Unix socket instead of starting one.
    #[arg(long, env = "BKV_HSM_CORE_SOCKET", conflicts_with = "in_process_core")]
    core_socket: Option<PathBuf>,
    /// Run the core inside this process (a single binary: no boundary between host and core;
    /// `scripts/bench-fleet.sh` measures the boundary's cost against it).
    #[arg(long, env = "BKV_HSM_IN_PROCESS_CORE")]
    in_process_core: bool,
    /// Form a new fleet (first start of its first node), pinning the
    /// operator key, the auditor key and the log namespace below.
    #[arg(long, requires_all = ["operator_key", "auditor_key", "namespace"], conflicts_with = "join")]
    found: bool,
    /// The operator's Ed25519 public key (hex): only commands it signs are
    /// executed.
    #[arg(long)]
    operator_key: Option<String>,
    /// The auditor's verifier key (`name+id+base64`, as `GET /v1/key` serves
    /// it): membership must be in its log.
    #[arg(long)]
    auditor_key: Option<String>,
    /// The log namespace of the fleet's bundles and membership records.
    #[arg(long)]
    namespace: Option<String>,
    /// The fleet's guess-limit policy when founding it: the largest guess limit a record may
    /// carry. Every core enforces it; the deployment evidence states it.
    #[arg(long, default_value_t = bkv_wire::vault::DEFAULT_GUESS_LIMIT)]
    max_guess_limit: u32,
    /// When founding a fleet: an earlier fleet whose records may move to it, as
    /// `FLEET_ID=MOVE_KEY_HEX` (its nodes print the move key in their ready line). Repeatable.
    #[arg(long = "predecessor")]
    predecessors: Vec<String>,
    /// Join an existing fleet: a JSON list of members `[{"id","addr","identity"}]`
    /// to ask for the fleet secrets once the operator admitted this node.
    #[arg(long)]
    join: Option<PathBuf>,
    /// Print this node's signed platform statement (JSON) and exit,
    /// creating its keys on a fresh data directory.
    #[arg(long)]
    print_statement: bool,
    /// Seconds after which a quiet relay or admin connection is closed.
    #[arg(long, env = "BKV_HSM_IDLE_TIMEOUT", default_value_t = bkv_hsm_node::DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Sessions held at once (per user at most a few; when full, unused and
    /// then the biggest holder's sessions make room).
    #[arg(long, env = "BKV_HSM_MAX_SESSIONS", default_value_t = bkv_hsm_core::DEFAULT_MAX_SESSIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_sessions: usize,
}

fn main() {
    // `RUST_LOG` as `level` or `target=level,…` (no regex engine in the
    // measured binary: see the lean dependency set in Cargo.toml).
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
        });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stderr),
        )
        .with(filter)
        .init();
    // The core service is gone (its child exited, or a connection to it broke): exit, so that
    // the supervisor restarts the node with a fresh core; every answer already waited for its
    // commit, so nothing is lost.
    bkv_core_service::client::on_core_gone(|why| {
        eprintln!("bkv-hsm: error: {why}; exiting");
        std::process::exit(1);
    });
    let args = match Args::parse().resolve() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bkv-hsm: error: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("bkv-hsm: error: {e:#}");
        std::process::exit(1);
    }
}

impl Args {
    /// With --config, the settings of the file (checked); otherwise the flags as given.
    fn resolve(self) -> anyhow::Result<Args> {
        let Some(path) = self.config else {
            return Ok(self);
        };
        // (clap requires --data-dir unless --config is given.)
        let f = bkv_hsm_node::NodeFile::load(&path)?;
        f.check_fields()?;
        Ok(Args {
            config: None,
            data_dir: Some(f.data_dir),
            listen: f.listen.relay,
            admin_listen: f.listen.admin,
            node_id: f.node_id,
            peer_listen: f.listen.peer,
            peer_advertise: f.listen.peer_advertise,
            metrics_listen: f.listen.metrics,
            platform: PlatformFlags {
                platform: match f.platform.kind {
                    bkv_hsm_node::PlatformChoice::Software => PlatformKind::Software,
                    bkv_hsm_node::PlatformChoice::Pkcs11 => PlatformKind::Pkcs11,
                },
                platform_dir: f.platform.dir,
                pkcs11_module: f.platform.pkcs11_module,
                token_label: f.platform.token_label,
                pin_file: f.platform.pin_file,
            },
            core_service: f.core.service,
            core_socket: f.core.socket,
            in_process_core: f.core.in_process,
            found: f.fleet.found,
            operator_key: f.fleet.operator_key,
            auditor_key: f.fleet.auditor_key,
            namespace: f.fleet.namespace,
            max_guess_limit: f.fleet.max_guess_limit,
            predecessors: f.fleet.predecessors,
            join: f.fleet.join,
            print_statement: self.print_statement,
            idle_timeout: f.limits.idle_timeout_secs,
            max_sessions: f.limits.max_sessions,
        })
    }
}

impl Args {
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_default()
    }
}

fn platform_config(args: &Args) -> anyhow::Result<bkv_hsm_platform::PlatformConfig> {
    Ok(args
        .platform
        .config(Some(args.data_dir().join("platform")))?)
}

fn core_mode(args: &Args) -> anyhow::Result<bkv_hsm_node::CoreMode> {
    use bkv_hsm_node::CoreMode;
    Ok(
        match (&args.core_service, &args.core_socket, args.in_process_core) {
            (_, _, true) => CoreMode::InProcess,
            (_, Some(socket), false) => CoreMode::Socket(socket.clone()),
            (Some(bin), None, false) => CoreMode::Child(bin.clone()),
            (None, None, false) => CoreMode::child_beside_this_binary()?,
        },
    )
}

fn start_mode(args: &Args) -> anyhow::Result<StartMode> {
    if args.found {
        let (Some(op), Some(aud), Some(ns)) =
            (&args.operator_key, &args.auditor_key, &args.namespace)
        else {
            anyhow::bail!("--found needs --operator-key, --auditor-key and --namespace");
        };
        let operator_key =
            bkv_wire::key_from_hex(op).map_err(|e| anyhow::anyhow!("--operator-key: {e}"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&operator_key)
            .map_err(|_| anyhow::anyhow!("--operator-key is not an Ed25519 public key"))?;
        let (auditor_name, auditor) = bkv_transparency::note::parse_verifier_key(aud)
            .map_err(|e| anyhow::anyhow!("--auditor-key: {e}"))?;
        let predecessors = args
            .predecessors
            .iter()
            .map(|p| bkv_hsm_node::parse_predecessor(p))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(StartMode::Found(bkv_hsm_core::FleetTrust {
            namespace: ns.clone(),
            auditor_name,
            auditor_key: auditor.to_bytes(),
            operator_key,
            max_guess_limit: args.max_guess_limit,
            predecessors,
        }));
    }
    if let Some(path) = &args.join {
        let list: Vec<bkv_hsm_node::Member> =
            serde_json::from_slice(&bkv_service::read_limited(path, 1024 * 1024)?)
                .with_context(|| format!("parse members file {}", path.display()))?;
        anyhow::ensure!(!list.is_empty(), "{} lists no member", path.display());
        return Ok(StartMode::Join(list));
    }
    Ok(StartMode::Existing)
}

fn run(args: Args) -> anyhow::Result<()> {
    let platform = platform_config(&args)?;
    let core = core_mode(&args)?;
    if args.print_statement {
        let signed = bkv_hsm_node::platform_statement(&args.data_dir(), &platform, &core)?;
        let s = bkv_transparency::membership::verify_statement(&signed)
            .map_err(|e| anyhow::anyhow!("own statement: {e}"))?;
        let out = bkv_api::statement::PrintedStatement {
            identity_key: hex::encode(s.identity_key),
            signing_key: hex::encode(s.signing_key),
            platform: s.platform.kind.name().into(),
            token: s.platform.token,
            binary_sha256: hex::encode(s.binary_sha256),
            signed_statement: hex::encode(bkv_wire::encode(&signed)),
        };
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let node = Arc::new(
        bkv_hsm_node::Node::open(&NodeConfig {
            data_dir: args.data_dir(),
            platform,
            node_id: args.node_id,
            peer_listen: args.peer_listen.clone(),
            peer_advertise: args.peer_advertise.clone(),
            start: start_mode(&args)?,
            core,
        })
        .with_context(|| format!("open node data in {}", args.data_dir().display()))?,
    );
    node.set_max_sessions(args.max_sessions);
    bkv_hsm_node::write_public_info(&node, &args.data_dir())?;
    let idle = std::time::Duration::from_secs(args.idle_timeout);
    let relay = bkv_hsm_node::serve(node.clone(), &args.listen, idle)?;
    let admin = bkv_hsm_node::serve_admin(node.clone(), &args.admin_listen, idle)?;
    let metrics = match &args.metrics_listen {
        Some(listen) => {
            let n = node.clone();
            let addr = bkv_hsm_node::serve_http(listen, move |path| n.http_answer(path))
                .with_context(|| format!("listen for metrics on {listen}"))?;
            format!(" metrics={addr}")
        }
        None => String::new(),
    };
    tracing::info!(relay = %relay.addr, admin = %admin.addr, fleet = %node.info().fleet_id, "serving");
    println!(
        "bkv-hsm ready listen={} admin={} peer={} node_id={} fleet={} noise_public_key={} move_key={}{metrics}",
        relay.addr,
        admin.addr,
        node.peer_addr,
        args.node_id,
        node.info().fleet_id,
        bkv_wire::key_to_hex(&node.info().noise_public_key),
        bkv_wire::key_to_hex(&node.move_public_key()),
    );
    // Every commit is already durable, so the process may be killed at any
    // moment; it simply serves until then.
    loop {
        std::thread::park();
    }
}
