use super::*;
use bkv_hsm_core::MemoryPlatform;
use openraft::CommittedLeaderId;

async fn purged(log: &mut LogStore) -> Option<u64> {
    log.get_log_state()
        .await
        .ok()
        .and_then(|s| s.last_purged_log_id)
        .map(|l| l.index)
}

/// A purge waits for the record table to be durable through its index (a snapshot being
/// installed), then purges exactly what was asked.
#[tokio::test]
async fn a_purge_waits_for_the_record_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let platform = MemoryPlatform::shared([7u8; 32]);
    let mut log = LogStore::open(&dir.path().join("raft.redb"), platform).expect("log");
    let (durable, rx) = tokio::sync::watch::channel(3u64);
    log.set_records_durable(rx);
    let mut purging = log.clone();
    let id = LogId::new(CommittedLeaderId::new(1, 0), 5);
    let mut purge = tokio::spawn(async move { purging.purge(id).await });
    durable.send_replace(4);
    // Bounds a negative only: with the tie the purge cannot finish however long this is.
    let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut purge).await;
    assert!(early.is_err(), "purged while the table was behind");
    assert_eq!(purged(&mut log).await, None);
    durable.send_replace(5);
    purge.await.expect("join").expect("purge");
    assert_eq!(purged(&mut log).await, Some(5));
}

/// Without the tie (openraft's storage suite, tools) a purge does not wait.
#[tokio::test]
async fn an_untied_log_purges_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let platform = MemoryPlatform::shared([7u8; 32]);
    let mut log = LogStore::open(&dir.path().join("raft.redb"), platform).expect("log");
    log.purge(LogId::new(CommittedLeaderId::new(1, 0), 2))
        .await
        .expect("purge");
    assert_eq!(purged(&mut log).await, Some(2));
}

/// A log of an earlier release (a bare sealed `raft-epoch` number and values of their own, or
/// raft state version 2), whose entries carried plain mutations, is refused with a clear error
/// that says how to upgrade.
#[tokio::test]
async fn an_earlier_releases_log_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raft.redb");
    let platform = MemoryPlatform::shared([7u8; 32]);
    let leader = CommittedLeaderId::new(1, 0);
    {
        let db = Database::create(&path).expect("db");
        let tx = db.begin_write().expect("tx");
        {
            let mut meta = tx.open_table(META).expect("meta");
            let mut put = |name: &'static str, sealed: Vec<u8>| {
                meta.insert(name, sealed.as_slice()).expect("insert");
            };
            put(
                "raft-epoch",
                seal_value(&platform, b"raft-epoch", &3u64).expect("seal"),
            );
            let vote = Vote::new(1, 0);
            put(
                "raft-vote",
                seal_value(&platform, b"raft-vote", &vote).expect("seal"),
            );
        }
        {
            let mut log = tx.open_table(LOG).expect("log");
            for i in 1..=3u64 {
                let e = Entry::<TypeConfig> {
                    log_id: LogId::new(leader, i),
                    payload: openraft::EntryPayload::Blank,
                };
                let sealed = seal_value(&platform, &i.to_be_bytes(), &e).expect("seal");
                log.insert(i, sealed.as_slice()).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    platform
        .counter_advance_to(bkv_hsm_core::Counter::Raft, 3)
        .expect("counter");
    // Its entries carried plain mutations the host could forge: this release does not continue
    // that log (a fleet upgrades by rotation), and says so.
    assert!(matches!(
        LogStore::open(&path, platform.clone()),
        Err(ReplicationStoreError::EarlierRelease(_))
    ));
    // Nor the release before (raft state version 2).
    let v2 = dir.path().join("v2.redb");
    {
        let db = Database::create(&v2).expect("db");
        let tx = db.begin_write().expect("tx");
        {
            let mut meta = tx.open_table(META).expect("meta");
            let sealed =
                seal_value(&platform, STATE_LABEL_V2, &RaftState::default()).expect("seal");
            meta.insert(STATE_KEY, sealed.as_slice()).expect("insert");
        }
        tx.commit().expect("commit");
    }
    let e = LogStore::open(&v2, platform).err().expect("refused");
    assert!(matches!(e, ReplicationStoreError::EarlierRelease(_)), "{e}");
    assert!(e.to_string().contains("rotate"), "{e}");
}

/// An append to a follower carries at most about `APPEND_BYTES` of log (at least one entry),
/// however far behind the follower is; a short range comes whole.
#[tokio::test]
async fn a_far_behind_follower_gets_the_log_in_bounded_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let platform = MemoryPlatform::shared([7u8; 32]);
    let mut log = LogStore::open(&dir.path().join("raft.redb"), platform).expect("log");
    let entry = |i| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), i),
        payload: openraft::EntryPayload::Blank,
    };
    let size = bkv_wire::encode(&entry(1)).len();
    {
        let tx = log.inner.db.begin_write().expect("tx");
        {
            let mut t = tx.open_table(LOG).expect("table");
            for i in 1..=50u64 {
                t.insert(i, bkv_wire::encode(&entry(i)).as_slice())
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let (from, to) = (Bound::Included(5), Bound::Excluded(45));
    let ids = |es: Vec<Entry<TypeConfig>>| es.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
    let three = LogStore::read_at_most(&log.inner, from, to, 3 * size).expect("read");
    assert_eq!(ids(three), vec![5, 6, 7]);
    let one = LogStore::read_at_most(&log.inner, from, to, 0).expect("read");
    assert_eq!(ids(one), vec![5]);
    let whole = log.limited_get_log_entries(5, 45).await.expect("read");
    assert_eq!(ids(whole), (5..45).collect::<Vec<_>>());
    assert!(40 * size < APPEND_BYTES);
}
