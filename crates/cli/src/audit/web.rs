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
    let page = a.target.starts_with("http://") || a.target.starts_with("https://");
    let (manifest, settings) = if page {
        let (m, s) = served(&a.http, a.target).await?;
        (m, Some(s))
    } else {
        (local(std::path::Path::new(a.target))?, None)
    };
    let digest = web::digest(&manifest);
    let files = Manifest::parse(&manifest)?
        .files
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let snap = fetch_snapshot(&a.http, a.auditor, a.namespace).await?;
    let log = verify_snapshot(&snap, a.namespace, &a.operator_key, a.auditor_key)?;
    if let Some(s) = settings {
        page_trusts(&s, &log, a.namespace, &a.operator_key)?;
    }
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

/// The page's settings (`config.json`) must trust the log just verified: the code is logged, but
/// these are not, and a page that pins another fleet key or another auditor would hand the
/// password to whoever holds it.
fn page_trusts(
    settings: &serde_json::Value,
    log: &LogReport,
    namespace: &str,
    operator_key: &VerifyingKey,
) -> anyhow::Result<()> {
    let t = &settings["trust"];
    let field = |k: &str| t[k].as_str().unwrap_or_default();
    if field("mode") != "ota" {
        bail!("the page's config.json does not take the fleet key from the auditor's log (trust mode {:?})", field("mode"));
    }
    let key_hex = |k: &str| -> String {
        match bkv_transparency::note::parse_verifier_key(k) {
            Ok((_, key)) => hex::encode(key.as_bytes()),
            Err(_) => k.to_ascii_lowercase(),
        }
    };
    let checks = [
        (
            "namespace",
            field("namespace").to_owned(),
            namespace.to_owned(),
        ),
        ("origin", field("origin").to_owned(), log.origin.clone()),
        (
            "auditor_key",
            key_hex(field("auditor_key")),
            log.auditor.clone(),
        ),
        (
            "operator_key",
            key_hex(field("operator_key")),
            hex::encode(operator_key.as_bytes()),
        ),
    ];
    for (name, page, audited) in checks {
        if page != audited {
            bail!("the page's config.json trusts {name} {page:?}, not the audited {audited:?}");
        }
    }
    Ok(())
}

/// The served build's manifest, every file it names fetched and checked against it (and the
/// page's root, which is what a browser loads, against `index.html`), and its settings.
async fn served(http: &reqwest::Client, url: &str) -> anyhow::Result<(Vec<u8>, serde_json::Value)> {
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
    let hash = |name: &str, bytes: &[u8]| -> anyhow::Result<[u8; 32]> {
        Ok(Manifest::of_files([(name, bytes)])?.files[0].1)
    };
    for (name, want) in &m.files {
        let got = fetch(name.clone(), MAX_FILE).await?;
        if hash(name, &got)? != *want {
            bail!("{base}/{name} is not the file the build's manifest names");
        }
    }
    let index = m.files.iter().find(|(n, _)| n == "index.html");
    let root = fetch(String::new(), MAX_FILE).await?;
    if index.map(|(_, h)| *h) != Some(hash("index.html", &root)?) {
        bail!("{base}/ is not the build's index.html");
    }
    let settings = fetch("config.json".to_owned(), 64 * 1024).await?;
    let settings = serde_json::from_slice(&settings).context("the page's config.json")?;
    Ok((manifest, settings))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_whose_settings_trust_other_keys_fails_the_audit() {
        let op = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let log = LogReport {
            auditor: "aa".repeat(32),
            namespace: "dev".into(),
            origin: "bkv-auditor/dev".into(),
            size: 4,
            root: String::new(),
            epochs: Vec::new(),
            members: Vec::new(),
            evidence: Vec::new(),
            web: Vec::new(),
            warnings: Vec::new(),
        };
        let good = serde_json::json!({"trust": {
            "mode": "ota", "namespace": "dev", "origin": "bkv-auditor/dev",
            "auditor_key": "AA".repeat(32), "operator_key": hex::encode(op.as_bytes()),
        }});
        page_trusts(&good, &log, "dev", &op).unwrap();
        for (k, v) in [
            ("mode", "pinned"),
            ("namespace", "other"),
            ("origin", "evil/dev"),
            ("auditor_key", "bb"),
            ("operator_key", "cc"),
        ] {
            let mut bad = good.clone();
            bad["trust"][k] = v.into();
            let e = page_trusts(&bad, &log, "dev", &op).unwrap_err().to_string();
            assert!(e.contains("config.json"), "{k}: {e}");
        }
    }
}
