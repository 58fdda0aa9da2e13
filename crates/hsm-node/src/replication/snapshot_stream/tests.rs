use super::*;
use bkv_hsm_core::sealed_state::{Installer, SealedState};
use bkv_hsm_core::snapshot::SnapshotKey;
use bkv_hsm_core::{EntryKey, MemoryPlatform, SharedPlatform};
use std::sync::{Arc, Mutex};

const FLEET: &str = "snapshot-tests";

fn keys() -> (EntryKey, SnapshotKey) {
    (
        EntryKey::from_bytes([5; 32], FLEET),
        SnapshotKey::from_bytes([5; 32], FLEET),
    )
}

/// Pieces arrive out of order only as a resend of an earlier one: the spool takes the
/// rewind and reads back exactly the stream.
#[test]
fn a_spool_reads_back_what_was_written_through_rewinds() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::create(dir.path()).unwrap();
    let data: Vec<u8> = (0..(3 * SPOOL_PIECE + 12345)).map(|i| i as u8).collect();
    let chunk = 700_001;
    let mut off = 0;
    while off < data.len() {
        let end = (off + chunk).min(data.len());
        s.seek(off as u64).unwrap();
        s.write(&data[off..end]).unwrap();
        // Every second piece is sent again (its answer was lost).
        if (off / chunk) % 2 == 1 {
            s.seek(off as u64).unwrap();
            s.write(&data[off..end]).unwrap();
        }
        off = end;
    }
    // A piece past what was received is refused.
    assert!(s.seek(data.len() as u64 + 1).is_err());
    let path = s.path.clone();
    let mut back = Vec::new();
    s.into_reader().unwrap().read_to_end(&mut back).unwrap();
    assert!(back == data);
    assert!(!path.exists(), "the spool is removed once read");
}

/// A sending core's state over a table of `n` records, applied through entries (so the state's
/// chain counts them), and its frame source.
struct Source {
    table: Arc<crate::records::RecordTable>,
    state: Arc<Mutex<SealedState>>,
}

struct SourceFrames(Arc<Mutex<SealedState>>);

impl FrameSource for SourceFrames {
    fn frame(&self, nonce: [u8; 32], b: u16, sealed: &[u8]) -> Result<Vec<u8>, String> {
        self.0
            .lock()
            .unwrap()
            .snapshot_frame(&keys().1, nonce, b, sealed)
            .map_err(|e| e.to_string())
    }
}

/// Applies `m` to `s` as the next entry of a test proposer.
fn apply(s: &mut SealedState, m: &bkv_hsm_core::Mutation) {
    let seq = s.fleet().entries + 1;
    let e = keys().0.seal([1; 32], seq, &mut rand::rngs::OsRng, m);
    let m = s.admit_entry(&keys().0, &e, |_, _| true).unwrap();
    s.apply(&m).unwrap();
}

/// A registration of `user` waiting for its confirmation.
fn store_pending(user: &str) -> bkv_hsm_core::Mutation {
    use bkv_hsm_core::state::{Credential, Mutation, Pending};
    Mutation::StorePending {
        record_id: bkv_wire::record_id(user),
        pending: Pending {
            credential: Credential {
                opaque_record: vec![1; 192],
                wrapped_key: vec![2; 80],
                guess_limit: 10,
                confirm_hash: [3; 32],
            },
            replaces: None,
        },
    }
}

/// Writes what `s` changed and its summary to `table`, durably.
fn persist(s: &mut SealedState, table: &crate::records::RecordTable) {
    let summary = s.seal_summary(b"position").unwrap();
    table.write(&s.take_writes(), Some(&summary), true).unwrap();
}

fn source(dir: &Path, p: &SharedPlatform, n: u32) -> Source {
    let table =
        Arc::new(crate::records::RecordTable::open(&dir.join("records.redb"), 4 << 20).unwrap());
    let mut s = SealedState::new(p.clone(), [7; 32]);
    s.restore(
        Box::new(crate::records::TableHost(table.clone(), Default::default())),
        None,
    )
    .unwrap();
    for i in 0..n {
        apply(&mut s, &store_pending(&format!("user-{i}")));
    }
    persist(&mut s, &table);
    Source {
        table,
        state: Arc::new(Mutex::new(s)),
    }
}

impl Source {
    fn sender(&self) -> Sender {
        let view = self.table.view().unwrap();
        let summary = view.summary().unwrap().unwrap();
        let (header, position) = self
            .state
            .lock()
            .unwrap()
            .snapshot_header(&keys().1, [8; 32], &summary)
            .unwrap();
        assert_eq!(position, b"position");
        Sender::new(
            Arc::new(SourceFrames(self.state.clone())),
            view,
            &header,
            [8; 32],
        )
        .unwrap()
    }
}

/// A receiving node: an empty state over its own table, sealing with another platform.
struct Target {
    table: Arc<crate::records::RecordTable>,
    state: SealedState,
}

fn target(dir: &Path) -> Target {
    let table = Arc::new(crate::records::RecordTable::open(&dir.join("t.redb"), 4 << 20).unwrap());
    let mut state = SealedState::new(MemoryPlatform::shared([4; 32]), [7; 32]);
    state
        .restore(
            Box::new(crate::records::TableHost(table.clone(), Default::default())),
            None,
        )
        .unwrap();
    Target { table, state }
}

impl Target {
    /// Installs the stream in `bytes` as a node does, or says why not (nothing changes then).
    fn install(&mut self, bytes: &[u8]) -> Result<usize, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(dir.path()).unwrap();
        for piece in bytes.chunks(SPOOL_PIECE / 3 + 7) {
            spool.write(piece).unwrap();
        }
        let (header, mut frames) =
            StreamReader::open(spool.into_reader().unwrap()).map_err(|e| e.to_string())?;
        let mut installer: Installer = self
            .state
            .open_snapshot(&keys().1, &header)
            .map_err(|e| e.to_string())?;
        let replacement = self.table.begin_replace().unwrap();
        let mut n = 0;
        while let Frame::Bucket(b, frame) = frames.next_frame().map_err(|e| e.to_string())? {
            let sealed = installer.add_frame(b, &frame).map_err(|e| e.to_string())?;
            replacement.put(b, &sealed).unwrap();
            n += 1;
        }
        let summary = installer.seal_summary().map_err(|e| e.to_string())?;
        replacement.commit(&summary).unwrap();
        self.state
            .finish_install(installer)
            .map_err(|e| e.to_string())?;
        Ok(n)
    }
}

/// What openraft does with a snapshot, with pieces sent again (their answers lost): the
/// stream read in pieces, rewinds included, is the stream read straight, as long as it
/// announced; spooled on another node and installed there, it gives the same records; and the
/// stream carries no record in the clear.
#[test]
fn a_streamed_snapshot_survives_resent_pieces_and_installs_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let p = MemoryPlatform::shared([3; 32]);
    let src = source(dir.path(), &p, 3000);
    let mut straight = Vec::new();
    src.sender().read_to_end(&mut straight).unwrap();
    let mut s = src.sender();
    assert_eq!(straight.len() as u64, s.len);
    // The test records' contents (a run of 1s, of 2s) appear nowhere in the stream.
    assert!(!straight.windows(64).any(|w| w.iter().all(|&x| x == 1)));
    assert!(!straight.windows(64).any(|w| w.iter().all(|&x| x == 2)));

    let (chunk, mut off, mut pieces) = (40_000usize, 0usize, Vec::new());
    let mut resent = 0;
    while off < straight.len() {
        let mut buf = vec![0u8; chunk.min(straight.len() - off)];
        s.seek(off as u64).unwrap();
        let n = s.read(&mut buf).unwrap();
        // Every third piece goes again, from its start.
        if (off / chunk) % 3 == 1 && resent < 20 {
            resent += 1;
            s.seek(off as u64).unwrap();
            let again = s.read(&mut buf).unwrap();
            assert_eq!(again, n);
        }
        pieces.extend_from_slice(&buf[..n]);
        off += n;
    }
    assert!(pieces == straight);

    let other = tempfile::tempdir().unwrap();
    let mut t = target(other.path());
    let n = t.install(&straight).unwrap();
    assert!(n > 2000, "{n} buckets");
    assert_eq!(t.state.live_records(), 3000);
    assert_eq!(
        t.state.export().unwrap(),
        src.state.lock().unwrap().export().unwrap()
    );
    // The same snapshot again installs the same state; once the target applied one more
    // entry, it is stale and refused.
    t.install(&straight).unwrap();
    apply(
        &mut t.state,
        &bkv_hsm_core::Mutation::CountRegisterStart {
            record_id: [9; 32],
            day: 0,
        },
    );
    let e = t.install(&straight).unwrap_err();
    assert!(e.contains("older"), "{e}");
}

/// A stream missing a bucket, holding a stale one, or altered anywhere installs nothing.
#[test]
fn a_stream_missing_altered_or_forged_installs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = MemoryPlatform::shared([3; 32]);
    let src = source(dir.path(), &p, 200);
    let mut good = Vec::new();
    src.sender().read_to_end(&mut good).unwrap();
    let other = tempfile::tempdir().unwrap();
    let mut t = target(other.path());
    let before = t.state.export().unwrap();

    // A byte changed in the header, in a frame, past the end mark (padding is not read).
    let header_end = 8 + 4 + u32::from_be_bytes(good[8..12].try_into().unwrap()) as usize;
    for at in [20, header_end + 40, good.len() / 2] {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        assert!(t.install(&bad).is_err(), "byte {at} changed");
        assert_eq!(t.state.export().unwrap(), before);
    }
    // One bucket removed from the sender's table behind its summary: a frame short.
    let first = src.table.view().unwrap().next_from(0).unwrap().unwrap();
    src.table.write(&[(first.0, None)], None, true).unwrap();
    let mut short = Vec::new();
    src.sender().read_to_end(&mut short).unwrap();
    let e = t.install(&short).unwrap_err();
    assert!(e.contains("root"), "{e}");
    assert_eq!(t.state.export().unwrap(), before);
    // A snapshot made under another fleet's key.
    let theirs = SnapshotKey::from_bytes([6; 32], FLEET);
    let summary = {
        let s = src.state.lock().unwrap();
        s.seal_summary(b"position").unwrap()
    };
    let (forged, _) = src
        .state
        .lock()
        .unwrap()
        .snapshot_header(&theirs, [1; 32], &summary)
        .unwrap();
    let mut stream = STREAM_MAGIC.to_vec();
    stream.extend_from_slice(&(forged.len() as u32).to_be_bytes());
    stream.extend_from_slice(&forged);
    stream.push(0);
    let e = t.install(&stream).unwrap_err();
    assert!(e.contains("does not open"), "{e}");
}

/// A snapshot older than the state the receiving core applied, or one of another history with
/// as many entries, installs nothing: a leader's host cannot roll a member back, nor swap its
/// records, by sending it a snapshot a core made earlier or elsewhere.
#[test]
fn a_stale_or_other_history_snapshot_installs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = MemoryPlatform::shared([3; 32]);
    let src = source(dir.path(), &p, 20);
    let mut old = Vec::new();
    src.sender().read_to_end(&mut old).unwrap();
    let other = tempfile::tempdir().unwrap();
    let mut t = target(other.path());
    t.install(&old).unwrap();
    // The member applies one more entry; the snapshot it installed is now behind it.
    let late = store_pending("late-user");
    apply(&mut t.state, &late);
    persist(&mut t.state, &t.table);
    let before = t.state.export().unwrap();
    let e = t.install(&old).unwrap_err();
    assert!(e.contains("older"), "{e}");
    assert_eq!(t.state.export().unwrap(), before);
    // A sender with as many entries, the last of them another one: another history.
    let elsewhere = tempfile::tempdir().unwrap();
    let fork = source(elsewhere.path(), &p, 21);
    let mut forked = Vec::new();
    fork.sender().read_to_end(&mut forked).unwrap();
    let e = t.install(&forked).unwrap_err();
    assert!(e.contains("another history"), "{e}");
    assert_eq!(t.state.export().unwrap(), before);
    // A newer snapshot of the same history still installs.
    {
        let mut s = src.state.lock().unwrap();
        apply(&mut s, &late);
        apply(&mut s, &store_pending("later-user"));
        persist(&mut s, &src.table);
    }
    let mut newer = Vec::new();
    src.sender().read_to_end(&mut newer).unwrap();
    t.install(&newer).unwrap();
    assert_ne!(t.state.export().unwrap(), before);
}

/// The core checks a snapshot again when the host finishes installing it, whatever the host did
/// since opening it: every bucket must have come (the header's root), and entries applied in
/// between must not be undone. Found by review of the core service split, where the host sends
/// `InstallFinish` on its own.
#[test]
fn an_install_finishes_only_complete_and_not_behind() {
    let dir = tempfile::tempdir().unwrap();
    let p = MemoryPlatform::shared([3; 32]);
    let src = source(dir.path(), &p, 20);
    let mut bytes = Vec::new();
    src.sender().read_to_end(&mut bytes).unwrap();
    let other = tempfile::tempdir().unwrap();
    let mut t = target(other.path());
    let open = |t: &Target| {
        let spool_dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::create(spool_dir.path()).unwrap();
        spool.write(&bytes).unwrap();
        let (header, frames) = StreamReader::open(spool.into_reader().unwrap()).unwrap();
        let installer = t.state.open_snapshot(&keys().1, &header).unwrap();
        (installer, frames)
    };
    let before = t.state.export().unwrap();
    // Frames missing: the first one only.
    let (mut installer, mut frames) = open(&t);
    if let Frame::Bucket(b, frame) = frames.next_frame().unwrap() {
        installer.add_frame(b, &frame).unwrap();
    }
    let e = t.state.finish_install(installer).unwrap_err();
    assert!(matches!(e, bkv_hsm_core::SealedError::RootMismatch), "{e}");
    assert_eq!(t.state.export().unwrap(), before);
    // Complete, but the member applied more entries than the snapshot holds meanwhile.
    let (mut installer, mut frames) = open(&t);
    while let Frame::Bucket(b, frame) = frames.next_frame().unwrap() {
        installer.add_frame(b, &frame).unwrap();
    }
    installer.seal_summary().unwrap();
    for i in 0..21 {
        apply(&mut t.state, &store_pending(&format!("meanwhile-{i}")));
    }
    let applied = t.state.export().unwrap();
    let e = t.state.finish_install(installer).unwrap_err();
    assert!(e.to_string().contains("older"), "{e}");
    assert_eq!(t.state.export().unwrap(), applied);
}
