//! Protectors end to end, through `bkv-admin dev up` and the CLI as a user runs
//! them: password, passkey (software authenticator with PRF, RP in the
//! frontend), recovery key; change, remove, rotate, disable, and crashes at
//! every step of a key rotation.

use bkv_testkit::system::{assert_same_tree, bkv_with, text, write_noise, DevUp};
use std::path::{Path, PathBuf};
use std::process::Output;

pub(crate) const PW: &str = "correct horse battery\n";

/// A "new device": an empty client state dir with only the deployment's
/// client.toml (the OTA checkpoint state starts empty).
fn fresh_device(dev: &DevUp, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("client.toml");
    // The deployment's config as an app ships it: without the first
    // device's record of having saved a checkpoint.
    let text = std::fs::read_to_string(&dev.config).unwrap();
    let shipped: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("log_trusted_since") && !l.starts_with("new_log_trusted"))
        .collect();
    std::fs::write(&cfg, shipped.join("\n")).unwrap();
    cfg
}

pub(crate) fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn create(dev: &DevUp, user: &str, path: &Path) {
    ok(dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            user,
            "--password-stdin",
            path.to_str().unwrap(),
        ],
        PW,
    ));
}

/// `protectors add --passkey` into `store`, unlocked with the password.
pub(crate) fn add_passkey(dev: &DevUp, user: &str, store: &Path) -> Output {
    dev.bkv(
        &[
            "backup",
            "protectors",
            "add",
            "--user",
            user,
            "--passkey",
            "--new-passkey-store",
            store.to_str().unwrap(),
            "--password-stdin",
        ],
        PW,
    )
}

/// `protectors add --recovery-key`, unlocked with the password.
fn add_recovery_key(dev: &DevUp, user: &str) -> Output {
    dev.bkv(
        &[
            "backup",
            "protectors",
            "add",
            "--user",
            user,
            "--recovery-key",
            "--password-stdin",
        ],
        PW,
    )
}

pub(crate) fn recovery_key_in(stdout: &str) -> String {
    stdout
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 66 && l.matches('-').count() == 13)
        .unwrap_or_else(|| panic!("no recovery key in {stdout}"))
        .to_owned()
}

pub(crate) fn slot_id(stdout: &str, prefix: &str) -> String {
    stdout
        .split_whitespace()
        .find(|w| w.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} id in {stdout}"))
        .to_owned()
}

pub(crate) fn restore(config: &Path, user: &str, how: &[&str], stdin: &str, out: &Path) -> Output {
    let mut args = vec!["backup", "restore", "--user", user];
    args.extend_from_slice(how);
    args.extend_from_slice(&["--out", out.to_str().unwrap()]);
    bkv_with(config, &args, stdin, &[])
}

fn user_storage(dev: &DevUp) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut v = Vec::new();
    walk(&dev.dir.join("storage"), &mut v);
    v
}

/// The walk-through: password backup; add a passkey and a recovery
/// key; restore on three fresh devices, once with each; change the password;
/// remove the passkey (it no longer restores); disable (nothing remains).
#[test]
fn each_protector_restores_on_a_fresh_device_then_removal_and_disable() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let src = t.path().join("history");
    std::fs::create_dir_all(src.join("media")).unwrap();
    write_noise(&src.join("media/photo.jpg"), 2_000_000, 3);
    std::fs::write(src.join("chat.txt"), b"see you at eight").unwrap();
    let store = t.path().join("phone-passkeys.json");
    let user = "pat";

    create(&dev, user, &src);
    let out = ok(add_passkey(&dev, user, &store));
    let passkey_id = slot_id(&out, "pk-");
    let out = ok(add_recovery_key(&dev, user));
    let rk = recovery_key_in(&out);
    let listed = ok(dev.bkv(
        &["backup", "protectors", "list", "--user", user, "--json"],
        "",
    ));
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let kinds: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["password", "passkey", "recovery-key"], "{listed}");

    // Three new devices, one protector each.
    let ways: [(&str, Vec<&str>, String); 3] = [
        (
            "passkey",
            vec!["--passkey-store", store.to_str().unwrap()],
            String::new(),
        ),
        ("recovery", vec!["--recovery-key-stdin"], format!("{rk}\n")),
        ("password", vec!["--password-stdin"], PW.to_owned()),
    ];
    for (name, how, stdin) in &ways {
        let cfg = fresh_device(&dev, &t.path().join(format!("device-{name}")));
        let out = t.path().join(format!("restored-{name}"));
        ok(restore(&cfg, user, how, stdin, &out));
        assert_same_tree(&src, &out);
    }

    // Change the password: the new one restores, the old one fails.
    ok(dev.bkv(
        &[
            "backup",
            "change-password",
            "--user",
            user,
            "--password-stdin",
        ],
        &format!("{PW}new password 2\n"),
    ));
    let o = restore(
        &dev.config,
        user,
        &["--password-stdin"],
        PW,
        &t.path().join("old-pw"),
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let out = t.path().join("new-pw");
    ok(restore(
        &dev.config,
        user,
        &["--password-stdin"],
        "new password 2\n",
        &out,
    ));
    assert_same_tree(&src, &out);

    // Remove the passkey: it cannot restore any more, even though the
    // passkey is still in the user's store; the others still can.
    let before = std::fs::read(&store).unwrap();
    ok(dev.bkv(
        &[
            "backup",
            "protectors",
            "remove",
            "--user",
            user,
            &passkey_id,
            "--password-stdin",
        ],
        "new password 2\n",
    ));
    assert_eq!(std::fs::read(&store).unwrap().len(), before.len());
    let out = t.path().join("removed-passkey");
    let o = restore(
        &dev.config,
        user,
        &["--passkey-store", store.to_str().unwrap()],
        "",
        &out,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("passkey"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    let out = t.path().join("after-removal");
    ok(restore(
        &dev.config,
        user,
        &["--recovery-key-stdin"],
        &format!("{rk}\n"),
        &out,
    ));
    assert_same_tree(&src, &out);

    // Disable: confirmed with the password; nothing of the user remains.
    ok(dev.bkv(
        &["backup", "disable", "--user", user, "--password-stdin"],
        "new password 2\n",
    ));
    assert!(user_storage(&dev).is_empty(), "{:?}", user_storage(&dev));
    let status = ok(dev.bkv(&["backup", "status", "--user", user, "--json"], ""));
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["record"], "Absent", "{status}");
    assert!(v["latest_backup"].is_null());
    let listed = ok(dev.bkv(&["backup", "protectors", "list", "--user", user], ""));
    assert!(listed.contains("no protectors"), "{listed}");
    // The relying party forgot the passkey too.
    let o = restore(
        &dev.config,
        user,
        &["--recovery-key-stdin"],
        &format!("{rk}\n"),
        &t.path().join("after-disable"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// A passkey whose PRF output is wrong (its secret changed in the store) or
/// that belongs to another registration does not open the backup key.
#[test]
fn a_wrong_prf_output_or_foreign_passkey_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let f = t.path().join("f");
    std::fs::write(&f, b"secret notes").unwrap();
    let store = t.path().join("pk.json");
    let foreign = t.path().join("foreign.json");
    for (user, st) in [("wanda", &store), ("xavi", &foreign)] {
        create(&dev, user, &f);
        ok(add_passkey(&dev, user, st));
    }
    // Another user's passkey: not a credential of this user at the RP.
    let out = t.path().join("o1");
    let o = restore(
        &dev.config,
        "wanda",
        &["--passkey-store", foreign.to_str().unwrap()],
        "",
        &out,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!out.exists());

    // Same credential, different PRF secret: the RP accepts the assertion
    // (the signature key is unchanged) but the PRF output opens nothing.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    let secret = v["passkeys"][0]["hmac_with_uv"]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = if secret.starts_with('A') { "B" } else { "A" };
    v["passkeys"][0]["hmac_with_uv"] = format!("{flipped}{}", &secret[1..]).into();
    let tampered = t.path().join("tampered.json");
    std::fs::write(&tampered, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = restore(
        &dev.config,
        "wanda",
        &["--passkey-store", tampered.to_str().unwrap()],
        "",
        &out,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PRF"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
    // The untouched store still works.
    ok(restore(
        &dev.config,
        "wanda",
        &["--passkey-store", store.to_str().unwrap()],
        "",
        &out,
    ));
    assert_eq!(std::fs::read(&out).unwrap(), b"secret notes");
}

/// Kills `bkv backup rotate-key` (SIGKILL, via `BKV_CRASH_AT`) after each
/// step of a rotation. After every crash all three protectors still restore
/// the same data, and running the rotation again completes.
#[test]
fn a_crash_at_any_rotation_step_leaves_every_protector_able_to_restore() {
    use std::os::unix::process::ExitStatusExt;
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let src = t.path().join("src");
    write_noise(&src, 3_000_000, 11);
    let store = t.path().join("pk.json");
    let user = "rory";
    create(&dev, user, &src);
    ok(add_passkey(&dev, user, &store));
    let rk = recovery_key_in(&ok(add_recovery_key(&dev, user)));
    let check_all = |label: &str| {
        let ways: [(&str, Vec<&str>, String); 3] = [
            ("pw", vec!["--password-stdin"], PW.to_owned()),
            ("rk", vec!["--recovery-key-stdin"], format!("{rk}\n")),
            (
                "pk",
                vec!["--passkey-store", store.to_str().unwrap()],
                String::new(),
            ),
        ];
        for (name, how, stdin) in &ways {
            let out = t.path().join(format!("{label}-{name}"));
            let o = restore(&dev.config, user, how, stdin, &out);
            assert!(
                o.status.success(),
                "after a crash at {label}, {name} failed: {}",
                text(&o)
            );
            assert_same_tree(&src, &out);
        }
    };
    for step in [
        "reencrypted",
        "manifest-written",
        "vault-pending",
        "vault-switched",
        "latest-switched",
        "old-manifests-deleted",
    ] {
        // Each round opens ~25 vault sessions; stay inside the frontend's
        // per-user budget (burst 30, 10 per second) instead of testing it.
        std::thread::sleep(std::time::Duration::from_secs(2));
        let o = bkv_with(
            &dev.config,
            &["backup", "rotate-key", "--user", user, "--password-stdin"],
            PW,
            &[("BKV_CRASH_AT", step)],
        );
        assert_eq!(
            o.status.signal(),
            Some(libc::SIGKILL),
            "rotation did not reach {step}: {}",
            text(&o)
        );
        check_all(step);
        // A later rotation cleans up and completes.
        ok(dev.bkv(
            &["backup", "rotate-key", "--user", user, "--password-stdin"],
            PW,
        ));
        check_all(&format!("{step}-again"));
        let files = user_storage(&dev);
        assert_eq!(
            files.len(),
            3,
            "one backup, latest.json, one manifest: {files:?}"
        );
    }
}

/// Removing a passkey or the password with a crash in the middle: the
/// remaining protectors restore; the removed one never does once the removal
/// completed.
#[test]
fn a_crash_while_removing_protectors_keeps_the_rest_working() {
    use std::os::unix::process::ExitStatusExt;
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let src = t.path().join("src");
    std::fs::write(&src, b"keep me").unwrap();
    let store = t.path().join("pk.json");
    let user = "remy";
    create(&dev, user, &src);
    let pk = slot_id(&ok(add_passkey(&dev, user, &store)), "pk-");
    let rk = recovery_key_in(&ok(add_recovery_key(&dev, user)));
    let rk_in = format!("{rk}\n");
    let remove = |id: &str, crash: Option<&str>| {
        bkv_with(
            &dev.config,
            &[
                "backup",
                "protectors",
                "remove",
                "--user",
                user,
                id,
                "--password-stdin",
            ],
            PW,
            &crash.map(|c| vec![("BKV_CRASH_AT", c)]).unwrap_or_default(),
        )
    };
    let o = remove(&pk, Some("passkeys-deleted"));
    assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{}", text(&o));
    ok(restore(
        &dev.config,
        user,
        &["--recovery-key-stdin"],
        &rk_in,
        &t.path().join("a"),
    ));
    ok(restore(
        &dev.config,
        user,
        &["--password-stdin"],
        PW,
        &t.path().join("b"),
    ));
    // The passkey was deleted at the relying party before the crash: it no
    // longer opens anything, not even the old manifest still in storage.
    let o = restore(
        &dev.config,
        user,
        &["--passkey-store", store.to_str().unwrap()],
        "",
        &t.path().join("c"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Remove the password, crashing right after the vault record went.
    let o = remove("password", Some("vault-deleted"));
    assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{}", text(&o));
    let out = t.path().join("d");
    ok(restore(
        &dev.config,
        user,
        &["--recovery-key-stdin"],
        &rk_in,
        &out,
    ));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let o = restore(
        &dev.config,
        user,
        &["--password-stdin"],
        PW,
        &t.path().join("e"),
    );
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    // The last protector cannot be removed.
    let rk_slot = slot_id(
        &ok(dev.bkv(&["backup", "protectors", "list", "--user", user], "")),
        "rk-",
    );
    let o = bkv_with(
        &dev.config,
        &[
            "backup",
            "protectors",
            "remove",
            "--user",
            user,
            &rk_slot,
            "--recovery-key-stdin",
        ],
        &rk_in,
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no protector"),
        "{}",
        text(&o)
    );
    // A password can be added back with the recovery key.
    ok(bkv_with(
        &dev.config,
        &[
            "backup",
            "protectors",
            "add",
            "--password",
            "--user",
            user,
            "--recovery-key-stdin",
        ],
        &format!("{rk}\nbrand new pw\n"),
        &[],
    ));
    let out = t.path().join("f");
    ok(restore(
        &dev.config,
        user,
        &["--password-stdin"],
        "brand new pw\n",
        &out,
    ));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}
