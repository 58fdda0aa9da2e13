//! The node's own sealed values in redb: fleet secrets and its identity key.
//! (Vault records live in the replicated log and snapshots, see
//! [`crate::replication`].) Every value is sealed by the platform; this
//! module only ever holds the sealed bytes.

use bkv_hsm_core::{CoreError, FleetSecrets, NodeIdentity, Platform};
use redb::{Database, TableDefinition};
use std::path::Path;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("node database: {0}")]
    Db(String),
    #[error(
        "stored {what} could not be opened with this node's platform ({source}): \
         the data directory was sealed by another token or key, or was tampered with"
    )]
    Unseal {
        what: &'static str,
        source: CoreError,
    },
    #[error(transparent)]
    Core(#[from] CoreError),
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

    /// Whether this data directory already holds a node identity (so its
    /// platform keys must exist: they sealed it).
    pub fn has_identity(&self) -> Result<bool, StoreError> {
        Ok(self.get_meta("node-identity")?.is_some())
    }

    /// The fleet secrets, if this node has them yet.
    pub fn load_secrets(&self, p: &dyn Platform) -> Result<Option<FleetSecrets>, StoreError> {
        match self.get_meta("fleet-secrets")? {
            Some(v) => Ok(Some(FleetSecrets::unseal(p, &v).map_err(|source| {
                StoreError::Unseal {
                    what: "fleet secrets",
                    source,
                }
            })?)),
            None => Ok(None),
        }
    }

    pub fn save_secrets(&self, p: &dyn Platform, secrets: &FleetSecrets) -> Result<(), StoreError> {
        self.put_meta("fleet-secrets", &secrets.seal(p)?)
    }

    /// This node's identity key, created on first use.
    pub fn load_or_create_identity(&self, p: &dyn Platform) -> Result<NodeIdentity, StoreError> {
        if let Some(v) = self.get_meta("node-identity")? {
            return NodeIdentity::unseal(p, &v).map_err(|source| StoreError::Unseal {
                what: "node identity",
                source,
            });
        }
        let id = NodeIdentity::generate(p)?;
        self.put_meta("node-identity", &id.seal(p)?)?;
        Ok(id)
    }
}
