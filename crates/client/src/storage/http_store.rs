//! An object store reached over HTTP: the storage endpoint a browser can use (the dev
//! deployment serves one; docs/api.md "Storage endpoint"). It sees only what every object
//! store sees, ciphertext and the layout's names, so it needs no more trust than S3.
//!
//! Objects live at `<base>/<path>`: `GET` (with `Range` for a download in pieces), `HEAD`,
//! `PUT` (`If-None-Match: *` creates only, `If-Match: <etag>` replaces only that version),
//! `DELETE`; `GET <base>?list=<prefix>` lists; a multipart upload is `PUT <object>?upload=<id>&
//! part=<n>` per part, then `POST <object>?upload=<id>&parts=<count>`, which makes the object
//! appear whole (or `DELETE <object>?upload=<id>` to give up).

use super::blob::StoreResult;
use super::blob::{BlobStore, Download, MultipartUpload, ObjectMeta, PutMode, StoreError};
use crate::http::{Http, HttpRequest, HttpResponse, Method};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use rand::RngCore;
use secrecy::SecretString;
use serde::Deserialize;
use std::sync::Arc;

/// Bytes fetched per ranged `GET` of a download.
const RANGE: u64 = 4 * 1024 * 1024;
/// Largest listing accepted.
const MAX_LISTING: usize = 4 * 1024 * 1024;
/// Largest small answer (a `PUT`'s or `DELETE`'s body).
const MAX_SMALL: usize = 64 * 1024;

/// A [`BlobStore`] over the storage endpoint at a base URL, through the client's [`Http`].
#[derive(Clone)]
pub struct HttpStore {
    http: Arc<dyn Http>,
    base: String,
    token: Option<SecretString>,
}

impl std::fmt::Debug for HttpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HttpStore({})", self.base)
    }
}

impl std::fmt::Display for HttpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage endpoint {}", self.base)
    }
}

fn other(msg: impl Into<String>) -> StoreError {
    StoreError::Other(msg.into())
}

/// One listed object, as the endpoint reports it.
#[derive(Deserialize)]
struct Listed {
    path: String,
    size: u64,
    modified_ms: i64,
    etag: String,
}

#[derive(Deserialize)]
struct Listing {
    objects: Vec<Listed>,
}

/// Whether `p` is a name of the storage layout: `/`-separated segments of letters, digits, `-`,
/// `_` and `.`, none empty, `.` or `..`.
fn layout_name(p: &str) -> bool {
    p.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    })
}

impl HttpStore {
    /// The endpoint at `base` (no trailing slash needed), sending `token` as a bearer token.
    pub fn new(http: Arc<dyn Http>, base: &str, token: Option<SecretString>) -> Self {
        HttpStore {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// The URL of `path`; only names of the storage layout are accepted.
    fn url(&self, path: &str) -> StoreResult<String> {
        if !layout_name(path) {
            return Err(other(format!("{path}: not a storage layout name")));
        }
        Ok(format!("{}/{path}", self.base))
    }

    fn request(&self, method: Method, url: String, limit: usize) -> HttpRequest {
        let r = HttpRequest::new(method, url, limit);
        match &self.token {
            Some(t) => r.token(t),
            None => r,
        }
    }

    async fn send(&self, req: HttpRequest, path: &str) -> StoreResult<HttpResponse> {
        let resp = self
            .http
            .send(req)
            .await
            .map_err(|e| other(e.to_string()))?;
        match resp.status {
            200..=299 => Ok(resp),
            404 => Err(StoreError::NotFound(path.to_owned())),
            412 => Err(StoreError::Precondition(path.to_owned())),
            s => Err(other(format!(
                "{path}: status {s}: {}",
                String::from_utf8_lossy(&resp.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))),
        }
    }

    fn meta(&self, path: &str, resp: &HttpResponse) -> StoreResult<ObjectMeta> {
        let size = resp
            .header("bkv-size")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| other("the endpoint sent no size"))?;
        let modified = resp
            .header("bkv-modified-ms")
            .and_then(|v| v.parse().ok())
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or_default();
        Ok(ObjectMeta {
            path: path.to_owned(),
            last_modified: modified,
            size,
            e_tag: resp.header("etag").map(str::to_owned),
            version: None,
        })
    }

    async fn list_all(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.url(prefix)?;
        let url = format!("{}?list={prefix}", self.base);
        let resp = self
            .send(self.request(Method::Get, url, MAX_LISTING), prefix)
            .await?;
        let l: Listing =
            serde_json::from_slice(&resp.body).map_err(|e| other(format!("listing: {e}")))?;
        l.objects
            .into_iter()
            .map(|o| {
                let under = o
                    .path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
                if !layout_name(&o.path) || !under {
                    return Err(other(format!("{}: listed outside {prefix}", o.path)));
                }
                Ok(ObjectMeta {
                    path: o.path,
                    last_modified: DateTime::<Utc>::from_timestamp_millis(o.modified_ms)
                        .unwrap_or_default(),
                    size: o.size,
                    e_tag: Some(o.etag),
                    version: None,
                })
            })
            .collect()
    }
}

#[async_trait]
impl BlobStore for HttpStore {
    async fn head(&self, path: &str) -> StoreResult<ObjectMeta> {
        let req = self.request(Method::Head, self.url(path)?, 0);
        let resp = self.send(req, path).await?;
        self.meta(path, &resp)
    }

    async fn get(&self, path: &str) -> StoreResult<Download> {
        let url = self.url(path)?;
        let head = self
            .send(self.request(Method::Head, url.clone(), 0), path)
            .await?;
        let meta = self.meta(path, &head)?;
        let size = meta.size;
        // A download in ranges, each bound to the version the HEAD saw: an object replaced
        // midway fails the download instead of splicing two versions.
        let store = self.clone();
        let etag = meta.e_tag.clone();
        let path = path.to_owned();
        let ranges = futures::stream::unfold(0u64, move |at| {
            let (store, url, etag, path) = (store.clone(), url.clone(), etag.clone(), path.clone());
            async move {
                if at >= size {
                    return None;
                }
                let end = (at + RANGE).min(size);
                let mut req = store
                    .request(Method::Get, url, RANGE as usize)
                    .header("range", format!("bytes={at}-{}", end - 1));
                if let Some(e) = etag {
                    req = req.header("if-match", e);
                }
                let got = store.send(req, &path).await.and_then(|r| {
                    match r.body.len() as u64 == end - at {
                        true => Ok(Bytes::from(r.body)),
                        false => Err(other("the endpoint sent a short range")),
                    }
                });
                let next = if got.is_ok() { end } else { size };
                Some((got, next))
            }
        });
        Ok(Download {
            meta,
            stream: ranges.boxed(),
        })
    }

    async fn put(&self, path: &str, body: Bytes, mode: PutMode) -> StoreResult<()> {
        let mut req = self
            .request(Method::Put, self.url(path)?, MAX_SMALL)
            .bytes(body.to_vec());
        let create = matches!(mode, PutMode::Create);
        match mode {
            PutMode::Overwrite => {}
            PutMode::Create => req = req.header("if-none-match", "*"),
            PutMode::Update { e_tag, .. } => {
                let etag = e_tag.ok_or_else(|| other("a conditional put needs the etag"))?;
                req = req.header("if-match", etag);
            }
        }
        match self.send(req, path).await {
            Ok(_) => Ok(()),
            // Create-only: the endpoint's 412 means the object exists.
            Err(StoreError::Precondition(p)) if create => Err(StoreError::AlreadyExists(p)),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, path: &str) -> StoreResult<()> {
        let req = self.request(Method::Delete, self.url(path)?, MAX_SMALL);
        match self.send(req, path).await {
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, StoreResult<ObjectMeta>> {
        let store = self.clone();
        let prefix = prefix.to_owned();
        futures::stream::once(async move {
            let listed = store.list_all(&prefix).await;
            futures::stream::iter(match listed {
                Ok(v) => v.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            })
        })
        .flatten()
        .boxed()
    }

    async fn put_multipart(&self, path: &str) -> StoreResult<Box<dyn MultipartUpload>> {
        let mut id = [0u8; 16];
        crate::random::OsRng.fill_bytes(&mut id);
        Ok(Box::new(Upload {
            store: self.clone(),
            path: path.to_owned(),
            url: self.url(path)?,
            id: hex::encode(id),
            parts: 0,
        }))
    }
}

/// A multipart upload at the endpoint: parts sent in order, then completed.
#[derive(Debug)]
struct Upload {
    store: HttpStore,
    path: String,
    url: String,
    id: String,
    parts: u32,
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: Bytes) -> BoxFuture<'static, StoreResult<()>> {
        let n = self.parts;
        self.parts += 1;
        let url = format!("{}?upload={}&part={n}", self.url, self.id);
        let req = self
            .store
            .request(Method::Put, url, MAX_SMALL)
            .bytes(data.to_vec());
        let (store, path) = (self.store.clone(), self.path.clone());
        Box::pin(async move { store.send(req, &path).await.map(|_| ()) })
    }

    async fn complete(&mut self) -> StoreResult<()> {
        let url = format!("{}?upload={}&parts={}", self.url, self.id, self.parts);
        let req = self.store.request(Method::Post, url, MAX_SMALL);
        self.store.send(req, &self.path).await.map(|_| ())
    }

    async fn abort(&mut self) -> StoreResult<()> {
        let url = format!("{}?upload={}", self.url, self.id);
        let req = self.store.request(Method::Delete, url, MAX_SMALL);
        self.store.send(req, &self.path).await.map(|_| ())
    }
}
