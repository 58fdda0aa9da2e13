//! The snapshot file earlier releases kept (`DATA/raft-snapshot.sealed`, format in
//! docs/formats.md): one file of sealed pieces, written beside the old one and renamed over it.
//! The state now lives in the record table ([`crate::records`]); a node upgraded from such a
//! release reads its file once, moves the state into the table and removes the file
//! ([`super::state_machine::StateMachine::open`]).
//!
//! A plain file rather than a redb value: a snapshot is written and read whole and in order, so
//! a file costs its size on disk, where a redb database holding it kept the previous copy's
//! pages, rounded every piece up to a power of two and grew by doubling (3.7× the state at 10⁶
//! users). Each piece is sealed with a label naming the snapshot, the piece's place, the piece
//! count and the total length, so the host can neither drop, reorder nor mix pieces.

use super::{PeerNode, ReplicationStoreError};
use bkv_hsm_core::SharedPlatform;
use openraft::{LogId, SnapshotMeta};
use redb::{Database, TableDefinition};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Largest snapshot accepted (from disk or a peer): about ten million users' records; checked
/// before anything is allocated.
pub const MAX_SNAPSHOT: usize = 4 << 30;
/// A snapshot is stored as sealed pieces of this size (the last one shorter).
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Largest sealed header, and the most a sealed piece may exceed its plaintext by.
const MAX_HEADER: usize = 64 * 1024;
/// First bytes of a snapshot file (name and format version).
const MAGIC: &[u8] = b"bkv-raft-snapshot\x00\x01";
const FILE: &str = "raft-snapshot.sealed";
/// Where earlier releases kept the snapshot: one sealed value in a redb database.
const LEGACY_FILE: &str = "raft-snapshot.redb";
const LEGACY_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft-snapshot");

/// A snapshot in the earlier single-value format (`current` in `raft-snapshot.redb`), still
/// read so an upgraded node starts from its last snapshot.
#[derive(Serialize, Deserialize)]
struct LegacySnapshot {
    meta: SnapshotMeta<u64, PeerNode>,
    data: Vec<u8>,
}

/// A stored snapshot: openraft's metadata and the encoded state.
pub type Stored = (SnapshotMeta<u64, PeerNode>, Vec<u8>);

/// The file's first frame: openraft's metadata, the encoded state's length and piece count.
#[derive(Serialize, Deserialize)]
struct Header {
    meta: SnapshotMeta<u64, PeerNode>,
    len: u64,
    chunks: u32,
}

fn chunk_label(h: &Header, i: u32) -> Vec<u8> {
    let mut l = h.meta.snapshot_id.as_bytes().to_vec();
    l.push(0);
    l.extend_from_slice(&i.to_be_bytes());
    l.extend_from_slice(&h.chunks.to_be_bytes());
    l.extend_from_slice(&h.len.to_be_bytes());
    l
}

fn malformed(what: &str) -> ReplicationStoreError {
    ReplicationStoreError::Malformed(what.into())
}

fn io(e: std::io::Error) -> ReplicationStoreError {
    ReplicationStoreError::SnapshotFile(e.to_string())
}

fn chunk_count(len: usize) -> Result<u32, ReplicationStoreError> {
    u32::try_from(len.div_ceil(SNAPSHOT_CHUNK)).map_err(|_| malformed("snapshot size"))
}

/// The snapshot file of one node's data directory.
pub struct SnapshotFile {
    dir: PathBuf,
    platform: SharedPlatform,
    /// Serialises writers (a snapshot being built while one is installed) and remembers the
    /// newest log position stored, so an older snapshot never replaces a newer one.
    written: Mutex<Option<LogId<u64>>>,
    /// Distinguishes the staging files of successive writes.
    writes: std::sync::atomic::AtomicU64,
}

impl SnapshotFile {
    /// The snapshot file of `dir`; staging files a crashed write left behind are removed (the
    /// directory belongs to this process: it holds the data directory's lock).
    /// Where a data directory's snapshot lives.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    pub fn new(dir: &Path, platform: SharedPlatform) -> Self {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let prefix = format!("{FILE}.");
            for e in entries.flatten() {
                if e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        SnapshotFile {
            dir: dir.to_path_buf(),
            platform,
            written: Mutex::new(None),
            writes: Default::default(),
        }
    }

    /// Stores a snapshot: pieces sealed and written to a staging file, synced, renamed over the
    /// previous snapshot, directory synced. A snapshot older than the stored one is skipped.
    pub fn write(
        &self,
        meta: &SnapshotMeta<u64, PeerNode>,
        data: &[u8],
    ) -> Result<(), ReplicationStoreError> {
        if data.len() > MAX_SNAPSHOT {
            return Err(malformed("snapshot larger than MAX_SNAPSHOT"));
        }
        let mut written = self
            .written
            .lock()
            .map_err(|_| ReplicationStoreError::Db("snapshot lock poisoned".into()))?;
        if written.is_some() && meta.last_log_id < *written {
            return Ok(());
        }
        let header = Header {
            meta: meta.clone(),
            len: data.len() as u64,
            chunks: chunk_count(data.len())?,
        };
        let n = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staging = self.dir.join(format!("{FILE}.{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = BufWriter::with_capacity(SNAPSHOT_CHUNK + 4096, create_private(&staging)?);
            f.write_all(MAGIC).map_err(io)?;
            let sealed = self.platform.seal(
                "raft-snapshot-header",
                b"header",
                &bkv_wire::encode(&header),
            )?;
            // Never store what `read` would refuse (a node must be able to restart from it).
            if sealed.len() > MAX_HEADER {
                return Err(malformed("raft snapshot header (metadata too large)"));
            }
            write_frame(&mut f, &sealed)?;
            for (i, piece) in (0u32..).zip(data.chunks(SNAPSHOT_CHUNK)) {
                let sealed =
                    self.platform
                        .seal("raft-snapshot-chunk", &chunk_label(&header, i), piece)?;
                write_frame(&mut f, &sealed)?;
            }
            let f = f.into_inner().map_err(|e| io(e.into_error()))?;
            f.sync_data().map_err(io)?;
            std::fs::rename(&staging, self.dir.join(FILE)).map_err(io)?;
            // From here the new file is the snapshot, whether or not the directory sync below
            // succeeds.
            *written = meta.last_log_id;
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        result?;
        if data.len() > MAX_SNAPSHOT / 2 {
            tracing::warn!(
                bytes = data.len(),
                limit = MAX_SNAPSHOT,
                "the vault state is past half the snapshot size limit: past the limit no \
                 snapshot can be taken; shard the fleet (docs/scaling.md)"
            );
        }
        // The new file takes precedence; the earlier format's database is no longer needed.
        let _ = std::fs::remove_file(self.dir.join(LEGACY_FILE));
        Ok(())
    }

    /// Removes the stored snapshot (either format) once its state moved into the record table.
    pub fn remove(&self) -> Result<(), ReplicationStoreError> {
        for f in [FILE, LEGACY_FILE] {
            match std::fs::remove_file(self.dir.join(f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)
    }

    /// The stored snapshot's metadata and encoded state, every piece unsealed and checked.
    pub fn read(&self) -> Result<Option<Stored>, ReplicationStoreError> {
        let found = match File::open(self.dir.join(FILE)) {
            Ok(f) => Some(self.read_file(f)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.read_legacy()?,
            Err(e) => return Err(io(e)),
        };
        if let (Some((meta, _)), Ok(mut written)) = (&found, self.written.lock()) {
            if meta.last_log_id > *written {
                *written = meta.last_log_id;
            }
        }
        Ok(found)
    }

    fn read_file(&self, f: File) -> Result<Stored, ReplicationStoreError> {
        let mut r = BufReader::with_capacity(SNAPSHOT_CHUNK + 4096, f);
        let mut magic = [0u8; MAGIC.len()];
        r.read_exact(&mut magic)
            .map_err(|_| malformed("raft snapshot file"))?;
        if magic != MAGIC {
            return Err(malformed(
                "raft snapshot file (not a bkv snapshot, or another version)",
            ));
        }
        let plain = self
            .platform
            .unseal(
                "raft-snapshot-header",
                b"header",
                &read_frame(&mut r, MAX_HEADER)?,
            )
            .map_err(|_| ReplicationStoreError::Unseal("raft snapshot header".into()))?;
        let h: Header =
            bkv_wire::decode(&plain, MAX_HEADER).map_err(|_| malformed("raft snapshot header"))?;
        let len = usize::try_from(h.len)
            .ok()
            .filter(|l| *l <= MAX_SNAPSHOT)
            .ok_or_else(|| malformed("raft snapshot length"))?;
        if h.chunks != chunk_count(len)? {
            return Err(malformed("raft snapshot piece count"));
        }
        let mut data = Vec::with_capacity(len);
        for i in 0..h.chunks {
            let sealed = read_frame(&mut r, SNAPSHOT_CHUNK + MAX_HEADER)?;
            let piece = self
                .platform
                .unseal("raft-snapshot-chunk", &chunk_label(&h, i), &sealed)
                .map_err(|_| ReplicationStoreError::Unseal("raft snapshot piece".into()))?;
            if piece.len() != (len - data.len()).min(SNAPSHOT_CHUNK) {
                return Err(malformed("raft snapshot piece length"));
            }
            data.extend_from_slice(&piece);
        }
        if r.read(&mut [0u8; 1]).map_err(io)? != 0 {
            return Err(malformed("raft snapshot file (bytes after the last piece)"));
        }
        Ok((h.meta, data))
    }

    fn read_legacy(&self) -> Result<Option<Stored>, ReplicationStoreError> {
        let path = self.dir.join(LEGACY_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let db_err = |e: redb::Error| ReplicationStoreError::Db(e.to_string());
        let db = Database::open(&path).map_err(|e| db_err(e.into()))?;
        let tx = db.begin_read().map_err(|e| db_err(e.into()))?;
        let t = match tx.open_table(LEGACY_TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e.into())),
        };
        let Some(v) = t.get("current").map_err(|e| db_err(e.into()))? else {
            return Ok(None);
        };
        if v.value().len() > MAX_SNAPSHOT + MAX_HEADER {
            return Err(malformed("raft-snapshot"));
        }
        let plain = self
            .platform
            .unseal("raft-snapshot", b"current", v.value())
            .map_err(|_| ReplicationStoreError::Unseal("raft-snapshot".into()))?;
        let s: LegacySnapshot = bkv_wire::decode(&plain, MAX_SNAPSHOT + MAX_HEADER)
            .map_err(|_| malformed("raft-snapshot"))?;
        Ok(Some((s.meta, s.data)))
    }
}

fn create_private(path: &Path) -> Result<File, ReplicationStoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)
}

fn write_frame(w: &mut impl Write, sealed: &[u8]) -> Result<(), ReplicationStoreError> {
    let len = u32::try_from(sealed.len()).map_err(|_| malformed("snapshot piece"))?;
    w.write_all(&len.to_be_bytes()).map_err(io)?;
    w.write_all(sealed).map_err(io)
}

fn read_frame(r: &mut impl Read, limit: usize) -> Result<Vec<u8>, ReplicationStoreError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|_| malformed("raft snapshot file (truncated)"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(malformed("raft snapshot piece (too large)"));
    }
    let mut v = vec![0u8; len];
    r.read_exact(&mut v)
        .map_err(|_| malformed("raft snapshot file (truncated)"))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bkv_hsm_core::MemoryPlatform;

    fn meta(id: &str, index: u64) -> SnapshotMeta<u64, PeerNode> {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 0), index)),
            last_membership: Default::default(),
            snapshot_id: id.into(),
        }
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn store() -> (tempfile::TempDir, SnapshotFile) {
        let dir = tempfile::tempdir().unwrap();
        let s = SnapshotFile::new(dir.path(), MemoryPlatform::shared([3u8; 32]));
        (dir, s)
    }

    /// The file's frames (magic stripped): header, then pieces.
    fn frames(dir: &Path) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(dir.join(FILE)).unwrap();
        let mut r = &bytes[MAGIC.len()..];
        let mut out = Vec::new();
        while !r.is_empty() {
            out.push(read_frame(&mut r, usize::MAX).unwrap());
        }
        out
    }

    fn put_frames(dir: &Path, frames: &[Vec<u8>]) {
        let mut f = MAGIC.to_vec();
        for fr in frames {
            write_frame(&mut f, fr).unwrap();
        }
        std::fs::write(dir.join(FILE), f).unwrap();
    }

    fn refused(s: &SnapshotFile, why: &str) {
        assert!(
            matches!(
                s.read(),
                Err(ReplicationStoreError::Unseal(_) | ReplicationStoreError::Malformed(_))
            ),
            "{why}"
        );
    }

    #[test]
    fn a_snapshot_of_many_pieces_roundtrips_costs_its_size_and_is_replaced_whole() {
        let (dir, s) = store();
        assert!(s.read().unwrap().is_none());
        let big = data(3 * SNAPSHOT_CHUNK + 12_345, 1);
        s.write(&meta("1-10-1", 10), &big).unwrap();
        let (m, got) = s.read().unwrap().unwrap();
        assert_eq!((m.snapshot_id.as_str(), got == big), ("1-10-1", true));
        // On disk: the data, plus a few dozen bytes of sealing per piece.
        let size = std::fs::metadata(dir.path().join(FILE)).unwrap().len() as usize;
        assert!(size > big.len() && size < big.len() + 4096, "{size}");
        let small = data(10, 2);
        s.write(&meta("1-20-2", 20), &small).unwrap();
        assert_eq!(s.read().unwrap().unwrap().1, small);
        // No staging file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        s.write(&meta("1-30-3", 30), &[]).unwrap();
        assert!(s.read().unwrap().unwrap().1.is_empty());
    }

    #[test]
    fn a_crashed_write_leaves_nothing_and_metadata_too_large_to_read_back_is_not_stored() {
        let (dir, s) = store();
        s.write(&meta("1-1-1", 1), b"kept").unwrap();
        std::fs::write(dir.path().join(format!("{FILE}.123-0")), b"half a snapshot").unwrap();
        let s = SnapshotFile::new(dir.path(), MemoryPlatform::shared([3u8; 32]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let huge_id = "x".repeat(MAX_HEADER + 1);
        assert!(s.write(&meta(&huge_id, 2), b"new").is_err());
        assert_eq!(s.read().unwrap().unwrap().1, b"kept");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let (dir, s) = store();
        s.write(&meta("1-20-2", 20), b"newer").unwrap();
        s.write(&meta("1-10-1", 10), b"older").unwrap();
        assert_eq!(s.read().unwrap().unwrap().1, b"newer");
        // Also after a restart (the position is learnt from the file).
        let s = SnapshotFile::new(dir.path(), MemoryPlatform::shared([3u8; 32]));
        s.read().unwrap();
        s.write(&meta("1-10-1", 10), b"older").unwrap();
        assert_eq!(s.read().unwrap().unwrap().1, b"newer");
    }

    #[test]
    fn pieces_cannot_be_dropped_reordered_or_taken_from_another_snapshot() {
        let (dir, s) = store();
        let (other_dir, other) = store();
        other
            .write(&meta("1-5-1", 5), &data(3 * SNAPSHOT_CHUNK, 9))
            .unwrap();
        s.write(&meta("1-9-2", 9), &data(3 * SNAPSHOT_CHUNK, 4))
            .unwrap();
        let good = frames(dir.path());
        let theirs = frames(other_dir.path());
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        put_frames(dir.path(), &swapped);
        refused(&s, "swapped pieces");
        put_frames(dir.path(), &good[..3]);
        refused(&s, "a missing last piece");
        let mut mixed = good.clone();
        mixed[2] = theirs[2].clone();
        put_frames(dir.path(), &mixed);
        refused(&s, "a piece of another snapshot at the same place");
        let mut extra = good.clone();
        extra.push(good[1].clone());
        put_frames(dir.path(), &extra);
        refused(&s, "a piece too many");
        let mut bytes = std::fs::read(dir.path().join(FILE)).unwrap();
        put_frames(dir.path(), &good);
        bytes.truncate(bytes.len() - 7);
        std::fs::write(dir.path().join(FILE), &bytes).unwrap();
        refused(&s, "a truncated file");
        put_frames(dir.path(), &good);
        assert_eq!(s.read().unwrap().unwrap().1, data(3 * SNAPSHOT_CHUNK, 4));
    }

    #[test]
    fn a_header_claiming_more_than_the_limit_is_refused_before_allocating() {
        let (dir, s) = store();
        let header = Header {
            meta: meta("1-1-1", 1),
            len: MAX_SNAPSHOT as u64 + 1,
            chunks: chunk_count(MAX_SNAPSHOT + 1).unwrap(),
        };
        let sealed = MemoryPlatform::shared([3u8; 32])
            .seal(
                "raft-snapshot-header",
                b"header",
                &bkv_wire::encode(&header),
            )
            .unwrap();
        put_frames(dir.path(), &[sealed]);
        assert!(matches!(s.read(), Err(ReplicationStoreError::Malformed(_))));
        // A frame length past its limit is refused before it is read.
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(dir.path().join(FILE), f).unwrap();
        assert!(matches!(s.read(), Err(ReplicationStoreError::Malformed(_))));
    }

    #[test]
    fn a_snapshot_in_the_earlier_redb_format_is_read_and_then_replaced() {
        let (dir, s) = store();
        let legacy = LegacySnapshot {
            meta: meta("1-7-1", 7),
            data: data(5000, 7),
        };
        let sealed = MemoryPlatform::shared([3u8; 32])
            .seal("raft-snapshot", b"current", &bkv_wire::encode(&legacy))
            .unwrap();
        {
            let db = Database::create(dir.path().join(LEGACY_FILE)).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(LEGACY_TABLE)
                .unwrap()
                .insert("current", sealed.as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let (m, got) = s.read().unwrap().unwrap();
        assert_eq!((m.snapshot_id, got), ("1-7-1".to_string(), data(5000, 7)));
        s.write(&meta("1-8-2", 8), b"new").unwrap();
        assert!(!dir.path().join(LEGACY_FILE).exists());
        assert_eq!(s.read().unwrap().unwrap().1, b"new");
    }
}
