//! Telling from outside when something and every handle cloned from it are dropped (a member
//! stopped in-process must not be started again while its files are open).

use std::sync::Arc;

/// Held by a value and its handles, as their last field (fields drop in order, so once no
/// marker is left, everything declared before it has dropped too).
#[derive(Clone, Default)]
pub(crate) struct Alive(Arc<()>);

impl Alive {
    /// Whether every holder of this marker has dropped.
    pub(crate) fn gone(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let w = Arc::downgrade(&self.0);
        move || w.strong_count() == 0
    }
}
