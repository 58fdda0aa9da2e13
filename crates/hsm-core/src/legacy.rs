//! Encodings of earlier releases that nodes still read (and never write): record and state
//! encoding 1 and state encoding 2 (docs/formats.md "Records on disk"), upgraded to the
//! current types on read.

use crate::members::{Member, Members};
use crate::state::{DayCount, Live, Pending, Record, RecordId, State};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A record as encoding 1 stored it: no `register_starts` (read as none counted), and `Live`
/// without `Moved` (a variant appended last, so the encoding 1 values decode unchanged).
#[derive(Deserialize)]
pub(crate) struct RecordV1 {
    generation: u64,
    live: Option<Live>,
    pending: Option<Pending>,
}

impl From<RecordV1> for Record {
    fn from(r: RecordV1) -> Self {
        Record {
            generation: r.generation,
            live: r.live,
            pending: r.pending,
            register_starts: DayCount::default(),
            moving_in: None,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct MembersV1 {
    admin_seq: u64,
    nodes: BTreeMap<u64, Member>,
}

impl From<MembersV1> for Members {
    fn from(m: MembersV1) -> Self {
        Members {
            admin_seq: m.admin_seq,
            nodes: m.nodes,
            last_record_leaf: None,
            clock: 0,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct StateV1 {
    records: BTreeMap<RecordId, RecordV1>,
    next_generation: u64,
    members: MembersV1,
}

impl From<StateV1> for State {
    fn from(s: StateV1) -> Self {
        State {
            records: s
                .records
                .into_iter()
                .map(|(id, r)| (id, Arc::new(r.into())))
                .collect(),
            next_generation: s.next_generation,
            members: s.members.into(),
            proposers: BTreeMap::new(),
            chain: [0; 32],
            entries: 0,
        }
    }
}

/// State encoding 2: encoding 3 without the proposers and the entry chain.
#[derive(Deserialize)]
pub(crate) struct StateV2 {
    records: BTreeMap<RecordId, Arc<Record>>,
    next_generation: u64,
    members: Members,
}

impl From<StateV2> for State {
    fn from(s: StateV2) -> Self {
        State {
            records: s.records,
            next_generation: s.next_generation,
            members: s.members,
            proposers: BTreeMap::new(),
            chain: [0; 32],
            entries: 0,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct BucketV1 {
    pub(crate) records: Vec<(RecordId, RecordV1)>,
}
