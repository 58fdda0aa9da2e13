//! The node's health and Prometheus metrics on an optional plain-HTTP listener
//! (`listen.metrics`, for the operator's monitoring network). Counts and Raft state only:
//! never a user id, a record id or a secret. Hand-written — one request line, three paths,
//! one connection at a time — so the measured binary carries no HTTP stack.

use bkv_hsm_core::state::Outcome;
use bkv_wire::node::FleetStatus;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the commit-latency histogram's buckets.
const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters the replication layer updates; rendered by [`NodeMetrics::render`].
#[derive(Debug, Default)]
pub struct NodeMetrics {
    guesses_counted: AtomicU64,
    guesses_refused: AtomicU64,
    records_destroyed: AtomicU64,
    entries_refused: AtomicU64,
    leader_changes: AtomicU64,
    log_snapshots: AtomicU64,
    commit_buckets: [AtomicU64; COMMIT_BUCKETS.len()],
    commit_count: AtomicU64,
    commit_sum_micros: AtomicU64,
}

impl NodeMetrics {
    /// One entry this node's state machine applied.
    pub fn applied(&self, outcome: &Outcome) {
        let c = match outcome {
            Outcome::Counted { .. } => &self.guesses_counted,
            Outcome::Exhausted => &self.guesses_refused,
            Outcome::Destroyed => &self.records_destroyed,
            Outcome::Refused(_) => &self.entries_refused,
            _ => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// This node saw a new leader.
    pub fn leader_changed(&self) {
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// This node started a snapshot because its log grew by the threshold (16 MiB).
    pub fn log_snapshot(&self) {
        self.log_snapshots.fetch_add(1, Ordering::Relaxed);
    }

    /// Snapshots started because the log grew by the threshold.
    pub fn log_snapshots(&self) -> u64 {
        self.log_snapshots.load(Ordering::Relaxed)
    }

    /// One proposal of this node, from the call to its outcome applied here.
    pub fn committed(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bound, count) in COMMIT_BUCKETS.iter().zip(&self.commit_buckets) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.commit_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.commit_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self, status: &FleetStatus, ready: bool, sessions: usize) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "bkv_node_guesses_counted_total",
            "counter",
            "Password guesses this node applied as counted.",
            get(&self.guesses_counted).to_string(),
        );
        metric(
            "bkv_node_guesses_refused_total",
            "counter",
            "Guesses refused because the record was at its limit.",
            get(&self.guesses_refused).to_string(),
        );
        metric(
            "bkv_node_records_destroyed_total",
            "counter",
            "Records this node applied as destroyed.",
            get(&self.records_destroyed).to_string(),
        );
        metric(
            "bkv_node_entries_refused_total",
            "counter",
            "Log entries this node's core refused (forged, replayed, reordered, or of a \
             non-member): an honest fleet refuses none but the rare entry overtaken at a \
             leader change.",
            get(&self.entries_refused).to_string(),
        );
        let crossed = bkv_core_service::client::crossings();
        for (name, help, value) in [
            (
                "bkv_node_core_requests_total",
                "Requests this host agent sent its core across the core boundary (round trips).",
                crossed.requests,
            ),
            (
                "bkv_node_core_apply_requests_total",
                "Of those, Apply requests (one per batch of committed entries applied).",
                crossed.applies,
            ),
            (
                "bkv_node_core_applied_entries_total",
                "Log entries the Apply requests carried.",
                crossed.applied_entries,
            ),
            (
                "bkv_node_core_bucket_reads_total",
                "Sealed buckets the core asked this agent for within a request (round trips).",
                crossed.bucket_reads,
            ),
            (
                "bkv_node_core_host_requests_total",
                "Requests on the host connection: raft-state seals and opens, counter, handshakes.",
                crossed.host_requests,
            ),
        ] {
            metric(name, "counter", help, value.to_string());
        }
        metric(
            "bkv_node_leader_changes_total",
            "counter",
            "Times this node saw a new leader (the first included).",
            get(&self.leader_changes).to_string(),
        );
        metric(
            "bkv_node_log_snapshots_total",
            "counter",
            "Snapshots started because the log grew by 16 MiB since the last one.",
            get(&self.log_snapshots).to_string(),
        );
        metric(
            "bkv_node_raft_term",
            "gauge",
            "Current Raft term.",
            status.term.to_string(),
        );
        metric(
            "bkv_node_is_leader",
            "gauge",
            "1 if this node is the leader.",
            u8::from(status.role == "leader").to_string(),
        );
        metric(
            "bkv_node_ready",
            "gauge",
            "1 if this node sees a leader with a majority.",
            u8::from(ready).to_string(),
        );
        metric(
            "bkv_node_last_log_index",
            "gauge",
            "Index of this node's last log entry.",
            status.last_log_index.unwrap_or(0).to_string(),
        );
        metric(
            "bkv_node_applied_index",
            "gauge",
            "Index of the last entry this node applied.",
            status.applied_index.unwrap_or(0).to_string(),
        );
        metric(
            "bkv_node_voters",
            "gauge",
            "Voters in the membership this node knows.",
            status.voters.len().to_string(),
        );
        metric(
            "bkv_node_sessions_open",
            "gauge",
            "Vault sessions in this node's table.",
            sessions.to_string(),
        );
        let name = "bkv_node_commit_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a proposal on this node to its outcome applied here.\n# TYPE {name} histogram"
        );
        for (bound, count) in COMMIT_BUCKETS.iter().zip(&self.commit_buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", get(count));
        }
        let count = get(&self.commit_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = get(&self.commit_sum_micros) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
        out
    }
}

/// One answer of the listener.
pub struct HttpAnswer {
    /// HTTP status code (200, 404, 503, …).
    pub status: u16,
    /// Value of the `Content-Type` header.
    pub content_type: &'static str,
    /// Response body (plain text or the Prometheus exposition).
    pub body: String,
}

/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// A client gets this long to send its request and take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `GET` of paths by `answer` on `listen`, one connection at a time in a background
/// thread; returns the bound address.
pub fn serve_http(
    listen: &str,
    answer: impl Fn(&str) -> HttpAnswer + Send + Sync + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("bkv-hsm-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
                let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
                let reply = match read_head(&mut conn) {
                    Some(head) => respond(&head, &answer),
                    None => plain(400, "bad request\n"),
                };
                let head = format!(
                    "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    reply.status,
                    reason(reply.status),
                    reply.content_type,
                    reply.body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(reply.body.as_bytes());
            }
        })?;
    Ok(addr)
}

/// The request head (up to the blank line), or `None` if it is too long, slow or not UTF-8.
fn read_head(conn: &mut impl Read) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
    }
    String::from_utf8(buf).ok()
}

fn respond(head: &str, answer: &dyn Fn(&str) -> HttpAnswer) -> HttpAnswer {
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("GET"), Some(target), Some(v)) if v.starts_with("HTTP/1.") => {
            // The query string selects nothing here.
            answer(target.split('?').next().unwrap_or(target))
        }
        (Some(_), Some(_), Some(_)) => plain(405, "only GET\n"),
        _ => plain(400, "bad request\n"),
    }
}

/// A plain-text answer.
pub(crate) fn plain(status: u16, body: &str) -> HttpAnswer {
    HttpAnswer {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.to_owned(),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> FleetStatus {
        FleetStatus {
            node_id: 1,
            role: "leader".into(),
            leader: Some(1),
            term: 7,
            last_log_index: Some(12),
            applied_index: Some(12),
            voters: vec![1, 2, 3],
            learners: vec![],
        }
    }

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = NodeMetrics::default();
        m.applied(&Outcome::Counted {
            attempts: 1,
            guess_limit: 10,
        });
        m.applied(&Outcome::Destroyed);
        m.applied(&Outcome::Reset);
        m.applied(&Outcome::Refused(bkv_hsm_core::Refusal::Forged));
        m.committed(Duration::from_millis(3));
        m.committed(Duration::from_secs(9));
        let text = m.render(&status(), true, 4);
        assert!(
            text.contains("bkv_node_guesses_counted_total 1\n"),
            "{text}"
        );
        assert!(text.contains("bkv_node_records_destroyed_total 1\n"));
        assert!(text.contains("bkv_node_entries_refused_total 1\n"));
        assert!(text.contains("bkv_node_raft_term 7\n"));
        assert!(text.contains("bkv_node_sessions_open 4\n"));
        // 3 ms falls in every bucket from 5 ms up; 9 s only in +Inf.
        assert!(text.contains("bkv_node_commit_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("bkv_node_commit_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("bkv_node_commit_duration_seconds_bucket{le=\"5\"} 1\n"));
        assert!(text.contains("bkv_node_commit_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("bkv_node_commit_duration_seconds_count 2\n"));
    }

    #[test]
    fn the_listener_answers_get_only_and_bounds_the_request() {
        let addr = serve_http("127.0.0.1:0", |path| match path {
            "/healthz" => plain(200, "ok\n"),
            _ => plain(404, "not found\n"),
        })
        .unwrap();
        let ask = |req: &[u8]| {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(req).unwrap();
            let mut s = String::new();
            let _ = c.read_to_string(&mut s);
            s
        };
        let ok = ask(b"GET /healthz?x=1 HTTP/1.1\r\nhost: a\r\n\r\n");
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("ok\n"),
            "{ok}"
        );
        assert!(ask(b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(ask(b"POST /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(ask(b"garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        let mut big = b"GET /healthz HTTP/1.1\r\nx: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_REQUEST));
        big.extend_from_slice(b"\r\n\r\n");
        assert!(ask(&big).starts_with("HTTP/1.1 400"));
    }
}
