//! From a client config and the global options to a connection context: the user's token (given,
//! or from a development deployment's token endpoint) and the fleet keys to trust.

use crate::config::ClientConfig;
use crate::ops::Ctx;
use anyhow::{anyhow, Context};
use bkv_client::{ClientError, Endpoint, Http, HttpRequest, Method, ReqwestHttp};
use secrecy::SecretString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The options every command that talks to a deployment shares.
// No `Debug`: it holds the token.
#[derive(Clone, Default)]
pub struct Global {
    /// `client.toml`.
    pub config: Option<PathBuf>,
    /// The user's token from the app's auth service.
    pub token: Option<String>,
    /// Trust the auditor log served now although the saved checkpoint of it is missing.
    pub trust_new_log: bool,
}

/// The command line was wrong (exit code 2); the message says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Connects `user` to the deployment `cli.config` describes: a token, the bundle's (or the
/// pinned) fleet keys, the storage location.
pub async fn connect(cli: &Global, user: &str) -> anyhow::Result<Ctx> {
    let (path, cfg) = load_config(cli)?;
    let http: Arc<dyn Http> = Arc::new(ReqwestHttp(cfg.http_client(Duration::from_secs(60))?));
    let token = match &cli.token {
        Some(t) => t.clone(),
        None => dev_token(&cfg, &*http, user).await?,
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
            let fleets = bkv_client::fleets(
                &*http,
                &cfg.frontend_url,
                &anchors,
                &state,
                saved_before && !cli.trust_new_log,
            )
            .await?;
            crate::config::record_log_trust(
                &path,
                saved_before,
                cli.trust_new_log && saved_before,
            )?;
            fleets
        }
        // Without a fleet id the frontend routes to its default fleet.
        _ => vec![bkv_client::FleetTarget {
            fleet_id: cfg.fleet.fleet_id.clone().unwrap_or_default(),
            key: cfg.pinned_key()?,
        }],
    }
    .into_iter();
    let fleet = fleets
        .next()
        .ok_or_else(|| anyhow!("the bundle lists no fleet"))?;
    Ok(Ctx {
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

/// The `--config` file's path and contents.
fn load_config(cli: &Global) -> anyhow::Result<(std::path::PathBuf, ClientConfig)> {
    let path = cli.config.clone().ok_or_else(|| {
        UsageError(
            "--config FILE is required (e.g. DIR/client.toml from `bkv-admin dev up`)".into(),
        )
    })?;
    let cfg = ClientConfig::load(&path)?;
    Ok((path, cfg))
}

/// Asks the config's development token endpoint for a token for `user`.
async fn dev_token(cfg: &ClientConfig, http: &dyn Http, user: &str) -> anyhow::Result<String> {
    let url = cfg.auth.dev_token_url.clone().ok_or_else(|| {
        UsageError("no --token given and the config has no dev token endpoint".into())
    })?;
    let req = HttpRequest::new(Method::Post, url, 16 * 1024).json(
        &bkv_api::frontend::DevTokenRequest {
            user: user.to_owned(),
        },
    )?;
    let resp = http.send(req).await.map_err(|e| match e {
        ClientError::Unavailable(m) => ClientError::Unavailable(format!("token endpoint: {m}")),
        e => e,
    })?;
    if !resp.is_success() {
        return Err(anyhow!("token endpoint refused: {}", resp.status));
    }
    let t: bkv_api::frontend::DevTokenResponse =
        serde_json::from_slice(&resp.body).context("token endpoint answer")?;
    Ok(t.token)
}

/// Connects `user` to the fleet `verified` already reached for another user of the same config
/// (checked by [`connect`]): only a development token is fetched. For the load generator, whose
/// many users would otherwise each fetch and check the bundle and save the log state.
pub async fn connect_reusing(cli: &Global, verified: &Ctx, user: &str) -> anyhow::Result<Ctx> {
    let (_, cfg) = load_config(cli)?;
    // The verified endpoint's HTTP client (and its connection pool) is shared: building a
    // client per user (root certificates, TLS setup) made registering users three times slower.
    let token = match &cli.token {
        Some(t) => t.clone(),
        None => dev_token(&cfg, &*verified.endpoint.http, user).await?,
    };
    Ok(Ctx {
        endpoint: Endpoint {
            token: SecretString::from(token),
            ..verified.endpoint.clone()
        },
        storage: verified.storage.clone(),
        guess_limit: verified.guess_limit,
        passkey_origin: verified.passkey_origin.clone(),
    })
}

/// Only what a vault-free operation needs: the storage location.
pub fn storage_location(cli: &Global) -> anyhow::Result<String> {
    Ok(load_config(cli)?.1.storage_location())
}
