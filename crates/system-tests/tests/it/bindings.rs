//! Issue 29, item 4: bindings for native apps. The Python package maturin builds from the same
//! library as the Kotlin and Swift sources (`crates/bindings`, UniFFI), installed in a fresh
//! virtual environment, runs a round trip against a dev deployment, and backups cross between
//! it and the CLI both ways; the checked-in Kotlin and Swift sources are exactly what the
//! library generates.

use bkv_testkit::system::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The generator at the library's UniFFI version, run on the built library.
fn generate(language: &str, out: &Path) {
    let o = Command::new(built("examples/uniffi-bindgen"))
        .args(["generate", "--library"])
        .arg(built("libbkv_sdk.so"))
        .args(["--language", language, "--out-dir"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "uniffi-bindgen: {}", text(&o));
}

/// Builds the wheel with maturin (its UniFFI step runs this library's generator, found on
/// `PATH` as `uniffi-bindgen`) and installs it into a new virtual environment under `dir`;
/// returns that environment's `python`.
fn python_package(dir: &Path) -> PathBuf {
    let wheels = dir.join("wheels");
    let generator_dir = built("examples/uniffi-bindgen")
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        generator_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("maturin")
        .args(["build", "--profile", "dev", "--out"])
        .arg(&wheels)
        .current_dir(repo().join("crates/bindings"))
        .env("PATH", &path)
        .output()
        .expect("maturin (scripts/test-all.sh installs it from PyPI)");
    assert!(o.status.success(), "maturin build: {}", text(&o));
    let venv = dir.join("venv");
    let o = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .unwrap();
    assert!(o.status.success(), "venv: {}", text(&o));
    let wheel = std::fs::read_dir(&wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("maturin made no wheel");
    let python = venv.join("bin/python");
    let o = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--no-index", "--no-deps"])
        .arg(&wheel)
        .output()
        .unwrap();
    assert!(o.status.success(), "pip install: {}", text(&o));
    python
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
    let python = python_package(t.path());
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

    // The installed package, not the source tree: the module directory argument is empty.
    let o = Command::new(&python)
        .arg(repo().join("crates/bindings/tests/python/roundtrip.py"))
        .arg("")
        .args([&dev.config, &work])
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

#[test]
fn generated_kotlin_and_swift_sources_are_up_to_date() {
    let t = tempfile::tempdir().unwrap();
    for language in ["kotlin", "swift"] {
        let fresh = t.path().join(language);
        generate(language, &fresh);
        let checked_in = repo().join("crates/bindings/generated").join(language);
        let o = Command::new("diff")
            .arg("-r")
            .arg(&checked_in)
            .arg(&fresh)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "crates/bindings/generated/{language} is out of date: run scripts/bindings.sh\n{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}
