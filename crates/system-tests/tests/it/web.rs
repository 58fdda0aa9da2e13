//! Issue 29, items 1–3: the browser client. The page `dev up` serves at its `web=` URL, in
//! headless Chromium with a virtual WebAuthn authenticator (crates/web/tests/browser.mjs):
//! backup, byte-identical restore, the guess count, passkey and recovery-key restores,
//! refused tampering; and backups crossing between the page and the CLI both ways.
//!
//! It needs what `scripts/build-web.sh --install` brings: the web build (`BKV_WEB_DIR` or
//! `target/web/dist`), Chromium, Node and `playwright-core` in `crates/web/tests`.

use bkv_testkit::system::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const PW: &str = "correct horse battery staple\n";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_browser_client_backs_up_restores_and_uses_passkeys() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_with_page(&t.path().join("dev"));
    let web_source = t.path().join("web-source.bin");
    let cli_source = t.path().join("cli-source.bin");
    write_noise(&web_source, 3 * 1024 * 1024 + 12_345, 41);
    // Text: the CLI compresses it (zstd), and the browser decompresses it as it restores.
    let lines: String = (0..40_000)
        .map(|i| format!("line {i}: the quick brown fox, {}\n", i * 7919 % 1000))
        .collect();
    std::fs::write(&cli_source, &lines).unwrap();
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "cli-bob",
            "--password-stdin",
            cli_source.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    let stored: u64 = String::from_utf8_lossy(&o.stdout)
        .rsplit('(')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stored size in {}", text(&o)));
    assert!(stored < lines.len() as u64 / 2, "not compressed: {stored}");

    let o = Command::new("node")
        .arg(repo().join("crates/web/tests/browser.mjs"))
        .arg(&dev.web_url)
        .arg(&web_source)
        .arg("cli-bob")
        .arg(&cli_source)
        .output()
        .unwrap();
    assert!(o.status.success(), "browser.mjs: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(r#""tampered_bundle":"tampered""#), "{out}");

    // The page's backup restores with the CLI, byte for byte.
    let restored = t.path().join("restored.bin");
    let o = restore_backup(&dev.config, "web-alice", PW, &restored, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_tree(&web_source, &restored);
}

/// The storage endpoint `dev up` serves, through the client's own `HttpStore` (natively, over
/// reqwest): streamed backups in parts and ranges, conditional writes, listing, and the same
/// directory the CLI uses.
#[test]
fn the_storage_endpoint_keeps_objects_whole_and_conditional_writes_exact() {
    use bkv_client::{BackupKey, BackupStore, BlobStore, Chunks, HttpStore, Output};
    use bkv_client::{PutMode, ReqwestHttp, StoreError};
    use bytes::Bytes;
    use futures::future::BoxFuture;
    use futures::StreamExt;
    use std::sync::Arc;

    struct Pieces(Vec<Vec<u8>>);
    impl Chunks for Pieces {
        fn next(&mut self) -> BoxFuture<'_, bkv_client::Result<Option<Vec<u8>>>> {
            Box::pin(async move { Ok((!self.0.is_empty()).then(|| self.0.remove(0))) })
        }
    }
    struct Collect(Vec<u8>);
    impl Output for Collect {
        fn write(&mut self, piece: Vec<u8>) -> BoxFuture<'_, bkv_client::Result<()>> {
            self.0.extend_from_slice(&piece);
            Box::pin(async { Ok(()) })
        }
    }

    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = Arc::new(ReqwestHttp(reqwest::Client::new()));
        let base = format!("{}storage", dev.web_url);
        let store = Arc::new(HttpStore::new(http, &base, None));

        // A backup larger than one part and one range, made and read back in pieces.
        let s = BackupStore::with_store(store.clone(), "endpoint-user");
        let key = BackupKey::generate();
        let data: Vec<u8> = (0..11_000_000u32).map(|i| (i % 251) as u8).collect();
        let pieces = data.chunks(1 << 20).map(<[u8]>::to_vec).collect();
        let made = s
            .create_streamed(&key, &mut Pieces(pieces), 1 << 20)
            .await
            .unwrap();
        let mut out = Collect(Vec::new());
        s.restore_streamed(&key, &mut out).await.unwrap();
        assert!(out.0 == data, "restored bytes differ");
        // It is where the CLI's local store looks: the deployment's storage directory.
        let on_disk: Vec<_> = walk(&dev.dir.join("storage"))
            .into_iter()
            .filter(|p| p.ends_with(&made.object))
            .collect();
        assert_eq!(on_disk.len(), 1, "{on_disk:?}");
        assert_eq!(std::fs::metadata(&on_disk[0]).unwrap().len(), made.size);

        // Conditional writes: create-only refuses an existing object; an update names the
        // version it replaces, and a stale one is refused.
        let p = "users/x/latest.json";
        let put = |body: &'static [u8], mode| store.put(p, Bytes::from_static(body), mode);
        put(b"one", PutMode::Create).await.unwrap();
        let again = put(b"two", PutMode::Create).await;
        assert!(
            matches!(again, Err(StoreError::AlreadyExists(_))),
            "{again:?}"
        );
        let meta = store.head(p).await.unwrap();
        let update = |e_tag: Option<String>| PutMode::Update {
            e_tag,
            version: None,
        };
        put(b"three", update(meta.e_tag.clone())).await.unwrap();
        let stale = put(b"four", update(meta.e_tag)).await;
        assert!(
            matches!(stale, Err(StoreError::Precondition(_))),
            "{stale:?}"
        );
        let got: Vec<Bytes> = store
            .get(p)
            .await
            .unwrap()
            .stream
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(got.concat(), b"three");
        // Names outside the storage layout are refused before any request.
        for bad in ["users/x/a b", "users/../x", "users//x", "/users/x"] {
            assert!(store.get(bad).await.is_err(), "{bad}");
        }
        store.delete(p).await.unwrap();
        assert!(matches!(store.get(p).await, Err(StoreError::NotFound(_))));
    });
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Issue 29, item 5: `dev up` logs the build it serves; `bkv audit web` finds the served page
/// and a local build in the auditor's log, and refuses a page whose files were changed, and a
/// consistent manifest of changed files, which was never logged.
#[test]
fn a_served_web_build_is_checked_against_the_auditors_log() {
    let t = tempfile::tempdir().unwrap();
    let served = t.path().join("web");
    std::fs::create_dir_all(&served).unwrap();
    for e in std::fs::read_dir(web_build()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), served.join(e.file_name())).unwrap();
    }
    let dev = DevUp::start_with_env(
        &t.path().join("dev"),
        &[("BKV_WEB_DIR", served.to_str().unwrap())],
    );
    let audit = |target: &str| {
        let mut args = vec![
            "audit",
            "web",
            target,
            "--auditor",
            &dev.auditor_url,
            "--namespace",
            "dev",
        ];
        let keys = dev.log_keys();
        args.extend(keys.iter().map(String::as_str));
        dev.bkv(&args, "")
    };
    let o = audit(&dev.web_url);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("is in the auditor's log"), "{}", text(&o));
    let o = audit(served.to_str().unwrap());
    assert!(o.status.success(), "{}", text(&o));

    // One changed byte in a served file: not the file the logged manifest names.
    let app = served.join("app.js");
    let mut js = std::fs::read(&app).unwrap();
    js.extend_from_slice(b"\n// exfiltrate();\n");
    std::fs::write(&app, &js).unwrap();
    let o = audit(&dev.web_url);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("not the file the build's manifest names"),
        "{}",
        text(&o)
    );

    // The operator serves a manifest that matches the changed files: it is not in the log.
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&served)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != bkv_transparency::web::MANIFEST_FILE)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    let m = bkv_transparency::web::Manifest::of_files(
        files.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
    )
    .unwrap();
    std::fs::write(
        served.join(bkv_transparency::web::MANIFEST_FILE),
        m.encode(),
    )
    .unwrap();
    let o = audit(&dev.web_url);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("is not in the auditor's log"),
        "{}",
        text(&o)
    );
}
