//! Who the caller is: the user token (`Authorization: Bearer`), and the development token
//! endpoint.

use crate::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use std::sync::Arc;

pub(crate) fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    budget: Budget,
) -> Result<String, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("Authorization must be a Bearer token"))?;
    let claims = state
        .config
        .tokens
        .verify(now_secs(), token)
        .map_err(|e| unauthorized(&e.to_string()))?;
    rate_limit(state, &claims.sub, budget)?;
    Ok(claims.sub)
}

pub use bkv_api::frontend::{DevTokenRequest, DevTokenResponse};

pub(crate) async fn dev_token(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<DevTokenResponse>, ApiError> {
    let Some(key) = &state.config.dev_token_key else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "dev tokens are disabled",
        ));
    };
    let req: DevTokenRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected {{\"user\": ...}}: {e}"),
        )
    })?;
    bkv_wire::validate_user_id(&req.user)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_user", e))?;
    let now = now_secs();
    let expires_at = now + 3600;
    let token = token::mint(
        key,
        &token::Claims {
            sub: req.user,
            aud: state.config.tokens.policy.audience.clone(),
            exp: expires_at,
            iat: Some(now),
            nbf: None,
        },
    );
    Ok(Json(DevTokenResponse { token, expires_at }))
}
