//! Backup storage through `object_store`: a local directory by default, or any S3-compatible
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

use crate::archive::{self, Options, Restored};
use crate::backup::Header;
use crate::error::{ClientError, Result};
use crate::keys::BackupKey;
use bytes::Bytes;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutPayload, UpdateVersion, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod local;
mod pipe;
use local::write_local;
use pipe::{pump, ChannelReader, ChannelWriter, Sink};

/// Upload part size (S3 needs at least 5 MiB per part).
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Bytes buffered between the encryptor and the uploader.
const PIPE_DEPTH: usize = 4;
const PIPE_PIECE: usize = 1024 * 1024;
const MAX_LATEST_JSON: usize = 4096;

fn storage_err(e: object_store::Error) -> ClientError {
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
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    /// The directory of a local store: restores read backups straight from the file (the
    /// object store's stream would hand over 8 KiB pieces between threads).
    local_root: Option<PathBuf>,
}

/// The directory a local `location` names (a plain path or `file://`), if it is local.
fn local_dir(location: &str) -> Option<&str> {
    match location.strip_prefix("file://") {
        Some(p) => Some(p),
        None if location.contains("://") => None,
        None => Some(location),
    }
}

/// Opens the object store at `location`: `s3://bucket[/prefix]` (AWS environment variables:
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`),
/// `file:///path`, or a plain directory path.
pub fn open_store(location: &str) -> Result<Arc<dyn ObjectStore>> {
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(ClientError::Storage(format!(
                "{location}: an s3:// location needs a bucket"
            )));
        }
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .build()
            .map_err(storage_err)?;
        let prefix = prefix.trim_matches('/');
        return Ok(if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        });
    }
    let Some(dir) = local_dir(location) else {
        return Err(ClientError::Storage(format!(
            "{location}: storage must be a directory, file:// or s3://"
        )));
    };
    std::fs::create_dir_all(dir)?;
    Ok(Arc::new(
        LocalFileSystem::new_with_prefix(dir).map_err(storage_err)?,
    ))
}

impl BackupStore {
    /// Opens the store for `user_id` at `location` (see [`open_store`]).
    pub fn open(location: &str, user_id: &str) -> Result<Self> {
        let mut s = Self::with_store(open_store(location)?, user_id);
        s.local_root = local_dir(location).map(PathBuf::from);
        Ok(s)
    }

    /// Opens the store for `user_id` in a local directory.
    pub fn local(dir: &Path, user_id: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(storage_err)?;
        let mut s = Self::with_store(Arc::new(fs), user_id);
        s.local_root = Some(dir.to_owned());
        Ok(s)
    }

    /// The area of `user_id` in `store` (`users/<u>/`).
    pub fn with_store(store: Arc<dyn ObjectStore>, user_id: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"bkv/storage/v1\0");
        h.update(user_id.as_bytes());
        let digest = hex::encode(h.finalize());
        let prefix = ObjPath::from(format!("users/{}", &digest[..32]));
        BackupStore {
            store,
            prefix,
            local_root: None,
        }
    }

    fn path(&self, rel: &str) -> ObjPath {
        ObjPath::from(format!("{}/{rel}", self.prefix))
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
            Ok(meta) => PutMode::Update(UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            }),
            Err(object_store::Error::NotFound { .. }) => PutMode::Create,
            Err(e) => return Err(storage_err(e)),
        };
        let payload = PutPayload::from(body);
        match self
            .store
            .put_opts(&path, payload.clone(), mode.into())
            .await
        {
            Ok(_) => Ok(()),
            // Stores without conditional writes (a local directory): an atomic replace.
            Err(object_store::Error::NotImplemented) => {
                self.store.put(&path, payload).await.map_err(storage_err)?;
                Ok(())
            }
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Err(ClientError::LatestChanged),
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

    async fn get_limited(&self, path: &ObjPath, limit: usize) -> Result<Option<Bytes>> {
        match self.store.get(path).await {
            Ok(g) => {
                if g.meta.size > limit as u64 {
                    return Err(ClientError::Storage(format!("{path} is too large")));
                }
                Ok(Some(g.bytes().await.map_err(storage_err)?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
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
        let mut s = self.store.list(Some(&self.path("protectors")));
        while let Some(m) = s.next().await {
            let m = m.map_err(storage_err)?;
            let name = m.location.filename().unwrap_or_default();
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
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(storage_err)?;
        Ok(())
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
        let mut s = self.store.list(Some(&prefix));
        while let Some(m) = s.next().await {
            let m = m.map_err(storage_err)?;
            out.push(BackupObject {
                name: m.location.filename().unwrap_or_default().to_owned(),
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
        let mut s = self.store.list(Some(&self.prefix));
        while let Some(m) = s.next().await {
            paths.push(m.map_err(storage_err)?.location);
        }
        // Pointer first, so a crash midway never leaves it naming a deleted object.
        paths.sort_by_key(|p| !p.as_ref().ends_with("latest.json"));
        for p in paths {
            self.store.delete(&p).await.map_err(storage_err)?;
            n += 1;
        }
        Ok(n)
    }

    /// Encrypts `source` under `key` and uploads it as the new latest backup;
    /// then deletes older backups and data of other backup keys.
    pub async fn create(
        &self,
        key: &BackupKey,
        source: PathBuf,
        opts: Options,
        report: Box<dyn FnMut(u64) + Send>,
    ) -> Result<Latest> {
        let key_copy = BackupKey::from_bytes(*key.expose());
        let latest = self
            .upload(key, move |w| {
                let (header, w) = archive::write_backup(&source, &key_copy, opts, w, report)?;
                Ok((header, w))
            })
            .await?;
        self.set_latest(&latest).await?;
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
        Ok(latest)
    }

    /// Re-encrypts the backup that `old` opens under `new` and uploads it,
    /// without switching `latest.json` (the caller does, once it is safe).
    pub async fn reencrypt(&self, old: &BackupKey, new: &BackupKey) -> Result<Latest> {
        let src = self.backup_for(old).await?;
        let get = self
            .store
            .get(&self.path(&format!("backups/{}", src.object)))
            .await
            .map_err(storage_err)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(PIPE_DEPTH);
        let pump = tokio::spawn(pump(get.into_stream(), tx));
        let (old_copy, new_copy) = (
            BackupKey::from_bytes(*old.expose()),
            BackupKey::from_bytes(*new.expose()),
        );
        let uploaded = self
            .upload(new, move |w| {
                let r = ChannelReader {
                    rx,
                    cur: Bytes::new(),
                };
                archive::reencrypt(r, &old_copy, &new_copy, w)
            })
            .await;
        let pumped = pump
            .await
            .map_err(|e| ClientError::Io(io::Error::other(format!("download task: {e}"))))?;
        let latest = uploaded?;
        pumped?;
        Ok(latest)
    }

    /// Runs `produce` (blocking) to write a backup under `key` and uploads
    /// what it writes as a new object. Nothing points to it yet.
    async fn upload<F>(&self, key: &BackupKey, produce: F) -> Result<Latest>
    where
        F: FnOnce(Sink) -> Result<(Header, Sink)> + Send + 'static,
    {
        // The name is chosen before the header exists, so use a random one.
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let key_id = hex::encode(crate::slots::key_id(key));
        let name = format!("{created_ms:016}-{key_id}-{}.bkv", hex::encode(id));
        let path = self.path(&format!("backups/{name}"));
        if let Some(root) = &self.local_root {
            let dest = root.join(path.as_ref());
            let (header, size) = tokio::task::spawn_blocking(move || write_local(&dest, produce))
                .await
                .map_err(|e| ClientError::Io(io::Error::other(format!("backup task: {e}"))))??;
            return Ok(Latest {
                version: 1,
                object: name,
                size,
                created_unix: header.created_unix,
                key_id,
            });
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(PIPE_DEPTH);
        let producer = tokio::task::spawn_blocking(move || {
            let w = Sink::Channel(ChannelWriter {
                tx,
                buf: Vec::with_capacity(PIPE_PIECE),
            });
            let (header, w) = produce(w)?;
            w.finish()?;
            Ok::<Header, ClientError>(header)
        });
        let upload = self.store.put_multipart(&path).await.map_err(storage_err)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut size = 0u64;
        let mut upload_err = None;
        while let Some(b) = rx.recv().await {
            size += b.len() as u64;
            if let Err(e) = w.wait_for_capacity(2).await {
                upload_err = Some(storage_err(e));
                break;
            }
            w.put(b);
        }
        drop(rx);
        let produced = producer
            .await
            .map_err(|e| ClientError::Io(io::Error::other(format!("backup task: {e}"))));
        let header = match (produced, upload_err) {
            (Ok(Ok(h)), None) => h,
            (Ok(Err(e)), _) | (Err(e), _) | (_, Some(e)) => {
                let _ = w.abort().await;
                return Err(e);
            }
        };
        // Tests kill the process here: every part sent, the upload not completed.
        crate::crash_point("upload-unfinished");
        w.finish().await.map_err(storage_err)?;
        Ok(Latest {
            version: 1,
            object: name,
            size,
            created_unix: header.created_unix,
            key_id,
        })
    }

    /// Downloads, authenticates and restores the newest backup `key` opens
    /// into `out`.
    pub async fn restore(
        &self,
        key: &BackupKey,
        out: PathBuf,
        report: Box<dyn FnMut(u64) + Send>,
    ) -> Result<(Latest, Restored)> {
        if self.latest().await?.is_none() && self.list().await?.is_empty() {
            return Err(ClientError::NoBackup);
        }
        let latest = self.backup_for(key).await?;
        let object = self.path(&format!("backups/{}", latest.object));
        if let Some(root) = &self.local_root {
            // Local: the blocking thread reads, decrypts and writes in 1 MiB pieces.
            let file = root.join(object.as_ref());
            let key_copy = BackupKey::from_bytes(*key.expose());
            let restored = tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&file)?;
                let r = io::BufReader::with_capacity(PIPE_PIECE, f);
                archive::read_backup(r, &key_copy, &out, report)
            })
            .await
            .map_err(|e| ClientError::Io(io::Error::other(format!("restore task: {e}"))))??;
            return Ok((latest, restored));
        }
        let get = self.store.get(&object).await.map_err(storage_err)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(PIPE_DEPTH);
        let key_copy = BackupKey::from_bytes(*key.expose());
        let consumer = tokio::task::spawn_blocking(move || {
            let r = ChannelReader {
                rx,
                cur: Bytes::new(),
            };
            archive::read_backup(r, &key_copy, &out, report)
        });
        // Downloading here while the blocking thread decrypts and writes: two cores busy.
        let downloaded = pump(get.into_stream(), tx).await;
        let restored = consumer
            .await
            .map_err(|e| ClientError::Io(io::Error::other(format!("restore task: {e}"))))?;
        downloaded?;
        Ok((latest, restored?))
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

#[cfg(test)]
mod tests;
