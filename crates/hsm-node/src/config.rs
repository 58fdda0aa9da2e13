//! The node's config file (`bkv-hsm --config FILE`), the same settings as its flags, documented
//! in `docs/operations.md`. Every field can be overridden by `BKV_HSM__SECTION__FIELD`; the PKCS#11
//! PIN comes from a file, never from the command line.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Prefix of the environment overrides.
pub(crate) const ENV_PREFIX: &str = "BKV_HSM";

/// The node's whole config file (`bkv-hsm --config FILE`); an absent field takes its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeFile {
    /// The node's data directory (sealed log, snapshots).
    pub data_dir: PathBuf,
    /// This node's id in its fleet.
    pub node_id: u64,
    /// The addresses the links and the metrics listener bind.
    pub listen: NodeListen,
    /// The platform that holds the node's keys.
    pub platform: NodePlatformFile,
    /// Where the core runs (docs/architecture.md "The core's boundary").
    pub core: NodeCoreFile,
    /// How the node starts the first time; ignored once its data directory holds a fleet.
    pub fleet: FleetStart,
    /// Bounds on link connections and on the session table.
    pub limits: NodeLimits,
}

impl Default for NodeFile {
    fn default() -> Self {
        NodeFile {
            data_dir: PathBuf::from("/var/lib/bkv-hsm"),
            node_id: 0,
            listen: NodeListen::default(),
            platform: NodePlatformFile::default(),
            core: NodeCoreFile::default(),
            fleet: FleetStart::default(),
            limits: NodeLimits::default(),
        }
    }
}

/// Where the core runs: by default a `bkv-core` child started from beside `bkv-hsm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeCoreFile {
    /// The `bkv-core` binary to start as a child (default: beside `bkv-hsm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<PathBuf>,
    /// Connect to a core service an operator runs on this socket instead of starting one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Run the core in the node's own process (one binary, no boundary).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub in_process: bool,
}

/// The `[listen]` section: one address per listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeListen {
    /// The relay link for the frontends: sessions and public information only.
    pub relay: String,
    /// The admin link for the operator's signed commands; reachable from operator hosts only.
    pub admin: String,
    /// The peer link (Raft over Noise IK); reachable from the other nodes only.
    pub peer: String,
    /// The peer address the fleet records for this node when it founds the fleet, if other
    /// nodes reach it through another address (NAT, a proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_advertise: Option<String>,
    /// `/healthz`, `/readyz` and Prometheus `/metrics` over plain HTTP (off when absent); counts
    /// and Raft state only, for the monitoring network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

impl Default for NodeListen {
    fn default() -> Self {
        NodeListen {
            relay: "127.0.0.1:7301".into(),
            admin: "127.0.0.1:7302".into(),
            peer: "127.0.0.1:7303".into(),
            peer_advertise: None,
            metrics: None,
        }
    }
}

/// Which platform holds the node's keys (`platform.kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlatformChoice {
    /// Keys in files (INSECURE: development only).
    #[default]
    Software,
    /// Keys inside a PKCS#11 token.
    Pkcs11,
}

/// The `[platform]` section: where the node's keys live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodePlatformFile {
    /// Software keys (development) or a PKCS#11 token (production).
    pub kind: PlatformChoice,
    /// Software platform: its key directory (default `DATA_DIR/platform`; put it elsewhere so a
    /// rolled-back data directory is detected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// PKCS#11: the module, the node's token label and the file holding its user PIN (0600).
    pub pkcs11_module: PathBuf,
    /// PKCS#11: the label of this node's token (required with `pkcs11`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_label: Option<String>,
    /// PKCS#11: the file holding the token's user PIN (`0600`; required with `pkcs11`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
}

impl Default for NodePlatformFile {
    fn default() -> Self {
        NodePlatformFile {
            kind: PlatformChoice::Software,
            dir: None,
            pkcs11_module: PathBuf::from(bkv_hsm_platform::SOFTHSM_MODULE),
            token_label: None,
            pin_file: None,
        }
    }
}

/// The `[fleet]` section: found a fleet or join one on the first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetStart {
    /// Form a new fleet (its first node's first start), pinning these keys and namespace.
    pub found: bool,
    /// The operator's Ed25519 public key (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_key: Option<String>,
    /// The auditor's note verifier key (`name+id+base64`, as its `GET /v1/key` serves it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auditor_key: Option<String>,
    /// When founding: the auditor log namespace the fleet's membership records are published in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The fleet's guess-limit policy when founding it (the largest limit a record may carry).
    pub max_guess_limit: u32,
    /// When founding: earlier fleets whose records may move here, `FLEET_ID=MOVE_KEY_HEX`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub predecessors: Vec<String>,
    /// Join an existing fleet: a members file (`[{"id","addr","identity"}]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<PathBuf>,
}

impl Default for FleetStart {
    fn default() -> Self {
        FleetStart {
            found: false,
            operator_key: None,
            auditor_key: None,
            namespace: None,
            max_guess_limit: bkv_wire::vault::DEFAULT_GUESS_LIMIT,
            predecessors: Vec::new(),
            join: None,
        }
    }
}

/// The `[limits]` section: idle link connections and the session table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeLimits {
    /// Seconds after which a quiet relay or admin connection is closed.
    pub idle_timeout_secs: u64,
    /// Sessions held at once.
    pub max_sessions: usize,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            idle_timeout_secs: crate::DEFAULT_IDLE_TIMEOUT.as_secs(),
            max_sessions: bkv_hsm_core::DEFAULT_MAX_SESSIONS,
        }
    }
}

fn invalid(field: &str, message: &str) -> bkv_service::ConfigError {
    bkv_service::ConfigError::Field {
        origin: "node config".into(),
        field: field.into(),
        message: message.into(),
    }
}

impl NodeFile {
    /// Reads the file at `path` with the `BKV_HSM__…` environment overrides applied;
    /// [`NodeFile::check_fields`] should follow.
    pub fn load(path: &std::path::Path) -> Result<Self, bkv_service::ConfigError> {
        bkv_service::load(path, ENV_PREFIX)
    }

    /// Checks the fields that depend on each other.
    pub fn check_fields(&self) -> Result<(), bkv_service::ConfigError> {
        let f = &self.fleet;
        if f.found && f.join.is_some() {
            return Err(invalid(
                "fleet.join",
                "a node either founds a fleet or joins one",
            ));
        }
        if f.found && (f.operator_key.is_none() || f.auditor_key.is_none() || f.namespace.is_none())
        {
            return Err(invalid(
                "fleet.found",
                "founding a fleet needs fleet.operator_key, fleet.auditor_key and fleet.namespace",
            ));
        }
        if self.platform.kind == PlatformChoice::Pkcs11
            && (self.platform.token_label.is_none() || self.platform.pin_file.is_none())
        {
            return Err(invalid(
                "platform.token_label",
                "the pkcs11 platform needs platform.token_label and platform.pin_file",
            ));
        }
        let limits = bkv_wire::vault::MIN_GUESS_LIMIT..=bkv_wire::vault::MAX_GUESS_LIMIT;
        if !limits.contains(&f.max_guess_limit) {
            return Err(invalid(
                "fleet.max_guess_limit",
                &format!("must be within {limits:?}"),
            ));
        }
        for p in &f.predecessors {
            if let Err(e) = crate::parse_predecessor(p) {
                return Err(invalid("fleet.predecessors", &e.to_string()));
            }
        }
        if self.limits.idle_timeout_secs == 0 {
            return Err(invalid("limits.idle_timeout_secs", "must be at least 1"));
        }
        if self.limits.max_sessions == 0 {
            return Err(invalid("limits.max_sessions", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeFile, bkv_service::ConfigError> {
        bkv_service::parse(text, "node.toml", ENV_PREFIX, &[])
    }

    #[test]
    fn the_deploy_sample_parses_and_bad_fields_are_named() {
        let f = parse(include_str!("../../../deploy/node.toml")).unwrap();
        f.check_fields().unwrap();
        assert_eq!(f.platform.kind, PlatformChoice::Pkcs11);
        for (text, field) in [
            ("[fleet]\nfound = true", "fleet.found"),
            ("[platform]\nkind = \"pkcs11\"", "platform.token_label"),
            ("[limits]\nmax_sessions = 0", "limits.max_sessions"),
        ] {
            let e = parse(text).unwrap().check_fields().unwrap_err();
            assert!(e.to_string().contains(field), "{text}: {e}");
        }
        let e = parse("[platform]\nkind = \"tpm\"").unwrap_err();
        assert!(e.to_string().contains("platform.kind"), "{e}");
    }
}
