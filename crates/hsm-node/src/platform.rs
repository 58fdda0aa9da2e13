//! The software platform: keys and counter in files on the node's disk.
//!
//! INSECURE by design and documented as such: whoever can read the node's disk
//! can read the sealing key. It exists for development, tests and CI; a
//! production node uses a hardware platform (PKCS#11) behind the same trait.

use bkv_hsm_core::{Platform, PlatformError, SealingKey};
use rand_core::{OsRng, RngCore};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct SoftwarePlatform {
    key: SealingKey,
    counter_path: PathBuf,
    rng: OsRng,
}

#[derive(Debug, thiserror::Error)]
pub enum SoftwarePlatformError {
    #[error("platform directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("platform key file {0} is corrupt (expected 32 bytes)")]
    BadKey(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SoftwarePlatformError + '_ {
    move |source| SoftwarePlatformError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename), mode 0600.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl SoftwarePlatform {
    /// Opens (or creates) the platform under `dir`.
    pub fn open(dir: &Path) -> Result<Self, SoftwarePlatformError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let key_path = dir.join("sealing.key");
        let key = if key_path.exists() {
            let bytes = zeroize::Zeroizing::new(fs::read(&key_path).map_err(io_err(&key_path))?);
            let arr: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| SoftwarePlatformError::BadKey(key_path.clone()))?;
            SealingKey::from_bytes(arr)
        } else {
            let mut k = zeroize::Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(k.as_mut());
            write_private_file(&key_path, k.as_ref()).map_err(io_err(&key_path))?;
            SealingKey::from_bytes(*k)
        };
        Ok(SoftwarePlatform {
            key,
            counter_path: dir.join("counter"),
            rng: OsRng,
        })
    }
}

/// The platform counter file, shared with the replication log for rollback
/// detection. (It lives in the platform directory, the stand-in for the
/// HSM: keep that directory off the disk whose rollback it must detect.)
pub struct FileCounter {
    path: PathBuf,
}

impl FileCounter {
    fn read_value(&self) -> Result<u64, String> {
        match fs::read_to_string(&self.path) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|_| "counter file is corrupt".to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl crate::replication::RollbackCounter for FileCounter {
    fn read(&self) -> Result<u64, String> {
        self.read_value()
    }
    fn advance_to(&self, v: u64) -> Result<(), String> {
        if v <= self.read_value()? {
            return Ok(());
        }
        // Fixed width, rewritten in place with one fdatasync: a 21-byte write
        // inside the first sector does not tear, and this runs on every
        // durable Raft write. (The file is created the safe way once.)
        let text = format!("{v:020}\n");
        if !self.path.exists() {
            return write_private_file(&self.path, text.as_bytes()).map_err(|e| e.to_string());
        }
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| e.to_string())?;
        f.write_all_at(text.as_bytes(), 0)
            .map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())
    }
}

impl SoftwarePlatform {
    pub fn rollback_counter(&self) -> FileCounter {
        FileCounter {
            path: self.counter_path.clone(),
        }
    }
}

impl Platform for SoftwarePlatform {
    type Rng = OsRng;
    fn rng(&mut self) -> &mut OsRng {
        &mut self.rng
    }
    fn now_unix_secs(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
    fn sealing_key(&self) -> &SealingKey {
        &self.key
    }
    fn counter(&self) -> Result<u64, PlatformError> {
        match fs::read_to_string(&self.counter_path) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|_| PlatformError::Counter("counter file is corrupt".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(PlatformError::Counter(e.to_string())),
        }
    }
    fn increment_counter(&mut self) -> Result<u64, PlatformError> {
        let next = self.counter()? + 1;
        write_private_file(&self.counter_path, next.to_string().as_bytes())
            .map_err(|e| PlatformError::Counter(e.to_string()))?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_persists_and_counter_increments() {
        let d = tempfile::tempdir().unwrap();
        let mut p = SoftwarePlatform::open(d.path()).unwrap();
        assert_eq!(p.counter().unwrap(), 0);
        assert_eq!(p.increment_counter().unwrap(), 1);
        let k1 = format!("{:?}", p.sealing_key());
        assert!(k1.contains("redacted"));
        let s = bkv_hsm_core::seal::seal(p.sealing_key(), &mut OsRng, "t", b"", b"x");
        let p2 = SoftwarePlatform::open(d.path()).unwrap();
        assert_eq!(p2.counter().unwrap(), 1);
        assert_eq!(
            bkv_hsm_core::seal::unseal(p2.sealing_key(), "t", b"", &s).unwrap(),
            b"x"
        );
    }
}
