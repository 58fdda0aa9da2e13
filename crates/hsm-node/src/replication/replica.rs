//! What the replicated state machine applies entries to: a node's core across the core boundary
//! ([`CoreHandle`], in this process or a core service), or a [`BareReplica`] (the replication
//! layer's tests and benchmarks). Every method is one request across the boundary
//! (docs/architecture.md "The core's boundary"): entries in, outcomes and sealed buckets out;
//! sealed buckets in, snapshot frames out. Nothing returns a reference into the core.

use bkv_core_service::client::{unexpected, CoreHandle};
use bkv_core_service::protocol::{Reply, Request};
use bkv_hsm_core::sealed_state::{summary_position, Installer, SealedState};
use bkv_hsm_core::snapshot::{SnapshotKey, StreamStart};
use bkv_hsm_core::state::Outcome;
use bkv_hsm_core::{BucketHost, EntryKey, LogEntry};
use bkv_wire::node::{NodeError, SessionId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one batch of applied entries hands the host: each entry's outcome, the sealed buckets
/// they changed (`None`: emptied), the records' sealed summary at the batch's position, and
/// the replies of this node's sessions the batch decided (`Core::release_ready`).
pub struct AppliedBatch {
    /// Each entry's outcome, in log order.
    pub outcomes: Vec<Outcome>,
    /// The sealed buckets the batch changed, by bucket number (`None`: emptied).
    pub writes: Vec<(u16, Option<Vec<u8>>)>,
    /// The records' sealed summary at the batch's log position.
    pub summary: Vec<u8>,
    /// Replies to this node's sessions the batch decided, each with its deciding entry's `seq`.
    pub released: Vec<(SessionId, u64, SessionReply)>,
}

/// Session replies an `Apply` brought, by session and entry, until the request takes its own
/// ([`crate::Node`]: after its commit, instead of a `Resume` round trip). A reply nobody takes
/// (the request gave up waiting) is dropped after [`Released::KEEP`].
#[derive(Default)]
pub struct Released(Mutex<HashMap<(SessionId, u64), (Instant, SessionReply)>>);

/// A session's reply (Noise ciphertext), or why it has none.
pub(crate) type SessionReply = Result<Vec<u8>, NodeError>;

/// The sealed buckets a batch wrote (`None`: emptied).
pub(crate) type BucketWrites = [(u16, Option<Vec<u8>>)];

impl Released {
    /// How long an untaken reply is kept: longer than any commit is waited for.
    pub const KEEP: Duration = Duration::from_secs(120);

    pub(crate) fn put(&self, replies: Vec<(SessionId, u64, SessionReply)>) {
        if replies.is_empty() {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if m.len() >= 4096 {
            m.retain(|_, (at, _)| now.duration_since(*at) < Self::KEEP);
        }
        for (sid, seq, reply) in replies {
            m.insert((sid, seq), (now, reply));
        }
    }

    /// The reply an `Apply` brought for session `sid`'s entry `seq`, if any (keyed by the
    /// entry too: a reply left behind by a request that gave up never answers a later one).
    pub fn take(&self, sid: &SessionId, seq: u64) -> Option<SessionReply> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&(*sid, seq)).map(|(_, r)| r)
    }
}

/// What the state machine applies entries to.
pub trait Replica: Send + 'static {
    /// Applies committed log entries in order (each checked first: a refused entry changes
    /// nothing and says so in its outcome) and seals the summary at `position`; an error (the
    /// record store failed or was tampered with) stops the node.
    fn apply(&mut self, entries: Vec<LogEntry>, position: &[u8]) -> Result<AppliedBatch, String>;
    /// [`Replica::apply`] on a replica others share: one whose requests queue (a pipelined core
    /// connection) lets go of the lock while the reply is on its way, so the sessions' requests
    /// queue behind the `Apply` instead of behind the lock.
    /// `visible` gets the buckets the batch wrote before any later request to the replica can
    /// read a bucket (so it can make them visible to those reads first).
    fn apply_shared(
        this: &Mutex<Self>,
        entries: Vec<LogEntry>,
        position: &[u8],
        visible: &mut dyn FnMut(&BucketWrites),
    ) -> Result<AppliedBatch, String>
    where
        Self: Sized,
    {
        let mut replica = this
            .lock()
            .map_err(|_| "replica lock poisoned".to_string())?;
        let batch = replica.apply(entries, position)?;
        visible(&batch.writes);
        Ok(batch)
    }
    /// Whether the state admits the member with identity key `key` (`None`: the state names no
    /// member yet).
    fn admits(&mut self, key: &[u8; 32]) -> Result<Option<bool>, String>;
    /// Takes `host` as the record store and restores what it holds (checked against `summary`);
    /// returns the position the summary names.
    fn restore(
        &mut self,
        host: Box<dyn BucketHost>,
        summary: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, String>;
    /// The position a stored summary names.
    fn summary_position(&mut self, summary: &[u8]) -> Result<Vec<u8>, String>;
    /// The fleet secrets encrypted to an admitted member's identity key
    /// (the core checks admission), or why not.
    fn export_secrets_to(&mut self, identity: &[u8; 32]) -> Result<Vec<u8>, String>;
    /// A snapshot header of the state a stored summary describes: the header, the position the
    /// summary names and the stream nonce (`bkv_hsm_core::snapshot`).
    fn snapshot_header(&mut self, summary: &[u8]) -> Result<StreamStart, String>;
    /// A bucket's frame in the stream with `nonce`.
    fn snapshot_frame(&mut self, nonce: [u8; 32], b: u16, sealed: &[u8])
        -> Result<Vec<u8>, String>;
    /// Starts installing the snapshot with `header` (refused unless a core of the fleet sealed
    /// it and it is not behind this state); returns the position it names.
    fn install_begin(&mut self, header: &[u8]) -> Result<Vec<u8>, String>;
    /// The next bucket frame of the snapshot being installed, as the sealed bucket to store.
    fn install_frame(&mut self, b: u16, frame: &[u8]) -> Result<Vec<u8>, String>;
    /// The installed state's sealed summary (after the last frame).
    fn install_summary(&mut self) -> Result<Vec<u8>, String>;
    /// Switches to the installed state (its buckets and summary are stored).
    fn install_finish(&mut self) -> Result<(), String>;
}

/// A bare state (the replication layer's tests and benchmarks): no fleet secrets, keys given
/// outright, and no membership check (`SealedState::admit_entry`).
pub struct BareReplica {
    /// The sealed vault state the entries are applied to.
    pub state: SealedState,
    /// The fleet's entry key: opens and checks the entries applied.
    pub key: EntryKey,
    /// The fleet's snapshot key: seals and opens snapshot streams.
    pub snapshots: SnapshotKey,
    installer: Option<Installer>,
}

impl BareReplica {
    /// A bare replica of `state` whose entry and snapshot keys are `key` for fleet `fleet_id`.
    pub fn new(state: SealedState, key: [u8; 32], fleet_id: &str) -> Self {
        BareReplica {
            state,
            key: EntryKey::from_bytes(key, fleet_id),
            snapshots: SnapshotKey::from_bytes(key, fleet_id),
            installer: None,
        }
    }

    fn installer(&mut self) -> Result<&mut Installer, String> {
        self.installer
            .as_mut()
            .ok_or_else(|| "no snapshot is being installed".to_string())
    }
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Replica for BareReplica {
    fn apply(&mut self, entries: Vec<LogEntry>, position: &[u8]) -> Result<AppliedBatch, String> {
        let mut outcomes = Vec::with_capacity(entries.len());
        for e in &entries {
            outcomes.push(match self.state.admit_entry(&self.key, e, |_, _| true) {
                Ok(m) => self.state.apply(&m).map_err(text)?,
                Err(r) => Outcome::Refused(r),
            });
        }
        Ok(AppliedBatch {
            outcomes,
            writes: self.state.take_writes(),
            summary: self.state.seal_summary(position).map_err(text)?,
            released: Vec::new(),
        })
    }
    fn admits(&mut self, key: &[u8; 32]) -> Result<Option<bool>, String> {
        let members = &self.state.fleet().members;
        Ok((!members.nodes.is_empty()).then(|| members.admits(key)))
    }
    fn restore(
        &mut self,
        host: Box<dyn BucketHost>,
        summary: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, String> {
        self.state.restore(host, summary).map_err(text)
    }
    fn summary_position(&mut self, summary: &[u8]) -> Result<Vec<u8>, String> {
        summary_position(self.state.platform(), summary).map_err(text)
    }
    fn export_secrets_to(&mut self, _: &[u8; 32]) -> Result<Vec<u8>, String> {
        Err("this replica holds no fleet secrets".into())
    }
    fn snapshot_header(&mut self, summary: &[u8]) -> Result<StreamStart, String> {
        let mut nonce = [0u8; 32];
        self.state
            .platform()
            .fill_random(&mut nonce)
            .map_err(text)?;
        let (header, position) = self
            .state
            .snapshot_header(&self.snapshots, nonce, summary)
            .map_err(text)?;
        Ok(StreamStart {
            header,
            position,
            nonce,
        })
    }
    fn snapshot_frame(
        &mut self,
        nonce: [u8; 32],
        b: u16,
        sealed: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.state
            .snapshot_frame(&self.snapshots, nonce, b, sealed)
            .map_err(text)
    }
    fn install_begin(&mut self, header: &[u8]) -> Result<Vec<u8>, String> {
        let installer = self
            .state
            .open_snapshot(&self.snapshots, header)
            .map_err(text)?;
        let position = installer.position().to_vec();
        self.installer = Some(installer);
        Ok(position)
    }
    fn install_frame(&mut self, b: u16, frame: &[u8]) -> Result<Vec<u8>, String> {
        self.installer()?.add_frame(b, frame).map_err(text)
    }
    fn install_summary(&mut self) -> Result<Vec<u8>, String> {
        self.installer()?.seal_summary().map_err(text)
    }
    fn install_finish(&mut self) -> Result<(), String> {
        let installer = self
            .installer
            .take()
            .ok_or_else(|| "no snapshot is being installed".to_string())?;
        self.state.finish_install(installer).map_err(text)
    }
}

fn applied(reply: Reply) -> Result<AppliedBatch, String> {
    match reply {
        Reply::Applied {
            outcomes,
            writes,
            summary,
            released,
        } => Ok(AppliedBatch {
            outcomes,
            writes,
            summary,
            released,
        }),
        r => Err(unexpected(r).to_string()),
    }
}

/// One request whose reply must be `Bytes`.
fn bytes(core: &mut CoreHandle, req: Request) -> Result<Vec<u8>, String> {
    match core.call(req).map_err(text)? {
        Reply::Bytes(b) => Ok(b),
        r => Err(unexpected(r).to_string()),
    }
}

impl Replica for CoreHandle {
    fn apply(&mut self, entries: Vec<LogEntry>, position: &[u8]) -> Result<AppliedBatch, String> {
        let req = Request::Apply {
            entries,
            position: position.to_vec(),
        };
        applied(self.call(req).map_err(text)?)
    }
    fn apply_shared(
        this: &Mutex<Self>,
        entries: Vec<LogEntry>,
        position: &[u8],
        visible: &mut dyn FnMut(&BucketWrites),
    ) -> Result<AppliedBatch, String> {
        let req = Request::Apply {
            entries,
            position: position.to_vec(),
        };
        let sent = this
            .lock()
            .map_err(|_| "replica lock poisoned".to_string())?
            .send(req)
            .map_err(text)?;
        let seen = |r: &Reply| {
            if let Reply::Applied { writes, .. } = r {
                visible(writes)
            }
        };
        applied(sent.wait_with(seen).map_err(text)?.0)
    }
    fn admits(&mut self, key: &[u8; 32]) -> Result<Option<bool>, String> {
        match self
            .call(Request::Admits { identity: *key })
            .map_err(text)?
        {
            Reply::Admits(a) => Ok(a),
            r => Err(unexpected(r).to_string()),
        }
    }
    fn restore(
        &mut self,
        host: Box<dyn BucketHost>,
        summary: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, String> {
        CoreHandle::restore(self, host, summary).map_err(text)
    }
    fn summary_position(&mut self, summary: &[u8]) -> Result<Vec<u8>, String> {
        bytes(
            self,
            Request::SummaryPosition {
                summary: summary.to_vec(),
            },
        )
    }
    fn export_secrets_to(&mut self, identity: &[u8; 32]) -> Result<Vec<u8>, String> {
        bytes(
            self,
            Request::ExportSecrets {
                identity: *identity,
            },
        )
    }
    fn snapshot_header(&mut self, summary: &[u8]) -> Result<StreamStart, String> {
        match self
            .call(Request::SnapshotHeader {
                summary: summary.to_vec(),
            })
            .map_err(text)?
        {
            Reply::StreamStart {
                header,
                position,
                nonce,
            } => Ok(StreamStart {
                header,
                position,
                nonce,
            }),
            r => Err(unexpected(r).to_string()),
        }
    }
    fn snapshot_frame(
        &mut self,
        nonce: [u8; 32],
        b: u16,
        sealed: &[u8],
    ) -> Result<Vec<u8>, String> {
        bytes(
            self,
            Request::SnapshotFrame {
                nonce,
                bucket: b,
                sealed: sealed.to_vec(),
            },
        )
    }
    fn install_begin(&mut self, header: &[u8]) -> Result<Vec<u8>, String> {
        bytes(
            self,
            Request::InstallBegin {
                header: header.to_vec(),
            },
        )
    }
    fn install_frame(&mut self, b: u16, frame: &[u8]) -> Result<Vec<u8>, String> {
        bytes(
            self,
            Request::InstallFrame {
                bucket: b,
                frame: frame.to_vec(),
            },
        )
    }
    fn install_summary(&mut self) -> Result<Vec<u8>, String> {
        bytes(self, Request::InstallSummary)
    }
    fn install_finish(&mut self) -> Result<(), String> {
        match self.call(Request::InstallFinish).map_err(text)? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r).to_string()),
        }
    }
}
