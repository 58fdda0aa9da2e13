//! Durable, sealed node storage in redb. Every value is sealed with the
//! platform key and bound to its key, so the host can neither read nor swap
//! records. Each commit is an fsynced redb transaction.

use bkv_hsm_core::seal;
use bkv_hsm_core::state::{Record, RecordId, State};
use bkv_hsm_core::{FleetSecrets, SealingKey};
use rand_core::OsRng;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const MAX_RECORD_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(String),
    #[error("stored value failed to unseal ({0}): wrong platform key or tampered disk")]
    Unseal(String),
    #[error("stored value is malformed: {0}")]
    Malformed(String),
    #[error(transparent)]
    Core(#[from] bkv_hsm_core::CoreError),
}

fn dberr<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(dberr)?;
        let tx = db.begin_write().map_err(dberr)?;
        tx.open_table(META).map_err(dberr)?;
        tx.open_table(RECORDS).map_err(dberr)?;
        tx.commit().map_err(dberr)?;
        Ok(Store { db })
    }

    /// Loads the sealed fleet secrets, or generates and stores new ones.
    pub fn load_or_create_secrets(&self, key: &SealingKey) -> Result<FleetSecrets, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let meta = tx.open_table(META).map_err(dberr)?;
        if let Some(v) = meta.get("fleet-secrets").map_err(dberr)? {
            return Ok(FleetSecrets::unseal(key, v.value())?);
        }
        drop(meta);
        drop(tx);
        let secrets = FleetSecrets::generate(&mut OsRng);
        let sealed = secrets.seal(key, &mut OsRng);
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut meta = tx.open_table(META).map_err(dberr)?;
            meta.insert("fleet-secrets", sealed.as_slice())
                .map_err(dberr)?;
        }
        tx.commit().map_err(dberr)?;
        Ok(secrets)
    }

    pub fn load_state(&self, key: &SealingKey) -> Result<State, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let meta = tx.open_table(META).map_err(dberr)?;
        let mut state = State::default();
        if let Some(v) = meta.get("next-generation").map_err(dberr)? {
            let plain = seal::unseal(key, "meta", b"next-generation", v.value())
                .map_err(|e| StoreError::Unseal(e.to_string()))?;
            state.next_generation = bkv_wire::decode(&plain, 64)
                .map_err(|e| StoreError::Malformed(format!("next-generation: {e}")))?;
        }
        let records = tx.open_table(RECORDS).map_err(dberr)?;
        for entry in records.iter().map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            let id: RecordId = k
                .value()
                .try_into()
                .map_err(|_| StoreError::Malformed("record key length".into()))?;
            let plain = seal::unseal(key, "record", &id, v.value())
                .map_err(|e| StoreError::Unseal(e.to_string()))?;
            let rec: Record = bkv_wire::decode(&plain, MAX_RECORD_BYTES)
                .map_err(|e| StoreError::Malformed(format!("record: {e}")))?;
            state.records.insert(id, rec);
        }
        Ok(state)
    }

    /// Durably writes the current value of one record (or its absence) and the
    /// generation counter, in one fsynced transaction.
    pub fn persist(
        &self,
        key: &SealingKey,
        id: &RecordId,
        state: &State,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut records = tx.open_table(RECORDS).map_err(dberr)?;
            match state.records.get(id) {
                Some(rec) => {
                    let plain = zeroize::Zeroizing::new(bkv_wire::encode(rec));
                    let sealed = seal::seal(key, &mut OsRng, "record", id, &plain);
                    records
                        .insert(id.as_slice(), sealed.as_slice())
                        .map_err(dberr)?;
                }
                None => {
                    records.remove(id.as_slice()).map_err(dberr)?;
                }
            }
            let mut meta = tx.open_table(META).map_err(dberr)?;
            let gen = bkv_wire::encode(&state.next_generation);
            let sealed = seal::seal(key, &mut OsRng, "meta", b"next-generation", &gen);
            meta.insert("next-generation", sealed.as_slice())
                .map_err(dberr)?;
        }
        tx.commit().map_err(dberr)?;
        Ok(())
    }
}
