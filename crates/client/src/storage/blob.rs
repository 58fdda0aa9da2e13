//! The object store interface backups go through: exactly what [`super::BackupStore`] needs of a
//! local directory, S3 or the storage endpoint, and no more. The native client implements it
//! over the `object_store` crate (`super::object`); the browser build implements it over the
//! storage endpoint only ([`super::HttpStore`]) and carries no general object-store crate.
//!
//! Paths are `/`-separated names of the storage layout (`users/<u>/latest.json`), without a
//! leading or trailing `/`.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// Why an object store call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No object at this path.
    #[error("{0}: no such object")]
    NotFound(String),
    /// A create-only write found an object there.
    #[error("{0}: the object already exists")]
    AlreadyExists(String),
    /// A conditional write found another version than the one it names.
    #[error("{0}: the object changed since it was read")]
    Precondition(String),
    /// The store cannot do this (a local directory has no conditional writes).
    #[error("the store does not support this operation")]
    NotImplemented,
    /// Anything else: network, permissions, a malformed answer (what, for the user).
    #[error("{0}")]
    Other(String),
}

/// What an object store call returns.
pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its path.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// When the store last modified it.
    pub last_modified: DateTime<Utc>,
    /// The store's tag of this version (what a conditional write names).
    pub e_tag: Option<String>,
    /// The store's version id, where it keeps versions.
    pub version: Option<String>,
}

impl ObjectMeta {
    /// The last segment of its path.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }
}

/// How a write treats an object already at its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Replaces it (atomically: readers see the old object or the new one).
    Overwrite,
    /// Fails with [`StoreError::AlreadyExists`] if there is one.
    Create,
    /// Replaces only the version named, else fails with [`StoreError::Precondition`].
    Update {
        /// The version's tag.
        e_tag: Option<String>,
        /// The version's id.
        version: Option<String>,
    },
}

/// A download: the object's metadata and its bytes as they arrive.
pub struct Download {
    /// The object being downloaded.
    pub meta: ObjectMeta,
    /// Its bytes, in order.
    pub stream: BoxStream<'static, StoreResult<Bytes>>,
}

/// An object store, as backups use one.
#[async_trait]
pub trait BlobStore: std::fmt::Debug + std::fmt::Display + Send + Sync + 'static {
    /// The object at `path`, without its bytes.
    async fn head(&self, path: &str) -> StoreResult<ObjectMeta>;
    /// Downloads the object at `path`.
    async fn get(&self, path: &str) -> StoreResult<Download>;
    /// Writes `body` as the object at `path`.
    async fn put(&self, path: &str, body: Bytes, mode: PutMode) -> StoreResult<()>;
    /// Deletes the object at `path` (no error if there is none).
    async fn delete(&self, path: &str) -> StoreResult<()>;
    /// Every object whose path is `prefix` or under `prefix/`.
    fn list(&self, prefix: &str) -> BoxStream<'static, StoreResult<ObjectMeta>>;
    /// Starts a multipart upload to `path`: nothing is stored under the name until it completes.
    async fn put_multipart(&self, path: &str) -> StoreResult<Box<dyn MultipartUpload>>;
}

/// A multipart upload in progress ([`BlobStore::put_multipart`]).
#[async_trait]
pub trait MultipartUpload: Send {
    /// Sends the next part (parts are numbered in the order this is called; all but the last
    /// must be at least 5 MiB on S3). The returned future may run beside the next call.
    fn put_part(&mut self, data: Bytes) -> BoxFuture<'static, StoreResult<()>>;
    /// Makes the object appear whole, from every part sent.
    async fn complete(&mut self) -> StoreResult<()>;
    /// Gives the upload up: nothing is stored under its name.
    async fn abort(&mut self) -> StoreResult<()>;
}
