//! Snapshots between cores (snapshot stream format 2, docs/formats.md "Snapshot stream"): what a
//! member's core sends a member that is behind, so that the hosts carrying it see ciphertext
//! only and the receiving core installs nothing a core did not send.
//!
//! The sending core draws a fresh 32-byte stream nonce and derives two keys from the fleet's
//! snapshot key and that nonce (HKDF-SHA256, salt = nonce, info `"header"` / `"frames"`):
//! - the **header** carries the state's fleet part (members, generations, the proposers'
//!   numbers and the entry chain), the records' commitment root and the host's log position it
//!   was summarised at, encrypted and authenticated (ChaCha20-Poly1305, associated data
//!   `"bkv/snapshot/v2\0" || u16 len || fleet id || nonce`): a host can neither read nor forge
//!   nor alter it;
//! - each **frame** carries one bucket's plain encoding, encrypted under the frame key with the
//!   bucket number as nonce and in the associated data (`"bkv/snapshot-frame/v2\0" || nonce ||
//!   bucket`): a frame of another stream, or moved to another bucket, does not open.
//!
//! The receiving core ([`crate::sealed_state::SealedState::open_snapshot`]) opens the header,
//! refuses a snapshot older than its own state (fewer entries applied) or of another history
//! (as many, another chain), takes buckets only in increasing order, reseals each with its own
//! platform, and commits the install only once the buckets it received hash to the root the
//! header names (`crate::commitment`: roots cover contents, the same on every member). So a
//! dropped, duplicated, replaced or stale frame, or a whole stale or forged snapshot, is refused
//! and changes nothing.
//!
//! The fleet's snapshot key is derived from the fleet secrets, so every member's core can open
//! what any member sends; openraft builds a snapshot before it knows where it goes, and a member
//! admitted after the sender's last summary would be left out of a stream sealed to the members
//! it names.

use crate::state::State;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The header format written now.
pub const SNAPSHOT_VERSION: u8 = 2;
/// Largest encoded header (the fleet part is bounded like a sealed summary).
pub const MAX_HEADER: usize = crate::sealed_state::MAX_SUMMARY + 4096;
const HEADER_AAD: &[u8] = b"bkv/snapshot/v2\0";
const FRAME_AAD: &[u8] = b"bkv/snapshot-frame/v2\0";

/// Why a snapshot (its header or a frame) was refused; a refused snapshot installs nothing.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The header does not open under the fleet's snapshot key: not sent by a core of this fleet,
    /// or changed since.
    #[error("the snapshot header does not open under the fleet's snapshot key: not sent by a core of this fleet, or changed since")]
    Forged,
    /// The header's format is not [`SNAPSHOT_VERSION`].
    #[error("snapshot format {0} is not supported")]
    Version(u8),
    /// The header, or the state inside it, does not decode (or carries records).
    #[error("the snapshot header is malformed")]
    Malformed,
    /// The snapshot applied fewer entries than this core's state: installing it would roll back.
    #[error("the snapshot is older than this core's state ({theirs} entries applied, this core {ours}): refused")]
    Stale {
        /// Entries the snapshot's state applied.
        theirs: u64,
        /// Entries this core's state applied.
        ours: u64,
    },
    /// The snapshot applied as many entries as this core's state, but another chain of them.
    #[error("the snapshot is of another history (as many entries as this core applied, another chain): refused")]
    OtherHistory,
    /// The frame of this bucket does not open: of another stream, moved from another bucket, or
    /// changed.
    #[error("frame of bucket {0} does not open: not of this stream, or changed")]
    Frame(u16),
}

/// What a sending core hands its host to start a stream: the sealed header, the log position
/// its summary names (public: the host tells Raft) and the stream nonce the frames are made with.
pub struct StreamStart {
    /// The sealed header, sent first.
    pub header: Vec<u8>,
    /// The encoded position of the state the header describes.
    pub position: Vec<u8>,
    /// The stream nonce ([`crate::Core::snapshot_frame`]).
    pub nonce: [u8; 32],
}

/// The fleet's snapshot key: HKDF-SHA256 of the fleet's OPAQUE setup with salt
/// `"bkv/snapshot-key/v1"` and the fleet id as info. Only cores hold it.
pub struct SnapshotKey {
    key: Zeroizing<[u8; 32]>,
    fleet_id: String,
}

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotKey(fleet {}, <redacted>)", self.fleet_id)
    }
}

/// The header's encrypted contents.
#[derive(Serialize, Deserialize)]
struct Body {
    /// The host's log position the state was summarised at (opaque to the core).
    position: Vec<u8>,
    root: crate::commitment::Hash,
    /// The fleet part, state encoding ([`State::encode`]).
    state: Vec<u8>,
}

/// A snapshot header as it travels (format 2).
#[derive(Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Header format ([`SNAPSHOT_VERSION`]).
    pub version: u8,
    /// The stream nonce both stream keys are derived with (and bound to in the associated data).
    pub nonce: [u8; 32],
    /// The encrypted body: log position, records root and the state's fleet part.
    pub sealed: Vec<u8>,
}

/// One stream's frame key.
pub struct FrameKey {
    cipher: ChaCha20Poly1305,
    nonce: [u8; 32],
}

/// What an opened header says.
pub struct OpenedHeader {
    /// The host's log position the state was summarised at (opaque to the core).
    pub position: Vec<u8>,
    /// The records' commitment root the received buckets must hash to.
    pub root: crate::commitment::Hash,
    /// The state's fleet part (members, generations, proposers, chain), without records.
    pub state: State,
    /// The key that opens this stream's frames.
    pub frames: FrameKey,
}

impl SnapshotKey {
    pub(crate) fn derive(master: &[u8], fleet_id: &str) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA-256's output limit: expand cannot fail.
        let _ = hkdf::Hkdf::<Sha256>::new(Some(b"bkv/snapshot-key/v1"), master)
            .expand(fleet_id.as_bytes(), key.as_mut());
        SnapshotKey {
            key,
            fleet_id: fleet_id.to_owned(),
        }
    }

    /// A key given outright (the replication layer's tests and benchmarks; test vectors).
    pub fn from_bytes(key: [u8; 32], fleet_id: &str) -> Self {
        SnapshotKey {
            key: Zeroizing::new(key),
            fleet_id: fleet_id.to_owned(),
        }
    }

    fn stream_key(&self, nonce: &[u8; 32], info: &[u8]) -> ChaCha20Poly1305 {
        let mut k = Zeroizing::new([0u8; 32]);
        let _ = hkdf::Hkdf::<Sha256>::new(Some(nonce), self.key.as_ref()).expand(info, k.as_mut());
        ChaCha20Poly1305::new(k.as_ref().into())
    }

    fn header_aad(&self, nonce: &[u8; 32]) -> Vec<u8> {
        let mut a = HEADER_AAD.to_vec();
        a.extend_from_slice(&(self.fleet_id.len().min(u16::MAX as usize) as u16).to_be_bytes());
        a.extend_from_slice(self.fleet_id.as_bytes());
        a.extend_from_slice(nonce);
        a
    }

    /// The frame key of the stream with `nonce`.
    pub fn frames(&self, nonce: [u8; 32]) -> FrameKey {
        FrameKey {
            cipher: self.stream_key(&nonce, b"frames"),
            nonce,
        }
    }

    /// A header for the fleet part `state` (encoded) with records `root` at `position` (a core
    /// makes it from its sealed summary, `SealedState::snapshot_header`; public for the test
    /// vectors).
    pub fn seal_header(
        &self,
        nonce: [u8; 32],
        state: Vec<u8>,
        root: crate::commitment::Hash,
        position: Vec<u8>,
    ) -> Vec<u8> {
        let body = bkv_wire::encode(&Body {
            position,
            root,
            state,
        });
        let sealed = self
            .stream_key(&nonce, b"header")
            .encrypt(
                chacha20poly1305::Nonce::from_slice(&[0u8; 12]),
                Payload {
                    msg: &body,
                    aad: &self.header_aad(&nonce),
                },
            )
            // Encryption with a valid key and in-memory buffers cannot fail.
            .unwrap_or_default();
        bkv_wire::encode(&SnapshotHeader {
            version: SNAPSHOT_VERSION,
            nonce,
            sealed,
        })
    }

    /// Opens a header a core of this fleet sealed.
    pub fn open_header(&self, bytes: &[u8]) -> Result<OpenedHeader, SnapshotError> {
        let h: SnapshotHeader =
            bkv_wire::decode(bytes, MAX_HEADER).map_err(|_| SnapshotError::Malformed)?;
        if h.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(h.version));
        }
        let body = self
            .stream_key(&h.nonce, b"header")
            .decrypt(
                chacha20poly1305::Nonce::from_slice(&[0u8; 12]),
                Payload {
                    msg: &h.sealed,
                    aad: &self.header_aad(&h.nonce),
                },
            )
            .map_err(|_| SnapshotError::Forged)?;
        let body: Body =
            bkv_wire::decode(&body, MAX_HEADER).map_err(|_| SnapshotError::Malformed)?;
        let state = State::decode(&body.state, MAX_HEADER).map_err(|_| SnapshotError::Malformed)?;
        if !state.records.is_empty() {
            return Err(SnapshotError::Malformed);
        }
        Ok(OpenedHeader {
            position: body.position,
            root: body.root,
            state,
            frames: self.frames(h.nonce),
        })
    }
}

fn frame_nonce(b: u16) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[10..].copy_from_slice(&b.to_be_bytes());
    n
}

impl FrameKey {
    fn aad(&self, b: u16) -> Vec<u8> {
        let mut a = FRAME_AAD.to_vec();
        a.extend_from_slice(&self.nonce);
        a.extend_from_slice(&b.to_be_bytes());
        a
    }

    /// Bucket `b`'s plain encoding, encrypted for the stream.
    pub fn seal(&self, b: u16, plain: &[u8]) -> Vec<u8> {
        self.cipher
            .encrypt(
                chacha20poly1305::Nonce::from_slice(&frame_nonce(b)),
                Payload {
                    msg: plain,
                    aad: &self.aad(b),
                },
            )
            .unwrap_or_default()
    }

    /// A frame of this stream for bucket `b`, opened.
    pub fn open(&self, b: u16, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, SnapshotError> {
        self.cipher
            .decrypt(
                chacha20poly1305::Nonce::from_slice(&frame_nonce(b)),
                Payload {
                    msg: ct,
                    aad: &self.aad(b),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SnapshotError::Frame(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_frames_open_only_unchanged_and_in_place() {
        let k = SnapshotKey::from_bytes([1; 32], "f");
        let state = State::default();
        let h = k.seal_header([2; 32], state.encode(), [3; 32], b"pos".to_vec());
        let o = k.open_header(&h).unwrap();
        assert_eq!(
            (o.position.as_slice(), o.root),
            (b"pos".as_slice(), [3; 32])
        );
        assert!(matches!(
            SnapshotKey::from_bytes([1; 32], "g").open_header(&h),
            Err(SnapshotError::Forged)
        ));
        let mut bad = h.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(k.open_header(&bad), Err(SnapshotError::Forged)));
        let ct = o.frames.seal(7, b"bucket");
        assert_eq!(o.frames.open(7, &ct).unwrap().as_slice(), b"bucket");
        assert!(o.frames.open(8, &ct).is_err());
        assert!(k.frames([9; 32]).open(7, &ct).is_err());
    }
}
