//! Fleet rotation end to end, with real processes: a second fleet formed by
//! the ceremony next to the first; records move only when their user
//! recovers with the right password (crashing at every step of the move
//! loses nothing, and the old fleet's record grants nothing once moved); wrong guesses
//! keep counting on the old fleet; the old fleet is retired, after which a
//! client that pinned it is told to update.

use bkv_testkit::system::{admin_bin, bkv_bin, bkv_with, text, DevUp};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub(crate) const PW: &str = "rotation password\n";
pub(crate) const WRONG: &str = "not the password\n";

/// A client config pinned to one fleet (what an app without OTA updates has).
pub(crate) fn pinned_config(dev: &DevUp, fleet: usize, path: &Path) -> PathBuf {
    let fleets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.dir.join("fleets.json")).unwrap()).unwrap();
    let f = fleets
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["index"] == fleet)
        .unwrap();
    let mut cfg: toml::Value = std::fs::read_to_string(&dev.config)
        .unwrap()
        .parse()
        .unwrap();
    let mut fleet_tbl = toml::map::Map::new();
    fleet_tbl.insert("mode".into(), "pinned".into());
    fleet_tbl.insert("fleet_id".into(), f["fleet_id"].as_str().unwrap().into());
    fleet_tbl.insert(
        "noise_public_key".into(),
        f["noise_key"].as_str().unwrap().into(),
    );
    cfg.as_table_mut()
        .unwrap()
        .insert("fleet".into(), toml::Value::Table(fleet_tbl));
    std::fs::write(path, toml::to_string(&cfg).unwrap()).unwrap();
    path.to_owned()
}

pub(crate) fn run(config: &Path, args: &[&str], stdin: &str) -> Output {
    bkv_with(config, args, stdin, &[])
}

pub(crate) fn create(config: &Path, user: &str, file: &Path) {
    bkv_testkit::system::create_backup(config, user, PW, file);
}

pub(crate) fn restore(
    config: &Path,
    user: &str,
    pw: &str,
    out: &Path,
    env: &[(&str, &str)],
) -> Output {
    bkv_testkit::system::restore_backup(config, user, pw, out, env)
}

/// The record's state as seen through `config`: `Absent`, `Destroyed`, or
/// the attempts of an active record.
pub(crate) fn record(config: &Path, user: &str) -> serde_json::Value {
    let o = run(config, &["backup", "status", "--user", user, "--json"], "");
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["record"].clone()
}

pub(crate) fn fleet(dev: &DevUp, args: &[&str]) -> Output {
    Command::new(admin_bin())
        .arg("fleet")
        .args(args)
        .arg("--dir")
        .arg(&dev.dir)
        .output()
        .unwrap()
}

#[test]
fn a_rotation_moves_records_only_with_the_right_password_and_retires_the_old_fleet() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_nodes(&t.path().join("dev"), 3);
    let ota = dev.config.clone();
    let file = t.path().join("f");
    std::fs::write(&file, b"rotate me").unwrap();
    for user in ["una", "vic", "xena"] {
        create(&ota, user, &file);
    }
    for (user, n) in [("una", 3), ("vic", 9)] {
        for _ in 0..n {
            let o = restore(&ota, user, WRONG, &t.path().join("x"), &[]);
            assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        }
    }

    // Fleet 2, formed by the ceremony next to fleet 1, becomes the preferred
    // fleet over the air.
    let o = fleet(&dev, &["ceremony", "--nodes", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    let pinned1 = pinned_config(&dev, 1, &t.path().join("pinned-1.toml"));
    let pinned2 = pinned_config(&dev, 2, &t.path().join("pinned-2.toml"));
    // Records created on fleet 1 by a client that has not learned fleet 2
    // (one for each crash point of a move).
    let steps = [
        "migrate-logged-in-old",
        "migrate-registered-new",
        "migrate-moved-out",
        "migrate-moved-in",
    ];
    for step in steps {
        create(&pinned1, step, &file);
    }

    // Nothing moved by itself: una still has 3 guesses counted, on fleet 1.
    assert_eq!(record(&ota, "una")["Active"]["attempts"], 3);
    assert_eq!(record(&pinned1, "una")["Active"]["attempts"], 3);
    assert_eq!(record(&pinned2, "una"), "Absent");
    // A wrong password moves nothing either, and is counted on fleet 1.
    let o = restore(&ota, "una", WRONG, &t.path().join("x"), &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("6 guesses remaining"),
        "{}",
        text(&o)
    );
    assert_eq!(record(&pinned2, "una"), "Absent");
    // The right password moves it: afterwards it lives on fleet 2 only, with
    // a fresh counter, and restores from there; fleet 1 keeps only the note that it moved.
    let out = t.path().join("una-1");
    let o = restore(&ota, "una", PW, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"rotate me");
    assert_eq!(record(&pinned1, "una"), "Moved");
    assert_eq!(record(&pinned2, "una")["Active"]["attempts"], 0);
    let out = t.path().join("una-2");
    let o = restore(&pinned2, "una", PW, &out, &[]);
    assert!(o.status.success(), "{}", text(&o));

    // vic, at 9 wrong guesses on fleet 1: the 10th destroys the record,
    // whichever fleet the client tries first; the right password is too late.
    let o = restore(&ota, "vic", WRONG, &t.path().join("x"), &[]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert_eq!(record(&pinned1, "vic"), "Destroyed");
    assert_eq!(record(&pinned2, "vic"), "Absent");
    let o = restore(&ota, "vic", PW, &t.path().join("x"), &[]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));

    // A crash at each step of a move, then the next recovery: the record is
    // never lost and ends up live on fleet 2 only.
    for step in steps {
        let o = restore(
            &ota,
            step,
            PW,
            &t.path().join("crash"),
            &[("BKV_CRASH_AT", step)],
        );
        assert!(!o.status.success(), "{step}: did not crash: {}", text(&o));
        let out = t.path().join(format!("after-{step}"));
        let o = restore(&ota, step, PW, &out, &[]);
        assert!(o.status.success(), "{step}: {}", text(&o));
        assert_eq!(std::fs::read(&out).unwrap(), b"rotate me");
        assert_eq!(
            record(&pinned1, step),
            "Moved",
            "{step}: still live on fleet 1"
        );
        assert_eq!(record(&pinned2, step)["Active"]["attempts"], 0, "{step}");
    }

    // The auditor's log shows both fleets, each with its evidence.
    let o = Command::new(bkv_bin())
        .args([
            "audit",
            "log",
            "--auditor",
            &dev.auditor_url,
            "--namespace",
            "dev",
        ])
        .args(dev.log_keys())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let report = String::from_utf8_lossy(&o.stdout);
    assert_eq!(report.matches("evidence at index").count(), 2, "{report}");
    assert!(!report.contains("without deployment evidence"), "{report}");
    assert!(!report.contains("without ceremony evidence"), "{report}");
    let fleets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.dir.join("fleets.json")).unwrap()).unwrap();
    for f in fleets.as_array().unwrap() {
        assert!(report.contains(f["fleet_id"].as_str().unwrap()), "{report}");
    }

    // Retiring fleet 1 waits for xena's record, which never moved...
    let o = fleet(&dev, &["retire", "--fleet", "1"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("still holds 1 records"),
        "{}",
        text(&o)
    );
    // ...until the deadline: then it goes, and a client pinned to it is told
    // to update the app, while the moved records keep working.
    let o = fleet(&dev, &["retire", "--fleet", "1", "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let o = run(&pinned1, &["backup", "status", "--user", "una"], "");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("update the app"),
        "{}",
        text(&o)
    );
    let o = restore(&ota, "una", PW, &t.path().join("una-3"), &[]);
    assert!(o.status.success(), "{}", text(&o));
}
