//! User authentication tokens: JWTs issued by the app's own identity provider; the frontend
//! only verifies them. Signatures, algorithm and key selection, `aud` (a string or an array) and
//! `iss` are checked by the maintained `jsonwebtoken` crate; the times (`exp`, `nbf`, the
//! maximum lifetime, with a clock-skew leeway) by this module with an explicit `now`, so they are
//! testable and the same everywhere. Keys: one Ed25519 public key, or a JWKS (Ed25519, P-256,
//! P-384 or RSA keys, chosen by `kid`). `mint` issues the development tokens (`EdDSA`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Longest accepted token.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Largest JWKS document read.
pub const MAX_JWKS: usize = 256 * 1024;
/// Most keys in one JWKS.
pub const MAX_KEYS: usize = 64;

/// Why a token was refused (or a key set could not be used).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// Over the length limit.
    #[error("token too long")]
    TooLong,
    /// Not three base64url parts.
    #[error("token is not a compact JWS")]
    Format,
    /// Its `alg` is not its key's.
    #[error("token algorithm is not the one its key is for")]
    Algorithm,
    /// Its `kid` names no key of the key set.
    #[error("token names no key this frontend knows (kid)")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    Signature,
    /// The claims do not decode, or lack `sub` or `exp`.
    #[error("token claims are malformed or missing")]
    Claims,
    /// `aud` is not the frontend's.
    #[error("token is for another audience")]
    Audience,
    /// `iss` is not the one required.
    #[error("token is from another issuer")]
    Issuer,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `exp` is further ahead than the policy allows.
    #[error("token lives longer than this frontend accepts")]
    TooLongLived,
    /// `sub` is not a valid user id.
    #[error("token subject is not a valid user id: {0}")]
    Subject(&'static str),
    /// The key set (JWKS) could not be read or used.
    #[error("key set: {0}")]
    KeySet(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// The claims `mint` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The audience.
    pub aud: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issued at, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// The claims a verified token carries (`aud` as a string or an array, `iss` optional).
#[derive(Debug, Clone, Deserialize)]
pub struct Verified {
    /// The user id.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Not before, unix seconds.
    #[serde(default)]
    pub nbf: Option<u64>,
    /// Issued at, unix seconds.
    #[serde(default)]
    pub iat: Option<u64>,
    /// The issuer.
    #[serde(default)]
    pub iss: Option<String>,
}

/// Issues a token (used by the dev token endpoint and tests).
pub fn mint(key: &SigningKey, claims: &Claims) -> String {
    let header = Header {
        alg: "EdDSA".into(),
        typ: Some("JWT".into()),
    };
    // Serialising these plain structs cannot fail.
    let h = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
    let c = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{h}.{c}");
    let sig = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", B64.encode(sig.to_bytes()))
}

/// What a token must say besides its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The `aud` every token must name.
    pub audience: String,
    /// The `iss` every token must carry, if set.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// The latest `exp` accepted is now + this (+ leeway): a stolen long-lived token is refused.
    pub max_lifetime_secs: u64,
}

impl Policy {
    /// Audience only, with a minute of leeway and lifetimes up to a day.
    pub fn new(audience: &str) -> Self {
        Policy {
            audience: audience.to_owned(),
            issuer: None,
            leeway_secs: 60,
            max_lifetime_secs: 24 * 3600,
        }
    }
}

/// The keys tokens may be signed with.
pub struct KeySet {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|(k, a, _)| (k, a)).collect();
        f.debug_struct("KeySet").field("keys", &kids).finish()
    }
}

impl KeySet {
    /// One Ed25519 key (no `kid` needed).
    pub fn ed25519(key: &VerifyingKey) -> Self {
        KeySet {
            keys: vec![(
                None,
                Algorithm::EdDSA,
                DecodingKey::from_ed_der(key.as_bytes()),
            )],
        }
    }

    /// A JWKS document (`{"keys": [...]}`). Symmetric keys are refused: this is a set of public
    /// keys. Each key's algorithm comes from its `alg`, else its type.
    pub fn from_jwks(json: &[u8]) -> Result<Self, TokenError> {
        let bad = |m: &str| TokenError::KeySet(m.to_owned());
        if json.len() > MAX_JWKS {
            return Err(bad("JWKS document too large"));
        }
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
        if set.keys.is_empty() || set.keys.len() > MAX_KEYS {
            return Err(bad("a JWKS needs 1 to 64 keys"));
        }
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let by_type = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    Algorithm::EdDSA
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                    Algorithm::ES384
                }
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                _ => return Err(bad("only Ed25519, P-256, P-384 and RSA public keys")),
            };
            let alg = match jwk.common.key_algorithm {
                None => by_type,
                Some(a) => {
                    let a = Algorithm::from_str_checked(&format!("{a:?}"))
                        .ok_or_else(|| bad("unsupported alg"))?;
                    if jsonwebtoken_family(a) != jsonwebtoken_family(by_type) {
                        return Err(bad("a key's alg does not match its type"));
                    }
                    a
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(&e.to_string()))?;
            keys.push((jwk.common.key_id.clone(), alg, key));
        }
        let kids: Vec<_> = keys.iter().filter_map(|(k, _, _)| k.as_ref()).collect();
        if kids.len() != keys.len() && keys.len() > 1 {
            return Err(bad("with several keys, every key needs a kid"));
        }
        if kids.iter().collect::<HashSet<_>>().len() != kids.len() {
            return Err(bad("two keys share a kid"));
        }
        Ok(KeySet { keys })
    }

    fn pick(
        &self,
        kid: Option<&str>,
    ) -> Result<&(Option<String>, Algorithm, DecodingKey), TokenError> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(k, _, _)| k.as_deref() == Some(kid))
                .ok_or(TokenError::UnknownKey),
            None if self.keys.len() == 1 => self.keys.first().ok_or(TokenError::UnknownKey),
            None => Err(TokenError::UnknownKey),
        }
    }
}

/// Key families that may stand for each other in a JWK's `alg` (RS256 ↔ RS512, ES…).
fn jsonwebtoken_family(a: Algorithm) -> u8 {
    match a {
        Algorithm::EdDSA => 1,
        Algorithm::ES256 | Algorithm::ES384 => 2,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => 3,
        _ => 0,
    }
}

trait FromStrChecked: Sized {
    fn from_str_checked(s: &str) -> Option<Self>;
}

impl FromStrChecked for Algorithm {
    fn from_str_checked(s: &str) -> Option<Self> {
        s.parse().ok().filter(|a| jsonwebtoken_family(*a) != 0)
    }
}

/// The keys and policy tokens are checked against. The keys can be replaced while serving
/// (a JWKS file that changed).
pub struct Verifier {
    keys: RwLock<Arc<KeySet>>,
    /// What tokens must say.
    pub policy: Policy,
    /// Tokens that verified, by SHA-256 of the token: every request of a session presents the
    /// same token, and its signature check and JSON parsing were ~7 % of a 2-core recovery load.
    /// Only successes are kept, with the key set that verified them (replacing the keys makes
    /// every entry miss); the times are checked again on each use.
    recent: std::sync::Mutex<std::collections::HashMap<[u8; 32], Remembered>>,
}

/// A verified token's claims and the key set that verified them.
type Remembered = (Arc<KeySet>, Verified);

/// Most tokens [`Verifier`] remembers; past it, expired ones go, then all.
const RECENT_TOKENS: usize = 8192;

impl Verifier {
    /// A verifier of tokens signed by `keys`, held to `policy`.
    pub fn new(keys: KeySet, policy: Policy) -> Self {
        Verifier {
            keys: RwLock::new(Arc::new(keys)),
            policy,
            recent: Default::default(),
        }
    }

    /// Swaps in a new key set (a JWKS refresh); tokens verified from now on use it.
    pub fn replace_keys(&self, keys: KeySet) {
        if let Ok(mut k) = self.keys.write() {
            *k = Arc::new(keys);
        }
        if let Ok(mut r) = self.recent.lock() {
            r.clear();
        }
    }

    /// Checks `token` at unix time `now`: signature, then claims against the policy.
    pub fn verify(&self, now: u64, token: &str) -> Result<Verified, TokenError> {
        use sha2::Digest;
        let keys = self
            .keys
            .read()
            .map(|k| k.clone())
            .map_err(|_| TokenError::KeySet("poisoned".into()))?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let seen = self.recent.lock().ok().and_then(|r| {
            r.get(&digest)
                .filter(|(k, _)| Arc::ptr_eq(k, &keys))
                .map(|(_, c)| c.clone())
        });
        if let Some(c) = seen {
            check_times(&c, &self.policy, now)?;
            return Ok(c);
        }
        let c = verify(&keys, &self.policy, now, token)?;
        if let Ok(mut r) = self.recent.lock() {
            if r.len() >= RECENT_TOKENS {
                let leeway = self.policy.leeway_secs;
                r.retain(|_, (_, c)| now < c.exp.saturating_add(leeway));
                if r.len() >= RECENT_TOKENS {
                    r.clear();
                }
            }
            r.insert(digest, (keys, c.clone()));
        }
        Ok(c)
    }
}

/// The time rules: not expired (with leeway), already valid, not longer-lived than allowed.
fn check_times(c: &Verified, policy: &Policy, now: u64) -> Result<(), TokenError> {
    if now >= c.exp.saturating_add(policy.leeway_secs) {
        return Err(TokenError::Expired);
    }
    if c.nbf
        .is_some_and(|nbf| now.saturating_add(policy.leeway_secs) < nbf)
    {
        return Err(TokenError::NotYetValid);
    }
    if c.exp
        > now
            .saturating_add(policy.max_lifetime_secs)
            .saturating_add(policy.leeway_secs)
    {
        return Err(TokenError::TooLongLived);
    }
    Ok(())
}

/// Verifies a token against `keys` and `policy` at time `now` and returns its claims.
pub fn verify(
    keys: &KeySet,
    policy: &Policy,
    now: u64,
    token: &str,
) -> Result<Verified, TokenError> {
    use jsonwebtoken::errors::ErrorKind;
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Format)?;
    let (_, alg, key) = keys.pick(header.kid.as_deref())?;
    if header.alg != *alg {
        return Err(TokenError::Algorithm);
    }
    let mut v = Validation::new(*alg);
    // Times are checked below against the caller's `now`.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.required_spec_claims = ["aud", "sub", "exp"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    v.set_audience(&[&policy.audience]);
    if let Some(iss) = &policy.issuer {
        v.set_issuer(&[iss]);
        v.required_spec_claims.insert("iss".into());
    }
    let data = jsonwebtoken::decode::<Verified>(token, key, &v).map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => TokenError::Claims,
        _ => TokenError::Format,
    })?;
    let c = data.claims;
    check_times(&c, policy, now)?;
    bkv_wire::validate_user_id(&c.sub).map_err(TokenError::Subject)?;
    Ok(c)
}

#[cfg(test)]
mod tests;
