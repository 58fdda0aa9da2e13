//! `bkv audit web URL|DIR`: is this page a build the operator logged? A served page (URL) or a
//! local build (DIR, e.g. a reproducible rebuild from source) is read file by file, each file
//! checked against the build's manifest, and the manifest looked up in the auditor's log, which
//! is verified whole as `bkv audit log` verifies it.

use super::*;
use bkv_transparency::web::{self, Manifest, MANIFEST_FILE, MAX_MANIFEST};

/// Largest file of a web build read (the wasm module is a few MiB).
const MAX_FILE: usize = 64 * 1024 * 1024;

/// What `bkv audit web` checks against.
pub struct WebAudit<'a> {
    /// A page URL (`http://`, `https://`) or a build directory.
    pub target: &'a str,
    pub http: reqwest::Client,
    pub auditor: &'a str,
    pub namespace: &'a str,
    pub operator_key: VerifyingKey,
    pub auditor_key: Option<VerifyingKey>,
}

/// A web build found in the log.
#[derive(Debug, Serialize)]
pub struct WebReport {
    pub target: String,
    /// SHA-256 of the build's manifest.
    pub digest: String,
    /// Its files, each checked against the manifest.
    pub files: Vec<String>,
    /// Its index in the auditor's log.
    pub index: u64,
    /// The verified log's size and origin.
    pub log_size: u64,
    pub origin: String,
}

pub async fn audit_web(a: &WebAudit<'_>) -> anyhow::Result<WebReport> {
    let manifest = if a.target.starts_with("http://") || a.target.starts_with("https://") {
        served(&a.http, a.target).await?
    } else {
        local(std::path::Path::new(a.target))?
    };
    let digest = web::digest(&manifest);
    let files = Manifest::parse(&manifest)?
        .files
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let snap = fetch_snapshot(&a.http, a.auditor, a.namespace).await?;
    let log = verify_snapshot(&snap, a.namespace, &a.operator_key, a.auditor_key)?;
    let hex_digest = hex::encode(digest);
    let Some(row) = log.web.iter().find(|w| w.digest == hex_digest) else {
        bail!(
            "this web build (manifest {hex_digest}) is not in the auditor's log {} ({} entries, {} web builds logged)",
            log.origin,
            log.size,
            log.web.len()
        );
    };
    Ok(WebReport {
        target: a.target.to_owned(),
        digest: hex_digest,
        files,
        index: row.index,
        log_size: log.size,
        origin: log.origin,
    })
}

/// The served build's manifest, every file it names fetched and checked against it.
async fn served(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<u8>> {
    let base = url.trim_end_matches('/');
    let fetch = |name: String, limit: usize| async move {
        let u = format!("{base}/{name}");
        let r = http
            .get(&u)
            .send()
            .await
            .with_context(|| format!("GET {u}"))?;
        if !r.status().is_success() {
            bail!("GET {u}: {}", r.status());
        }
        Ok::<_, anyhow::Error>(bkv_client::read_limited(r, limit).await?)
    };
    let manifest = fetch(MANIFEST_FILE.to_owned(), MAX_MANIFEST).await?;
    let m = Manifest::parse(&manifest).with_context(|| format!("{base}/{MANIFEST_FILE}"))?;
    for (name, want) in &m.files {
        let got = fetch(name.clone(), MAX_FILE).await?;
        if Manifest::of_files([(name.as_str(), got.as_slice())])?.files[0].1 != *want {
            bail!("{base}/{name} is not the file the build's manifest names");
        }
    }
    Ok(manifest)
}

/// A local build's manifest, which must name exactly the directory's files.
fn local(dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let manifest = std::fs::read(dir.join(MANIFEST_FILE))
        .with_context(|| format!("read {}", dir.join(MANIFEST_FILE).display()))?;
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != MANIFEST_FILE {
            files.push((name, std::fs::read(e.path())?));
        }
    }
    let actual = Manifest::of_files(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())))?;
    if actual.encode() != manifest {
        bail!("{}: the files differ from {MANIFEST_FILE}", dir.display());
    }
    Ok(manifest)
}

pub fn print_report(r: &WebReport) {
    println!(
        "web build {} is in the auditor's log {} at index {} (log size {})",
        r.target, r.origin, r.index, r.log_size
    );
    println!("manifest {}: {}", r.digest, r.files.join(", "));
}
