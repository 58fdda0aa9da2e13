//! The executor: each operation is a task polled when JavaScript asks (after starting it and
//! after every answer to one of its host calls). Nothing else wakes a task, so the waker does
//! nothing.

use crate::host;
use futures::task::noop_waker;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// An operation's result: its JSON, or the error's JSON (`code`, `message`, …).
pub type Outcome = Result<Value, Value>;

type Op = Pin<Box<dyn Future<Output = Outcome>>>;

enum Task {
    Running(Op),
    /// Being polled right now (taken out of the table while it runs).
    Polling,
    Finished(Outcome),
}

#[derive(Default)]
struct Tasks {
    next: u32,
    table: BTreeMap<u32, Task>,
}

thread_local! {
    static TASKS: RefCell<Tasks> = RefCell::new(Tasks::default());
}

/// Most tasks alive at once.
const MAX_TASKS: usize = 64;

/// Where a task stands, as [`poll`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum State {
    /// Waiting for host calls.
    Pending = 0,
    /// Finished: take its result.
    Done = 1,
    /// No such task.
    Unknown = 3,
}

/// Starts `op` as a new task and polls it once; its id (0: too many tasks).
pub fn start(op: impl Future<Output = Outcome> + 'static) -> u32 {
    let id = TASKS.with(|t| {
        let mut t = t.borrow_mut();
        if t.table.len() >= MAX_TASKS {
            return 0;
        }
        t.next = t.next.wrapping_add(1).max(1);
        let id = t.next;
        t.table.insert(id, Task::Running(Box::pin(op)));
        id
    });
    if id != 0 {
        poll(id);
    }
    id
}

/// Runs task `id` until it waits again.
pub fn poll(id: u32) -> State {
    let taken = TASKS.with(|t| {
        let mut t = t.borrow_mut();
        match t.table.get_mut(&id) {
            Some(slot @ Task::Running(_)) => match std::mem::replace(slot, Task::Polling) {
                Task::Running(op) => Some(op),
                _ => None,
            },
            Some(Task::Finished(_)) => None,
            Some(Task::Polling) | None => None,
        }
    });
    let Some(mut op) = taken else {
        return TASKS.with(|t| match t.borrow().table.get(&id) {
            Some(Task::Finished(_)) => State::Done,
            Some(_) => State::Pending,
            None => State::Unknown,
        });
    };
    host::polling(id);
    let waker = noop_waker();
    let polled = op.as_mut().poll(&mut Context::from_waker(&waker));
    host::polling(0);
    TASKS.with(|t| {
        let mut t = t.borrow_mut();
        match polled {
            Poll::Ready(outcome) => {
                t.table.insert(id, Task::Finished(outcome));
                State::Done
            }
            Poll::Pending => {
                t.table.insert(id, Task::Running(op));
                State::Pending
            }
        }
    })
}

/// Drops task `id` whatever its state (the page gave up on it) and forgets its calls.
pub fn drop_task(id: u32) {
    TASKS.with(|t| t.borrow_mut().table.remove(&id));
    host::forget(id);
}

/// Takes the result of finished task `id` (and forgets the task): `{"ok": …}` or
/// `{"error": …}`.
pub fn take(id: u32) -> Option<Value> {
    let outcome = TASKS.with(|t| {
        let mut t = t.borrow_mut();
        match t.table.remove(&id) {
            Some(Task::Finished(o)) => Some(o),
            Some(other) => {
                t.table.insert(id, other);
                None
            }
            None => None,
        }
    })?;
    host::forget(id);
    Some(match outcome {
        Ok(v) => serde_json::json!({ "ok": v }),
        Err(e) => serde_json::json!({ "error": e }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{self, Reply};

    #[test]
    fn a_task_waits_for_its_host_calls_and_finishes_with_their_answers() {
        let id = start(async {
            let a = host::call(serde_json::json!({"kind": "read"}), Vec::new()).await;
            let b = host::call(serde_json::json!({"kind": "write"}), vec![1, 2]).await;
            match (a, b) {
                (Reply::Done(_, x), Reply::Failed(m)) => Ok(serde_json::json!([x, m])),
                _ => Err(Value::Null),
            }
        });
        assert_eq!(poll(id), State::Pending);
        let (meta, body) = host::next_call().unwrap();
        let meta: Value = serde_json::from_str(&meta).unwrap();
        assert_eq!(meta["kind"], "read");
        assert_eq!(meta["task"], id);
        assert!(body.is_empty());
        assert!(host::next_call().is_none());
        let call = u32::try_from(meta["id"].as_u64().unwrap()).unwrap();
        assert_eq!(
            host::answer(call, Reply::Done(Value::Null, vec![9])),
            Some(id)
        );
        assert_eq!(poll(id), State::Pending);
        let (meta, body) = host::next_call().unwrap();
        assert_eq!(body, vec![1, 2]);
        let meta: Value = serde_json::from_str(&meta).unwrap();
        let call = u32::try_from(meta["id"].as_u64().unwrap()).unwrap();
        // An answer to a call nobody waits for is ignored.
        assert_eq!(host::answer(call + 100, Reply::Failed("x".into())), None);
        host::answer(call, Reply::Failed("no".into()));
        assert_eq!(poll(id), State::Done);
        assert_eq!(take(id).unwrap(), serde_json::json!({"ok": [[9], "no"]}));
        assert_eq!(poll(id), State::Unknown);
        assert!(take(id).is_none());
    }
}
