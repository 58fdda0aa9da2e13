//! The API's errors: a status, a stable code and a message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An HTTP error answer: its status, stable code and message (`bkv_api::auditor::ErrorBody`).
#[derive(Debug)]
pub struct ApiError(
    pub(crate) StatusCode,
    pub(crate) &'static str,
    pub(crate) String,
);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(bkv_api::auditor::ErrorBody {
                error: self.1.into(),
                message: self.2,
            }),
        )
            .into_response()
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "internal error");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error".into(),
    )
}

pub(crate) fn not_found(what: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} not found"),
    )
}

pub(crate) fn bad(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, code, msg.into())
}
