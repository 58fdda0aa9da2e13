//! zstd decompression of a streamed restore, pure Rust (ruzstd: it builds for the browser,
//! where the C library does not). Authenticated plaintext is pushed in as it arrives; the
//! decoder only ever reads from a buffer that holds a whole block (or the stream's true end),
//! so a block split across pieces is never mistaken for a truncated one, and each step yields
//! at most one block of output, so a small input cannot expand into unbounded memory at once.

use super::stream::Fifo;
use crate::error::{ClientError, Result};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// The most a zstd block takes (128 KiB) plus its 3-byte header and a frame's 4-byte checksum.
const BLOCK: usize = 128 * 1024 + 3 + 4;
/// A frame header is at most 18 bytes.
const FRAME_HEADER: usize = 18;

/// A zstd stream decoded as it is pushed in.
pub(super) struct Unzstd {
    dec: FrameDecoder,
    pending: Fifo,
    /// A frame is open (its header read, its end not reached).
    in_frame: bool,
}

fn bad(e: impl std::fmt::Display) -> ClientError {
    ClientError::Storage(format!("the backup's zstd stream is invalid: {e}"))
}

impl Unzstd {
    pub(super) fn new() -> Self {
        Unzstd {
            dec: FrameDecoder::new(),
            pending: Fifo::default(),
            in_frame: false,
        }
    }

    pub(super) fn push(&mut self, compressed: &[u8]) {
        self.pending.push(compressed);
    }

    /// The next decompressed output (empty: nothing more until more is pushed, or, once
    /// `ended`, the end). After the end, it checks that the last frame was complete.
    pub(super) fn next(&mut self, ended: bool) -> Result<Vec<u8>> {
        loop {
            if !self.in_frame {
                if self.pending.len() == 0 {
                    return Ok(Vec::new());
                }
                if self.pending.len() < FRAME_HEADER && !ended {
                    return Ok(Vec::new());
                }
                self.dec.reset(&mut self.pending).map_err(bad)?;
                self.in_frame = true;
            }
            if self.dec.is_finished() {
                let mut out = Vec::new();
                self.dec.collect_to_writer(&mut out).map_err(bad)?;
                self.in_frame = false;
                if !out.is_empty() {
                    return Ok(out);
                }
                continue;
            }
            if self.pending.len() < BLOCK && !ended {
                return Ok(Vec::new());
            }
            if ended && self.pending.len() == 0 {
                return Err(bad("it ends inside a frame"));
            }
            self.dec
                .decode_blocks(&mut self.pending, BlockDecodingStrategy::UptoBlocks(1))
                .map_err(bad)?;
            if let Some(out) = self.dec.collect() {
                if !out.is_empty() {
                    return Ok(out);
                }
            }
        }
    }
}

#[cfg(all(test, feature = "native"))]
mod tests {
    use super::*;

    fn decode(compressed: &[u8], piece: usize) -> Result<Vec<u8>> {
        let mut u = Unzstd::new();
        let mut out = Vec::new();
        for p in compressed.chunks(piece.max(1)) {
            u.push(p);
            loop {
                let o = u.next(false)?;
                if o.is_empty() {
                    break;
                }
                out.extend_from_slice(&o);
            }
        }
        loop {
            let o = u.next(true)?;
            if o.is_empty() {
                break;
            }
            out.extend_from_slice(&o);
        }
        Ok(out)
    }

    #[test]
    fn what_the_native_encoder_writes_decodes_in_any_pieces() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7919) as u8)
            .collect();
        let z = zstd::encode_all(&data[..], crate::archive::ZSTD_LEVEL).unwrap();
        assert!(z.len() < data.len() / 4);
        for piece in [4096, 1 << 20, z.len()] {
            assert!(decode(&z, piece).unwrap() == data, "pieces of {piece}");
        }
        assert!(decode(&zstd::encode_all(&b""[..], 3).unwrap(), 7)
            .unwrap()
            .is_empty());
        // Truncated or garbled: an error, never a short success.
        assert!(decode(&z[..z.len() - 10], 4096).is_err());
        let mut g = z.clone();
        g[z.len() / 2] ^= 0xff;
        assert!(decode(&g, 4096).map(|d| d != data).unwrap_or(true));
    }
}
