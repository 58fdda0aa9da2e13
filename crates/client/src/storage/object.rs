//! [`BlobStore`] over the `object_store` crate: how the native client reaches a local directory
//! and S3.

use super::blob::StoreResult;
use super::blob::{BlobStore, Download, MultipartUpload, ObjectMeta, PutMode, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, UpdateVersion};
use std::sync::Arc;

/// An `object_store` store as a [`BlobStore`].
#[derive(Debug)]
pub(super) struct ObjectBlobs(pub(super) Arc<dyn ObjectStore>);

impl std::fmt::Display for ObjectBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn err(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { path, .. } => StoreError::NotFound(path),
        object_store::Error::AlreadyExists { path, .. } => StoreError::AlreadyExists(path),
        object_store::Error::Precondition { path, .. } => StoreError::Precondition(path),
        object_store::Error::NotImplemented => StoreError::NotImplemented,
        e => StoreError::Other(e.to_string()),
    }
}

/// `path` as `object_store` names it: parsed, not encoded, so a listed name comes back as the
/// same object.
fn path_of(path: &str) -> StoreResult<Path> {
    Path::parse(path).map_err(|e| StoreError::Other(e.to_string()))
}

fn meta(m: object_store::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        path: m.location.to_string(),
        size: m.size,
        last_modified: m.last_modified,
        e_tag: m.e_tag,
        version: m.version,
    }
}

#[async_trait]
impl BlobStore for ObjectBlobs {
    async fn head(&self, path: &str) -> StoreResult<ObjectMeta> {
        self.0.head(&path_of(path)?).await.map(meta).map_err(err)
    }

    async fn get(&self, path: &str) -> StoreResult<Download> {
        let got = self.0.get(&path_of(path)?).await.map_err(err)?;
        Ok(Download {
            meta: meta(got.meta.clone()),
            stream: got.into_stream().map_err(err).boxed(),
        })
    }

    async fn put(&self, path: &str, body: Bytes, mode: PutMode) -> StoreResult<()> {
        let mode = match mode {
            PutMode::Overwrite => object_store::PutMode::Overwrite,
            PutMode::Create => object_store::PutMode::Create,
            PutMode::Update { e_tag, version } => {
                object_store::PutMode::Update(UpdateVersion { e_tag, version })
            }
        };
        let payload = PutPayload::from(body);
        self.0
            .put_opts(&path_of(path)?, payload, mode.into())
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn delete(&self, path: &str) -> StoreResult<()> {
        match self.0.delete(&path_of(path)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, StoreResult<ObjectMeta>> {
        match path_of(prefix) {
            Ok(p) => self.0.list(Some(&p)).map_ok(meta).map_err(err).boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn put_multipart(&self, path: &str) -> StoreResult<Box<dyn MultipartUpload>> {
        let up = self.0.put_multipart(&path_of(path)?).await.map_err(err)?;
        Ok(Box::new(Parts(up)))
    }
}

struct Parts(Box<dyn object_store::MultipartUpload>);

#[async_trait]
impl MultipartUpload for Parts {
    fn put_part(&mut self, data: Bytes) -> BoxFuture<'static, StoreResult<()>> {
        self.0
            .put_part(PutPayload::from(data))
            .map(|r| r.map_err(err))
            .boxed()
    }

    async fn complete(&mut self) -> StoreResult<()> {
        self.0.complete().await.map(|_| ()).map_err(err)
    }

    async fn abort(&mut self) -> StoreResult<()> {
        self.0.abort().await.map_err(err)
    }
}
