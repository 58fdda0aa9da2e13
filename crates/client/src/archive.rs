//! Turning a file or directory tree into a backup stream and back, with
//! bounded memory. Restores write to a temporary sibling first and rename into
//! place only after the final chunk authenticated, so a tampered or truncated
//! backup never leaves a partial result at the requested path.

use crate::backup::{Compression, Content, DecryptReader, EncryptWriter, Header};
use crate::error::{ClientError, Result};
use crate::keys::BackupKey;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// zstd level: fast enough to stay far above storage speed on one core.
pub const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub compress: bool,
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
pub struct Progress<T> {
    inner: T,
    done: u64,
    report: Box<dyn FnMut(u64) + Send>,
}

impl<T> Progress<T> {
    pub fn new(inner: T, report: Box<dyn FnMut(u64) + Send>) -> Self {
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
pub fn write_backup<W: Write>(
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
    let compression = if opts.compress {
        Compression::Zstd
    } else {
        Compression::None
    };
    let header = Header::new(compression, content, opts.chunk_size);
    let enc = EncryptWriter::new(out, key, &header)?;
    let enc = if opts.compress {
        let mut z = zstd::stream::write::Encoder::new(enc, ZSTD_LEVEL)?;
        write_plain(source, content, &mut z, report)?;
        z.finish()?
    } else {
        let mut enc = enc;
        write_plain(source, content, &mut enc, report)?;
        enc
    };
    Ok((header, enc.finish()?))
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
pub fn reencrypt<R: Read, W: Write>(
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
    pub content: Content,
    pub path: PathBuf,
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".bkv-partial-{}", std::process::id()));
    out.with_file_name(name)
}

/// Restores a backup stream into `out` (which must not exist yet).
pub fn read_backup<R: Read>(
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
    let mut dec = DecryptReader::new(input, key)?;
    let header = dec.header().clone();
    let tmp = partial_path(out);
    let result = (|| -> Result<()> {
        {
            let plain: Box<dyn Read + '_> = match header.compression {
                Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(&mut dec)?),
                Compression::None => Box::new(&mut dec),
            };
            let mut plain = Progress::new(plain, report);
            match header.content {
                Content::File => {
                    let mut f = fs::File::create(&tmp)?;
                    io::copy(&mut plain, &mut f)?;
                    f.sync_all()?;
                }
                Content::Tar => {
                    fs::create_dir_all(&tmp)?;
                    let mut a = tar::Archive::new(&mut plain);
                    a.set_preserve_permissions(true);
                    // `unpack` refuses entries that would land outside `tmp`.
                    a.unpack(&tmp)?;
                    io::copy(&mut plain, &mut io::sink())?;
                }
            }
        }
        // Authenticate through the final chunk before anything is renamed.
        dec.finish()?;
        fs::rename(&tmp, out)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_dir_all(&tmp);
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
mod tests {
    use super::*;

    fn noop() -> Box<dyn FnMut(u64) + Send> {
        Box::new(|_| {})
    }

    #[test]
    fn directory_roundtrip_and_tamper_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        for i in 0..50 {
            fs::write(src.join(format!("a/b/f{i}")), format!("file {i}").repeat(i)).unwrap();
        }
        fs::write(src.join("top"), b"x").unwrap();
        let k = BackupKey::generate();
        for compress in [true, false] {
            let opts = Options {
                compress,
                chunk_size: crate::backup::MIN_CHUNK_SIZE,
            };
            let (_, ct) = write_backup(&src, &k, opts, Vec::new(), noop()).unwrap();
            let out = d.path().join(format!("out-{compress}"));
            read_backup(ct.as_slice(), &k, &out, noop()).unwrap();
            for i in 0..50 {
                assert_eq!(
                    fs::read(out.join(format!("a/b/f{i}"))).unwrap(),
                    format!("file {i}").repeat(i).into_bytes()
                );
            }
            let mut bad = ct.clone();
            let n = bad.len();
            bad[n / 2] ^= 4;
            let out2 = d.path().join(format!("bad-{compress}"));
            assert!(read_backup(bad.as_slice(), &k, &out2, noop()).is_err());
            assert!(!out2.exists());
            assert!(fs::read_dir(d.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial")));
        }
    }

    #[test]
    fn truncated_file_backup_leaves_no_output() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("f");
        fs::write(&src, vec![9u8; 100_000]).unwrap();
        let k = BackupKey::generate();
        let opts = Options {
            compress: false,
            chunk_size: crate::backup::MIN_CHUNK_SIZE,
        };
        let (_, ct) = write_backup(&src, &k, opts, Vec::new(), noop()).unwrap();
        let out = d.path().join("out");
        let err = read_backup(&ct[..ct.len() - 5000], &k, &out, noop()).unwrap_err();
        assert!(matches!(err, ClientError::Format(_)), "{err}");
        assert!(!out.exists());
        read_backup(ct.as_slice(), &k, &out, noop()).unwrap();
        assert_eq!(fs::read(&out).unwrap(), vec![9u8; 100_000]);
    }
}
