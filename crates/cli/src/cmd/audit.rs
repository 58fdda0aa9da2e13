//! `bkv audit`: check an auditor's log and a fleet's deployment evidence, as anyone can.

use crate::audit;
use bkv_cli::UsageError;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify a fleet's deployment evidence: transcript, every node and
    /// witness signature, the fleet keys and policy, and that the evidence,
    /// every member's record and a bundle naming it are in the auditor's log
    /// (listing members admitted later); with --rebuild, that a local
    /// reproducible build of the core service bkv-core has the measured hash. Exits non-zero
    /// naming the failed check, and also when a check could not be made for
    /// want of --auditor, a pinned --auditor-key and --operator-key, or a
    /// pinned --witness ("NOT CHECKED").
    Fleet {
        /// The evidence file (`evidence.json`).
        evidence: PathBuf,
        /// Auditor base URL.
        #[arg(long)]
        auditor: Option<String>,
        /// Operator's Ed25519 public key (hex).
        #[arg(long)]
        operator_key: Option<String>,
        /// Pin the auditor's Ed25519 public key (hex, or its note verifier key
        /// `name+id+base64` as a client config's `fleet.ota.auditor_key` holds it).
        #[arg(long)]
        auditor_key: Option<String>,
        /// Require this witness's Ed25519 public key (hex) among the signers.
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// Rebuild the core service bkv-core with the reproducible recipe and compare hashes
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
    /// how the fleet keys changed. Exits non-zero on any failure, and without a
    /// pinned --auditor-key ("NOT CHECKED").
    Log {
        #[command(flatten)]
        log: LogArgs,
    },
    /// Check that a web page (its URL) or a local build of the browser client (a directory, e.g.
    /// a reproducible rebuild from source) is a build the operator logged: every file against
    /// the build's manifest, the manifest in the auditor's log, the log verified whole as
    /// `audit log` verifies it. Exits non-zero otherwise, and without a pinned --auditor-key.
    Web {
        /// The page's URL, or the build directory (scripts/build-web.sh: target/web/dist).
        target: String,
        #[command(flatten)]
        log: LogArgs,
    },
}

/// The auditor's log a check walks, and how it is trusted.
#[derive(clap::Args)]
pub struct LogArgs {
    /// Auditor base URL.
    #[arg(long)]
    auditor: String,
    #[arg(long)]
    namespace: String,
    /// Operator's Ed25519 public key (hex).
    #[arg(long)]
    operator_key: String,
    /// Pin the auditor's Ed25519 public key (hex, or its note verifier key
    /// `name+id+base64`) instead of trusting the one it presents.
    #[arg(long)]
    auditor_key: Option<String>,
    /// Trust only this CA (PEM) for the auditor's (and a page's) HTTPS certificate.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

impl LogArgs {
    /// The HTTP client, the operator key, the pinned auditor key, and what could not be
    /// checked without a pin.
    fn trust(
        &self,
    ) -> anyhow::Result<(
        reqwest::Client,
        ed25519_dalek::VerifyingKey,
        Option<ed25519_dalek::VerifyingKey>,
        Vec<String>,
    )> {
        let http = audit::http_client(self.ca_file.as_deref())?;
        let op = vk("--operator-key", &self.operator_key)?;
        let ak = self.auditor_key.as_deref().map(auditor_vk).transpose()?;
        let unchecked = match ak {
            Some(_) => Vec::new(),
            None => vec![
                "the auditor's key: not pinned (--auditor-key), so the log was checked against the key the auditor presents".to_owned(),
            ],
        };
        Ok((http, op, ak, unchecked))
    }
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
                auditor_key: auditor_key.as_deref().map(auditor_vk).transpose()?,
                witnesses: witnesses
                    .iter()
                    .map(|w| Ok(vk("--witness", w)?.to_bytes()))
                    .collect::<anyhow::Result<_>>()?,
                rebuild: rebuild.then_some(rebuild_script.as_path()),
            };
            let r = audit::fleet::audit_fleet(&a).await;
            let unchecked = r
                .as_ref()
                .map(|r| r.not_checked.clone())
                .unwrap_or_default();
            report(
                r,
                unchecked,
                *json,
                audit::fleet::print_report,
                "fleet audit failed",
            )
        }
        AuditCommand::Web { target, log } => {
            let (http, operator_key, auditor_key, unchecked) = log.trust()?;
            let a = audit::web::WebAudit {
                target,
                http,
                auditor: &log.auditor,
                namespace: &log.namespace,
                operator_key,
                auditor_key,
            };
            report(
                audit::web::audit_web(&a).await,
                unchecked,
                log.json,
                audit::web::print_report,
                "web audit failed",
            )
        }
        AuditCommand::Log { log } => {
            let (http, op, ak, unchecked) = log.trust()?;
            report(
                audit::audit_log(&http, &log.auditor, &log.namespace, &op, ak).await,
                unchecked,
                log.json,
                audit::print_table,
                "audit failed",
            )
        }
    }
}

/// The auditor's key as given: hex, or a note verifier key (`name+id+base64`).
pub(crate) fn auditor_vk(k: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    if k.contains('+') {
        return bkv_transparency::note::parse_verifier_key(k)
            .map(|(_, key)| key)
            .map_err(|e| UsageError(format!("--auditor-key: {e}")).into());
    }
    vk("--auditor-key", k)
}

/// An Ed25519 public key given as hex on the command line.
fn vk(name: &str, h: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    let b = bkv_wire::key_from_hex(h).map_err(|e| UsageError(format!("{name}: {e}")))?;
    ed25519_dalek::VerifyingKey::from_bytes(&b)
        .map_err(|_| UsageError(format!("{name}: not an Ed25519 key")).into())
}

/// Prints an audit's result: `{"ok", "report"|"error", "not_checked"}` with `--json`, the
/// table otherwise; a failed audit exits non-zero either way, and so does one with checks that
/// could not be made (`unchecked`): every audit fails closed.
fn report<R: serde::Serialize>(
    result: anyhow::Result<R>,
    unchecked: Vec<String>,
    json: bool,
    table: fn(&R),
    failed: &'static str,
) -> anyhow::Result<()> {
    let closed = |unchecked: &[String]| {
        anyhow::anyhow!(
            "{failed}: NOT CHECKED: {} (pin the keys and name the auditor to make these checks)",
            unchecked.join("; ")
        )
    };
    match (result, json) {
        (Ok(r), true) => {
            let v = serde_json::json!({"ok": unchecked.is_empty(), "report": r, "not_checked": unchecked});
            println!("{}", serde_json::to_string_pretty(&v)?);
            match unchecked.is_empty() {
                true => Ok(()),
                false => Err(closed(&unchecked)),
            }
        }
        (Ok(r), false) => {
            table(&r);
            for n in &unchecked {
                println!("NOT CHECKED: {n}");
            }
            match unchecked.is_empty() {
                true => Ok(()),
                false => Err(closed(&unchecked)),
            }
        }
        (Err(e), true) => {
            let v = serde_json::json!({"ok": false, "error": format!("{e:#}")});
            println!("{}", serde_json::to_string_pretty(&v)?);
            Err(e)
        }
        (Err(e), false) => Err(e.context(failed)),
    }
}
