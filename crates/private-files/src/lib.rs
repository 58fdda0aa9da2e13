//! Private files and key files, written and read one careful way (issue 30, item 1).
//!
//! A signing key that is briefly unreadable (permissions, a disk error, a directory in its place)
//! must never be replaced by a new one: a replaced auditor key forks the log's identity, a
//! replaced platform key loses every sealed value. So a key is created only when its file does
//! not exist ([`std::io::ErrorKind::NotFound`]); any other read error is an error, and the file
//! is left as it is. Files are written whole or not at all: a fresh temporary file beside the
//! target (mode 0600, created exclusively), fsynced, renamed over the target, and the directory
//! fsynced so the rename survives a crash. A key file readable by group or others is refused on
//! read, as ssh refuses such a private key.

#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Why a key file could not be used. Every variant leaves the file as it was.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file exists but could not be read.
    #[error("read {path} (not replaced: fix the file or its permissions): {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
    /// The file holds another number of bytes than a key of this kind.
    #[error("{path} is not a key file: expected {expected} bytes, found {found}")]
    Length {
        /// The key file.
        path: PathBuf,
        /// The key's length.
        expected: usize,
        /// The file's length.
        found: u64,
    },
    /// Group or others may read the file.
    #[error("{path} has mode {mode:o}: a key file must be readable by its owner only (chmod 600)")]
    Mode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// There is no file, and the caller did not ask for one to be made.
    #[error("{path} does not exist")]
    Missing {
        /// The key file.
        path: PathBuf,
    },
    /// A new key could not be written.
    #[error("write {path}: {source}")]
    Write {
        /// The key file.
        path: PathBuf,
        /// What writing it said.
        source: std::io::Error,
    },
    /// The system's randomness failed while making a new key.
    #[error("randomness for a new key: {0}")]
    Random(String),
}

/// Writes `bytes` to `path` whole or not at all, readable by the owner only: a temporary file
/// beside it (created exclusively, mode 0600), fsync, rename, fsync of the directory. Creates
/// the parent directory. Readers of `path` see the old or the new contents, never a mix.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.to_owned()
        }
        None => PathBuf::from("."),
    };
    let tmp = temp_beside(path);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(&dir)?.sync_all()
}

/// A temporary name beside `path` no other writer uses (process id and a random suffix).
fn temp_beside(path: &Path) -> PathBuf {
    let mut suffix = [0u8; 8];
    // A fixed suffix only risks a collision (then `create_new` fails cleanly), never a mix.
    let _ = rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut suffix);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        u64::from_be_bytes(suffix)
    ));
    PathBuf::from(name)
}

/// Reads the `N`-byte key at `path`: it must exist, be exactly `N` bytes and be readable by
/// its owner only.
pub fn read_key<const N: usize>(path: &Path) -> Result<Zeroizing<[u8; N]>, KeyFileError> {
    match read_key_if_present(path)? {
        Some(k) => Ok(k),
        None => Err(KeyFileError::Missing {
            path: path.to_owned(),
        }),
    }
}

/// Reads the `N`-byte key at `path`, or creates it from fresh randomness when (and only when)
/// no file exists there. Any other failure to read is an error and replaces nothing.
pub fn load_or_create_key<const N: usize>(path: &Path) -> Result<Zeroizing<[u8; N]>, KeyFileError> {
    if let Some(k) = read_key_if_present(path)? {
        return Ok(k);
    }
    let mut k = Zeroizing::new([0u8; N]);
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, k.as_mut())
        .map_err(|e| KeyFileError::Random(e.to_string()))?;
    write_private_file(path, k.as_ref()).map_err(|source| KeyFileError::Write {
        path: path.to_owned(),
        source,
    })?;
    Ok(k)
}

/// The key at `path`, `None` only if no file exists there.
fn read_key_if_present<const N: usize>(
    path: &Path,
) -> Result<Option<Zeroizing<[u8; N]>>, KeyFileError> {
    let read_err = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    if !meta.is_file() {
        return Err(read_err(std::io::Error::other("not a regular file")));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(KeyFileError::Mode {
            path: path.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    // The length is checked before reading, so a large file is never read into memory.
    if meta.len() != N as u64 {
        return Err(KeyFileError::Length {
            path: path.to_owned(),
            expected: N,
            found: meta.len(),
        });
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(read_err)?);
    let mut k = Zeroizing::new([0u8; N]);
    if bytes.len() != N {
        return Err(KeyFileError::Length {
            path: path.to_owned(),
            expected: N,
            found: bytes.len() as u64,
        });
    }
    k.copy_from_slice(&bytes);
    Ok(Some(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.key");
        let k1 = load_or_create_key::<32>(&path).unwrap();
        let k2 = load_or_create_key::<32>(&path).unwrap();
        assert_eq!(*k1, *k2);
        assert_eq!(*read_key::<32>(&path).unwrap(), *k1);
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Nothing but the key is left in the directory.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("signing.key")]);
    }

    /// A key file that cannot be read, is open to others, or has the wrong length is an error
    /// that names the file, and the key is never replaced.
    #[test]
    fn an_unreadable_key_is_an_error_and_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let key = *load_or_create_key::<32>(&path).unwrap();

        // Readable by others: refused, unchanged.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_key::<32>(&path).unwrap_err();
        assert!(matches!(e, KeyFileError::Mode { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("signing.key"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), key);

        // Unreadable (a directory where the key should be: even root cannot read it as a
        // file): an error, and nothing is created in its place.
        let blocked = dir.path().join("blocked.key");
        std::fs::create_dir(&blocked).unwrap();
        let e = load_or_create_key::<32>(&blocked).unwrap_err();
        assert!(matches!(e, KeyFileError::Read { .. }), "{e}");
        assert!(e.to_string().contains("not replaced"), "{e}");
        assert!(blocked.is_dir());

        // Truncated: refused, not regenerated.
        std::fs::write(&path, &key[..31]).unwrap();
        let e = load_or_create_key::<32>(&path).unwrap_err();
        assert!(matches!(e, KeyFileError::Length { found: 31, .. }), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), &key[..31]);

        // Missing, when it must exist.
        let e = read_key::<32>(&dir.path().join("absent.key")).unwrap_err();
        assert!(matches!(e, KeyFileError::Missing { .. }), "{e}");
    }

    #[test]
    fn a_private_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_private_file(&path, b"first").unwrap();
        write_private_file(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o777,
            0o600,
            "owner only"
        );
    }
}
