//! The core service's listener: one thread per connection, requests of the core answered one at
//! a time under one lock (as in a single-binary node), the host's beside them.

use crate::protocol::{
    read_message, write_message, FrameError, FromCore, Reply, Request, Role, ToCore,
    PROTOCOL_VERSION,
};
use crate::service::{CoreService, HostService};
use bkv_hsm_core::{BucketHost, SealedError};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

type Shared = Arc<Mutex<CoreService>>;

/// Serves connections from `listener` until the process ends.
pub fn serve(listener: UnixListener, service: CoreService) {
    let service: Shared = Arc::new(Mutex::new(service));
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let service = service.clone();
                let spawned = std::thread::Builder::new()
                    .name("bkv-core-conn".into())
                    .spawn(move || {
                        if let Err(e) = connection(stream, &service) {
                            tracing::debug!(error = %e, "agent connection ended");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "no thread for an agent connection");
                }
            }
            Err(e) => tracing::warn!(error = %e, "accept on the core socket"),
        }
    }
}

fn connection(stream: UnixStream, service: &Shared) -> Result<(), FrameError> {
    let stream = Arc::new(Mutex::new(stream));
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
    let mut host: Option<HostService> = None;
    loop {
        let msg: ToCore = read_message(&mut *lock(&stream)?)?;
        let ToCore::Call(req) = msg else {
            return Err(FrameError::Io(std::io::Error::other(
                "expected a request from the agent",
            )));
        };
        let reply = match (role, req) {
            (Role::Core, Request::Restore { summary }) => {
                let buckets = Box::new(RemoteBuckets(stream.clone()));
                match service.lock() {
                    Ok(mut s) => s.restore(buckets, summary.as_deref()),
                    Err(_) => Reply::Failed("core service lock poisoned".into()),
                }
            }
            (Role::Core, req) => match service.lock() {
                Ok(mut s) => s.handle(req),
                Err(_) => Reply::Failed("core service lock poisoned".into()),
            },
            (Role::Host, req) => {
                if host.is_none() {
                    host = service.lock().ok().and_then(|s| s.host_service());
                }
                match &host {
                    Some(h) => h.handle(req),
                    None => Reply::Failed("the node identity is not open yet".into()),
                }
            }
        };
        write_message(&mut *lock(&stream)?, &FromCore::Reply(reply))?;
    }
}

fn lock(s: &Mutex<UnixStream>) -> Result<std::sync::MutexGuard<'_, UnixStream>, FrameError> {
    s.lock()
        .map_err(|_| FrameError::Io(std::io::Error::other("connection lock poisoned")))
}

/// The agent's table of sealed buckets, read over the connection that restored the core.
struct RemoteBuckets(Arc<Mutex<UnixStream>>);

impl BucketHost for RemoteBuckets {
    fn read(&self, b: u16) -> Result<Option<Vec<u8>>, String> {
        let mut s = lock(&self.0).map_err(|e| e.to_string())?;
        write_message(&mut *s, &FromCore::ReadBucket(b)).map_err(|e| e.to_string())?;
        match read_message::<ToCore>(&mut *s).map_err(|e| e.to_string())? {
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
            match read_message::<ToCore>(&mut *s).map_err(gone)? {
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
