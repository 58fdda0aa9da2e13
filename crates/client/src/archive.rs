//! Turning a file or directory tree into a backup stream and back, with
//! bounded memory. Restores write into a private (`0700`) sibling directory
//! with an unpredictable name first and rename into place only after the
//! final chunk authenticated, so a tampered or truncated backup never leaves
//! a partial result at the requested path, and a killed restore never leaves
//! plaintext that group or others can read. Leftovers of a killed restore are
//! removed by the next restore to the same path.

use crate::backup::{Compression, Content, DecryptReader, EncryptWriter, Header};
use crate::error::{ClientError, Result};
use crate::keys::BackupKey;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// zstd level: fast enough to stay far above storage speed on one core.
pub(crate) const ZSTD_LEVEL: i32 = 3;
/// zstd compression threads besides the caller's.
const ZSTD_WORKERS: u32 = 2;

/// How a backup is written (`BackupStore`'s uploads and the CLI's `backup create`).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Compress with zstd: always a directory, a file only if a sample shrinks by at least 2 %.
    pub compress: bool,
    /// Plaintext bytes per encrypted chunk (readers accept [`crate::backup::MIN_CHUNK_SIZE`] to
    /// [`crate::MAX_CHUNK_SIZE`]).
    pub chunk_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compress: true,
            chunk_size: crate::backup::DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Counts bytes passing through and reports them.
pub(crate) struct Progress<T> {
    inner: T,
    done: u64,
    report: Box<dyn FnMut(u64) + Send>,
}

impl<T> Progress<T> {
    /// Wraps `inner`; `report` gets the running byte total after every read or write.
    pub(crate) fn new(inner: T, report: Box<dyn FnMut(u64) + Send>) -> Self {
        Progress {
            inner,
            done: 0,
            report,
        }
    }
}

impl<T: Read> Read for Progress<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.report)(self.done);
        Ok(n)
    }
}

impl<T: Write> Write for Progress<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done += n as u64;
        (self.report)(self.done);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Total size of the regular files under `path` (for progress display).
pub fn source_size(path: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_file() => m.len(),
            Ok(m) if m.is_dir() => fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            _ => 0,
        }
    }
    walk(path)
}

/// Writes a backup of `source` (a file or a directory) into `out`.
pub(crate) fn write_backup<W: Write>(
    source: &Path,
    key: &BackupKey,
    opts: Options,
    out: W,
    report: Box<dyn FnMut(u64) + Send>,
) -> Result<(Header, W)> {
    let meta = fs::metadata(source)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
    let content = if meta.is_dir() {
        Content::Tar
    } else if meta.is_file() {
        Content::File
    } else {
        return Err(ClientError::Io(io::Error::other(format!(
            "{} is neither a file nor a directory",
            source.display()
        ))));
    };
    let compress = opts.compress && (content == Content::Tar || compressible(source)?);
    let compression = if compress {
        Compression::Zstd
    } else {
        Compression::None
    };
    let header = Header::new(compression, content, opts.chunk_size);
    let enc = EncryptWriter::new(out, key, &header)?;
    let enc = if compress {
        let mut z = zstd::stream::write::Encoder::new(enc, ZSTD_LEVEL)?;
        // Compression on zstd's own worker threads: the second core compresses while this one
        // reads, encrypts and writes (a single-threaded zstd took about a third of this thread).
        z.multithread(ZSTD_WORKERS)?;
        write_plain(source, content, &mut z, report)?;
        z.finish()?
    } else {
        let mut enc = enc;
        write_plain(source, content, &mut enc, report)?;
        enc
    };
    Ok((header, enc.finish()?))
}

/// Bytes read from each of three places in a file to judge whether it compresses.
const SAMPLE: usize = 128 * 1024;

/// Whether zstd would gain anything on a file: level 1 on samples from its start, middle and
/// end must save at least 2 %. Media and already-compressed files (most of a phone's backup)
/// do not, and compressing them cost about 40 % of a backup's CPU for nothing (perf of a
/// 1 GiB random file: zstd's block search and its copies of the incompressible literals).
fn compressible(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; SAMPLE];
    let (mut raw, mut packed) = (0usize, 0usize);
    let mid = (len / 2).saturating_sub(SAMPLE as u64 / 2);
    let end = len.saturating_sub(SAMPLE as u64);
    let mut places = vec![0, mid, end];
    places.dedup();
    for at in places {
        let n = f.read_at(&mut buf, at)?;
        let sample = buf.get(..n).unwrap_or_default();
        raw += n;
        packed += zstd::bulk::compress(sample, 1)?.len();
    }
    // Small files: compressing them is cheap whatever they hold.
    Ok(len <= 3 * SAMPLE as u64 || packed * 100 < raw * 98)
}

fn write_plain(
    source: &Path,
    content: Content,
    w: &mut dyn Write,
    report: Box<dyn FnMut(u64) + Send>,
) -> Result<()> {
    match content {
        Content::File => {
            let f = fs::File::open(source)?;
            let mut r = Progress::new(io::BufReader::with_capacity(256 * 1024, f), report);
            io::copy(&mut r, w)?;
        }
        Content::Tar => {
            let mut b = tar::Builder::new(Progress::new(w, report));
            // Store symlinks as links; never follow them out of the tree.
            b.follow_symlinks(false);
            b.mode(tar::HeaderMode::Complete);
            b.append_dir_all(".", source)?;
            b.into_inner()?.flush()?;
        }
    }
    Ok(())
}

/// Re-encrypts a backup stream from `old` to `new` without the plaintext
/// touching disk (key rotation). The compressed payload is copied as is;
/// the new backup gets a fresh id and nonce prefix but keeps its creation time.
pub(crate) fn reencrypt<R: Read, W: Write>(
    input: R,
    old: &BackupKey,
    new: &BackupKey,
    out: W,
) -> Result<(Header, W)> {
    let mut dec = DecryptReader::new(input, old)?;
    let src = dec.header().clone();
    let mut header = Header::new(src.compression, src.content, src.chunk_size);
    header.created_unix = src.created_unix;
    let mut enc = EncryptWriter::new(out, new, &header)?;
    io::copy(&mut dec, &mut enc)?;
    // The whole source authenticated, including its final chunk.
    dec.finish()?;
    Ok((header, enc.finish()?))
}

/// What a restore produced.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Whether one file or a directory tree was restored.
    pub content: Content,
    /// Where it was restored: the requested output path.
    pub path: PathBuf,
}

/// Prefix of the private staging directory of a restore to `out`:
/// `.<name>.bkv-partial-` (a random suffix follows).
fn partial_prefix(out: &Path) -> std::ffi::OsString {
    let mut name = std::ffi::OsString::from(".");
    name.push(out.file_name().unwrap_or_default());
    name.push(".bkv-partial-");
    name
}

/// Removes what killed restores to `out` left behind (their staging
/// directories); returns how many.
pub(crate) fn remove_leftovers(out: &Path) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let prefix = partial_prefix(out);
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        if e.file_name().as_bytes().starts_with(prefix.as_bytes()) {
            // Not a symlink: only what a restore created is removed.
            if e.file_type().is_ok_and(|t| t.is_dir()) && fs::remove_dir_all(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// Creates the staging directory of a restore to `out`: `0700`, created
/// exclusively under an unpredictable name in the target directory (same
/// file system, so the final rename is atomic).
fn create_staging(out: &Path) -> io::Result<PathBuf> {
    use rand::RngCore;
    use std::os::unix::fs::DirBuilderExt;
    let mut suffix = [0u8; 12];
    crate::random::OsRng.fill_bytes(&mut suffix);
    let mut name = partial_prefix(out);
    name.push(hex::encode(suffix));
    let path = out.with_file_name(name);
    // `create` fails if anything exists there (no following of a planted link).
    fs::DirBuilder::new().mode(0o700).create(&path)?;
    Ok(path)
}

/// A file writer that has the disk write back what it was given while the other core works
/// (decrypting a restore, encrypting a local backup): after
/// every [`WRITE_BEHIND`] bytes a second thread flushes the file so far (`fdatasync` on a clone of
/// the handle), so the final `fsync` waits for the last piece only instead of the whole file.
/// Without it the disk sits idle until the end and then writes everything.
pub(crate) struct WriteBehind {
    file: fs::File,
    since_flush: u64,
    flush: Option<std::sync::mpsc::SyncSender<()>>,
    flusher: Option<std::thread::JoinHandle<io::Result<()>>>,
}

const WRITE_BEHIND: u64 = 32 << 20;

impl WriteBehind {
    pub(crate) fn new(file: fs::File) -> io::Result<Self> {
        let clone = file.try_clone()?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let flusher = std::thread::Builder::new()
            .name("restore-flush".into())
            .spawn(move || {
                for () in rx {
                    clone.sync_data()?;
                }
                Ok(())
            })?;
        Ok(WriteBehind {
            file,
            since_flush: 0,
            flush: Some(tx),
            flusher: Some(flusher),
        })
    }

    /// Stops the flusher (reporting its error, if any) and makes the whole file durable.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        drop(self.flush.take());
        if let Some(t) = self.flusher.take() {
            t.join()
                .map_err(|_| io::Error::other("restore flush thread panicked"))??;
        }
        self.file.sync_all()
    }
}

impl io::Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.since_flush += n as u64;
        if self.since_flush >= WRITE_BEHIND {
            self.since_flush = 0;
            if let Some(tx) = &self.flush {
                // A flush still running covers this too; never wait for it here.
                let _ = tx.try_send(());
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Plaintext pieces decrypted ahead of the writer, and their size.
const READ_AHEAD: usize = 3;
const PIECE: usize = 1 << 20;
type Piece = zeroize::Zeroizing<Vec<u8>>;

/// The restore's second core: a scoped thread reads and decrypts (authenticates) the backup
/// in 1 MiB pieces while this thread decompresses and writes. Plaintext crosses only once
/// authenticated, as from [`DecryptReader`] itself; an empty piece is the end of the stream
/// (its last chunk authenticated), so a thread that stopped early is never taken for the end.
/// Pieces are zeroized when dropped (whole capacity), wherever that happens: here, in the
/// channels, or on the decrypting thread.
struct ReadAhead {
    rx: std::sync::mpsc::Receiver<io::Result<Piece>>,
    /// Emptied pieces go back to the decrypting thread to be refilled.
    spent: std::sync::mpsc::SyncSender<Piece>,
    cur: Piece,
    pos: usize,
    end: bool,
}

impl ReadAhead {
    fn spawn<'s, R: Read + Send + 's>(
        scope: &'s std::thread::Scope<'s, '_>,
        mut dec: DecryptReader<R>,
    ) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
        let (spent, refill) = std::sync::mpsc::sync_channel::<Piece>(READ_AHEAD + 1);
        std::thread::Builder::new()
            .name("restore-decrypt".into())
            .spawn_scoped(scope, move || loop {
                let mut piece = refill.try_recv().unwrap_or_default();
                piece.resize(PIECE, 0);
                let r = crate::backup::read_full(&mut dec, &mut piece[..]).map(|n| {
                    piece.truncate(n);
                    piece
                });
                let stop = !matches!(&r, Ok(p) if !p.is_empty());
                // The writer gone (it failed) or the stream over: stop.
                if tx.send(r).is_err() || stop {
                    return;
                }
            })?;
        Ok(ReadAhead {
            rx,
            spent,
            cur: Piece::default(),
            pos: 0,
            end: false,
        })
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.end {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(piece)) => {
                    self.end = piece.is_empty();
                    let old = std::mem::replace(&mut self.cur, piece);
                    let _ = self.spent.try_send(old);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the decrypting thread stopped")),
            }
        }
        let avail = self.cur.get(self.pos..).unwrap_or_default();
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// Restores a backup stream into `out` (which must not exist yet). Trees
/// get the modes recorded in the backup (without set-id bits); a single
/// file is `0600`.
pub(crate) fn read_backup<R: Read + Send>(
    input: R,
    key: &BackupKey,
    out: &Path,
    report: Box<dyn FnMut(u64) + Send>,
) -> Result<Restored> {
    if out.exists() {
        return Err(ClientError::Io(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists; choose a new --out path", out.display()),
        )));
    }
    let removed = remove_leftovers(out);
    if removed > 0 {
        tracing::info!(removed, "removed what an interrupted restore left behind");
    }
    let dec = DecryptReader::new(input, key)?;
    let header = dec.header().clone();
    let staging = create_staging(out)?;
    let inner = staging.join("restored");
    let result = std::thread::scope(|scope| -> Result<()> {
        let mut dec = ReadAhead::spawn(scope, dec)?;
        {
            let plain: Box<dyn Read + '_> = match header.compression {
                Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(&mut dec)?),
                Compression::None => Box::new(&mut dec),
            };
            let mut plain = Progress::new(plain, report);
            match header.content {
                Content::File => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&inner)?;
                    // io::copy fills a BufWriter's own buffer: 1 MiB reads and writes, not 8 KiB.
                    let mut w = io::BufWriter::with_capacity(1 << 20, WriteBehind::new(f)?);
                    io::copy(&mut plain, &mut w)?;
                    w.into_inner().map_err(|e| e.into_error())?.finish()?;
                }
                Content::Tar => {
                    fs::create_dir(&inner)?;
                    let mut a = tar::Archive::new(&mut plain);
                    a.set_preserve_permissions(true);
                    // Recorded modes, never set-user/group-id or sticky bits.
                    a.set_mask(0o7000);
                    // `unpack` refuses entries that would land outside `inner`.
                    a.unpack(&inner)?;
                    io::copy(&mut plain, &mut io::sink())?;
                }
            }
        }
        // The worst moment to be killed: all plaintext staged, not yet moved.
        crate::crash_point("restore-staged");
        // Authenticate through the final chunk before anything is renamed: the end of the
        // read-ahead is the decrypting reader's end, reached only past the last chunk's tag.
        io::copy(&mut dec, &mut io::sink())?;
        fs::rename(&inner, out)?;
        Ok(())
    });
    let _ = fs::remove_dir_all(&staging);
    if let Err(e) = result {
        return Err(match e {
            ClientError::Io(io) => match crate::backup::format_error(&io) {
                Some(f) => ClientError::Format(f.clone()),
                None => ClientError::Io(io),
            },
            other => other,
        });
    }
    Ok(Restored {
        content: header.content,
        path: out.to_owned(),
    })
}

#[cfg(test)]
mod tests;
