//! `bkv dev up` as a launcher of the real service binaries: the frontend runs as its own
//! `bkv-frontend` process from the config file dev up wrote, answers health, readiness and
//! metrics, and `bkv config check` validates that file and the client's.

use crate::common::*;
use std::process::Command;

fn get(url: &str) -> (u16, String) {
    bkv_service::testing::get(url, None).unwrap()
}

fn check(file: &std::path::Path) -> (bool, String) {
    let out = Command::new(bkv_bin())
        .args(["config", "check"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dev_up_runs_the_frontend_as_a_service_and_config_check_reads_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&tmp.path().join("dev"));
    // Its own process, started from the config file dev up wrote.
    let pid: i32 = std::fs::read_to_string(dev.dir.join("frontend/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid, dev.child.id() as i32);
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.contains("bkv-frontend"), "{cmdline:?}");
    assert!(cmdline.contains("frontend.toml"), "{cmdline:?}");
    assert_eq!(get(&format!("{}/healthz", dev.frontend_url)).0, 200);
    let (status, body) = get(&format!("{}/readyz", dev.frontend_url));
    assert_eq!(status, 200, "the one-node fleet has a leader: {body}");
    let (status, metrics) = get(&format!("{}/metrics", dev.frontend_url));
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"route="/readyz",status="200""#),
        "{metrics}"
    );
    // A real backup through it, as before.
    let src = tmp.path().join("f.txt");
    std::fs::write(&src, "through the frontend service").unwrap();
    let out = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "carol",
            "--password-stdin",
            src.to_str().unwrap(),
        ],
        "pw\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let frontend_toml = dev.dir.join("frontend/frontend.toml");
    assert_eq!(check(&frontend_toml), (true, String::new()));
    assert!(check(&dev.config).0);
    // Broken copies name the field.
    let bad = tmp.path().join("bad-frontend.toml");
    let text = std::fs::read_to_string(&frontend_toml).unwrap();
    std::fs::write(
        &bad,
        text.replace("idle_timeout_secs = 30", "idle_timeout_secs = 0"),
    )
    .unwrap();
    for f in ["dev-token-signing.key", "routes.json", "passkeys.redb"] {
        let _ = std::fs::copy(dev.dir.join("frontend").join(f), tmp.path().join(f));
    }
    let (ok, err) = check(&bad);
    assert!(!ok);
    assert!(err.contains("limits.idle_timeout_secs"), "{err}");
    let bad_client = tmp.path().join("bad-client.toml");
    let text = std::fs::read_to_string(&dev.config).unwrap();
    let url = dev.frontend_url.clone();
    std::fs::write(&bad_client, text.replace(&url, "http://192.0.2.1:8080")).unwrap();
    let (ok, err) = check(&bad_client);
    assert!(!ok);
    assert!(err.contains("plain http"), "{err}");
}

/// Every sample in `deploy/` is a valid config (its key files exist only on a real host).
#[test]
fn the_deploy_samples_pass_config_check() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut checked = 0;
    for e in std::fs::read_dir(&deploy).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let out = Command::new(bkv_bin())
                .args(["config", "check", "--skip-files"])
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no sample in {}", deploy.display());
}
