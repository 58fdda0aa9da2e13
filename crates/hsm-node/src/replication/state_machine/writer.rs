//! The record table's writer thread and the durable index it reports (split from
//! `state_machine.rs`).

use super::*;

/// How often the table is committed durably. redb frees the pages a commit without fsync
/// replaced only at the next durable commit, so the file grows by everything written between
/// two of them (measured: 4 GB at 764,000 users with durable commits only at snapshots); each
/// durable commit costs an fsync on the writer thread.
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_millis(25);

/// Writes the record table on its own thread, so an apply never waits for redb: each apply hands
/// over the buckets it changed with the new summary and returns; the thread commits whatever has
/// queued up in one transaction (the last summary wins, later values of a bucket replace earlier
/// ones), durably every [`DURABLE_EVERY`]. Until a write lands, reads see it through
/// [`InFlight`]. A crash loses only queued writes, which the log re-applies.
pub(super) struct TableWriter {
    tx: Option<std::sync::mpsc::SyncSender<WriterJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set when a write failed: the state machine stops at its next call.
    failed: Arc<Mutex<Option<String>>>,
}

pub(super) enum WriterJob {
    Write {
        seq: u64,
        writes: Vec<(u16, Option<Vec<u8>>)>,
        summary: Vec<u8>,
        /// The log index the summary names (published once durable).
        applied: u64,
    },
    /// Answered once everything queued before it is in the table.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// Applies queued before the writer pushes back (each holds one apply's buckets).
const WRITER_QUEUE: usize = 256;

impl TableWriter {
    pub(super) fn start(table: Arc<RecordTable>, inflight: InFlight, durable: Durable) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<WriterJob>(WRITER_QUEUE);
        let failed = Arc::new(Mutex::new(None));
        let f = failed.clone();
        let thread = std::thread::Builder::new()
            .name("bkv-record-table".into())
            .spawn(move || {
                let mut last_durable = std::time::Instant::now();
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    jobs.extend(rx.try_iter());
                    let mut changes: std::collections::BTreeMap<u16, Option<Vec<u8>>> =
                        Default::default();
                    let (mut summary, mut seq, mut applied) = (None, 0, 0);
                    let mut flushes = Vec::new();
                    for j in jobs {
                        match j {
                            WriterJob::Write {
                                seq: s,
                                writes,
                                summary: sum,
                                applied: a,
                            } => {
                                changes.extend(writes);
                                (summary, seq, applied) = (Some(sum), s, a);
                            }
                            WriterJob::Flush(done) => flushes.push(done),
                        }
                    }
                    if let Some(summary) = summary {
                        let changes: Vec<_> = changes.into_iter().collect();
                        let durable_now = last_durable.elapsed() >= DURABLE_EVERY;
                        let r = table
                            .write(&changes, Some(&summary), durable_now)
                            .and_then(|()| inflight.landed(seq));
                        if let Err(e) = r {
                            tracing::error!(error = %e, "record table write failed");
                            if let Ok(mut f) = f.lock() {
                                *f = Some(e.to_string());
                            }
                            return;
                        }
                        if durable_now {
                            last_durable = std::time::Instant::now();
                            durable.reached(applied);
                        }
                    }
                    for done in flushes {
                        let _ = done.send(());
                    }
                }
            })
            .ok();
        TableWriter {
            tx: Some(tx),
            thread,
            failed,
        }
    }

    pub(super) fn check(&self) -> Result<(), ReplicationStoreError> {
        match self.failed.lock().map_err(|_| poisoned())?.as_ref() {
            Some(e) => Err(ReplicationStoreError::Records(e.clone())),
            None if self.thread.is_none() => Err(ReplicationStoreError::Records(
                "the record table writer did not start".into(),
            )),
            None => Ok(()),
        }
    }

    pub(super) fn send(&self, job: WriterJob) -> Result<(), ReplicationStoreError> {
        self.check()?;
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| ReplicationStoreError::Records("the record table writer stopped".into()))
    }

    /// Waits until everything handed over is in the table (blocking).
    pub(super) fn flush(&self) -> Result<(), ReplicationStoreError> {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        self.send(WriterJob::Flush(done))?;
        wait.recv().map_err(|_| {
            ReplicationStoreError::Records("the record table writer stopped".into())
        })?;
        self.check()
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        // Closing the queue ends the thread after it wrote what was queued.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The log index through which the record table is on disk, for the log store's purges
/// ([`super::log_store::LogStore::set_records_durable`]). Only moves forward.
#[derive(Clone)]
pub(super) struct Durable(pub(super) Arc<tokio::sync::watch::Sender<u64>>);

impl Durable {
    pub(super) fn reached(&self, index: u64) {
        self.0.send_if_modified(|d| {
            let moved = index > *d;
            *d = (*d).max(index);
            moved
        });
    }

    pub(super) fn reached_position(&self, p: &Position) {
        if let Some(l) = p.last_applied {
            self.reached(l.index);
        }
    }
}
