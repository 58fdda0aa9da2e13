//! Rolling disks back never gives guesses back, even with copies of sealed values (issue 27,
//! item 2). The operator copies and replaces any file of a node's data directory; the platform
//! (its counter, its keys) is out of reach: a token with PKCS#11 (SoftHSM2 here), a directory
//! outside the data directory with the software platform. Each transplant is refused at start,
//! naming what is rolled back, on both platforms.

use crate::fleet::{pending, ProposeMutation, RID, STOP};
use bkv_hsm_core::state::{Live, Mutation, Outcome};
use bkv_hsm_core::{SealedState, SharedPlatform};
use bkv_hsm_node::replication::BareReplica;
use bkv_hsm_node::replication::LinkIdentity;
use bkv_hsm_node::replication::PeerNode;
use bkv_hsm_node::replication::{Fleet, FleetError, FleetOptions};
use bkv_hsm_platform::PlatformConfig;
use redb::{ReadableTable, TableDefinition};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft-meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft-log");
const LOG_FILE: &str = "raft-log.redb";
const TABLE_FILE: &str = "vault-records.redb";

/// A one-node fleet on a real platform, restarted at will over data directories the test
/// swaps under it.
struct Node {
    identity: LinkIdentity,
    addr: String,
}

impl Node {
    fn new(platform: SharedPlatform) -> Node {
        Node {
            identity: LinkIdentity::in_process(platform).unwrap(),
            addr: format!("127.0.0.1:{}", bkv_testkit::services::free_port().unwrap()),
        }
    }

    async fn start(&self, dir: &Path) -> Result<(Fleet, Arc<Mutex<BareReplica>>), FleetError> {
        std::fs::create_dir_all(dir).unwrap();
        let state = Arc::new(Mutex::new(BareReplica::new(
            SealedState::new(self.identity.in_process_platform().unwrap(), [7; 32]),
            [5; 32],
            "test-fleet",
        )));
        let mut listener = tokio::net::TcpListener::bind(&self.addr).await;
        for _ in 0..50 {
            if listener.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            listener = tokio::net::TcpListener::bind(&self.addr).await;
        }
        let fleet = Fleet::start(
            FleetOptions {
                id: 0,
                dir: dir.to_owned(),
                platform: self.identity.in_process_platform().unwrap(),
                identity: self.identity.clone(),
                bootstrap: BTreeSet::from([self.identity.public()]),
                snapshot_log_min: 1 << 30,
            },
            listener.unwrap(),
            state.clone(),
        )
        .await?;
        fleet
            .initialize(
                [(
                    0,
                    PeerNode {
                        addr: self.addr.clone(),
                        identity: self.identity.public(),
                    },
                )]
                .into(),
            )
            .await?;
        Ok((fleet, state))
    }
}

fn attempts(state: &Arc<Mutex<BareReplica>>) -> Option<u32> {
    match state.lock().unwrap().state.record(&RID).ok()??.live? {
        Live::Active { attempts, .. } => Some(attempts),
        _ => None,
    }
}

async fn guess(f: &Fleet, generation: u64) {
    let o = f
        .propose_mutation(Mutation::CountGuess {
            record_id: RID,
            generation,
        })
        .await
        .unwrap();
    assert!(matches!(o, Outcome::Counted { .. }), "{o:?}");
}

/// Stops the node; it returns once its files are closed (the tests then copy or replace them).
async fn stop(f: Fleet, state: Arc<Mutex<BareReplica>>) {
    drop(state);
    f.stop(STOP).await.unwrap();
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in [LOG_FILE, TABLE_FILE] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

/// A data directory of `log` from one copy and `table` from another.
fn mix(root: &Path, name: &str, log: &Path, table: &Path) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(log.join(LOG_FILE), d.join(LOG_FILE)).unwrap();
    std::fs::copy(table.join(TABLE_FILE), d.join(TABLE_FILE)).unwrap();
    d
}

/// Runs every transplant against one platform.
async fn transplants_are_refused(platform: SharedPlatform) {
    let t = tempfile::tempdir().unwrap();
    let live = t.path().join("live");
    let node = Node::new(platform);
    // Two guesses counted, then a copy (the node stopped, as an operator copying files would).
    let (f, state) = node.start(&live).await.unwrap();
    let stored = f
        .propose_mutation(Mutation::StorePending {
            record_id: RID,
            pending: pending(8, 8),
        })
        .await
        .unwrap();
    assert_eq!(stored, Outcome::Stored);
    let Outcome::Activated { generation } = f
        .propose_mutation(Mutation::Activate {
            record_id: RID,
            confirm_hash: [3; 32],
        })
        .await
        .unwrap()
    else {
        panic!("not activated")
    };
    for _ in 0..2 {
        guess(&f, generation).await;
    }
    stop(f, state).await;
    let old = t.path().join("old");
    copy(&live, &old);
    // Three more, each leaving the record table time to reach the disk.
    let (f, state) = node.start(&live).await.unwrap();
    for _ in 0..3 {
        guess(&f, generation).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(attempts(&state), Some(5));
    stop(f, state).await;
    let new = t.path().join("new");
    copy(&live, &new);

    async fn refused(r: Result<(Fleet, Arc<Mutex<BareReplica>>), FleetError>, part: &str) {
        match r {
            Ok((f, s)) => {
                let a = attempts(&s);
                stop(f, s).await;
                panic!("a rolled-back data directory started ({part}); attempts {a:?}")
            }
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains("rollback detected"), "{m}");
                assert!(m.contains(part), "expected the {part} named: {m}");
            }
        }
    }

    // 1. The newest value sealed with the counter copied into the older log (with the older
    //    table): `raft-state` (the epoch of an earlier release, `raft-epoch`, was a bare number
    //    that this alone used to pass).
    let d = mix(t.path(), "transplant", &old, &old);
    let newest = {
        let db = redb::Database::open(new.join(LOG_FILE)).unwrap();
        let tx = db.begin_read().unwrap();
        let meta = tx.open_table(META).unwrap();
        let keys: Vec<(String, Vec<u8>)> = meta
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value().to_owned(), v.value().to_vec())
            })
            .filter(|(k, _)| k == "raft-state" || k == "raft-epoch")
            .collect();
        keys
    };
    {
        let db = redb::Database::open(d.join(LOG_FILE)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx.open_table(META).unwrap();
            for (k, v) in &newest {
                meta.insert(k.as_str(), v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    refused(node.start(&d).await, "raft log").await;

    // 2. The older record table with the current log.
    refused(
        node.start(&mix(t.path(), "old-table", &new, &old)).await,
        "record table",
    )
    .await;

    // 3. The older log with the current table: its state is behind the counter.
    refused(
        node.start(&mix(t.path(), "old-log", &old, &new)).await,
        "log epoch",
    )
    .await;

    // 4. The current log with its last entries deleted.
    let d = mix(t.path(), "truncated", &new, &new);
    {
        let db = redb::Database::open(d.join(LOG_FILE)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut log = tx.open_table(LOG).unwrap();
            let last = log.last().unwrap().map(|(k, _)| k.value()).unwrap();
            for i in last - 1..=last {
                log.remove(i).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    refused(node.start(&d).await, "raft log").await;

    // 5. The current log with an entry in the middle deleted.
    let d = mix(t.path(), "gap", &new, &new);
    {
        let db = redb::Database::open(d.join(LOG_FILE)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut log = tx.open_table(LOG).unwrap();
            let last = log.last().unwrap().map(|(k, _)| k.value()).unwrap();
            log.remove(last - 2).unwrap();
        }
        tx.commit().unwrap();
    }
    refused(node.start(&d).await, "raft log").await;

    // The newest copy, put back as it was, starts with every guess counted.
    let (f, state) = node.start(&new).await.unwrap();
    for _ in 0..50 {
        if attempts(&state) == Some(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(attempts(&state), Some(5));
    guess(&f, generation).await;
    assert_eq!(attempts(&state), Some(6));
    stop(f, state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transplanted_sealed_values_are_refused_on_the_software_platform() {
    let t = tempfile::tempdir().unwrap();
    let platform = bkv_hsm_platform::open(
        &PlatformConfig::Software {
            dir: t.path().join("platform"),
        },
        true,
    )
    .unwrap();
    transplants_are_refused(platform).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transplanted_sealed_values_are_refused_on_softhsm2() {
    let t = tempfile::tempdir().unwrap();
    let token =
        bkv_hsm_platform::softhsm::init_token(&t.path().join("token"), "bkv", "1234", "5678")
            .expect("softhsm2-util (Debian package softhsm2) must be installed");
    // SoftHSM reads its configuration from this variable at C_Initialize (one per process).
    std::env::set_var("SOFTHSM2_CONF", &token.conf);
    let platform = bkv_hsm_platform::open(&PlatformConfig::Pkcs11(token.config), true).unwrap();
    transplants_are_refused(platform).await;
}
