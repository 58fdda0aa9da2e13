//! The API's errors: a status, a stable code and a message (`{"error", "message"}`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bkv_wire::node::NodeError;

pub use bkv_api::auditor::ErrorBody;

/// An HTTP error answer: its status, stable code and message ([`ErrorBody`]).
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.into(),
            message: self.message,
        };
        let mut resp = (self.status, Json(body)).into_response();
        // RFC 6750: a refused bearer token says so in a challenge.
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(
                    "Bearer realm=\"bkv\", error=\"invalid_token\"",
                ),
            );
        }
        resp
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let (status, code) = match &e {
            NodeError::UnknownSession => (StatusCode::NOT_FOUND, "unknown_session"),
            // The token is valid but names another user than the session (or the encrypted
            // hello): not a credential for this request, so 401 like any other refused token.
            NodeError::WrongUser => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "wrong_user",
                    "the token was issued for another user than this session's",
                )
            }
            NodeError::Handshake => (StatusCode::BAD_REQUEST, "handshake_failed"),
            NodeError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            NodeError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            NodeError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            NodeError::InProgress => (StatusCode::SERVICE_UNAVAILABLE, "in_progress"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

pub(crate) fn unexpected() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        "unexpected answer from vault node",
    )
}

pub(crate) fn rate_limited(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests {what}; slow down"),
    )
}
