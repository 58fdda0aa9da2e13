//! What needs an operating system: local directories and S3, and backups made from and restored
//! to files, with the encryption on a blocking thread beside the transfer.

use super::local::write_local;
use super::object::ObjectBlobs;
use super::pipe::{pump, ChannelReader, ChannelWriter, Sink};
use super::stream::Upload;
use super::PIPE_PIECE;
use super::{storage_err, BackupStore, BlobStore, Latest, StoreError, PART_SIZE, PIPE_DEPTH};
use crate::archive::{self, Options, Restored};
use crate::backup::Header;
use crate::error::{ClientError, Result};
use crate::keys::BackupKey;
use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
pub fn open_store(location: &str) -> Result<Arc<dyn BlobStore>> {
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
            .map_err(object_err)?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        return Ok(Arc::new(ObjectBlobs(store)));
    }
    let Some(dir) = local_dir(location) else {
        return Err(ClientError::Storage(format!(
            "{location}: storage must be a directory, file:// or s3://"
        )));
    };
    std::fs::create_dir_all(dir)?;
    let fs = LocalFileSystem::new_with_prefix(dir).map_err(object_err)?;
    Ok(Arc::new(ObjectBlobs(Arc::new(fs))))
}

/// A store that could not be opened (its configuration), as the client's error.
fn object_err(e: object_store::Error) -> ClientError {
    ClientError::Store(StoreError::Other(e.to_string()))
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
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(object_err)?;
        let mut s = Self::with_store(Arc::new(ObjectBlobs(Arc::new(fs))), user_id);
        s.local_root = Some(dir.to_owned());
        Ok(s)
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
        self.switch_to(&latest, key).await?;
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
        let pump = tokio::spawn(pump(get.stream, tx));
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
        let (name, key_id, path) = self.new_object(key);
        if let Some(root) = &self.local_root {
            let dest = root.join(&path);
            let (header, size) = tokio::task::spawn_blocking(move || write_local(&dest, produce))
                .await
                .map_err(|e| ClientError::Io(io::Error::other(format!("backup task: {e}"))))??;
            return Ok(Latest::uploaded(name, key_id, size, &header));
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
        // Parts of PART_SIZE, each sent while the next one fills (the encryption runs on the
        // blocking thread meanwhile).
        let mut up = Upload::start(self.store.as_ref(), &path).await?;
        let mut part = Vec::with_capacity(PART_SIZE);
        let mut upload_err = None;
        while let Some(b) = rx.recv().await {
            part.extend_from_slice(&b);
            if let Err(e) = up.drain(&mut part, PART_SIZE).await {
                upload_err = Some(e);
                break;
            }
        }
        drop(rx);
        let produced = producer
            .await
            .map_err(|e| ClientError::Io(io::Error::other(format!("backup task: {e}"))));
        let header = match (produced, upload_err) {
            (Ok(Ok(h)), None) => h,
            (Ok(Err(e)), _) | (Err(e), _) | (_, Some(e)) => return Err(up.abort(e).await),
        };
        // Tests kill the process in `finish`: every part sent, the upload not completed.
        let size = up.finish(part).await?;
        Ok(Latest::uploaded(name, key_id, size, &header))
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
            let file = root.join(&object);
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
        let downloaded = pump(get.stream, tx).await;
        let restored = consumer
            .await
            .map_err(|e| ClientError::Io(io::Error::other(format!("restore task: {e}"))))?;
        downloaded?;
        Ok((latest, restored?))
    }
}
