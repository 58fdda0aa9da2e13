//! The node's own sealed values in redb: fleet secrets and its identity key.
//! (Vault records live in the replicated log and snapshots, see
//! [`crate::replication`].) Every value is sealed by the core service's
//! platform; this module only ever holds the sealed bytes.

use redb::{Database, TableDefinition};
use std::path::Path;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A failure of the node's database (`vault.redb`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (its message).
    #[error("node database: {0}")]
    Db(String),
}

fn dberr<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The node's `vault.redb`: its own sealed values (table `meta`).
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens or creates the database at `path`.
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

    /// Whether this data directory already holds a node identity (so its
    /// platform keys must exist: they sealed it).
    pub fn has_identity(&self) -> Result<bool, StoreError> {
        Ok(self.get_meta("node-identity")?.is_some())
    }

    /// The fleet secrets as the platform sealed them, if this node has them yet.
    pub fn sealed_secrets(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_meta("fleet-secrets")
    }

    /// Stores the fleet secrets as the platform sealed them, replacing any.
    pub fn save_sealed_secrets(&self, sealed: &[u8]) -> Result<(), StoreError> {
        self.put_meta("fleet-secrets", sealed)
    }

    /// This node's identity key as the platform sealed it, if it has one yet.
    pub fn sealed_identity(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_meta("node-identity")
    }

    /// Stores this node's identity key as the platform sealed it, replacing any.
    pub fn save_sealed_identity(&self, sealed: &[u8]) -> Result<(), StoreError> {
        self.put_meta("node-identity", sealed)
    }
}
