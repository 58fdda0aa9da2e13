//! Snapshots streamed from and into the record table, in bounded memory on both sides
//! (issue 13, part 4; issue 28; format in docs/formats.md "Snapshot stream").
//!
//! openraft 0.9 moves a snapshot as a seekable byte stream in pieces (`SnapshotData`), so this is
//! one: the sender reads it from one read transaction of its table, a bucket at a time, and has
//! its core turn each sealed bucket into a frame only cores of the fleet open
//! (`bkv_hsm_core::snapshot`); the receiver spools what arrives to a file and installs from it a
//! bucket at a time into a replacement of its table, its core opening and checking every frame,
//! committed in one transaction with the new summary. The host only ever holds ciphertext: the
//! header (the fleet part, the records' root and the log position, sealed by the sending core)
//! and the frames.
//!
//! The stream (format 2): `"bkvsnap2"`, the header (u32 length, its bytes), then one frame per
//! stored bucket in increasing bucket order (`0x01`, bucket u16, u32 length, the frame), then
//! `0x00`, then zeros up to the length announced at the start. openraft asks for the length
//! first; rather than read everything twice, the sender announces the sum of the *sealed* sizes
//! (each at least its frame's) and pads. The receiving core refuses the install unless the
//! buckets it received hash to the root the header names, so a stream missing a bucket, or mixing
//! buckets of different times, installs nothing.

use super::ReplicationStoreError;
use crate::records::TableView;
use bkv_hsm_core::commitment::MAX_BUCKET_BYTES;
use bkv_hsm_core::snapshot::MAX_HEADER;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Largest snapshot stream accepted from a peer (about ten million users' records); checked
/// before anything is allocated.
pub const MAX_SNAPSHOT: usize = 4 << 30;
/// First bytes of a snapshot stream (name and version).
pub(crate) const STREAM_MAGIC: &[u8; 8] = b"bkvsnap2";
const TAG_END: u8 = 0;
const TAG_BUCKET: u8 = 1;
/// Bytes of a bucket frame besides the bucket: tag, number, length.
const FRAME_HEAD: u64 = 1 + 2 + 4;
/// Largest frame: a bucket's largest encoding and the AEAD tag.
const MAX_FRAME: usize = MAX_BUCKET_BYTES + 16;
/// The receiver's spool reads back in pieces of this size.
pub(crate) const SPOOL_PIECE: usize = 1 << 20;
/// Name prefix of spool files in a data directory (stale ones are removed at start).
pub(crate) const SPOOL_PREFIX: &str = "raft-snapshot-incoming.";

/// openraft's snapshot data for a bkv fleet.
pub enum SnapshotData {
    /// What a built snapshot carries: nothing (openraft 0.9 keeps only a built snapshot's
    /// metadata; the state stays in the table).
    Marker,
    /// A snapshot being sent, read from the table.
    Sending(Box<Sender>),
    /// A snapshot being received into a spool.
    Receiving(Box<Spool>),
}

fn other<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

fn wrong_way() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "snapshot data used the wrong way",
    )
}

/// What turns a bucket's sealed value into a stream frame: the sending core.
pub trait FrameSource: Send + Sync {
    /// The frame of bucket `b` (its sealed value `sealed`) in the stream with `nonce`.
    fn frame(&self, nonce: [u8; 32], b: u16, sealed: &[u8]) -> Result<Vec<u8>, String>;
}

/// Reads a snapshot stream from one view of the table.
pub struct Sender {
    source: std::sync::Arc<dyn FrameSource>,
    nonce: [u8; 32],
    view: TableView,
    head: Vec<u8>,
    /// The announced length (module docs).
    len: u64,
    /// The frame being served and where it starts in the stream.
    frame: Vec<u8>,
    frame_start: u64,
    pos: u64,
    /// The next bucket number to look from (`None`: all buckets sent).
    next: Option<u16>,
    ended: bool,
    seek: Option<u64>,
    /// Where the last piece started: openraft sends a piece again from its start when its
    /// answer is lost, and starting over from the first bucket would cost the whole stream.
    checkpoint: Option<Box<Checkpoint>>,
}

struct Checkpoint {
    frame: Vec<u8>,
    frame_start: u64,
    next: Option<u16>,
    ended: bool,
}

impl Sender {
    /// A stream of the state `view` holds, under the `header` its core sealed for `nonce`.
    pub fn new(
        source: std::sync::Arc<dyn FrameSource>,
        view: TableView,
        header: &[u8],
        nonce: [u8; 32],
    ) -> Result<Self, crate::records::RecordTableError> {
        let mut head = STREAM_MAGIC.to_vec();
        head.extend_from_slice(&(header.len() as u32).to_be_bytes());
        head.extend_from_slice(header);
        let (count, bytes) = view.sizes()?;
        // The sizes are the host's unchecked bookkeeping, read from disk: saturate, never wrap.
        let len = (head.len() as u64 + 1)
            .saturating_add(count.saturating_mul(FRAME_HEAD))
            .saturating_add(bytes);
        Ok(Sender {
            source,
            nonce,
            view,
            frame: head.clone(),
            head,
            len,
            frame_start: 0,
            pos: 0,
            next: Some(0),
            ended: false,
            seek: None,
            checkpoint: None,
        })
    }

    fn restart(&mut self) {
        self.frame = self.head.clone();
        self.frame_start = 0;
        self.next = Some(0);
        self.ended = false;
    }

    /// Remembers where the frame being served starts, for a piece sent again.
    fn save_checkpoint(&mut self) {
        self.checkpoint = Some(Box::new(Checkpoint {
            frame: self.frame.clone(),
            frame_start: self.frame_start,
            next: self.next,
            ended: self.ended,
        }));
    }

    /// Goes back to the checkpoint if it is at or before `pos`, else to the start.
    fn rewind_to(&mut self, pos: u64) {
        match self.checkpoint.take() {
            Some(c) if c.frame_start <= pos => {
                self.frame = c.frame.clone();
                self.frame_start = c.frame_start;
                self.next = c.next;
                self.ended = c.ended;
                self.checkpoint = Some(c);
            }
            _ => self.restart(),
        }
    }

    /// Moves to the next frame; `false` once past the end mark (the padding).
    fn advance(&mut self) -> io::Result<bool> {
        self.frame_start += self.frame.len() as u64;
        self.frame.clear();
        if let Some(from) = self.next {
            match self.view.next_from(from).map_err(other)? {
                Some((b, sealed)) => {
                    let ct = self.source.frame(self.nonce, b, &sealed).map_err(other)?;
                    self.frame.push(TAG_BUCKET);
                    self.frame.extend_from_slice(&b.to_be_bytes());
                    self.frame
                        .extend_from_slice(&(ct.len() as u32).to_be_bytes());
                    self.frame.extend_from_slice(&ct);
                    self.next = b.checked_add(1);
                    return Ok(true);
                }
                None => self.next = None,
            }
        }
        if self.ended {
            return Ok(false);
        }
        self.frame.push(TAG_END);
        self.ended = true;
        Ok(true)
    }

    /// Fills as much of `out` as the stream has from the position on (a whole piece per call:
    /// openraft's reader hands a fresh buffer each time).
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // A position before the frame being served: a piece sent again.
        if self.pos < self.frame_start {
            self.rewind_to(self.pos);
        }
        let mut filled = 0;
        while filled < out.len() {
            let end = self.frame_start + self.frame.len() as u64;
            if self.pos < end {
                let at = (self.pos - self.frame_start) as usize;
                let src = self.frame.get(at..).unwrap_or_default();
                let dst = out.get_mut(filled..).unwrap_or_default();
                let n = src.len().min(dst.len());
                dst.get_mut(..n)
                    .unwrap_or_default()
                    .copy_from_slice(src.get(..n).unwrap_or_default());
                self.pos += n as u64;
                filled += n;
                continue;
            }
            if !self.advance()? {
                // Padding up to the announced length.
                let dst = out.get_mut(filled..).unwrap_or_default();
                let n = (self.len.saturating_sub(self.pos)).min(dst.len() as u64) as usize;
                dst.get_mut(..n).unwrap_or_default().fill(0);
                self.pos += n as u64;
                filled += n;
                break;
            }
        }
        if self.pos > self.len {
            return Err(other(
                "the snapshot is longer than announced (the table's size bookkeeping is wrong)",
            ));
        }
        Ok(filled)
    }

    /// Only moves the position: the next read catches up. A piece starting within the frame
    /// being served is remembered as the place a resend goes back to.
    fn seek(&mut self, to: u64) -> io::Result<u64> {
        if to >= self.frame_start && to < self.frame_start + self.frame.len() as u64 {
            self.save_checkpoint();
        }
        self.pos = to;
        Ok(to)
    }
}

/// The stream from its start (a sender handed over whole, as openraft's storage tests do).
impl Read for Sender {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        Sender::read(self, out)
    }
}

impl Sender {
    /// Reads the stream from its start.
    pub fn rewind(&mut self) -> io::Result<()> {
        self.seek(0).map(|_| ())
    }
}

/// A snapshot being received, written to a file as it arrives. What arrives is ciphertext and
/// a header its core checks; the receiving core refuses anything altered on the way or on disk.
pub struct Spool {
    path: PathBuf,
    file: File,
    /// Bytes received (the write position's limit).
    end: u64,
    /// Where the next write goes.
    at: u64,
    seek: Option<u64>,
}

impl Spool {
    /// A new spool file in `dir`.
    pub fn create(dir: &Path) -> io::Result<Self> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("{SPOOL_PREFIX}{}-{n}-{nanos}", std::process::id());
        let path = dir.join(&name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Spool {
            path,
            file,
            end: 0,
            at: 0,
            seek: None,
        })
    }

    /// Removes stale spools a crash left in `dir` (the directory belongs to this process).
    pub fn remove_stale(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(SPOOL_PREFIX))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.at.saturating_add(data.len() as u64) > MAX_SNAPSHOT as u64 {
            return Err(other("a snapshot over the size limit"));
        }
        self.file.seek(SeekFrom::Start(self.at))?;
        self.file.write_all(data)?;
        self.at += data.len() as u64;
        self.end = self.end.max(self.at);
        Ok(data.len())
    }

    /// Moves the write position to `to`, at most the end of what was received (a piece sent
    /// again); what came after it is dropped.
    fn seek(&mut self, to: u64) -> io::Result<u64> {
        if to > self.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a snapshot piece past what was received",
            ));
        }
        if to < self.end {
            self.file.set_len(to)?;
            self.end = to;
        }
        self.at = to;
        Ok(to)
    }

    /// A reader of the whole stream from the start (the file is removed once it is dropped).
    pub fn into_reader(mut self) -> io::Result<SpoolReader> {
        self.file.sync_data()?;
        self.file.seek(SeekFrom::Start(0))?;
        let file = self.file.try_clone()?;
        Ok(SpoolReader {
            file: io::BufReader::with_capacity(SPOOL_PIECE, file),
            spool: self,
        })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads a received stream back from its spool.
pub struct SpoolReader {
    file: io::BufReader<File>,
    /// Kept so the file is removed when reading is done.
    #[allow(dead_code)]
    spool: Spool,
}

impl Read for SpoolReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.file.read(out)
    }
}

/// What a received stream holds, read frame by frame.
pub(crate) struct StreamReader<R: Read> {
    r: R,
}

/// One frame of a stream after its header: a bucket's frame (ciphertext), or the end.
pub(crate) enum Frame {
    /// A bucket's number and its frame (ciphertext for the core to open).
    Bucket(u16, Vec<u8>),
    /// The end mark: the stream holds nothing more.
    End,
}

fn malformed(what: &str) -> ReplicationStoreError {
    ReplicationStoreError::Malformed(format!("snapshot stream: {what}"))
}

impl<R: Read> StreamReader<R> {
    /// Checks the magic and returns the header (for the core to open) with the reader of the
    /// frames.
    pub(crate) fn open(mut r: R) -> Result<(Vec<u8>, Self), ReplicationStoreError> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .map_err(|_| malformed("too short"))?;
        if &magic != STREAM_MAGIC {
            return Err(malformed("not a bkv snapshot stream"));
        }
        let len = read_u32(&mut r)? as usize;
        if len > MAX_HEADER {
            return Err(malformed("header over the size limit"));
        }
        let mut header = vec![0u8; len];
        r.read_exact(&mut header)
            .map_err(|_| malformed("header cut short"))?;
        Ok((header, StreamReader { r }))
    }

    /// Reads the next frame; a stream cut short or a frame over the size limit is malformed.
    pub(crate) fn next_frame(&mut self) -> Result<Frame, ReplicationStoreError> {
        let mut tag = [0u8; 1];
        self.r
            .read_exact(&mut tag)
            .map_err(|_| malformed("no end mark"))?;
        match tag[0] {
            TAG_END => Ok(Frame::End),
            TAG_BUCKET => {
                let mut b = [0u8; 2];
                self.r
                    .read_exact(&mut b)
                    .map_err(|_| malformed("bucket frame cut short"))?;
                let len = read_u32(&mut self.r)? as usize;
                if len > MAX_FRAME {
                    return Err(malformed("bucket frame over the size limit"));
                }
                let mut ct = vec![0u8; len];
                self.r
                    .read_exact(&mut ct)
                    .map_err(|_| malformed("bucket frame cut short"))?;
                Ok(Frame::Bucket(u16::from_be_bytes(b), ct))
            }
            _ => Err(malformed("unknown frame")),
        }
    }
}

fn read_u32(r: &mut impl Read) -> Result<u32, ReplicationStoreError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(|_| malformed("cut short"))?;
    Ok(u32::from_be_bytes(b))
}

// The async traits openraft needs. Each call does a bounded amount of work (one bucket or one
// megabyte piece) synchronously.

impl tokio::io::AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Self::Sending(s) = self.get_mut() else {
            return Poll::Ready(Err(wrong_way()));
        };
        let out = buf.initialize_unfilled();
        let r = s.read(out).map(|n| buf.advance(n));
        Poll::Ready(r)
    }
}

impl tokio::io::AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Self::Receiving(s) = self.get_mut() else {
            return Poll::Ready(Err(wrong_way()));
        };
        Poll::Ready(s.write(data))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, pos: SeekFrom) -> io::Result<()> {
        match self.get_mut() {
            Self::Sending(s) => {
                let to = match pos {
                    SeekFrom::Start(x) => x,
                    SeekFrom::End(d) => s.len.saturating_add_signed(d),
                    SeekFrom::Current(d) => s.pos.saturating_add_signed(d),
                };
                s.seek = Some(s.seek(to)?);
            }
            Self::Receiving(s) => {
                let end = s.end;
                let to = match pos {
                    SeekFrom::Start(x) => x,
                    SeekFrom::End(d) | SeekFrom::Current(d) => end.saturating_add_signed(d),
                };
                s.seek = Some(s.seek(to)?);
            }
            Self::Marker => return Err(wrong_way()),
        }
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(match self.get_mut() {
            Self::Sending(s) => Ok(s.seek.take().unwrap_or(s.pos)),
            Self::Receiving(s) => Ok(s.seek.take().unwrap_or(s.at)),
            Self::Marker => Ok(0),
        })
    }
}

#[cfg(test)]
mod tests;
