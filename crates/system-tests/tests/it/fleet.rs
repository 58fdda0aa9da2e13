//! Fault tests of a replicated fleet: real `bkv-hsm` processes started by
//! `bkv-admin dev up --nodes N`, killed with SIGKILL, paused with SIGSTOP and
//! restarted with `bkv-admin dev restart-node`, driven through the CLI. Each test
//! says which failure it proves the fleet survives, and runs twice: on the
//! software platform and with a SoftHSM2 token per node.

use bkv_testkit::system::{text, DevUp};
use std::time::{Duration, Instant};

/// Each fault test once per platform.
macro_rules! on_both_platforms {
    ($($name:ident),* $(,)?) => {
        mod software {
            $( #[test] fn $name() { super::$name("software") } )*
        }
        mod softhsm {
            $( #[test] fn $name() { super::$name("softhsm") } )*
        }
    };
}

on_both_platforms!(
    five_nodes_keep_restoring_through_two_kills_and_count_every_guess_once,
    three_nodes_without_a_majority_answer_unavailable_and_count_nothing,
    a_paused_follower_and_a_rolling_restart_lose_nothing,
    a_node_restored_from_an_old_copy_of_its_data_grants_no_extra_guess,
    a_single_node_restored_from_an_old_copy_refuses_to_serve,
    a_node_can_be_added_and_removed_while_serving,
);

const PW: &str = "fleet password\n";

fn create(dev: &DevUp, user: &str, file: &std::path::Path) {
    bkv_testkit::system::create_backup(&dev.config, user, PW, file);
}

fn restore(dev: &DevUp, user: &str, pw: &str, out: &std::path::Path) -> std::process::Output {
    bkv_testkit::system::restore_backup(&dev.config, user, pw, out, &[])
}

fn record(dev: &DevUp, user: &str) -> serde_json::Value {
    let o = dev.bkv(&["backup", "status", "--user", user, "--json"], "");
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["record"].clone()
}

/// Survives: the leader and then a second node of five dying (SIGKILL) while
/// a client restores in a loop; and a leader dying in the middle of a run of
/// wrong guesses, which must still destroy the record after exactly ten.
fn five_nodes_keep_restoring_through_two_kills_and_count_every_guess_once(platform: &str) {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_on(&t.path().join("dev"), 5, platform);
    let file = t.path().join("f");
    std::fs::write(&file, b"five node fleet").unwrap();
    create(&dev, "ada", &file);
    let status = dev.fleet_status();
    let nodes = &status.nodes;
    assert_eq!(nodes.len(), 5, "{status:?}");
    assert!(nodes.iter().all(|n| n.reachable), "{status:?}");
    let view = nodes[0].view.as_ref().unwrap();
    assert_eq!(view.voters.len(), 5, "{status:?}");

    // Restores in a loop; two nodes die along the way.
    let mut longest_gap = Duration::ZERO;
    let mut last_ok = Instant::now();
    let mut failures = 0;
    let mut killed = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while killed.len() < 2 || start.elapsed() < Duration::from_secs(2) + longest_gap {
        if i == 3 || i == 8 {
            let l = dev.leader();
            dev.kill_node(l);
            killed.push(l);
        }
        let out = t.path().join(format!("r{i}"));
        let o = restore(&dev, "ada", PW, &out);
        if o.status.success() {
            assert_eq!(std::fs::read(&out).unwrap(), b"five node fleet");
            longest_gap = longest_gap.max(last_ok.elapsed());
            last_ok = Instant::now();
        } else {
            failures += 1;
            assert!(failures < 20, "restores keep failing: {}", text(&o));
        }
        i += 1;
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "loop did not finish"
        );
    }
    eprintln!(
        "failover: longest gap between successful restores {:?} ({} failed attempts, {} restores)",
        longest_gap, failures, i
    );
    // The password was right every time: no guess was spent.
    assert_eq!(record(&dev, "ada")["Active"]["attempts"], 0);

    // Bring the two back (they catch up), then 9 wrong guesses, a leader
    // kill, and 2 more: destroyed after exactly 10.
    for k in &killed {
        dev.restart_node(*k);
    }
    let wrong = "not the password\n";
    for n in 1..=9u32 {
        let o = restore(&dev, "ada", wrong, &t.path().join("x"));
        assert_eq!(o.status.code(), Some(3), "guess {n}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&format!("{} guesses remaining", 10 - n)),
            "{}",
            text(&o)
        );
    }
    let l = dev.leader();
    dev.kill_node(l);
    let o = restore(&dev, "ada", wrong, &t.path().join("x"));
    assert_eq!(o.status.code(), Some(4), "10th guess: {}", text(&o));
    let o = restore(&dev, "ada", wrong, &t.path().join("x"));
    assert_eq!(o.status.code(), Some(4), "11th guess: {}", text(&o));
    assert_eq!(record(&dev, "ada"), "Destroyed");
    // The right password no longer helps; the record stays destroyed after
    // the old leader returns.
    dev.restart_node(l);
    let o = restore(&dev, "ada", PW, &t.path().join("y"));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
}

/// Survives: losing the majority (2 of 3 nodes SIGKILLed). A recovery
/// attempt then fails with "unavailable" and is not counted: the node that
/// is left cannot confirm it is up to date (its read barrier needs a
/// majority), so it proposes nothing. After both restart, nothing was counted.
fn three_nodes_without_a_majority_answer_unavailable_and_count_nothing(platform: &str) {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_on(&t.path().join("dev"), 3, platform);
    let file = t.path().join("f");
    std::fs::write(&file, b"majority").unwrap();
    create(&dev, "bo", &file);
    let o = restore(&dev, "bo", "wrong\n", &t.path().join("x"));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(record(&dev, "bo")["Active"]["attempts"], 1);

    let l = dev.leader();
    let other = (0..3).find(|i| *i != l).unwrap();
    dev.kill_node(l);
    dev.kill_node(other);
    let o = restore(&dev, "bo", "wrong again\n", &t.path().join("y"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unavailable") && err.contains("majority"),
        "{err}"
    );

    dev.restart_node(l);
    dev.restart_node(other);
    assert_eq!(record(&dev, "bo")["Active"]["attempts"], 1);
    let out = t.path().join("ok");
    let o = restore(&dev, "bo", PW, &out);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"majority");
}

/// Survives: a follower paused (SIGSTOP) and resumed, and every node
/// restarted one at a time (a rolling restart). No record or counter is lost.
fn a_paused_follower_and_a_rolling_restart_lose_nothing(platform: &str) {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_on(&t.path().join("dev"), 3, platform);
    let file = t.path().join("f");
    std::fs::write(&file, b"rolling").unwrap();
    create(&dev, "cy", &file);
    let o = restore(&dev, "cy", "wrong\n", &t.path().join("x"));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    let l = dev.leader();
    let f = (0..3).find(|i| *i != l).unwrap();
    let pid = dev.pid_of(f);
    bkv_testkit::system::signal(pid, rustix::process::Signal::STOP);
    // Two of three still form a majority. (The frontend tries nodes in
    // order, so route around a paused node 0 by giving it a moment.)
    let o = restore(&dev, "cy", "wrong 2\n", &t.path().join("x2"));
    bkv_testkit::system::signal(pid, rustix::process::Signal::CONT);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(record(&dev, "cy")["Active"]["attempts"], 2);

    for i in 0..3 {
        dev.restart_node(i);
        assert_eq!(
            record(&dev, "cy")["Active"]["attempts"],
            2,
            "after restarting {i}"
        );
    }
    let out = t.path().join("ok");
    let o = restore(&dev, "cy", PW, &out);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"rolling");
    let status = dev.fleet_status();
    assert!(status.nodes.iter().all(|n| n.reachable), "{status:?}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn restart_output(dev: &DevUp, i: usize) -> std::process::Output {
    std::process::Command::new(bkv_testkit::system::admin_bin())
        .args(["dev", "restart-node", "--dir"])
        .arg(&dev.dir)
        .arg(i.to_string())
        .output()
        .unwrap()
}

/// Survives: a host that copies a node's data directory back to an older
/// state (to regain guesses). The node's platform counter is ahead of the
/// copy, so the node refuses to start; the fleet keeps counting from the
/// majority and the record is destroyed after exactly ten wrong guesses.
/// With a single node the same rollback makes the vault unavailable rather
/// than grant a guess.
fn a_node_restored_from_an_old_copy_of_its_data_grants_no_extra_guess(platform: &str) {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_on(&t.path().join("dev"), 3, platform);
    let file = t.path().join("f");
    std::fs::write(&file, b"rollback").unwrap();
    create(&dev, "di", &file);
    let wrong = "wrong\n";
    let mut counted = 0u32;
    let guess = |expect: i32| {
        let o = restore(&dev, "di", wrong, &t.path().join("x"));
        assert_eq!(o.status.code(), Some(expect), "{}", text(&o));
    };
    for _ in 0..2 {
        guess(3);
        counted += 1;
    }
    let l = dev.leader();
    let f = (0..3).find(|i| *i != l).unwrap();
    let data = dev.dir.join(format!("nodes/{f}/data"));
    dev.kill_node(f);
    let old = t.path().join("old-copy");
    copy_dir(&data, &old);
    dev.restart_node(f);
    for _ in 0..3 {
        guess(3);
        counted += 1;
    }
    // Wait until the follower has stored those guesses too.
    for _ in 0..50 {
        let s = dev.fleet_status();
        let applied: Vec<_> = s
            .nodes
            .iter()
            .map(|n| n.view.as_ref().and_then(|v| v.applied_index))
            .collect();
        if applied.iter().all(|a| *a == applied[0]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    dev.kill_node(f);
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&old, &data);
    let o = restart_output(&dev, f);
    assert!(
        !o.status.success(),
        "a rolled-back node started: {}",
        text(&o)
    );
    let log = std::fs::read_to_string(dev.dir.join(format!("nodes/{f}/node.log"))).unwrap();
    assert!(log.contains("rollback detected"), "{log}");
    assert_eq!(record(&dev, "di")["Active"]["attempts"], counted);
    while counted < 9 {
        guess(3);
        counted += 1;
    }
    guess(4); // the tenth wrong guess destroys
    assert_eq!(record(&dev, "di"), "Destroyed");
}

/// The same rollback against a one-node fleet: the node refuses to start, so
/// the vault is unavailable instead of answering from the old counter.
fn a_single_node_restored_from_an_old_copy_refuses_to_serve(platform: &str) {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_on(&t.path().join("dev"), 1, platform);
    let file = t.path().join("f");
    std::fs::write(&file, b"one").unwrap();
    create(&dev, "ed", &file);
    let data = dev.dir.join("nodes/0/data");
    let old = t.path().join("old-copy");
    dev.kill_node(0);
    copy_dir(&data, &old);
    dev.restart_node(0);
    for _ in 0..4 {
        let o = restore(&dev, "ed", "wrong\n", &t.path().join("x"));
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    }
    dev.kill_node(0);
    let newest = t.path().join("newest");
    copy_dir(&data, &newest);
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&old, &data);
    let o = restart_output(&dev, 0);
    assert!(
        !o.status.success(),
        "a rolled-back node started: {}",
        text(&o)
    );
    let o = restore(&dev, "ed", "wrong\n", &t.path().join("x"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Putting the newest data back (what an honest operator does) works,
    // with all four guesses still counted.
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&newest, &data);
    dev.restart_node(0);
    assert_eq!(record(&dev, "ed")["Active"]["attempts"], 4);
}

/// Membership: a node added to a running fleet catches up and becomes a
/// voter (it then carries the majority after two original nodes are gone);
/// a removed node is dropped from the voters.
fn a_node_can_be_added_and_removed_while_serving(platform: &str) {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_on(&t.path().join("dev"), 3, platform);
    let file = t.path().join("f");
    std::fs::write(&file, b"membership").unwrap();
    create(&dev, "fay", &file);
    let o = restore(&dev, "fay", "wrong\n", &t.path().join("x"));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    let fleet = |args: &[&str]| {
        let o = std::process::Command::new(bkv_testkit::system::admin_bin())
            .args(["fleet"])
            .args(args)
            .arg("--dir")
            .arg(&dev.dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    };
    fleet(&["add-node"]);
    // The leader's view: a removed node may never learn of its removal and
    // go on reporting the old voters.
    let voters = |dev: &DevUp| {
        let s = dev.fleet_status();
        let leader = s
            .nodes
            .iter()
            .filter_map(|n| n.view.as_ref())
            .find(|v| v.role == "leader");
        leader.map(|v| v.voters.len())
    };
    assert_eq!(voters(&dev), Some(4));
    // Node 3 holds the data: with 4 voters, nodes 3 plus two originals are a
    // majority. Remove node 0 (now 3 voters), kill node 1: 2 of 3 remain.
    fleet(&["remove-node", "0"]);
    // Node 0, if it led, steps down once the change commits; wait for the new leader's view.
    let deadline = Instant::now() + Duration::from_secs(60);
    while voters(&dev) != Some(3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(voters(&dev), Some(3));
    dev.kill_node(1);
    let out = t.path().join("ok");
    let o = restore(&dev, "fay", PW, &out);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"membership");
    assert_eq!(record(&dev, "fay")["Active"]["attempts"], 0);
}
