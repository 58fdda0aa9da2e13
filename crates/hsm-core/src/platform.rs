//! What the core needs from the machine it runs on. The core does no I/O of its
//! own: a node passes a `Platform` (software, or PKCS#11-backed).

use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 256-bit key held by the platform's key store, used to seal everything the
/// node writes to its (untrusted) disk.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SealingKey(pub(crate) [u8; 32]);

impl SealingKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SealingKey(bytes)
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("platform monotonic counter failed: {0}")]
    Counter(String),
}

pub trait Platform: Send {
    type Rng: RngCore + CryptoRng;
    /// Cryptographic randomness.
    fn rng(&mut self) -> &mut Self::Rng;
    /// Seconds since the Unix epoch (used only for session expiry).
    fn now_unix_secs(&self) -> u64;
    /// The sealing key from the platform key store.
    fn sealing_key(&self) -> &SealingKey;
    /// Current value of the platform's monotonic counter.
    fn counter(&self) -> Result<u64, PlatformError>;
    /// Increments the monotonic counter and returns the new value.
    fn increment_counter(&mut self) -> Result<u64, PlatformError>;
}

/// An in-memory platform for tests and simulations: OS randomness, a settable
/// clock, a counter that lives only in memory.
pub struct MemoryPlatform {
    rng: rand_core::OsRng,
    key: SealingKey,
    now: u64,
    counter: u64,
}

impl MemoryPlatform {
    pub fn new(key: [u8; 32]) -> Self {
        MemoryPlatform {
            rng: rand_core::OsRng,
            key: SealingKey(key),
            now: 1_700_000_000,
            counter: 0,
        }
    }
    pub fn advance_clock(&mut self, secs: u64) {
        self.now += secs;
    }
}

impl Platform for MemoryPlatform {
    type Rng = rand_core::OsRng;
    fn rng(&mut self) -> &mut Self::Rng {
        &mut self.rng
    }
    fn now_unix_secs(&self) -> u64 {
        self.now
    }
    fn sealing_key(&self) -> &SealingKey {
        &self.key
    }
    fn counter(&self) -> Result<u64, PlatformError> {
        Ok(self.counter)
    }
    fn increment_counter(&mut self) -> Result<u64, PlatformError> {
        self.counter += 1;
        Ok(self.counter)
    }
}
