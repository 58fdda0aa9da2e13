//! The auditor as its own process: append rules, durability under SIGKILL
//! during a burst of appends, and `bkv audit log` over the result.

use bkv_testkit::system::*;
use bkv_transparency::bundle::{self, Bundle, FleetKey, KeyRole};
use ed25519_dalek::{Signer, SigningKey};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn auditor_bin() -> std::path::PathBuf {
    bkv_bin().with_file_name("bkv-auditor")
}

struct Auditor {
    child: Child,
    url: String,
}

impl Drop for Auditor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_auditor(dir: &std::path::Path, listen: &str, op: &SigningKey) -> Auditor {
    let mut child = Command::new(auditor_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", listen, "--namespace"])
        .arg(format!("ns={}", hex::encode(op.verifying_key().as_bytes())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready"), "{line}");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .unwrap()
        .to_owned();
    Auditor {
        child,
        url: format!("http://{addr}"),
    }
}

fn bundle_for(epoch: u64) -> Bundle {
    Bundle {
        version: bkv_transparency::bundle::BUNDLE_VERSION,
        namespace: "ns".into(),
        epoch,
        fleet_id: format!("fleet-{}", epoch / 3),
        keys: vec![FleetKey {
            role: KeyRole::NoiseStatic,
            key: [(epoch / 3) as u8; 32],
        }],
        not_before: 1,
        not_after: 4_000_000_000,
        evidence_digest: [0; 32],
        previous: Vec::new(),
    }
}

/// Raw append via HTTP/1.1 over std TcpStream; returns the status code and body.
fn http(url: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = match std::net::TcpStream::connect(addr) {
        Ok(s) => s,
        Err(_) => return (0, String::new()),
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    if s.read_to_string(&mut out).is_err() {
        return (0, String::new());
    }
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn append(url: &str, op: &SigningKey, b: &Bundle) -> (u16, String) {
    let bytes = b.encode();
    let body = bkv_api::auditor::AppendRequest {
        operator_signature: op.sign(&bundle::append_message(&bytes)).to_bytes().to_vec(),
        bundle: bytes,
    };
    http(
        url,
        "POST",
        &format!("/v1/logs/{}/entries", b.namespace),
        &serde_json::to_string(&body).unwrap(),
    )
}

fn countersign(url: &str, op: &SigningKey, index: u64, auditor_sig: &[u8]) -> u16 {
    let sig: [u8; 64] = auditor_sig.try_into().unwrap();
    let body = bkv_api::auditor::CountersignRequest {
        operator_signature: bundle::sign_operator(op, &sig).to_vec(),
    };
    http(
        url,
        "POST",
        &format!("/v1/logs/ns/entries/{index}/countersignature"),
        &serde_json::to_string(&body).unwrap(),
    )
    .0
}

/// The log's entry at `path` (`/v1/logs/ns/…`), read as the API's type.
fn entry(url: &str, path: &str) -> bkv_api::auditor::EntryResponse {
    serde_json::from_str(&http(url, "GET", path, "").1).unwrap()
}

fn free_addr() -> String {
    format!("127.0.0.1:{}", bkv_testkit::services::free_port().unwrap())
}

/// `bkv audit log`, pinning the auditor's key as served by `GET /v1/key` (what an app pins)
/// unless `extra` pins one.
fn audit(url: &str, op: &SigningKey, extra: &[&str]) -> std::process::Output {
    let key: bkv_api::auditor::KeyInfo =
        serde_json::from_str(&http(url, "GET", "/v1/key", "").1).unwrap();
    let pinned = key.public_key;
    let mut cmd = Command::new(bkv_bin());
    cmd.args([
        "audit",
        "log",
        "--auditor",
        url,
        "--namespace",
        "ns",
        "--operator-key",
    ])
    .arg(hex::encode(op.verifying_key().as_bytes()));
    if !extra.contains(&"--auditor-key") {
        cmd.args(["--auditor-key", &pinned]);
    }
    cmd.args(extra).output().unwrap()
}

#[test]
fn append_rules_are_enforced() {
    let t = tempfile::tempdir().unwrap();
    let op = SigningKey::from_bytes(&[1; 32]);
    let a = start_auditor(t.path(), "127.0.0.1:0", &op);
    let (s, body) = append(&a.url, &op, &bundle_for(5));
    assert_eq!(s, 200, "{body}");
    // Only the namespace's operator may append.
    let (s, _) = append(&a.url, &SigningKey::from_bytes(&[2; 32]), &bundle_for(6));
    assert_eq!(s, 401);
    // Epochs strictly increase; the same bundle is never logged twice.
    assert_eq!(append(&a.url, &op, &bundle_for(5)).0, 409);
    assert_eq!(append(&a.url, &op, &bundle_for(4)).0, 409);
    // Malformed input, unknown namespace, bundle for another namespace.
    assert_eq!(http(&a.url, "POST", "/v1/logs/ns/entries", "{").0, 400);
    assert_eq!(
        http(
            &a.url,
            "POST",
            "/v1/logs/ns/entries",
            "{\"bundle\":\"AAAA\",\"operator_signature\":\"AAAA\"}"
        )
        .0,
        401
    );
    let mut other = bundle_for(7);
    other.namespace = "zz".into();
    assert_eq!(append(&a.url, &op, &other).0, 404);
    assert_eq!(http(&a.url, "GET", "/v1/logs/ns/entries/9", "").0, 404);
    assert_eq!(
        http(
            &a.url,
            "GET",
            "/v1/logs/ns/proof/inclusion?index=3&size=1",
            ""
        )
        .0,
        400
    );
    assert_eq!(
        http(&a.url, "GET", "/v1/logs/ns/proof/consistency?from=x", "").0,
        400
    );
    let big = "x".repeat(400_000);
    assert_eq!(http(&a.url, "POST", "/v1/logs/ns/entries", &big).0, 413);
    // Counter-signature by another key is refused; the right one accepted once.
    let e = entry(&a.url, "/v1/logs/ns/epochs/5");
    let asig = &e.auditor_signature;
    assert_eq!(
        countersign(&a.url, &SigningKey::from_bytes(&[2; 32]), 0, asig),
        401
    );
    assert_eq!(countersign(&a.url, &op, 0, asig), 204);
    assert_eq!(countersign(&a.url, &op, 0, asig), 204);
    // The checkpoint is a C2SP signed note.
    let (s, note) = http(&a.url, "GET", "/v1/logs/ns/checkpoint", "");
    assert_eq!(s, 200);
    assert!(note.starts_with("bkv-auditor/ns\n1\n"), "{note}");
    assert!(note.contains("\n\n\u{2014} bkv-auditor "), "{note}");
    let out = audit(&a.url, &op, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // Without a pinned auditor key the audit fails closed, saying what it did not check.
    let out = Command::new(bkv_bin())
        .args(["audit", "log", "--auditor", &a.url, "--namespace", "ns"])
        .args([
            "--operator-key",
            &hex::encode(op.verifying_key().as_bytes()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NOT CHECKED: the auditor's key"),
        "{}",
        text(&out)
    );
}

#[test]
fn sigkill_during_a_burst_of_appends_loses_nothing_acknowledged() {
    let t = tempfile::tempdir().unwrap();
    let op = SigningKey::from_bytes(&[3; 32]);
    let listen = free_addr();
    let mut a = start_auditor(t.path(), &listen, &op);
    let url = a.url.clone();
    let op2 = op.clone();
    // Append as fast as possible, recording every acknowledged epoch.
    let burst = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for epoch in 1..=2000u64 {
            let (s, body) = append(&url, &op2, &bundle_for(epoch));
            if s != 200 {
                break;
            }
            let v: bkv_api::auditor::AppendResponse = serde_json::from_str(&body).unwrap();
            let idx = v.index;
            if countersign(&url, &op2, idx, &v.auditor_signature) != 204 {
                acked.push((epoch, idx, false));
                break;
            }
            acked.push((epoch, idx, true));
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(700));
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    let acked = burst.join().unwrap();
    assert!(
        acked.len() > 5,
        "burst too short to mean anything: {}",
        acked.len()
    );
    let a = start_auditor(t.path(), &listen, &op);
    // Every acknowledged append is present at its index with its epoch.
    for (epoch, idx, _) in &acked {
        let (s, body) = http(&a.url, "GET", &format!("/v1/logs/ns/entries/{idx}"), "");
        assert_eq!(s, 200, "entry {idx} lost");
        let v: bkv_api::auditor::EntryResponse = serde_json::from_str(&body).unwrap();
        assert_eq!(v.epoch, Some(*epoch));
    }
    // An append the crash cut off before its counter-signature gets one now.
    let info: bkv_api::auditor::LogInfo =
        serde_json::from_str(&http(&a.url, "GET", "/v1/logs/ns", "").1).unwrap();
    let size = info.size;
    assert!(size >= acked.len() as u64);
    for idx in 0..size {
        let v = entry(&a.url, &format!("/v1/logs/ns/entries/{idx}"));
        if v.operator_signature.is_none() {
            assert_eq!(countersign(&a.url, &op, idx, &v.auditor_signature), 204);
        }
    }
    // The log continues, and every proof of the whole history verifies.
    let (s, _) = append(&a.url, &op, &bundle_for(10_000));
    assert_eq!(s, 200);
    let v = entry(&a.url, &format!("/v1/logs/ns/entries/{size}"));
    assert_eq!(countersign(&a.url, &op, size, &v.auditor_signature), 204);
    let out = audit(&a.url, &op, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["size"].as_u64(), Some(size + 1));
    // The fleet keys change every 3 epochs: the table says so.
    assert!(String::from_utf8_lossy(&out.stdout).contains("KEYS CHANGED"));
    // Wrong operator key or a wrongly pinned auditor key: non-zero exit.
    let out = audit(&a.url, &SigningKey::from_bytes(&[9; 32]), &[]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("counter-signature"));
    let out = audit(
        &a.url,
        &op,
        &[
            "--auditor-key",
            &hex::encode(SigningKey::from_bytes(&[8; 32]).verifying_key().as_bytes()),
        ],
    );
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
}

/// `bkv witness checkpoint`: a witness cosigns the auditor's checkpoint with its own key once it
/// checked it (the pinned auditor key, consistency with the last one it cosigned), and refuses a
/// log that shrank or forked since.
#[test]
fn a_witness_cosigns_consistent_checkpoints_only() {
    let t = tempfile::tempdir().unwrap();
    let op = SigningKey::from_bytes(&[4; 32]);
    let a = start_auditor(t.path(), "127.0.0.1:0", &op);
    let key: bkv_api::auditor::KeyInfo =
        serde_json::from_str(&http(&a.url, "GET", "/v1/key", "").1).unwrap();
    let verifier = key.verifier_key;
    // The bare hex key (as client.toml pins it) works as well as the verifier key.
    let hex_key = key.public_key;
    let (wkey, state) = (t.path().join("w.key"), t.path().join("w-state.json"));
    let o = Command::new(bkv_bin())
        .args(["witness", "key", "--key"])
        .arg(&wkey)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let wpub = bkv_wire::key_from_hex(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    let wpub = ed25519_dalek::VerifyingKey::from_bytes(&wpub).unwrap();
    let cosign_with = |auditor_key: &str| {
        Command::new(bkv_bin())
            .args(["witness", "checkpoint", "--key"])
            .arg(&wkey)
            .args([
                "--name",
                "w.example",
                "--auditor",
                &a.url,
                "--namespace",
                "ns",
            ])
            .args(["--auditor-key", auditor_key, "--state"])
            .arg(&state)
            .output()
            .unwrap()
    };
    let cosign = || cosign_with(&verifier);
    for epoch in 1..=3 {
        let (s, body) = append(&a.url, &op, &bundle_for(epoch));
        assert_eq!(s, 200, "{body}");
        let v: bkv_api::auditor::AppendResponse = serde_json::from_str(&body).unwrap();
        assert_eq!(countersign(&a.url, &op, v.index, &v.auditor_signature), 204);
        let o = cosign_with(if epoch == 2 { &hex_key } else { &verifier });
        assert!(o.status.success(), "{}", text(&o));
        let note = String::from_utf8_lossy(&o.stdout).into_owned();
        bkv_transparency::note::cosigned_at(&note, "w.example", &wpub).unwrap();
        assert!(
            note.starts_with(&format!("bkv-auditor/ns\n{epoch}\n")),
            "{note}"
        );
    }
    // A state from a longer log (this one shrank), or of another tree: refused.
    std::fs::write(
        &state,
        format!(r#"{{"size":9,"root":"{}"}}"#, hex::encode([9u8; 32])),
    )
    .unwrap();
    let o = cosign();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("shrank"),
        "{}",
        text(&o)
    );
    std::fs::write(
        &state,
        format!(r#"{{"size":2,"root":"{}"}}"#, hex::encode([9u8; 32])),
    )
    .unwrap();
    let o = cosign();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not consistent"),
        "{}",
        text(&o)
    );
    // A key file that exists but cannot be read is never replaced.
    use std::os::unix::fs::PermissionsExt;
    let before = std::fs::read(&wkey).unwrap();
    std::fs::set_permissions(&wkey, std::fs::Permissions::from_mode(0o000)).unwrap();
    let o = Command::new(bkv_bin())
        .args(["witness", "key", "--key"])
        .arg(&wkey)
        .output()
        .unwrap();
    std::fs::set_permissions(&wkey, std::fs::Permissions::from_mode(0o600)).unwrap();
    // (root reads anything: then the key reads back unchanged, which is what matters)
    assert_eq!(std::fs::read(&wkey).unwrap(), before, "{}", text(&o));
}
