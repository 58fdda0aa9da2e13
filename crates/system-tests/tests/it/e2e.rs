// One file on purpose: the end-to-end user journeys share one dev deployment helper and read as
// one suite; each test is independent.
//! End-to-end: `bkv-admin dev up` (a real `bkv-hsm` process and the frontend) driven
//! through the `bkv` CLI exactly as a user would.

use crate::measure::run_measured;
use bkv_testkit::system::*;
use std::process::Command;

const PW: &str = "Tr0ub4dor&3-horse\n";

#[test]
fn file_and_directory_roundtrip_byte_for_byte() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("big.bin");
    write_noise(&file, 20 * 1024 * 1024 + 12_345, 7);
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "alice",
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("set up a new backup key"));
    let out = t.path().join("restored.bin");
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "alice",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_same_tree(&file, &out);

    // A directory of 1,000 small files, nested, replacing the file backup.
    let src = t.path().join("tree");
    for i in 0..1000 {
        let d = src.join(format!("d{}", i % 17)).join(format!("e{}", i % 5));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join(format!("f{i}.txt")),
            format!("message {i} ").repeat(i % 50),
        )
        .unwrap();
    }
    std::fs::create_dir_all(src.join("empty-dir")).unwrap();
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "alice",
            "--password-stdin",
            src.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = t.path().join("restored-tree");
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "alice",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_same_tree(&src, &out);

    // Only one backup object remains (the new one replaced the old only after completing).
    let o = dev.bkv(&["backup", "status", "--user", "alice", "--json"], "");
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["record"]["Active"]["attempts"], 0);
    let users = std::fs::read_dir(dev.dir.join("storage/users"))
        .unwrap()
        .count();
    assert_eq!(users, 1);
    let user_dir = std::fs::read_dir(dev.dir.join("storage/users"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read_dir(user_dir.join("backups")).unwrap().count(),
        1
    );

    // Restoring over an existing path is refused and changes nothing.
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "alice",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        PW,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn wrong_passwords_count_down_and_the_tenth_destroys() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("f");
    std::fs::write(&file, b"my chats").unwrap();
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "bob",
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = t.path().join("out");
    let restore = |pw: &str| {
        dev.bkv(
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
        )
    };
    for i in 1..=9 {
        let o = restore("wrong\n");
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(
            msg.contains(&format!("{} guesses remaining", 10 - i)),
            "{msg}"
        );
        assert!(!out.exists());
    }
    let o = restore("wrong\n");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("destroyed"));
    let o = restore(PW);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(!out.exists());
    let o = dev.bkv(&["backup", "status", "--user", "bob"], "");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("destroyed"),
        "{}",
        text(&o)
    );
    // Usage errors exit 2.
    let o = dev.bkv(&["backup", "restore", "--user", "bob", "--out", "x"], "");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = dev.bkv(&["backup", "frobnicate"], "");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // No record at all: exit 4.
    let o = dev.bkv(
        &["backup", "disable", "--user", "nobody", "--password-stdin"],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "nobody",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        PW,
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn killing_and_restarting_the_node_loses_no_record_and_no_counter() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("f");
    write_noise(&file, 300_000, 3);
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "carol",
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = t.path().join("out");
    let out_s = out.to_str().unwrap();
    for _ in 0..3 {
        let o = dev.bkv(
            &[
                "backup",
                "restore",
                "--user",
                "carol",
                "--password-stdin",
                "--out",
                out_s,
            ],
            "bad\n",
        );
        assert_eq!(o.status.code(), Some(3));
    }
    let pid = dev.node_pid();
    bkv_testkit::system::signal(pid, rustix::process::Signal::KILL);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // While the node is down requests fail cleanly as "unavailable".
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "carol",
            "--password-stdin",
            "--out",
            out_s,
        ],
        PW,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unavailable"),
        "{}",
        text(&o)
    );
    let o = Command::new(admin_bin())
        .args(["dev", "restart-node", "--dir"])
        .arg(&dev.dir)
        .arg("0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(dev.node_pid(), pid);
    let o = dev.bkv(&["backup", "status", "--user", "carol", "--json"], "");
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["record"]["Active"]["attempts"], 3, "{v}");
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "carol",
            "--password-stdin",
            "--out",
            out_s,
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_same_tree(&file, &out);
}

#[test]
fn a_wrong_pinned_fleet_key_is_rejected_and_counts_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "dan",
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    let cfg = std::fs::read_to_string(&dev.config).unwrap();
    // Pinned (hardcoded) mode with a valid curve point that is not the fleet's key.
    let impostor = "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c";
    let bad_cfg = t.path().join("bad.toml");
    let pinned = format!("mode = \"pinned\"\nnoise_public_key = \"{impostor}\"");
    std::fs::write(&bad_cfg, cfg.replace("mode = \"ota\"", &pinned)).unwrap();
    let out = t.path().join("out");
    let o = bkv_with(
        &bad_cfg,
        &[
            "backup",
            "restore",
            "--user",
            "dan",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        PW,
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pinned fleet key"),
        "{}",
        text(&o)
    );
    let o = dev.bkv(&["backup", "status", "--user", "dan", "--json"], "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["record"]["Active"]["attempts"], 0);
}

#[test]
fn no_secret_reaches_any_log() {
    let t = tempfile::tempdir().unwrap();
    let trace = [("RUST_LOG", "trace")];
    let dev = DevUp::start_with_env(&t.path().join("dev"), &trace);
    let password = "Zebra-Quartz-Secret-41";
    let file = t.path().join("f");
    std::fs::write(&file, b"hello").unwrap();
    let pw = format!("{password}\n");
    let out = t.path().join("out");
    let mut cli_logs = String::new();
    for args in [
        vec![
            "backup",
            "create",
            "--user",
            "eve",
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        vec![
            "backup",
            "restore",
            "--user",
            "eve",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        vec!["backup", "status", "--user", "eve"],
    ] {
        let o = bkv_with(&dev.config, &args, &pw, &trace);
        assert!(o.status.success(), "{}", text(&o));
        cli_logs.push_str(&text(&o));
    }
    // A wrong guess and a failed session too.
    let o = bkv_with(
        &dev.config,
        &[
            "backup",
            "restore",
            "--user",
            "eve",
            "--password-stdin",
            "--out",
            "nope",
        ],
        "Other-Secret-99\n",
        &trace,
    );
    cli_logs.push_str(&text(&o));
    drop(dev);
    let dev_logs = std::fs::read_to_string(t.path().join("dev/dev-up.stderr")).unwrap()
        + &std::fs::read_to_string(t.path().join("dev/frontend/frontend.log")).unwrap();
    let node_log = std::fs::read_to_string(t.path().join("dev/nodes/0/node.log")).unwrap();
    // The logs are real and verbose (trace), so absence means something.
    assert!(node_log.contains("committed"), "node log: {node_log}");
    assert!(
        dev_logs.contains("session opened"),
        "frontend log: {dev_logs}"
    );
    for (name, log) in [
        ("cli", &cli_logs),
        ("frontend", &dev_logs),
        ("node", &node_log),
    ] {
        for secret in [password, "Other-Secret-99"] {
            assert!(!log.contains(secret), "{name} log contains the password");
            assert!(
                !log.contains(&hex::encode(secret)),
                "{name} log contains the password (hex)"
            );
        }
    }
    // Nothing at rest holds it either: storage and the node's sealed database.
    for dir in ["dev/storage", "dev/nodes/0/data"] {
        for e in walk(&t.path().join(dir)) {
            let b = std::fs::read(&e).unwrap();
            assert!(
                !b.windows(password.len()).any(|w| w == password.as_bytes()),
                "{}",
                e.display()
            );
        }
    }
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

/// Backup and restore of a large file stay in bounded memory. 128 MiB in
/// the test suite; `BKV_BIG_FILE_MIB=1024` (scripts/bench.sh) for 1 GiB.
#[test]
fn memory_stays_bounded_for_a_large_file() {
    let mib: u64 = std::env::var("BKV_BIG_FILE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("big.bin");
    write_noise(&file, mib << 20, 11);
    let mut cmd = Command::new(bkv_bin());
    cmd.arg("--config")
        .arg(&dev.config)
        .args(["backup", "create", "--user", "gib", "--password-stdin"])
        .arg(&file);
    let (status, rss_kib, out) = run_measured(&mut cmd, PW);
    assert!(status.success(), "{out}");
    assert!(rss_kib < 100 * 1024, "backup peak RSS {rss_kib} KiB");
    eprintln!("backup of {mib} MiB: peak RSS {} MiB", rss_kib / 1024);
    let restored = t.path().join("big.out");
    let mut cmd = Command::new(bkv_bin());
    cmd.arg("--config")
        .arg(&dev.config)
        .args([
            "backup",
            "restore",
            "--user",
            "gib",
            "--password-stdin",
            "--out",
        ])
        .arg(&restored);
    let (status, rss_kib, out) = run_measured(&mut cmd, PW);
    assert!(status.success(), "{out}");
    assert!(rss_kib < 100 * 1024, "restore peak RSS {rss_kib} KiB");
    eprintln!("restore of {mib} MiB: peak RSS {} MiB", rss_kib / 1024);
    assert_same_tree(&file, &restored);
}

#[test]
fn ota_mode_takes_the_fleet_key_from_the_logged_bundle_and_detects_a_fork() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let cfg = std::fs::read_to_string(&dev.config).unwrap();
    // The client config pins only the auditor and operator keys.
    assert!(
        cfg.contains("mode = \"ota\"") && !cfg.lines().any(|l| l.starts_with("noise_public_key")),
        "{cfg}"
    );
    let file = t.path().join("f");
    std::fs::write(&file, b"ota").unwrap();
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "olga",
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    let state_path = dev.dir.join("client-state/log-state.json");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    // The log holds the founding node's membership record, the fleet's
    // deployment evidence and the bundle (this dev up serves no page: DevUp::start_with_page).
    assert_eq!(state["checkpoint_size"], 3);
    assert_eq!(state["accepted_epoch"], 1);
    // A "new device": a config with an empty state restores fine.
    let fresh = t.path().join("fresh.toml");
    std::fs::write(
        &fresh,
        cfg.replace(
            "client-state/log-state.json",
            &t.path().join("fresh-state.json").display().to_string(),
        ),
    )
    .unwrap();
    let out = t.path().join("out");
    let o = bkv_with(
        &fresh,
        &[
            "backup",
            "restore",
            "--user",
            "olga",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        PW,
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"ota");
    // This client saw a different log of the same size before: a forked auditor.
    let forked = serde_json::json!({"checkpoint_size": 3, "checkpoint_root": "11".repeat(32), "accepted_epoch": 1});
    std::fs::write(&state_path, forked.to_string()).unwrap();
    let o = dev.bkv(&["backup", "status", "--user", "olga"], "");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("forked or rewritten"),
        "{}",
        text(&o)
    );
    // It accepted a newer epoch before: the current bundle is a rollback.
    let newer = serde_json::json!({"checkpoint_size": 3, "checkpoint_root": state["checkpoint_root"], "accepted_epoch": 5});
    std::fs::write(&state_path, newer.to_string()).unwrap();
    let o = dev.bkv(&["backup", "status", "--user", "olga"], "");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("older than the already accepted epoch"),
        "{}",
        text(&o)
    );
    // The saved checkpoint is lost: refused loudly, nothing trusted afresh,
    // until the user asks to re-trust, which the config records.
    std::fs::remove_file(&state_path).unwrap();
    let o = dev.bkv(&["backup", "status", "--user", "olga"], "");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--trust-new-log"),
        "{}",
        text(&o)
    );
    assert!(!state_path.exists());
    let o = dev.bkv(
        &["--trust-new-log", "backup", "status", "--user", "olga"],
        "",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(state_path.exists());
    let recorded = std::fs::read_to_string(&dev.config).unwrap();
    assert!(
        recorded.contains("log_trusted_since") && recorded.contains("new_log_trusted"),
        "{recorded}"
    );
    let o = dev.bkv(&["backup", "status", "--user", "olga"], "");
    assert!(o.status.success(), "{}", text(&o));

    // A config pinning another operator key rejects the bundle.
    let other_op = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
    let line = cfg.lines().find(|l| l.starts_with("operator_key")).unwrap();
    let bad = t.path().join("bad-op.toml");
    std::fs::write(
        &bad,
        cfg.replace(line, &format!("operator_key = \"{other_op}\""))
            .replace(
                "client-state/log-state.json",
                &t.path().join("s2.json").display().to_string(),
            ),
    )
    .unwrap();
    let o = bkv_with(&bad, &["backup", "status", "--user", "olga"], "", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("operator counter-signature"),
        "{}",
        text(&o)
    );
}

/// Concurrent correct logins of the same users never fail: no request of a
/// counted login is refused half-way (which would spend guesses of users who
/// know their password).
#[test]
fn concurrent_correct_recoveries_all_succeed() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let loadgen = |args: &[&str]| -> serde_json::Value {
        let o = dev.admin(&[&["dev", "loadgen", "--users", "3", "--seconds", "2"], args].concat());
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let r = loadgen(&["--concurrency", "6"]);
    // Session opens beyond the per-user budget are refused (before anything
    // is counted); nothing else may fail, and no record may be destroyed.
    for (kind, _) in r["error_kinds"].as_object().unwrap() {
        assert!(kind.contains("429"), "unexpected failure {kind}: {r}");
    }
    assert!(r["recoveries"].as_u64().unwrap() > 0, "{r}");
    // Open loop: recoveries start on a schedule of 10 per second, not faster.
    let r = loadgen(&["--concurrency", "3", "--rate", "10"]);
    assert_eq!(r["offered_per_second"].as_f64(), Some(10.0), "{r}");
    let n = r["recoveries"].as_u64().unwrap() + r["errors"].as_u64().unwrap();
    assert!(
        (1..=20).contains(&n),
        "{n} recoveries started in 2 s at 10/s: {r}"
    );
}

#[test]
fn a_recovery_key_restores_without_the_vault_and_typos_are_caught() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("f");
    write_noise(&file, 100_000, 5);
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "rita",
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = dev.bkv(
        &[
            "backup",
            "protectors",
            "add",
            "--recovery-key",
            "--user",
            "rita",
            "--password-stdin",
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let key = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 66 && l.matches('-').count() == 13)
        .unwrap_or_else(|| panic!("no recovery key in {stdout}"))
        .to_owned();
    let o = dev.bkv(&["backup", "protectors", "list", "--user", "rita"], "");
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        listed.contains("password") && listed.contains("recovery-key"),
        "{listed}"
    );
    // One mistyped character: a clear error, nothing restored.
    let mut typo: Vec<char> = key.chars().collect();
    typo[7] = if typo[7] == '7' { '8' } else { '7' };
    let typo: String = typo.into_iter().collect();
    let out = t.path().join("out");
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "rita",
            "--recovery-key-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        &format!("{typo}\n"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("typo"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    // The vault is down: the recovery key still restores (lower case, spaces instead of dashes).
    bkv_testkit::system::signal(dev.node_pid(), rustix::process::Signal::KILL);
    let typed = key.to_lowercase().replace('-', " ");
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "rita",
            "--recovery-key-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        &format!("{typed}\n"),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_same_tree(&file, &out);
    // A modified manifest is rejected.
    let users = dev.dir.join("storage/users");
    let udir = std::fs::read_dir(&users)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mpath = std::fs::read_dir(udir.join("protectors"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut m = std::fs::read(&mpath).unwrap();
    let n = m.len();
    m[n - 3] ^= 0x20;
    std::fs::write(&mpath, m).unwrap();
    let out2 = t.path().join("out2");
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "rita",
            "--recovery-key-stdin",
            "--out",
            out2.to_str().unwrap(),
        ],
        &format!("{key}\n"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("modified"),
        "{}",
        text(&o)
    );
    assert!(!out2.exists());
}

#[test]
fn change_password_replaces_the_old_one() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("f");
    std::fs::write(&file, b"before and after").unwrap();
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "cpw",
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        "old-pass\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    // A wrong current password changes nothing (and costs a guess).
    let o = dev.bkv(
        &[
            "backup",
            "change-password",
            "--user",
            "cpw",
            "--password-stdin",
        ],
        "nope\nnew-pass\n",
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = dev.bkv(
        &[
            "backup",
            "change-password",
            "--user",
            "cpw",
            "--password-stdin",
        ],
        "old-pass\nnew-pass\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = t.path().join("out");
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "cpw",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        "old-pass\n",
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "cpw",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        "new-pass\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"before and after");
    // The new registration starts with a fresh counter.
    let o = dev.bkv(&["backup", "status", "--user", "cpw", "--json"], "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["record"]["Active"]["attempts"], 0);
    let o = dev.bkv(
        &[
            "backup",
            "change-password",
            "--user",
            "cpw",
            "--password-stdin",
        ],
        "new-pass\n",
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
