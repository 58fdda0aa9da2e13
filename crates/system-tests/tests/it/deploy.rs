//! A deployment as an operator builds one, without `dev up`: an auditor, three `bkv-hsm` nodes
//! and a frontend, each started from its config file alone, over TLS (a CA the test makes), the
//! fleet formed by `bkv-admin fleet form` from the nodes' platform statements, backups in S3
//! (a local moto server), user tokens from an identity provider's JWKS. A user backs up,
//! restores, guesses wrong and restores with a passkey through them; every service's
//! `/metrics` parses as Prometheus text; readiness follows the loss and return of the node
//! majority.

use crate::s3::Moto;
use bkv_testkit::services::{field, spawn_ready};
use bkv_testkit::system::*;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Service processes a test started, killed when it ends (also when it fails).
struct Procs(Vec<(&'static str, Child)>);

impl Procs {
    fn kill(&mut self, name: &str) {
        for (n, c) in &mut self.0 {
            if *n == name {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.0.retain(|(n, _)| *n != name);
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn write_key(path: &Path, seed: u8) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, [seed; 32]).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn free_port() -> u16 {
    bkv_testkit::services::free_port().unwrap()
}

/// An Ed25519 JWT from the identity provider (key `seed`, `kid`) for `sub`, valid ten minutes.
fn idp_token(sub: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_bytes(&[21; 32]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let h = B64.encode(serde_json::json!({"alg": "EdDSA", "kid": "idp-1"}).to_string());
    let c = B64.encode(
        serde_json::json!({"sub": sub, "aud": ["bkv", "other-app"], "iss": "https://id.test",
            "iat": now, "exp": now + 600})
        .to_string(),
    );
    let input = format!("{h}.{c}");
    format!(
        "{input}.{}",
        B64.encode(key.sign(input.as_bytes()).to_bytes())
    )
}

fn idp_jwks() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    let key = ed25519_dalek::SigningKey::from_bytes(&[21; 32]);
    serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "idp-1",
        "x": B64.encode(key.verifying_key().as_bytes())}]})
    .to_string()
}

/// `GET url`: status and body (HTTPS trusting only `ca`).
fn get(url: &str, ca: Option<&str>) -> (u16, String) {
    bkv_testkit::services::get(url, ca).unwrap_or((0, String::new()))
}

fn wait_status(url: &str, ca: Option<&str>, want: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(url, ca);
        if code == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {url} stayed {code} ({body}), wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Parses a Prometheus text exposition; returns the samples.
fn scrape(text: &str) -> Vec<prometheus_parse::Sample> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .expect("metrics are Prometheus text")
        .samples
}

fn value(samples: &[prometheus_parse::Sample], metric: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

struct Node {
    config: PathBuf,
    relay: String,
    admin: String,
    peer: String,
}

#[test]
fn the_services_run_from_config_files_over_tls_with_s3_and_report_health_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ca = bkv_testkit::services::pki(d).unwrap();
    write(&d.join("ca.pem"), &ca);
    let ca = Some(ca.as_str());
    let moto = Moto::start();
    moto.create_bucket("backups");
    let mut procs = Procs(Vec::new());
    let start = |name: &'static str, bin: PathBuf, config: &Path, procs: &mut Procs| {
        let (child, line) = spawn_ready(
            Command::new(bin)
                .current_dir(d)
                .arg("--config")
                .arg(config)
                .stderr(std::fs::File::create(d.join(format!("{name}.log"))).unwrap()),
        )
        .unwrap();
        assert!(
            line.contains("ready"),
            "{name} did not start: {}",
            std::fs::read_to_string(d.join(format!("{name}.log"))).unwrap_or_default()
        );
        procs.0.push((name, child));
        line
    };

    // The auditor, over TLS.
    write_key(&d.join("operator.key"), 31);
    let operator = ed25519_dalek::SigningKey::from_bytes(&[31; 32]);
    let op_hex = hex::encode(operator.verifying_key().as_bytes());
    write(
        &d.join("auditor.toml"),
        &format!(
            "data_dir = \"auditor\"\nname = \"test-auditor\"\n[listen]\naddr = \"127.0.0.1:0\"\n\
             [tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n\
             [[namespaces]]\nname = \"app\"\noperator_key = \"{op_hex}\"\n"
        ),
    );
    let line = start(
        "auditor",
        admin_bin().with_file_name("bkv-auditor"),
        &d.join("auditor.toml"),
        &mut procs,
    );
    let auditor_url = field(&line, "url").unwrap();
    let auditor_key = field(&line, "key").unwrap();
    assert!(auditor_url.starts_with("https://"), "{line}");
    let key: bkv_api::auditor::KeyInfo =
        serde_json::from_str(&get(&format!("{auditor_url}/v1/key"), ca).1).unwrap();
    let verifier = key.verifier_key;

    // Three nodes: configs, then their platform statements.
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let (relay, admin, peer) = (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            );
            let fleet = if i == 0 {
                format!(
                    "found = true\noperator_key = \"{op_hex}\"\nauditor_key = \"{verifier}\"\nnamespace = \"app\"\n"
                )
            } else {
                "join = \"form/members.json\"\n".to_owned()
            };
            let config = d.join(format!("node{i}.toml"));
            write(
                &config,
                &format!(
                    "data_dir = \"node{i}\"\nnode_id = {i}\n[listen]\nrelay = \"{relay}\"\n\
                     admin = \"{admin}\"\npeer = \"{peer}\"\nmetrics = \"127.0.0.1:0\"\n\
                     [platform]\nkind = \"software\"\ndir = \"platform{i}\"\n[fleet]\n{fleet}"
                ),
            );
            let out = Command::new(hsm_bin())
                .current_dir(d)
                .arg("--config")
                .arg(&config)
                .arg("--print-statement")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            std::fs::write(d.join(format!("node{i}.statement.json")), &out.stdout).unwrap();
            Node {
                config,
                relay,
                admin,
                peer,
            }
        })
        .collect();

    // The ceremony: bkv-admin says when to start each node, and when each witness signs the
    // draft with its own tool and key.
    let witness_key = |i: u32| {
        let o = Command::new(bkv_bin())
            .args(["witness", "key", "--key"])
            .arg(d.join(format!("witness-{i}.key")))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    let (w1, w2) = (witness_key(1), witness_key(2));
    let mut plan = format!(
        "namespace = \"app\"\nauditor_url = \"{auditor_url}\"\nca_file = \"ca.pem\"\n\
         operator_key_file = \"operator.key\"\nout_dir = \"form\"\nwait_secs = 60\n\
         witnesses = [{{ name = \"w1\", key = \"{w1}\" }}, {{ name = \"w2\", key = \"{w2}\" }}]\n"
    );
    for (i, n) in nodes.iter().enumerate() {
        plan += &format!(
            "[[nodes]]\nid = {i}\nstatement_file = \"node{i}.statement.json\"\npeer = \"{}\"\nadmin = \"{}\"\n",
            n.peer, n.admin
        );
    }
    write(&d.join("form.toml"), &plan);
    let mut form = Command::new(admin_bin())
        .args(["fleet", "form", "--plan"])
        .arg(d.join("form.toml"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("form.log")).unwrap())
        .spawn()
        .unwrap();
    let names = ["node0", "node1", "node2"];
    let mut metrics_urls = Vec::new();
    let mut fleet_id = None;
    for line in std::io::BufReader::new(form.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        for (i, n) in nodes.iter().enumerate() {
            let cue = if i == 0 {
                "start node 0 ".to_owned()
            } else {
                format!("node {i} admitted")
            };
            if line.contains(&cue) {
                let ready = start(names[i], hsm_bin(), &n.config, &mut procs);
                metrics_urls.push(format!("http://{}", field(&ready, "metrics").unwrap()));
            }
        }
        for (i, name) in [(1, "w1"), (2, "w2")] {
            if line.contains(&format!("witness {name}: check and sign")) {
                let o = Command::new(bkv_bin())
                    .args(["witness", "ceremony", "--key"])
                    .arg(d.join(format!("witness-{i}.key")))
                    .args(["--name", name])
                    .arg(d.join("form/evidence.draft.json"))
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", text(&o));
                std::fs::write(d.join(format!("form/witness-{name}.json")), &o.stdout).unwrap();
            }
        }
        if line.contains("form: done") {
            fleet_id = field(&line, "fleet");
        }
    }
    let status = form.wait().unwrap();
    assert!(
        status.success(),
        "fleet form failed: {}",
        std::fs::read_to_string(d.join("form.log")).unwrap_or_default()
    );
    let fleet_id = fleet_id.expect("form printed no done line");
    // The evidence and the log verify as an independent auditor checks them, over TLS.
    let audit = |args: &[&str]| {
        Command::new(bkv_bin())
            .args(args)
            .arg("--ca-file")
            .arg(d.join("ca.pem"))
            .output()
            .unwrap()
    };
    let evidence = d.join("form/evidence.json");
    let o = audit(&[
        "audit",
        "fleet",
        evidence.to_str().unwrap(),
        "--auditor",
        &auditor_url,
        "--auditor-key",
        &verifier,
        "--operator-key",
        &op_hex,
        "--witness",
        &w1,
        "--witness",
        &w2,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = audit(&[
        "audit",
        "log",
        "--auditor",
        &auditor_url,
        "--namespace",
        "app",
        "--operator-key",
        &op_hex,
        "--auditor-key",
        &verifier,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("evidence at index"),
        "{}",
        text(&o)
    );

    // The frontend: TLS, tokens from the identity provider's JWKS, the auditor's bundle.
    write(&d.join("jwks.json"), &idp_jwks());
    let relays: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.relay)).collect();
    write(
        &d.join("frontend.toml"),
        &format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n\
             [tokens]\njwks_file = \"jwks.json\"\nissuer = \"https://id.test\"\naudience = \"bkv\"\n\
             [[fleets.routes]]\nfleet_id = \"{fleet_id}\"\nnodes = [{}]\n\
             [bundle]\nauditor_url = \"{auditor_url}\"\nnamespace = \"app\"\nca_file = \"ca.pem\"\n\
             [passkeys]\nrp_id = \"localhost\"\norigin = \"https://localhost\"\nstore = \"passkeys.redb\"\n\
             [metrics]\nenabled = true\n",
            relays.join(", ")
        ),
    );
    let line = start(
        "frontend",
        admin_bin().with_file_name("bkv-frontend"),
        &d.join("frontend.toml"),
        &mut procs,
    );
    let frontend_url = field(&line, "url").unwrap();
    assert!(frontend_url.starts_with("https://"), "{line}");
    wait_status(&format!("{frontend_url}/readyz"), ca, 200, "frontend");

    // The user's client: over-the-air fleet keys, S3 storage, the test CA only.
    let client = d.join("client.toml");
    write(
        &client,
        &format!(
            "version = 1\nfrontend_url = \"{frontend_url}\"\nstorage_dir = \"unused\"\n\
             storage_url = \"s3://backups/ada\"\nca_file = \"ca.pem\"\n\
             [fleet]\nmode = \"ota\"\n[fleet.ota]\nnamespace = \"app\"\norigin = \"test-auditor/app\"\n\
             auditor_name = \"test-auditor\"\nauditor_key = \"{auditor_key}\"\noperator_key = \"{op_hex}\"\n\
             state_file = \"client-state.json\"\n"
        ),
    );
    let token = idp_token("ada");
    let mut env: Vec<(&str, String)> = moto.env();
    env.push(("BKV_TOKEN", token));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bkv = |args: &[&str], stdin: &str| bkv_with(&client, args, stdin, &refs);
    // `bkv backup restore` of ada's latest backup with a password, into `d/out`.
    let restore_pw = |out: &str, password: &str| {
        let out = d.join(out);
        bkv(
            &[
                "backup",
                "restore",
                "--user",
                "ada",
                "--password-stdin",
                "--out",
                out.to_str().unwrap(),
            ],
            &format!("{password}\n"),
        )
    };
    let data = d.join("history");
    std::fs::create_dir_all(&data).unwrap();
    write(&data.join("chat.txt"), "hello from the other side\n");
    let o = bkv(
        &[
            "backup",
            "create",
            "--user",
            "ada",
            "--password-stdin",
            data.to_str().unwrap(),
        ],
        "pw-ada-1\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = restore_pw("wrong", "not-the-password");
    assert_eq!(o.status.code(), Some(3), "a wrong guess: {}", text(&o));
    let o = restore_pw("r1", "pw-ada-1");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(d.join("r1/chat.txt")).unwrap(),
        "hello from the other side\n"
    );
    let store = d.join("passkey-store.json");
    let o = bkv(
        &[
            "backup",
            "protectors",
            "add",
            "--user",
            "ada",
            "--passkey",
            "--new-passkey-store",
            store.to_str().unwrap(),
            "--password-stdin",
        ],
        "pw-ada-1\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = bkv(
        &[
            "backup",
            "restore",
            "--user",
            "ada",
            "--passkey-store",
            store.to_str().unwrap(),
            "--out",
            d.join("r2").to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("with the passkey"));
    assert_eq!(
        std::fs::read_to_string(d.join("r2/chat.txt")).unwrap(),
        "hello from the other side\n"
    );

    // Every service's metrics parse; the guesses and the log show; no user id in them.
    let f = get(&format!("{frontend_url}/metrics"), ca);
    let a = get(&format!("{auditor_url}/metrics"), ca);
    assert_eq!((f.0, a.0), (200, 200));
    let fm = scrape(&f.1);
    assert!(value(&fm, "bkv_http_requests_total") >= 5.0, "{}", f.1);
    assert!(
        fm.iter().any(|s| s.metric == "bkv_http_requests_total"
            && s.labels.get("route") == Some("/v1/sessions/:id")),
        "{}",
        f.1
    );
    let am = scrape(&a.1);
    assert!(value(&am, "bkv_auditor_log_size") >= 4.0, "{}", a.1);
    let mut guesses = 0.0;
    for url in &metrics_urls {
        let (code, body) = get(&format!("{url}/metrics"), None);
        assert_eq!(code, 200);
        let nm = scrape(&body);
        assert!(value(&nm, "bkv_node_raft_term") >= 1.0, "{body}");
        assert!(value(&nm, "bkv_node_leader_changes_total") >= 1.0, "{body}");
        assert_eq!(value(&nm, "bkv_node_voters"), 3.0, "{body}");
        guesses = value(&nm, "bkv_node_guesses_counted_total").max(guesses);
        assert!(!body.contains("ada"), "{body}");
        wait_status(&format!("{url}/readyz"), None, 200, "node");
    }
    // Logins with the password: the wrong one, the right one, and the one adding the passkey.
    assert!(guesses >= 3.0, "guesses counted: {guesses}");
    assert!(!f.1.contains("ada") && !a.1.contains("ada"));

    // The majority goes: nothing is ready; it comes back: everything is.
    procs.kill("node1");
    procs.kill("node2");
    wait_status(
        &format!("{frontend_url}/readyz"),
        ca,
        503,
        "frontend without a majority",
    );
    wait_status(
        &format!("{}/readyz", metrics_urls[0]),
        None,
        503,
        "node 0 alone",
    );
    assert_eq!(get(&format!("{}/healthz", metrics_urls[0]), None).0, 200);
    for i in 1..3 {
        start(names[i], hsm_bin(), &nodes[i].config, &mut procs);
    }
    wait_status(
        &format!("{}/readyz", metrics_urls[0]),
        None,
        200,
        "node 0 with a majority",
    );
    wait_status(
        &format!("{frontend_url}/readyz"),
        ca,
        200,
        "frontend with a majority",
    );
    let o = restore_pw("r3", "pw-ada-1");
    assert!(o.status.success(), "{}", text(&o));
}
