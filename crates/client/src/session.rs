//! A Noise `NK` session with the vault, relayed through the frontend.

use crate::error::{ClientError, Result};
use crate::http::{Http, HttpRequest, Method};
use bkv_wire::vault::{SessionHello, VaultRequest, VaultResponse, MAX_VAULT_MESSAGE};
use bkv_wire::{MAX_NOISE_MESSAGE, NOISE_PATTERN, NOISE_PROLOGUE};
use secrecy::SecretString;
use zeroize::Zeroizing;

/// A fleet a client talks to: its id (the frontend routes by it; empty: the
/// frontend's default fleet) and its Noise static public key (pinned, or
/// from a verified bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetTarget {
    /// The fleet's id, sent as `bkv-fleet`; empty for the frontend's default fleet.
    pub fleet_id: String,
    /// The fleet's Noise static public key (X25519).
    pub key: [u8; 32],
}

/// How to reach the vault: frontend URL, user token, pinned fleet key.
#[derive(Clone)]
pub struct Endpoint {
    /// The HTTP client every request goes through.
    pub http: std::sync::Arc<dyn Http>,
    /// Base URL of the frontend (a trailing `/` is ignored).
    pub frontend_url: String,
    /// The user's bearer token for the frontend.
    pub token: SecretString,
    /// The fleet sessions go to; new records are registered here.
    pub fleet: FleetTarget,
    /// Older fleets still serving records that have not moved to `fleet`
    /// yet (a rotation in progress), newest first.
    pub previous: Vec<FleetTarget>,
}

impl Endpoint {
    /// The same frontend and user, talking to `fleet`.
    pub fn on(&self, fleet: &FleetTarget) -> Endpoint {
        Endpoint {
            fleet: fleet.clone(),
            previous: Vec::new(),
            ..self.clone()
        }
    }
}

/// An open Noise session with one vault fleet, relayed by the frontend under a session id.
pub struct Session {
    endpoint: Endpoint,
    id: String,
    transport: snow::TransportState,
}

pub(crate) fn url(endpoint: &Endpoint, path: &str) -> String {
    format!("{}{}", endpoint.frontend_url.trim_end_matches('/'), path)
}

impl Session {
    /// Runs the Noise NK handshake with `endpoint`'s fleet for `user_id`;
    /// [`ClientError::FleetKeyRejected`] if the responder lacks the pinned key.
    pub async fn open(endpoint: &Endpoint, user_id: &str) -> Result<Self> {
        let params = NOISE_PATTERN
            .parse()
            .map_err(|_| ClientError::Protocol("noise params".into()))?;
        let mut hs = snow::Builder::new(params)
            .remote_public_key(&endpoint.fleet.key)
            .and_then(|b| b.prologue(NOISE_PROLOGUE))
            .and_then(|b| b.build_initiator())
            .map_err(|e| ClientError::Protocol(format!("noise: {e}")))?;
        let hello = bkv_wire::encode(&SessionHello {
            version: 1,
            user_id: user_id.to_owned(),
        });
        // NK's first message: an ephemeral key, the payload and a tag.
        let mut msg1 = vec![0u8; hello.len() + 128];
        let n = hs
            .write_message(&hello, &mut msg1)
            .map_err(|e| ClientError::Protocol(format!("noise: {e}")))?;
        msg1.truncate(n);
        let mut req = HttpRequest::new(
            Method::Post,
            url(endpoint, "/v1/sessions"),
            MAX_NOISE_MESSAGE,
        )
        .token(&endpoint.token)
        .bytes(msg1)
        .idempotent();
        // An empty fleet id (a pinned config without one) lets the frontend
        // pick its default fleet.
        if !endpoint.fleet.fleet_id.is_empty() {
            req = req.header("bkv-fleet", endpoint.fleet.fleet_id.clone());
        }
        let resp = endpoint.http.send(req).await?;
        if !resp.is_success() {
            return Err(resp.error());
        }
        let id = resp
            .header(bkv_frontend_session_header())
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("frontend sent no session id".into()))?;
        let msg2 = resp.body;
        let mut payload = vec![0u8; msg2.len()];
        // A responder without the pinned key's private half cannot produce a
        // message that decrypts here.
        hs.read_message(&msg2, &mut payload)
            .map_err(|_| ClientError::FleetKeyRejected)?;
        let transport = hs
            .into_transport_mode()
            .map_err(|e| ClientError::Protocol(format!("noise: {e}")))?;
        Ok(Session {
            endpoint: endpoint.clone(),
            id,
            transport,
        })
    }

    /// Sends one request and waits for its response.
    pub async fn call(&mut self, req: &VaultRequest) -> Result<VaultResponse> {
        let plain = Zeroizing::new(bkv_wire::encode(req));
        let mut ct = vec![0u8; plain.len() + 64];
        let n = self
            .transport
            .write_message(&plain, &mut ct)
            .map_err(|e| ClientError::Protocol(format!("noise: {e}")))?;
        ct.truncate(n);
        let req = HttpRequest::new(
            Method::Post,
            url(&self.endpoint, &format!("/v1/sessions/{}", self.id)),
            MAX_NOISE_MESSAGE,
        )
        .token(&self.endpoint.token)
        .bytes(ct)
        .idempotent();
        let resp = self.endpoint.http.send(req).await?;
        if !resp.is_success() {
            return Err(resp.error());
        }
        let body = resp.body;
        // Sized to the message: zeroizing 64 KiB per call cost more than
        // the decryption.
        let mut out = Zeroizing::new(vec![0u8; body.len()]);
        let n = self
            .transport
            .read_message(&body, &mut out)
            .map_err(|_| ClientError::Protocol("response failed to decrypt".into()))?;
        bkv_wire::decode(out.get(..n).unwrap_or_default(), MAX_VAULT_MESSAGE)
            .map_err(|e| ClientError::Protocol(format!("response: {e}")))
    }

    /// The frontend's id of this session (`bkv-session`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Ends the session with an encrypted `Close` (only this session's key
    /// can end it). Best effort: the node also expires idle sessions.
    pub async fn close(mut self) {
        let _ = self.call(&VaultRequest::Close).await;
    }
}

fn bkv_frontend_session_header() -> &'static str {
    // Mirrors bkv_frontend::SESSION_HEADER without depending on the server crate.
    "bkv-session"
}
