//! The client's HTTP behind one small trait, [`Http`]: every request the protocol code makes
//! (sessions, passkey ceremonies, the validation bundle) is an [`HttpRequest`] answered by an
//! [`HttpResponse`] with a bounded body. Natively the transport is reqwest ([`ReqwestHttp`]);
//! a browser build hands the same requests to `fetch`, so the protocol code is the same in both.

use crate::error::{ClientError, Result};
use futures::future::BoxFuture;
use secrecy::SecretString;

/// An HTTP method the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `DELETE`.
    Delete,
    /// `PUT` (the storage endpoint).
    Put,
    /// `HEAD` (the storage endpoint).
    Head,
}

/// One request: everything a transport needs, nothing of reqwest's.
pub struct HttpRequest {
    /// `GET`, `POST` or `DELETE`.
    pub method: Method,
    /// The full URL.
    pub url: String,
    /// The user's token, sent as `Authorization: Bearer`.
    pub token: Option<SecretString>,
    /// Further headers (`bkv-fleet`, `bkv-session`, `bkv-grant`).
    pub headers: Vec<(&'static str, String)>,
    /// The body and its content type (`application/json`, `application/octet-stream`).
    pub body: Option<(Vec<u8>, &'static str)>,
    /// Safe to send again when the connection failed before any answer (a session message
    /// the node answers from its record, a session open): the transport may retry it.
    pub idempotent: bool,
    /// The largest response body accepted; a larger one is an error, not read into memory.
    pub limit: usize,
}

impl HttpRequest {
    /// A request of `method` to `url` with no token, headers or body, not retried, with the
    /// response limited to `limit` bytes.
    pub fn new(method: Method, url: String, limit: usize) -> Self {
        HttpRequest {
            method,
            url,
            token: None,
            headers: Vec::new(),
            body: None,
            idempotent: false,
            limit,
        }
    }

    /// With the user's token.
    pub fn token(mut self, token: &SecretString) -> Self {
        self.token = Some(token.clone());
        self
    }

    /// With one more header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// With a JSON body.
    pub fn json(mut self, body: &impl serde::Serialize) -> Result<Self> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ClientError::Protocol(format!("encode request: {e}")))?;
        self.body = Some((bytes, "application/json"));
        Ok(self)
    }

    /// With a binary body.
    pub fn bytes(mut self, body: Vec<u8>) -> Self {
        self.body = Some((body, "application/octet-stream"));
        self
    }

    /// Marked safe to resend ([`HttpRequest::idempotent`]).
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }
}

/// One answer: its status, the headers the client reads, and the body (at most the request's
/// limit).
pub struct HttpResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The error this non-success answer means: the frontend's error body (`ErrorBody`) turned
    /// into the client's error, or the start of whatever else answered (a proxy's page).
    pub fn error(&self) -> ClientError {
        let body = String::from_utf8_lossy(&self.body);
        let (code, message) = match serde_json::from_str::<bkv_api::auditor::ErrorBody>(&body) {
            Ok(e) => (e.error, e.message),
            Err(_) => (String::new(), body.chars().take(200).collect()),
        };
        match code.as_str() {
            "handshake_failed" => ClientError::FleetKeyRejected,
            "fleet_retired" => ClientError::FleetRetired,
            "unavailable" | "busy" => ClientError::Unavailable(message),
            _ => ClientError::Refused(format!("{}: {message}", self.status)),
        }
    }
}

/// A transport: sends a request and reads its answer (at most `req.limit` bytes of body).
/// A connection that fails before any answer is [`ClientError::Unavailable`].
pub trait Http: Send + Sync {
    /// Sends `req` and returns the answer, whatever its status.
    fn send(&self, req: HttpRequest) -> BoxFuture<'_, Result<HttpResponse>>;
}

#[cfg(feature = "native")]
mod native;
#[cfg(feature = "native")]
pub use native::{read_limited, ReqwestHttp};

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![("bkv-session".into(), "s1".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn an_error_body_becomes_the_clients_error() {
        let e = |status, body| answer(status, body).error();
        assert!(matches!(
            e(403, r#"{"error":"handshake_failed","message":"m"}"#),
            ClientError::FleetKeyRejected
        ));
        assert!(matches!(
            e(410, r#"{"error":"fleet_retired","message":"m"}"#),
            ClientError::FleetRetired
        ));
        assert!(
            matches!(e(503, r#"{"error":"busy","message":"later"}"#), ClientError::Unavailable(m) if m == "later")
        );
        // Not the error body (a proxy's page): its start, with the status.
        let long = "x".repeat(500);
        match e(502, &long) {
            ClientError::Refused(m) => assert_eq!(m, format!("502: {}", "x".repeat(200))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn headers_are_found_by_lower_case_name() {
        let a = answer(200, "");
        assert!(a.is_success());
        assert_eq!(a.header("bkv-session"), Some("s1"));
        assert_eq!(a.header("bkv-fleet"), None);
        assert!(!answer(404, "").is_success());
    }
}
