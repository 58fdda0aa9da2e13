//! Fair-share rate limits per client address and per user (see `docs/api.md`).

use crate::*;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

use bkv_service::http::address_key;

pub(crate) type KeyedLimiter<K> = governor::DefaultKeyedRateLimiter<K>;

/// Token buckets (`governor`) per user and per client address.
pub(crate) struct RateLimits {
    pub(crate) address: KeyedLimiter<std::net::IpAddr>,
    pub(crate) address_opens: KeyedLimiter<std::net::IpAddr>,
    pub(crate) user_opens: KeyedLimiter<String>,
    pub(crate) user_messages: KeyedLimiter<String>,
    /// Checks since the tables were last pruned of idle keys.
    pub(crate) checks: std::sync::atomic::AtomicU64,
}

pub(crate) fn quota((per_sec, burst): (u32, u32)) -> governor::Quota {
    let nz = |n: u32| std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    governor::Quota::per_second(nz(per_sec)).allow_burst(nz(burst))
}

impl RateLimits {
    pub(crate) fn new(l: &Limits) -> Self {
        RateLimits {
            address: governor::RateLimiter::keyed(quota(l.address_rate)),
            address_opens: governor::RateLimiter::keyed(quota(l.address_open_rate)),
            user_opens: governor::RateLimiter::keyed(quota(l.user_open_rate)),
            user_messages: governor::RateLimiter::keyed(quota(l.user_message_rate)),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Forgets keys whose buckets are full again, every so many checks, so
    /// the tables stay as large as the set of recently active keys.
    pub(crate) fn prune(&self) {
        if self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(10_000)
        {
            for l in [&self.address, &self.address_opens] {
                l.retain_recent();
                l.shrink_to_fit();
            }
            for l in [&self.user_opens, &self.user_messages] {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }
}

/// The client address of a request (unspecified when served without one,
/// as in-process tests do).
pub(crate) fn client_address(req_ext: &axum::http::Extensions) -> std::net::IpAddr {
    req_ext
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| address_key(c.0.ip()))
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Every request counts against its address's budget; session opens and
/// passkey ceremonies also against the address's budget for those.
pub(crate) async fn limit_address(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let address = client_address(req.extensions());
    state.rates.prune();
    if state.rates.address.check_key(&address).is_err() {
        return rate_limited("from this address").into_response();
    }
    let opens = req.method() == axum::http::Method::POST
        && matches!(
            req.uri().path(),
            "/v1/sessions" | "/v1/passkeys/registrations" | "/v1/passkeys/assertions"
        );
    if opens && state.rates.address_opens.check_key(&address).is_err() {
        return rate_limited("opening sessions from this address").into_response();
    }
    next.run(req).await
}

#[derive(Clone, Copy)]
pub(crate) enum Budget {
    Open,
    Message,
}

pub(crate) fn rate_limit(state: &AppState, user: &str, budget: Budget) -> Result<(), ApiError> {
    let (limiter, what) = match budget {
        Budget::Open => (&state.rates.user_opens, "opening sessions for this user"),
        Budget::Message => (&state.rates.user_messages, "for this user"),
    };
    // Keyed by the verified user id: `sub` is short (validated length).
    limiter
        .check_key(&user.to_owned())
        .map_err(|_| rate_limited(what))
}
