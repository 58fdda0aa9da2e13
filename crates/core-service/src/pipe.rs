//! The agent's core connection, pipelined (BENCHMARKS.md "Issue 28, item 4"): a caller writes
//! its request and waits for its own reply without holding anything, so the core service finds
//! the next request queued on the socket as soon as it answered one, instead of idling while the
//! agent's threads are scheduled.
//!
//! The service answers in the order it read, so the caller whose reply is next (the oldest
//! waiting) reads the socket itself: it reads its own reply, answers the service's bucket
//! questions that come before it from the agent's table, then hands the reading to the next
//! caller. No reader thread stands between the socket and the caller (a thread wake-up fewer
//! per request, which is most of a request's cost on a small machine).
//!
//! Entries the core makes must reach the log in the order the core numbered them (a later one
//! applied first makes the earlier one out of order). Replies come back in the core's order, so
//! each reply that carries an entry gets its [`Turn`] as it is read; whoever submits the entry
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

/// A waiting caller: its number, and how it is told that its reply is next.
struct Waiter {
    n: u64,
    next: SyncSender<()>,
}

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
    /// The reading half, used by the caller whose reply is next (the front of `waiters`). Its
    /// reads time out now and then so that a reader sees a broken or stalled connection.
    reader: Mutex<BufReader<UnixStream>>,
    /// The callers waiting, oldest first: pushed under `writer` before their request is
    /// written (so the queue is in the socket's order); the front one reads.
    waiters: Mutex<VecDeque<Waiter>>,
    /// Numbers the callers.
    sent: AtomicU64,
    /// The table the core reads buckets from (set before `Restore` is sent).
    buckets: Mutex<Option<Box<dyn BucketHost>>>,
    /// For shutting the socket down without the writer lock.
    control: UnixStream,
    broken: AtomicBool,
    /// Set when the handle is dropped: the connection ends, and the core is not "gone".
    closing: AtomicBool,
    /// When a request was last written or bytes last came from the service, in milliseconds
    /// since `started`.
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

    /// How long since a request was last written or bytes last came from the service.
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.progress.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    fn front_is(&self, n: u64) -> Result<bool, BoundaryError> {
        let w = self
            .waiters
            .lock()
            .map_err(|_| BoundaryError::Unexpected("poisoned connection"))?;
        Ok(w.front().is_some_and(|f| f.n == n))
    }

    /// Leaves the front of the queue to the next caller, and tells it.
    fn pass_on(&self, n: u64) {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if w.front().is_some_and(|f| f.n == n) {
            w.pop_front();
        }
        if let Some(next) = w.front() {
            // A full channel already holds the word; a closed one is a caller gone with the
            // connection.
            let _ = next.next.try_send(());
        }
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
    n: u64,
    /// `None` only once handed to the thread that reads an abandoned reply (`Drop`).
    next: Option<Receiver<()>>,
    shared: Arc<Shared>,
    timeout: Duration,
    done: bool,
}

impl Pending {
    /// Waits for the reply: until this caller's reply is next, then reads it. Gives up when the
    /// service sent nothing at all for the timeout (a reply queued behind others, or a restore
    /// that streams the whole table, is waited for as long as the connection moves).
    pub fn wait(self) -> Result<Answer, BoundaryError> {
        self.wait_with(|_| {})
    }

    /// [`Pending::wait`], running `seen` on the reply before the next caller may read the
    /// connection (what must be visible to the table before the core's next bucket question:
    /// the buckets an `Apply` wrote).
    pub fn wait_with(mut self, mut seen: impl FnMut(&Reply)) -> Result<Answer, BoundaryError> {
        self.done = true;
        self.take(&mut seen)
    }

    fn take(&mut self, seen: &mut dyn FnMut(&Reply)) -> Result<Answer, BoundaryError> {
        let s = self.shared.clone();
        let next = self
            .next
            .as_ref()
            .ok_or(BoundaryError::Unexpected("a reply taken twice"))?;
        while !s.front_is(self.n)? {
            if s.broken.load(Ordering::SeqCst) {
                return Err(BoundaryError::Unexpected(
                    "the connection to the core service broke",
                ));
            }
            match next.recv_timeout(POLL) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) if s.idle() < self.timeout => {}
                Err(RecvTimeoutError::Timeout) => {
                    s.break_off("no message from the core service in time");
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
        // Whatever ends the reading other than the reply — an error, or a panic in the table it
        // reads — breaks the connection, so no later caller waits for a reply that cannot come.
        let guard = BreakUnlessDone(&s, false);
        let read = {
            let mut r = s
                .reader
                .lock()
                .map_err(|_| BoundaryError::Unexpected("poisoned connection"))?;
            read_reply(&s, &mut r, self.timeout)
        };
        match read {
            Ok(reply) => {
                let turn = carries_entry(&reply).then(|| s.order.turn());
                seen(&reply);
                guard.done();
                s.pass_on(self.n);
                Ok((reply, turn))
            }
            Err(why) => {
                s.break_off(&why);
                drop(guard);
                Err(BoundaryError::Unexpected(
                    "the connection to the core service broke",
                ))
            }
        }
    }
}

impl Drop for Pending {
    /// A request whose caller never waited still has a reply on its way, which must be read
    /// (and its turn ended) before the next caller's: read and dropped on a thread of its own,
    /// since ending its turn waits for earlier turns, which the dropping thread may hold.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let mut rest = Pending {
            n: self.n,
            next: self.next.take(),
            shared: self.shared.clone(),
            timeout: self.timeout,
            done: true,
        };
        let spawned = std::thread::Builder::new()
            .name("bkv-core-abandoned".into())
            .spawn(move || {
                let _ = rest.take(&mut |_| {});
            });
        if spawned.is_err() {
            self.shared
                .break_off("no thread to read an abandoned request's reply");
        }
    }
}

/// How often a waiting caller or the reading one looks at the connection's state.
const POLL: Duration = Duration::from_millis(500);

impl Pipe {
    /// Takes over a connected core connection.
    pub fn start(conn: Conn, timeout: Duration) -> Result<Pipe, BoundaryError> {
        let stream = conn.into_stream();
        let io = |e: std::io::Error| BoundaryError::Frame(e.into());
        // Reads wake up now and then to look at the connection; callers time out instead.
        stream.set_read_timeout(Some(POLL)).map_err(io)?;
        let reading = stream.try_clone().map_err(io)?;
        let control = stream.try_clone().map_err(io)?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream),
            reader: Mutex::new(BufReader::with_capacity(64 << 10, reading)),
            waiters: Mutex::new(VecDeque::new()),
            sent: AtomicU64::new(0),
            buckets: Mutex::new(None),
            control,
            broken: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            progress: AtomicU64::new(0),
            started: Instant::now(),
            order: Arc::new(Sequencer::default()),
        });
        Ok(Pipe { shared, timeout })
    }

    /// Writes one request; its reply comes through [`Pending::wait`].
    pub fn send(&self, req: Request) -> Result<Pending, BoundaryError> {
        if self.shared.broken.load(Ordering::SeqCst) {
            return Err(BoundaryError::Unexpected("request on a broken connection"));
        }
        let (tx, rx) = sync_channel(1);
        let n = self.shared.sent.fetch_add(1, Ordering::SeqCst);
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
                .push_back(Waiter { n, next: tx });
            write_message(&mut *w, &ToCore::Call(req))
        };
        if let Err(e) = written {
            self.shared.break_off(&e.to_string());
            return Err(e.into());
        }
        // The wait for this reply counts from now, not from the last message of a quiet spell.
        self.shared.touch();
        Ok(Pending {
            n,
            next: Some(rx),
            shared: self.shared.clone(),
            timeout: self.timeout,
            done: false,
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

/// Breaks the connection when dropped before [`BreakUnlessDone::done`] (a panic while reading).
struct BreakUnlessDone<'a>(&'a Shared, bool);

impl BreakUnlessDone<'_> {
    fn done(mut self) {
        self.1 = true;
    }
}

impl Drop for BreakUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.break_off("a reply could not be read");
        }
    }
}

/// The socket's reading half, patient: a read that times out is tried again while the
/// connection is whole and bytes came within `timeout` (so a message is never cut where a read
/// timed out).
struct Patient<'a> {
    r: &'a mut BufReader<UnixStream>,
    s: &'a Shared,
    timeout: Duration,
}

impl std::io::Read for Patient<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.s.broken.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("the connection is broken"));
            }
            match self.r.read(buf) {
                Ok(n) => {
                    self.s.touch();
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.s.idle() >= self.timeout {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no message from the core service in time",
                        ));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads up to the next reply (the reading caller's), answering the service's bucket questions
/// on the way.
fn read_reply(
    s: &Shared,
    r: &mut BufReader<UnixStream>,
    timeout: Duration,
) -> Result<Reply, String> {
    let mut patient = Patient { r, s, timeout };
    loop {
        let msg: FromCore = read_message(&mut patient).map_err(|e| e.to_string())?;
        match msg {
            FromCore::Reply(reply) => return Ok(reply),
            FromCore::ReadBucket(b) => {
                CALLBACKS.fetch_add(1, Ordering::Relaxed);
                let answer = match s.buckets.lock() {
                    Ok(h) => h.as_ref().map_or(Ok(None), |h| h.read(b)),
                    Err(_) => Err("poisoned bucket table".into()),
                };
                write(s, &ToCore::Bucket(answer))?;
            }
            FromCore::ListBuckets => {
                CALLBACKS.fetch_add(1, Ordering::Relaxed);
                list_buckets(s)?;
            }
            FromCore::Hello { .. } => return Err("a greeting in the middle".into()),
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
