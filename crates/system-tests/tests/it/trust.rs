//! The trust boundary with real processes on loopback: membership changes
//! only through operator-signed, never-replayable commands on the admin
//! link, only for nodes whose membership record is in the auditor's log; the
//! relay link (the frontend's) changes nothing; with SoftHSM2 the nodes'
//! keys stay inside their tokens.

use bkv_operator::fleet::{self as fleet_admin, admin_request, Operator};
use bkv_testkit::system::{text, DevUp};
use bkv_wire::admin::{
    AdminAction, AdminError, AdminRequest, AdminResponse, LogProof, MembersView,
    SignedAdminCommand, SignedStatement,
};
use ed25519_dalek::SigningKey;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const PW: &str = "trust password\n";

fn admins(dev: &DevUp) -> BTreeMap<u64, SocketAddr> {
    (0..9)
        .filter(|i| dev.dir.join(format!("nodes/{i}/node.json")).exists())
        .map(|i| {
            let r = dev.node_record(i);
            (
                r["node_id"].as_u64().unwrap(),
                r["admin"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

fn operator(dev: &DevUp) -> Operator {
    let k: [u8; 32] = std::fs::read(dev.dir.join("operator/operator-signing.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let listen = std::fs::read_to_string(dev.dir.join("auditor/listen")).unwrap();
    Operator {
        key: SigningKey::from_bytes(&k),
        auditor_url: format!("http://{}", listen.trim()),
        namespace: "dev".into(),
        http: reqwest::Client::new(),
        ledger: None,
    }
}

fn view(dev: &DevUp) -> (SocketAddr, MembersView) {
    fleet_admin::members(&admins(dev)).unwrap()
}

/// What must not change when a command is refused: the next sequence
/// number, the admitted members (id, voter), and the Raft voters and learners.
#[derive(Debug, PartialEq)]
struct Membership(u64, Vec<(u64, bool)>, Vec<u64>, Vec<u64>);

fn membership(v: &MembersView) -> Membership {
    Membership(
        v.next_seq,
        v.members.iter().map(|m| (m.node_id, m.voter)).collect(),
        v.status.voters.clone(),
        v.status.learners.clone(),
    )
}

/// A fresh node's signed platform statement (`bkv-hsm --print-statement`).
fn new_node_statement(dir: &Path) -> SignedStatement {
    let o = Command::new(bkv_testkit::system::hsm_bin())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--platform-dir")
        .arg(dir.join("platform"))
        .arg("--print-statement")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v: bkv_api::statement::PrintedStatement = serde_json::from_slice(&o.stdout).unwrap();
    let bytes = hex::decode(&v.signed_statement).unwrap();
    bkv_wire::decode(&bytes, 1 << 16).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn execute(addr: SocketAddr, signed: SignedAdminCommand) -> AdminResponse {
    admin_request(addr, &AdminRequest::Execute(signed)).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Refused, and nothing changed: the 52-byte membership frame on the relay
/// link (the attack that made a stranger a learner), and on the admin link a
/// command that is unsigned, signed by another key, or replayed.
#[test]
fn membership_changes_need_the_admin_link_a_valid_signature_and_a_fresh_sequence() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_on(&t.path().join("dev"), 3, "software");
    let (leader, before) = view(&dev);
    assert_eq!(before.members.len(), 3);
    assert!(before.members.iter().all(|m| m.voter));

    // The old relay-link frame: NodeRequest variant 5, AddLearner { id 9,
    // addr "127.0.0.1:9", identity [0x42; 32] }.
    let mut body = vec![1u8, 5, 0, 9, 11];
    body.extend_from_slice(b"127.0.0.1:9");
    body.extend_from_slice(&[0x42; 32]);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    for i in 0..3 {
        let relay = dev.node_record(i)["listen"].as_str().unwrap().to_owned();
        let mut s = std::net::TcpStream::connect(&relay).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&frame).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        // The relay link answers with an error frame and hangs up.
        assert!(
            String::from_utf8_lossy(&answer).contains("malformed"),
            "{answer:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(membership(&view(&dev).1), membership(&before));

    // A genuine admission for a new node, logged with the auditor.
    let op = operator(&dev);
    let statement = new_node_statement(&t.path().join("n9"));
    let action = rt()
        .block_on(fleet_admin::admission(
            &op,
            &before.fleet_id,
            9,
            "127.0.0.1:9",
            statement,
        ))
        .unwrap();
    let signed = fleet_admin::sign_command(
        &op.key,
        &before.fleet_id,
        before.next_seq,
        now(),
        action.clone(),
    );

    // Unsigned.
    let unsigned = SignedAdminCommand {
        command: signed.command.clone(),
        signature: Vec::new(),
    };
    assert_eq!(
        execute(leader, unsigned),
        AdminResponse::Error(AdminError::BadSignature)
    );
    // Signed by another key (the frontend's, an attacker's).
    let stranger = SigningKey::from_bytes(&[7; 32]);
    let forged = fleet_admin::sign_command(
        &stranger,
        &before.fleet_id,
        before.next_seq,
        now(),
        action.clone(),
    );
    assert_eq!(
        execute(leader, forged),
        AdminResponse::Error(AdminError::BadSignature)
    );
    // Valid, but sent to a follower.
    let follower = admins(&dev)
        .into_iter()
        .find(|(_, a)| *a != leader)
        .map(|(_, a)| a)
        .unwrap();
    assert!(matches!(
        execute(follower, signed.clone()),
        AdminResponse::Error(AdminError::NotLeader { .. })
    ));
    // Garbage on the admin link.
    let mut s = std::net::TcpStream::connect(leader).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0, 0, 0, 4, 1, 9, 9, 9]).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(!answer.is_empty());
    assert_eq!(membership(&view(&dev).1), membership(&before));

    // Executed once...
    let AdminResponse::Executed(after) = execute(leader, signed.clone()) else {
        panic!("a valid command was refused")
    };
    assert_eq!(after.next_seq, before.next_seq + 1);
    let m9 = after.members.iter().find(|m| m.node_id == 9).unwrap();
    assert!(!m9.voter && m9.log_index.is_some());
    // ...and a captured copy never again.
    let (leader, after) = view(&dev);
    assert_eq!(
        execute(leader, signed),
        AdminResponse::Error(AdminError::Replayed {
            expected: after.next_seq,
            found: before.next_seq
        })
    );
    assert_eq!(membership(&view(&dev).1), membership(&after));
}

/// A node whose membership record is not in the auditor's log is not
/// admitted, even with a command the operator signed, and no member sends
/// it the fleet secrets.
#[test]
fn a_node_missing_from_the_auditors_log_is_not_admitted_and_gets_no_secrets() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_on(&t.path().join("dev"), 3, "software");
    let op = operator(&dev);
    let (leader, before) = view(&dev);
    let statement = new_node_statement(&t.path().join("n5"));
    // A real admission, then its proof replaced by one from a log the
    // fleet's auditor never signed (a private "auditor" of the operator's).
    let AdminAction::AddMember { record, proof, .. } = rt()
        .block_on(fleet_admin::admission(
            &op,
            &before.fleet_id,
            5,
            "127.0.0.1:1",
            statement.clone(),
        ))
        .unwrap()
    else {
        panic!()
    };
    let fake_auditor = SigningKey::from_bytes(&[9; 32]);
    let leaf =
        bkv_transparency::merkle::leaf_hash(&bkv_transparency::membership::record_leaf_data(
            &bkv_transparency::membership::record_digest(&record),
        ));
    let cp = bkv_transparency::note::Checkpoint {
        origin: "bkv-auditor/dev".into(),
        size: 1,
        root: bkv_transparency::merkle::root(&[leaf]),
    };
    let fake = LogProof {
        auditor_signature: ed25519_dalek::Signer::sign(
            &fake_auditor,
            &bkv_transparency::membership::auditor_record_message(
                "dev",
                &bkv_transparency::membership::record_digest(&record),
            ),
        )
        .to_bytes()
        .to_vec(),
        leaf_index: 0,
        checkpoint: cp.sign("bkv-auditor", &fake_auditor).unwrap(),
        inclusion_proof: vec![],
    };
    // The genuine proof for another index does not prove this record either.
    let mut wrong_index = proof.clone();
    wrong_index.leaf_index = 0;
    for bad in [fake, wrong_index] {
        let signed = fleet_admin::sign_command(
            &op.key,
            &before.fleet_id,
            before.next_seq,
            now(),
            AdminAction::AddMember {
                node_id: 5,
                addr: "127.0.0.1:1".into(),
                record: record.clone(),
                proof: bad,
            },
        );
        match execute(leader, signed) {
            AdminResponse::Error(AdminError::NotLogged(_)) => {}
            other => panic!("expected NotLogged, got {other:?}"),
        }
    }
    assert_eq!(membership(&view(&dev).1), membership(&before));

    // The node itself asks the members for the fleet secrets: refused.
    let n5 = t.path().join("n5");
    let mut child = Command::new(bkv_testkit::system::hsm_bin())
        .arg("--data-dir")
        .arg(n5.join("data"))
        .arg("--platform-dir")
        .arg(n5.join("platform"))
        .args(["--listen", "127.0.0.1:0", "--node-id", "5", "--join"])
        .arg(dev.dir.join("fleet.json"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(t.path().join("n5.log")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ready"),
        "a node that was never admitted started"
    );
    let log = std::fs::read_to_string(t.path().join("n5.log")).unwrap();
    assert!(log.contains("waiting to be admitted"), "{log}");
    let refused = (0..3).any(|i| {
        std::fs::read_to_string(dev.dir.join(format!("nodes/{i}/node.log")))
            .unwrap()
            .contains("refused a peer link from an identity key that is not a fleet member")
    });
    assert!(refused, "no member refused the stranger");
    // Its data directory holds no fleet secrets.
    assert!(!std::fs::read_dir(n5.join("data"))
        .unwrap()
        .any(|e| e.unwrap().file_name() == "public.json"));
    assert_eq!(membership(&view(&dev).1), membership(&before));
}

fn restore(dev: &DevUp, user: &str, out: &Path) -> std::process::Output {
    bkv_testkit::system::restore_backup(&dev.config, user, PW, out, &[])
}

fn pkcs11_objects(dev: &DevUp, i: usize) -> String {
    let r = dev.node_record(i);
    let p = &r["platform"];
    let pin = std::fs::read_to_string(p["pin_file"].as_str().unwrap()).unwrap();
    let o = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", p["conf"].as_str().unwrap())
        .args(["--module", p["module"].as_str().unwrap()])
        .args(["--token-label", p["token_label"].as_str().unwrap()])
        .args(["--login", "--pin", pin.trim(), "--list-objects"])
        .output()
        .expect("pkcs11-tool (Debian package opensc) must be installed");
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// On a SoftHSM2 fleet of three: `bkv-admin fleet add-node` with the operator key
/// admits nodes that then serve recoveries (the original nodes removed, the
/// first of the rest paused); every node's sealing and signing keys are
/// sensitive and never extractable; a node whose token is deleted cannot
/// start, with a clear error.
#[test]
fn a_softhsm_fleet_admits_nodes_with_the_operator_key_and_keys_stay_in_the_tokens() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("dev");
    let dev = DevUp::start_on(&root, 3, "softhsm");
    let file = t.path().join("f");
    std::fs::write(&file, b"softhsm fleet").unwrap();
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "hana",
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        PW,
    );
    assert!(o.status.success(), "{}", text(&o));

    dev.fleet_admin(&["add-node"]);
    dev.fleet_admin(&["add-node"]);
    let (_, v) = view(&dev);
    assert_eq!(v.members.iter().filter(|m| m.voter).count(), 5, "{v:?}");
    for i in 0..5 {
        let objects = pkcs11_objects(&dev, i);
        for label in ["bkv-sealing", "bkv-signing"] {
            let private_or_secret = objects
                .split("Object;")
                .filter(|o| o.contains(label) && !o.contains("EC_POINT"))
                .collect::<Vec<_>>();
            assert!(!private_or_secret.is_empty(), "node {i}: {objects}");
            for o in private_or_secret {
                assert!(
                    o.contains("sensitive") && o.contains("never extractable"),
                    "node {i} {label}: {o}"
                );
            }
        }
    }
    // Only the new nodes and node 2 remain; restart the deployment so the
    // frontend knows them, and pause node 2: nodes 3 and 4 serve.
    dev.fleet_admin(&["remove-node", "0"]);
    dev.fleet_admin(&["remove-node", "1"]);
    drop(dev);
    let dev = DevUp::start_on(&root, 3, "softhsm");
    let pid2 = dev.pid_of(2);
    bkv_testkit::system::signal(pid2, rustix::process::Signal::STOP);
    let out = t.path().join("out");
    let o = restore(&dev, "hana", &out);
    bkv_testkit::system::signal(pid2, rustix::process::Signal::CONT);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"softhsm fleet");

    // Node 4's token deleted: it cannot start, and says why.
    dev.kill_node(4);
    let tokens = dev.dir.join("nodes/4/tokens");
    std::fs::remove_dir_all(&tokens).unwrap();
    std::fs::create_dir_all(&tokens).unwrap();
    let o = Command::new(bkv_testkit::system::admin_bin())
        .args(["dev", "restart-node", "--dir"])
        .arg(&dev.dir)
        .arg("4")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    let log = dev.node_log_tail(4);
    assert!(
        log.contains("token \"bkv-node-4\" was not found") && log.contains("cannot be opened"),
        "{log}"
    );
    // The rest of the fleet still serves.
    let o = restore(&dev, "hana", &t.path().join("out2"));
    assert!(o.status.success(), "{}", text(&o));
}
