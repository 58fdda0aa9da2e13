//! `bkv-admin dev up` as a launcher of the real service binaries: the frontend runs as its own
//! `bkv-frontend` process from the config file dev up wrote, answers health, readiness and
//! metrics, and `bkv config check` validates that file and the client's.

use bkv_testkit::system::*;
use std::process::Command;

fn get(url: &str) -> (u16, String) {
    bkv_testkit::services::get(url, None).unwrap()
}

fn check(file: &std::path::Path) -> (bool, String) {
    let out = Command::new(admin_bin())
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

/// Every sample in `deploy/` is a valid config (its key files exist only on a real host), checked
/// through the user's `bkv`, which hands service configs to `bkv-admin`.
#[test]
fn the_deploy_samples_pass_config_check() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut checked = 0;
    for e in std::fs::read_dir(&deploy).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let out = Command::new(bkv_bin())
                .env("BKV_ADMIN_BIN", admin_bin())
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
            // A broken copy: the error names the field.
            let bad = std::env::temp_dir().join(format!(
                "bkv-bad-{}-{}",
                std::process::id(),
                p.file_name().unwrap().to_string_lossy()
            ));
            let text = std::fs::read_to_string(&p).unwrap();
            std::fs::write(&bad, format!("bogus_setting = 1\n{text}")).unwrap();
            let out = Command::new(bkv_bin())
                .env("BKV_ADMIN_BIN", admin_bin())
                .args(["config", "check", "--skip-files"])
                .arg(&bad)
                .output()
                .unwrap();
            let _ = std::fs::remove_file(&bad);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("bogus_setting"),
                "{}: {err}",
                p.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no sample in {}", deploy.display());
}

/// The three services from their config files alone (no `dev up`, no flags): an auditor, a
/// node founding a fleet pinned to it, and a frontend routing to the node; the frontend is ready
/// while the fleet has a leader, unready when the node is gone, ready again after its restart
/// (with an environment override, as an operator's unit file would give one).
#[test]
fn the_services_run_from_config_files_and_readiness_follows_the_fleet() {
    use bkv_testkit::services::{field, get, spawn_ready};
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let operator = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let op_hex = hex::encode(operator.verifying_key().as_bytes());
    std::fs::write(
        d.join("auditor.toml"),
        format!(
            "data_dir = \"auditor\"\nname = \"test-auditor\"\n[listen]\naddr = \"127.0.0.1:0\"\n\
             [[namespaces]]\nname = \"app\"\noperator_key = \"{op_hex}\"\n"
        ),
    )
    .unwrap();
    // Relative paths in a config are the service's working directory's.
    let start = |bin: std::path::PathBuf, config: &str, env: &[(&str, String)]| {
        spawn_ready(
            Command::new(bin)
                .current_dir(d)
                .arg("--config")
                .arg(config)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stderr(Stdio::null()),
        )
        .unwrap()
    };
    let mut procs = Procs(Vec::new());
    let (auditor, line) = start(bkv_bin().with_file_name("bkv-auditor"), "auditor.toml", &[]);
    procs.0.push(auditor);
    let auditor_url = field(&line, "url").unwrap();
    let key: bkv_api::auditor::KeyInfo =
        serde_json::from_str(&get(&format!("{auditor_url}/v1/key"), None).unwrap().1).unwrap();
    std::fs::write(
        d.join("node.toml"),
        format!(
            "data_dir = \"node\"\n[listen]\nrelay = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             peer = \"127.0.0.1:0\"\n[fleet]\nfound = true\noperator_key = \"{op_hex}\"\n\
             auditor_key = \"{}\"\nnamespace = \"app\"\n",
            key.verifier_key
        ),
    )
    .unwrap();
    let (node, line) = start(hsm_bin(), "node.toml", &[]);
    procs.0.push(node);
    let (relay, peer) = (
        field(&line, "listen").unwrap(),
        field(&line, "peer").unwrap(),
    );
    std::fs::write(d.join("dev.key"), [5u8; 32]).unwrap();
    std::fs::set_permissions(
        d.join("dev.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        d.join("frontend.toml"),
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[tokens]\ndev_mode = true\n\
             dev_signing_key_file = \"dev.key\"\n[[fleets.routes]]\nfleet_id = \"f\"\n\
             nodes = [\"{relay}\"]\n"
        ),
    )
    .unwrap();
    let frontend_bin = bkv_bin().with_file_name("bkv-frontend");
    let (frontend, line) = start(frontend_bin, "frontend.toml", &[]);
    procs.0.push(frontend);
    let ready = format!("{}/readyz", field(&line, "url").unwrap());
    let status = || get(&ready, None).unwrap().0;
    let wait_for = |want: u16| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while status() != want {
            assert!(
                std::time::Instant::now() < deadline,
                "readyz never became {want}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_for(200);
    procs.0[1].kill().unwrap();
    procs.0[1].wait().unwrap();
    wait_for(503);
    // The same file, its addresses pinned by overrides (they were port 0 at first).
    let (node, _) = start(
        hsm_bin(),
        "node.toml",
        &[
            ("BKV_HSM__LISTEN__RELAY", relay.clone()),
            ("BKV_HSM__LISTEN__PEER", peer.clone()),
        ],
    );
    procs.0.push(node);
    wait_for(200);
}

/// Service processes a test started, killed when it ends (also when it fails).
struct Procs(Vec<std::process::Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
