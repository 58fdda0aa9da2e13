//! The keys the core holds and the only ways they leave it: sealed by the
//! platform, or encrypted to another core's identity key.
//!
//! - [`FleetSecrets`]: the fleet's Noise static key, OPAQUE server setup (OPRF
//!   seed and server key pair) and the trust anchors pinned when the fleet was
//!   formed (operator key, auditor key, log namespace).
//! - [`NodeIdentity`]: this node's X25519 identity key, the static key of its
//!   Noise `IK` peer links. It performs handshakes; it never hands out the key.
//!
//! Fleet secrets are transferred as `0x01 || ephemeral X25519 public (32) ||
//! ChaCha20-Poly1305(k, nonce 0, secrets)` where `k = HKDF-SHA256(salt =
//! "bkv fleet secrets transfer v1", ikm = X25519(e, recipient), info =
//! ephemeral public || recipient public)`; the associated data is the same
//! info. Each key encrypts exactly one message.

use crate::platform::{noise_builder, operation_rng, Platform, PlatformError, SharedPlatform};
use crate::CoreError;
use bkv_wire::admin::{
    FleetPublicKeys, FleetStatement, KeyOrigin, PlatformStatement, SignedFleetStatement,
    SignedStatement, FLEET_STATEMENT_CONTEXT, FLEET_STATEMENT_VERSION, STATEMENT_VERSION,
};
use bkv_wire::OpaqueSuite;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use opaque_ke::ServerSetup;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

const SECRETS_SLOT: crate::platform::SealSlot = crate::platform::SealSlot::FLEET_SECRETS;
const IDENTITY_SLOT: crate::platform::SealSlot = crate::platform::SealSlot::NODE_IDENTITY;
const TRANSFER_VERSION: u8 = 1;
const TRANSFER_SALT: &[u8] = b"bkv fleet secrets transfer v1";
/// Largest encoded fleet secrets.
const MAX_SECRETS: usize = 16 * 1024;
/// Encoding version of the secrets' plaintext: 2 holds trust version 2 ([`SecretsV3`]); 1 (an
/// earlier release, [`SecretsV2`]) held trust version 1.
const SECRETS_ENCODING: u8 = 2;

/// Noise pattern of the peer links between fleet nodes.
pub const PEER_PATTERN: &str = "Noise_IK_25519_ChaChaPoly_SHA256";
/// Noise prologue of the peer links: both ends must use it or the handshake fails.
pub const PEER_PROLOGUE: &[u8] = b"bkv peer link v1";

mod trust;
use trust::TrustV1;
pub use trust::{FleetTrust, Predecessor, MAX_PREDECESSORS};

/// The fleet's long-term secrets: generated inside a core, sealed by its
/// platform, and sent only to another core's verified identity key.
pub struct FleetSecrets {
    fleet_id: String,
    noise_private: Zeroizing<[u8; 32]>,
    noise_public: [u8; 32],
    opaque_setup: Zeroizing<Vec<u8>>,
    trust: FleetTrust,
    /// How this core came to hold them (kept with the sealed copy only).
    origin: KeyOrigin,
}

/// The secrets' plaintext, encoding version 2.
#[derive(Serialize, Deserialize, Zeroize)]
#[zeroize(drop)]
struct SecretsV3 {
    fleet_id: String,
    noise_private: [u8; 32],
    opaque_setup: Vec<u8>,
    trust: FleetTrust,
}

/// Encoding version 1 (an earlier release): trust version 1.
#[derive(Deserialize)]
struct SecretsV2 {
    fleet_id: String,
    noise_private: [u8; 32],
    opaque_setup: Vec<u8>,
    trust: TrustV1,
}

/// The node's sealed copy: the secrets and how this core obtained them.
#[derive(Serialize, Deserialize, Zeroize)]
#[zeroize(drop)]
struct LocalSecretsV1 {
    secrets: Vec<u8>,
    generated: bool,
}

impl std::fmt::Debug for FleetSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FleetSecrets({}, <redacted>)", self.fleet_id)
    }
}

impl FleetSecrets {
    /// The secret values a memory scan looks for (tests only): the OPRF seed (the first 64
    /// bytes of the OPAQUE server setup, RFC 9807's `oprf_seed`), the OPAQUE server's private
    /// key and the Noise static private key.
    #[cfg(any(test, feature = "testing"))]
    pub fn secret_values_for_tests(&self) -> Vec<(&'static str, Vec<u8>)> {
        let setup = self.opaque_setup.as_slice();
        vec![
            ("OPRF seed", setup.get(..64).unwrap_or_default().to_vec()),
            (
                "OPAQUE server private key",
                setup.get(64..96).unwrap_or_default().to_vec(),
            ),
            ("Noise static private key", self.noise_private.to_vec()),
        ]
    }

    /// New fleet keys, from the platform's randomness, pinning `trust`.
    pub fn generate(platform: &dyn Platform, trust: FleetTrust) -> Result<Self, CoreError> {
        trust.check()?;
        let mut rng = operation_rng(platform)?;
        let mut noise_private = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rng, noise_private.as_mut());
        let setup = ServerSetup::<OpaqueSuite>::new(&mut rng);
        let mut id = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rng, &mut id);
        Ok(FleetSecrets {
            fleet_id: format!("fleet-{}", hex_lower(&id)),
            noise_public: x25519_public(&noise_private),
            noise_private,
            opaque_setup: Zeroizing::new(setup.serialize().to_vec()),
            trust,
            origin: KeyOrigin::Generated,
        })
    }

    /// Whether this core generated the keys or received them.
    pub fn origin(&self) -> KeyOrigin {
        self.origin
    }

    /// The fleet's public keys, computed from the secrets.
    pub fn public_keys(&self) -> Result<FleetPublicKeys, CoreError> {
        Ok(FleetPublicKeys {
            noise_static: self.noise_public,
            opaque_server: self.opaque_setup()?.keypair().public().serialize().to_vec(),
        })
    }

    /// The fleet's id (`fleet-` and 16 hex digits, drawn when the fleet was generated).
    pub fn fleet_id(&self) -> &str {
        &self.fleet_id
    }

    /// The fleet's Noise static public key, which clients open their `NK` sessions to.
    pub fn noise_public_key(&self) -> [u8; 32] {
        self.noise_public
    }

    /// The trust anchors and policy pinned when the fleet was formed.
    pub fn trust(&self) -> &FleetTrust {
        &self.trust
    }

    /// The key placing records in buckets (`commitment::RecordCommitment::bucket`): derived
    /// from the OPAQUE setup (secret, the same on every member), so members place records
    /// alike and nobody outside the fleet can aim record ids at one bucket.
    /// The fleet's snapshot key (`crate::snapshot::SnapshotKey`).
    pub(crate) fn snapshot_key(&self) -> crate::snapshot::SnapshotKey {
        crate::snapshot::SnapshotKey::derive(&self.opaque_setup, &self.fleet_id)
    }

    /// The fleet's log entry key (`crate::entry::EntryKey`).
    pub(crate) fn entry_key(&self) -> crate::entry::EntryKey {
        crate::entry::EntryKey::derive(&self.opaque_setup, &self.fleet_id)
    }

    pub(crate) fn bucket_key(&self) -> [u8; 32] {
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA-256's output limit: expand cannot fail.
        let _ = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"bkv/bucket-key/v1"), &self.opaque_setup)
            .expand(b"record placement", &mut key);
        key
    }

    /// The Ed25519 key this fleet's cores sign move tickets with: derived from the OPAQUE
    /// setup, so every member (and a fleet formed by an earlier release) holds the same one
    /// without a new secret.
    pub(crate) fn move_signing_key(&self) -> ed25519_dalek::SigningKey {
        let mut seed = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA-256's output limit: expand cannot fail.
        let _ = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"bkv/move-key/v1"), &self.opaque_setup)
            .expand(b"move tickets", seed.as_mut());
        ed25519_dalek::SigningKey::from_bytes(&seed)
    }

    /// The public key of [`Self::move_signing_key`]: a successor fleet pins it.
    pub fn move_public_key(&self) -> [u8; 32] {
        self.move_signing_key().verifying_key().to_bytes()
    }

    pub(crate) fn noise_private(&self) -> &[u8; 32] {
        &self.noise_private
    }

    pub(crate) fn opaque_setup(&self) -> Result<ServerSetup<OpaqueSuite>, CoreError> {
        ServerSetup::<OpaqueSuite>::deserialize(&self.opaque_setup)
            .map_err(|_| CoreError::Secrets("bad OPAQUE server setup"))
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let v = SecretsV3 {
            fleet_id: self.fleet_id.clone(),
            noise_private: *self.noise_private,
            opaque_setup: self.opaque_setup.to_vec(),
            trust: self.trust.clone(),
        };
        Zeroizing::new(bkv_wire::encode_as(SECRETS_ENCODING, &v))
    }

    fn decode(plain: &[u8], origin: KeyOrigin) -> Result<Self, CoreError> {
        let malformed = |_| CoreError::Secrets("malformed");
        let v: SecretsV3 = match bkv_wire::encoding_version(plain, MAX_SECRETS)
            .map_err(malformed)?
        {
            1 => {
                let mut old: SecretsV2 = bkv_wire::decode(plain, MAX_SECRETS).map_err(malformed)?;
                let v = SecretsV3 {
                    fleet_id: std::mem::take(&mut old.fleet_id),
                    noise_private: old.noise_private,
                    opaque_setup: std::mem::take(&mut old.opaque_setup),
                    trust: FleetTrust::from(TrustV1 {
                        namespace: std::mem::take(&mut old.trust.namespace),
                        auditor_name: std::mem::take(&mut old.trust.auditor_name),
                        auditor_key: old.trust.auditor_key,
                        operator_key: old.trust.operator_key,
                    }),
                };
                old.noise_private.zeroize();
                v
            }
            SECRETS_ENCODING => {
                bkv_wire::decode_as(plain, MAX_SECRETS, SECRETS_ENCODING).map_err(malformed)?
            }
            _ => return Err(CoreError::Secrets("unsupported secrets encoding")),
        };
        ServerSetup::<OpaqueSuite>::deserialize(&v.opaque_setup)
            .map_err(|_| CoreError::Secrets("bad OPAQUE server setup"))?;
        v.trust.check()?;
        Ok(FleetSecrets {
            fleet_id: v.fleet_id.clone(),
            noise_private: Zeroizing::new(v.noise_private),
            noise_public: x25519_public(&v.noise_private),
            opaque_setup: Zeroizing::new(v.opaque_setup.clone()),
            trust: v.trust.clone(),
            origin,
        })
    }

    /// The secrets sealed by `platform` (for this node's disk).
    pub fn seal(&self, platform: &dyn Platform) -> Result<Vec<u8>, CoreError> {
        let local = LocalSecretsV1 {
            secrets: self.encode().to_vec(),
            generated: self.origin == KeyOrigin::Generated,
        };
        let plain = Zeroizing::new(bkv_wire::encode(&local));
        Ok(platform.seal(SECRETS_SLOT, b"", &plain)?)
    }

    /// Opens secrets this node's platform sealed ([`FleetSecrets::seal`]); a value tampered with,
    /// or sealed by another platform, is refused.
    pub fn unseal(platform: &dyn Platform, sealed: &[u8]) -> Result<Self, CoreError> {
        let plain = platform.unseal(SECRETS_SLOT, b"", sealed)?;
        let local: LocalSecretsV1 = bkv_wire::decode(&plain, MAX_SECRETS + 64)
            .map_err(|_| CoreError::Secrets("malformed"))?;
        let origin = if local.generated {
            KeyOrigin::Generated
        } else {
            KeyOrigin::Received
        };
        Self::decode(&local.secrets, origin)
    }

    /// The secrets encrypted to `recipient` (another core's identity key).
    /// Only [`crate::Core::export_secrets_to`] calls this, after checking
    /// that `recipient` belongs to an admitted member.
    pub(crate) fn encrypt_to(
        &self,
        platform: &dyn Platform,
        recipient: &[u8; 32],
    ) -> Result<Vec<u8>, CoreError> {
        let mut eph = Zeroizing::new([0u8; 32]);
        platform.fill_random(eph.as_mut())?;
        let eph_public = x25519_public(&eph);
        let shared = x25519(&eph, recipient)?;
        let info = transfer_info(&eph_public, recipient);
        let cipher = transfer_cipher(&shared, &info)?;
        let ct = cipher
            .encrypt(
                chacha20poly1305::Nonce::from_slice(&[0u8; 12]),
                Payload {
                    msg: &self.encode(),
                    aad: &info,
                },
            )
            .map_err(|_| CoreError::Secrets("encryption failed"))?;
        let mut out = Vec::with_capacity(1 + 32 + ct.len());
        out.push(TRANSFER_VERSION);
        out.extend_from_slice(&eph_public);
        out.extend_from_slice(&ct);
        Ok(out)
    }
}

fn transfer_info(eph_public: &[u8; 32], recipient: &[u8; 32]) -> [u8; 64] {
    let mut info = [0u8; 64];
    info[..32].copy_from_slice(eph_public);
    info[32..].copy_from_slice(recipient);
    info
}

fn transfer_cipher(shared: &[u8; 32], info: &[u8]) -> Result<ChaCha20Poly1305, CoreError> {
    let mut k = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<sha2::Sha256>::new(Some(TRANSFER_SALT), shared)
        .expand(info, k.as_mut())
        .map_err(|_| CoreError::Secrets("key derivation failed"))?;
    Ok(ChaCha20Poly1305::new(k.as_ref().into()))
}

/// This node's identity: the X25519 static key of its peer links. The
/// private key stays inside this type; the host gets handshakes, sealed
/// bytes and the public key only.
pub struct NodeIdentity {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeIdentity({})", hex_lower(&self.public[..6]))
    }
}

impl NodeIdentity {
    /// A new identity key from the platform's randomness.
    pub fn generate(platform: &dyn Platform) -> Result<Self, CoreError> {
        let mut private = Zeroizing::new([0u8; 32]);
        platform.fill_random(private.as_mut())?;
        Ok(NodeIdentity {
            public: x25519_public(&private),
            private,
        })
    }

    /// The identity private key sealed by `platform` (for this node's disk).
    pub fn seal(&self, platform: &dyn Platform) -> Result<Vec<u8>, CoreError> {
        Ok(platform.seal(IDENTITY_SLOT, b"", self.private.as_ref())?)
    }

    /// Opens an identity this node's platform sealed ([`NodeIdentity::seal`]).
    pub fn unseal(platform: &dyn Platform, sealed: &[u8]) -> Result<Self, CoreError> {
        let plain = platform.unseal(IDENTITY_SLOT, b"", sealed)?;
        let mut private = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(CoreError::Secrets("node identity has the wrong length"));
        }
        private.copy_from_slice(&plain);
        Ok(NodeIdentity {
            public: x25519_public(&private),
            private,
        })
    }

    /// The identity's X25519 public key: what peers and the fleet's membership know this node by.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The identity private key (tests only: a memory scan looks for it).
    #[cfg(any(test, feature = "testing"))]
    pub fn private_key_for_tests(&self) -> [u8; 32] {
        *self.private
    }

    /// This node's platform statement, signed by the platform key:
    /// identity key, platform description and the running binary's hash.
    pub fn statement(
        &self,
        platform: &dyn Platform,
        binary_sha256: [u8; 32],
    ) -> Result<SignedStatement, CoreError> {
        let s = PlatformStatement {
            version: STATEMENT_VERSION,
            identity_key: self.public,
            signing_key: platform.signing_public_key(),
            platform: platform.describe(),
            binary_sha256,
        };
        let statement = bkv_wire::encode(&s);
        let signature = platform
            .sign(&bkv_transparency::membership::statement_message(&statement))?
            .to_vec();
        Ok(SignedStatement {
            statement,
            signature,
        })
    }

    /// This node's fleet statement, signed by the platform key: the fleet
    /// and its public keys (computed from the secrets this core holds), the
    /// identity and platform, the binary's hash, and the keys' origin.
    pub fn fleet_statement(
        &self,
        platform: &dyn Platform,
        secrets: &FleetSecrets,
        node_id: u64,
        binary_sha256: [u8; 32],
    ) -> Result<SignedFleetStatement, CoreError> {
        let s = FleetStatement {
            version: FLEET_STATEMENT_VERSION,
            namespace: secrets.trust.namespace.clone(),
            fleet_id: secrets.fleet_id.clone(),
            node_id,
            fleet_keys: secrets.public_keys()?,
            identity_key: self.public,
            signing_key: platform.signing_public_key(),
            platform: platform.describe(),
            binary_sha256,
            origin: secrets.origin,
            policy: Some(bkv_wire::admin::FleetPolicy {
                max_guess_limit: secrets.trust.max_guess_limit,
                move_key: secrets.move_public_key(),
                predecessors: secrets.trust.predecessors.clone(),
            }),
        };
        let statement = bkv_wire::encode(&s);
        let mut msg = FLEET_STATEMENT_CONTEXT.to_vec();
        msg.extend_from_slice(&statement);
        let signature = platform.sign(&msg)?.to_vec();
        Ok(SignedFleetStatement {
            statement,
            signature,
        })
    }

    fn builder(&self, platform: &SharedPlatform) -> Result<snow::Builder<'_>, CoreError> {
        let params = PEER_PATTERN
            .parse()
            .map_err(|_| CoreError::Secrets("peer Noise pattern"))?;
        noise_builder(params, platform)
            .local_private_key(self.private.as_ref())
            .and_then(|b| b.prologue(PEER_PROLOGUE))
            .map_err(|_| CoreError::Handshake)
    }

    /// Starts a peer-link handshake to the node holding `remote`.
    pub fn initiate(
        &self,
        platform: &SharedPlatform,
        remote: &[u8; 32],
    ) -> Result<PeerHandshake, CoreError> {
        self.builder(platform)?
            .remote_public_key(remote)
            .and_then(|b| b.build_initiator())
            .map(PeerHandshake)
            .map_err(|_| CoreError::Handshake)
    }

    /// Answers a peer-link handshake; the initiator's key is known after
    /// its first message ([`PeerHandshake::remote_static`]).
    pub fn respond(&self, platform: &SharedPlatform) -> Result<PeerHandshake, CoreError> {
        self.builder(platform)?
            .build_responder()
            .map(PeerHandshake)
            .map_err(|_| CoreError::Handshake)
    }

    /// Opens fleet secrets that a member's core encrypted to this identity.
    pub fn open_secrets(&self, envelope: &[u8]) -> Result<FleetSecrets, CoreError> {
        let bad = CoreError::Secrets("fleet secrets transfer is malformed or not for this node");
        let (version, rest) = envelope.split_first().ok_or(CoreError::Secrets("empty"))?;
        if *version != TRANSFER_VERSION || rest.len() < 32 + 16 || envelope.len() > MAX_SECRETS {
            return Err(bad);
        }
        let (eph_public, ct) = rest.split_at(32);
        let eph_public: [u8; 32] = eph_public
            .try_into()
            .map_err(|_| CoreError::Secrets("eph"))?;
        let shared = x25519(&self.private, &eph_public)?;
        let info = transfer_info(&eph_public, &self.public);
        let plain = transfer_cipher(&shared, &info)?
            .decrypt(
                chacha20poly1305::Nonce::from_slice(&[0u8; 12]),
                Payload {
                    msg: ct,
                    aad: &info,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| bad)?;
        FleetSecrets::decode(&plain, KeyOrigin::Received)
    }
}

/// A link's session keys, `(send, recv)`.
pub(crate) type LinkKeyPair = (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>);

/// A peer-link Noise handshake in progress (the identity key stays inside).
pub struct PeerHandshake(snow::HandshakeState);

impl PeerHandshake {
    /// Writes the next handshake message, carrying `payload`, into `out`; returns its length.
    pub fn write_message(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, CoreError> {
        self.0
            .write_message(payload, out)
            .map_err(|_| CoreError::Handshake)
    }

    /// Reads the peer's next handshake message, its payload into `out`; returns the payload length.
    pub fn read_message(&mut self, msg: &[u8], out: &mut [u8]) -> Result<usize, CoreError> {
        self.0
            .read_message(msg, out)
            .map_err(|_| CoreError::Handshake)
    }

    /// The other side's identity key, once the handshake has shown it.
    pub fn remote_static(&self) -> Option<[u8; 32]> {
        self.0.get_remote_static().and_then(|k| k.try_into().ok())
    }

    /// The established link's session keys, `(send, recv)` for this side: the Noise split,
    /// used as ChaCha20-Poly1305 cipher states by the host (a link's traffic is sealed or
    /// authenticated already; the keys are not the identity key). Only after the handshake.
    pub fn into_link_keys(mut self) -> Result<LinkKeyPair, CoreError> {
        if !self.0.is_handshake_finished() {
            return Err(CoreError::Handshake);
        }
        let (i2r, r2i) = self.0.dangerously_get_raw_split();
        let (i2r, r2i) = (Zeroizing::new(i2r), Zeroizing::new(r2i));
        Ok(match self.0.is_initiator() {
            true => (i2r, r2i),
            false => (r2i, i2r),
        })
    }
}

pub(crate) fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    curve25519_dalek::MontgomeryPoint::mul_base_clamped(*private).to_bytes()
}

fn x25519(private: &[u8; 32], public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, CoreError> {
    let shared = Zeroizing::new(
        curve25519_dalek::MontgomeryPoint(*public)
            .mul_clamped(*private)
            .to_bytes(),
    );
    // A low-order public key gives the all-zero secret: refuse it.
    if bool::from(subtle::ConstantTimeEq::ct_eq(&shared[..], &[0u8; 32][..])) {
        return Err(CoreError::Secrets("identity key is a low-order point"));
    }
    Ok(shared)
}

pub(crate) fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl From<PlatformError> for CoreError {
    fn from(e: PlatformError) -> Self {
        CoreError::Platform(e)
    }
}

#[cfg(test)]
mod tests;
