//! The HTTP(S) listener every bkv service runs: HTTP/1.1 with a header-read (and keep-alive idle)
//! timeout, a TLS handshake timeout, a whole-request timeout, connection caps overall and per
//! client address, and a graceful stop (stop accepting, finish the requests in flight, wait at
//! most one request timeout).

use axum::http::StatusCode;
use axum::Router;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a listener serves.
#[derive(Clone)]
pub struct Options {
    /// The `service` label of this listener's metrics (`frontend`, `auditor`).
    pub service: &'static str,
    /// TLS, when set; plain HTTP otherwise.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time to send a request's headers (and to finish a TLS handshake); how long a kept-alive
    /// connection may idle.
    pub idle_timeout: Duration,
    /// Time for a whole request (answered `408`).
    pub request_timeout: Duration,
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// Connections served at once from one client address.
    pub max_connections_per_address: usize,
}

/// A client connection, plain or TLS.
trait ClientIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ClientIo for T {}

/// Serves `app` on `listener` until `shutdown` resolves. Handlers see the client's address as
/// `axum::extract::ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        options.request_timeout,
    ));
    let conns = Arc::new(Mutex::new(ConnTable::default()));
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => {
                let _ = drain_tx.send(true);
                let drained = tokio::time::timeout(options.request_timeout, async {
                    while connections.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    tracing::warn!("shutdown: connections still open after the request timeout");
                }
                return Ok(());
            }
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = ConnSlot::take(&conns, address_key(peer.ip()), &options) else {
            tracing::debug!(%peer, "connection limit reached; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                app.clone().oneshot(req)
            });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(options.idle_timeout)
            .max_buf_size(64 * 1024);
        let mut drain = drain_rx.clone();
        let tls = tls.clone();
        let handshake_timeout = options.idle_timeout;
        connections.spawn(async move {
            let _slot = slot;
            let io: Box<dyn ClientIo> = match tls {
                None => Box::new(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let conn = http.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = drain.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "client connection ended");
            }
        });
    }
}

/// Open client connections, overall and per address.
#[derive(Default)]
struct ConnTable {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One open client connection, released when dropped.
struct ConnSlot {
    table: Arc<Mutex<ConnTable>>,
    address: IpAddr,
    service: &'static str,
}

impl ConnSlot {
    fn take(table: &Arc<Mutex<ConnTable>>, address: IpAddr, o: &Options) -> Option<ConnSlot> {
        let mut t = table.lock().ok()?;
        let mine = t.per_address.get(&address).copied().unwrap_or(0);
        if t.total >= o.max_connections || mine >= o.max_connections_per_address {
            return None;
        }
        t.total += 1;
        t.per_address.insert(address, mine + 1);
        metrics::gauge!("bkv_connections_open", "service" => o.service).set(t.total as f64);
        Some(ConnSlot {
            table: table.clone(),
            address,
            service: o.service,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.lock() {
            t.total = t.total.saturating_sub(1);
            metrics::gauge!("bkv_connections_open", "service" => self.service).set(t.total as f64);
            if let Some(n) = t.per_address.get_mut(&self.address) {
                *n -= 1;
                if *n == 0 {
                    t.per_address.remove(&self.address);
                }
            }
        }
    }
}

/// The key client addresses are limited by: IPv4 addresses as they are,
/// IPv6 addresses by their /64 (one subscriber's prefix).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Counts every request and its latency by method, route template (never a path with ids in
/// it) and status: `bkv_http_requests_total` and `bkv_http_request_duration_seconds`, labelled
/// with `service`. Add it as the outermost layer, so rejected requests count too. Templates are
/// written `/v1/sessions/:id`: braces in label values are valid Prometheus text, but they trip
/// regex-based scrapers.
pub fn record_requests(router: Router, service: &'static str) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            let route = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or_else(|| "unmatched".to_owned(), |p| route_label(p.as_str()));
            let method = req.method().as_str().to_owned();
            let start = std::time::Instant::now();
            let response = next.run(req).await;
            let labels = [
                ("service", service.to_owned()),
                ("method", method),
                ("route", route),
                ("status", response.status().as_u16().to_string()),
            ];
            metrics::counter!("bkv_http_requests_total", &labels).increment(1);
            metrics::histogram!("bkv_http_request_duration_seconds", &labels)
                .record(start.elapsed().as_secs_f64());
            response
        },
    ))
}

/// `/v1/sessions/{id}` → `/v1/sessions/:id`.
fn route_label(template: &str) -> String {
    template
        .split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => format!(":{name}"),
                None => seg.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// A Prometheus recorder for this process, with latency buckets from 1 ms to 10 s; its handle
/// renders `GET /metrics`.
pub fn install_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

/// `GET /metrics` from a recorder's handle (`404` without one).
pub fn metrics_response(
    handle: Option<&metrics_exporter_prometheus::PrometheusHandle>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match handle {
        Some(h) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            h.render(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_labels_name_parameters_without_braces() {
        assert_eq!(super::route_label("/v1/sessions/{id}"), "/v1/sessions/:id");
        assert_eq!(
            super::route_label("/v1/passkeys/assertions/{ceremony}"),
            "/v1/passkeys/assertions/:ceremony"
        );
        assert_eq!(super::route_label("/readyz"), "/readyz");
    }
}
