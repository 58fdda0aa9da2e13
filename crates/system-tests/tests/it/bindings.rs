//! Issue 29, item 4: bindings for native apps (`crates/bindings`, UniFFI). The checked-in Python
//! module, on the built library, runs a round trip against a dev deployment, and backups,
//! recovery keys and passkeys cross between it and the CLI both ways; the checked-in Python,
//! Kotlin and Swift sources match the built library (docs/api.md "Native bindings").

use bkv_testkit::system::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The checked-in Python module beside the built library, in a fresh directory. UniFFI's module
/// checks the library's contract version and every function's checksum when it loads: a module
/// that does not match the library (stale after an API change) fails there.
fn python_module(dir: &Path) -> PathBuf {
    let module = dir.join("module");
    std::fs::create_dir_all(&module).unwrap();
    std::fs::copy(
        repo().join("crates/bindings/generated/python/bkv_sdk.py"),
        module.join("bkv_sdk.py"),
    )
    .unwrap();
    std::fs::copy(built("libbkv_sdk.so"), module.join("libbkv_sdk.so")).unwrap();
    module
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
        .to_owned()
}

#[test]
fn python_binding_round_trip_and_cross_client() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let module = python_module(t.path());
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    write_noise(&work.join("py-source.bin"), 300_000, 29);
    write_noise(&work.join("cli-source.bin"), 200_000, 30);
    // The CLI's backup, for the binding to restore.
    create_backup(
        &dev.config,
        "cli-user",
        "cli password\n",
        &work.join("cli-source.bin"),
    );

    let o = Command::new("python3")
        .arg(repo().join("crates/bindings/tests/python/roundtrip.py"))
        .args([&module, &dev.config, &work])
        .output()
        .unwrap();
    assert!(o.status.success(), "roundtrip.py: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(field(&out, "done"), "ok");
    // The CLI's exit class 3 and the binding's code say the same count.
    assert_eq!(field(&out, "wrong_password_remaining"), "9");

    // The binding's backup restores with the CLI: with the password it changed to, and with
    // the recovery key it added.
    let restored = t.path().join("cli-restored-py.bin");
    let o = restore_backup(&dev.config, "py-user", "py password 2\n", &restored, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_tree(&work.join("py-source.bin"), &restored);
    let by_key = t.path().join("cli-restored-py-rk.bin");
    let o = bkv_with(
        &dev.config,
        &[
            "backup",
            "restore",
            "--user",
            "py-user",
            "--recovery-key-stdin",
            "--out",
            by_key.to_str().unwrap(),
        ],
        &format!("{}\n", field(&out, "recovery_key")),
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_same_tree(&work.join("py-source.bin"), &by_key);
    // The passkey the binding added (the software authenticator's store) restores with the CLI.
    let by_passkey = t.path().join("cli-restored-py-pk.bin");
    let o = bkv_with(
        &dev.config,
        &[
            "backup",
            "restore",
            "--user",
            "py-user",
            "--passkey-store",
            work.join("py-passkeys.json").to_str().unwrap(),
            "--out",
            by_passkey.to_str().unwrap(),
        ],
        "",
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_same_tree(&work.join("py-source.bin"), &by_passkey);
    // The old password is wrong for the CLI too (exit 3).
    let o = restore_backup(
        &dev.config,
        "py-user",
        "py password 1\n",
        &t.path().join("never"),
        &[],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

/// `uniffi_bkv_sdk_checksum_X() != N` in a generated source: X → N.
fn checksums(source: &str) -> BTreeMap<String, u16> {
    let mut out = BTreeMap::new();
    for line in source.lines() {
        let Some(rest) = line.split("uniffi_bkv_sdk_checksum_").nth(1) else {
            continue;
        };
        let Some((name, after)) = rest.split_once("()") else {
            continue;
        };
        let value = after
            .split("!=")
            .nth(1)
            .map(|v| v.trim_matches(|c: char| !c.is_ascii_digit()))
            .and_then(|v| v.parse().ok());
        if let Some(v) = value {
            out.insert(name.to_owned(), v);
        }
    }
    out
}

#[test]
fn checked_in_bindings_match_the_built_library() {
    // Python: the module loads against the library (UniFFI's own checks) and names every
    // function the library exports.
    let t = tempfile::tempdir().unwrap();
    let module = python_module(t.path());
    let o = Command::new("python3")
        .arg("-c")
        .arg("import bkv_sdk; print(sorted(n for n in dir(bkv_sdk) if not n.startswith('_')))")
        .env("PYTHONPATH", &module)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the checked-in Python module does not load against the built library (run \
         scripts/bindings.sh): {}",
        text(&o)
    );
    // The module knows every function the library exports (the load checks only the ones it
    // knows): the library's checksum symbols, by name.
    let dir = repo().join("crates/bindings/generated");
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    let python = checksums(&read("python/bkv_sdk.py"));
    let o = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(built("libbkv_sdk.so"))
        .output()
        .unwrap();
    assert!(o.status.success(), "nm: {}", text(&o));
    let exported: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("uniffi_bkv_sdk_checksum_"))
        .map(str::to_owned)
        .collect();
    assert!(exported.len() >= 12, "{exported:?}");
    assert_eq!(
        exported.iter().collect::<Vec<_>>(),
        python.keys().collect::<Vec<_>>(),
        "the library exports other functions than crates/bindings/generated/python knows: \
         run scripts/bindings.sh"
    );
    // Kotlin and Swift were generated with it: the same functions, the same checksums.
    for source in ["kotlin/uniffi/bkv_sdk/bkv_sdk.kt", "swift/bkv_sdk.swift"] {
        assert_eq!(
            checksums(&read(source)),
            python,
            "crates/bindings/generated/{source} is stale: run scripts/bindings.sh"
        );
    }
}
