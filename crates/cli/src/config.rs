//! `client.toml`: everything a client needs to reach and trust a deployment.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientConfig {
    /// Config format version (1).
    pub version: u32,
    /// Base URL of the frontend.
    pub frontend_url: String,
    /// Local directory holding encrypted backups.
    pub storage_dir: PathBuf,
    /// Guess limit for new registrations.
    #[serde(default = "default_guess_limit")]
    pub guess_limit: u32,
    pub fleet: FleetConfig,
    #[serde(default)]
    pub auth: AuthConfig,
}

fn default_guess_limit() -> u32 {
    bkv_wire::vault::DEFAULT_GUESS_LIMIT
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetConfig {
    /// How fleet keys are validated: `pinned` (keys in this file).
    pub mode: String,
    pub fleet_id: String,
    /// The fleet's Noise static public key (hex), pinned.
    pub noise_public_key: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuthConfig {
    /// Development only: endpoint that issues a token for any user. In
    /// production the app's own auth service issues tokens (pass `--token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_token_url: Option<String>,
}

/// Largest config file read.
const MAX_CONFIG: u64 = 64 * 1024;

impl ClientConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("read client config {}", path.display()))?;
        if meta.len() > MAX_CONFIG {
            bail!("client config {} is too large", path.display());
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read client config {}", path.display()))?;
        let cfg: ClientConfig = toml::from_str(&text)
            .with_context(|| format!("parse client config {}", path.display()))?;
        if cfg.version != 1 {
            bail!("client config version {} is not supported", cfg.version);
        }
        if cfg.fleet.mode != "pinned" {
            bail!(
                "fleet mode {:?} is not supported (use \"pinned\")",
                cfg.fleet.mode
            );
        }
        cfg.fleet_key()?;
        Ok(cfg)
    }

    pub fn fleet_key(&self) -> anyhow::Result<[u8; 32]> {
        bkv_wire::key_from_hex(&self.fleet.noise_public_key)
            .map_err(|e| anyhow::anyhow!("fleet.noise_public_key: {e}"))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string_pretty(self)?;
        let body = format!(
            "# bkv client configuration (written by `bkv dev up`).\n\
             # fleet.noise_public_key is pinned: the client only talks to a vault holding its private key.\n{text}"
        );
        std::fs::write(path, body).with_context(|| format!("write {}", path.display()))
    }
}
