//! The auditor's config file (`bkv-auditor --config FILE`): the same settings as its flags,
//! documented in `docs/operations.md`; every field can be overridden by
//! `BKV_AUDITOR__SECTION__FIELD`.

use bkv_service::{ConfigError, LogConfig, TlsConfig};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Prefix of the environment overrides.
pub const ENV_PREFIX: &str = "BKV_AUDITOR";

/// `bkv-auditor`'s configuration file (docs/operations.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditorFile {
    /// The log database and the auditor's signing key.
    pub data_dir: PathBuf,
    /// The key name in signed notes; also the prefix of each log's origin.
    pub name: String,
    /// Where it listens.
    pub listen: AuditorListen,
    /// Its certificate and key, when it ends TLS itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// The logs this auditor keeps: `[[namespaces]]` with `name` and the operator's Ed25519
    /// public key (hex), the only key that may append to it.
    pub namespaces: Vec<NamespaceConfig>,
    /// How it logs.
    pub log: LogConfig,
}

impl Default for AuditorFile {
    fn default() -> Self {
        AuditorFile {
            data_dir: PathBuf::from("/var/lib/bkv-auditor"),
            name: "bkv-auditor".into(),
            listen: AuditorListen::default(),
            tls: None,
            namespaces: Vec::new(),
            log: LogConfig::default(),
        }
    }
}

/// The `[listen]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditorListen {
    /// The address to listen on.
    pub addr: String,
    /// Plain HTTP on a non-loopback address (TLS ends at a proxy on this host).
    pub plain_http_beyond_loopback: bool,
}

impl Default for AuditorListen {
    fn default() -> Self {
        AuditorListen {
            addr: "127.0.0.1:7400".into(),
            plain_http_beyond_loopback: false,
        }
    }
}

/// One `[[namespaces]]` entry: a log and the only key that may append to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// The namespace's name.
    pub name: String,
    /// The operator's Ed25519 public key, hex.
    pub operator_key: String,
}

impl AuditorFile {
    /// Reads the file at `path`, with `BKV_AUDITOR_*` environment overrides.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        bkv_service::load(path, ENV_PREFIX)
    }

    /// Checks the fields (not the files they name).
    pub fn check_fields(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Field {
            origin: "auditor config".into(),
            field: field.into(),
            message,
        };
        if self.name.is_empty()
            || self.name.contains(char::is_whitespace)
            || self.name.contains('+')
        {
            return Err(invalid("name", "non-empty, without spaces or '+'".into()));
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !crate::valid_namespace(&ns.name) {
                return Err(invalid(
                    &format!("namespaces[{i}].name"),
                    format!("{:?} is not a valid namespace", ns.name),
                ));
            }
            let ok = bkv_wire::key_from_hex(&ns.operator_key)
                .ok()
                .is_some_and(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).is_ok());
            if !ok {
                return Err(invalid(
                    &format!("namespaces[{i}].operator_key"),
                    "must be an Ed25519 public key, 64 hex digits".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_sample_parses_and_bad_fields_are_named() {
        let f: AuditorFile = bkv_service::parse(
            include_str!("../../../deploy/auditor.toml"),
            "auditor.toml",
            ENV_PREFIX,
            &[],
        )
        .unwrap();
        f.check_fields().unwrap();
        assert!(f.tls.is_some());
        let bad = AuditorFile {
            namespaces: vec![NamespaceConfig {
                name: "app".into(),
                operator_key: "00".into(),
            }],
            ..AuditorFile::default()
        };
        let e = bad.check_fields().unwrap_err();
        assert!(e.to_string().contains("namespaces[0].operator_key"), "{e}");
    }
}
