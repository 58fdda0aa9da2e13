//! `bkv-auditor` as a service: HTTPS with configured certificates, health, readiness (the log
//! takes writes), metrics, refusing plain HTTP beyond loopback, and a clean stop on SIGTERM.

use bkv_testkit::services::{field, get, spawn_ready};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_bkv-auditor");

#[test]
fn serves_https_health_readiness_and_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = bkv_testkit::services::pki(dir.path()).unwrap();
    let (mut child, line) = spawn_ready(
        Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--tls-cert")
            .arg(dir.path().join("cert.pem"))
            .arg("--tls-key")
            .arg(dir.path().join("key.pem"))
            .stderr(Stdio::null()),
    )
    .unwrap();
    let url = field(&line, "url").unwrap_or_else(|| panic!("no url in {line:?}"));
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let get = |path: &str| get(&format!("{url}{path}"), Some(&ca)).unwrap();
    assert_eq!(get("/healthz").0, 200);
    assert_eq!(get("/readyz").0, 200);
    let (status, metrics) = get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"bkv_http_requests_total{service="auditor",method="GET",route="/readyz",status="200"} 1"#),
        "{metrics}"
    );
    let plain = url.replace("https://", "http://");
    assert!(bkv_testkit::services::get(&format!("{plain}/healthz"), None).is_err());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn plain_http_beyond_loopback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert"), "{err}");
}
