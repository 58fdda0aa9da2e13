//! The agent's core connection, pipelined (BENCHMARKS.md "Issue 28, item 4"): a caller writes
//! its request and waits for its own reply without holding anything, so the core service finds
//! the next request queued on the socket as soon as it answered one, instead of idling while the
//! agent's threads are scheduled. One reader thread takes the service's messages in order: each
//! reply goes to the oldest waiting caller (the service answers in the order it read), and the
//! service's bucket questions inside a request are answered from the agent's table right there.
//!
//! Entries the core makes must reach the log in the order the core numbered them (a later one
//! applied first makes the earlier one out of order). Replies come back in the core's order, so
//! the reader numbers every reply that carries an entry ([`Turn`]); whoever submits the entry
//! holds its turn until it did, and turns end in order ([`Sequencer`]).

use crate::client::{core_gone, BoundaryError, Conn, CALLBACKS};
use crate::protocol::{
    read_message, write_message, FromCore, Reply, Request, ToCore, BUCKET_CHUNK_BYTES,
};
use bkv_hsm_core::{BucketHost, SealedError, Step};
use std::collections::VecDeque;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A reply and, if it carries an entry to submit, its turn.
pub type Answer = (Reply, Option<Turn>);

type Waiter = SyncSender<Answer>;

/// Hands out turns and lets them end in order.
#[derive(Default)]
pub struct Sequencer {
    /// (turns handed out, turns ended)
    state: Mutex<(u64, u64)>,
    ended: Condvar,
}

impl Sequencer {
    /// The next turn.
    pub fn turn(self: &Arc<Self>) -> Turn {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        let n = s.0;
        drop(s);
        Turn {
            n,
            seq: self.clone(),
            reached: false,
        }
    }
}

/// One entry-carrying reply's place in the core's order. Ending it (drop) first waits for
/// every earlier turn to end, so entries submitted before their turns end reach the log in the
/// core's order.
pub struct Turn {
    n: u64,
    seq: Arc<Sequencer>,
    reached: bool,
}

impl Turn {
    /// Waits until every earlier turn ended (call before submitting the entry).
    pub fn reach(&mut self) {
        if self.reached {
            return;
        }
        let mut s = self.seq.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.1 + 1 < self.n {
            s = self.seq.ended.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        self.reached = true;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.reach();
        let mut s = self.seq.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 = s.1.max(self.n);
        drop(s);
        self.seq.ended.notify_all();
    }
}

/// Whether a reply carries an entry the agent submits to the log.
pub(crate) fn carries_entry(r: &Reply) -> bool {
    matches!(
        r,
        Reply::Step(Ok(Step::Commit(_))) | Reply::AdminEntry(Ok(_)) | Reply::Entry(_)
    )
}

struct Shared {
    /// The writing half: a request, or an answer to a bucket question, is written whole under
    /// it.
    writer: Mutex<UnixStream>,
    /// The callers waiting, oldest first: pushed under `writer` before their request is
    /// written (so the queue is in the socket's order), popped by the reader. A lock of its
    /// own, so the reader never waits for a writer blocked on a full socket (which would wait
    /// for the service, which would wait for the reader).
    waiters: Mutex<VecDeque<Waiter>>,
    /// The table the core reads buckets from (set before `Restore` is sent).
    buckets: Mutex<Option<Box<dyn BucketHost>>>,
    /// For shutting the socket down without the writer lock.
    control: UnixStream,
    broken: AtomicBool,
    /// Set when the handle is dropped: the connection ends, and the core is not "gone".
    closing: AtomicBool,
    /// When the reader last took a message, in milliseconds since `started`.
    progress: AtomicU64,
    started: Instant,
    order: Arc<Sequencer>,
}

impl Shared {
    /// Marks the connection broken for good (a late reply must never answer another request)
    /// and, unless the handle is closing, lets the node know the core is gone. Waiting callers
    /// see their channel close.
    fn break_off(&self, why: &str) {
        if !self.broken.swap(true, Ordering::SeqCst) {
            let _ = self.control.shutdown(std::net::Shutdown::Both);
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            if !self.closing.load(Ordering::SeqCst) {
                core_gone(&format!("the connection to the core service broke: {why}"));
            }
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis().min(u64::MAX as u128) as u64;
        self.progress.store(ms, Ordering::Relaxed);
    }

    /// How long since the reader last took a message.
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.progress.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// A pipelined core connection (module docs).
pub struct Pipe {
    shared: Arc<Shared>,
    timeout: Duration,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.break_off("closed");
    }
}

/// A request written, its reply not yet read.
pub struct Pending {
    rx: Receiver<Answer>,
    shared: Arc<Shared>,
    timeout: Duration,
}

impl Pending {
    /// Waits for the reply. Gives up when the service sent nothing at all for the timeout
    /// (as a read timeout would): a reply queued behind others, or a restore that streams the
    /// whole table, is waited for as long as the connection moves.
    pub fn wait(self) -> Result<Answer, BoundaryError> {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(500)) {
                Ok(a) => return Ok(a),
                Err(RecvTimeoutError::Timeout) if self.shared.idle() < self.timeout => {}
                Err(RecvTimeoutError::Timeout) => {
                    self.shared
                        .break_off("no message from the core service in time");
                    return Err(BoundaryError::Unexpected(
                        "no reply from the core service in time",
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(BoundaryError::Unexpected(
                        "the connection to the core service broke",
                    ))
                }
            }
        }
    }
}

impl Pipe {
    /// Takes over a connected core connection and starts its reader thread.
    pub fn start(conn: Conn, timeout: Duration) -> Result<Pipe, BoundaryError> {
        let stream = conn.into_stream();
        let io = |e: std::io::Error| BoundaryError::Frame(e.into());
        // The reader waits for as long as the connection is idle; callers time out instead.
        stream.set_read_timeout(None).map_err(io)?;
        let reading = stream.try_clone().map_err(io)?;
        let control = stream.try_clone().map_err(io)?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream),
            waiters: Mutex::new(VecDeque::new()),
            buckets: Mutex::new(None),
            control,
            broken: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            progress: AtomicU64::new(0),
            started: Instant::now(),
            order: Arc::new(Sequencer::default()),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("bkv-core-reader".into())
            .spawn(move || {
                // Whatever ends the reader — an error, or a panic in the table it reads —
                // breaks the connection, so no caller waits for a reply that cannot come.
                let guard = BreakOnExit(&s);
                let why = read_loop(&s, reading);
                s.break_off(&why);
                drop(guard);
            })
            .map_err(io)?;
        Ok(Pipe { shared, timeout })
    }

    /// Writes one request; its reply comes through [`Pending::wait`].
    pub fn send(&self, req: Request) -> Result<Pending, BoundaryError> {
        if self.shared.broken.load(Ordering::SeqCst) {
            return Err(BoundaryError::Unexpected("request on a broken connection"));
        }
        let (tx, rx) = sync_channel(1);
        let written = {
            let mut w = self
                .shared
                .writer
                .lock()
                .map_err(|_| BoundaryError::Unexpected("poisoned connection"))?;
            self.shared
                .waiters
                .lock()
                .map_err(|_| BoundaryError::Unexpected("poisoned connection"))?
                .push_back(tx);
            write_message(&mut *w, &ToCore::Call(req))
        };
        if let Err(e) = written {
            self.shared.break_off(&e.to_string());
            return Err(e.into());
        }
        Ok(Pending {
            rx,
            shared: self.shared.clone(),
            timeout: self.timeout,
        })
    }

    /// Sets the table the core reads buckets from.
    pub fn set_buckets(&self, host: Box<dyn BucketHost>) -> Result<(), BoundaryError> {
        *self
            .shared
            .buckets
            .lock()
            .map_err(|_| BoundaryError::Unexpected("poisoned connection"))? = Some(host);
        Ok(())
    }
}

struct BreakOnExit<'a>(&'a Shared);

impl Drop for BreakOnExit<'_> {
    fn drop(&mut self) {
        self.0.break_off("the reader stopped");
    }
}

/// The reader thread: until the connection breaks; returns why it did.
fn read_loop(s: &Shared, stream: UnixStream) -> String {
    let mut r = BufReader::with_capacity(64 << 10, stream);
    loop {
        let msg: FromCore = match read_message(&mut r) {
            Ok(m) => m,
            Err(e) => return e.to_string(),
        };
        s.touch();
        let done = match msg {
            FromCore::Reply(reply) => {
                let turn = carries_entry(&reply).then(|| s.order.turn());
                let waiter = match s.waiters.lock() {
                    Ok(mut w) => w.pop_front(),
                    Err(_) => return "poisoned connection".into(),
                };
                let undelivered = match waiter {
                    Some(w) => w.send((reply, turn)).err().map(|e| e.0),
                    None => return "a reply nobody asked for".into(),
                };
                // A caller that gave up: its turn ends on another thread, since ending a turn
                // waits for the earlier ones and the reader must not wait.
                if let Some(answer) = undelivered {
                    if answer.1.is_some() {
                        let _ = std::thread::Builder::new()
                            .name("bkv-core-turn".into())
                            .spawn(move || drop(answer));
                    }
                }
                Ok(())
            }
            FromCore::ReadBucket(b) => {
                CALLBACKS.fetch_add(1, Ordering::Relaxed);
                let answer = match s.buckets.lock() {
                    Ok(h) => h.as_ref().map_or(Ok(None), |h| h.read(b)),
                    Err(_) => Err("poisoned bucket table".into()),
                };
                write(s, &ToCore::Bucket(answer))
            }
            FromCore::ListBuckets => {
                CALLBACKS.fetch_add(1, Ordering::Relaxed);
                list_buckets(s)
            }
            FromCore::Hello { .. } => Err("a greeting in the middle".into()),
        };
        if let Err(e) = done {
            return e;
        }
    }
}

fn write(s: &Shared, m: &ToCore) -> Result<(), String> {
    let mut w = s.writer.lock().map_err(|_| "poisoned connection")?;
    write_message(&mut *w, m).map_err(|e| e.to_string())
}

/// Streams every stored bucket, in chunks, then the end (the writer held throughout, so no
/// request is written in between).
fn list_buckets(s: &Shared) -> Result<(), String> {
    let buckets = s.buckets.lock().map_err(|_| "poisoned bucket table")?;
    let mut w = s.writer.lock().map_err(|_| "poisoned connection")?;
    let (mut chunk, mut bytes) = (Vec::new(), 0usize);
    let mut sent: Result<(), String> = Ok(());
    let listed = match buckets.as_ref() {
        None => Ok(()),
        Some(h) => h.for_each(&mut |b, sealed| {
            chunk.push((b, sealed.to_vec()));
            bytes += sealed.len() + 8;
            if bytes >= BUCKET_CHUNK_BYTES {
                bytes = 0;
                if let Err(e) = write_message(&mut *w, &ToCore::Buckets(std::mem::take(&mut chunk)))
                {
                    sent = Err(e.to_string());
                    return Err(SealedError::Malformed("the core service went away"));
                }
            }
            Ok(())
        }),
    };
    sent?;
    if !chunk.is_empty() {
        write_message(&mut *w, &ToCore::Buckets(chunk)).map_err(|e| e.to_string())?;
    }
    write_message(
        &mut *w,
        &ToCore::BucketsEnd(listed.map_err(|e| e.to_string())),
    )
    .map_err(|e| e.to_string())
}
