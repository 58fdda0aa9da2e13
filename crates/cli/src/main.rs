//! `bkv`: the user's tool — back up, restore and manage protectors, and check an auditor's
//! log. It links the client library only; the demo and service config checks run `bkv-admin`.

mod admin;
mod audit;
mod cmd;
mod progress;
mod unlock;

use bkv_cli::{ClientConfig, ConfigKind, Global, UsageError};
use bkv_client::ClientError;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "bkv",
    version,
    about = "bkv: end-to-end encrypted backups with an HSM-held, guess-limited key"
)]
struct Cli {
    /// Client configuration (written by `bkv-admin dev up` as DIR/client.toml).
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
    /// show the guess limit at work (runs `bkv-admin demo`).
    Demo,
    /// Verify an auditor's log of validation bundles.
    Audit {
        #[command(subcommand)]
        command: cmd::audit::AuditCommand,
    },
    /// Create, restore and manage your backups.
    Backup {
        #[command(subcommand)]
        command: cmd::backup::BackupCommand,
    },
    /// An independent witness's own tool and key: check and sign a ceremony's evidence,
    /// cosign the auditor's checkpoints.
    Witness {
        #[command(subcommand)]
        command: cmd::witness::WitnessCommand,
    },
    /// Config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file (and read the key and certificate files it names): say which
    /// field is wrong and how to fix it. Exit 0 if it is good. Service configs are checked by
    /// `bkv-admin config check`.
    Check(bkv_cli::CheckArgs),
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

#[allow(unsafe_code)]
fn main() {
    // Everything bkv writes (keys, state, configs, partial restores) is the
    // user's alone; restored trees get their recorded modes explicitly.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    bkv_cli::main_with("bkv", run(cli), exit_code);
}

/// `bkv config check FILE`: a client config here; a service's by `bkv-admin`.
fn config_check(
    file: &std::path::Path,
    kind: Option<ConfigKind>,
    skip_files: bool,
) -> anyhow::Result<()> {
    let kind = match kind {
        Some(k) => k,
        None => ConfigKind::guess(file)?,
    };
    if kind != ConfigKind::Client {
        let kind = match kind {
            ConfigKind::Frontend => "frontend",
            ConfigKind::Node => "node",
            ConfigKind::Auditor => "auditor",
            ConfigKind::FormPlan => "form-plan",
            ConfigKind::Client => "client",
        };
        let mut args: Vec<std::ffi::OsString> = vec![
            "config".into(),
            "check".into(),
            "--kind".into(),
            kind.into(),
        ];
        if skip_files {
            args.push("--skip-files".into());
        }
        args.push(file.as_os_str().to_owned());
        return admin::run(&args);
    }
    let cfg = ClientConfig::load(file)?;
    if !skip_files {
        cfg.http_client(Duration::from_secs(60))?;
    }
    println!("{}: a valid {kind:?} config", file.display());
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = Global {
        config: cli.config.clone(),
        token: cli.token.clone(),
        trust_new_log: cli.trust_new_log,
    };
    match &cli.command {
        Command::Demo => admin::run(&["demo".into()]),
        Command::Audit { command } => cmd::audit::run(command).await,
        Command::Backup { command } => cmd::backup::run(&global, command).await,
        Command::Witness { command } => cmd::witness::run(command).await,
        Command::Config {
            command: ConfigCommand::Check(a),
        } => config_check(&a.file, a.kind, a.skip_files),
    }
}
