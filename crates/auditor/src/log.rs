//! The append-only log store: one RFC 9162 Merkle log per namespace in redb, its entries
//! (bundles, membership records, deployment evidence) and signed checkpoints.

use crate::*;
use bkv_transparency::bundle::{self, Bundle};
use bkv_transparency::membership::{self};
use bkv_transparency::merkle::{self, Hash};
use ed25519_dalek::{SigningKey, VerifyingKey};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path as FsPath;
use std::sync::Mutex;

pub(crate) const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
pub(crate) const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
pub(crate) const MAX_ENTRY: usize = 512 * 1024;
/// Request bodies: evidence files (up to 256 KiB, base64) are the largest.
pub(crate) const MAX_BODY: usize = 384 * 1024;

/// A log entry as stored (`bkv_wire::encode`d).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum StoredEntry {
    Bundle {
        bundle: Vec<u8>,
        auditor_signature: Vec<u8>,
        /// The operator's counter-signature, added after the append.
        operator_signature: Option<Vec<u8>>,
    },
    Membership {
        record: Vec<u8>,
        auditor_signature: Vec<u8>,
        /// The operator's signature over the append request.
        operator_signature: Vec<u8>,
    },
    Evidence {
        /// The evidence file's exact bytes.
        evidence: Vec<u8>,
        auditor_signature: Vec<u8>,
        /// The operator's signature over the append request.
        operator_signature: Vec<u8>,
    },
    Web {
        /// The web build's manifest, exact bytes.
        manifest: Vec<u8>,
        auditor_signature: Vec<u8>,
        /// The operator's signature over the append request.
        operator_signature: Vec<u8>,
    },
}

impl StoredEntry {
    /// The entry's Merkle leaf, its digest, and its epoch if a bundle.
    pub(crate) fn leaf(&self) -> Result<(Hash, Hash, Option<u64>), String> {
        match self {
            StoredEntry::Bundle { bundle: bytes, .. } => {
                let b = Bundle::decode(bytes).map_err(|e| e.to_string())?;
                let d = bundle::digest(bytes);
                Ok((
                    merkle::leaf_hash(&bundle::leaf_data(b.epoch, &d)),
                    d,
                    Some(b.epoch),
                ))
            }
            StoredEntry::Membership { record, .. } => {
                let d = membership::record_digest(record);
                Ok((
                    merkle::leaf_hash(&membership::record_leaf_data(&d)),
                    d,
                    None,
                ))
            }
            StoredEntry::Evidence { evidence, .. } => {
                let d = bkv_transparency::evidence::digest(evidence);
                Ok((
                    merkle::leaf_hash(&bkv_transparency::evidence::leaf_data(&d)),
                    d,
                    None,
                ))
            }
            StoredEntry::Web { manifest, .. } => {
                let d = bkv_transparency::web::digest(manifest);
                Ok((
                    merkle::leaf_hash(&bkv_transparency::web::leaf_data(&d)),
                    d,
                    None,
                ))
            }
        }
    }
}

pub(crate) struct NsLog {
    pub(crate) operator: VerifyingKey,
    pub(crate) leaves: Vec<Hash>,
    /// (epoch, index) of every bundle, in log order (epochs increase).
    pub(crate) bundles: Vec<(u64, u64)>,
    pub(crate) digests: HashSet<Hash>,
}

impl NsLog {
    pub(crate) fn push(&mut self, leaf: Hash, digest: Hash, epoch: Option<u64>) {
        if let Some(e) = epoch {
            self.bundles.push((e, self.leaves.len() as u64));
        }
        self.leaves.push(leaf);
        self.digests.insert(digest);
    }
}

/// The auditor's logs: one append-only Merkle log per namespace, and its signing key.
pub struct Auditor {
    pub(crate) db: Database,
    pub(crate) key: SigningKey,
    pub(crate) name: String,
    pub(crate) logs: Mutex<HashMap<String, NsLog>>,
}

impl Auditor {
    /// Opens the log database; registers `namespaces` (name, operator key)
    /// that are new, refuses a changed operator key.
    pub fn open(
        path: &FsPath,
        key: SigningKey,
        name: &str,
        namespaces: &[(String, VerifyingKey)],
    ) -> Result<Self, AuditorError> {
        let db = Database::create(path).map_err(dberr)?;
        let tx = db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(NAMESPACES).map_err(dberr)?;
            tx.open_table(ENTRIES).map_err(dberr)?;
            for (ns, k) in namespaces {
                if !valid_namespace(ns) {
                    return Err(AuditorError::BadNamespace(ns.clone()));
                }
                let existing = t
                    .get(ns.as_str())
                    .map_err(dberr)?
                    .map(|v| v.value().to_vec());
                match existing {
                    Some(v) if v != k.as_bytes() => {
                        return Err(AuditorError::OperatorMismatch(ns.clone()))
                    }
                    Some(_) => {}
                    None => {
                        t.insert(ns.as_str(), k.as_bytes().as_slice())
                            .map_err(dberr)?;
                    }
                }
            }
        }
        tx.commit().map_err(dberr)?;
        let mut logs = HashMap::new();
        let tx = db.begin_read().map_err(dberr)?;
        let nst = tx.open_table(NAMESPACES).map_err(dberr)?;
        let et = tx.open_table(ENTRIES).map_err(dberr)?;
        for row in nst.iter().map_err(dberr)? {
            let (ns, k) = row.map_err(dberr)?;
            let ns = ns.value().to_owned();
            let kb: [u8; 32] = k
                .value()
                .try_into()
                .map_err(|_| AuditorError::Corrupt("operator key".into()))?;
            let operator = VerifyingKey::from_bytes(&kb)
                .map_err(|_| AuditorError::Corrupt("operator key".into()))?;
            let mut log = NsLog {
                operator,
                leaves: Vec::new(),
                bundles: Vec::new(),
                digests: HashSet::new(),
            };
            for row in et
                .range((ns.as_str(), 0u64)..=(ns.as_str(), u64::MAX))
                .map_err(dberr)?
            {
                let (k, v) = row.map_err(dberr)?;
                let (_, idx) = k.value();
                if idx != log.leaves.len() as u64 {
                    return Err(AuditorError::Corrupt(format!("gap at {ns}/{idx}")));
                }
                let e: StoredEntry = bkv_wire::decode(v.value(), MAX_ENTRY)
                    .map_err(|e| AuditorError::Corrupt(e.to_string()))?;
                let (leaf, d, epoch) = e.leaf().map_err(AuditorError::Corrupt)?;
                log.push(leaf, d, epoch);
            }
            logs.insert(ns, log);
        }
        drop(et);
        drop(nst);
        drop(tx);
        Ok(Auditor {
            db,
            key,
            name: name.to_owned(),
            logs: Mutex::new(logs),
        })
    }

    /// The auditor's Ed25519 public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Its name in signed notes.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The checkpoint origin of namespace `ns`'s log.
    pub fn origin(&self, ns: &str) -> String {
        format!("{}/{ns}", self.name)
    }

    /// Stores `entry` as the next index of `ns` in one fsynced transaction
    /// (durable before acknowledged), then extends the in-memory tree.
    pub(crate) fn store_new(
        &self,
        ns: &str,
        log: &mut NsLog,
        entry: StoredEntry,
    ) -> Result<u64, ApiError> {
        let (leaf, d, epoch) = entry.leaf().map_err(internal)?;
        let index = log.leaves.len() as u64;
        let tx = self.db.begin_write().map_err(internal)?;
        {
            let mut t = tx.open_table(ENTRIES).map_err(internal)?;
            t.insert((ns, index), bkv_wire::encode(&entry).as_slice())
                .map_err(internal)?;
        }
        tx.commit().map_err(internal)?;
        log.push(leaf, d, epoch);
        metrics::gauge!("bkv_auditor_log_size", "namespace" => ns.to_owned())
            .set(log.leaves.len() as f64);
        Ok(index)
    }

    /// Whether the log can take an entry now: an empty write transaction commits (and syncs).
    pub fn check_writable(&self) -> Result<(), AuditorError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        tx.commit().map_err(dberr)
    }

    pub(crate) fn read_entry(
        &self,
        ns: &str,
        index: u64,
    ) -> Result<Option<StoredEntry>, AuditorError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(ENTRIES).map_err(dberr)?;
        match t.get((ns, index)).map_err(dberr)? {
            Some(v) => Ok(Some(
                bkv_wire::decode(v.value(), MAX_ENTRY)
                    .map_err(|e| AuditorError::Corrupt(e.to_string()))?,
            )),
            None => Ok(None),
        }
    }
}
