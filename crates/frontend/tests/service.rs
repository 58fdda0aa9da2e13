//! `bkv-frontend` as a service: a real process started from a config file, its ready line,
//! health and readiness, environment overrides, refusals that name the field, and a graceful
//! stop that finishes the request in flight.

use bkv_testkit::services::{field, spawn_ready};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_bkv-frontend");

/// A running frontend, killed on drop.
struct Frontend {
    child: Child,
    url: String,
}

impl Drop for Frontend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A config directory: a dev signing key and a config routing to `nodes`.
fn config_dir(nodes: &[String]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("dev.key"), &[7u8; 32]);
    let nodes: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\n[tokens]\ndev_mode = true\ndev_signing_key_file = \"dev.key\"\n\n\
         [[fleets.routes]]\nfleet_id = \"f1\"\nnodes = [{}]\n\n[log]\nformat = \"json\"\n",
        nodes.join(", ")
    );
    let path = dir.path().join("frontend.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn start(config: &Path, env: &[(&str, &str)]) -> Frontend {
    let (child, line) = spawn_ready(
        Command::new(BIN)
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    assert!(line.starts_with("bkv-frontend: ready "), "{line:?}");
    let url = field(&line, "url").unwrap();
    Frontend { child, url }
}

/// A node address that accepts connections and never answers (a hung node).
fn silent_node() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

fn get(url: &str) -> (u16, String) {
    bkv_testkit::services::get(url, None).unwrap()
}

#[test]
fn serves_health_and_readiness_from_a_config_file_and_logs_json() {
    let (_node, addr) = silent_node();
    let (_dir, config) = config_dir(&[addr]);
    let mut f = start(&config, &[]);
    assert_eq!(get(&format!("{}/healthz", f.url)).0, 200);
    let (status, body) = get(&format!("{}/readyz", f.url));
    assert_eq!(
        status, 503,
        "a node that never answers is not ready: {body}"
    );
    let (status, metrics) = get(&format!("{}/metrics", f.url));
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"bkv_http_requests_total{service="frontend",method="GET",route="/readyz",status="503"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("bkv_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"bkv_connections_open{service="frontend"}"#),
        "{metrics}"
    );
    // Dev mode is announced, as JSON lines.
    let _ = f.child.kill();
    let _ = f.child.wait();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut f.child.stderr.take().unwrap(), &mut log).unwrap();
    let warning = log
        .lines()
        .find(|l| l.contains("dev mode"))
        .unwrap_or_else(|| panic!("no dev-mode warning in {log}"));
    let v: serde_json::Value = serde_json::from_str(warning).unwrap();
    assert_eq!(v["level"], "WARN");
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits() {
    let (_node, addr) = silent_node();
    let (_dir, config) = config_dir(&[addr]);
    let mut f = start(&config, &[]);
    let url = format!("{}/readyz", f.url);
    // /readyz waits up to 1 s for the silent node: the request is in flight when SIGTERM comes.
    let request = std::thread::spawn(move || get(&url));
    std::thread::sleep(Duration::from_millis(300));
    let pid = f.child.id() as i32;
    assert_eq!(send_signal(pid, "TERM"), 0);
    let (status, _) = request.join().unwrap();
    assert_eq!(status, 503, "the request in flight got its answer");
    let exit = f.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// `kill -SIG pid` (the kill(1) command: no `unsafe` needed).
fn send_signal(pid: i32, sig: &str) -> i32 {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

#[test]
fn environment_overrides_any_field() {
    let (_node, addr) = silent_node();
    let (_dir, config) = config_dir(&[addr]);
    let port = bkv_testkit::services::free_port().unwrap();
    let f = start(
        &config,
        &[("BKV_FRONTEND__LISTEN__ADDR", &format!("127.0.0.1:{port}"))],
    );
    assert_eq!(f.url, format!("http://127.0.0.1:{port}"));
}

#[test]
fn a_bad_config_is_refused_with_the_field_named() {
    let (dir, config) = config_dir(&["127.0.0.1:1".into()]);
    let run = |env: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("--check")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&[]).0, Some(0));
    let (code, err) = run(&[("BKV_FRONTEND__LIMITS__IDLE_TIMEOUT_SECS", "0")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("limits.idle_timeout_secs"), "{err}");
    let (code, err) = run(&[("BKV_FRONTEND__LISTEN__ADDR", "0.0.0.0:8080")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("plain_http_beyond_loopback"), "{err}");
    std::fs::set_permissions(
        dir.path().join("dev.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, err) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("chmod 600"), "{err}");
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--config is required");
}

#[test]
fn serves_https_with_configured_certificates() {
    let (_node, addr) = silent_node();
    let (dir, config) = config_dir(&[addr]);
    let ca_pem = bkv_testkit::services::pki(dir.path()).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n");
    std::fs::write(&config, text).unwrap();
    let f = start(&config, &[]);
    assert!(f.url.starts_with("https://127.0.0.1:"), "{}", f.url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
        let trusting = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .unwrap();
        let r = trusting
            .get(format!("{}/healthz", f.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // Without the CA the certificate is refused; plain HTTP gets no answer.
        let stranger = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .build()
            .unwrap();
        assert!(stranger
            .get(format!("{}/healthz", f.url))
            .send()
            .await
            .is_err());
        let plain = f.url.replace("https://", "http://");
        assert!(reqwest::Client::new()
            .get(format!("{plain}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_err());
    });
}

/// A token signed by `seed` under `kid`, valid for ten minutes, with `changes` applied to its
/// claims.
fn token_with(seed: u8, kid: &str, changes: serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let h = B64.encode(serde_json::json!({"alg": "EdDSA", "kid": kid}).to_string());
    let mut claims = serde_json::json!({"sub": "alice", "aud": "bkv", "iss": "https://id.example", "exp": now + 600});
    for (k, v) in changes.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let c = B64.encode(claims.to_string());
    let input = format!("{h}.{c}");
    format!(
        "{input}.{}",
        B64.encode(key.sign(input.as_bytes()).to_bytes())
    )
}

fn token(seed: u8, kid: &str) -> String {
    token_with(seed, kid, serde_json::json!({}))
}

fn jwks(seed: u8, kid: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid,
        "x": B64.encode(key.verifying_key().as_bytes())}]})
    .to_string()
}

#[test]
fn identity_provider_keys_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks(1, "2026-a")).unwrap();
    let config = dir.path().join("frontend.toml");
    std::fs::write(
        &config,
        "[listen]\naddr = \"127.0.0.1:0\"\n\n[tokens]\njwks_file = \"jwks.json\"\nissuer = \"https://id.example\"\n\n\
         [[fleets.routes]]\nfleet_id = \"f1\"\nnodes = [\"127.0.0.1:1\"]\n\n\
         [passkeys]\nrp_id = \"localhost\"\norigin = \"https://localhost\"\nstore = \"passkeys.redb\"\n",
    )
    .unwrap();
    let f = start(&config, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = |t: String| {
        let url = format!("{}/v1/passkeys", f.url);
        rt.block_on(async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let status = |t: String| answer(t).0;
    assert_eq!(status(token(1, "2026-a")), 200);
    // Refused with 401 and the reason.
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 30 * 24 * 3600;
    for (changes, reason) in [
        (serde_json::json!({"iss": "https://evil.example"}), "issuer"),
        (serde_json::json!({"aud": "another-app"}), "audience"),
        (serde_json::json!({"aud": ["x", "y"]}), "audience"),
        (serde_json::json!({"exp": far}), "longer"),
        (serde_json::json!({"exp": 1_000}), "expired"),
        (serde_json::json!({"sub": "a b"}), "subject"),
    ] {
        let (code, body) = answer(token_with(1, "2026-a", changes.clone()));
        assert_eq!(code, 401, "{changes}: {body}");
        assert!(body.contains(reason), "{changes}: {body}");
    }
    let (code, body) = answer(token(1, "2026-unknown"));
    assert_eq!((code, body.contains("kid")), (401, true), "{body}");
    // An audience array that names this frontend is fine.
    assert_eq!(
        status(token_with(
            1,
            "2026-a",
            serde_json::json!({"aud": ["app", "bkv"]})
        )),
        200
    );
    assert_eq!(
        status(token(2, "2026-b")),
        401,
        "key b is not published yet"
    );
    // The identity provider rotates: key b replaces key a in the JWKS file.
    std::fs::write(dir.path().join("jwks.json"), jwks(2, "2026-b")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status(token(2, "2026-b")) != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new key was never loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        status(token(1, "2026-a")),
        401,
        "the retired key no longer works"
    );
    // A broken JWKS file keeps the keys loaded before.
    std::fs::write(dir.path().join("jwks.json"), "{").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(status(token(2, "2026-b")), 200);
}

/// A node of the previous release: it does not know `Health` (an error frame, then it closes
/// the connection, as a node does on a frame it cannot decode) and answers `FleetStatus` with
/// `leader`.
fn previous_release_node(leader: Option<u64>) -> String {
    use bkv_wire::node::{
        read_frame, write_frame, FleetStatus, NodeError, NodeRequest, NodeResponse,
    };
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let mut w = conn.try_clone().unwrap();
            let mut r = std::io::BufReader::new(conn);
            while let Ok(Some(req)) = read_frame::<NodeRequest>(&mut r) {
                let resp = match req {
                    NodeRequest::FleetStatus => NodeResponse::FleetStatus(FleetStatus {
                        node_id: 1,
                        role: "follower".into(),
                        leader,
                        term: 3,
                        last_log_index: Some(9),
                        applied_index: Some(9),
                        voters: vec![0, 1, 2],
                        learners: vec![],
                    }),
                    _ => {
                        let e = NodeError::BadRequest("unknown variant".into());
                        let _ = write_frame(&mut w, &NodeResponse::Error(e));
                        break;
                    }
                };
                if write_frame(&mut w, &resp).is_err() {
                    break;
                }
            }
        }
    });
    addr
}

/// Rolling upgrades: a new frontend in front of nodes of the previous release is ready when
/// their `FleetStatus` names a leader, and not when it names none.
#[test]
fn readiness_falls_back_to_fleet_status_for_nodes_of_the_previous_release() {
    for (leader, want) in [(Some(0), 200), (None, 503)] {
        let node = previous_release_node(leader);
        let (_dir, config) = config_dir(&[node]);
        let f = start(&config, &[]);
        assert_eq!(
            get(&format!("{}/readyz", f.url)).0,
            want,
            "leader {leader:?}"
        );
    }
}

/// A node that answers every `OpenSession` with `answer` (a node with a full session table
/// answers `Busy`).
fn node_answering(answer: bkv_wire::node::NodeResponse) -> String {
    use bkv_wire::node::{read_frame, write_frame, NodeRequest};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let mut w = conn.try_clone().unwrap();
            let mut r = std::io::BufReader::new(conn);
            while let Ok(Some(req)) = read_frame::<NodeRequest>(&mut r) {
                let resp = match req {
                    NodeRequest::OpenSession { .. } => answer.clone(),
                    _ => {
                        bkv_wire::node::NodeResponse::Error(bkv_wire::node::NodeError::Unavailable)
                    }
                };
                if write_frame(&mut w, &resp).is_err() {
                    break;
                }
            }
        }
    });
    addr
}

/// Issue 27, item 4: a node that answers busy (its session table is full) is not the fleet: the
/// frontend opens the session on another node.
#[test]
fn a_busy_node_sends_the_session_to_another_node() {
    use bkv_wire::node::{NodeError, NodeResponse};
    let busy = node_answering(NodeResponse::Error(NodeError::Busy));
    let free = node_answering(NodeResponse::SessionOpened {
        session_id: [7; 16],
        handshake: vec![1, 2, 3],
    });
    let (_dir, config) = config_dir(&[busy, free]);
    let f = start(&config, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, session) = rt.block_on(async {
        let http = reqwest::Client::new();
        let t: bkv_api::frontend::DevTokenResponse = http
            .post(format!("{}/v1/dev/token", f.url))
            .json(&bkv_api::frontend::DevTokenRequest { user: "ann".into() })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let r = http
            .post(format!("{}/v1/sessions", f.url))
            .bearer_auth(&t.token)
            .body(vec![0u8; 48])
            .send()
            .await
            .unwrap();
        let session = r
            .headers()
            .get(bkv_frontend::SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (r.status().as_u16(), session)
    });
    assert_eq!(status, 200, "the frontend gave up on the busy node");
    assert!(
        session.is_some_and(|s| s.starts_with("1.")),
        "not opened on node 1"
    );
}
