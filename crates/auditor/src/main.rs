//! `bkv-auditor`: the independent auditor's log server.
#![forbid(unsafe_code)]

use anyhow::{anyhow, Context};
use clap::Parser;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "bkv-auditor",
    version,
    about = "bkv independent auditor: append-only log of validation bundles"
)]
struct Args {
    /// Read every setting from this TOML file (`docs/operations.md`;
    /// `BKV_AUDITOR__SECTION__FIELD` overrides a field) instead of the flags below.
    #[arg(long, conflicts_with_all = ["data_dir", "namespaces", "tls_cert"])]
    config: Option<PathBuf>,
    /// Data directory (log database, signing key).
    #[arg(long, required_unless_present = "config")]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// Key name in signed notes; also the prefix of each log's origin.
    #[arg(long, default_value = "bkv-auditor")]
    name: String,
    /// Register NS with its operator's Ed25519 public key (hex): NS=KEY. Repeatable.
    #[arg(long = "namespace", value_name = "NS=KEY")]
    namespaces: Vec<String>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM, mode 0600).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback (TLS ends at a proxy on this host).
    #[arg(long)]
    plain_http_beyond_loopback: bool,
    /// Log as text or json.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormatArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

impl Args {
    /// With --config, the settings of the file (checked); otherwise the flags as given.
    fn resolve(self) -> anyhow::Result<Args> {
        let Some(path) = self.config else {
            return Ok(self);
        };
        let f = bkv_auditor::config::AuditorFile::load(&path)?;
        f.check_fields()?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        Ok(Args {
            config: None,
            data_dir: Some(f.data_dir),
            listen: f.listen.addr,
            name: f.name,
            namespaces: f
                .namespaces
                .iter()
                .map(|n| format!("{}={}", n.name, n.operator_key))
                .collect(),
            tls_cert: f.tls.as_ref().map(|t| base.join(&t.cert_file)),
            tls_key: f.tls.as_ref().map(|t| base.join(&t.key_file)),
            plain_http_beyond_loopback: f.listen.plain_http_beyond_loopback,
            log_format: match f.log.format {
                bkv_service::LogFormat::Text => LogFormatArg::Text,
                bkv_service::LogFormat::Json => LogFormatArg::Json,
            },
        })
    }
}

fn main() {
    let args = match Args::parse().resolve() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bkv-auditor: error: {e:#}");
            std::process::exit(1);
        }
    };
    bkv_service::init_logging(&bkv_service::LogConfig {
        format: match args.log_format {
            LogFormatArg::Text => bkv_service::LogFormat::Text,
            LogFormatArg::Json => bkv_service::LogFormat::Json,
        },
        level: "info".into(),
    });
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
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("bkv-auditor: error: {e:#}");
        std::process::exit(1);
    }
}

/// The auditor's signing key, created only when no file exists (a key that cannot be read is
/// an error, never replaced: a new key would fork the log's identity).
fn load_or_create_key(path: &std::path::Path) -> anyhow::Result<SigningKey> {
    let k = bkv_private_files::load_or_create_key::<32>(path)?;
    Ok(SigningKey::from_bytes(&k))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .ok_or_else(|| anyhow!("--data-dir or --config is required"))?;
    std::fs::create_dir_all(&data_dir)?;
    // The signing key and the log database are the auditor's alone.
    std::fs::set_permissions(
        &data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let key = load_or_create_key(&data_dir.join("auditor-signing.key"))?;
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
        bkv_auditor::Auditor::open(&data_dir.join("log.redb"), key, &args.name, &namespaces)
            .context("open auditor log")?,
    );
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert_file), Some(key_file)) => Some(
            bkv_service::TlsConfig {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            }
            .server_config(std::path::Path::new("."))?,
        ),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && tls.is_none() && !args.plain_http_beyond_loopback {
        return Err(anyhow!(
            "{addr} is not a loopback address: give --tls-cert and --tls-key, or, behind a \
             TLS-terminating proxy, --plain-http-beyond-loopback"
        ));
    }
    let metrics = bkv_service::http::install_metrics()
        .map_err(|e| anyhow!("install the metrics recorder: {e}"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "bkv-auditor ready listen={addr} url={scheme}://{addr} name={} key={}",
        auditor.name(),
        hex::encode(auditor.public_key().as_bytes())
    );
    let options = bkv_service::http::Options {
        service: "auditor",
        tls,
        idle_timeout: std::time::Duration::from_secs(30),
        request_timeout: std::time::Duration::from_secs(60),
        max_connections: 1024,
        max_connections_per_address: 128,
    };
    bkv_service::http::serve(
        listener,
        bkv_auditor::router_with_metrics(auditor, Some(metrics)),
        options,
        bkv_service::shutdown_signal(),
    )
    .await
    .context("serve")?;
    Ok(())
}
