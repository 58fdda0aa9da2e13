//! The node's own sealed values in redb: fleet secrets and its identity key.
//! (Vault records live in the replicated log and snapshots, see
//! [`crate::replication`].) Every value is sealed with the platform key.

use bkv_hsm_core::seal;
use bkv_hsm_core::{FleetSecrets, SealingKey};
use rand_core::OsRng;
use redb::{Database, TableDefinition};
use std::path::Path;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

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
        tx.commit().map_err(dberr)?;
        Ok(Store { db })
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let meta = tx.open_table(META).map_err(dberr)?;
        Ok(meta.get(name).map_err(dberr)?.map(|v| v.value().to_vec()))
    }

    fn put_meta(&self, name: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut meta = tx.open_table(META).map_err(dberr)?;
            meta.insert(name, sealed).map_err(dberr)?;
        }
        tx.commit().map_err(dberr)
    }

    /// The fleet secrets, if this node has them yet.
    pub fn load_secrets(&self, key: &SealingKey) -> Result<Option<FleetSecrets>, StoreError> {
        match self.get_meta("fleet-secrets")? {
            Some(v) => Ok(Some(FleetSecrets::unseal(key, &v)?)),
            None => Ok(None),
        }
    }

    pub fn save_secrets(&self, key: &SealingKey, secrets: &FleetSecrets) -> Result<(), StoreError> {
        self.put_meta("fleet-secrets", &secrets.seal(key, &mut OsRng))
    }

    /// This node's identity key (X25519 private), created on first use.
    pub fn load_or_create_identity(
        &self,
        key: &SealingKey,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, StoreError> {
        if let Some(v) = self.get_meta("node-identity")? {
            let plain = zeroize::Zeroizing::new(
                seal::unseal(key, "node-identity", b"", &v)
                    .map_err(|e| StoreError::Unseal(e.to_string()))?,
            );
            let mut k = zeroize::Zeroizing::new([0u8; 32]);
            if plain.len() != 32 {
                return Err(StoreError::Malformed("node identity length".into()));
            }
            k.copy_from_slice(&plain);
            return Ok(k);
        }
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut OsRng, k.as_mut());
        self.put_meta(
            "node-identity",
            &seal::seal(key, &mut OsRng, "node-identity", b"", k.as_ref()),
        )?;
        Ok(k)
    }
}
