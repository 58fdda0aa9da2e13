//! Sessions opened on this node that have sent no request yet. A session's first request is a
//! login's or a registration's start, which reads replicated state, so the node runs the read
//! barrier before handing it to the core (`Request::SessionMessage { fresh: true }`), and the
//! core answers without asking for one (`Step::ReadFresh`), a round trip fewer.
//!
//! Only an optimisation: a session missing here (forgotten, or more were opened than are kept)
//! makes the core ask for the barrier as before.

use bkv_wire::node::SessionId;
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Sessions kept at most; the oldest is forgotten first.
const KEEP: usize = 4096;

#[derive(Default)]
pub(crate) struct Opened(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    set: HashSet<SessionId>,
    order: VecDeque<SessionId>,
}

impl Opened {
    pub(crate) fn add(&self, sid: SessionId) {
        let mut i = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if i.set.insert(sid) {
            i.order.push_back(sid);
        }
        while i.order.len() > KEEP {
            if let Some(old) = i.order.pop_front() {
                i.set.remove(&old);
            }
        }
    }

    /// Whether `sid` was opened and sent nothing yet (and from now on, that it did).
    pub(crate) fn take(&self, sid: &SessionId) -> bool {
        let mut i = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // `order` keeps a taken id until it ages out: bounded all the same.
        i.set.remove(sid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_new_once_and_the_oldest_are_forgotten() {
        let o = Opened::default();
        o.add([1; 16]);
        assert!(o.take(&[1; 16]));
        assert!(!o.take(&[1; 16]));
        assert!(!o.take(&[2; 16]));
        for i in 0..=KEEP as u32 {
            let mut sid = [0u8; 16];
            sid[..4].copy_from_slice(&i.to_be_bytes());
            o.add(sid);
        }
        assert!(!o.take(&[0; 16]), "the oldest was forgotten");
        let mut last = [0u8; 16];
        last[..4].copy_from_slice(&(KEEP as u32).to_be_bytes());
        assert!(o.take(&last));
    }
}
