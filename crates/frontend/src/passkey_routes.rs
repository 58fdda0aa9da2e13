//! The passkey endpoints: registration and assertion ceremonies, grants, listing, deletion.

use crate::*;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bkv_wire::node::{NodeRequest, NodeResponse};
use std::sync::Arc;

pub(crate) fn relying_party(state: &AppState) -> Result<&passkeys::RelyingParty, ApiError> {
    state.config.passkeys.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "passkeys are not enabled on this frontend",
        )
    })
}

pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("body: {e}")))
}

pub(crate) use bkv_api::passkeys::{AssertStartBody, CredentialBody, RegisterStartBody};

pub(crate) fn grant_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(GRANT_HEADER).and_then(|v| v.to_str().ok())
}

pub(crate) async fn passkeys_register_start(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Open)?;
    let b: RegisterStartBody = if body.is_empty() {
        RegisterStartBody::default()
    } else {
        json_body(&body)?
    };
    let rp = relying_party(&state)?;
    Ok(Json(rp.start_registration(&user, b.grant.as_deref())?).into_response())
}

/// Exchanges a vault session logged in with the user's password (header
/// `bkv-session`) for a grant. The node answers whether the session is
/// logged in; a token alone gets nothing.
pub(crate) async fn passkeys_grant(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let rp = relying_party(&state)?;
    let id = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "a grant needs the bkv-session header of a logged-in vault session",
            )
        })?;
    let (node, session_id) = parse_session(id, state.config.routes.len())?;
    let req = NodeRequest::CheckLogin {
        session_id,
        user_id: user.clone(),
    };
    match node_call(&state, node, &req).await? {
        NodeResponse::LoginChecked { logged_in: true } => Ok(Json(bkv_api::passkeys::Grant {
            grant: rp.issue_grant(&user)?,
            expires_in: passkeys::GRANT_TTL.as_secs(),
        })
        .into_response()),
        NodeResponse::LoginChecked { logged_in: false } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "protector_required",
            "that vault session has not logged in with the password",
        )),
        NodeResponse::Error(e) => Err(e.into()),
        _ => Err(unexpected()),
    }
}

pub(crate) async fn passkeys_register_finish(
    State(state): State<Arc<AppState>>,
    Path(ceremony): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let b: CredentialBody<webauthn_rs::prelude::RegisterPublicKeyCredential> = json_body(&body)?;
    let rp = relying_party(&state)?;
    Ok(Json(rp.finish_registration(&user, &ceremony, &b.credential)?).into_response())
}

pub(crate) async fn passkeys_assert_start(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Open)?;
    let b: AssertStartBody = json_body(&body)?;
    Ok(Json(relying_party(&state)?.start_assertion(&user, &b.credential_id)?).into_response())
}

pub(crate) async fn passkeys_assert_finish(
    State(state): State<Arc<AppState>>,
    Path(ceremony): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let b: CredentialBody<webauthn_rs::prelude::PublicKeyCredential> = json_body(&body)?;
    let rp = relying_party(&state)?;
    Ok(Json(rp.finish_assertion(&user, &ceremony, &b.credential)?).into_response())
}

pub(crate) async fn passkeys_list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let list = relying_party(&state)?.list(&user)?;
    Ok(Json(bkv_api::passkeys::PasskeyList { passkeys: list }).into_response())
}

pub(crate) async fn passkeys_delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let n = relying_party(&state)?.delete(&user, Some(&id), grant_header(&headers))?;
    if n == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_passkey",
            "no such passkey for this user",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn passkeys_delete_all(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers, Budget::Message)?;
    let n = relying_party(&state)?.delete(&user, None, grant_header(&headers))?;
    Ok(Json(bkv_api::passkeys::Deleted { deleted: n as u64 }).into_response())
}
