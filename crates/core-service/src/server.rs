//! The core service's listener: one thread per connection, requests of the core answered one at
//! a time under one lock (as in a single-binary node), the host's beside them.

use crate::protocol::{
    read_message, write_message, Failure, FrameError, FromCore, Opened, Reply, Request, Role,
    ToCore, PROTOCOL_VERSION,
};
use crate::service::{CoreService, HostService};
use bkv_hsm_core::{BucketHost, SealedError};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

type Shared = Arc<Mutex<CoreService>>;

/// Connections served at once (an agent opens two).
const MAX_CONNECTIONS: usize = 16;

/// Serves connections from `listener` until the process ends.
pub fn serve(listener: UnixListener, service: CoreService) {
    let service: Shared = Arc::new(Mutex::new(service));
    let open = Arc::new(AtomicUsize::new(0));
    let core_taken = Arc::new(AtomicBool::new(false));
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    tracing::warn!("refused a connection: {MAX_CONNECTIONS} are open");
                    continue;
                }
                open.fetch_add(1, Ordering::SeqCst);
                let (service, open, core_taken) =
                    (service.clone(), open.clone(), core_taken.clone());
                let spawned = std::thread::Builder::new()
                    .name("bkv-core-conn".into())
                    .spawn(move || {
                        if let Err(e) = connection(stream, &service, &core_taken) {
                            tracing::debug!(error = %e, "agent connection ended");
                        }
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "no thread for an agent connection");
                }
            }
            Err(e) => tracing::warn!(error = %e, "accept on the core socket"),
        }
    }
}

/// Holds the one core connection's claim until the connection ends.
struct CoreClaim<'a>(&'a AtomicBool);

impl Drop for CoreClaim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn connection(
    stream: UnixStream,
    service: &Shared,
    core_taken: &AtomicBool,
) -> Result<(), FrameError> {
    let stream = Arc::new(Mutex::new(Duplex::new(stream)?));
    let role = {
        let mut s = lock(&stream)?;
        let hello: ToCore = read_message(&mut *s)?;
        let role = match hello {
            ToCore::Hello { version, role } if version == PROTOCOL_VERSION => role,
            _ => {
                // Say which version this is, then close: the agent names the mismatch.
                write_message(
                    &mut *s,
                    &FromCore::Hello {
                        version: PROTOCOL_VERSION,
                    },
                )?;
                return Ok(());
            }
        };
        write_message(
            &mut *s,
            &FromCore::Hello {
                version: PROTOCOL_VERSION,
            },
        )?;
        role
    };
    // One core connection at a time: the core reads buckets through the connection that
    // restored it, and requests are answered in the order one agent sends them.
    let _claim = match role {
        Role::Core if core_taken.swap(true, Ordering::SeqCst) => {
            tracing::warn!("refused a second core connection");
            return Ok(());
        }
        Role::Core => Some(CoreClaim(core_taken)),
        Role::Host => None,
    };
    let mut host: Option<HostService> = None;
    let early = Early::default();
    loop {
        let msg: ToCore = match early.next()? {
            Some(m) => m,
            None => read_message(&mut *lock(&stream)?)?,
        };
        let ToCore::Call(req) = msg else {
            return Err(FrameError::Io(std::io::Error::other(
                "expected a request from the agent",
            )));
        };
        let reply = match (role, req) {
            (Role::Core, Request::Restore { summary }) => {
                let buckets = Box::new(RemoteBuckets(stream.clone(), early.clone()));
                match service.lock() {
                    Ok(mut s) => s.restore(buckets, summary.as_deref()),
                    Err(_) => Reply::Failed(Failure::Poisoned),
                }
            }
            (Role::Core, req) => match service.lock() {
                Ok(mut s) => s.handle(req),
                Err(_) => Reply::Failed(Failure::Poisoned),
            },
            (Role::Host, req) => {
                if host.is_none() {
                    host = service.lock().ok().and_then(|s| s.host_service());
                }
                match &host {
                    Some(h) => h.handle(req),
                    None => Reply::Failed(Failure::NotOpen(Opened::Identity)),
                }
            }
        };
        // A read that failed inside the request: the stream is out of step, answer nothing.
        if early.0.lock().map_or(true, |q| q.broken) {
            return Err(FrameError::Io(std::io::Error::other(
                "the agent's messages are out of step",
            )));
        }
        write_message(&mut *lock(&stream)?, &FromCore::Reply(reply))?;
    }
}

/// The connection, its reads buffered: requests the agent pipelined arrive together, and are
/// taken in one read instead of two (length, body) per request.
struct Duplex {
    r: std::io::BufReader<UnixStream>,
    w: UnixStream,
}

impl Duplex {
    fn new(stream: UnixStream) -> Result<Duplex, FrameError> {
        let w = stream.try_clone()?;
        Ok(Duplex {
            r: std::io::BufReader::with_capacity(64 << 10, stream),
            w,
        })
    }
}

impl std::io::Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(buf)
    }
}

impl std::io::Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

fn lock(s: &Mutex<Duplex>) -> Result<std::sync::MutexGuard<'_, Duplex>, FrameError> {
    s.lock()
        .map_err(|_| FrameError::Io(std::io::Error::other("connection lock poisoned")))
}

/// Requests that arrived while the service waited for a bucket inside another request: the
/// agent pipelines its requests (`crate::pipe`), so the next may already be on the socket. They
/// are answered next, in the order they came.
/// A failed read leaves the stream out of step (part of a message read, or a request dropped),
/// so the connection ends after the current request instead of answering anything more.
#[derive(Clone, Default)]
struct Early(Arc<Mutex<EarlyQueue>>);

#[derive(Default)]
struct EarlyQueue {
    calls: std::collections::VecDeque<(ToCore, usize)>,
    bytes: usize,
    broken: bool,
}

/// Requests one agent may have queued ahead of a bucket answer: about one per relay thread
/// (256) and a few of its own; and their size, which bounds the memory an agent can make the
/// service hold.
const MAX_EARLY: usize = 1024;
const MAX_EARLY_BYTES: usize = 256 << 20;

impl Early {
    /// Reads the next message that is not a request, queueing requests on the way.
    fn read_answer(&self, s: &mut Duplex) -> Result<ToCore, String> {
        let r = self.read_answer_inner(s);
        if r.is_err() {
            if let Ok(mut q) = self.0.lock() {
                q.broken = true;
            }
        }
        r
    }

    fn read_answer_inner(&self, s: &mut Duplex) -> Result<ToCore, String> {
        loop {
            match read_message::<ToCore>(s).map_err(|e| e.to_string())? {
                call @ ToCore::Call(_) => {
                    let size = bkv_wire::encode(&call).len();
                    let mut q = self.0.lock().map_err(|_| "queue lock poisoned")?;
                    if q.calls.len() >= MAX_EARLY || q.bytes + size > MAX_EARLY_BYTES {
                        return Err("the agent queued too many requests".into());
                    }
                    q.bytes += size;
                    q.calls.push_back((call, size));
                }
                m => return Ok(m),
            }
        }
    }

    /// The next queued request, or `Err` if the stream is out of step.
    fn next(&self) -> Result<Option<ToCore>, FrameError> {
        let mut q = self
            .0
            .lock()
            .map_err(|_| FrameError::Io(std::io::Error::other("queue lock poisoned")))?;
        if q.broken {
            return Err(FrameError::Io(std::io::Error::other(
                "the agent's messages are out of step",
            )));
        }
        Ok(q.calls.pop_front().map(|(call, size)| {
            q.bytes = q.bytes.saturating_sub(size);
            call
        }))
    }
}

/// The agent's table of sealed buckets, read over the connection that restored the core.
struct RemoteBuckets(Arc<Mutex<Duplex>>, Early);

impl BucketHost for RemoteBuckets {
    fn read(&self, b: u16) -> Result<Option<Vec<u8>>, String> {
        let mut s = lock(&self.0).map_err(|e| e.to_string())?;
        write_message(&mut *s, &FromCore::ReadBucket(b)).map_err(|e| e.to_string())?;
        match self.1.read_answer(&mut s)? {
            ToCore::Bucket(r) => r,
            _ => Err("the agent did not answer with a bucket".into()),
        }
    }

    fn for_each(
        &self,
        f: &mut bkv_hsm_core::sealed_state::BucketVisitor<'_>,
    ) -> Result<(), SealedError> {
        let gone = |_| SealedError::Malformed("the agent's bucket list broke off");
        let mut s = lock(&self.0).map_err(gone)?;
        write_message(&mut *s, &FromCore::ListBuckets).map_err(gone)?;
        // Every chunk is read to the end even after a refusal, so the connection stays in step.
        let mut result = Ok(());
        loop {
            let next = self
                .1
                .read_answer(&mut s)
                .map_err(|_| SealedError::Malformed("the agent's bucket list broke off"))?;
            match next {
                ToCore::Buckets(chunk) => {
                    for (b, sealed) in chunk {
                        if result.is_ok() {
                            result = f(b, &sealed);
                        }
                    }
                }
                ToCore::BucketsEnd(Ok(())) => return result,
                ToCore::BucketsEnd(Err(_)) => {
                    return Err(SealedError::Malformed(
                        "the agent could not list its buckets",
                    ))
                }
                _ => return Err(SealedError::Malformed("the agent's bucket list broke off")),
            }
        }
    }
}
