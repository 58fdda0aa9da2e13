//! The wall clock, in one place: natively the system's; in a browser build (which has no system
//! clock: `SystemTime::now` panics on `wasm32-unknown-unknown`) whatever the embedder set with
//! [`set_clock`], which `bkv-web` points at JavaScript's `Date.now`.

use std::sync::OnceLock;

static CLOCK: OnceLock<fn() -> u64> = OnceLock::new();

/// Sets the clock (milliseconds since the Unix epoch) for this process; the first call wins.
/// Only builds without a system clock need it.
pub fn set_clock(now_ms: fn() -> u64) {
    let _ = CLOCK.set(now_ms);
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    if let Some(f) = CLOCK.get() {
        return f();
    }
    system_ms()
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    now_ms() / 1000
}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// No clock was set: the epoch, which makes every dated check (a bundle's freshness) fail
/// closed rather than pass.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
fn system_ms() -> u64 {
    0
}
