//! An object store reached over HTTP: the storage endpoint a browser can use (the dev
//! deployment serves one; docs/api.md "Storage endpoint"). It sees only what every object
//! store sees, ciphertext and the layout's names, so it needs no more trust than S3.
//!
//! Objects live at `<base>/<path>`: `GET` (with `Range` for a download in pieces), `HEAD`,
//! `PUT` (`If-None-Match: *` creates only, `If-Match: <etag>` replaces only that version),
//! `DELETE`; `GET <base>?list=<prefix>` lists; a multipart upload is `PUT <object>?upload=<id>&
//! part=<n>` per part, then `POST <object>?upload=<id>&parts=<count>`, which makes the object
//! appear whole (or `DELETE <object>?upload=<id>` to give up).

use crate::http::{Http, HttpRequest, HttpResponse, Method};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    Attributes, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
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

/// An [`ObjectStore`] over the storage endpoint at a base URL, through the client's [`Http`].
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

/// What went wrong talking to the endpoint (the `source` of an `object_store::Error`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct EndpointError(String);

fn generic(msg: impl Into<String>) -> object_store::Error {
    object_store::Error::Generic {
        store: "http",
        source: Box::new(EndpointError(msg.into())),
    }
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

impl HttpStore {
    /// The endpoint at `base` (no trailing slash needed), sending `token` as a bearer token.
    pub fn new(http: Arc<dyn Http>, base: &str, token: Option<SecretString>) -> Self {
        HttpStore {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// The URL of `path`; only the characters the storage layout uses are accepted.
    fn url(&self, path: &Path) -> object_store::Result<String> {
        let p = path.as_ref();
        if !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        {
            return Err(generic(format!("{p}: not a storage layout name")));
        }
        Ok(format!("{}/{p}", self.base))
    }

    fn request(&self, method: Method, url: String, limit: usize) -> HttpRequest {
        let r = HttpRequest::new(method, url, limit);
        match &self.token {
            Some(t) => r.token(t),
            None => r,
        }
    }

    async fn send(&self, req: HttpRequest, path: &Path) -> object_store::Result<HttpResponse> {
        let resp = self
            .http
            .send(req)
            .await
            .map_err(|e| generic(e.to_string()))?;
        let path = path.to_string();
        let source = || Box::new(EndpointError(format!("status {}", resp.status))) as _;
        match resp.status {
            200..=299 => Ok(resp),
            404 => Err(object_store::Error::NotFound {
                path,
                source: source(),
            }),
            412 => Err(object_store::Error::Precondition {
                path,
                source: source(),
            }),
            s => Err(generic(format!(
                "{path}: status {s}: {}",
                String::from_utf8_lossy(&resp.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))),
        }
    }

    fn meta(&self, path: &Path, resp: &HttpResponse) -> object_store::Result<ObjectMeta> {
        let size = resp
            .header("bkv-size")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| generic("the endpoint sent no size"))?;
        let modified = resp
            .header("bkv-modified-ms")
            .and_then(|v| v.parse().ok())
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or_default();
        Ok(ObjectMeta {
            location: path.clone(),
            last_modified: modified,
            size,
            e_tag: resp.header("etag").map(str::to_owned),
            version: None,
        })
    }
}

fn payload_bytes(p: &PutPayload) -> Vec<u8> {
    let mut v = Vec::with_capacity(p.content_length());
    for b in p.iter() {
        v.extend_from_slice(b);
    }
    v
}

#[async_trait]
impl ObjectStore for HttpStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let mut req = self
            .request(Method::Put, self.url(location)?, MAX_SMALL)
            .bytes(payload_bytes(&payload));
        let create = matches!(opts.mode, PutMode::Create);
        match opts.mode {
            PutMode::Overwrite => {}
            PutMode::Create => req = req.header("if-none-match", "*"),
            PutMode::Update(v) => {
                let etag = v
                    .e_tag
                    .ok_or_else(|| generic("a conditional put needs the etag"))?;
                req = req.header("if-match", etag);
            }
        }
        match self.send(req, location).await {
            Ok(resp) => Ok(PutResult {
                e_tag: resp.header("etag").map(str::to_owned),
                version: None,
            }),
            // Create-only: the endpoint's 412 means the object exists.
            Err(object_store::Error::Precondition { path, source }) if create => {
                Err(object_store::Error::AlreadyExists { path, source })
            }
            Err(e) => Err(e),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let mut id = [0u8; 16];
        crate::random::OsRng.fill_bytes(&mut id);
        Ok(Box::new(Upload {
            store: self.clone(),
            path: location.clone(),
            url: self.url(location)?,
            id: hex::encode(id),
            parts: 0,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        // Only what BackupStore asks for is implemented; anything else is refused, not ignored.
        if options.range.is_some()
            || options.if_match.is_some()
            || options.if_none_match.is_some()
            || options.if_modified_since.is_some()
            || options.if_unmodified_since.is_some()
            || options.version.is_some()
        {
            return Err(object_store::Error::NotImplemented);
        }
        let url = self.url(location)?;
        let head = self
            .send(self.request(Method::Head, url.clone(), 0), location)
            .await?;
        let meta = self.meta(location, &head)?;
        let size = meta.size;
        let payload = if options.head {
            GetResultPayload::Stream(futures::stream::empty().boxed())
        } else {
            // A download in ranges, each bound to the version the HEAD saw: an object replaced
            // midway fails the download instead of splicing two versions.
            let store = self.clone();
            let etag = meta.e_tag.clone();
            let path = location.clone();
            let ranges = futures::stream::unfold(0u64, move |at| {
                let (store, url, etag, path) =
                    (store.clone(), url.clone(), etag.clone(), path.clone());
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
                            false => Err(generic("the endpoint sent a short range")),
                        }
                    });
                    let next = if got.is_ok() { end } else { size };
                    Some((got, next))
                }
            });
            GetResultPayload::Stream(ranges.boxed())
        };
        Ok(GetResult {
            payload,
            meta,
            range: 0..size,
            attributes: Attributes::default(),
        })
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        let req = self.request(Method::Delete, self.url(location)?, MAX_SMALL);
        match self.send(req, location).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let store = self.clone();
        let prefix = prefix.map(|p| p.to_string()).unwrap_or_default();
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

    async fn list_with_delimiter(
        &self,
        _prefix: Option<&Path>,
    ) -> object_store::Result<ListResult> {
        Err(object_store::Error::NotImplemented)
    }

    async fn copy(&self, _from: &Path, _to: &Path) -> object_store::Result<()> {
        Err(object_store::Error::NotImplemented)
    }

    async fn copy_if_not_exists(&self, _from: &Path, _to: &Path) -> object_store::Result<()> {
        Err(object_store::Error::NotImplemented)
    }
}

impl HttpStore {
    async fn list_all(&self, prefix: &str) -> object_store::Result<Vec<ObjectMeta>> {
        let root = Path::from(prefix);
        self.url(&root)?;
        let url = format!("{}?list={prefix}", self.base);
        let resp = self
            .send(self.request(Method::Get, url, MAX_LISTING), &root)
            .await?;
        let l: Listing =
            serde_json::from_slice(&resp.body).map_err(|e| generic(format!("listing: {e}")))?;
        l.objects
            .into_iter()
            .map(|o| {
                let location = Path::parse(&o.path).map_err(|e| generic(e.to_string()))?;
                if !location.prefix_matches(&root) {
                    return Err(generic(format!("{}: listed outside {prefix}", o.path)));
                }
                Ok(ObjectMeta {
                    location,
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

/// A multipart upload at the endpoint: parts sent in order, then completed.
#[derive(Debug)]
struct Upload {
    store: HttpStore,
    path: Path,
    url: String,
    id: String,
    parts: u32,
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let n = self.parts;
        self.parts += 1;
        let url = format!("{}?upload={}&part={n}", self.url, self.id);
        let req = self
            .store
            .request(Method::Put, url, MAX_SMALL)
            .bytes(payload_bytes(&data));
        let (store, path) = (self.store.clone(), self.path.clone());
        Box::pin(async move { store.send(req, &path).await.map(|_| ()) })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let url = format!("{}?upload={}&parts={}", self.url, self.id, self.parts);
        let resp = self
            .store
            .send(self.store.request(Method::Post, url, MAX_SMALL), &self.path)
            .await?;
        Ok(PutResult {
            e_tag: resp.header("etag").map(str::to_owned),
            version: None,
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let url = format!("{}?upload={}", self.url, self.id);
        let req = self.store.request(Method::Delete, url, MAX_SMALL);
        self.store.send(req, &self.path).await.map(|_| ())
    }
}
