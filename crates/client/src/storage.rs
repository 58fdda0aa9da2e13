//! Backup storage through `object_store`: a local directory by default.
//!
//! Layout under the store root, per user (`<u>` = first 32 hex digits of
//! SHA-256("bkv/storage/v1" || user id)):
//!
//! ```text
//! users/<u>/backups/<created_ms>-<backup_id>.bkv   encrypted backups
//! users/<u>/latest.json                           {"version":1,"object":...,"size":...}
//! ```
//!
//! A new backup is uploaded under a fresh name; only after the upload completed
//! is `latest.json` switched to it and the older backups deleted. So the last
//! good backup survives any failure of a new one.

use crate::archive::{self, Options, Restored};
use crate::backup::Header;
use crate::error::{ClientError, Result};
use crate::keys::BackupKey;
use bytes::Bytes;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Upload part size (S3 needs at least 5 MiB per part).
const PART_SIZE: usize = 5 * 1024 * 1024;
/// Bytes buffered between the encryptor and the uploader.
const PIPE_DEPTH: usize = 4;
const PIPE_PIECE: usize = 1024 * 1024;
const MAX_LATEST_JSON: usize = 4096;

fn storage_err(e: object_store::Error) -> ClientError {
    ClientError::Storage(e.to_string())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latest {
    pub version: u32,
    pub object: String,
    pub size: u64,
    pub created_unix: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupObject {
    pub name: String,
    pub size: u64,
    pub last_modified: String,
}

pub struct BackupStore {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
}

impl BackupStore {
    /// Opens the store for `user_id` in a local directory.
    pub fn local(dir: &Path, user_id: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(storage_err)?;
        Ok(Self::with_store(Arc::new(fs), user_id))
    }

    pub fn with_store(store: Arc<dyn ObjectStore>, user_id: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"bkv/storage/v1\0");
        h.update(user_id.as_bytes());
        let digest = hex::encode(h.finalize());
        let prefix = ObjPath::from(format!("users/{}", &digest[..32]));
        BackupStore { store, prefix }
    }

    fn path(&self, rel: &str) -> ObjPath {
        ObjPath::from(format!("{}/{rel}", self.prefix))
    }

    pub async fn latest(&self) -> Result<Option<Latest>> {
        match self.store.get(&self.path("latest.json")).await {
            Ok(g) => {
                if g.meta.size > MAX_LATEST_JSON as u64 {
                    return Err(ClientError::Storage("latest.json is too large".into()));
                }
                let b = g.bytes().await.map_err(storage_err)?;
                let l: Latest = serde_json::from_slice(&b)
                    .map_err(|e| ClientError::Storage(format!("latest.json: {e}")))?;
                if l.version != 1 || !valid_object_name(&l.object) {
                    return Err(ClientError::Storage(
                        "latest.json names an invalid object".into(),
                    ));
                }
                Ok(Some(l))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage_err(e)),
        }
    }

    /// The sealed protector manifest (`protectors.bin`), if any.
    pub async fn manifest(&self) -> Result<Option<Vec<u8>>> {
        match self.store.get(&self.path("protectors.bin")).await {
            Ok(g) => {
                if g.meta.size > crate::protectors::MAX_MANIFEST as u64 {
                    return Err(ClientError::Storage("protectors.bin is too large".into()));
                }
                Ok(Some(g.bytes().await.map_err(storage_err)?.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage_err(e)),
        }
    }

    /// Replaces the manifest (object stores replace an object atomically).
    pub async fn put_manifest(&self, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&self.path("protectors.bin"), PutPayload::from(bytes))
            .await
            .map_err(storage_err)?;
        Ok(())
    }

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

    /// Encrypts `source` under `key` and uploads it as the new latest backup.
    pub async fn create(
        &self,
        key: &BackupKey,
        source: PathBuf,
        opts: Options,
        report: Box<dyn FnMut(u64) + Send>,
    ) -> Result<Latest> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(PIPE_DEPTH);
        let key_copy = BackupKey::from_bytes(*key.expose());
        let producer = tokio::task::spawn_blocking(move || {
            let w = ChannelWriter {
                tx,
                buf: Vec::with_capacity(PIPE_PIECE),
            };
            let (header, mut w) = archive::write_backup(&source, &key_copy, opts, w, report)?;
            w.flush_piece()?;
            Ok::<Header, ClientError>(header)
        });
        // The name is chosen before the header exists, so use a random one.
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let name = format!("{created_ms:016}-{}.bkv", hex::encode(id));
        let path = self.path(&format!("backups/{name}"));
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
        w.finish().await.map_err(storage_err)?;
        let latest = Latest {
            version: 1,
            object: name.clone(),
            size,
            created_unix: header.created_unix,
        };
        let body = serde_json::to_vec(&latest).map_err(|e| ClientError::Storage(e.to_string()))?;
        self.store
            .put(&self.path("latest.json"), PutPayload::from(body))
            .await
            .map_err(storage_err)?;
        // Only now is the old backup redundant.
        for old in self.list().await? {
            if old.name != name {
                let _ = self
                    .store
                    .delete(&self.path(&format!("backups/{}", old.name)))
                    .await;
            }
        }
        Ok(latest)
    }

    /// Downloads, authenticates and restores the latest backup into `out`.
    pub async fn restore(
        &self,
        key: &BackupKey,
        out: PathBuf,
        report: Box<dyn FnMut(u64) + Send>,
    ) -> Result<(Latest, Restored)> {
        let latest = self.latest().await?.ok_or_else(|| {
            ClientError::Storage("no backup found in storage for this user".into())
        })?;
        let get = self
            .store
            .get(&self.path(&format!("backups/{}", latest.object)))
            .await
            .map_err(storage_err)?;
        let mut stream = get.into_stream();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(PIPE_DEPTH * 16);
        let key_copy = BackupKey::from_bytes(*key.expose());
        let consumer = tokio::task::spawn_blocking(move || {
            let r = ChannelReader {
                rx,
                cur: Bytes::new(),
            };
            archive::read_backup(r, &key_copy, &out, report)
        });
        let mut download_err = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => {
                    if tx.send(b).await.is_err() {
                        break; // the consumer stopped (it reports why)
                    }
                }
                Err(e) => {
                    download_err = Some(storage_err(e));
                    break;
                }
            }
        }
        drop(tx);
        let restored = consumer
            .await
            .map_err(|e| ClientError::Io(io::Error::other(format!("restore task: {e}"))))?;
        if let Some(e) = download_err {
            return Err(e);
        }
        Ok((latest, restored?))
    }
}

fn valid_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.starts_with('.')
}

/// Sync `Write` feeding the async uploader in bounded pieces.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn flush_piece(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_PIECE));
        self.tx
            .blocking_send(Bytes::from(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = (PIPE_PIECE - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() >= PIPE_PIECE {
            self.flush_piece()?;
        }
        Ok(take)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sync `Read` over the async download.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = self.cur.len().min(out.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}
