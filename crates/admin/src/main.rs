//! `bkv-admin`: the operator's and developer's tool — fleet administration (membership,
//! ceremonies, publishing bundles), local deployments of the real services (`dev up`), the
//! demo, load generation, and checking any of the four config files.

mod bundle;
mod ceremony;
mod demo;
mod dev;
mod form;
mod loadgen;

use anyhow::Context;
use bkv_cli::{ClientConfig, ConfigKind, Global, UsageError};
use bkv_client::ClientError;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "bkv-admin",
    version,
    about = "bkv-admin: operate bkv fleets, run local deployments and the demo"
)]
struct Cli {
    /// Client configuration (DIR/client.toml from `dev up`), for `fleet status` and `dev loadgen`.
    #[arg(long, global = true, env = "BKV_CONFIG")]
    config: Option<PathBuf>,
    /// User token for `dev loadgen` (default: the dev token endpoint).
    #[arg(long, global = true, env = "BKV_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a complete local deployment in a temp dir: back up, restore, and
    /// show the guess limit at work.
    Demo,
    /// Local development deployments.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    /// Operate the vault fleet.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Service and client config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file (and read the key and certificate files it names): say which
    /// field is wrong and how to fix it. Exit 0 if it is good.
    Check(bkv_cli::CheckArgs),
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Print every node's reachability and replication state as JSON
    /// (leader, term, last log and applied index, members). Uses --config.
    Status,
    /// Add a node to a `dev up` fleet: its membership record is logged with
    /// the auditor, then admitted by a command signed with the operator key
    /// (learner, catch-up, voter).
    AddNode {
        #[arg(long)]
        dir: PathBuf,
        /// Which of the deployment's fleets (1 = the first formed).
        #[arg(long, default_value_t = 1)]
        fleet: usize,
    },
    /// Remove node ID from a `dev up` fleet (logged, operator-signed) and stop it.
    RemoveNode {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        fleet: usize,
        /// The node's id in its fleet.
        id: u64,
    },
    /// Form the next fleet of a `dev up` deployment from N new nodes by the
    /// deployment ceremony (evidence logged with the auditor), and publish a
    /// bundle that prefers it; records move to it on their users' next
    /// password recovery.
    Ceremony {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Form a fleet on real hosts by the deployment ceremony, from a plan naming every node's
    /// platform statement and addresses (deploy/form.toml): says when to start each node and
    /// waits for it; writes the evidence, logs it with the auditor and publishes a bundle.
    Form {
        #[arg(long)]
        plan: PathBuf,
    },
    /// Publish a bundle without fleet K (refused while it holds records,
    /// unless --force: the deadline for moving them passed).
    Retire {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        fleet: usize,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Run a node, a frontend and storage under DIR in the foreground.
    Up {
        #[arg(long)]
        dir: PathBuf,
        /// Frontend on P, auditor on P+2, node i's relay link on P+3+3i, peer
        /// link on P+4+3i, admin link on P+5+3i (default: free ports).
        #[arg(long)]
        port_base: Option<u16>,
        /// Number of vault nodes (1–9; 3 or 5 tolerate 1 or 2 failures).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Path of the bkv-hsm binary (default: next to bkv).
        #[arg(long)]
        hsm_bin: Option<PathBuf>,
        /// Write the client config in pinned mode (fleet key in the config)
        /// instead of ota (fleet key from an auditor-logged bundle).
        #[arg(long)]
        pinned: bool,
        /// Where each node keeps its keys: `software` (files, insecure) or
        /// `softhsm` (a SoftHSM2 token per node).
        #[arg(long, value_enum, default_value = "software")]
        platform: dev::DevPlatform,
        /// Store the client's backups here instead of DIR/storage: `s3://bucket/prefix`
        /// (AWS environment variables for credentials and endpoint) or `file:///dir`.
        #[arg(long)]
        storage_url: Option<String>,
    },
    /// Recovery load against a deployment (uses --config): throughput and latency percentiles.
    Loadgen {
        #[arg(long, default_value_t = 50)]
        users: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Offer this many recoveries per second on a fixed schedule (open loop; at most
        /// --concurrency in flight), latency counted from each one's scheduled start.
        /// Without it, every worker starts its next recovery when the last one ends.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Start node I of a `dev up` deployment again (after it died or was killed).
    RestartNode {
        #[arg(long)]
        dir: PathBuf,
        index: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    bkv_cli::main_with("bkv-admin", run(cli), |e| {
        if e.chain().any(|c| c.downcast_ref::<UsageError>().is_some()) {
            2
        } else {
            1
        }
    });
}

/// `bkv-admin config check FILE`: parses the file as its kind (with the environment's overrides for
/// a service) and reads the files it names.
fn config_check(
    file: &std::path::Path,
    kind: Option<ConfigKind>,
    skip_files: bool,
) -> anyhow::Result<()> {
    let kind = match kind {
        Some(k) => k,
        None => ConfigKind::guess(file)?,
    };
    match kind {
        ConfigKind::Client => {
            let cfg = ClientConfig::load(file)?;
            if !skip_files {
                cfg.http_client(Duration::from_secs(60))?;
            }
        }
        ConfigKind::Node => {
            bkv_hsm_node::NodeFile::load(file)?.check_fields()?;
        }
        ConfigKind::Auditor => {
            let f = bkv_auditor::config::AuditorFile::load(file)?;
            f.check_fields()?;
            if let (Some(tls), false) = (&f.tls, skip_files) {
                tls.server_config(file.parent().unwrap_or(std::path::Path::new(".")))?;
            }
        }
        ConfigKind::Frontend => {
            let f = bkv_frontend::config::FrontendFile::load(file)?;
            let base = file.parent().unwrap_or(std::path::Path::new("."));
            if skip_files {
                f.check_fields()?;
            } else {
                f.check(base)?;
            }
        }
        ConfigKind::FormPlan => form::check(file, skip_files)?,
    }
    println!("{}: a valid {kind:?} config", file.display());
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = Global {
        config: cli.config.clone(),
        token: cli.token.clone(),
        trust_new_log: false,
    };
    match &cli.command {
        Command::Demo => demo::run().await,
        Command::Dev { command } => match command {
            DevCommand::Up {
                dir,
                port_base,
                nodes,
                hsm_bin,
                pinned,
                platform,
                storage_url,
            } => {
                dev::up(dev::UpArgs {
                    dir: dir.clone(),
                    nodes: *nodes,
                    port_base: *port_base,
                    hsm_bin: hsm_bin.clone(),
                    pinned: *pinned,
                    platform: *platform,
                    storage_url: storage_url.clone(),
                })
                .await
            }
            DevCommand::RestartNode { dir, index } => dev::restart_node(dir, *index),
            DevCommand::Loadgen {
                users,
                concurrency,
                seconds,
                rate,
            } => {
                let global = std::sync::Arc::new(global);
                // The first user connects fully (bundle fetched and checked, log state saved);
                // the others reuse that fleet with their own token.
                let first = std::sync::Arc::new(tokio::sync::OnceCell::new());
                let report = loadgen::run(
                    move |user| {
                        let (global, first) = (global.clone(), first.clone());
                        Box::pin(async move {
                            let verified = first
                                .get_or_try_init(|| bkv_cli::connect(&global, &user))
                                .await?;
                            bkv_cli::connect_reusing(&global, verified, &user).await
                        })
                    },
                    loadgen::Args {
                        users: *users,
                        concurrency: *concurrency,
                        seconds: *seconds,
                        rate: *rate,
                    },
                )
                .await?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(())
            }
        },
        Command::Config {
            command: ConfigCommand::Check(a),
        } => config_check(&a.file, a.kind, a.skip_files),
        Command::Fleet {
            command: FleetCommand::AddNode { dir, fleet },
        } => dev::add_node(dir, *fleet).await,
        Command::Fleet {
            command: FleetCommand::RemoveNode { dir, fleet, id },
        } => dev::remove_node(dir, *fleet, *id).await,
        Command::Fleet {
            command: FleetCommand::Ceremony { dir, nodes },
        } => dev::ceremony(dir, *nodes).await,
        Command::Fleet {
            command: FleetCommand::Form { plan },
        } => form::run(plan).await,
        Command::Fleet {
            command: FleetCommand::Retire { dir, fleet, force },
        } => dev::retire(dir, *fleet, *force).await,
        Command::Fleet {
            command: FleetCommand::Status,
        } => {
            let path = cli.config.clone().ok_or_else(|| {
                UsageError("--config FILE is required (e.g. DIR/client.toml)".into())
            })?;
            let cfg = ClientConfig::load(&path)?;
            let url = format!("{}/v1/fleet/status", cfg.frontend_url.trim_end_matches('/'));
            let resp = cfg
                .http_client(Duration::from_secs(30))?
                .get(&url)
                .send()
                .await
                .map_err(|e| ClientError::Unavailable(format!("frontend: {e}")))?;
            let body = bkv_client::read_limited(resp, 256 * 1024).await?;
            let v: bkv_api::frontend::FleetStatusView =
                serde_json::from_slice(&body).context("fleet status answer")?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
    }
}
