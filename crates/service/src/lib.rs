//! What every bkv service binary does the same way: read its TOML config file with `BKV_`
//! environment overrides, read secrets from files (never from the command line), log as text or
//! JSON, serve HTTP(S) with timeouts, connection caps and metrics ([`http`]), and stop gracefully
//! on SIGINT or SIGTERM.
//!
//! It must never hold a service's logic: each service keeps its own typed config and routes.

#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

#[cfg(feature = "http")]
pub mod http;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Largest config file read.
pub const MAX_CONFIG: u64 = 1 << 20;
/// Largest secret file read.
pub const MAX_SECRET: u64 = 64 * 1024;

/// Why a service's configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
    /// The file is over the size limit.
    #[error("{path} is larger than {limit} bytes")]
    TooLarge {
        /// The configuration file.
        path: PathBuf,
        /// The limit, bytes.
        limit: u64,
    },
    /// The file is not TOML.
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The configuration file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A field is missing, unknown or of the wrong type; `field` names it as `section.field`.
    #[error("{origin}: field `{field}`: {message}")]
    Field {
        /// The file or flag the value came from.
        origin: String,
        /// `section.field`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// An environment variable's value is not usable.
    #[error("environment variable {name}: {message}")]
    Env {
        /// The variable.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The values are each well-formed but do not fit together.
    #[error("{0}")]
    Invalid(String),
}

/// Loads a typed config: `T::default()` (every documented default), then the file, then every
/// environment variable `{prefix}__SECTION__FIELD` (for example `BKV_FRONTEND__LIMITS__IDLE_TIMEOUT_SECS=5`;
/// double underscores separate levels, so field names keep their single ones). An environment
/// value is taken as a string where the field is a string, else read as a TOML value (`30`,
/// `true`, `["a", "b"]`). Unknown fields, in the file or the environment, are errors.
pub fn load<T>(path: &Path, prefix: &str) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let text = read_limited(path, MAX_CONFIG)?;
    let text = String::from_utf8(text).map_err(|_| ConfigError::Syntax {
        path: path.to_owned(),
        message: "not UTF-8".into(),
    })?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(&format!("{prefix}__")))
        .collect();
    parse(&text, &path.display().to_string(), prefix, &env)
}

/// [`load`] on a text and an explicit environment (for tests and `bkv config check`).
pub fn parse<T>(
    text: &str,
    origin: &str,
    prefix: &str,
    env: &[(String, String)],
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let file: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: origin.into(),
        message: e.message().to_owned(),
    })?;
    let mut merged = match toml::Value::try_from(T::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => return Err(ConfigError::Invalid("defaults do not serialize".into())),
    };
    merge(&mut merged, file);
    for (name, value) in env {
        let path: Vec<String> = name
            .strip_prefix(&format!("{prefix}__"))
            .unwrap_or_default()
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                name: name.clone(),
                message: "empty section or field name".into(),
            });
        }
        set_path(&mut merged, &path, value).map_err(|message| ConfigError::Env {
            name: name.clone(),
            message,
        })?;
    }
    let origin = if env.is_empty() {
        origin.to_owned()
    } else {
        format!("{origin} (with environment overrides)")
    };
    serde_path_to_error_like(merged, &origin)
}

/// Deserializes and names the field an error is about.
fn serde_path_to_error_like<T: DeserializeOwned>(
    merged: toml::Table,
    origin: &str,
) -> Result<T, ConfigError> {
    // Re-serializing to text lets toml's own deserializer report the key path (`limits.foo`).
    let text = toml::to_string(&merged).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    toml::from_str::<T>(&text).map_err(|e| {
        let span_key = e
            .span()
            .and_then(|s| key_at(&text, s.start))
            .unwrap_or_default();
        ConfigError::Field {
            origin: origin.to_owned(),
            field: span_key,
            message: e.message().to_owned(),
        }
    })
}

/// The dotted key of the line at byte `pos` of a TOML text (table headers and keys).
fn key_at(text: &str, pos: usize) -> Option<String> {
    let mut table = String::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').to_owned();
        }
        if pos < offset + line.len() {
            if t.starts_with('[') {
                return Some(table);
            }
            let key = t.split('=').next()?.trim().trim_matches('"');
            return Some(if table.is_empty() {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            });
        }
        offset += line.len();
    }
    Some(table)
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("no field name")?;
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    let value = match t.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_owned()),
        _ => match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut v) => v.remove("v").unwrap_or(toml::Value::String(raw.to_owned())),
            Err(_) => toml::Value::String(raw.to_owned()),
        },
    };
    t.insert(last.clone(), value);
    Ok(())
}

/// Reads a whole file of at most `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
    if out.len() as u64 > limit {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(out)
}

/// Reads a secret from a file (keys, tokens): at most [`MAX_SECRET`] bytes, surrounding
/// whitespace removed, and refused if group or others may read it.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConfigError::Invalid(format!(
            "{} is readable by group or others; `chmod 600` it",
            path.display()
        )));
    }
    let bytes = Zeroizing::new(read_limited(path, MAX_SECRET)?);
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    Ok(Zeroizing::new(bytes[start..end].to_vec()))
}

/// A 32-byte key from a secret file: 64 hex digits, or exactly 32 raw bytes.
pub fn read_key32(path: &Path) -> Result<Zeroizing<[u8; 32]>, ConfigError> {
    let raw = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    });
    let raw = Zeroizing::new(raw?);
    let bytes = if raw.len() == 32 {
        read_secret(path)?; // the permission check
        raw
    } else {
        let text = read_secret(path)?;
        let mut out = Zeroizing::new(vec![0u8; 32]);
        decode_hex(&text, &mut out).map_err(|_| {
            ConfigError::Invalid(format!(
                "{} must hold a 32-byte key as 64 hex digits",
                path.display()
            ))
        })?;
        out
    };
    let mut k = Zeroizing::new([0u8; 32]);
    k.copy_from_slice(&bytes[..32]);
    Ok(k)
}

fn decode_hex(text: &[u8], out: &mut [u8]) -> Result<(), ()> {
    if text.len() != out.len() * 2 {
        return Err(());
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(()),
    };
    for (o, pair) in out.iter_mut().zip(text.chunks(2)) {
        *o = (val(pair[0])? << 4) | val(pair[1])?;
    }
    Ok(())
}

/// TLS for a service's listener: a certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// The leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1), readable by the service only.
    pub key_file: PathBuf,
}

#[cfg(feature = "http")]
impl TlsConfig {
    /// Reads the files (relative to `base`) into a rustls server config: TLS 1.2 and 1.3,
    /// HTTP/1.1 over ALPN.
    pub fn server_config(
        &self,
        base: &Path,
    ) -> Result<std::sync::Arc<rustls::ServerConfig>, ConfigError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let cert_path = base.join(&self.cert_file);
        let key_path = base.join(&self.key_file);
        let field = |f: &str, m: String| ConfigError::Field {
            origin: "tls".into(),
            field: format!("tls.{f}"),
            message: m,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| field("cert_file", format!("{}: {e}", cert_path.display())))?;
        if certs.is_empty() {
            return Err(field(
                "cert_file",
                format!("{} holds no certificate", cert_path.display()),
            ));
        }
        let pem = read_secret(&key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| field("key_file", format!("{}: {e}", key_path.display())))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| field("key_file", format!("does not match the certificate: {e}")))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(std::sync::Arc::new(cfg))
    }
}

/// How a service logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A service's `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json` (one object per line).
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `bkv_frontend=debug,warn`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Starts logging to stderr.
#[cfg(feature = "http")]
pub fn init_logging(cfg: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(feature = "http")]
/// Resolves on the first SIGINT or SIGTERM: the moment to stop accepting, finish what is in
/// flight, and exit.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A free TCP port on 127.0.0.1 below the kernel's ephemeral range, for a process that binds it
/// later (a dev deployment's or a test's fixed addresses). Unlike a port from `bind(:0)`, no
/// outgoing connection can be given it between this check and that bind.
///
/// A probe releases the port at once, so what keeps two callers from being handed the same port
/// before either binds it is the order ports are handed out in: every process of this user on
/// the machine walks one sequence, kept in a cursor file under a lock (see [`port_cursor`]). With
/// a random start per call, two nodes of one deployment got the same port about once in 300
/// deployments; with one sequence per process, the parallel test processes of one CI run (four
/// at a time, each deployment taking ~10 ports) collided about once in a few runs.
pub fn free_loopback_port() -> std::io::Result<u16> {
    const LOW: u32 = 10_000;
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768);
    if ephemeral_low > LOW + 1_000 {
        let span = ephemeral_low - LOW;
        let probe = |k: u32| {
            let port = u16::try_from(LOW + k % span).unwrap_or(0);
            std::net::TcpListener::bind(("127.0.0.1", port))
                .is_ok()
                .then_some(port)
        };
        // The sequence wraps within the span; a whole lap comes back to ports handed out long
        // ago, by then bound by their owner (so the probe skips them) or released.
        let tries = span.min(4_096);
        let found = match port_cursor() {
            Some(mut cursor) => cursor.take(span, tries, probe),
            None => process_cursor(span, tries, probe),
        };
        if let Some(port) = found {
            return Ok(port);
        }
    }
    // A kernel without a usable low range: the ephemeral port the kernel picks.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A random offset into `0..span`, where a fresh sequence starts.
fn random_offset(span: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::process::id().wrapping_mul(7_919).wrapping_add(nanos) % span.max(1)
}

/// This process's own sequence: the fallback when the shared cursor cannot be used.
fn process_cursor(span: u32, tries: u32, probe: impl Fn(u32) -> Option<u16>) -> Option<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const UNSET: u32 = u32::MAX;
    static NEXT: AtomicU32 = AtomicU32::new(UNSET);
    let _ = NEXT.compare_exchange(
        UNSET,
        random_offset(span),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    (0..tries).find_map(|_| probe(NEXT.fetch_add(1, Ordering::Relaxed) % span))
}

/// The machine-wide port sequence of this user: a locked file holding the next offset.
struct PortCursor {
    file: std::fs::File,
}

/// Opens and locks the cursor file (`bkv-ports-<uid>/cursor` in the temp directory; the
/// directory is created private and must be this user's, not a link, so no one else can point
/// the writes elsewhere). `None` when any of that fails.
fn port_cursor() -> Option<PortCursor> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let dir = std::env::temp_dir().join(format!("bkv-ports-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("cursor"))
        .ok()?;
    // Held until `file` drops: one caller at a time reads, probes and advances the cursor.
    file.lock().ok()?;
    Some(PortCursor { file })
}

impl PortCursor {
    /// Probes from the stored offset on and stores the offset after the port handed out.
    fn take(&mut self, span: u32, tries: u32, probe: impl Fn(u32) -> Option<u16>) -> Option<u16> {
        use std::io::{Read, Seek, Write};
        let mut text = String::new();
        let stored = (&self.file)
            .take(32)
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| text.trim().parse::<u32>().ok())
            .filter(|k| *k < span);
        let start = stored.unwrap_or_else(|| random_offset(span));
        let (k, port) = (start..start + tries).find_map(|k| probe(k).map(|p| (k, p)))?;
        let next = (k + 1) % span;
        // A failed write only loses the shared order (the next caller starts at random).
        let _ = self.file.seek(std::io::SeekFrom::Start(0));
        let _ = self.file.set_len(0);
        let _ = self.file.write_all(next.to_string().as_bytes());
        Some(port)
    }
}

#[cfg(test)]
mod tests;
