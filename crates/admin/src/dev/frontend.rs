//! The dev frontend's config file and routes, and its process.

use super::*;
use anyhow::Context;
use std::path::{Path, PathBuf};

/// The development frontend's signing key for `POST /v1/dev/token` (in `DIR/frontend`).
pub(crate) const DEV_TOKEN_KEY_FILE: &str = "dev-token-signing.key";

/// Writes the development frontend's config: dev mode (tokens for any user), routes from
/// `routes.json` (kept current by `dev up`), the auditor's bundle, a `localhost` relying party.
/// Test hooks: `BKV_FRONTEND_IDLE_TIMEOUT` (seconds) shortens the header/keep-alive timeout, as
/// tests of idle gaps do; `BKV_FRONTEND_MAX_CEREMONIES` bounds the passkey ceremony table.
pub(crate) fn write_frontend_config(
    path: &Path,
    listen: &str,
    auditor_url: &str,
    web_origin: &str,
) -> anyhow::Result<()> {
    use bkv_frontend::config as fc;
    let mut limits = fc::LimitsConfig::default();
    if let Ok(v) = std::env::var("BKV_FRONTEND_IDLE_TIMEOUT") {
        limits.idle_timeout_secs = v
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .context("BKV_FRONTEND_IDLE_TIMEOUT must be a positive number of seconds")?;
    }
    // A load generator is one address with many users: benchmarks (scripts/bench-fleet.sh)
    // lift the abuse limits, which would otherwise measure the limiter, not the fleet.
    if std::env::var("BKV_FRONTEND_LOAD_TEST").is_ok_and(|v| v == "1") {
        let lifted = fc::Rate {
            per_second: 1_000_000,
            burst: 1_000_000,
        };
        limits.address_rate = lifted;
        limits.address_open_rate = lifted;
        limits.user_open_rate = lifted;
        limits.user_message_rate = lifted;
        limits.max_connections_per_address = limits.max_connections;
    }
    let max_ceremonies = match std::env::var("BKV_FRONTEND_MAX_CEREMONIES") {
        Ok(v) => v
            .parse()
            .context("BKV_FRONTEND_MAX_CEREMONIES must be a number")?,
        Err(_) => bkv_frontend::passkeys::DEFAULT_MAX_CEREMONIES,
    };
    let file = fc::FrontendFile {
        listen: fc::ListenConfig {
            addr: listen.parse().context("frontend listen address")?,
            plain_http_beyond_loopback: false,
        },
        tokens: fc::TokenConfig {
            dev_mode: true,
            dev_signing_key_file: Some(PathBuf::from(DEV_TOKEN_KEY_FILE)),
            ..Default::default()
        },
        fleets: fc::FleetsConfig {
            routes: Vec::new(),
            routes_file: Some(PathBuf::from("routes.json")),
        },
        bundle: Some(fc::BundleConfig {
            auditor_url: auditor_url.to_owned(),
            namespace: DEV_NAMESPACE.into(),
            ca_file: None,
        }),
        passkeys: Some(fc::PasskeysConfig {
            rp_id: bkv_cli::config::DEV_PASSKEY_RP_ID.into(),
            origin: bkv_cli::config::DEV_PASSKEY_ORIGIN.into(),
            extra_origins: vec![web_origin.to_owned()],
            store: PathBuf::from("passkeys.redb"),
            max_ceremonies,
        }),
        limits,
        log: Default::default(),
        tls: None,
        metrics: Default::default(),
    };
    let text = format!(
        "# Written by `bkv-admin dev up`: a development frontend (dev mode mints tokens for anyone).\n\
         # Fields: docs/operations.md.\n{}",
        toml::to_string(&file).context("serialize the frontend config")?
    );
    bkv_hsm_platform::write_private_file(path, text.as_bytes())?;
    Ok(())
}

/// Writes `DIR/frontend/routes.json` (every fleet's relay addresses) when it changed; the
/// frontend re-reads it while serving.
pub(crate) fn write_routes(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("frontend").join("routes.json");
    let json = serde_json::to_vec_pretty(&fleet_routes(dir))?;
    if std::fs::read(&path).ok().as_deref() == Some(json.as_slice()) {
        return Ok(());
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, &json)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

pub struct StartedFrontend {
    pub pid: u32,
    pub url: String,
}

/// Starts `bkv-frontend --config FILE` and waits for its ready line.
pub(crate) fn start_frontend(
    bin: &Path,
    dir: &Path,
    config: &Path,
) -> anyhow::Result<StartedFrontend> {
    if let Some(pid) = read_pid(dir) {
        if pid_alive(pid) {
            stop_pid(pid);
        }
    }
    let args = vec!["--config".to_owned(), config.display().to_string()];
    let (pid, line) = spawn_ready(bin, &args, &[], dir, "frontend.log")?;
    Ok(StartedFrontend {
        pid,
        url: ready_field(&line, "url")?,
    })
}

/// Every fleet's relay addresses, from the node records (the frontend's
/// routes; a fleet formed or a node added later is learned while serving).
pub(crate) fn fleet_routes(dir: &Path) -> Vec<bkv_frontend::FleetRoute> {
    let mut out: Vec<bkv_frontend::FleetRoute> = Vec::new();
    for (_, r) in node_records(dir) {
        let Some(id) = r.fleet_id else { continue };
        match out.iter_mut().find(|f| f.fleet_id == id) {
            Some(f) => f.nodes.push(r.listen),
            None => out.push(bkv_frontend::FleetRoute {
                fleet_id: id,
                nodes: vec![r.listen],
            }),
        }
    }
    out
}
