//! The one-node host loop: how a host with a single replica drives a core. Every entry the
//! core proposes is applied before the core may answer, and its reads are always fresh (there
//! is no other replica to be behind). The core's tests, benches and fuzzers run vault messages
//! through it.

use bkv_hsm_core::{Core, Step};
use bkv_wire::node::{NodeError, SessionId};

/// Most entries one vault message commits; more is a bug in the core.
pub const MAX_COMMITS: usize = 8;

/// Runs vault message `ct` of `user`'s session `sid` through `core` and returns the core's
/// reply (Noise ciphertext), or the error the core answered with.
///
/// Panics when applying an entry fails (a store in memory does not fail: that is a bug to
/// report), when the message commits more than [`MAX_COMMITS`] entries, or when the core asks
/// for fresh reads without end.
pub fn drive(
    core: &mut Core,
    sid: &SessionId,
    user: &str,
    ct: &[u8],
) -> Result<Vec<u8>, NodeError> {
    let mut step = core.session_message(sid, user, ct);
    let (mut commits, mut fresh_reads) = (0, 0);
    loop {
        match step? {
            Step::Reply(r) => return Ok(r),
            Step::Commit(e) => {
                commits += 1;
                assert!(
                    commits <= MAX_COMMITS,
                    "a vault message committed more than {MAX_COMMITS} entries"
                );
                if let Err(err) = core.apply(&e) {
                    panic!("applying an entry in memory failed: {err}");
                }
                step = core.resume(sid);
            }
            Step::ReadFresh => {
                fresh_reads += 1;
                assert!(
                    fresh_reads <= MAX_COMMITS + 1,
                    "a vault message asked for a fresh read more than once per commit"
                );
                step = core.resume_fresh(sid, ct);
            }
        }
    }
}
