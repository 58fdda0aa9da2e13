//! What the core needs from the machine it runs on: *operations*, never key
//! bytes. A platform holds its sealing key and signing key itself (in a
//! PKCS#11 token, or — insecure, for development — in files) and offers
//! randomness, time, seal/unseal, sign and a monotonic counter. Nothing in
//! this trait returns a key; keep it that way (see the crate docs).

use bkv_wire::admin::PlatformDescription;
use rand_core::SeedableRng;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Why a platform operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum PlatformError {
    /// A sealed value, or a remote platform's answer, is malformed (truncated, unknown version).
    #[error("sealed value is malformed")]
    Malformed,
    /// A sealed value failed authentication.
    #[error(
        "sealed value failed authentication (tampered, or sealed under another key, slot or label)"
    )]
    Auth,
    /// A monotonic counter could not be read or raised (missing, corrupt, I/O).
    #[error("platform monotonic counter: {0}")]
    Counter(String),
    /// The key store failed: the PKCS#11 token, key files, or the host agent relaying to it.
    #[error("platform key store: {0}")]
    KeyStore(String),
    /// The platform could not supply randomness.
    #[error("platform randomness: {0}")]
    Random(String),
}

/// The operations a node's key store offers the core and its host.
pub trait Platform: Send + Sync {
    /// Kind and token description (for platform statements and logs).
    fn describe(&self) -> PlatformDescription;
    /// Cryptographic randomness from the platform.
    fn fill_random(&self, out: &mut [u8]) -> Result<(), PlatformError>;
    /// Seconds since the Unix epoch (session expiry, command expiry).
    fn now_unix_secs(&self) -> u64;
    /// Authenticated encryption under the platform's sealing key, bound to
    /// `slot` (what kind of value) and `label` (where it is stored), so the
    /// host can neither read nor move a sealed value.
    fn seal(
        &self,
        slot: SealSlot,
        label: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, PlatformError>;
    /// The inverse of [`Platform::seal`] for the same slot and label.
    fn unseal(
        &self,
        slot: SealSlot,
        label: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, PlatformError>;
    /// The platform signing key's Ed25519 public key.
    fn signing_public_key(&self) -> [u8; 32];
    /// An Ed25519 signature by the platform signing key.
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], PlatformError>;
    /// The value of monotonic counter `counter`.
    fn counter_read(&self, counter: Counter) -> Result<u64, PlatformError>;
    /// Raises counter `counter` to `value` (never lowers it).
    fn counter_advance_to(&self, counter: Counter, value: u64) -> Result<(), PlatformError>;
    /// Raises counter `counter` to `value`, possibly after returning: a platform reached over a
    /// connection sends the advance and reads its answer before its next request, which an
    /// error then fails. For a caller that wrote what the value binds first, so a crash
    /// before the advance leaves the stored value ahead of the counter, never behind
    /// (SECURITY.md, "raft-state"). By default the same as [`Platform::counter_advance_to`].
    fn counter_advance_soon(&self, counter: Counter, value: u64) -> Result<(), PlatformError> {
        self.counter_advance_to(counter, value)
    }
}

/// Which of the platform's two monotonic counters (docs/formats.md "Monotonic counters"): the
/// host's, which binds its raft log (`raft-state`), and the core's, which names how many log
/// entries the core's state covered when it last let an outcome out (`Core::resume`). Only this
/// crate can name the core's, as with [`SealSlot`]: a host that holds the platform can neither
/// read nor raise it through bkv's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// The raft log's counter-bound state: the host's.
    Raft,
    /// The core's counter.
    Core(CoreCounter),
}

/// The core's counter (constructed only inside `bkv-hsm-core`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreCounter(());

impl Counter {
    pub(crate) const CORE: Counter = Counter::Core(CoreCounter(()));
    /// The core's counter, for platform tests (feature `testing`; no binary links it).
    #[cfg(any(test, feature = "testing"))]
    pub const CORE_FOR_TESTS: Counter = Counter::CORE;

    /// The counter's name (in errors and docs).
    pub fn name(self) -> &'static str {
        match self {
            Counter::Raft => "raft",
            Counter::Core(_) => "core",
        }
    }
}

/// What a sealed value is (docs/formats.md "Sealed values"): its name is part of the
/// associated data, so a value sealed as one kind never opens as another. The core's own values
/// (fleet secrets, identity key, record buckets, the records' summary) are [`CoreSlot`]s, which
/// only this crate can name: a host holding the platform can seal and open its own values
/// (`RaftState`) and nothing of the core's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealSlot {
    /// The raft log's counter-bound state (`raft-state`): the host's.
    RaftState,
    /// One of the core's values.
    Core(CoreSlot),
}

/// A slot only the core seals and opens (constructed only inside `bkv-hsm-core`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreSlot(CoreValue);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CoreValue {
    FleetSecrets,
    NodeIdentity,
    VaultBucket,
    VaultSummary,
}

impl SealSlot {
    pub(crate) const FLEET_SECRETS: SealSlot = SealSlot::Core(CoreSlot(CoreValue::FleetSecrets));
    pub(crate) const NODE_IDENTITY: SealSlot = SealSlot::Core(CoreSlot(CoreValue::NodeIdentity));
    pub(crate) const VAULT_BUCKET: SealSlot = SealSlot::Core(CoreSlot(CoreValue::VaultBucket));
    pub(crate) const VAULT_SUMMARY: SealSlot = SealSlot::Core(CoreSlot(CoreValue::VaultSummary));

    /// The slot's name in the associated data ([`seal_aad`]).
    pub fn name(self) -> &'static str {
        match self {
            SealSlot::RaftState => "raft-state",
            SealSlot::Core(CoreSlot(v)) => match v {
                CoreValue::FleetSecrets => "fleet-secrets",
                CoreValue::NodeIdentity => "node-identity",
                CoreValue::VaultBucket => "vault-bucket",
                CoreValue::VaultSummary => "vault-summary",
            },
        }
    }
}

/// A platform shared by the core and its host.
pub type SharedPlatform = Arc<dyn Platform>;

/// Associated data of every sealed value: `"bkv-seal-v1" || slot || 0x00 || label`.
pub fn seal_aad(slot: &str, label: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(16 + slot.len() + label.len());
    a.extend_from_slice(b"bkv-seal-v1");
    a.extend_from_slice(slot.as_bytes());
    a.push(0);
    a.extend_from_slice(label);
    a
}

/// A CSPRNG for one operation, seeded with 32 bytes from the platform (so a
/// failing platform RNG is an error here, not a panic deep in a library).
pub fn operation_rng(p: &dyn Platform) -> Result<rand_chacha::ChaCha20Rng, PlatformError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    p.fill_random(seed.as_mut())?;
    Ok(rand_chacha::ChaCha20Rng::from_seed(*seed))
}

/// Noise randomness (ephemeral keys) drawn from the platform.
struct NoiseRandom(SharedPlatform);

impl snow::types::Random for NoiseRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_random(dest).map_err(|_| snow::Error::Rng)
    }
}

struct PlatformResolver(SharedPlatform);

impl snow::resolvers::CryptoResolver for PlatformResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(NoiseRandom(self.0.clone())))
    }
    fn resolve_dh(&self, _: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        None
    }
    fn resolve_hash(&self, _: &snow::params::HashChoice) -> Option<Box<dyn snow::types::Hash>> {
        None
    }
    fn resolve_cipher(
        &self,
        _: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        None
    }
}

/// A Noise builder whose randomness comes from `platform` (primitives from
/// snow's default resolver).
pub(crate) fn noise_builder(
    params: snow::params::NoiseParams,
    platform: &SharedPlatform,
) -> snow::Builder<'static> {
    snow::Builder::with_resolver(
        params,
        Box::new(snow::resolvers::FallbackResolver::new(
            Box::new(PlatformResolver(platform.clone())),
            Box::new(snow::resolvers::DefaultResolver),
        )),
    )
}

#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryPlatform;

#[cfg(any(test, feature = "testing"))]
mod memory {
    use super::*;
    use bkv_wire::admin::PlatformKind;
    use ed25519_dalek::Signer;
    use rand_core::RngCore;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// An in-memory platform for unit tests and simulations only: OS
    /// randomness, a settable clock, keys and counter that live in memory.
    /// Compiled only for tests (feature `testing`); no binary links it.
    pub struct MemoryPlatform {
        key: Zeroizing<[u8; 32]>,
        signing: ed25519_dalek::SigningKey,
        now: AtomicU64,
        raft_counter: AtomicU64,
        core_counter: AtomicU64,
    }

    impl MemoryPlatform {
        /// A platform sealing under `key`, with a random signing key, its clock at 1,700,000,000
        /// and both counters at 0.
        pub fn new(key: [u8; 32]) -> Self {
            let mut s = [0u8; 32];
            rand_core::OsRng.fill_bytes(&mut s);
            MemoryPlatform {
                key: Zeroizing::new(key),
                signing: ed25519_dalek::SigningKey::from_bytes(&s),
                now: AtomicU64::new(1_700_000_000),
                raft_counter: AtomicU64::new(0),
                core_counter: AtomicU64::new(0),
            }
        }

        /// [`MemoryPlatform::new`] as a [`SharedPlatform`].
        pub fn shared(key: [u8; 32]) -> SharedPlatform {
            Arc::new(Self::new(key))
        }

        fn counter(&self, c: Counter) -> &AtomicU64 {
            match c {
                Counter::Raft => &self.raft_counter,
                Counter::Core(_) => &self.core_counter,
            }
        }

        /// Moves the platform's clock forward by `secs` seconds.
        pub fn advance_clock(&self, secs: u64) {
            self.now.fetch_add(secs, Ordering::SeqCst);
        }
    }

    impl Platform for MemoryPlatform {
        fn describe(&self) -> PlatformDescription {
            PlatformDescription {
                kind: PlatformKind::Memory,
                token: "in-memory test platform".into(),
            }
        }
        fn fill_random(&self, out: &mut [u8]) -> Result<(), PlatformError> {
            rand_core::OsRng
                .try_fill_bytes(out)
                .map_err(|e| PlatformError::Random(e.to_string()))
        }
        fn now_unix_secs(&self) -> u64 {
            self.now.load(Ordering::SeqCst)
        }
        fn seal(
            &self,
            slot: SealSlot,
            label: &[u8],
            plaintext: &[u8],
        ) -> Result<Vec<u8>, PlatformError> {
            let mut nonce = [0u8; crate::seal::XNONCE_LEN];
            self.fill_random(&mut nonce)?;
            Ok(crate::seal::seal_xchacha(
                &self.key,
                nonce,
                slot.name(),
                label,
                plaintext,
            ))
        }
        fn unseal(
            &self,
            slot: SealSlot,
            label: &[u8],
            sealed: &[u8],
        ) -> Result<Zeroizing<Vec<u8>>, PlatformError> {
            crate::seal::unseal_xchacha(&self.key, slot.name(), label, sealed)
        }
        fn signing_public_key(&self) -> [u8; 32] {
            self.signing.verifying_key().to_bytes()
        }
        fn sign(&self, message: &[u8]) -> Result<[u8; 64], PlatformError> {
            Ok(self.signing.sign(message).to_bytes())
        }
        fn counter_read(&self, counter: Counter) -> Result<u64, PlatformError> {
            Ok(self.counter(counter).load(Ordering::SeqCst))
        }
        fn counter_advance_to(&self, counter: Counter, value: u64) -> Result<(), PlatformError> {
            self.counter(counter).fetch_max(value, Ordering::SeqCst);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slot names are part of every sealed value's associated data (docs/formats.md "Sealed
    /// values"): they must not change, and a value sealed in one slot opens in no other.
    #[test]
    fn slots_keep_their_names_and_values_stay_in_their_slot() {
        let slots = [
            (SealSlot::RaftState, "raft-state"),
            (SealSlot::FLEET_SECRETS, "fleet-secrets"),
            (SealSlot::NODE_IDENTITY, "node-identity"),
            (SealSlot::VAULT_BUCKET, "vault-bucket"),
            (SealSlot::VAULT_SUMMARY, "vault-summary"),
        ];
        let p = MemoryPlatform::new([1; 32]);
        for (slot, name) in slots {
            assert_eq!(slot.name(), name);
            let sealed = p.seal(slot, b"label", b"value").unwrap();
            for (other, _) in slots {
                assert_eq!(p.unseal(other, b"label", &sealed).is_ok(), other == slot);
            }
        }
    }
}
