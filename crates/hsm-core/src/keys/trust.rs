//! What a fleet pins when it is formed ([`FleetTrust`]): public trust anchors and policy, kept
//! inside the sealed fleet secrets (trust version 2; version 1 still read).

use crate::CoreError;
use bkv_wire::admin::MAX_TEXT;
use bkv_wire::vault::{MAX_GUESS_LIMIT, MIN_GUESS_LIMIT};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// Most predecessor fleets a fleet pins (one per earlier rotation still draining).
pub const MAX_PREDECESSORS: usize = 8;
/// What the fleet pins when it is formed: who may command it, whose log must record its
/// membership, the guess-limit policy every core enforces, and the fleets whose records may move
/// here. Public values (trust version 2; version 1 had the first four fields, and reads as the
/// policy [`MAX_GUESS_LIMIT`] with no predecessor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
pub struct FleetTrust {
    /// The log namespace bundles and membership records go to.
    pub namespace: String,
    /// The auditor's name: with the namespace, the origin of the log's checkpoints
    /// ([`Self::origin`]).
    pub auditor_name: String,
    /// The auditor's Ed25519 key (checkpoints, record signatures).
    pub auditor_key: [u8; 32],
    /// The operator's Ed25519 key (admin commands).
    pub operator_key: [u8; 32],
    /// The largest guess limit a record of this fleet may carry (stated in the evidence).
    pub max_guess_limit: u32,
    /// Earlier fleets whose move tickets this fleet accepts, with their move keys (public).
    #[zeroize(skip)]
    pub predecessors: Vec<Predecessor>,
}

/// An earlier fleet whose records may move to this one: its id and the Ed25519 key its cores
/// sign move tickets with ([`FleetSecrets::move_public_key`]).
pub type Predecessor = bkv_wire::admin::PredecessorFleet;

/// Trust version 1 (fleets formed by an earlier release).
#[derive(Deserialize)]
pub(crate) struct TrustV1 {
    pub(crate) namespace: String,
    pub(crate) auditor_name: String,
    pub(crate) auditor_key: [u8; 32],
    pub(crate) operator_key: [u8; 32],
}

impl From<TrustV1> for FleetTrust {
    fn from(t: TrustV1) -> Self {
        FleetTrust {
            namespace: t.namespace,
            auditor_name: t.auditor_name,
            auditor_key: t.auditor_key,
            operator_key: t.operator_key,
            max_guess_limit: MAX_GUESS_LIMIT,
            predecessors: Vec::new(),
        }
    }
}

impl FleetTrust {
    /// Anchors with fixed, well-known keys: tests only.
    #[cfg(any(test, feature = "testing"))]
    pub fn for_tests() -> Self {
        let k = ed25519_dalek::SigningKey::from_bytes(&[3; 32])
            .verifying_key()
            .to_bytes();
        FleetTrust {
            namespace: "test".into(),
            auditor_name: "test-auditor".into(),
            auditor_key: k,
            operator_key: k,
            max_guess_limit: MAX_GUESS_LIMIT,
            predecessors: Vec::new(),
        }
    }

    /// The checkpoint origin of the fleet's log.
    pub fn origin(&self) -> String {
        format!("{}/{}", self.auditor_name, self.namespace)
    }

    /// Checks what a core must refuse to pin: a policy outside the wire's range, too many or
    /// malformed predecessors.
    pub fn check(&self) -> Result<(), CoreError> {
        self.anchors()?;
        if !(MIN_GUESS_LIMIT..=MAX_GUESS_LIMIT).contains(&self.max_guess_limit) {
            return Err(CoreError::Secrets("the guess-limit policy is out of range"));
        }
        if self.predecessors.len() > MAX_PREDECESSORS
            || self
                .predecessors
                .iter()
                .any(|p| p.fleet_id.is_empty() || p.fleet_id.len() > MAX_TEXT)
        {
            return Err(CoreError::Secrets("malformed predecessor fleets"));
        }
        if self
            .predecessors
            .iter()
            .any(|p| ed25519_dalek::VerifyingKey::from_bytes(&p.move_key).is_err())
        {
            return Err(CoreError::Secrets(
                "a predecessor's move key is not an Ed25519 key",
            ));
        }
        Ok(())
    }

    /// The pinned keys and names as transparency trust anchors (bundle and membership checks);
    /// refused if a pinned key is not a valid Ed25519 key.
    pub fn anchors(&self) -> Result<bkv_transparency::bundle::TrustAnchors, CoreError> {
        let key = |k: &[u8; 32]| {
            ed25519_dalek::VerifyingKey::from_bytes(k)
                .map_err(|_| CoreError::Secrets("a pinned trust key is not a valid Ed25519 key"))
        };
        Ok(bkv_transparency::bundle::TrustAnchors {
            namespace: self.namespace.clone(),
            origin: self.origin(),
            auditor_name: self.auditor_name.clone(),
            auditor_key: key(&self.auditor_key)?,
            operator_key: key(&self.operator_key)?,
        })
    }
}
