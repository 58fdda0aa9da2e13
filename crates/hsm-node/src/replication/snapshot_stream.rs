//! Snapshots streamed from and into the record table, in bounded memory on both sides
//! (issue 13, part 4; format in docs/formats.md "Snapshot stream").
//!
//! openraft 0.9 moves a snapshot as a seekable byte stream in pieces (`SnapshotData`), so this is
//! one: the sender reads it from one read transaction of its table, a bucket at a time, unsealing
//! each with its own platform (buckets are sealed per node and cannot travel sealed); the receiver
//! seals each megabyte to a spool file as it arrives, and installs from the spool a bucket at a
//! time into a replacement of its table, committed in one transaction with the new summary.
//!
//! The stream: `"bkvsnap1"`, the fleet part (u32 length, `bkv_wire` encoding of the fleet
//! state), then one frame per stored bucket in increasing bucket order (`0x01`, bucket u16,
//! u32 length, the bucket's plain encoding), then `0x00`, then zeros up to the length announced
//! at the start. openraft asks for the length first; rather than unseal everything twice, the
//! sender announces the sum of the *sealed* sizes (each larger than its plain encoding) and pads.
//! The sender checks every bucket it read against the summary's root before it writes the end
//! mark, so a table mixing buckets of different times never yields a complete snapshot.

use super::ReplicationStoreError;
use crate::records::TableView;
use bkv_hsm_core::commitment::{Hash, RecordCommitment, BUCKET_SLOT, MAX_BUCKET_BYTES};
use bkv_hsm_core::sealed_state::MAX_SUMMARY;
use bkv_hsm_core::SharedPlatform;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

/// First bytes of a snapshot stream (name and version).
pub const STREAM_MAGIC: &[u8; 8] = b"bkvsnap1";
const TAG_END: u8 = 0;
const TAG_BUCKET: u8 = 1;
/// Bytes of a bucket frame besides the bucket: tag, number, length.
const FRAME_HEAD: u64 = 1 + 2 + 4;
/// The receiver seals what arrives in pieces of this size.
pub const SPOOL_PIECE: usize = 1 << 20;
/// Most a sealed spool piece may exceed its plaintext by.
const MAX_SEAL_OVERHEAD: usize = 64 * 1024;
const SPOOL_SLOT: &str = "raft-snapshot-spool";
/// Name prefix of spool files in a data directory (stale ones are removed at start).
pub const SPOOL_PREFIX: &str = "raft-snapshot-incoming.";

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

/// Reads a snapshot stream from one view of the table.
pub struct Sender {
    platform: SharedPlatform,
    view: TableView,
    root: Hash,
    head: Vec<u8>,
    /// The announced length (module docs).
    len: u64,
    /// The frame being served and where it starts in the stream.
    frame: Vec<u8>,
    frame_start: u64,
    pos: u64,
    /// The next bucket number to look from (`None`: all buckets sent).
    next: Option<u16>,
    /// The buckets sent so far, to compare with the summary's root before the end mark.
    check: RecordCommitment,
    ended: bool,
    seek: Option<u64>,
    /// Where the last piece started: openraft sends a piece again from its start when its
    /// answer is lost, and starting over from the first bucket would cost the whole stream.
    checkpoint: Option<Box<Checkpoint>>,
}

impl Drop for Sender {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.frame);
        if let Some(c) = self.checkpoint.as_mut() {
            zeroize::Zeroize::zeroize(&mut c.frame);
        }
    }
}

struct Checkpoint {
    frame: Vec<u8>,
    frame_start: u64,
    next: Option<u16>,
    check: RecordCommitment,
    ended: bool,
}

impl Sender {
    /// A stream of the state `view` holds, whose summary says `fleet` (encoded) and `root`.
    pub fn new(
        platform: SharedPlatform,
        view: TableView,
        fleet: &[u8],
        root: Hash,
    ) -> Result<Self, crate::records::RecordTableError> {
        let mut head = STREAM_MAGIC.to_vec();
        head.extend_from_slice(&(fleet.len() as u32).to_be_bytes());
        head.extend_from_slice(fleet);
        let (count, bytes) = view.sizes()?;
        // The sizes are the host's unchecked bookkeeping, read from disk: saturate, never wrap.
        let len = (head.len() as u64 + 1)
            .saturating_add(count.saturating_mul(FRAME_HEAD))
            .saturating_add(bytes);
        Ok(Sender {
            platform,
            view,
            root,
            frame: head.clone(),
            head,
            len,
            frame_start: 0,
            pos: 0,
            next: Some(0),
            // Placement does not enter the root: any key rebuilds it.
            check: RecordCommitment::new([0; 32]),
            ended: false,
            seek: None,
            checkpoint: None,
        })
    }

    fn restart(&mut self) {
        self.frame = self.head.clone();
        self.frame_start = 0;
        self.next = Some(0);
        self.check = self.check.cleared();
        self.ended = false;
    }

    /// Remembers where the frame being served starts, for a piece sent again.
    fn save_checkpoint(&mut self) {
        self.checkpoint = Some(Box::new(Checkpoint {
            frame: self.frame.clone(),
            frame_start: self.frame_start,
            next: self.next,
            check: self.check.clone(),
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
                self.check = c.check.clone();
                self.ended = c.ended;
                self.checkpoint = Some(c);
            }
            _ => self.restart(),
        }
    }

    /// Moves to the next frame; `false` once past the end mark (the padding).
    fn advance(&mut self) -> io::Result<bool> {
        self.frame_start += self.frame.len() as u64;
        // Frames hold plain records: wiped, not just dropped.
        zeroize::Zeroize::zeroize(&mut self.frame);
        if let Some(from) = self.next {
            match self.view.next_from(from).map_err(other)? {
                Some((b, sealed)) => {
                    self.check.load(b, &sealed).map_err(other)?;
                    let plain = self
                        .platform
                        .unseal(BUCKET_SLOT, &b.to_be_bytes(), &sealed)
                        .map_err(other)?;
                    self.frame.push(TAG_BUCKET);
                    self.frame.extend_from_slice(&b.to_be_bytes());
                    self.frame
                        .extend_from_slice(&(plain.len() as u32).to_be_bytes());
                    self.frame.extend_from_slice(&plain);
                    self.next = b.checked_add(1);
                    return Ok(true);
                }
                None => self.next = None,
            }
        }
        if self.ended {
            return Ok(false);
        }
        if !self.check.root_is(&self.root) {
            return Err(other(
                "the record table's buckets do not match its summary: no snapshot",
            ));
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

/// A snapshot being received: sealed to a file a megabyte at a time.
pub struct Spool {
    platform: SharedPlatform,
    path: PathBuf,
    file: File,
    /// Bound into every piece's label with its index: pieces of another spool do not fit.
    label: Vec<u8>,
    /// Received bytes not sealed yet, and where they start in the stream.
    buf: Vec<u8>,
    buf_start: u64,
    /// Each sealed piece: where it ends in the file and in the stream.
    pieces: Vec<(u64, u64)>,
    seek: Option<u64>,
}

impl Spool {
    /// A new spool file in `dir`.
    pub fn create(dir: &Path, platform: SharedPlatform) -> io::Result<Self> {
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
            platform,
            path,
            file,
            label: name.into_bytes(),
            buf: Vec::new(),
            buf_start: 0,
            pieces: Vec::new(),
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

    fn piece_label(&self, i: usize) -> Vec<u8> {
        let mut l = self.label.clone();
        l.push(0);
        l.extend_from_slice(&(i as u64).to_be_bytes());
        l
    }

    fn file_end(&self) -> u64 {
        self.pieces.last().map(|p| p.0).unwrap_or(0)
    }

    /// Seals `plain` as the next piece.
    fn seal_piece(&mut self, plain: &[u8]) -> io::Result<()> {
        let sealed = self
            .platform
            .seal(SPOOL_SLOT, &self.piece_label(self.pieces.len()), plain)
            .map_err(other)?;
        let at = self.file_end();
        self.file.seek(SeekFrom::Start(at))?;
        self.file.write_all(&(sealed.len() as u32).to_be_bytes())?;
        self.file.write_all(&sealed)?;
        let stream_end = self.pieces.last().map(|p| p.1).unwrap_or(0) + plain.len() as u64;
        self.pieces.push((at + 4 + sealed.len() as u64, stream_end));
        Ok(())
    }

    fn read_piece(&mut self, i: usize) -> io::Result<zeroize::Zeroizing<Vec<u8>>> {
        let start = if i == 0 {
            0
        } else {
            self.pieces.get(i - 1).map(|p| p.0).unwrap_or(0)
        };
        self.file.seek(SeekFrom::Start(start))?;
        let label = self.piece_label(i);
        read_sealed(&mut self.file, &*self.platform, &label)
    }

    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= SPOOL_PIECE {
            let rest = self.buf.split_off(SPOOL_PIECE);
            let mut piece = std::mem::replace(&mut self.buf, rest);
            let sealed = self.seal_piece(&piece);
            self.buf_start += piece.len() as u64;
            zeroize::Zeroize::zeroize(&mut piece);
            sealed?;
        }
        Ok(data.len())
    }

    /// Moves the write position to `to`, at most the end of what was received; a rewind into
    /// sealed pieces (a piece sent again) reopens the piece it falls in.
    fn seek(&mut self, to: u64) -> io::Result<u64> {
        let end = self.buf_start + self.buf.len() as u64;
        if to > end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a snapshot piece past what was received",
            ));
        }
        if to < self.buf_start {
            let i = self.pieces.partition_point(|p| p.1 <= to);
            let piece_start = if i == 0 {
                0
            } else {
                self.pieces.get(i - 1).map(|p| p.1).unwrap_or(0)
            };
            let plain = self.read_piece(i)?;
            let keep = (to - piece_start) as usize;
            self.buf = plain.get(..keep).unwrap_or_default().to_vec();
            self.buf_start = piece_start;
            let file_start = if i == 0 {
                0
            } else {
                self.pieces.get(i - 1).map(|p| p.0).unwrap_or(0)
            };
            self.pieces.truncate(i);
            self.file.set_len(file_start)?;
        } else {
            self.buf.truncate((to - self.buf_start) as usize);
        }
        Ok(to)
    }

    /// Seals what is left and returns a reader of the whole stream, every piece checked (the
    /// spool file is the untrusted host's: a piece dropped, reordered or altered is refused).
    pub fn into_reader(mut self) -> io::Result<SpoolReader> {
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() {
            self.seal_piece(&rest)?;
        }
        self.file.sync_data()?;
        self.file.seek(SeekFrom::Start(0))?;
        let file = self.file.try_clone()?;
        Ok(SpoolReader {
            file: io::BufReader::with_capacity(SPOOL_PIECE + 4096, file),
            platform: self.platform.clone(),
            label: self.label.clone(),
            count: self.pieces.len(),
            next: 0,
            piece: zeroize::Zeroizing::new(Vec::new()),
            at: 0,
            spool: self,
        })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_sealed(
    r: &mut impl Read,
    platform: &dyn bkv_hsm_core::Platform,
    label: &[u8],
) -> io::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > SPOOL_PIECE + MAX_SEAL_OVERHEAD {
        return Err(other("a spool piece over the size limit"));
    }
    let mut sealed = vec![0u8; len];
    r.read_exact(&mut sealed)?;
    platform.unseal(SPOOL_SLOT, label, &sealed).map_err(other)
}

/// Reads a received stream back from its spool, a piece at a time.
pub struct SpoolReader {
    file: io::BufReader<File>,
    platform: SharedPlatform,
    label: Vec<u8>,
    count: usize,
    next: usize,
    piece: zeroize::Zeroizing<Vec<u8>>,
    at: usize,
    /// Kept so the file is removed when reading is done.
    #[allow(dead_code)]
    spool: Spool,
}

impl Read for SpoolReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.piece.len() {
            if self.next >= self.count {
                return Ok(0);
            }
            let mut l = self.label.clone();
            l.push(0);
            l.extend_from_slice(&(self.next as u64).to_be_bytes());
            self.piece = read_sealed(&mut self.file, &*self.platform, &l)?;
            self.next += 1;
            self.at = 0;
        }
        let src = self.piece.get(self.at..).unwrap_or_default();
        let n = src.len().min(out.len());
        out.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(src.get(..n).unwrap_or_default());
        self.at += n;
        Ok(n)
    }
}

/// What a received stream holds, read frame by frame.
pub struct StreamReader<R: Read> {
    r: R,
}

/// One frame of a stream after its fleet part.
pub enum Frame {
    Bucket(u16, zeroize::Zeroizing<Vec<u8>>),
    End,
}

fn malformed(what: &str) -> ReplicationStoreError {
    ReplicationStoreError::Malformed(format!("snapshot stream: {what}"))
}

impl<R: Read> StreamReader<R> {
    /// Checks the magic and returns the fleet part (encoded) with the reader of the frames.
    pub fn open(mut r: R) -> Result<(Vec<u8>, Self), ReplicationStoreError> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .map_err(|_| malformed("too short"))?;
        if &magic != STREAM_MAGIC {
            return Err(malformed("not a bkv snapshot stream"));
        }
        let len = read_u32(&mut r)? as usize;
        if len > MAX_SUMMARY {
            return Err(malformed("fleet part over the size limit"));
        }
        let mut fleet = vec![0u8; len];
        r.read_exact(&mut fleet)
            .map_err(|_| malformed("fleet part cut short"))?;
        Ok((fleet, StreamReader { r }))
    }

    pub fn next_frame(&mut self) -> Result<Frame, ReplicationStoreError> {
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
                if len > MAX_BUCKET_BYTES {
                    return Err(malformed("bucket over the size limit"));
                }
                let mut plain = zeroize::Zeroizing::new(vec![0u8; len]);
                self.r
                    .read_exact(&mut plain)
                    .map_err(|_| malformed("bucket frame cut short"))?;
                Ok(Frame::Bucket(u16::from_be_bytes(b), plain))
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
                let end = s.buf_start + s.buf.len() as u64;
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
            Self::Receiving(s) => Ok(s.seek.take().unwrap_or(s.buf_start + s.buf.len() as u64)),
            Self::Marker => Ok(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bkv_hsm_core::MemoryPlatform;

    fn platform() -> SharedPlatform {
        MemoryPlatform::shared([3; 32])
    }

    /// Pieces arrive out of order only as a resend of an earlier one: the spool takes the
    /// rewind, within its buffer and into sealed pieces, and reads back exactly the stream.
    #[test]
    fn a_spool_reads_back_what_was_written_through_rewinds() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::create(dir.path(), platform()).unwrap();
        let data: Vec<u8> = (0..(3 * SPOOL_PIECE + 12345)).map(|i| i as u8).collect();
        let chunk = 700_001;
        let mut off = 0;
        while off < data.len() {
            let end = (off + chunk).min(data.len());
            s.seek(off as u64).unwrap();
            s.write(&data[off..end]).unwrap();
            // Every second piece is sent again (its answer was lost).
            if (off / chunk) % 2 == 1 {
                s.seek(off as u64).unwrap();
                s.write(&data[off..end]).unwrap();
            }
            off = end;
        }
        // A piece past what was received is refused.
        assert!(s.seek(data.len() as u64 + 1).is_err());
        let path = s.path.clone();
        let mut back = Vec::new();
        s.into_reader().unwrap().read_to_end(&mut back).unwrap();
        assert!(back == data);
        assert!(!path.exists(), "the spool is removed once read");
    }

    /// A table of `n` sealed records, as a node's state machine leaves it.
    fn table_with(
        dir: &Path,
        p: &SharedPlatform,
        n: u32,
    ) -> (
        std::sync::Arc<crate::records::RecordTable>,
        bkv_hsm_core::SealedState,
    ) {
        use bkv_hsm_core::state::{Credential, Mutation, Pending};
        let table = std::sync::Arc::new(
            crate::records::RecordTable::open(&dir.join("records.redb"), 4 << 20).unwrap(),
        );
        let mut s = bkv_hsm_core::SealedState::new(p.clone(), [7; 32]);
        s.restore(
            Box::new(crate::records::TableHost(table.clone(), Default::default())),
            None,
        )
        .unwrap();
        for i in 0..n {
            let record_id = bkv_wire::record_id(&format!("user-{i}"));
            let pending = Pending {
                credential: Credential {
                    opaque_record: vec![1; 192],
                    wrapped_key: vec![2; 80],
                    guess_limit: 10,
                    confirm_hash: [3; 32],
                },
                replaces: None,
            };
            s.apply(&Mutation::StorePending { record_id, pending })
                .unwrap();
        }
        let summary = s.seal_summary(b"position").unwrap();
        table.write(&s.take_writes(), Some(&summary), true).unwrap();
        (table, s)
    }

    fn sender(table: &crate::records::RecordTable, p: &SharedPlatform) -> Sender {
        let view = table.view().unwrap();
        let s =
            bkv_hsm_core::sealed_state::read_summary(p, &view.summary().unwrap().unwrap()).unwrap();
        Sender::new(p.clone(), view, &s.state.encode(), s.root).unwrap()
    }

    /// What openraft does with a snapshot, with pieces sent again (their answers lost): the
    /// stream read in pieces, rewinds included, is the stream read straight, as long as it
    /// announced; spooled on another node and installed there, it gives the same records.
    #[test]
    fn a_streamed_snapshot_survives_resent_pieces_and_installs_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = platform();
        let (table, mut source) = table_with(dir.path(), &p, 3000);
        let mut straight = Vec::new();
        sender(&table, &p).read_to_end(&mut straight).unwrap();
        let mut s = sender(&table, &p);
        assert_eq!(straight.len() as u64, s.len);

        let (chunk, mut off, mut pieces) = (40_000usize, 0usize, Vec::new());
        let mut resent = 0;
        while off < straight.len() {
            let mut buf = vec![0u8; chunk.min(straight.len() - off)];
            s.seek(off as u64).unwrap();
            let n = s.read(&mut buf).unwrap();
            // Every third piece goes again, from its start.
            if (off / chunk) % 3 == 1 && resent < 20 {
                resent += 1;
                s.seek(off as u64).unwrap();
                let again = s.read(&mut buf).unwrap();
                assert_eq!(again, n);
            }
            pieces.extend_from_slice(&buf[..n]);
            off += n;
        }
        assert!(pieces == straight);

        // Received on another node: spooled, then installed bucket by bucket.
        let other_dir = tempfile::tempdir().unwrap();
        let q = MemoryPlatform::shared([4; 32]);
        let mut spool = Spool::create(other_dir.path(), q.clone()).unwrap();
        for piece in straight.chunks(SPOOL_PIECE / 3 + 7) {
            spool.write(piece).unwrap();
        }
        let (fleet, mut frames) = StreamReader::open(spool.into_reader().unwrap()).unwrap();
        let fleet = bkv_hsm_core::State::decode(&fleet, MAX_SUMMARY).unwrap();
        let target_table = std::sync::Arc::new(
            crate::records::RecordTable::open(&other_dir.path().join("t.redb"), 4 << 20).unwrap(),
        );
        let mut target = bkv_hsm_core::SealedState::new(q, [7; 32]);
        target
            .restore(
                Box::new(crate::records::TableHost(
                    target_table.clone(),
                    Default::default(),
                )),
                None,
            )
            .unwrap();
        let mut installer = target.installer(fleet).unwrap();
        let replacement = target_table.begin_replace().unwrap();
        let mut n = 0;
        while let Frame::Bucket(b, plain) = frames.next_frame().unwrap() {
            replacement
                .put(b, &installer.add(b, &plain).unwrap())
                .unwrap();
            n += 1;
        }
        assert!(n > 2000, "{n} buckets");
        replacement
            .commit(&installer.seal_summary(b"position").unwrap())
            .unwrap();
        target.finish_install(installer);
        assert_eq!(target.live_records(), 3000);
        assert_eq!(target.export().unwrap(), source.export().unwrap());
        let _ = source.take_writes();
    }

    /// A table whose buckets do not add up to its summary's root yields no complete stream.
    #[test]
    fn a_table_mixing_buckets_of_different_times_sends_no_end_mark() {
        let dir = tempfile::tempdir().unwrap();
        let p = platform();
        let (table, _) = table_with(dir.path(), &p, 50);
        let first = table.view().unwrap().next_from(0).unwrap().unwrap();
        // One bucket removed behind the summary's back.
        table.write(&[(first.0, None)], None, true).unwrap();
        let mut out = Vec::new();
        assert!(sender(&table, &p).read_to_end(&mut out).is_err());
    }

    #[test]
    fn a_spool_piece_altered_on_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::create(dir.path(), platform()).unwrap();
        s.write(&vec![7u8; 2 * SPOOL_PIECE]).unwrap();
        let mut r = s.into_reader().unwrap();
        // Flip a byte of the first piece's ciphertext behind the reader's back.
        let f = r.spool.file.try_clone().unwrap();
        let mut f = f;
        f.seek(SeekFrom::Start(100)).unwrap();
        f.write_all(&[0xFF]).unwrap();
        let mut back = Vec::new();
        assert!(r.read_to_end(&mut back).is_err());
    }
}
