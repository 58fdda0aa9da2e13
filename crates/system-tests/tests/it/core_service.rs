//! A node as two processes (issue 28, item 4): `bkv-hsm` (the host agent: Raft, storage, links,
//! listeners) and its core service `bkv-core` (the core and its platform).
//!
//! - The agent holds no secret: after registrations and recoveries, every readable mapping of
//!   each process is read through `/proc/PID/mem` and searched for the fleet's secrets, the node's
//!   identity key and every user's OPAQUE record and wrapped key. The agent must hold none; the
//!   core service must hold them (so the scan is known to work).
//! - The agent restarts without losing a guess while a core service an operator runs keeps
//!   running (`--core-socket`).
//! - A node whose core service dies exits (rather than serve without it) and comes back with
//!   every guess counted.

use bkv_hsm_core::state::Live;
use bkv_hsm_core::{Core, FleetSecrets, NodeIdentity, SharedPlatform};
use bkv_testkit::system::*;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::sync::Arc;

const PW: &str = "correct horse battery staple\n";

/// Every readable, private or file-backed mapping of process `pid`, read whole (regions the
/// kernel refuses, such as `[vvar]`, are skipped).
fn memory_of(pid: u32) -> Vec<u8> {
    let maps = std::fs::File::open(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut image = Vec::new();
    for line in std::io::BufReader::new(maps).lines() {
        let line = line.unwrap();
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_ok() && mem.read_exact(&mut region).is_ok() {
            image.extend_from_slice(&region);
        }
    }
    image
}

/// The `bkv-core` child of process `parent`.
fn core_child_of(parent: u32) -> u32 {
    core_children_of(parent)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("node process {parent} has no bkv-core child"))
}

fn core_children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces, so split after its `)`.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if head.ends_with("(bkv-core") && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// What the scan looks for, read back from the stopped node's data directory with its
/// software platform's keys (which only a test may do).
fn secrets_of(node_dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    // `dev up` keeps a software platform beside the data directory.
    let platform: SharedPlatform = Arc::new(
        bkv_hsm_platform::software::SoftwarePlatform::open(&node_dir.join("platform"), false)
            .unwrap(),
    );
    let node_dir = node_dir.join("data");
    let store = bkv_hsm_node::Store::open(&node_dir.join("vault.redb")).unwrap();
    let identity =
        NodeIdentity::unseal(&*platform, &store.sealed_identity().unwrap().unwrap()).unwrap();
    let secrets =
        FleetSecrets::unseal(&*platform, &store.sealed_secrets().unwrap().unwrap()).unwrap();
    let mut needles: Vec<(String, Vec<u8>)> = secrets
        .secret_values_for_tests()
        .into_iter()
        .map(|(what, v)| (what.to_owned(), v))
        .collect();
    needles.push((
        "identity private key".into(),
        identity.private_key_for_tests().to_vec(),
    ));
    let mut core = Core::new(platform, secrets, &identity).unwrap();
    let table = Arc::new(
        bkv_hsm_node::RecordTable::open(&node_dir.join("vault-records.redb"), 1 << 20).unwrap(),
    );
    let summary = table.summary().unwrap();
    let host = bkv_hsm_node::TableHost(table, Default::default());
    core.records()
        .restore(Box::new(host), summary.as_deref())
        .unwrap();
    let state = core.records().export().unwrap();
    let mut users = 0;
    for (id, record) in &state.records {
        if let Some(Live::Active { credential, .. }) = &record.live {
            users += 1;
            let id = hex::encode(&id[..4]);
            needles.push((
                format!("OPAQUE record of {id}"),
                credential.opaque_record.clone(),
            ));
            needles.push((
                format!("wrapped key of {id}"),
                credential.wrapped_key.clone(),
            ));
        }
    }
    assert_eq!(users, 3, "the test registered three users");
    needles
}

fn found(image: &[u8], needles: &[(String, Vec<u8>)]) -> Vec<String> {
    needles
        .iter()
        .filter(|(_, n)| n.len() >= 32 && memchr::memmem::find(image, n).is_some())
        .map(|(what, _)| what.clone())
        .collect()
}

#[test]
fn the_host_agent_holds_no_key_and_no_record_the_core_service_holds_them() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("f");
    write_noise(&file, 50_000, 11);
    let out = t.path().join("out");
    for user in ["ana", "bo", "cy"] {
        create_backup(&dev.config, user, PW, &file);
        for pw in ["wrong\n", PW] {
            restore_backup(&dev.config, user, pw, &out, &[]);
        }
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&file).unwrap());
    }
    let agent = dev.node_pid() as u32;
    let core = core_child_of(agent);
    let (agent_image, core_image) = (memory_of(agent), memory_of(core));
    let node_dir = dev.dir.join("nodes/0");
    drop(dev);
    let needles = secrets_of(&node_dir);
    assert!(needles.len() >= 4 + 6, "{} needles", needles.len());

    let in_agent = found(&agent_image, &needles);
    assert!(
        in_agent.is_empty(),
        "the host agent's memory ({} bytes) holds {in_agent:?}",
        agent_image.len()
    );
    // The scan works: the core service holds the fleet's and node's keys and the records it
    // served (its bucket cache).
    let in_core = found(&core_image, &needles);
    let missing: Vec<_> = needles
        .iter()
        .filter(|(what, _)| !in_core.contains(what))
        .map(|(what, _)| what.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "the core service's memory ({} bytes) lacks {missing:?}: the scan does not see what it should",
        core_image.len()
    );
}

#[test]
fn the_agent_restarts_against_a_running_core_service_and_no_guess_is_lost() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let socket = run.join("core.sock");
    let core_bin = admin_bin().with_file_name("bkv-core");
    let mut core = std::process::Command::new(&core_bin)
        .arg("--socket")
        .arg(&socket)
        .args(["--platform", "software", "--platform-dir"])
        .arg(t.path().join("core-platform"))
        .arg("--create-keys")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let env = [("BKV_HSM_CORE_SOCKET", socket.to_str().unwrap())];
    let dev = DevUp::start_nodes_env(&t.path().join("dev"), 1, &env);
    let file = t.path().join("f");
    write_noise(&file, 20_000, 5);
    let out = t.path().join("out");
    create_backup(&dev.config, "dee", PW, &file);
    let restore = |pw: &str| restore_backup(&dev.config, "dee", pw, &out, &[]);
    for _ in 0..2 {
        assert_eq!(restore("wrong\n").status.code(), Some(3));
    }
    // The node uses the running core service, not a child of its own.
    assert_eq!(core_children_of(dev.node_pid() as u32), Vec::<u32>::new());
    // The agent dies; the core service (the same process throughout) keeps running.
    dev.kill_node(0);
    let o = std::process::Command::new(admin_bin())
        .args(["dev", "restart-node", "--dir"])
        .arg(&dev.dir)
        .arg("0")
        .envs(env)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", text(&o), dev.node_log_tail(0));
    assert!(
        core.try_wait().unwrap().is_none(),
        "the core service stopped"
    );
    assert_eq!(core_children_of(dev.node_pid() as u32), Vec::<u32>::new());
    let o = restore("wrong\n");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = dev.bkv(&["backup", "status", "--user", "dee", "--json"], "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["record"]["Active"]["attempts"], 3, "{v}");
    let o = restore(PW);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&file).unwrap());
    drop(dev);
    let _ = core.kill();
    let _ = core.wait();
}

/// Whether process `pid` has exited (gone, or a zombie its parent has not reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_node_whose_core_service_dies_exits_and_restarts_with_every_guess_counted() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("f");
    write_noise(&file, 10_000, 9);
    let out = t.path().join("out");
    create_backup(&dev.config, "eve", PW, &file);
    let restore = |pw: &str| restore_backup(&dev.config, "eve", pw, &out, &[]);
    assert_eq!(restore("wrong\n").status.code(), Some(3));
    let agent = dev.node_pid() as u32;
    let core = core_child_of(agent);
    std::process::Command::new("kill")
        .args(["-KILL", &core.to_string()])
        .status()
        .unwrap();
    // The agent notices and exits rather than serve without its core.
    let mut waited = 0;
    while !exited(agent) {
        assert!(waited < 100, "the agent kept running without its core");
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
    }
    // Whichever notices first: the child's watcher, or the core connection's reader.
    let log = std::fs::read_to_string(dev.dir.join("nodes/0/node.log")).unwrap();
    assert!(
        log.contains("the core service exited")
            || log.contains("the connection to the core service broke"),
        "{}",
        dev.node_log_tail(0)
    );
    dev.restart_node(0);
    assert_eq!(restore("wrong\n").status.code(), Some(3));
    let o = dev.bkv(&["backup", "status", "--user", "eve", "--json"], "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["record"]["Active"]["attempts"], 2, "{v}");
}
