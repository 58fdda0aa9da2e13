// One file on purpose: the frontend's whole config schema — every field's doc, default and check
// together, mirrored field by field in docs/operations.md.
//! The frontend's config file (`bkv-frontend --config FILE`), documented field by field in
//! `docs/operations.md`. Every field has a default and can be overridden by an environment
//! variable `BKV_FRONTEND__SECTION__FIELD`; keys come from files, never from the command line.

use crate::{token, BundleSource, FleetRoute, FrontendConfig, Limits, Routes};
use bkv_service::{read_key32, ConfigError, LogConfig, TlsConfig};
use ed25519_dalek::{SigningKey, VerifyingKey};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Prefix of the environment overrides.
pub const ENV_PREFIX: &str = "BKV_FRONTEND";

/// `bkv-frontend`'s configuration file (docs/operations.md "The frontend").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrontendFile {
    /// Where it listens (`[listen]`).
    pub listen: ListenConfig,
    /// Serve HTTPS with this certificate and key (PEM files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// How user tokens are verified (`[tokens]`).
    pub tokens: TokenConfig,
    /// The fleets it routes to (`[fleets]`).
    pub fleets: FleetsConfig,
    /// Serve the validation bundle from this auditor log (`GET /v1/bundle`, "over the air").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleConfig>,
    /// The WebAuthn relying party for passkey protectors (`/v1/passkeys`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passkeys: Option<PasskeysConfig>,
    /// Timeouts, connection limits and rates (`[limits]`).
    pub limits: LimitsConfig,
    /// How it logs (`[log]`).
    pub log: LogConfig,
    /// Its metrics endpoint (`[metrics]`).
    pub metrics: MetricsConfig,
}

/// The `[metrics]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` (Prometheus text: requests and latency by route and status, open
    /// connections; no user id and no secret in any label). Keep it off the public internet at
    /// the proxy, or turn it off.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}

/// The `[listen]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Address of the HTTP listener (port 0: any free port, printed when listening).
    pub addr: SocketAddr,
    /// Serve plain HTTP (no `[tls]`) on an address other than loopback, for a deployment whose
    /// TLS ends at a proxy on the same host. Without it, such an address needs `[tls]`: bearer
    /// tokens and passkey ceremonies must not cross a network in the clear.
    pub plain_http_beyond_loopback: bool,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            plain_http_beyond_loopback: false,
        }
    }
}

/// The `[tokens]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// The `aud` every user token must carry (a token's `aud` may be a string or an array).
    pub audience: String,
    /// The `iss` every user token must carry (the identity provider), if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The identity provider's keys as a JWKS file (Ed25519, P-256, P-384 or RSA public keys,
    /// chosen by a token's `kid`), re-read when it changes: keys rotate without a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Or a single Ed25519 public key: 64 hex digits or 32 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Tokens expiring later than now + this are refused.
    pub max_lifetime_secs: u64,
    /// Development only: `POST /v1/dev/token` mints a token for any user, signed with
    /// `dev_signing_key_file` (which then is the only key that verifies tokens). Logged as a
    /// warning at start.
    pub dev_mode: bool,
    /// Development only (`dev_mode`): the 32-byte Ed25519 seed (mode 0600) the dev token
    /// endpoint signs with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_signing_key_file: Option<PathBuf>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        let p = token::Policy::new(crate::DEFAULT_AUDIENCE);
        TokenConfig {
            audience: p.audience,
            issuer: None,
            jwks_file: None,
            public_key_file: None,
            leeway_secs: p.leeway_secs,
            max_lifetime_secs: p.max_lifetime_secs,
            dev_mode: false,
            dev_signing_key_file: None,
        }
    }
}

/// Reads a JWKS file (at most [`token::MAX_JWKS`] bytes).
pub fn read_jwks(path: &Path) -> Result<token::KeySet, ConfigError> {
    let bytes = bkv_service::read_limited(path, token::MAX_JWKS as u64)?;
    token::KeySet::from_jwks(&bytes)
        .map_err(|e| invalid("tokens.jwks_file", format!("{}: {e}", path.display())))
}

/// The `[fleets]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetsConfig {
    /// Fleets and their nodes' relay addresses, preferred fleet first.
    pub routes: Vec<FleetRoute>,
    /// A JSON file with more routes (`[{"fleet_id": …, "nodes": ["host:port", …]}]`), re-read
    /// while serving, so a new fleet or node is used without a restart. Routes are only ever
    /// added: a session keeps its node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes_file: Option<PathBuf>,
}

/// The `[bundle]` section: the auditor log the validation bundle is served from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// The auditor's base URL.
    pub auditor_url: String,
    /// The namespace the fleet's bundles are logged in.
    pub namespace: String,
    /// Trust only this CA (PEM) for the auditor's HTTPS certificate (default: the system's
    /// roots and Mozilla's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// The `[passkeys]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeysConfig {
    /// The RP id (the app's domain).
    pub rp_id: String,
    /// The origin WebAuthn requests come from (`https://…`).
    pub origin: String,
    /// Further origins accepted (the app's web page, when it is served elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_origins: Vec<String>,
    /// The redb file of registered passkeys (created `0600`).
    pub store: PathBuf,
    /// Passkey ceremonies in flight, all users together.
    #[serde(default = "default_max_ceremonies")]
    pub max_ceremonies: usize,
}

fn default_max_ceremonies() -> usize {
    crate::passkeys::DEFAULT_MAX_CEREMONIES
}

/// Requests per second, and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: u32,
    /// Requests at once beyond the rate.
    pub burst: u32,
}

impl From<(u32, u32)> for Rate {
    fn from((per_second, burst): (u32, u32)) -> Self {
        Rate { per_second, burst }
    }
}

/// The `[limits]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Time to send a request's headers; also how long a kept-alive connection may idle.
    pub idle_timeout_secs: u64,
    /// Time for a whole request.
    pub request_timeout_secs: u64,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections served at once from one client address.
    pub max_connections_per_address: usize,
    /// Requests from one client address.
    pub address_rate: Rate,
    /// Sessions opened from one client address.
    pub address_open_rate: Rate,
    /// Sessions opened by one user.
    pub user_open_rate: Rate,
    /// Session messages of one user.
    pub user_message_rate: Rate,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            idle_timeout_secs: l.idle_timeout.as_secs(),
            request_timeout_secs: l.request_timeout.as_secs(),
            max_connections: l.max_connections,
            max_connections_per_address: l.max_connections_per_address,
            address_rate: l.address_rate.into(),
            address_open_rate: l.address_open_rate.into(),
            user_open_rate: l.user_open_rate.into(),
            user_message_rate: l.user_message_rate.into(),
        }
    }
}

fn invalid(field: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Field {
        origin: "frontend config".into(),
        field: field.into(),
        message: message.to_string(),
    }
}

impl LimitsConfig {
    fn to_limits(&self) -> Result<Limits, ConfigError> {
        let positive = |field: &str, v: u64| {
            if v == 0 {
                Err(invalid(field, "must be at least 1"))
            } else {
                Ok(v)
            }
        };
        let rate = |field: &str, r: Rate| {
            positive(&format!("{field}.per_second"), r.per_second.into())?;
            positive(&format!("{field}.burst"), r.burst.into())?;
            Ok::<_, ConfigError>((r.per_second, r.burst))
        };
        Ok(Limits {
            idle_timeout: Duration::from_secs(positive(
                "limits.idle_timeout_secs",
                self.idle_timeout_secs,
            )?),
            request_timeout: Duration::from_secs(positive(
                "limits.request_timeout_secs",
                self.request_timeout_secs,
            )?),
            max_connections: positive("limits.max_connections", self.max_connections as u64)?
                as usize,
            max_connections_per_address: positive(
                "limits.max_connections_per_address",
                self.max_connections_per_address as u64,
            )? as usize,
            address_rate: rate("limits.address_rate", self.address_rate)?,
            address_open_rate: rate("limits.address_open_rate", self.address_open_rate)?,
            user_open_rate: rate("limits.user_open_rate", self.user_open_rate)?,
            user_message_rate: rate("limits.user_message_rate", self.user_message_rate)?,
        })
    }
}

/// A checked config, with its keys read.
pub struct Loaded {
    /// The address to listen on.
    pub addr: SocketAddr,
    /// The TLS server settings, when it serves HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What to serve.
    pub config: FrontendConfig,
    /// The routes file to re-read while serving.
    pub routes_file: Option<PathBuf>,
    /// The JWKS file to watch for key rotations.
    pub jwks_file: Option<PathBuf>,
    /// How to log.
    pub log: LogConfig,
    /// Whether `GET /metrics` is served.
    pub metrics_enabled: bool,
}

impl FrontendFile {
    /// Reads `path` with the environment's overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        bkv_service::load(path, ENV_PREFIX)
    }

    /// Checks every field and reads the key files (relative paths are relative to `base`, the
    /// config file's directory). Opens nothing else: the passkey store is opened by [`Self::open`].
    pub fn check(&self, base: &Path) -> Result<(), ConfigError> {
        self.resolve(base).map(|_| ())
    }

    /// Checks every field without reading the files they name (a sample config on a machine
    /// that does not hold its keys, `bkv config check --skip-files`).
    pub fn check_fields(&self) -> Result<(), ConfigError> {
        if !self.listen.addr.ip().is_loopback()
            && self.tls.is_none()
            && !self.listen.plain_http_beyond_loopback
        {
            return Err(invalid(
                "listen.addr",
                format!(
                    "{} is not a loopback address: configure [tls] (cert_file, key_file), or, \
                     behind a TLS-terminating proxy, set listen.plain_http_beyond_loopback = true",
                    self.listen.addr
                ),
            ));
        }
        self.limits.to_limits()?;
        let t = &self.tokens;
        match (t.dev_mode, &t.dev_signing_key_file) {
            (true, None) => {
                return Err(invalid(
                    "tokens.dev_signing_key_file",
                    "dev_mode needs a signing key file (a 32-byte Ed25519 seed, mode 0600)",
                ))
            }
            (false, Some(_)) => {
                return Err(invalid(
                    "tokens.dev_signing_key_file",
                    "set only with tokens.dev_mode = true",
                ))
            }
            _ => {}
        }
        match (&t.jwks_file, &t.public_key_file, t.dev_mode) {
            (None, None, false) => return Err(invalid(
                "tokens.jwks_file",
                "required: the identity provider's keys (a JWKS file), or tokens.public_key_file",
            )),
            (Some(_), None, false) | (None, Some(_), false) | (None, None, true) => {}
            _ => {
                return Err(invalid(
                    "tokens",
                    "give exactly one of jwks_file, public_key_file or dev_mode",
                ))
            }
        }
        if t.audience.is_empty() {
            return Err(invalid("tokens.audience", "must not be empty"));
        }
        if t.max_lifetime_secs == 0 {
            return Err(invalid("tokens.max_lifetime_secs", "must be at least 1"));
        }
        if self.fleets.routes.is_empty() && self.fleets.routes_file.is_none() {
            return Err(invalid(
                "fleets.routes",
                "name at least one fleet's nodes, or fleets.routes_file",
            ));
        }
        if let Some(b) = &self.bundle {
            if !(b.auditor_url.starts_with("http://") || b.auditor_url.starts_with("https://")) {
                return Err(invalid("bundle.auditor_url", "must be an http(s) URL"));
            }
        }
        if let Some(p) = &self.passkeys {
            if !p.origin.starts_with("https://") {
                return Err(invalid("passkeys.origin", "must be an https:// origin"));
            }
            if p.max_ceremonies == 0 {
                return Err(invalid("passkeys.max_ceremonies", "must be at least 1"));
            }
        }
        Ok(())
    }

    /// [`Self::check_fields`], then reads the key, certificate and JWKS files.
    fn resolve(&self, base: &Path) -> Result<Resolved, ConfigError> {
        self.check_fields()?;
        let at = |p: &Path| base.join(p);
        let tls = match &self.tls {
            Some(t) => Some(t.server_config(base)?),
            None => None,
        };
        let t = &self.tokens;
        let dev_key = match &t.dev_signing_key_file {
            Some(p) => Some(SigningKey::from_bytes(&*read_key32(&at(p))?)),
            None => None,
        };
        let keys = match (&t.jwks_file, &t.public_key_file, &dev_key) {
            (Some(p), _, _) => read_jwks(&at(p))?,
            (None, Some(p), _) => {
                let bytes = read_public_key(&at(p))?;
                let key = VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| invalid("tokens.public_key_file", "not an Ed25519 public key"))?;
                token::KeySet::ed25519(&key)
            }
            (None, None, Some(k)) => token::KeySet::ed25519(&k.verifying_key()),
            (None, None, None) => return Err(invalid("tokens", "no key source")),
        };
        let policy = token::Policy {
            audience: t.audience.clone(),
            issuer: t.issuer.clone(),
            leeway_secs: t.leeway_secs,
            max_lifetime_secs: t.max_lifetime_secs,
        };
        let auditor_ca = match self.bundle.as_ref().and_then(|b| b.ca_file.as_ref()) {
            Some(p) => {
                let pem = bkv_service::read_limited(&at(p), 256 * 1024)?;
                reqwest::Certificate::from_pem(&pem).map_err(|e| {
                    invalid("bundle.ca_file", format!("not a PEM certificate: {e}"))
                })?;
                Some(pem)
            }
            None => None,
        };
        Ok(Resolved {
            auditor_ca,
            tls,
            limits: self.limits.to_limits()?,
            dev_key,
            tokens: Arc::new(token::Verifier::new(keys, policy)),
        })
    }

    /// Checks the config and builds the frontend's runtime config (opening the passkey store).
    pub fn open(&self, base: &Path) -> Result<Loaded, ConfigError> {
        let r = self.resolve(base)?;
        let routes_file = self.fleets.routes_file.as_ref().map(|p| base.join(p));
        let routes = Routes::new(&self.fleets.routes);
        if let Some(f) = &routes_file {
            if let Some(more) = read_routes(f)? {
                routes.learn(&more);
            }
        }
        let passkeys = match &self.passkeys {
            None => None,
            Some(p) => {
                let rp = crate::passkeys::RelyingParty::open(&crate::passkeys::PasskeyConfig {
                    rp_id: p.rp_id.clone(),
                    origin: p.origin.clone(),
                    extra_origins: p.extra_origins.clone(),
                    db_path: base.join(&p.store),
                })
                .map_err(|e| invalid("passkeys", e))?;
                rp.set_max_ceremonies(p.max_ceremonies);
                Some(Arc::new(rp))
            }
        };
        Ok(Loaded {
            addr: self.listen.addr,
            tls: r.tls,
            config: FrontendConfig {
                routes,
                tokens: r.tokens,
                dev_token_key: r.dev_key,
                bundle_source: self.bundle.as_ref().map(|b| BundleSource {
                    auditor_url: b.auditor_url.clone(),
                    namespace: b.namespace.clone(),
                    auditor_ca_pem: r.auditor_ca.clone(),
                }),
                passkeys,
                limits: r.limits,
                metrics: None,
            },
            routes_file,
            jwks_file: self.tokens.jwks_file.as_ref().map(|p| base.join(p)),
            log: self.log.clone(),
            metrics_enabled: self.metrics.enabled,
        })
    }
}

struct Resolved {
    auditor_ca: Option<Vec<u8>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    dev_key: Option<SigningKey>,
    tokens: Arc<token::Verifier>,
}

/// A public key file: 64 hex digits (surrounding whitespace allowed) or 32 raw bytes.
fn read_public_key(path: &Path) -> Result<[u8; 32], ConfigError> {
    let bytes = bkv_service::read_limited(path, 4096)?;
    if let Ok(k) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(k);
    }
    let text = String::from_utf8_lossy(&bytes);
    hex::decode(text.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            invalid(
                "tokens.public_key_file",
                format!("{} must hold 64 hex digits", path.display()),
            )
        })
}

/// Largest routes file read.
const MAX_ROUTES_FILE: u64 = 1 << 20;

/// Reads a routes file; `None` if it does not exist yet.
pub fn read_routes(path: &Path) -> Result<Option<Vec<FleetRoute>>, ConfigError> {
    let bytes = match bkv_service::read_limited(path, MAX_ROUTES_FILE) {
        Ok(b) => b,
        Err(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| invalid("fleets.routes_file", format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_key(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    fn parse(text: &str) -> Result<FrontendFile, ConfigError> {
        bkv_service::parse(text, "frontend.toml", ENV_PREFIX, &[])
    }

    #[test]
    fn a_minimal_config_and_its_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let pk = SigningKey::from_bytes(&[3; 32]).verifying_key();
        write_key(
            dir.path(),
            "token.pub",
            hex::encode(pk.as_bytes()).as_bytes(),
        );
        let f = parse(
            r#"
            [tokens]
            public_key_file = "token.pub"
            [[fleets.routes]]
            fleet_id = "f1"
            nodes = ["127.0.0.1:7000", "127.0.0.1:7001"]
            "#,
        )
        .unwrap();
        let loaded = f.open(dir.path()).unwrap();
        assert_eq!(loaded.addr, "127.0.0.1:8080".parse().unwrap());
        let t = token::mint(
            &SigningKey::from_bytes(&[3; 32]),
            &token::Claims {
                sub: "alice".into(),
                aud: "bkv".into(),
                exp: 1_000,
                iat: None,
                nbf: None,
            },
        );
        assert_eq!(loaded.config.tokens.verify(900, &t).unwrap().sub, "alice");
        assert!(loaded.config.dev_token_key.is_none());
        assert_eq!(loaded.config.routes.len(), 2);
        assert_eq!(
            loaded.config.limits.idle_timeout,
            Limits::default().idle_timeout
        );
    }

    #[test]
    fn bad_configs_name_the_field_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("", "tokens.jwks_file"),
            (
                "[tokens]\npublic_key_file = \"k\"\njwks_file = \"j\"",
                "tokens",
            ),
            (
                "[listen]\naddr = \"0.0.0.0:443\"\n[tokens]\ndev_mode = true\ndev_signing_key_file = \"k\"",
                "listen.addr",
            ),
            ("[tokens]\ndev_mode = true", "tokens.dev_signing_key_file"),
            ("[limits]\nidle_timeout_secs = 0", "limits.idle_timeout_secs"),
            ("[limits.user_open_rate]\nper_second = 0\nburst = 1", "limits.user_open_rate.per_second"),
        ];
        write_key(dir.path(), "k", &[9; 32]);
        for (text, field) in cases {
            let e = parse(text).and_then(|f| f.check(dir.path())).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Field { field: f, .. } if f == field),
                "{text:?}: {e}"
            );
        }
        let e = parse("[listen]\nadress = \"x\"").unwrap_err();
        assert!(e.to_string().contains("adress"), "{e}");
    }

    /// The sample in `deploy/` stays a valid config (its files exist only on a real host).
    #[test]
    fn the_deploy_sample_parses() {
        let f = parse(include_str!("../../../deploy/frontend.toml")).unwrap();
        f.check_fields().unwrap();
        assert!(f.tls.is_some());
        assert_eq!(f.fleets.routes[0].nodes.len(), 5);
        assert!(!f.tokens.dev_mode);
        assert!(f.tokens.jwks_file.is_some());
        assert_eq!(f.log.format, bkv_service::LogFormat::Json);
    }

    #[test]
    fn dev_mode_verifies_with_its_own_key_and_routes_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), "dev.key", &[5; 32]);
        std::fs::write(
            dir.path().join("routes.json"),
            r#"[{"fleet_id": "f2", "nodes": ["127.0.0.1:9000"]}]"#,
        )
        .unwrap();
        let f = parse(
            "[tokens]\ndev_mode = true\ndev_signing_key_file = \"dev.key\"\n[fleets]\nroutes_file = \"routes.json\"",
        )
        .unwrap();
        let loaded = f.open(dir.path()).unwrap();
        let t = token::mint(
            &SigningKey::from_bytes(&[5; 32]),
            &token::Claims {
                sub: "alice".into(),
                aud: "bkv".into(),
                exp: 1_000,
                iat: None,
                nbf: None,
            },
        );
        assert!(loaded.config.tokens.verify(900, &t).is_ok());
        assert_eq!(loaded.config.routes.len(), 1);
        std::fs::write(dir.path().join("routes.json"), "{").unwrap();
        assert!(f.open(dir.path()).is_err());
    }
}
