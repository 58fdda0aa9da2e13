//! `client.toml`: everything a client needs to reach and trust a deployment.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A `client.toml` (docs/operations.md "Client configuration").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientConfig {
    /// Config format version (1).
    pub version: u32,
    /// Base URL of the frontend.
    pub frontend_url: String,
    /// Local directory holding encrypted backups (relative to this file). One of `storage_dir`
    /// and `storage_url` is required; `storage_url` wins when both are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_dir: Option<PathBuf>,
    /// Object storage for the encrypted backups instead: `s3://bucket/prefix` (credentials,
    /// region and endpoint from the standard AWS environment variables) or `file:///dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_url: Option<String>,
    /// Guess limit for new registrations.
    #[serde(default = "default_guess_limit")]
    pub guess_limit: u32,
    /// How the fleet's key is trusted (`[fleet]`).
    pub fleet: FleetConfig,
    /// How the client gets its token (`[auth]`).
    #[serde(default)]
    pub auth: AuthConfig,
    /// The passkey protector's relying party (`[passkeys]`).
    #[serde(default)]
    pub passkeys: PasskeysConfig,
    /// Trust only this CA (a PEM file) for the frontend's HTTPS certificate; without it, the
    /// system's roots and Mozilla's. Relative paths are relative to this config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// The `[passkeys]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasskeysConfig {
    /// WebAuthn origin the app's passkeys are bound to (must match the
    /// frontend's relying-party origin).
    pub origin: String,
}

impl Default for PasskeysConfig {
    fn default() -> Self {
        PasskeysConfig {
            origin: DEV_PASSKEY_ORIGIN.into(),
        }
    }
}

/// Relying-party id and origin of development deployments.
pub const DEV_PASSKEY_RP_ID: &str = "localhost";
/// The origin of development deployments' passkeys.
pub const DEV_PASSKEY_ORIGIN: &str = "https://localhost";

fn default_guess_limit() -> u32 {
    bkv_wire::vault::DEFAULT_GUESS_LIMIT
}

/// The `[fleet]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetConfig {
    /// How fleet keys are validated: `pinned` (the Noise key in this file, the
    /// hardcoded mode) or `ota` (a bundle from the frontend, verified against the
    /// auditor and operator keys in `[fleet.ota]`).
    pub mode: String,
    /// `pinned` mode: the fleet's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_id: Option<String>,
    /// `pinned` mode: the fleet's Noise static public key (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_public_key: Option<String>,
    /// `ota` mode: the pinned trust anchors (`[fleet.ota]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ota: Option<OtaConfig>,
}

/// The `[fleet.ota]` section: what a bundle is checked against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtaConfig {
    /// The auditor namespace the fleet's bundles are logged in.
    pub namespace: String,
    /// Checkpoint origin of the namespace's log (`<auditor name>/<namespace>`).
    pub origin: String,
    /// The auditor's name in signed notes.
    pub auditor_name: String,
    /// Auditor's Ed25519 public key (hex), pinned.
    pub auditor_key: String,
    /// Operator's Ed25519 public key (hex), pinned.
    pub operator_key: String,
    /// Where the newest checkpoint and accepted epoch are persisted
    /// (relative paths are relative to this config file).
    pub state_file: PathBuf,
    /// When this client first saved a checkpoint (unix seconds): from then
    /// on a missing state file is refused instead of trusted afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_trusted_since: Option<u64>,
    /// Every `--trust-new-log`: when the client trusted the served log
    /// afresh after its checkpoint went missing (unix seconds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_log_trusted: Vec<u64>,
}

/// Records in the config at `path` that the client now holds a saved
/// checkpoint (first contact), or that it re-trusted a new log.
pub fn record_log_trust(path: &Path, saved_before: bool, retrusted: bool) -> anyhow::Result<()> {
    if saved_before && !retrusted {
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    // Edit the file as written (relative paths stay relative).
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut cfg: ClientConfig =
        toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let Some(ota) = cfg.fleet.ota.as_mut() else {
        return Ok(());
    };
    if ota.log_trusted_since.is_none() {
        ota.log_trusted_since = Some(now);
    }
    if retrusted {
        ota.new_log_trusted.push(now);
        eprintln!(
            "warning: trusting the auditor log served now as a new start (--trust-new-log); recorded in {}",
            path.display()
        );
    }
    cfg.save(path)
}

/// The `[auth]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuthConfig {
    /// Development only: endpoint that issues a token for any user. In
    /// production the app's own auth service issues tokens (pass `--token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_token_url: Option<String>,
}

/// Largest config file read.
const MAX_CONFIG: u64 = 64 * 1024;

/// `https://`, or `http://` to a loopback address only: a bearer token must not cross a
/// network in the clear.
fn check_frontend_url(url: &str) -> anyhow::Result<()> {
    let u = reqwest::Url::parse(url).with_context(|| format!("frontend_url {url:?}"))?;
    match u.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = u.host_str().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                bail!("frontend_url {url:?}: plain http is allowed to loopback addresses only; use https://")
            }
        }
        s => bail!("frontend_url {url:?}: scheme {s:?} is not http(s)"),
    }
}

impl ClientConfig {
    /// Reads and checks the config at `path` (relative paths in it become relative to it).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("read client config {}", path.display()))?;
        if meta.len() > MAX_CONFIG {
            bail!("client config {} is too large", path.display());
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read client config {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses and checks a config's text; `path` is where it was read from
    /// (relative paths in it are relative to that file).
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let cfg: ClientConfig = toml::from_str(text)
            .with_context(|| format!("parse client config {}", path.display()))?;
        if cfg.version != 1 {
            bail!("client config version {} is not supported", cfg.version);
        }
        check_frontend_url(&cfg.frontend_url)?;
        let mut cfg = cfg;
        match (&mut cfg.storage_dir, &cfg.storage_url) {
            (None, None) => bail!(
                "client config {} names no storage: set storage_dir or storage_url",
                path.display()
            ),
            (Some(dir), _) if dir.is_relative() => {
                *dir = path.parent().unwrap_or(Path::new(".")).join(&*dir);
            }
            _ => {}
        }
        if let Some(ca) = &mut cfg.ca_file {
            if ca.is_relative() {
                *ca = path.parent().unwrap_or(Path::new(".")).join(&*ca);
            }
        }
        match cfg.fleet.mode.as_str() {
            "pinned" => {
                cfg.pinned_key()?;
                Ok(cfg)
            }
            "ota" => {
                let mut c = cfg;
                c.anchors()?;
                if let Some(ota) = &mut c.fleet.ota {
                    if ota.state_file.is_relative() {
                        let base = path.parent().unwrap_or(Path::new("."));
                        ota.state_file = base.join(&ota.state_file);
                    }
                }
                Ok(c)
            }
            m => bail!("fleet mode {m:?} is not supported (use \"pinned\" or \"ota\")"),
        }
    }

    /// Where backups are stored: `storage_url`, else `storage_dir`.
    pub fn storage_location(&self) -> String {
        match (&self.storage_url, &self.storage_dir) {
            (Some(url), _) => url.clone(),
            (None, Some(dir)) => dir.display().to_string(),
            // `parse` refuses a config without either.
            (None, None) => String::new(),
        }
    }

    /// The HTTP client for the frontend: HTTPS verified against `ca_file` when set (else the
    /// system's and Mozilla's roots), with the given whole-request timeout.
    pub fn http_client(&self, timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            // Below the frontend's keep-alive timeout, so a parked connection is
            // rarely one the frontend is closing (a resend covers the rest).
            .pool_idle_timeout(std::time::Duration::from_secs(10))
            .https_only(!self.frontend_url.starts_with("http://"));
        if let Some(ca) = &self.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("ca_file {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("ca_file {}: not PEM certificates", ca.display()))?;
            if certs.is_empty() {
                bail!("ca_file {} holds no certificate", ca.display());
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        b.build().context("http client")
    }

    /// `pinned` mode: the fleet's Noise key.
    pub fn pinned_key(&self) -> anyhow::Result<[u8; 32]> {
        let hex = self
            .fleet
            .noise_public_key
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("pinned mode needs fleet.noise_public_key"))?;
        bkv_wire::key_from_hex(hex).map_err(|e| anyhow::anyhow!("fleet.noise_public_key: {e}"))
    }

    /// `ota` mode: the trust anchors bundles are verified against.
    pub fn anchors(&self) -> anyhow::Result<bkv_transparency::bundle::TrustAnchors> {
        let ota = self
            .fleet
            .ota
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("ota mode needs a [fleet.ota] section"))?;
        let key = |name: &str, hex: &str| -> anyhow::Result<ed25519_dalek::VerifyingKey> {
            let b = bkv_wire::key_from_hex(hex)
                .map_err(|e| anyhow::anyhow!("fleet.ota.{name}: {e}"))?;
            ed25519_dalek::VerifyingKey::from_bytes(&b)
                .map_err(|_| anyhow::anyhow!("fleet.ota.{name} is not an Ed25519 key"))
        };
        Ok(bkv_transparency::bundle::TrustAnchors {
            namespace: ota.namespace.clone(),
            origin: ota.origin.clone(),
            auditor_name: ota.auditor_name.clone(),
            auditor_key: key("auditor_key", &ota.auditor_key)?,
            operator_key: key("operator_key", &ota.operator_key)?,
        })
    }

    /// Writes the config to `path` (a private file).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string_pretty(self)?;
        let body = format!(
            "# bkv client configuration (written by `bkv-admin dev up`).\n\
             # pinned mode: fleet.noise_public_key is pinned. ota mode: the auditor and operator keys are\n\
             # pinned and the fleet key comes from a bundle both signed and the auditor logged.\n{text}"
        );
        // Whole or not at all: other bkv processes may be reading it.
        bkv_client::write_private_file(path, body.as_bytes())
            .with_context(|| format!("write {}", path.display()))
    }
}

/// The four kinds of config file `config check` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigKind {
    /// `bkv-frontend --config`.
    Frontend,
    /// `bkv --config` (`client.toml`).
    Client,
    /// `bkv-hsm --config`.
    Node,
    /// `bkv-auditor --config`.
    Auditor,
    /// `bkv-admin fleet form --plan`.
    FormPlan,
}

impl ConfigKind {
    /// Tells the kind of a config file from its top-level keys.
    pub fn guess(file: &Path) -> anyhow::Result<ConfigKind> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{} is not TOML", file.display()))?;
        let has = |keys: &[&str]| keys.iter().any(|k| table.contains_key(*k));
        Ok(if has(&["frontend_url"]) {
            ConfigKind::Client
        } else if has(&["witnesses", "out_dir"]) {
            ConfigKind::FormPlan
        } else if has(&["platform", "fleet", "node_id"]) {
            ConfigKind::Node
        } else if has(&["namespaces", "name"]) {
            ConfigKind::Auditor
        } else if has(&["listen", "tokens", "fleets"]) {
            ConfigKind::Frontend
        } else {
            return Err(crate::UsageError(format!(
                "cannot tell what kind of config {} is; pass --kind",
                file.display()
            ))
            .into());
        })
    }
}

/// `config check`'s arguments (the same in `bkv` and `bkv-admin`).
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The file to check.
    pub file: PathBuf,
    /// Which kind it is; guessed from its sections when not given.
    #[arg(long, value_enum)]
    pub kind: Option<ConfigKind>,
    /// Check the fields only, without reading the key, certificate and JWKS files they
    /// name (a sample, on a machine that does not hold the deployment's keys).
    #[arg(long)]
    pub skip_files: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(storage: &str) -> String {
        format!(
            "version = 1\nfrontend_url = \"http://127.0.0.1:8080\"\n{storage}\n\n[fleet]\n\
             mode = \"pinned\"\nfleet_id = \"f\"\nnoise_public_key = \"{}\"\n",
            "11".repeat(32)
        )
    }

    /// What docs/operations.md says: a directory (relative to the file) or a URL, one of them
    /// required, the URL winning when both are set.
    #[test]
    fn storage_is_a_directory_beside_the_file_or_a_url_and_one_is_required() {
        let at = Path::new("/etc/bkv/client.toml");
        let c = ClientConfig::parse(&config("storage_dir = \"backups\""), at).unwrap();
        assert_eq!(c.storage_location(), "/etc/bkv/backups");
        let c = ClientConfig::parse(&config("storage_url = \"s3://b/p\""), at).unwrap();
        assert_eq!(c.storage_location(), "s3://b/p");
        let both = "storage_dir = \"d\"\nstorage_url = \"s3://b/p\"";
        let c = ClientConfig::parse(&config(both), at).unwrap();
        assert_eq!(c.storage_location(), "s3://b/p");
        let e = ClientConfig::parse(&config(""), at).unwrap_err();
        assert!(e.to_string().contains("storage_dir or storage_url"), "{e}");
    }
}
