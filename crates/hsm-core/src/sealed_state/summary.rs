//! The sealed summary (docs/formats.md "Records on disk", version 3): what a host stores with the
//! buckets so that a restarted core can check them, and what a snapshot header is made from.

use super::*;

/// The sealed summary's plaintext (docs/formats.md "Records on disk"), version 3.
#[derive(Serialize, Deserialize)]
pub(super) struct SummaryV3 {
    pub(super) version: u16,
    /// The fleet part; `records` is always empty here.
    pub(super) state: State,
    pub(super) live: u64,
    pub(super) root: Hash,
    /// The host's position in its log, opaque to the core.
    pub(super) position: Vec<u8>,
}

/// What a stored summary says (for a host streaming a snapshot from its table).
pub struct Summary {
    /// The fleet part; `records` is empty.
    pub state: State,
    /// Records that are active or pending.
    pub live: u64,
    /// The commitment root the stored buckets hash to.
    pub root: Hash,
    /// The host's position in its log, opaque to the core.
    pub position: Vec<u8>,
}

/// Unseals and checks a stored summary.
pub fn read_summary(p: &SharedPlatform, sealed: &[u8]) -> Result<Summary, SealedError> {
    let s = open_summary(p, sealed)?;
    Ok(Summary {
        state: s.state,
        live: s.live,
        root: s.root,
        position: s.position,
    })
}

pub(super) fn open_summary(p: &SharedPlatform, sealed: &[u8]) -> Result<SummaryV3, SealedError> {
    if sealed.len() > MAX_SUMMARY {
        return Err(SealedError::Malformed("summary too large"));
    }
    let plain = p.unseal(SUMMARY_SLOT, SUMMARY_LABEL, sealed)?;
    let malformed = |_| SealedError::Malformed("summary");
    // Every version starts with its version number.
    let version: u16 = bkv_wire::decode_prefix(&plain, MAX_SUMMARY).map_err(malformed)?;
    let s: SummaryV3 = match version {
        SUMMARY_VERSION => bkv_wire::decode(&plain, MAX_SUMMARY).map_err(malformed)?,
        v => return Err(SealedError::Version(v)),
    };
    if !s.state.records.is_empty() {
        return Err(SealedError::Malformed("summary holds records"));
    }
    Ok(s)
}

/// The host's position sealed in a summary (what the log was applied up to), without reading
/// any bucket.
pub fn summary_position(p: &SharedPlatform, sealed: &[u8]) -> Result<Vec<u8>, SealedError> {
    Ok(open_summary(p, sealed)?.position)
}

/// The whole state (records included) of one consistent view of a host's table: its summary and
/// every bucket, in bucket order, from the same read transaction. Every bucket is loaded into a
/// fresh commitment and the root compared with the summary's before anything is returned, so a
/// view mixing buckets of different times is refused. Memory grows with the records: this is
/// what a snapshot sent whole costs (tests compare whole states with it; nodes stream snapshots
/// instead, `bkv-hsm-node`'s `snapshot_stream`).
#[cfg(test)]
pub fn collect_state(
    p: &SharedPlatform,
    summary: &[u8],
    for_each: impl FnOnce(&mut BucketVisitor<'_>) -> Result<(), SealedError>,
) -> Result<(State, Vec<u8>), SealedError> {
    let s = open_summary(p, summary)?;
    // The placement key does not enter the root: a zero key serves to rebuild it.
    let mut c = RecordCommitment::new([0; 32]);
    let mut state = s.state;
    for_each(&mut |b, sealed| {
        c.load(&**p, b, sealed)?;
        for (id, r) in crate::commitment::unseal_bucket(&**p, b, sealed)?.into_records() {
            if state.records.insert(id, Arc::new(r)).is_some() {
                return Err(SealedError::Malformed("a record is stored twice"));
            }
        }
        Ok(())
    })?;
    if !bool::from(c.root().ct_eq(&s.root)) {
        return Err(SealedError::RootMismatch);
    }
    Ok((state, s.position))
}

pub(super) fn seal_summary(
    p: &SharedPlatform,
    state: &State,
    live: u64,
    root: Hash,
    position: &[u8],
) -> Result<Vec<u8>, SealedError> {
    let s = SummaryV3 {
        version: SUMMARY_VERSION,
        state: state.clone(),
        live,
        root,
        position: position.to_vec(),
    };
    Ok(p.seal(SUMMARY_SLOT, SUMMARY_LABEL, &bkv_wire::encode(&s))?)
}
