//! `bkv`: user, operator and developer commands.

mod audit;
mod config;
mod demo;
mod dev;
mod loadgen;
mod ops;

use anyhow::{anyhow, Context};
use bkv_client::protection::Unlock;
use bkv_client::{ClientError, Endpoint};
use clap::{Parser, Subcommand};
use config::ClientConfig;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use secrecy::SecretString;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "bkv",
    version,
    about = "bkv: end-to-end encrypted backups with an HSM-held, guess-limited key"
)]
struct Cli {
    /// Client configuration (written by `bkv dev up` as DIR/client.toml).
    #[arg(long, global = true, env = "BKV_CONFIG")]
    config: Option<PathBuf>,
    /// User token from the app's auth service. Without it, a development
    /// deployment's token endpoint (from the config) is used.
    #[arg(long, global = true, env = "BKV_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust the auditor log served now although this client's saved
    /// checkpoint of it is missing (recorded in the client config).
    #[arg(long, global = true)]
    trust_new_log: bool,
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
    /// Verify an auditor's log of validation bundles.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Operate the vault fleet.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Create, restore and manage your backups.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
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
    Check {
        /// The file to check.
        file: PathBuf,
        /// Which kind it is; guessed from its sections when not given.
        #[arg(long, value_enum)]
        kind: Option<ConfigKind>,
        /// Check the fields only, without reading the key, certificate and JWKS files they
        /// name (a sample, on a machine that does not hold the deployment's keys).
        #[arg(long)]
        skip_files: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ConfigKind {
    /// `bkv-frontend --config`.
    Frontend,
    /// `bkv --config` (`client.toml`).
    Client,
    /// `bkv-hsm --config`.
    Node,
    /// `bkv-auditor --config`.
    Auditor,
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
    },
    /// Start node I of a `dev up` deployment again (after it died or was killed).
    RestartNode {
        #[arg(long)]
        dir: PathBuf,
        index: usize,
    },
}

/// Which protector unlocks the backup key. Secrets come from standard
/// input, one per line, in the order the flags are listed here.
#[derive(clap::Args, Debug, Clone, Default)]
struct UnlockArgs {
    /// The password (the vault protector), read from standard input.
    #[arg(long, conflicts_with_all = ["recovery_key_stdin", "passkey_store"])]
    password_stdin: bool,
    /// A recovery key, read from standard input (no vault needed).
    #[arg(long, conflicts_with = "passkey_store")]
    recovery_key_stdin: bool,
    /// A passkey from this credential store file (a software authenticator
    /// standing in for the platform's passkey store).
    #[arg(long, value_name = "FILE")]
    passkey_store: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ProtectorsCommand {
    /// Show the protectors of the current backup key.
    List {
        #[arg(long)]
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Add a protector, after unlocking with an existing one.
    Add {
        #[arg(long)]
        user: String,
        /// Register a new passkey (PRF) in the store given by --new-passkey-store.
        #[arg(long, requires = "new_passkey_store")]
        passkey: bool,
        /// Credential store file that receives the new passkey.
        #[arg(long, value_name = "FILE")]
        new_passkey_store: Option<PathBuf>,
        /// Generate a 256-bit recovery key (shown once) that restores without the vault.
        #[arg(long)]
        recovery_key: bool,
        /// Add the password protector; the new password is the last line of standard input.
        #[arg(long)]
        password: bool,
        #[command(flatten)]
        unlock: UnlockArgs,
    },
    /// Remove a protector (`password` or a slot id from `list`). The backup
    /// key is rotated so the removed protector opens nothing new, then the
    /// data under the old key is deleted.
    Remove {
        #[arg(long)]
        user: String,
        id: String,
        #[command(flatten)]
        unlock: UnlockArgs,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify a fleet's deployment evidence: transcript, every node and
    /// witness signature, the fleet keys, and (with --auditor) that the
    /// evidence, every member's record and a bundle naming it are in the
    /// auditor's log; with --rebuild, that a local reproducible build of
    /// bkv-hsm has the measured hash. Exits non-zero naming the failed check.
    Fleet {
        /// The evidence file (`evidence.json`).
        evidence: PathBuf,
        /// Auditor base URL.
        #[arg(long)]
        auditor: Option<String>,
        /// Operator's Ed25519 public key (hex); default: the key the auditor
        /// reports for the namespace.
        #[arg(long)]
        operator_key: Option<String>,
        /// Pin the auditor's Ed25519 public key (hex).
        #[arg(long)]
        auditor_key: Option<String>,
        /// Require this witness's Ed25519 public key (hex) among the signers.
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// Rebuild bkv-hsm with the reproducible recipe and compare hashes
        /// (run from the source checkout; takes minutes).
        #[arg(long)]
        rebuild: bool,
        /// The rebuild script (default scripts/build-hsm-reproducible.sh).
        #[arg(long, default_value = "scripts/build-hsm-reproducible.sh")]
        rebuild_script: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Walk every epoch of a namespace: verify digests, auditor signatures,
    /// operator counter-signatures, inclusion and consistency proofs, and show
    /// how the fleet keys changed. Exits non-zero on any failure.
    Log {
        /// Auditor base URL.
        #[arg(long)]
        auditor: String,
        #[arg(long)]
        namespace: String,
        /// Operator's Ed25519 public key (hex).
        #[arg(long)]
        operator_key: String,
        /// Pin the auditor's Ed25519 public key (hex) instead of trusting the one it presents.
        #[arg(long)]
        auditor_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Back up a file or a directory tree (sets up the backup key on first
    /// use with --password-stdin).
    Create {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        unlock: UnlockArgs,
        /// Store without zstd compression.
        #[arg(long)]
        no_compress: bool,
        path: PathBuf,
    },
    /// Restore the latest backup to a new path, with any one protector.
    Restore {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        unlock: UnlockArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// Change the password: reads the current password, then the new one, as
    /// two lines of standard input.
    ChangePassword {
        #[arg(long)]
        user: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List, add or remove protectors of the backup key.
    Protectors {
        #[command(subcommand)]
        command: ProtectorsCommand,
    },
    /// Replace the backup key: a new key for every protector, the latest
    /// backup re-encrypted under it, then everything under the old key deleted.
    RotateKey {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        unlock: UnlockArgs,
    },
    /// Show the vault record and the latest backup.
    Status {
        #[arg(long)]
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete the vault record, every passkey at the frontend and every
    /// stored backup and manifest, after confirming with a protector (the
    /// password, whenever a vault record exists).
    Disable {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        unlock: UnlockArgs,
    },
}

/// Exit codes (documented in the README).
const EXIT_ERROR: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_WRONG_PASSWORD: i32 = 3;
const EXIT_LOCKED: i32 = 4;

fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::WrongPassword { .. } => EXIT_WRONG_PASSWORD,
                ClientError::Destroyed | ClientError::NoRecord => EXIT_LOCKED,
                ClientError::PasswordNeeded => EXIT_USAGE,
                _ => EXIT_ERROR,
            };
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return EXIT_USAGE;
        }
    }
    EXIT_ERROR
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() {
    // Everything bkv writes (keys, state, configs, partial restores) is the
    // user's alone; restored trees get their recorded modes explicitly.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bkv: error: start runtime: {e}");
            std::process::exit(EXIT_ERROR);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("bkv: error: {e:#}");
        std::process::exit(exit_code(&e));
    }
}

impl Cli {
    /// The global options only (what `context` reads).
    fn clone_for_loadgen(&self) -> Cli {
        Cli {
            config: self.config.clone(),
            token: self.token.clone(),
            trust_new_log: self.trust_new_log,
            command: Command::Demo,
        }
    }
}

fn read_password(flag: bool) -> anyhow::Result<SecretString> {
    if !flag {
        return Err(
            UsageError("pass the password on standard input with --password-stdin".into()).into(),
        );
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read password from stdin")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    zeroize::Zeroize::zeroize(&mut line);
    if pw.is_empty() {
        return Err(UsageError("the password on standard input is empty".into()).into());
    }
    Ok(SecretString::from(pw))
}

/// A protector given on the command line, ready to unlock K.
enum Unlocker {
    Password(SecretString),
    RecoveryKey(bkv_client::protectors::RecoveryKey),
    Passkey(bkv_soft_passkey::SoftAuthenticator),
}

impl Unlocker {
    fn unlock(&mut self) -> Unlock<'_> {
        match self {
            Unlocker::Password(p) => Unlock::Password(p),
            Unlocker::RecoveryKey(k) => Unlock::RecoveryKey(k),
            Unlocker::Passkey(a) => Unlock::Passkey(a),
        }
    }

    fn password(&self) -> Option<&SecretString> {
        match self {
            Unlocker::Password(p) => Some(p),
            _ => None,
        }
    }
}

fn read_recovery_key() -> anyhow::Result<bkv_client::protectors::RecoveryKey> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read recovery key from stdin")?;
    let rk = bkv_client::protectors::RecoveryKey::parse(&line).map_err(ClientError::from);
    zeroize::Zeroize::zeroize(&mut line);
    Ok(rk?)
}

/// Reads the protector the flags name (secrets from stdin).
fn read_unlock(args: &UnlockArgs) -> anyhow::Result<Unlocker> {
    if args.password_stdin {
        Ok(Unlocker::Password(read_password(true)?))
    } else if args.recovery_key_stdin {
        Ok(Unlocker::RecoveryKey(read_recovery_key()?))
    } else if let Some(store) = &args.passkey_store {
        if !store.exists() {
            return Err(
                UsageError(format!("passkey store {} does not exist", store.display())).into(),
            );
        }
        Ok(Unlocker::Passkey(bkv_soft_passkey::SoftAuthenticator::new(
            store,
        )))
    } else {
        Err(UsageError(
            "name a protector: --password-stdin, --recovery-key-stdin or --passkey-store FILE"
                .into(),
        )
        .into())
    }
}

/// `bkv config check FILE`: parses the file as its kind (with the environment's overrides for
/// a service) and reads the files it names.
fn config_check(
    file: &std::path::Path,
    kind: Option<ConfigKind>,
    skip_files: bool,
) -> anyhow::Result<()> {
    let kind = match kind {
        Some(k) => k,
        None => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("read {}", file.display()))?;
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("{} is not TOML", file.display()))?;
            let has = |keys: &[&str]| keys.iter().any(|k| table.contains_key(*k));
            if has(&["frontend_url"]) {
                ConfigKind::Client
            } else if has(&["platform", "fleet", "node_id"]) {
                ConfigKind::Node
            } else if has(&["namespaces", "name"]) {
                ConfigKind::Auditor
            } else if has(&["listen", "tokens", "fleets"]) {
                ConfigKind::Frontend
            } else {
                return Err(UsageError(format!(
                    "cannot tell what kind of config {} is; pass --kind",
                    file.display()
                ))
                .into());
            }
        }
    };
    match kind {
        ConfigKind::Client => {
            let cfg = ClientConfig::load(file)?;
            if !skip_files {
                cfg.http_client(Duration::from_secs(60))?;
            }
        }
        ConfigKind::Node => {
            bkv_hsm_node::config::NodeFile::load(file)?.check_fields()?;
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
    }
    println!("{}: a valid {kind:?} config", file.display());
    Ok(())
}

fn validate_user(user: &str) -> anyhow::Result<()> {
    bkv_wire::validate_user_id(user).map_err(|e| UsageError(format!("--user: {e}")).into())
}

async fn context(cli: &Cli, user: &str) -> anyhow::Result<ops::Ctx> {
    let path = cli.config.clone().ok_or_else(|| {
        UsageError("--config FILE is required (e.g. DIR/client.toml from `bkv dev up`)".into())
    })?;
    let cfg = ClientConfig::load(&path)?;
    let http = cfg.http_client(Duration::from_secs(60))?;
    let token = match &cli.token {
        Some(t) => t.clone(),
        None => {
            let url = cfg.auth.dev_token_url.clone().ok_or_else(|| {
                UsageError("no --token given and the config has no dev token endpoint".into())
            })?;
            let resp = http
                .post(&url)
                .json(&serde_json::json!({ "user": user }))
                .send()
                .await
                .map_err(|e| ClientError::Unavailable(format!("token endpoint: {e}")))?;
            if !resp.status().is_success() {
                return Err(anyhow!("token endpoint refused: {}", resp.status()));
            }
            let body = bkv_client::session::read_limited(resp, 16 * 1024).await?;
            let v: serde_json::Value =
                serde_json::from_slice(&body).context("token endpoint answer")?;
            v.get("token")
                .and_then(|t| t.as_str())
                .ok_or_else(|| anyhow!("token endpoint sent no token"))?
                .to_owned()
        }
    };
    let mut fleets = match cfg.fleet.mode.as_str() {
        "ota" => {
            let anchors = cfg.anchors()?;
            let state = cfg
                .fleet
                .ota
                .as_ref()
                .map(|o| o.state_file.clone())
                .ok_or_else(|| anyhow!("ota mode needs [fleet.ota]"))?;
            let ota = cfg.fleet.ota.as_ref();
            let saved_before = ota.is_some_and(|o| o.log_trusted_since.is_some());
            let fleets = bkv_client::ota::fleets(
                &http,
                &cfg.frontend_url,
                &anchors,
                &state,
                saved_before && !cli.trust_new_log,
            )
            .await?;
            config::record_log_trust(&path, saved_before, cli.trust_new_log && saved_before)?;
            fleets
        }
        // Without a fleet id the frontend routes to its default fleet.
        _ => vec![bkv_client::session::FleetTarget {
            fleet_id: cfg.fleet.fleet_id.clone().unwrap_or_default(),
            key: cfg.pinned_key()?,
        }],
    }
    .into_iter();
    let fleet = fleets
        .next()
        .ok_or_else(|| anyhow!("the bundle lists no fleet"))?;
    Ok(ops::Ctx {
        endpoint: Endpoint {
            http,
            frontend_url: cfg.frontend_url.clone(),
            token: SecretString::from(token),
            fleet,
            previous: fleets.collect(),
        },
        storage: cfg.storage_location(),
        guess_limit: cfg.guess_limit,
        passkey_origin: cfg.passkeys.origin.clone(),
    })
}

/// Only what a vault-free operation needs: the storage location.
fn storage_location(cli: &Cli) -> anyhow::Result<String> {
    let path = cli.config.clone().ok_or_else(|| {
        UsageError("--config FILE is required (e.g. DIR/client.toml from `bkv dev up`)".into())
    })?;
    Ok(ClientConfig::load(&path)?.storage_location())
}

/// A progress bar sized to the user's latest backup.
async fn restore_progress(storage: &str, user: &str) -> anyhow::Result<(ProgressBar, ops::Report)> {
    let total = bkv_client::BackupStore::open(storage, user)?
        .latest()
        .await?
        .map(|l| l.size)
        .unwrap_or(0);
    Ok(progress(total, "restoring"))
}

/// A progress bar that appears only once an operation has run for a second.
fn progress(total: u64, verb: &'static str) -> (ProgressBar, ops::Report) {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(verb);
    let start = Instant::now();
    let bar = pb.clone();
    let mut shown = false;
    let report: ops::Report = Box::new(move |done| {
        if !shown && start.elapsed() > Duration::from_secs(1) {
            shown = true;
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        bar.set_position(done);
    });
    (pb, report)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
            } => {
                let cli2 = std::sync::Arc::new(cli.clone_for_loadgen());
                let report = loadgen::run(
                    move |user| {
                        let cli = cli2.clone();
                        Box::pin(async move { context(&cli, &user).await })
                    },
                    loadgen::Args {
                        users: *users,
                        concurrency: *concurrency,
                        seconds: *seconds,
                    },
                )
                .await?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(())
            }
        },
        Command::Audit { command } => match command {
            AuditCommand::Fleet {
                evidence,
                auditor,
                operator_key,
                auditor_key,
                witnesses,
                rebuild,
                rebuild_script,
                json,
            } => {
                let a = audit::fleet::FleetAudit {
                    evidence,
                    auditor: auditor.as_deref(),
                    operator_key: operator_key
                        .as_deref()
                        .map(|k| vk("--operator-key", k))
                        .transpose()?,
                    auditor_key: auditor_key
                        .as_deref()
                        .map(|k| vk("--auditor-key", k))
                        .transpose()?,
                    witnesses: witnesses
                        .iter()
                        .map(|w| Ok(vk("--witness", w)?.to_bytes()))
                        .collect::<anyhow::Result<_>>()?,
                    rebuild: rebuild.then_some(rebuild_script.as_path()),
                };
                report(
                    audit::fleet::audit_fleet(&a).await,
                    *json,
                    audit::fleet::print_report,
                    "fleet audit failed",
                )
            }
            AuditCommand::Log {
                auditor,
                namespace,
                operator_key,
                auditor_key,
                json,
            } => {
                let op = vk("--operator-key", operator_key)?;
                let ak = auditor_key
                    .as_deref()
                    .map(|k| vk("--auditor-key", k))
                    .transpose()?;
                report(
                    audit::audit_log(auditor, namespace, &op, ak).await,
                    *json,
                    audit::print_table,
                    "audit failed",
                )
            }
        },
        Command::Backup { command } => backup(&cli, command).await,
        Command::Config {
            command:
                ConfigCommand::Check {
                    file,
                    kind,
                    skip_files,
                },
        } => config_check(file, *kind, *skip_files),
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
            let body = bkv_client::session::read_limited(resp, 256 * 1024).await?;
            let v: serde_json::Value =
                serde_json::from_slice(&body).context("fleet status answer")?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
    }
}

/// An Ed25519 public key given as hex on the command line.
fn vk(name: &str, h: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    let b = bkv_wire::key_from_hex(h).map_err(|e| UsageError(format!("{name}: {e}")))?;
    ed25519_dalek::VerifyingKey::from_bytes(&b)
        .map_err(|_| UsageError(format!("{name}: not an Ed25519 key")).into())
}

/// Prints an audit's result: `{"ok", "report"|"error"}` with `--json`, the
/// table otherwise; a failed audit exits non-zero either way.
fn report<R: serde::Serialize>(
    result: anyhow::Result<R>,
    json: bool,
    table: fn(&R),
    failed: &'static str,
) -> anyhow::Result<()> {
    match (result, json) {
        (Ok(r), true) => {
            let v = serde_json::json!({"ok": true, "report": r});
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        (Ok(r), false) => {
            table(&r);
            Ok(())
        }
        (Err(e), true) => {
            let v = serde_json::json!({"ok": false, "error": format!("{e:#}")});
            println!("{}", serde_json::to_string_pretty(&v)?);
            Err(e)
        }
        (Err(e), false) => Err(e.context(failed)),
    }
}

fn print_recovery_key(id: &str, rk: &bkv_client::protectors::RecoveryKey) {
    println!("added recovery key protector {id}");
    println!("write this recovery key down and keep it safe; it is shown only now:");
    println!();
    println!("    {}", rk.display());
    println!();
    println!("anyone holding it can restore your backups without your password.");
}

async fn backup(cli: &Cli, command: &BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Create {
            user,
            unlock,
            no_compress,
            path,
        } => {
            validate_user(user)?;
            let mut unlocker = read_unlock(unlock)?;
            if !path.exists() {
                return Err(UsageError(format!("{} does not exist", path.display())).into());
            }
            let ctx = context(cli, user).await?;
            let (pb, report) = progress(bkv_client::archive::source_size(path), "encrypting");
            let opts = bkv_client::archive::Options {
                compress: !no_compress,
                ..Default::default()
            };
            let created =
                ops::create(&ctx, user, unlocker.unlock(), path.clone(), opts, report).await;
            pb.finish_and_clear();
            let created = created?;
            if created.registered {
                println!(
                    "set up a new backup key for {user} (guess limit {})",
                    ctx.guess_limit
                );
            }
            println!(
                "backup created: {} ({} bytes encrypted)",
                created.latest.object, created.latest.size
            );
            Ok(())
        }
        BackupCommand::Restore { user, unlock, out } => {
            validate_user(user)?;
            let mut unlocker = read_unlock(unlock)?;
            let latest = if let Unlocker::RecoveryKey(rk) = &unlocker {
                // Storage only: works with the vault and frontend down.
                let storage = storage_location(cli)?;
                let (pb, report) = restore_progress(&storage, user).await?;
                let r =
                    ops::restore_with_recovery_key(&storage, user, rk, out.clone(), report).await;
                pb.finish_and_clear();
                r?
            } else {
                let ctx = context(cli, user).await?;
                let (pb, report) = restore_progress(&ctx.storage, user).await?;
                let r = ops::restore(&ctx, user, unlocker.unlock(), out.clone(), report).await;
                pb.finish_and_clear();
                r?
            };
            let via = match unlocker {
                Unlocker::Password(_) => "the password",
                Unlocker::RecoveryKey(_) => "the recovery key",
                Unlocker::Passkey(_) => "the passkey",
            };
            println!("restored {} to {} with {via}", latest.object, out.display());
            Ok(())
        }
        BackupCommand::ChangePassword {
            user,
            password_stdin,
        } => {
            validate_user(user)?;
            let current = read_password(*password_stdin)?;
            let new = read_password(*password_stdin)
                .context("the new password goes on the second line of standard input")?;
            let ctx = context(cli, user).await?;
            ctx.account(user)?.change_password(&current, &new).await?;
            println!("password changed for {user}; the old password no longer opens the backups");
            Ok(())
        }
        BackupCommand::Protectors { command } => protectors(cli, command).await,
        BackupCommand::RotateKey { user, unlock } => {
            validate_user(user)?;
            let mut unlocker = read_unlock(unlock)?;
            let ctx = context(cli, user).await?;
            let account = ctx.account(user)?;
            let unlocked = account.unlock(unlocker.unlock()).await?;
            let r = account
                .rotate(unlocked, unlocker.password(), &[], false)
                .await?;
            println!(
                "rotated the backup key of {user}: new key {} sealed for {} protector(s){}; \
                 latest backup re-encrypted; {} object(s) under the old key deleted",
                r.key_id,
                r.slots + usize::from(r.password),
                if r.password {
                    " incl. the password"
                } else {
                    ""
                },
                r.deleted_objects
            );
            Ok(())
        }
        BackupCommand::Status { user, json } => {
            validate_user(user)?;
            let ctx = context(cli, user).await?;
            let s = ops::status(&ctx, user).await?;
            if *json {
                let v = serde_json::json!({
                    "user": user,
                    "record": s.record,
                    "latest_backup": s.latest,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("user: {user}");
                println!("vault record: {}", ops::describe_record(&s.record));
                match &s.latest {
                    Some(l) => println!(
                        "latest backup: {} ({} bytes, created at unix time {})",
                        l.object, l.size, l.created_unix
                    ),
                    None => println!("latest backup: none"),
                }
            }
            Ok(())
        }
        BackupCommand::Disable { user, unlock } => {
            validate_user(user)?;
            let mut unlocker = read_unlock(unlock)?;
            let ctx = context(cli, user).await?;
            let account = ctx.account(user)?;
            // Confirms the user holds a protector before anything goes (a
            // password is checked by the vault login itself).
            let unlocked = match unlocker.password() {
                Some(_) => None,
                None => Some(account.unlock(unlocker.unlock()).await?),
            };
            let d = account
                .disable(unlocker.password(), unlocked.as_ref())
                .await?;
            println!(
                "backups disabled for {user}: vault record deleted, {} stored objects deleted",
                d.deleted_objects
            );
            if d.passkeys_left_at_rp {
                println!(
                    "note: passkeys stay registered at the relying party (a recovery key is no proof it accepts); they open nothing now"
                );
            }
            Ok(())
        }
    }
}

async fn protectors(cli: &Cli, command: &ProtectorsCommand) -> anyhow::Result<()> {
    match command {
        ProtectorsCommand::List { user, json } => {
            validate_user(user)?;
            let ctx = context(cli, user).await?;
            let list = ctx.account(user)?.list().await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if list.is_empty() {
                println!("no protectors: backups are not set up for {user}");
            }
            for p in list {
                println!("{:<20} {:<13} {}", p.id, p.kind, p.detail);
            }
            Ok(())
        }
        ProtectorsCommand::Add {
            user,
            passkey,
            new_passkey_store,
            recovery_key,
            password,
            unlock,
        } => {
            validate_user(user)?;
            let kinds = [*passkey, *recovery_key, *password];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(UsageError(
                    "add exactly one of --passkey, --recovery-key, --password".into(),
                )
                .into());
            }
            let mut unlocker = read_unlock(unlock)?;
            let new_password = if *password {
                Some(
                    read_password(true)
                        .context("the new password goes on the last line of standard input")?,
                )
            } else {
                None
            };
            let ctx = context(cli, user).await?;
            let account = ctx.account(user)?;
            let unlocked = account.unlock(unlocker.unlock()).await?;
            if let Some(store) = new_passkey_store.as_deref().filter(|_| *passkey) {
                let mut auth = bkv_soft_passkey::SoftAuthenticator::new(store);
                let id = account.add_passkey(&unlocked, &mut auth).await?;
                println!(
                    "added passkey protector {id} (credential in {})",
                    store.display()
                );
            } else if *recovery_key {
                let (id, rk) = account.add_recovery_key(&unlocked).await?;
                print_recovery_key(&id, &rk);
            } else if let Some(pw) = new_password {
                account.add_password(&unlocked, &pw).await?;
                println!("added the password protector for {user}");
            }
            Ok(())
        }
        ProtectorsCommand::Remove { user, id, unlock } => {
            validate_user(user)?;
            let mut unlocker = read_unlock(unlock)?;
            let ctx = context(cli, user).await?;
            let account = ctx.account(user)?;
            let unlocked = account.unlock(unlocker.unlock()).await?;
            let (slots, password) = if id == "password" {
                (Vec::new(), true)
            } else {
                (vec![id.clone()], false)
            };
            let r = account
                .rotate(unlocked, unlocker.password(), &slots, password)
                .await?;
            println!(
                "removed protector {id}; the backup key was rotated ({} protector(s) remain) \
                 and {} object(s) under the old key were deleted",
                r.slots + usize::from(r.password),
                r.deleted_objects
            );
            if r.passkeys_left_at_rp > 0 {
                println!(
                    "note: the removed passkey stays registered at the relying party (a recovery key is no proof it accepts); it opens nothing made from now on"
                );
            }
            Ok(())
        }
    }
}
