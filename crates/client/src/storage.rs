//! Backup storage through an object store ([`BlobStore`]): a local directory by default, or any S3-compatible
//! service (`s3://bucket/prefix`, with credentials, region and endpoint from the standard AWS
//! environment variables).
//!
//! Layout under the store root, per user (`<u>` = first 32 hex digits of
//! SHA-256("bkv/storage/v1" || user id)):
//!
//! ```text
//! users/<u>/backups/<created_ms>-<key_id>-<random>.bkv  encrypted backups
//! users/<u>/latest.json       {"version":1,"object":...,"size":...,"created_unix":...,"key_id":...}
//! users/<u>/protectors/<key_id>.bin                     protector manifest for that backup key
//! ```
//!
//! `key_id` (32 hex digits) names the backup key an object belongs to, so a
//! restore finds the backups its key opens even while a key rotation is half
//! done. A new backup is uploaded under a fresh name; only after the upload
//! completed is `latest.json` switched to it and the older backups deleted. So
//! the last good backup survives any failure of a new one: on S3 a backup is a multipart
//! upload, which leaves no object until it completes, and `latest.json` is replaced only if it
//! is still the one read just before (a conditional write), so two devices switching it at once
//! cannot silently undo each other.

use crate::error::{ClientError, Result};
use crate::keys::BackupKey;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
#[cfg(feature = "native")]
use std::path::PathBuf;
use std::sync::Arc;

mod blob;
mod http_store;
#[cfg(feature = "native")]
mod local;
#[cfg(feature = "native")]
mod native;
#[cfg(feature = "native")]
mod object;
#[cfg(feature = "native")]
mod pipe;
mod stream;
mod unzstd;
pub use blob::{
    BlobStore, Download, MultipartUpload, ObjectMeta, PutMode, StoreError, StoreResult,
};
pub use http_store::HttpStore;
#[cfg(feature = "native")]
pub use native::open_store;
pub use stream::{Chunks, Output};

/// Upload part size (S3 needs at least 5 MiB per part).
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Bytes buffered between the encryptor and the uploader.
#[cfg(feature = "native")]
const PIPE_DEPTH: usize = 4;
#[cfg(feature = "native")]
const PIPE_PIECE: usize = 1024 * 1024;
const MAX_LATEST_JSON: usize = 4096;

fn storage_err(e: StoreError) -> ClientError {
    ClientError::Store(e)
}

/// The content of `latest.json`, naming the current backup; also how a found backup is described.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latest {
    /// Format of `latest.json`; only 1 is accepted.
    pub version: u32,
    /// Object name under `backups/`: `<created_ms>-<key_id>-<random>.bkv`.
    pub object: String,
    /// Size of the stored (encrypted) object in bytes.
    pub size: u64,
    /// Creation time (header), in seconds since the Unix epoch; 0 for a backup found by listing.
    pub created_unix: u64,
    /// Hex id of the backup key the object is encrypted under.
    pub key_id: String,
}

impl Latest {
    /// An uploaded backup object as `latest.json` names it.
    fn uploaded(object: String, key_id: String, size: u64, header: &crate::backup::Header) -> Self {
        Latest {
            version: 1,
            object,
            size,
            created_unix: header.created_unix,
            key_id,
        }
    }
}

/// Most manifests read at once (one per backup key; more than two exist only
/// when rotations were interrupted).
const MAX_MANIFESTS: usize = 16;

/// A backup object as listed in storage.
#[derive(Debug, Clone, Serialize)]
pub struct BackupObject {
    /// Object name under `backups/`.
    pub name: String,
    /// Size of the stored object in bytes.
    pub size: u64,
    /// When the store last modified it (RFC 3339).
    pub last_modified: String,
}

/// One user's area in an object store: backups, `latest.json`, manifests (see the module docs).
pub struct BackupStore {
    store: Arc<dyn BlobStore>,
    prefix: String,
    /// The directory of a local store: restores read backups straight from the file (the
    /// object store's stream would hand over 8 KiB pieces between threads).
    #[cfg(feature = "native")]
    local_root: Option<PathBuf>,
}

impl BackupStore {
    /// The area of `user_id` in `store` (`users/<u>/`).
    pub fn with_store(store: Arc<dyn BlobStore>, user_id: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"bkv/storage/v1\0");
        h.update(user_id.as_bytes());
        let digest = hex::encode(h.finalize());
        let prefix = format!("users/{}", &digest[..32]);
        BackupStore {
            store,
            prefix,
            #[cfg(feature = "native")]
            local_root: None,
        }
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.prefix)
    }

    /// A fresh object name for a backup under `key` (`<created_ms>-<key_id>-<random>.bkv`: the
    /// name is chosen before the header exists, so its id is random), its key id and its path.
    fn new_object(&self, key: &BackupKey) -> (String, String, String) {
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut crate::random::OsRng, &mut id);
        let created_ms = crate::clock::now_ms();
        let key_id = hex::encode(crate::slots::key_id(key));
        let name = format!("{created_ms:016}-{key_id}-{}.bkv", hex::encode(id));
        let path = self.path(&format!("backups/{name}"));
        (name, key_id, path)
    }

    /// Makes the uploaded `latest` the current backup, then deletes older backups and the data
    /// of other backup keys.
    async fn switch_to(&self, latest: &Latest, key: &BackupKey) -> Result<()> {
        self.set_latest(latest).await?;
        let kid = crate::slots::key_id(key);
        // Keep other keys' manifests when this key has none: their slots may
        // be the only way to a key a half-done rotation left behind.
        let keep_manifests = self.manifest(&kid).await?.is_none();
        for old in self.list().await? {
            if old.name != latest.object {
                let _ = self
                    .store
                    .delete(&self.path(&format!("backups/{}", old.name)))
                    .await;
            }
        }
        if !keep_manifests {
            self.delete_other_keys(&kid).await?;
        }
        Ok(())
    }

    /// The backup `latest.json` names (`None`: no `latest.json`); an error if the name is invalid.
    pub async fn latest(&self) -> Result<Option<Latest>> {
        let Some(b) = self
            .get_limited(&self.path("latest.json"), MAX_LATEST_JSON)
            .await?
        else {
            return Ok(None);
        };
        let l: Latest = serde_json::from_slice(&b)
            .map_err(|e| ClientError::Storage(format!("latest.json: {e}")))?;
        if l.version != 1
            || !valid_object_name(&l.object)
            || object_key_id(&l.object) != Some(l.key_id.as_str())
        {
            return Err(ClientError::Storage(
                "latest.json names an invalid object".into(),
            ));
        }
        Ok(Some(l))
    }

    /// Points `latest.json` at an uploaded backup: a compare-and-swap on the version read just
    /// before, where the store supports it (S3 `If-Match`/`If-None-Match`; a local directory
    /// replaces the file atomically).
    pub async fn set_latest(&self, latest: &Latest) -> Result<()> {
        let body = serde_json::to_vec(latest).map_err(|e| ClientError::Storage(e.to_string()))?;
        let path = self.path("latest.json");
        let mode = match self.store.head(&path).await {
            Ok(meta) => PutMode::Update {
                e_tag: meta.e_tag,
                version: meta.version,
            },
            Err(StoreError::NotFound(_)) => PutMode::Create,
            Err(e) => return Err(storage_err(e)),
        };
        let body = Bytes::from(body);
        match self.store.put(&path, body.clone(), mode).await {
            Ok(()) => Ok(()),
            // Stores without conditional writes (a local directory): an atomic replace.
            Err(StoreError::NotImplemented) => {
                let put = self.store.put(&path, body, PutMode::Overwrite).await;
                put.map_err(storage_err)
            }
            Err(StoreError::Precondition(_) | StoreError::AlreadyExists(_)) => {
                Err(ClientError::LatestChanged)
            }
            Err(e) => Err(storage_err(e)),
        }
    }

    /// The backup that `key` opens: the latest one if it is under `key`,
    /// otherwise the newest object under `key` (an interrupted rotation
    /// leaves backups under two keys).
    pub async fn backup_for(&self, key: &BackupKey) -> Result<Latest> {
        let kid = hex::encode(crate::slots::key_id(key));
        if let Some(l) = self.latest().await? {
            if l.key_id == kid {
                return Ok(l);
            }
        }
        let newest = self
            .list()
            .await?
            .into_iter()
            .rev()
            .find(|b| object_key_id(&b.name) == Some(kid.as_str()));
        match newest {
            Some(b) => Ok(Latest {
                version: 1,
                created_unix: 0,
                key_id: kid,
                object: b.name,
                size: b.size,
            }),
            None => Err(ClientError::Storage(
                "no backup in storage is encrypted under this backup key".into(),
            )),
        }
    }

    async fn get_limited(&self, path: &str, limit: usize) -> Result<Option<Bytes>> {
        let too_large = || ClientError::Storage(format!("{path} is too large"));
        match self.store.get(path).await {
            Ok(mut g) => {
                if g.meta.size > limit as u64 {
                    return Err(too_large());
                }
                let mut body = Vec::new();
                while let Some(piece) = g.stream.next().await {
                    body.extend_from_slice(&piece.map_err(storage_err)?);
                    // Bounded whatever the size the store announced.
                    if body.len() > limit {
                        return Err(too_large());
                    }
                }
                Ok(Some(Bytes::from(body)))
            }
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(storage_err(e)),
        }
    }

    /// The sealed protector manifest for the backup key `key_id`, if any.
    pub async fn manifest(&self, key_id: &[u8; 16]) -> Result<Option<Vec<u8>>> {
        let path = self.path(&format!("protectors/{}.bin", hex::encode(key_id)));
        Ok(self
            .get_limited(&path, crate::slots::MAX_MANIFEST)
            .await?
            .map(|b| b.to_vec()))
    }

    /// Every stored manifest, as `(key id named by the object, bytes)`.
    pub async fn manifests(&self) -> Result<Vec<([u8; 16], Vec<u8>)>> {
        let mut out = Vec::new();
        for id in self.manifest_ids().await? {
            if out.len() >= MAX_MANIFESTS {
                return Err(ClientError::Storage("too many protector manifests".into()));
            }
            if let Some(b) = self.manifest(&id).await? {
                out.push((id, b));
            }
        }
        Ok(out)
    }

    async fn manifest_ids(&self) -> Result<Vec<[u8; 16]>> {
        let mut ids = Vec::new();
        let mut s = self.store.list(&self.path("protectors"));
        while let Some(m) = s.next().await {
            let m = m.map_err(storage_err)?;
            let name = m.file_name();
            if let Some(id) = name.strip_suffix(".bin").and_then(parse_key_id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Writes the manifest of the backup key `key_id` (an object store
    /// replaces an object atomically).
    pub async fn put_manifest(&self, key_id: &[u8; 16], bytes: Vec<u8>) -> Result<()> {
        let path = self.path(&format!("protectors/{}.bin", hex::encode(key_id)));
        self.store
            .put(&path, Bytes::from(bytes), PutMode::Overwrite)
            .await
            .map_err(storage_err)
    }

    /// Deletes every manifest and backup that does not belong to `keep`
    /// (manifests first, so no manifest outlives the backups it opens).
    pub async fn delete_other_keys(&self, keep: &[u8; 16]) -> Result<usize> {
        let mut n = 0;
        for id in self.manifest_ids().await? {
            if &id != keep {
                let path = self.path(&format!("protectors/{}.bin", hex::encode(id)));
                self.store.delete(&path).await.map_err(storage_err)?;
                n += 1;
            }
        }
        crate::crash_point("old-manifests-deleted");
        let keep_hex = hex::encode(keep);
        for b in self.list().await? {
            if object_key_id(&b.name) != Some(keep_hex.as_str()) {
                let path = self.path(&format!("backups/{}", b.name));
                self.store.delete(&path).await.map_err(storage_err)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every backup object of this user, sorted by name (oldest first).
    pub async fn list(&self) -> Result<Vec<BackupObject>> {
        let prefix = self.path("backups");
        let mut out = Vec::new();
        let mut s = self.store.list(&prefix);
        while let Some(m) = s.next().await {
            let m = m.map_err(storage_err)?;
            out.push(BackupObject {
                name: m.file_name().to_owned(),
                size: m.size,
                last_modified: m.last_modified.to_rfc3339(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes every object of this user.
    pub async fn delete_all(&self) -> Result<usize> {
        let mut n = 0;
        let mut paths = Vec::new();
        let mut s = self.store.list(&self.prefix);
        while let Some(m) = s.next().await {
            paths.push(m.map_err(storage_err)?.path);
        }
        // Pointer first, so a crash midway never leaves it naming a deleted object.
        paths.sort_by_key(|p| !p.ends_with("latest.json"));
        for p in paths {
            self.store.delete(&p).await.map_err(storage_err)?;
            n += 1;
        }
        Ok(n)
    }
}

fn parse_key_id(hex_id: &str) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut id).ok()?;
    Some(id)
}

/// The key id an object name carries: `<created_ms>-<key_id>-<random>.bkv`.
fn object_key_id(name: &str) -> Option<&str> {
    let mut parts = name.strip_suffix(".bkv")?.split('-');
    let (_, kid, _) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && parse_key_id(kid).is_some()).then_some(kid)
}

fn valid_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.starts_with('.')
}

#[cfg(all(test, feature = "native"))]
mod tests;
