//! Log entries (entry format 1, docs/formats.md "Log entries"): every change to the replicated
//! state is one, made by a core and checked by every core before it applies.
//!
//! A [`LogEntry`] names the core that made it (its identity key, `proposer`) and that core's
//! sequence number for it (`seq`), and carries the [`Mutation`] encrypted and authenticated
//! under the fleet's entry key, which only cores hold ([`EntryKey`], derived from the fleet
//! secrets). The associated data binds the fleet id, the proposer and the sequence number, so a
//! host can neither read an entry, forge one, nor change whose it is or where it stands in its
//! proposer's sequence. When a core applies an entry ([`crate::SealedState::admit_entry`]) it
//! refuses, the same way on every core:
//! - an entry that does not open under the key ([`Refusal::Forged`]);
//! - one whose proposer is not an admitted member at that point of the log
//!   ([`Refusal::NotAMember`]; while the fleet has no member yet, only its founder holds the key);
//! - one whose sequence number is not above the last applied entry of the same proposer
//!   ([`Refusal::OutOfOrder`]): a replayed, duplicated or reordered entry.
//!
//! Every entry, applied or refused, extends the state's hash chain
//! (`chain = SHA-256("bkv/applied-chain/v1\0" || chain || entry encoding)`), which the sealed
//! summary commits to: a core's state names the exact sequence of entries it applied.

use crate::state::Mutation;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The entry format written now.
pub const ENTRY_VERSION: u8 = 1;
/// Largest encoded mutation inside an entry (an operator command carries its log proof and a
/// platform statement: a few KiB).
pub const MAX_ENTRY_BODY: usize = 256 * 1024;
/// Largest encoded entry.
pub const MAX_LOG_ENTRY: usize = MAX_ENTRY_BODY + 1024;
/// Most entries in one Raft log entry (group commit gathers at most this many).
pub const MAX_ENTRIES: usize = 256;
const NONCE_LEN: usize = 24;
const AAD_LABEL: &[u8] = b"bkv/log-entry/v1\0";
const CHAIN_LABEL: &[u8] = b"bkv/applied-chain/v1\0";

/// One state change as a core made it (format 1). The host stores and forwards it as it is.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Entry format ([`ENTRY_VERSION`]); another is refused ([`Refusal::Version`]).
    pub version: u8,
    /// Identity key of the core that made the entry.
    pub proposer: [u8; 32],
    /// The proposer's sequence number for it: each entry of one proposer that applies must be
    /// numbered above the one before.
    pub seq: u64,
    /// The random XChaCha20-Poly1305 nonce `sealed` was made with.
    pub nonce: [u8; NONCE_LEN],
    /// XChaCha20-Poly1305 under the entry key of the [`Mutation`]'s encoding, with the
    /// associated data [`entry_aad`].
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for LogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LogEntry(v{}, proposer {}…, seq {}, {} sealed bytes)",
            self.version,
            hex_prefix(&self.proposer),
            self.seq,
            self.sealed.len()
        )
    }
}

fn hex_prefix(b: &[u8; 32]) -> String {
    b.iter().take(4).map(|x| format!("{x:02x}")).collect()
}

impl LogEntry {
    /// Decodes an entry (at most [`MAX_LOG_ENTRY`] bytes).
    pub fn decode(bytes: &[u8]) -> Result<LogEntry, bkv_wire::CodecError> {
        bkv_wire::decode(bytes, MAX_LOG_ENTRY)
    }
}

/// What one Raft log entry carries: entries made by cores, applied in this order (several when
/// the leader commits concurrent changes together).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entries(pub Vec<LogEntry>);

/// Why a core refused an entry. Every core refuses the same entry the same way: it changes
/// nothing but the state's hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The entry does not open under the fleet's entry key (not made by a core of this fleet, or
    /// changed since), or its authentic body does not decode.
    #[error("the entry does not open under the fleet's entry key: not made by a core of this fleet, or changed since")]
    Forged,
    /// The entry's format is not [`ENTRY_VERSION`].
    #[error("entry format {0} is not supported")]
    Version(u8),
    /// The proposer is not an admitted member at this point of the log.
    #[error("the entry's proposer is not a member of the fleet")]
    NotAMember,
    /// Not numbered above its proposer's last applied entry: replayed, duplicated or reordered.
    #[error("entry {seq} of its proposer comes after its entry {last}: replayed, duplicated or reordered")]
    OutOfOrder {
        /// The entry's sequence number.
        seq: u64,
        /// The sequence number of the proposer's last applied entry.
        last: u64,
    },
}

/// Associated data of an entry: `"bkv/log-entry/v1\0" || u16 BE len || fleet id || proposer ||
/// seq (u64 BE)`.
pub fn entry_aad(fleet_id: &str, proposer: &[u8; 32], seq: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_LABEL.len() + 2 + fleet_id.len() + 40);
    a.extend_from_slice(AAD_LABEL);
    a.extend_from_slice(&(fleet_id.len().min(u16::MAX as usize) as u16).to_be_bytes());
    a.extend_from_slice(fleet_id.as_bytes());
    a.extend_from_slice(proposer);
    a.extend_from_slice(&seq.to_be_bytes());
    a
}

/// An entry's digest: SHA-256 of its encoding (which entry a session waits for).
pub fn entry_digest(entry: &LogEntry) -> [u8; 32] {
    Sha256::digest(bkv_wire::encode(entry)).into()
}

/// The applied-entries chain after `entry` (module docs).
pub fn chain_step(chain: &[u8; 32], entry: &LogEntry) -> [u8; 32] {
    Sha256::new()
        .chain_update(CHAIN_LABEL)
        .chain_update(chain)
        .chain_update(bkv_wire::encode(entry))
        .finalize()
        .into()
}

/// The fleet's entry key: HKDF-SHA256 of the fleet's OPAQUE setup (the secret every core of the
/// fleet holds) with salt `"bkv/log-entry-key/v1"` and the fleet id as info. Only cores hold
/// it; it never leaves them.
pub struct EntryKey {
    key: Zeroizing<[u8; 32]>,
    fleet_id: String,
}

impl std::fmt::Debug for EntryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntryKey(fleet {}, <redacted>)", self.fleet_id)
    }
}

impl EntryKey {
    pub(crate) fn derive(master: &[u8], fleet_id: &str) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA-256's output limit: expand cannot fail.
        let _ = hkdf::Hkdf::<Sha256>::new(Some(b"bkv/log-entry-key/v1"), master)
            .expand(fleet_id.as_bytes(), key.as_mut());
        EntryKey {
            key,
            fleet_id: fleet_id.to_owned(),
        }
    }

    /// A key given outright: the replication layer's tests and benchmarks (no fleet secrets)
    /// and the test vectors. A real fleet's key only ever comes from its secrets.
    pub fn from_bytes(key: [u8; 32], fleet_id: &str) -> Self {
        EntryKey {
            key: Zeroizing::new(key),
            fleet_id: fleet_id.to_owned(),
        }
    }

    /// Makes the entry `proposer` numbers `seq` for `m`, with a fresh random nonce.
    pub fn seal(
        &self,
        proposer: [u8; 32],
        seq: u64,
        rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
        m: &Mutation,
    ) -> LogEntry {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let plain = Zeroizing::new(bkv_wire::encode(m));
        let aad = entry_aad(&self.fleet_id, &proposer, seq);
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        // Encryption with a valid key and in-memory buffers cannot fail.
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        LogEntry {
            version: ENTRY_VERSION,
            proposer,
            seq,
            nonce,
            sealed,
        }
    }

    /// Opens an entry: its mutation, if it was made under this key for exactly its proposer and
    /// sequence number.
    pub fn open(&self, e: &LogEntry) -> Result<Mutation, Refusal> {
        if e.version != ENTRY_VERSION {
            return Err(Refusal::Version(e.version));
        }
        if e.sealed.len() > MAX_ENTRY_BODY + 16 {
            return Err(Refusal::Forged);
        }
        let aad = entry_aad(&self.fleet_id, &e.proposer, e.seq);
        let cipher = XChaCha20Poly1305::new(self.key.as_ref().into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&e.nonce),
                    Payload {
                        msg: &e.sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| Refusal::Forged)?,
        );
        // Authentic bytes that do not decode were made by a core of another release: refused
        // like a forgery (every core reads the same bytes the same way).
        bkv_wire::decode(&plain, MAX_ENTRY_BODY).map_err(|_| Refusal::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn m() -> Mutation {
        Mutation::CountGuess {
            record_id: [7; 32],
            generation: 3,
        }
    }

    #[test]
    fn entries_open_only_unchanged_under_their_key_and_place() {
        let k = EntryKey::from_bytes([1; 32], "fleet-a");
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([2; 32]);
        let e = k.seal([3; 32], 9, &mut rng, &m());
        assert_eq!(k.open(&e).unwrap(), m());
        let other_fleet = EntryKey::from_bytes([1; 32], "fleet-b");
        assert_eq!(other_fleet.open(&e), Err(Refusal::Forged));
        let other_key = EntryKey::from_bytes([4; 32], "fleet-a");
        assert_eq!(other_key.open(&e), Err(Refusal::Forged));
        for tamper in [
            |e: &mut LogEntry| e.seq += 1,
            |e: &mut LogEntry| e.proposer[0] ^= 1,
            |e: &mut LogEntry| e.nonce[0] ^= 1,
            |e: &mut LogEntry| e.sealed[0] ^= 1,
            |e: &mut LogEntry| {
                e.sealed.pop();
            },
        ] {
            let mut t = e.clone();
            tamper(&mut t);
            assert_eq!(k.open(&t), Err(Refusal::Forged));
        }
        let mut v = e.clone();
        v.version = 2;
        assert_eq!(k.open(&v), Err(Refusal::Version(2)));
    }

    #[test]
    fn the_debug_form_shows_no_sealed_bytes_or_key() {
        let k = EntryKey::from_bytes([0xAB; 32], "f");
        assert!(!format!("{k:?}").contains("171"));
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([2; 32]);
        let e = k.seal([3; 32], 1, &mut rng, &m());
        let d = format!("{e:?}");
        assert!(d.contains("seq 1") && d.contains("03030303"), "{d}");
    }
}
