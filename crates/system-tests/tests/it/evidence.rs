//! Deployment evidence end to end: a SoftHSM2 fleet formed by the ceremony
//! serves backups and `bkv audit fleet` passes on its evidence, while every
//! kind of tampering fails with a message naming the check; `bkv-hsm` built
//! by the reproducible recipe in two directories is byte-identical, and the
//! rebuild check passes for a fleet running it and fails for one that does
//! not.

use bkv_testkit::system::{bkv_bin, text, DevUp};
use bkv_transparency::evidence::{self as ev, Evidence, StepKind};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PW: &str = "evidence password\n";

/// `bkv audit fleet` as an auditor runs it: every key pinned.
fn audit_fleet(dev: &DevUp, evidence: &Path, extra: &[&str]) -> Output {
    Command::new(bkv_bin())
        .args(["audit", "fleet"])
        .arg(evidence)
        .args(["--auditor", &dev.auditor_url])
        .args(dev.audit_keys())
        .args(extra)
        .output()
        .unwrap()
}

fn fails_with(o: &Output, needle: &str) {
    assert!(!o.status.success(), "passed: {}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(needle), "wanted {needle:?}: {}", text(o));
}

/// Writes `e` with every step's hash recomputed, as a forger would.
fn rechained(e: &Evidence, path: &Path) {
    let mut e = e.clone();
    let mut head = [0u8; 32];
    for s in &mut e.transcript {
        let payload = hex::decode(&s.payload).unwrap();
        head = ev::step_hash(&head, s.index, s.kind, s.node_id, &payload);
        s.hash = hex::encode(head);
    }
    std::fs::write(path, serde_json::to_vec_pretty(&e).unwrap()).unwrap();
}

fn witness_key(dev: &DevUp, i: usize) -> String {
    let k: [u8; 32] = std::fs::read(dev.dir.join(format!("witnesses/witness-{i}.key")))
        .unwrap()
        .try_into()
        .unwrap();
    hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&k)
            .verifying_key()
            .as_bytes(),
    )
}

#[test]
fn a_ceremony_fleet_on_softhsm_has_evidence_that_passes_and_every_tampering_is_named() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_on(&t.path().join("dev"), 3, "softhsm");
    let file = t.path().join("f");
    std::fs::write(&file, b"ceremony fleet").unwrap();
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "ines",
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = t.path().join("out");
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "ines",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"ceremony fleet");

    // The evidence passes, with both dev witnesses required.
    let (w1, w2) = (witness_key(&dev, 1), witness_key(&dev, 2));
    let o = audit_fleet(&dev, &dev.evidence, &["--witness", &w1, "--witness", &w2]);
    assert!(o.status.success(), "{}", text(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "keys generated",
        "keys received",
        "ok: bundle",
        "pkcs11",
        "policy: at most 10 guesses",
    ] {
        assert!(report.contains(needle), "{report}");
    }
    // Every audit fails closed: without the auditor, or without pinned keys and witnesses, the
    // checks it could not make are named and the exit is non-zero.
    for args in [
        vec![],
        vec!["--auditor".to_owned(), dev.auditor_url.clone()],
    ] {
        let o = Command::new(bkv_bin())
            .args(["audit", "fleet"])
            .arg(&dev.evidence)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("NOT CHECKED: witnesses"), "{}", text(&o));
        assert!(out.contains("NOT CHECKED: auditor log"), "{}", text(&o));
    }
    // A node the log admits after the ceremony holds the keys too: the audit lists it.
    let o = std::process::Command::new(bkv_testkit::system::admin_bin())
        .args(["fleet", "add-node", "--dir"])
        .arg(&dev.dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = audit_fleet(&dev, &dev.evidence, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        report.contains("later: log #") && report.contains(" add node 3 "),
        "{report}"
    );
    let bytes = std::fs::read(&dev.evidence).unwrap();
    let e: Evidence = serde_json::from_slice(&bytes).unwrap();
    let bad = t.path().join("bad.json");

    // Any changed byte: a payload digit breaks the chain; a space keeps the
    // JSON valid but makes it a document the auditor never logged.
    let mut flipped = bytes.clone();
    let at = String::from_utf8_lossy(&bytes)
        .find("\"payload\": \"")
        .unwrap()
        + 20;
    flipped[at] = if flipped[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&bad, &flipped).unwrap();
    fails_with(&audit_fleet(&dev, &bad, &[]), "hash does not chain");
    let mut spaced = bytes.clone();
    spaced.insert(1, b' ');
    std::fs::write(&bad, &spaced).unwrap();
    fails_with(&audit_fleet(&dev, &bad, &[]), "is not in the log");

    // A witness signature dropped (with both witnesses required), or forged.
    let mut one = e.clone();
    one.witnesses.pop();
    std::fs::write(&bad, serde_json::to_vec_pretty(&one).unwrap()).unwrap();
    fails_with(
        &audit_fleet(&dev, &bad, &["--witness", &w1, "--witness", &w2]),
        "required witness",
    );
    let mut forged = e.clone();
    forged.witnesses[0].signature = "00".repeat(64);
    std::fs::write(&bad, serde_json::to_vec_pretty(&forged).unwrap()).unwrap();
    fails_with(
        &audit_fleet(&dev, &bad, &[]),
        "signature over the transcript does not verify",
    );

    // A node's key swapped: node 1's fleet statement replaced by node 2's,
    // the chain recomputed by the forger.
    let mut swapped = e.clone();
    let stmt = |e: &Evidence, n: u64| {
        e.transcript
            .iter()
            .position(|s| s.kind == StepKind::FleetStatement && s.node_id == n)
            .unwrap()
    };
    let (i1, i2) = (stmt(&e, 1), stmt(&e, 2));
    swapped.transcript[i1].payload = e.transcript[i2].payload.clone();
    rechained(&swapped, &bad);
    fails_with(
        &audit_fleet(&dev, &bad, &[]),
        "node 1: its fleet statement names node 2",
    );
    // Node 1's platform statement replaced by a stranger's (another identity key).
    let stranger = t.path().join("stranger");
    let o = Command::new(bkv_testkit::system::hsm_bin())
        .arg("--data-dir")
        .arg(stranger.join("data"))
        .arg("--platform-dir")
        .arg(stranger.join("platform"))
        .arg("--print-statement")
        .output()
        .unwrap();
    let v: bkv_api::statement::PrintedStatement = serde_json::from_slice(&o.stdout).unwrap();
    let mut swapped = e.clone();
    let i = e
        .transcript
        .iter()
        .position(|s| s.kind == StepKind::NodeStatement && s.node_id == 1)
        .unwrap();
    swapped.transcript[i].payload = v.signed_statement;
    rechained(&swapped, &bad);
    fails_with(
        &audit_fleet(&dev, &bad, &[]),
        "node 1: its fleet statement names another identity",
    );
    // The same file, but the bundle it names is checked against the log too:
    // a measurement changed by hand no longer matches the nodes' statements.
    let mut measured = e.clone();
    measured.measurement.binary_sha256 = "ab".repeat(32);
    std::fs::write(&bad, serde_json::to_vec_pretty(&measured).unwrap()).unwrap();
    fails_with(&audit_fleet(&dev, &bad, &[]), "not the measured");
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Copies the source tree (without build output and git metadata).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn build(copy: &Path, target: &Path) -> (String, PathBuf) {
    let o = Command::new(copy.join("scripts/build-hsm-reproducible.sh"))
        .env("BKV_REPRO_TARGET", target)
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {out}"))
            .trim()
            .to_owned()
    };
    (field("sha256 "), PathBuf::from(field("binary ")))
}

#[test]
fn the_core_service_is_reproducible_and_the_rebuild_check_tells_the_measured_binary_apart() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (
        t.path().join("checkout-a"),
        t.path().join("elsewhere/checkout-b"),
    );
    copy_tree(&workspace(), &a);
    copy_tree(&workspace(), &b);
    // One build directory for both (the dependencies compile once), kept
    // under the workspace's target so later runs are quick.
    let target = workspace().join("target/reproducible-test");
    let (hash_a, bin_a) = build(&a, &target);
    let bytes_a = std::fs::read(&bin_a).unwrap();
    // The measured binary is the core service; the host agent beside it is this test build's.
    let measured_dir = t.path().join("measured-bin");
    std::fs::create_dir_all(&measured_dir).unwrap();
    std::fs::copy(&bin_a, measured_dir.join("bkv-core")).unwrap();
    let measured = measured_dir.join("bkv-hsm");
    std::fs::copy(bkv_testkit::system::hsm_bin(), &measured).unwrap();
    let (hash_b, bin_b) = build(&b, &target);
    let bytes_b = std::fs::read(&bin_b).unwrap();
    assert_eq!(hash_a, hash_b, "the two builds differ");
    assert!(bytes_a == bytes_b, "the two binaries differ");
    for dir in [&a, &b, &target] {
        let needle = dir.canonicalize().unwrap().display().to_string();
        assert!(
            !bytes_b
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "the binary contains the host path {needle}"
        );
    }

    // A fleet whose cores run the measured binary passes the rebuild check (the
    // rebuild in checkout B, built last, is up to date: checkout A's would
    // recompile bkv's crates once more); a fleet running the test build
    // of bkv-core names a measurement no rebuild reproduces.
    let script = b.join("scripts/build-hsm-reproducible.sh");
    let rebuild = |dev: &DevUp| {
        Command::new(bkv_bin())
            .args(["audit", "fleet"])
            .arg(&dev.evidence)
            .args(["--auditor", &dev.auditor_url])
            .args(dev.audit_keys())
            .args(["--rebuild", "--rebuild-script"])
            .arg(&script)
            .env("BKV_REPRO_TARGET", &target)
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .output()
            .unwrap()
    };
    let good = DevUp::start_with_hsm(&t.path().join("measured"), 1, "software", &measured);
    let o = rebuild(&good);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ok: rebuild"),
        "{}",
        text(&o)
    );
    drop(good);
    let other = DevUp::start_on(&t.path().join("test-build"), 1, "software");
    fails_with(&rebuild(&other), "is not reproduced by a local build");
}
