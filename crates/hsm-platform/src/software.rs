//! The software platform: sealing key, signing key and counter in files in
//! a directory on the node's host.
//!
//! INSECURE by design and documented as such: whoever can read that
//! directory has the sealing key, and a host that rolls the directory back
//! resets the counter. It exists for development, tests and CI; a production
//! node uses a token ([`crate::pkcs11`]) behind the same trait.

use crate::{write_private_file, PlatformOpenError};
use bkv_hsm_core::seal::{seal_xchacha, unseal_xchacha, XNONCE_LEN};
use bkv_hsm_core::{Counter, Platform, PlatformError, SealSlot};
use bkv_wire::admin::{PlatformDescription, PlatformKind};
use ed25519_dalek::Signer;
use rand_core::{OsRng, RngCore};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zeroize::Zeroizing;

/// A node's platform in files of one directory (INSECURE: for development and tests).
pub struct SoftwarePlatform {
    dir: PathBuf,
    sealing: Zeroizing<[u8; 32]>,
    signing: ed25519_dalek::SigningKey,
    /// The two counters' files (`counter`, the raft log's; `core-counter`, the core's), each
    /// behind its own lock to serialise its updates within the process.
    counters: [Mutex<PathBuf>; 2],
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PlatformOpenError + '_ {
    move |source| PlatformOpenError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads a 32-byte key file, or creates it with fresh randomness when `create` is set and no
/// file exists (`bkv-private-files`: any other read error replaces nothing).
fn key_file(path: &Path, create: bool) -> Result<Zeroizing<[u8; 32]>, PlatformOpenError> {
    use bkv_private_files::KeyFileError;
    let r = if create {
        bkv_private_files::load_or_create_key(path)
    } else {
        bkv_private_files::read_key(path)
    };
    r.map_err(|e| match e {
        KeyFileError::Missing { .. } => {
            PlatformOpenError::Missing(format!("{} is missing", path.display()))
        }
        KeyFileError::Length { .. } | KeyFileError::Mode { .. } => {
            PlatformOpenError::Corrupt(e.to_string())
        }
        KeyFileError::Read { source, .. } | KeyFileError::Write { source, .. } => io(path)(source),
        KeyFileError::Random(r) => PlatformOpenError::Corrupt(format!("randomness: {r}")),
    })
}

impl SoftwarePlatform {
    /// Opens the platform in `dir`. With `create`, missing keys are made;
    /// without, a missing key is an error (the node's sealed data could not
    /// be opened without it).
    pub fn open(dir: &Path, create: bool) -> Result<Self, PlatformOpenError> {
        if create {
            use std::os::unix::fs::PermissionsExt;
            fs::create_dir_all(dir).map_err(io(dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        }
        let sealing = key_file(&dir.join("sealing.key"), create)?;
        let signing_seed = key_file(&dir.join("signing.key"), create)?;
        Ok(SoftwarePlatform {
            dir: dir.to_owned(),
            sealing,
            signing: ed25519_dalek::SigningKey::from_bytes(&signing_seed),
            counters: [
                Mutex::new(dir.join("counter")),
                Mutex::new(dir.join("core-counter")),
            ],
        })
    }

    fn counter(&self, c: Counter) -> Result<std::sync::MutexGuard<'_, PathBuf>, PlatformError> {
        let i = match c {
            Counter::Raft => 0,
            Counter::Core(_) => 1,
        };
        self.counters
            .get(i)
            .ok_or_else(|| PlatformError::Counter("no such counter".into()))?
            .lock()
            .map_err(|_| PlatformError::Counter("lock poisoned".into()))
    }

    fn read_counter(path: &Path) -> Result<u64, PlatformError> {
        match fs::read_to_string(path) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|_| PlatformError::Counter("counter file is corrupt".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(PlatformError::Counter(e.to_string())),
        }
    }
}

impl Platform for SoftwarePlatform {
    fn describe(&self) -> PlatformDescription {
        PlatformDescription {
            kind: PlatformKind::Software,
            token: format!("software keys in {} (INSECURE)", self.dir.display()),
        }
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<(), PlatformError> {
        OsRng
            .try_fill_bytes(out)
            .map_err(|e| PlatformError::Random(e.to_string()))
    }

    fn now_unix_secs(&self) -> u64 {
        crate::unix_now()
    }

    fn seal(
        &self,
        slot: SealSlot,
        label: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, PlatformError> {
        let mut nonce = [0u8; XNONCE_LEN];
        self.fill_random(&mut nonce)?;
        Ok(seal_xchacha(
            &self.sealing,
            nonce,
            slot.name(),
            label,
            plaintext,
        ))
    }

    fn unseal(
        &self,
        slot: SealSlot,
        label: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, PlatformError> {
        unseal_xchacha(&self.sealing, slot.name(), label, sealed)
    }

    fn signing_public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], PlatformError> {
        Ok(self.signing.sign(message).to_bytes())
    }

    fn counter_read(&self, c: Counter) -> Result<u64, PlatformError> {
        Self::read_counter(&self.counter(c)?)
    }

    fn counter_advance_to(&self, c: Counter, value: u64) -> Result<(), PlatformError> {
        let path = self.counter(c)?;
        if value <= Self::read_counter(&path)? {
            return Ok(());
        }
        let err = |e: std::io::Error| PlatformError::Counter(e.to_string());
        // Fixed width, rewritten in place with one fdatasync: a 21-byte write
        // inside the first sector does not tear, and this runs on every
        // durable Raft write. (The file is created the safe way once.)
        let text = format!("{value:020}\n");
        if !path.exists() {
            return write_private_file(&path, text.as_bytes()).map_err(err);
        }
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&*path)
            .map_err(err)?;
        f.write_all_at(text.as_bytes(), 0).map_err(err)?;
        f.sync_data().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_counter_only_grows_and_a_missing_key_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = SoftwarePlatform::open(d.path(), true).unwrap();
        let core = Counter::CORE_FOR_TESTS;
        assert_eq!(p.counter_read(Counter::Raft).unwrap(), 0);
        p.counter_advance_to(Counter::Raft, 5).unwrap();
        p.counter_advance_to(Counter::Raft, 3).unwrap();
        assert_eq!(p.counter_read(Counter::Raft).unwrap(), 5);
        // The two counters are apart.
        assert_eq!(p.counter_read(core).unwrap(), 0);
        p.counter_advance_to(core, 9).unwrap();
        assert_eq!(p.counter_read(Counter::Raft).unwrap(), 5);
        let s = p.seal(SealSlot::RaftState, b"", b"x").unwrap();
        let sig = p.sign(b"m").unwrap();
        let p2 = SoftwarePlatform::open(d.path(), false).unwrap();
        assert_eq!(p2.counter_read(Counter::Raft).unwrap(), 5);
        assert_eq!(p2.counter_read(core).unwrap(), 9);
        assert_eq!(
            p2.unseal(SealSlot::RaftState, b"", &s).unwrap().as_slice(),
            b"x"
        );
        assert_eq!(p2.signing_public_key(), p.signing_public_key());
        assert_eq!(p2.sign(b"m").unwrap(), sig);
        std::fs::remove_file(d.path().join("sealing.key")).unwrap();
        assert!(matches!(
            SoftwarePlatform::open(d.path(), false),
            Err(PlatformOpenError::Missing(_))
        ));
        std::fs::write(d.path().join("sealing.key"), b"short").unwrap();
        assert!(matches!(
            SoftwarePlatform::open(d.path(), true),
            Err(PlatformOpenError::Corrupt(_))
        ));
    }
}
