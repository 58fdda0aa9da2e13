//! The operator's admin plane and what a node says about its own platform.
//!
//! These are plain, canonical data types (encoded with [`crate::encode`]);
//! signatures over them are made and checked by `bkv-hsm-core` (admin
//! commands, platform statements) and `bkv-transparency` (log proofs). The
//! admin link carries only [`AdminRequest`]/[`AdminResponse`] frames, framed
//! like the relay link ([`crate::node::write_frame`]), and is a separate
//! listener from the relay link the frontend uses. Formats: `docs/formats.md`.

use serde::{Deserialize, Serialize};

/// Largest admin frame body (a command carries a platform statement, a
/// membership record and a log proof: a few KiB).
pub const MAX_ADMIN_FRAME: usize = 64 * 1024;
/// Version of [`PlatformStatement`].
pub const STATEMENT_VERSION: u8 = 1;
/// Version of [`AdminCommand`].
pub const ADMIN_COMMAND_VERSION: u8 = 1;
/// Domain separation for the platform key's signature over a statement.
pub const STATEMENT_CONTEXT: &[u8] = b"bkv platform statement v1\0";
/// Domain separation for the operator's signature over an admin command.
pub const ADMIN_CONTEXT: &[u8] = b"bkv admin command v1\0";
/// Version of [`FleetStatement`] (2 added the policy; version 1 is still read).
pub const FLEET_STATEMENT_VERSION: u8 = 2;
/// Domain separation for the platform key's signature over a fleet statement.
pub const FLEET_STATEMENT_CONTEXT: &[u8] = b"bkv fleet statement v1\0";
/// Longest token description or address carried in a statement or command.
pub const MAX_TEXT: usize = 256;

/// Which kind of key store a node's platform is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PlatformKind {
    /// Keys in files on the node's disk: development only, protects nothing
    /// against the host.
    Software,
    /// Keys inside a PKCS#11 token (SoftHSM2 in tests, an HSM in production).
    Pkcs11,
    /// In-memory keys for unit tests; never a real node.
    Memory,
}

impl PlatformKind {
    /// Lower-case name of the kind (`software`, `pkcs11`, `memory`), as tools print it.
    pub fn name(self) -> &'static str {
        match self {
            PlatformKind::Software => "software",
            PlatformKind::Pkcs11 => "pkcs11",
            PlatformKind::Memory => "memory",
        }
    }
}

/// What a platform says about itself (kind and, for a token, its
/// manufacturer, model, serial number and label).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformDescription {
    /// Which kind of key store it is.
    pub kind: PlatformKind,
    /// Free text: a token's manufacturer, model, serial number and label, or the directory of
    /// software keys (at most [`MAX_TEXT`] bytes).
    pub token: String,
}

/// A node's statement about itself, signed by its platform signing key:
/// which identity key (X25519, the Noise static key of its peer links) it
/// holds, on which platform, running which `bkv-hsm` binary. Only as strong
/// as the platform that signs it (see SECURITY.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformStatement {
    /// Layout version, [`STATEMENT_VERSION`].
    pub version: u8,
    /// The node's peer-link identity key (X25519 public key).
    pub identity_key: [u8; 32],
    /// The platform's Ed25519 signing key (public), which signed this.
    pub signing_key: [u8; 32],
    /// The platform the node's keys live on.
    pub platform: PlatformDescription,
    /// SHA-256 of the running `bkv-hsm` executable.
    pub binary_sha256: [u8; 32],
}

/// A statement's canonical bytes and the platform key's signature over
/// `STATEMENT_CONTEXT || statement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedStatement {
    /// `encode(PlatformStatement)`: the exact bytes signed.
    pub statement: Vec<u8>,
    /// 64-byte Ed25519 signature by the statement's `signing_key`.
    pub signature: Vec<u8>,
}

/// The fleet's public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetPublicKeys {
    /// The Noise static public key clients pin.
    pub noise_static: [u8; 32],
    /// The OPAQUE server's public key (ristretto255, from the server setup).
    pub opaque_server: Vec<u8>,
}

/// How a node's core came to hold the fleet keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyOrigin {
    /// Generated inside this core, from the platform's randomness.
    Generated,
    /// Received from a member's core, encrypted to this node's identity key.
    Received,
}

/// What a node's core says once it holds the fleet keys, signed with its
/// platform signing key: the fleet it belongs to and the fleet's public keys
/// (computed from the secrets it holds), its identity and platform, the
/// running binary's hash, and whether it generated the keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatement {
    /// Layout version: [`FLEET_STATEMENT_VERSION`], or 1 when read from an earlier release.
    pub version: u8,
    /// The auditor-log namespace of the fleet's bundles and membership records.
    pub namespace: String,
    /// Id of the fleet the node belongs to.
    pub fleet_id: String,
    /// The node's id in the fleet.
    pub node_id: u64,
    /// The fleet's public keys, computed from the secrets the core holds.
    pub fleet_keys: FleetPublicKeys,
    /// The node's peer-link identity key (X25519 public key).
    pub identity_key: [u8; 32],
    /// The platform's Ed25519 signing key (public), which signed this.
    pub signing_key: [u8; 32],
    /// The platform the node's keys live on.
    pub platform: PlatformDescription,
    /// SHA-256 of the running `bkv-hsm` executable.
    pub binary_sha256: [u8; 32],
    /// Whether this core generated the fleet keys or received them.
    pub origin: KeyOrigin,
    /// What the fleet pinned besides its trust anchors (version 2; `None` only when read from
    /// a version-1 statement).
    pub policy: Option<FleetPolicy>,
}

/// What a fleet's cores enforce and sign with beyond its keys: stated in every node's fleet
/// statement, so the deployment evidence shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetPolicy {
    /// The largest guess limit a record of the fleet may carry.
    pub max_guess_limit: u32,
    /// The Ed25519 key the fleet's cores sign move tickets with (a successor pins it).
    pub move_key: [u8; 32],
    /// Earlier fleets whose records may move to this one.
    pub predecessors: Vec<PredecessorFleet>,
}

/// An earlier fleet whose records may move here: its id and the move key its cores sign
/// move tickets with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredecessorFleet {
    /// Id of the earlier fleet.
    pub fleet_id: String,
    /// The Ed25519 public key its cores sign move tickets with.
    pub move_key: [u8; 32],
}

/// A version-1 fleet statement (an earlier release): no policy.
#[derive(Deserialize)]
struct FleetStatementV1 {
    version: u8,
    namespace: String,
    fleet_id: String,
    node_id: u64,
    fleet_keys: FleetPublicKeys,
    identity_key: [u8; 32],
    signing_key: [u8; 32],
    platform: PlatformDescription,
    binary_sha256: [u8; 32],
    origin: KeyOrigin,
}

impl FleetStatement {
    /// Decodes version 2, or version 1 (read with no policy).
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Self, crate::CodecError> {
        match crate::decode_prefix::<u8>(bytes, limit)? {
            1 => {
                let v: FleetStatementV1 = crate::decode(bytes, limit)?;
                Ok(FleetStatement {
                    version: v.version,
                    namespace: v.namespace,
                    fleet_id: v.fleet_id,
                    node_id: v.node_id,
                    fleet_keys: v.fleet_keys,
                    identity_key: v.identity_key,
                    signing_key: v.signing_key,
                    platform: v.platform,
                    binary_sha256: v.binary_sha256,
                    origin: v.origin,
                    policy: None,
                })
            }
            _ => crate::decode(bytes, limit),
        }
    }
}

/// A fleet statement's canonical bytes and the platform key's signature over
/// `FLEET_STATEMENT_CONTEXT || statement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedFleetStatement {
    /// `encode(FleetStatement)`: the exact bytes signed.
    pub statement: Vec<u8>,
    /// 64-byte Ed25519 signature by the statement's `signing_key`.
    pub signature: Vec<u8>,
}

/// Where a record sits in the auditor's log: the auditor's signature over
/// it, its leaf index, a checkpoint (C2SP signed note) and the inclusion
/// proof of the leaf in that checkpoint's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogProof {
    /// The auditor's Ed25519 signature over the record (docs/auditor-api.md).
    pub auditor_signature: Vec<u8>,
    /// Index of the record's leaf in the auditor's log.
    pub leaf_index: u64,
    /// The auditor's checkpoint, a C2SP signed note.
    pub checkpoint: String,
    /// RFC 9162 inclusion proof of the leaf in the checkpoint's tree.
    pub inclusion_proof: Vec<[u8; 32]>,
}

/// An operator command, signed with the operator's Ed25519 key pinned in
/// the fleet when it was formed. `seq` must be exactly one more than the
/// fleet's last executed command, so a captured command never runs twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCommand {
    /// Layout version, [`ADMIN_COMMAND_VERSION`].
    pub version: u8,
    /// Id of the fleet the command is for.
    pub fleet_id: String,
    /// The command's sequence number: the fleet's last executed one plus 1.
    pub seq: u64,
    /// Unix seconds after which the node refuses to start executing it.
    pub not_after: u64,
    /// The membership change the command makes.
    pub action: AdminAction,
}

/// The membership change an [`AdminCommand`] makes (variant order is part of the format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AdminAction {
    /// Admit a node as a learner. `record` is the canonical membership
    /// record (an `Add` naming `node_id` and the node's signed statement)
    /// and `proof` shows it is in the auditor's log.
    AddMember {
        /// Id of the node to admit.
        node_id: u64,
        /// The node's peer-link address.
        addr: String,
        /// Canonical bytes of the logged membership record (an `Add`).
        record: Vec<u8>,
        /// Proof that `record` is in the auditor's log.
        proof: LogProof,
    },
    /// Make an admitted learner a voter.
    Promote {
        /// Id of the learner to promote.
        node_id: u64,
    },
    /// Remove a member; `record` (a logged `Remove`) must name it.
    RemoveMember {
        /// Id of the member to remove.
        node_id: u64,
        /// Canonical bytes of the logged membership record (a `Remove`).
        record: Vec<u8>,
        /// Proof that `record` is in the auditor's log.
        proof: LogProof,
    },
}

/// An admin command's canonical bytes and the operator's signature over
/// `ADMIN_CONTEXT || command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAdminCommand {
    /// `encode(AdminCommand)`: the exact bytes signed.
    pub command: Vec<u8>,
    /// 64-byte Ed25519 signature by the operator key pinned in the fleet.
    pub signature: Vec<u8>,
}

/// Requests on the admin link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AdminRequest {
    /// The fleet's members and the next admin sequence number (public).
    Members,
    /// Execute a signed command (the leader only; others name the leader).
    Execute(SignedAdminCommand),
    /// This node's signed fleet statement (public; for the ceremony's
    /// evidence).
    FleetStatement,
}

/// One fleet member as the replicated state records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member's node id.
    pub node_id: u64,
    /// The member's peer-link address (`host:port`).
    pub addr: String,
    /// The member's peer-link identity key (X25519 public key).
    pub identity_key: [u8; 32],
    /// Whether it votes (`false`: a learner).
    pub voter: bool,
    /// The member's signed platform statement.
    pub statement: SignedStatement,
    /// Leaf index of its membership record in the auditor's log (`None`
    /// for the founding node, whose record is logged by the operator
    /// after the fleet exists).
    pub log_index: Option<u64>,
}

/// The fleet's membership as seen by one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersView {
    /// Id of the fleet.
    pub fleet_id: String,
    /// The `seq` the next admin command must carry.
    pub next_seq: u64,
    /// Every admitted member, voters and learners.
    pub members: Vec<MemberInfo>,
    /// The answering node's replication status.
    pub status: crate::node::FleetStatus,
    /// How many live records (active or pending) the fleet holds (the
    /// operator retires a fleet once its records moved).
    pub records: u64,
}

/// A node's answer to an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AdminResponse {
    /// The answer to [`AdminRequest::Members`].
    Members(MembersView),
    /// The command committed and the Raft membership follows it.
    Executed(MembersView),
    /// This node's signed fleet statement (the answer to [`AdminRequest::FleetStatement`]).
    FleetStatement(SignedFleetStatement),
    /// The request was refused; nothing changed.
    Error(AdminError),
}

/// Why a command was refused. Nothing changed in any of these cases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The signature does not verify under the fleet's pinned operator key.
    #[error("not signed by the fleet's operator key")]
    BadSignature,
    /// The request or command is malformed, or of an unknown kind or version; the text says why.
    #[error("command is malformed: {0}")]
    Malformed(String),
    /// The command is for another fleet.
    #[error("command is for fleet {found:?}, this is {expected:?}")]
    WrongFleet {
        /// This node's fleet id.
        expected: String,
        /// The fleet id the command names.
        found: String,
    },
    /// `seq` is not the next sequence number: replayed or out of order.
    #[error("command sequence {found} is not the next one ({expected}): replayed or out of order")]
    Replayed {
        /// The sequence number the next command must carry.
        expected: u64,
        /// The command's sequence number.
        found: u64,
    },
    /// The command's `not_after` has passed.
    #[error("command expired at {not_after} (now {now})")]
    Expired {
        /// The command's deadline (Unix seconds).
        not_after: u64,
        /// The node's clock (Unix seconds).
        now: u64,
    },
    /// The membership record is not proven to be in the auditor's log; the text says why.
    #[error("membership record is not proven to be in the auditor's log: {0}")]
    NotLogged(String),
    /// The record's platform statement is invalid; the text says why.
    #[error("platform statement is invalid: {0}")]
    BadStatement(String),
    /// The fleet cannot carry the request out in its current state; the text says why.
    #[error("refused: {0}")]
    Refused(String),
    /// This node is not the leader: send the command to the leader.
    #[error("not the leader (leader: {leader:?}); send it there")]
    NotLeader {
        /// The leader's node id, if this node knows one.
        leader: Option<u64>,
    },
    /// No majority is reachable, or this node's core cannot answer; the text says why.
    #[error("no majority of the fleet is reachable: {0}")]
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Frozen (docs/formats.md): every node's fleet statement is signed under it. Hex, so a
    /// text search-and-replace cannot change the expectation along with the constant.
    #[test]
    fn the_fleet_statement_context_is_frozen() {
        assert_eq!(
            hex::encode(FLEET_STATEMENT_CONTEXT),
            "626b7620666c6565742073746174656d656e7420763100"
        );
    }

    proptest! {
        #[test]
        fn admin_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = crate::decode::<AdminRequest>(&bytes, MAX_ADMIN_FRAME);
            let _ = crate::decode::<AdminResponse>(&bytes, MAX_ADMIN_FRAME);
            let _ = crate::decode::<AdminCommand>(&bytes, MAX_ADMIN_FRAME);
            let _ = crate::decode::<PlatformStatement>(&bytes, MAX_ADMIN_FRAME);
            let _ = crate::decode::<SignedStatement>(&bytes, MAX_ADMIN_FRAME);
        }

        #[test]
        fn commands_roundtrip(seq in any::<u64>(), id in any::<u64>(), record in proptest::collection::vec(any::<u8>(), 0..100)) {
            let c = AdminCommand {
                version: ADMIN_COMMAND_VERSION,
                fleet_id: "fleet-1".into(),
                seq,
                not_after: 7,
                action: AdminAction::RemoveMember {
                    node_id: id,
                    record,
                    proof: LogProof { auditor_signature: vec![1; 64], leaf_index: id, checkpoint: "cp".into(), inclusion_proof: vec![[2; 32]] },
                },
            };
            let bytes = crate::encode(&c);
            prop_assert_eq!(crate::decode::<AdminCommand>(&bytes, MAX_ADMIN_FRAME).unwrap(), c);
        }
    }
}
