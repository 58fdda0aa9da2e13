//! `bkv audit`: check an auditor's log and a fleet's deployment evidence, as anyone can.

use crate::audit;
use bkv_cli::UsageError;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AuditCommand {
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
        /// Trust only this CA (PEM) for the auditor's HTTPS certificate.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
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
        /// Trust only this CA (PEM) for the auditor's HTTPS certificate.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: &AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Fleet {
            evidence,
            auditor,
            operator_key,
            auditor_key,
            witnesses,
            rebuild,
            rebuild_script,
            ca_file,
            json,
        } => {
            let a = audit::fleet::FleetAudit {
                evidence,
                http: audit::http_client(ca_file.as_deref())?,
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
            ca_file,
            json,
        } => {
            let http = audit::http_client(ca_file.as_deref())?;
            let op = vk("--operator-key", operator_key)?;
            let ak = auditor_key
                .as_deref()
                .map(|k| vk("--auditor-key", k))
                .transpose()?;
            report(
                audit::audit_log(&http, auditor, namespace, &op, ak).await,
                *json,
                audit::print_table,
                "audit failed",
            )
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
