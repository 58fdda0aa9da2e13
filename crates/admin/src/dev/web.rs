//! The dev deployment's web origin (`web=URL` on the ready line): the browser client's page and
//! files, the frontend under `/frontend/` (relayed, so the page needs no cross-origin grant),
//! the page's settings at `/config.json`, and a storage endpoint at `/storage/` over the same
//! directory the CLI's `client.toml` names, so both clients see the same backups.
//!
//! The storage endpoint is the protocol `bkv_client::HttpStore` speaks (docs/api.md "Storage
//! endpoint"). It stores what it is sent: ciphertext and the layout's names. Like the
//! directory it serves, it does not tell users apart; a deployment puts its object store's
//! own access control (presigned URLs, per-user credentials) in its place.

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// Largest body the endpoint takes (an upload part is 5 MiB).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Largest range served at once.
const MAX_RANGE: u64 = 16 * 1024 * 1024;

struct Web {
    storage: PathBuf,
    files: PathBuf,
    frontend: String,
    config: serde_json::Value,
    http: reqwest::Client,
    /// Conditional writes are compared and made one at a time.
    writes: tokio::sync::Mutex<()>,
}

/// Where the built page is: `BKV_WEB_DIR`, else `web/` next to the target directory of this
/// executable (`scripts/build-web.sh` writes `target/web/dist`).
pub(crate) fn web_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BKV_WEB_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    target.join("web").join("dist")
}

/// The manifest of the build in `dir` (`None`: no build there), checked against the files: a
/// build whose files differ from its manifest is refused, not served and logged.
pub(crate) fn read_build(dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    use bkv_transparency::web::{Manifest, MANIFEST_FILE, MAX_FILES};
    let manifest = match std::fs::read(dir.join(MANIFEST_FILE)) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != MANIFEST_FILE && e.file_type()?.is_file() && files.len() <= MAX_FILES {
            files.push((name, std::fs::read(e.path())?));
        }
    }
    let actual = Manifest::of_files(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())))?;
    if actual.encode() != manifest {
        anyhow::bail!(
            "{}: the files differ from {MANIFEST_FILE} (rebuild with scripts/build-web.sh)",
            dir.display()
        );
    }
    Ok(Some(manifest))
}

/// Serves the web origin on `listener` until the process ends.
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    storage: PathBuf,
    frontend: String,
    config: serde_json::Value,
) -> anyhow::Result<()> {
    let state = Arc::new(Web {
        storage,
        files: web_dir(),
        frontend,
        config,
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()?,
        writes: tokio::sync::Mutex::new(()),
    });
    let app = Router::new()
        .route("/", get(index))
        .route("/config.json", get(config_json))
        .route("/frontend/{*rest}", any(relay))
        .route("/storage", get(list))
        .route("/storage/{*path}", any(object))
        .route("/{file}", get(file))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("bkv-admin dev: web: {e}");
        }
    });
    Ok(())
}

async fn index(State(w): State<Arc<Web>>) -> Response {
    serve_file(&w.files, "index.html")
}

async fn file(State(w): State<Arc<Web>>, UrlPath(name): UrlPath<String>) -> Response {
    serve_file(&w.files, &name)
}

fn serve_file(dir: &Path, name: &str) -> Response {
    let kind = match name.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    if !safe_name(name) {
        return StatusCode::NOT_FOUND.into_response();
    }
    // A regular file of the build, never a link out of it.
    let path = dir.join(name);
    let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file());
    match std::fs::read(&path).ok().filter(|_| regular).ok_or(()) {
        Ok(b) => ([("content-type", kind), ("cache-control", "no-store")], b).into_response(),
        Err(_) => (
            StatusCode::NOT_FOUND,
            format!(
                "{name} is not in {}: build the web client with scripts/build-web.sh",
                dir.display()
            ),
        )
            .into_response(),
    }
}

async fn config_json(State(w): State<Arc<Web>>) -> Response {
    axum::Json(w.config.clone()).into_response()
}

/// Relays a request to the frontend: the headers the client protocol uses, both ways.
async fn relay(
    State(w): State<Arc<Web>>,
    UrlPath(rest): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    // The path as it came (still percent-encoded), not the decoded capture: `%2F` or `%3F`
    // must not turn into a separator at the frontend.
    let _ = rest;
    let raw = uri.path().strip_prefix("/frontend").unwrap_or_default();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!("{}{raw}{query}", w.frontend);
    let mut req = w.http.request(method, url).body(body);
    for (name, value) in &headers {
        let n = name.as_str();
        if n == "authorization" || n == "content-type" || n.starts_with("bkv-") {
            req = req.header(name, value);
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("frontend: {e}")).into_response(),
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        let n = name.as_str();
        if n == "content-type" || n.starts_with("bkv-") {
            out = out.header(name, value);
        }
    }
    let body = resp.bytes().await.unwrap_or_default();
    out.body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// A storage layout name: segments of letters, digits, `-`, `_`, `.`, none starting with `.`.
fn safe_name(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 512
        && p.split('/').all(|s| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

#[derive(Deserialize)]
struct ObjectQuery {
    upload: Option<String>,
    part: Option<u32>,
    parts: Option<u32>,
}

/// Objects up to this size are tagged by their content's hash; larger ones (backups, written
/// once under fresh names) by size, change time and inode.
const HASHED: u64 = 1024 * 1024;

/// The version tag of the open file `f`: what conditional requests compare. A small object's
/// tag is its content's SHA-256, so two versions written within one tick of a coarse file
/// clock never share a tag (`latest.json` is switched by compare-and-swap on it).
fn etag(f: &mut std::fs::File, meta: &std::fs::Metadata) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    if meta.len() <= HASHED {
        let mut b = Vec::new();
        f.seek(SeekFrom::Start(0))?;
        f.read_to_end(&mut b)?;
        f.seek(SeekFrom::Start(0))?;
        return Ok(format!(
            "\"{}\"",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&b))
        ));
    }
    let ns = modified(meta).as_nanos();
    Ok(format!("\"{}-{ns}-{}\"", meta.len(), meta.ino()))
}

/// When the object was last written, since the Unix epoch (zero if the file system cannot say).
fn modified(meta: &std::fs::Metadata) -> std::time::Duration {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default()
}

/// The object at `path` opened, with its metadata and tag (`None`: no such object). Every
/// answer about an object comes from this one open file, so a replacement in between cannot
/// mix two versions.
fn open_object(path: &Path) -> std::io::Result<Option<(std::fs::File, std::fs::Metadata, String)>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let tag = etag(&mut f, &meta)?;
    Ok(Some((f, meta, tag)))
}

fn meta_headers(meta: &std::fs::Metadata, tag: &str) -> [(&'static str, String); 3] {
    let ms = modified(meta).as_millis();
    [
        ("etag", tag.to_owned()),
        ("bkv-size", meta.len().to_string()),
        ("bkv-modified-ms", ms.to_string()),
    ]
}

fn with_headers(status: StatusCode, h: &[(&'static str, String)], body: Vec<u8>) -> Response {
    let mut r = Response::builder().status(status);
    for (n, v) in h {
        if let Ok(v) = HeaderValue::from_str(v) {
            r = r.header(*n, v);
        }
    }
    r.body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn status(s: StatusCode, msg: impl Into<String>) -> Response {
    (s, msg.into()).into_response()
}

async fn object(
    State(w): State<Arc<Web>>,
    UrlPath(path): UrlPath<String>,
    Query(q): Query<ObjectQuery>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !safe_name(&path) {
        return status(StatusCode::BAD_REQUEST, "not a storage layout name");
    }
    let file = w.storage.join(&path);
    let result = match (&method, q.upload) {
        (&Method::GET | &Method::HEAD, None) => read(&file, &method, &headers),
        (&Method::PUT, None) => {
            let _one = w.writes.lock().await;
            put(&w.storage, &file, &headers, &body)
        }
        (&Method::DELETE, None) => {
            let _one = w.writes.lock().await;
            match std::fs::remove_file(&file) {
                Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(StatusCode::NOT_FOUND.into_response())
                }
                Err(e) => Err(e.into()),
            }
        }
        (m, Some(id)) => {
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return status(StatusCode::BAD_REQUEST, "bad upload id");
            }
            let dir = w.storage.join(".uploads").join(&id);
            match (m, q.part, q.parts) {
                (&Method::PUT, Some(n), None) if n < 100_000 => std::fs::create_dir_all(&dir)
                    .and_then(|()| std::fs::write(dir.join(n.to_string()), &body))
                    .map(|()| StatusCode::OK.into_response())
                    .map_err(Into::into),
                (&Method::POST, None, Some(n)) => {
                    let _one = w.writes.lock().await;
                    complete(&w.storage, &dir, &file, n)
                }
                (&Method::DELETE, None, None) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => return status(StatusCode::BAD_REQUEST, "bad upload request"),
            }
        }
        _ => return status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    };
    result.unwrap_or_else(|e: anyhow::Error| {
        status(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    })
}

fn read(file: &Path, method: &Method, headers: &HeaderMap) -> anyhow::Result<Response> {
    let Some((mut f, meta, tag)) = open_object(file)? else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let h = meta_headers(&meta, &tag);
    if let Some(m) = headers.get("if-match").and_then(|v| v.to_str().ok()) {
        if m != tag {
            return Ok(StatusCode::PRECONDITION_FAILED.into_response());
        }
    }
    if method == Method::HEAD {
        return Ok(with_headers(StatusCode::OK, &h, Vec::new()));
    }
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    let (start, end) = match range {
        Some((a, b)) if a <= b && b < meta.len() && b - a < MAX_RANGE => (a, b + 1),
        Some(_) => return Ok(StatusCode::RANGE_NOT_SATISFIABLE.into_response()),
        None if meta.len() <= MAX_RANGE => (0, meta.len()),
        None => {
            return Ok(status(
                StatusCode::BAD_REQUEST,
                "large objects are read in ranges",
            ))
        }
    };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; usize::try_from(end - start)?];
    f.read_exact(&mut buf)?;
    let code = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    Ok(with_headers(code, &h, buf))
}

/// Writes `body` as `file`, all at once (a temporary file renamed into place), if the
/// request's condition holds.
fn put(root: &Path, file: &Path, headers: &HeaderMap, body: &[u8]) -> anyhow::Result<Response> {
    let current = open_object(file)?.map(|(_, _, tag)| tag);
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let refused = match (header("if-none-match"), header("if-match"), &current) {
        (Some("*"), _, Some(_)) => true,
        (_, Some(want), Some(tag)) => want != tag,
        (_, Some(_), None) => true,
        _ => false,
    };
    if refused {
        return Ok(StatusCode::PRECONDITION_FAILED.into_response());
    }
    let tmp = staging(root)?;
    std::fs::write(&tmp, body)?;
    place(&tmp, file)?;
    written(file)
}

/// The answer to a write: the object's new tag, size and time.
fn written(file: &Path) -> anyhow::Result<Response> {
    let (_, meta, tag) = open_object(file)?.context("the object vanished after it was written")?;
    Ok(with_headers(
        StatusCode::OK,
        &meta_headers(&meta, &tag),
        Vec::new(),
    ))
}

/// Joins an upload's parts `0..n` into `file`, which appears whole or not at all.
fn complete(root: &Path, dir: &Path, file: &Path, n: u32) -> anyhow::Result<Response> {
    let tmp = staging(root)?;
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for i in 0..n {
            let mut part = std::fs::File::open(dir.join(i.to_string()))
                .with_context(|| format!("part {i} of the upload is missing"))?;
            std::io::copy(&mut part, &mut out)?;
        }
        std::io::Write::flush(&mut out)?;
        out.get_ref().sync_all()?;
    }
    place(&tmp, file)?;
    let _ = std::fs::remove_dir_all(dir);
    written(file)
}

fn staging(root: &Path) -> anyhow::Result<PathBuf> {
    let d = root.join(".uploads");
    std::fs::create_dir_all(&d)?;
    Ok(d.join(format!(
        "staged-{}",
        hex::encode(rand::random::<[u8; 16]>())
    )))
}

fn place(tmp: &Path, file: &Path) -> anyhow::Result<()> {
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(tmp, file)?;
    Ok(())
}

/// `GET /storage?list=<prefix>`: every object under the prefix.
async fn list(State(w): State<Arc<Web>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let prefix = q.get("list").cloned().unwrap_or_default();
    if !prefix.is_empty() && !safe_name(&prefix) {
        return status(StatusCode::BAD_REQUEST, "not a storage layout name");
    }
    let mut objects = Vec::new();
    walk(&w.storage, &w.storage.join(&prefix), &mut objects);
    axum::Json(serde_json::json!({ "objects": objects })).into_response()
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<serde_json::Value>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Staged writes (object_store's `name#n`, the endpoint's `.uploads`) are not objects.
        if name.starts_with('.') || name.contains('#') {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        let path = e.path();
        if meta.is_dir() {
            walk(root, &path, out);
        } else if let (Ok(rel), Ok(Some((_, meta, tag)))) =
            (path.strip_prefix(root), open_object(&path))
        {
            let [_, _, (_, ms)] = meta_headers(&meta, &tag);
            out.push(serde_json::json!({
                "path": rel.to_string_lossy(),
                "size": meta.len(),
                "modified_ms": ms.parse::<i64>().unwrap_or(0),
                "etag": tag,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::safe_name;

    #[test]
    fn only_layout_names_are_served() {
        assert!(safe_name("users/ab12/backups/0001-ab-cd.bkv"));
        assert!(safe_name("users/ab12/latest.json"));
        for bad in [
            "",
            "../x",
            "users/../x",
            ".uploads/x",
            "a//b",
            "a/.b",
            "a b",
            "a/%2e%2e",
        ] {
            assert!(!safe_name(bad), "{bad}");
        }
    }
}
