//! openraft's own storage test suite run against bkv's sealed log store and
//! state machine: log state, vote, append/truncate/purge, apply, snapshots
//! (the conformance checks openraft requires of any storage).

use bkv_hsm_core::{MemoryPlatform, SealedState};
use bkv_hsm_node::replication::BareReplica;
use bkv_hsm_node::replication::LogStore;
use bkv_hsm_node::replication::StateMachine;
use bkv_hsm_node::replication::TypeConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use std::sync::{Arc, Mutex};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine<BareReplica>, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine<BareReplica>), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let platform = MemoryPlatform::shared([7u8; 32]);
        let log =
            LogStore::open(&dir.path().join("raft.redb"), platform.clone()).expect("log store");
        let sm = StateMachine::open(
            dir.path(),
            Arc::new(Mutex::new(BareReplica::new(
                SealedState::new(platform, [7; 32]),
                [5; 32],
                "test-fleet",
            ))),
            Default::default(),
        )
        .expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}
