//! Passkey protectors: the frontend is the WebAuthn relying party (RP); the
//! user's authenticator evaluates the PRF extension.
//!
//! Clients reach authenticators through [`Authenticator`], whose methods take
//! and return the WebAuthn JSON forms a platform API uses
//! (`navigator.credentials.create/get`). The client adds the PRF extension
//! (`prf.eval.first = slot salt`) to the RP's options itself, as a web app
//! would; the RP never sees the PRF output.
//!
//! A slot's secret is HKDF(PRF output || RP share): the RP stores a random
//! 32-byte share per credential and releases it only after a valid assertion.
//! Deleting the credential at the RP therefore revokes the passkey even
//! against old manifest copies that storage may have kept.

use crate::error::{ClientError, Result};
use crate::http::{HttpRequest, Method};
use crate::session::{url, Endpoint};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// Largest RP answer read (options with up to a few dozen credentials).
const MAX_RP_BODY: usize = 64 * 1024;

pub use crate::error::PasskeyError;

/// A WebAuthn authenticator as a platform exposes it.
pub trait Authenticator: Send {
    /// `navigator.credentials.create({publicKey})`: returns the
    /// `PublicKeyCredential` JSON (with `clientExtensionResults`).
    fn create<'a>(
        &'a mut self,
        origin: &'a str,
        options: Value,
    ) -> BoxFuture<'a, std::result::Result<Value, PasskeyError>>;
    /// `navigator.credentials.get({publicKey})`.
    fn get<'a>(
        &'a mut self,
        origin: &'a str,
        options: Value,
    ) -> BoxFuture<'a, std::result::Result<Value, PasskeyError>>;
}

/// What the RP returns after a registration or an assertion.
pub(crate) struct RpResult {
    /// The WebAuthn credential id (raw bytes).
    pub credential_id: Vec<u8>,
    /// The relying party's random 32-byte share of the slot secret for this credential.
    pub rp_share: Zeroizing<[u8; 32]>,
    /// After an assertion: the RP's grant for deletions and registrations.
    pub grant: Option<Grant>,
}

/// Proof of a protector the RP accepts for a while (deleting passkeys,
/// registering another one): from a passkey assertion or a vault session
/// logged in with the password.
#[derive(Clone)]
pub struct Grant(SecretString);

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grant(<redacted>)")
    }
}

impl Grant {
    fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Exchanges a logged-in vault session for a grant. `None` when the
/// frontend has no passkey support.
pub(crate) async fn grant_from_session(
    endpoint: &Endpoint,
    session_id: &str,
) -> Result<Option<Grant>> {
    let req = HttpRequest::new(
        Method::Post,
        url(endpoint, "/v1/passkeys/grants"),
        MAX_RP_BODY,
    )
    .token(&endpoint.token)
    .header("bkv-session", session_id);
    let resp = endpoint.http.send(req).await?;
    if resp.status == 404 {
        return Ok(None);
    }
    if !resp.is_success() {
        return Err(resp.error());
    }
    let g: api::Grant = parse(&resp.body, "grant")?;
    Ok(Some(Grant(SecretString::from(g.grant))))
}

use bkv_api::passkeys as api;
type Started = api::Started<Value>;

async fn rp_post(endpoint: &Endpoint, path: &str, body: &impl serde::Serialize) -> Result<Vec<u8>> {
    let req = HttpRequest::new(Method::Post, url(endpoint, path), MAX_RP_BODY)
        .token(&endpoint.token)
        .json(body)?;
    let resp = endpoint.http.send(req).await?;
    if !resp.is_success() {
        return Err(resp.error());
    }
    Ok(resp.body)
}

fn parse<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| ClientError::Protocol(format!("{what}: {e}")))
}

fn finished(b: &[u8]) -> Result<RpResult> {
    let f: api::Finished = parse(b, "passkey ceremony result")?;
    let credential_id = B64URL
        .decode(&f.credential_id)
        .map_err(|_| ClientError::Protocol("credential id is not base64url".into()))?;
    let mut share = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(&f.rp_share, share.as_mut())
        .map_err(|_| ClientError::Protocol("RP share is not 32 hex bytes".into()))?;
    Ok(RpResult {
        credential_id,
        rp_share: share,
        grant: f.grant.map(|g| Grant(SecretString::from(g))),
    })
}

/// Adds `prf.eval.first = salt` to WebAuthn options.
fn with_prf(mut options: Value, salt: &[u8; 32]) -> Result<Value> {
    let pk = options
        .get_mut("publicKey")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ClientError::Protocol("RP options lack publicKey".into()))?;
    let ext = pk
        .entry("extensions")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| ClientError::Protocol("RP options: extensions is not an object".into()))?;
    ext.insert(
        "prf".into(),
        json!({ "eval": { "first": B64URL.encode(salt) } }),
    );
    Ok(options)
}

/// The PRF output in a credential's `clientExtensionResults`.
fn prf_output(credential: &Value) -> Option<Zeroizing<[u8; 32]>> {
    let first = credential
        .pointer("/clientExtensionResults/prf/results/first")?
        .as_str()?;
    let bytes = Zeroizing::new(B64URL.decode(first).ok()?);
    let mut out = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return None;
    }
    out.copy_from_slice(&bytes);
    Some(out)
}

/// Removes the PRF output from a credential before it goes to the RP: the
/// RP must never learn it.
fn strip_prf(credential: &mut Value) {
    if let Some(r) = credential
        .get_mut("clientExtensionResults")
        .and_then(Value::as_object_mut)
    {
        r.remove("prf");
    }
}

/// Registers a new passkey for the token's user and evaluates its PRF at
/// `salt`. Returns the RP result and the PRF output.
pub(crate) async fn register(
    endpoint: &Endpoint,
    authenticator: &mut dyn Authenticator,
    origin: &str,
    salt: &[u8; 32],
    grant: Option<&Grant>,
) -> Result<(RpResult, Zeroizing<[u8; 32]>)> {
    let body = api::RegisterStartBody {
        grant: grant.map(|g| g.expose().to_owned()),
    };
    let started: Started = parse(
        &rp_post(endpoint, "/v1/passkeys/registrations", &body).await?,
        "passkey registration options",
    )?;
    let options = with_prf(started.options, salt)?;
    let mut credential = authenticator
        .create(origin, options)
        .await
        .map_err(ClientError::Passkey)?;
    let prf_at_create = prf_output(&credential);
    strip_prf(&mut credential);
    let path = format!("/v1/passkeys/registrations/{}", started.ceremony);
    let rp = finished(&rp_post(endpoint, &path, &api::CredentialBody { credential }).await?)?;
    // Authenticators without PRF-at-create answer on the first assertion.
    let prf = match prf_at_create {
        Some(p) => p,
        None => {
            assert(endpoint, authenticator, origin, &rp.credential_id, salt)
                .await?
                .1
        }
    };
    Ok((rp, prf))
}

/// Asserts with the passkey `credential_id` and evaluates its PRF at `salt`.
pub(crate) async fn assert(
    endpoint: &Endpoint,
    authenticator: &mut dyn Authenticator,
    origin: &str,
    credential_id: &[u8],
    salt: &[u8; 32],
) -> Result<(RpResult, Zeroizing<[u8; 32]>)> {
    let started: Started = parse(
        &rp_post(
            endpoint,
            "/v1/passkeys/assertions",
            &api::AssertStartBody {
                credential_id: B64URL.encode(credential_id),
            },
        )
        .await?,
        "passkey assertion options",
    )?;
    let options = with_prf(started.options, salt)?;
    let mut credential = authenticator
        .get(origin, options)
        .await
        .map_err(ClientError::Passkey)?;
    let prf = prf_output(&credential).ok_or(ClientError::Passkey(PasskeyError::NoPrf))?;
    strip_prf(&mut credential);
    let path = format!("/v1/passkeys/assertions/{}", started.ceremony);
    let rp = finished(&rp_post(endpoint, &path, &api::CredentialBody { credential }).await?)?;
    Ok((rp, prf))
}

/// Deletes a passkey at the RP (its share is gone: the passkey opens nothing).
pub(crate) async fn delete(endpoint: &Endpoint, credential_id: &[u8], grant: &Grant) -> Result<()> {
    let path = format!("/v1/passkeys/{}", B64URL.encode(credential_id));
    let req = HttpRequest::new(Method::Delete, url(endpoint, &path), MAX_RP_BODY)
        .token(&endpoint.token)
        .header("bkv-grant", grant.expose());
    let resp = endpoint.http.send(req).await?;
    match resp.status {
        200..=299 | 404 => Ok(()),
        _ => Err(resp.error()),
    }
}

/// The credential ids (base64url) of the token's user's passkeys at the RP;
/// empty when the frontend has no passkey support.
pub(crate) async fn list(endpoint: &Endpoint) -> Result<Vec<String>> {
    let req = HttpRequest::new(Method::Get, url(endpoint, "/v1/passkeys"), MAX_RP_BODY)
        .token(&endpoint.token);
    let resp = endpoint.http.send(req).await?;
    if resp.status == 404 {
        return Ok(Vec::new());
    }
    if !resp.is_success() {
        return Err(resp.error());
    }
    let l: api::PasskeyList = parse(&resp.body, "passkey list")?;
    Ok(l.passkeys.into_iter().map(|e| e.credential_id).collect())
}

/// Deletes every passkey of the token's user at the RP.
pub(crate) async fn delete_all(endpoint: &Endpoint, grant: &Grant) -> Result<()> {
    let req = HttpRequest::new(Method::Delete, url(endpoint, "/v1/passkeys"), MAX_RP_BODY)
        .token(&endpoint.token)
        .header("bkv-grant", grant.expose());
    let resp = endpoint.http.send(req).await?;
    if resp.is_success() {
        Ok(())
    } else {
        Err(resp.error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prf_is_added_and_read_back() {
        let o = with_prf(json!({"publicKey": {"challenge": "x"}}), &[1u8; 32]).unwrap();
        assert_eq!(
            o.pointer("/publicKey/extensions/prf/eval/first")
                .and_then(Value::as_str),
            Some(B64URL.encode([1u8; 32]).as_str())
        );
        assert!(with_prf(json!({"mediation": "x"}), &[0; 32]).is_err());
        let cred = json!({"clientExtensionResults": {"prf": {"results": {"first": B64URL.encode([5u8; 32])}}}});
        assert_eq!(*prf_output(&cred).unwrap(), [5u8; 32]);
        let short = json!({"clientExtensionResults": {"prf": {"results": {"first": B64URL.encode([5u8; 16])}}}});
        assert!(prf_output(&short).is_none());
        let mut c = cred.clone();
        strip_prf(&mut c);
        assert!(prf_output(&c).is_none());
    }
}
