//! Backups in S3: a real S3-compatible server (`moto_server`, installed by
//! `scripts/test-all.sh` from PyPI) on a free 127.0.0.1 port, and `bkv-admin dev up --storage-url
//! s3://…`. The storage, protector and rotation flows a user runs, the conditional writes
//! `latest.json` relies on, and a killed multipart upload that leaves the previous backup
//! restorable.

use bkv_testkit::system::*;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutPayload, UpdateVersion};
use std::process::{Child, Command, Stdio};

/// A moto S3 server, killed on drop.
pub(crate) struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    /// Starts moto on a port the kernel picks (no bind-and-release race with other tests) and
    /// reads the port from its "Running on" line.
    pub(crate) fn start() -> Moto {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server is not installed: run ./scripts/test-all.sh (pip install 'moto[server]')");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let endpoint = loop {
            let line = lines
                .next()
                .expect("moto_server exited before it listened")
                .unwrap();
            if let Some(url) = line.split("Running on ").nth(1) {
                break url.trim().to_owned();
            }
        };
        // Keep reading its request log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Moto { child, endpoint }
    }

    /// The standard AWS variables pointing at this server.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "bkv-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "bkv-test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// A bucket, and `bkv-admin dev up --storage-url s3://bucket[/prefix]` with this server's
    /// environment; returns the deployment and the environment for `bkv` commands.
    fn deployment(
        &self,
        tmp: &std::path::Path,
        bucket: &str,
        prefix: &str,
    ) -> (DevUp, Vec<(&'static str, String)>) {
        self.create_bucket(bucket);
        let env = self.env();
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = format!("s3://{bucket}{prefix}");
        let dev = DevUp::start_args(&tmp.join("dev"), &refs, &["--storage-url", &url]);
        (dev, env)
    }

    pub(crate) fn create_bucket(&self, bucket: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let status = rt.block_on(async {
            reqwest::Client::new()
                .put(format!("{}/{bucket}", self.endpoint))
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "create bucket: {status}");
    }

    fn store(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("bkv-test")
            .with_secret_access_key("bkv-test")
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .build()
            .unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every object name under `prefix`.
fn objects(store: &object_store::aws::AmazonS3, prefix: &str) -> Vec<String> {
    use futures::StreamExt;
    rt().block_on(async {
        let mut out = Vec::new();
        let mut s = store.list(Some(&ObjPath::from(prefix)));
        while let Some(m) = s.next().await {
            out.push(m.unwrap().location.to_string());
        }
        out.sort();
        out
    })
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn backups_protectors_and_rotation_work_on_s3() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (dev, env) = moto.deployment(tmp.path(), "bkv-backups", "/app-1");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let src = tmp.path().join("history");
    std::fs::create_dir_all(src.join("chats")).unwrap();
    std::fs::write(src.join("chats/a.txt"), "hello from S3").unwrap();
    std::fs::write(src.join("photo.bin"), vec![7u8; 3 * 1024 * 1024]).unwrap();
    let run = |args: &[&str], stdin: &str| bkv_with(&dev.config, args, stdin, &env);
    let pw = "correct horse\n";
    ok(&run(
        &[
            "backup",
            "create",
            "--user",
            "alice",
            "--password-stdin",
            src.to_str().unwrap(),
        ],
        pw,
    ));
    let s3 = moto.store("bkv-backups");
    let first = objects(&s3, "app-1/users");
    assert!(
        first.iter().any(|o| o.ends_with(".bkv"))
            && first.iter().any(|o| o.ends_with("latest.json")),
        "{first:?}"
    );
    assert!(
        !dev.dir.join("storage/users").exists(),
        "nothing goes to the local directory"
    );
    let out = tmp.path().join("restored");
    ok(&run(
        &[
            "backup",
            "restore",
            "--user",
            "alice",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        pw,
    ));
    assert_eq!(
        std::fs::read_to_string(out.join("chats/a.txt")).unwrap(),
        "hello from S3"
    );
    // A recovery key, then a key rotation: the recovery key's slot follows the new key.
    let added = ok(&run(
        &[
            "backup",
            "protectors",
            "add",
            "--recovery-key",
            "--user",
            "alice",
            "--password-stdin",
        ],
        pw,
    ));
    let rk = crate::protectors::recovery_key_in(&added);
    ok(&run(
        &[
            "backup",
            "rotate-key",
            "--user",
            "alice",
            "--password-stdin",
        ],
        pw,
    ));
    let after = objects(&s3, "app-1/users");
    let backups: Vec<_> = after.iter().filter(|o| o.ends_with(".bkv")).collect();
    assert_eq!(backups.len(), 1, "the old key's backup is gone: {after:?}");
    assert!(
        !first.contains(backups[0]),
        "a new object under the new key"
    );
    let out2 = tmp.path().join("restored-rk");
    ok(&run(
        &[
            "backup",
            "restore",
            "--user",
            "alice",
            "--recovery-key-stdin",
            "--out",
            out2.to_str().unwrap(),
        ],
        &format!("{rk}\n"),
    ));
    assert_eq!(
        std::fs::read(out2.join("photo.bin")).unwrap(),
        vec![7u8; 3 * 1024 * 1024]
    );
    // Disable: the user's objects are gone.
    ok(&run(
        &["backup", "disable", "--user", "alice", "--password-stdin"],
        pw,
    ));
    assert!(objects(&s3, "app-1/users").is_empty());
}

#[test]
fn a_killed_upload_leaves_the_previous_backup_restorable() {
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (dev, env) = moto.deployment(tmp.path(), "bkv-killed", "");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let file = tmp.path().join("history.bin");
    std::fs::write(&file, b"version one").unwrap();
    let pw = "pw one\n";
    let create = |extra: &[(&str, &str)]| {
        let mut all = env.clone();
        all.extend_from_slice(extra);
        bkv_with(
            &dev.config,
            &[
                "backup",
                "create",
                "--user",
                "bob",
                "--password-stdin",
                file.to_str().unwrap(),
            ],
            pw,
            &all,
        )
    };
    ok(&create(&[]));
    let s3 = moto.store("bkv-killed");
    let before = objects(&s3, "users");
    // Twelve MiB: three multipart parts, all sent, the upload never completed.
    std::fs::write(&file, vec![1u8; 12 * 1024 * 1024]).unwrap();
    let killed = create(&[("BKV_CRASH_AT", "upload-unfinished")]);
    assert!(!killed.status.success(), "the process was killed");
    assert_eq!(
        objects(&s3, "users"),
        before,
        "no new object, latest.json unchanged"
    );
    let out = tmp.path().join("restored.bin");
    ok(&bkv_with(
        &dev.config,
        &[
            "backup",
            "restore",
            "--user",
            "bob",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        pw,
        &env,
    ));
    assert_eq!(std::fs::read(&out).unwrap(), b"version one");
}

/// The conditional writes `latest.json` relies on, against the server: a create never replaces
/// an object, and a replace names the version it replaces.
#[test]
fn s3_conditional_writes_refuse_stale_replacements() {
    let moto = Moto::start();
    moto.create_bucket("bkv-cas");
    let s3 = moto.store("bkv-cas");
    let path = ObjPath::from("users/x/latest.json");
    rt().block_on(async {
        let first = s3
            .put_opts(&path, PutPayload::from_static(b"1"), PutMode::Create.into())
            .await
            .unwrap();
        let again = s3
            .put_opts(&path, PutPayload::from_static(b"2"), PutMode::Create.into())
            .await;
        assert!(
            matches!(again, Err(object_store::Error::AlreadyExists { .. })),
            "{again:?}"
        );
        let v1 = UpdateVersion {
            e_tag: first.e_tag.clone(),
            version: first.version.clone(),
        };
        s3.put_opts(
            &path,
            PutPayload::from_static(b"3"),
            PutMode::Update(v1.clone()).into(),
        )
        .await
        .unwrap();
        let stale = s3
            .put_opts(
                &path,
                PutPayload::from_static(b"4"),
                PutMode::Update(v1).into(),
            )
            .await;
        assert!(
            matches!(stale, Err(object_store::Error::Precondition { .. })),
            "{stale:?}"
        );
        let body = s3.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&body[..], b"3");
    });
}
