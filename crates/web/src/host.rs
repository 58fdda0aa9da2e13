//! Host calls: what an operation asks JavaScript to do, queued until JavaScript takes it, and
//! answered by it. A call is a JSON description (`kind`: `fetch`, `read`, `write`, `webauthn`,
//! `state`) plus bytes; an answer is JSON plus bytes, or an error message.
//!
//! The browser's main thread is the only thread, so the queue is thread-local and the futures
//! hold nothing but a call id.

use bkv_client::{
    Authenticator, Chunks, ClientError, Http, HttpRequest, HttpResponse, Method, Output,
    PasskeyError,
};
use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// JavaScript's answer to a host call.
#[derive(Debug)]
pub enum Reply {
    /// Done: its JSON and bytes.
    Done(Value, Vec<u8>),
    /// Failed (why).
    Failed(String),
}

struct Call {
    task: u32,
    meta: Value,
    body: Vec<u8>,
    reply: Option<Reply>,
}

#[derive(Default)]
struct Host {
    next: u32,
    calls: BTreeMap<u32, Call>,
    outbox: VecDeque<u32>,
    /// The task being polled: a call made now belongs to it.
    polling: u32,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

/// Most calls outstanding at once (a runaway operation fails instead of growing the table).
const MAX_CALLS: usize = 1024;

/// Marks `task` as the one being polled.
pub(crate) fn polling(task: u32) {
    HOST.with(|h| h.borrow_mut().polling = task);
}

/// Forgets every call of `task` (it finished or was dropped).
pub(crate) fn forget(task: u32) {
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        h.calls.retain(|_, c| c.task != task);
        let calls = std::mem::take(&mut h.calls);
        h.outbox.retain(|id| calls.contains_key(id));
        h.calls = calls;
    });
}

/// The next call for JavaScript to perform: its JSON (`id` and `task` added) and bytes.
pub fn next_call() -> Option<(String, Vec<u8>)> {
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        while let Some(id) = h.outbox.pop_front() {
            if let Some(c) = h.calls.get_mut(&id) {
                let mut meta = c.meta.clone();
                if let Value::Object(m) = &mut meta {
                    m.insert("id".into(), id.into());
                    m.insert("task".into(), c.task.into());
                }
                return Some((meta.to_string(), std::mem::take(&mut c.body)));
            }
        }
        None
    })
}

/// Answers call `id`; the task to poll next, if the call is still wanted.
pub fn answer(id: u32, reply: Reply) -> Option<u32> {
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        let c = h.calls.get_mut(&id)?;
        c.reply = Some(reply);
        Some(c.task)
    })
}

/// A call to JavaScript, resolved when it answers.
pub(crate) struct HostCall {
    request: Option<(Value, Vec<u8>)>,
    id: u32,
}

/// Asks JavaScript to perform `meta` with `body`.
pub(crate) fn call(meta: Value, body: Vec<u8>) -> HostCall {
    HostCall {
        request: Some((meta, body)),
        id: 0,
    }
}

impl Future for HostCall {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Reply> {
        if let Some((meta, body)) = self.request.take() {
            let id = HOST.with(|h| {
                let mut h = h.borrow_mut();
                if h.calls.len() >= MAX_CALLS {
                    return None;
                }
                h.next = h.next.wrapping_add(1).max(1);
                let id = h.next;
                let task = h.polling;
                h.calls.insert(
                    id,
                    Call {
                        task,
                        meta,
                        body,
                        reply: None,
                    },
                );
                h.outbox.push_back(id);
                Some(id)
            });
            return match id {
                Some(id) => {
                    self.id = id;
                    Poll::Pending
                }
                None => Poll::Ready(Reply::Failed("too many host calls outstanding".into())),
            };
        }
        let id = self.id;
        let reply = HOST.with(|h| {
            let mut h = h.borrow_mut();
            match h.calls.get(&id).map(|c| c.reply.is_some()) {
                Some(true) => h.calls.remove(&id).and_then(|c| c.reply),
                _ => None,
            }
        });
        match reply {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

/// The client's HTTP through `fetch`.
pub(crate) struct FetchHttp;

impl Http for FetchHttp {
    fn send(&self, req: HttpRequest) -> BoxFuture<'_, bkv_client::Result<HttpResponse>> {
        Box::pin(async move {
            let method = match req.method {
                Method::Get => "GET",
                Method::Post => "POST",
                Method::Delete => "DELETE",
                Method::Put => "PUT",
                Method::Head => "HEAD",
            };
            let mut headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect();
            if let Some(t) = &req.token {
                headers.push((
                    "authorization".into(),
                    format!("Bearer {}", t.expose_secret()),
                ));
            }
            let (body, has_body) = match req.body {
                Some((b, kind)) => {
                    headers.push(("content-type".into(), kind.to_owned()));
                    (b, true)
                }
                None => (Vec::new(), false),
            };
            let meta = json!({
                "kind": "fetch",
                "method": method,
                "url": req.url,
                "headers": headers,
                "has_body": has_body,
                "limit": req.limit,
                "idempotent": req.idempotent,
            });
            match call(meta, body).await {
                Reply::Done(meta, body) => {
                    let status = meta
                        .get("status")
                        .and_then(Value::as_u64)
                        .and_then(|s| u16::try_from(s).ok())
                        .ok_or_else(|| ClientError::Protocol("fetch: no status".into()))?;
                    let ok = (200..300).contains(&status);
                    if ok && body.len() > req.limit {
                        return Err(ClientError::Protocol(format!(
                            "response larger than {} bytes",
                            req.limit
                        )));
                    }
                    let headers =
                        serde_json::from_value(meta.get("headers").cloned().unwrap_or(Value::Null))
                            .unwrap_or_default();
                    Ok(HttpResponse {
                        status,
                        headers,
                        body,
                    })
                }
                Reply::Failed(m) => Err(ClientError::Unavailable(m)),
            }
        })
    }
}

/// The browser's platform authenticator (`navigator.credentials`).
pub(crate) struct WebAuthn;

impl WebAuthn {
    async fn ceremony(action: &str, options: Value) -> Result<Value, PasskeyError> {
        let meta = json!({ "kind": "webauthn", "action": action, "options": options });
        match call(meta, Vec::new()).await {
            Reply::Done(v, _) => Ok(v),
            Reply::Failed(m) if m == "no_credential" => Err(PasskeyError::NoCredential),
            Reply::Failed(m) => Err(PasskeyError::Authenticator(m)),
        }
    }
}

impl Authenticator for WebAuthn {
    fn create<'a>(
        &'a mut self,
        _origin: &'a str,
        options: Value,
    ) -> BoxFuture<'a, Result<Value, PasskeyError>> {
        Box::pin(Self::ceremony("create", options))
    }

    fn get<'a>(
        &'a mut self,
        _origin: &'a str,
        options: Value,
    ) -> BoxFuture<'a, Result<Value, PasskeyError>> {
        Box::pin(Self::ceremony("get", options))
    }
}

/// The picked file, read by JavaScript a slice at a time.
pub(crate) struct FileSlices;

/// Plaintext asked for per read.
const SLICE: usize = 1 << 20;

impl Chunks for FileSlices {
    fn next(&mut self) -> BoxFuture<'_, bkv_client::Result<Option<Vec<u8>>>> {
        Box::pin(async {
            match call(json!({ "kind": "read", "max": SLICE }), Vec::new()).await {
                // The end is said, not inferred from an empty answer: a page that hands over
                // something else than bytes must not cut the backup short.
                Reply::Done(meta, b) if b.is_empty() => match meta.get("eof") {
                    Some(Value::Bool(true)) => Ok(None),
                    _ => Err(ClientError::Protocol("a read returned nothing".into())),
                },
                Reply::Done(_, b) if b.len() <= SLICE => Ok(Some(b)),
                Reply::Done(..) => Err(ClientError::Protocol("a read returned too much".into())),
                Reply::Failed(m) => Err(ClientError::Io(std::io::Error::other(m))),
            }
        })
    }
}

/// Restored plaintext handed to JavaScript piece by piece (it keeps them as Blob parts).
pub(crate) struct Pieces;

impl Output for Pieces {
    fn write(&mut self, piece: Vec<u8>) -> BoxFuture<'_, bkv_client::Result<()>> {
        Box::pin(async move {
            match call(json!({ "kind": "write" }), piece).await {
                Reply::Done(..) => Ok(()),
                Reply::Failed(m) => Err(ClientError::Io(std::io::Error::other(m))),
            }
        })
    }
}

/// Hands the log state to JavaScript to keep (before the fleets it vouches for are used).
pub(crate) async fn save_state(state: Value) -> bkv_client::Result<()> {
    match call(json!({ "kind": "state", "state": state }), Vec::new()).await {
        Reply::Done(..) => Ok(()),
        Reply::Failed(m) => Err(ClientError::Io(std::io::Error::other(format!(
            "the log state was not kept: {m}"
        )))),
    }
}
