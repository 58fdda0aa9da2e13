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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    #[error("token too long")]
    TooLong,
    #[error("token is not a compact JWS")]
    Format,
    #[error("token algorithm is not the one its key is for")]
    Algorithm,
    #[error("token names no key this frontend knows (kid)")]
    UnknownKey,
    #[error("token signature is invalid")]
    Signature,
    #[error("token claims are malformed or missing")]
    Claims,
    #[error("token is for another audience")]
    Audience,
    #[error("token is from another issuer")]
    Issuer,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token lives longer than this frontend accepts")]
    TooLongLived,
    #[error("token subject is not a valid user id: {0}")]
    Subject(&'static str),
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
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// The claims a verified token carries (`aud` as a string or an array, `iss` optional).
#[derive(Debug, Clone, Deserialize)]
pub struct Verified {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub iat: Option<u64>,
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
    pub fn new(keys: KeySet, policy: Policy) -> Self {
        Verifier {
            keys: RwLock::new(Arc::new(keys)),
            policy,
            recent: Default::default(),
        }
    }

    pub fn replace_keys(&self, keys: KeySet) {
        if let Ok(mut k) = self.keys.write() {
            *k = Arc::new(keys);
        }
        if let Ok(mut r) = self.recent.lock() {
            r.clear();
        }
    }

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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(k: &SigningKey) -> KeySet {
        KeySet::ed25519(&k.verifying_key())
    }

    fn policy(aud: &str) -> Policy {
        Policy {
            leeway_secs: 0,
            ..Policy::new(aud)
        }
    }

    proptest! {
        /// Arbitrary tokens are rejected with an error, never a panic.
        #[test]
        fn verify_never_panics_on_garbage(t in "(?s).{0,300}", parts in proptest::collection::vec("[A-Za-z0-9_-]{0,80}", 0..5)) {
            let keys = one(&SigningKey::from_bytes(&[7; 32]));
            prop_assert!(verify(&keys, &policy("bkv"), 0, &t).is_err());
            prop_assert!(verify(&keys, &policy("bkv"), 0, &parts.join(".")).is_err());
        }
    }

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.into(),
            aud: "bkv".into(),
            exp,
            iat: None,
            nbf: None,
        }
    }

    /// Signs arbitrary claims JSON with an EdDSA header carrying `kid`.
    fn sign_json(k: &SigningKey, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut h = serde_json::json!({"alg": "EdDSA", "typ": "JWT"});
        if let Some(kid) = kid {
            h["kid"] = kid.into();
        }
        let input = format!(
            "{}.{}",
            B64.encode(h.to_string()),
            B64.encode(claims.to_string())
        );
        format!(
            "{input}.{}",
            B64.encode(k.sign(input.as_bytes()).to_bytes())
        )
    }

    #[test]
    fn a_remembered_token_is_still_checked_for_time_keys_and_bytes() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let v = Verifier::new(one(&k), policy("bkv"));
        let t = mint(&k, &claims("alice", 100));
        assert_eq!(v.verify(50, &t).unwrap().sub, "alice");
        assert_eq!(v.verify(60, &t).unwrap().sub, "alice");
        // Remembered, but expired now.
        assert_eq!(v.verify(100, &t).unwrap_err(), TokenError::Expired);
        // Another token is verified on its own: a forged payload under the remembered
        // token's signature fails.
        let forged_claims = B64.encode(serde_json::to_vec(&claims("mallory", 100)).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(v.verify(50, &forged).unwrap_err(), TokenError::Signature);
        // A token not yet valid is refused and not remembered.
        let mut later = claims("bob", 100);
        later.nbf = Some(70);
        let later = mint(&k, &later);
        assert_eq!(v.verify(50, &later).unwrap_err(), TokenError::NotYetValid);
        assert_eq!(v.verify(80, &later).unwrap().sub, "bob");
        // New keys: what the old key signed no longer verifies, remembered or not.
        v.replace_keys(one(&SigningKey::from_bytes(&[8; 32])));
        assert_eq!(v.verify(50, &t).unwrap_err(), TokenError::Signature);
        // Bounded.
        let v = Verifier::new(one(&k), policy("bkv"));
        for i in 0..RECENT_TOKENS + 10 {
            let t = mint(&k, &claims(&format!("u{i}"), 100));
            v.verify(50, &t).unwrap();
        }
        assert!(v.recent.lock().unwrap().len() <= RECENT_TOKENS);
    }

    #[test]
    fn verify_accepts_good_and_rejects_bad() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let keys = one(&k);
        let p = policy("bkv");
        let t = mint(&k, &claims("alice", 100));
        assert_eq!(verify(&keys, &p, 50, &t).unwrap().sub, "alice");
        assert_eq!(verify(&keys, &p, 100, &t).unwrap_err(), TokenError::Expired);
        assert_eq!(
            verify(&keys, &policy("other"), 50, &t).unwrap_err(),
            TokenError::Audience
        );
        let other = one(&SigningKey::from_bytes(&[8; 32]));
        assert_eq!(
            verify(&other, &p, 50, &t).unwrap_err(),
            TokenError::Signature
        );
        // Swap in claims for another user under the same signature.
        let forged_claims = B64.encode(serde_json::to_vec(&claims("mallory", 100)).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(
            verify(&keys, &p, 50, &forged).unwrap_err(),
            TokenError::Signature
        );
        assert_eq!(
            verify(&keys, &p, 50, "a.b").unwrap_err(),
            TokenError::Format
        );
        assert_eq!(verify(&keys, &p, 50, "").unwrap_err(), TokenError::Format);
        assert_eq!(
            verify(&keys, &p, 50, &"a".repeat(5000)).unwrap_err(),
            TokenError::TooLong
        );
        let bad_sub = mint(&k, &claims("a/b", 100));
        assert!(matches!(
            verify(&keys, &p, 50, &bad_sub),
            Err(TokenError::Subject(_))
        ));
        // alg "none" and an HMAC token signed with the public key as secret are refused.
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none"}"#),
            B64.encode(serde_json::to_vec(&claims("alice", 100)).unwrap())
        );
        assert!(verify(&keys, &p, 50, &none).is_err());
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims("alice", 100),
            &jsonwebtoken::EncodingKey::from_secret(k.verifying_key().as_bytes()),
        )
        .unwrap();
        assert_eq!(
            verify(&keys, &p, 50, &hs).unwrap_err(),
            TokenError::Algorithm
        );
    }

    #[test]
    fn audience_arrays_issuer_leeway_and_lifetime() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let keys = one(&k);
        let p = Policy {
            issuer: Some("https://id.example".into()),
            leeway_secs: 30,
            max_lifetime_secs: 3600,
            ..Policy::new("bkv")
        };
        let c = |extra: serde_json::Value| {
            let mut base = serde_json::json!({"sub": "alice", "aud": ["app", "bkv"], "exp": 1_000, "iss": "https://id.example"});
            for (k, v) in extra.as_object().unwrap() {
                base[k] = v.clone();
            }
            sign_json(&k, None, &base)
        };
        assert_eq!(
            verify(&keys, &p, 500, &c(serde_json::json!({})))
                .unwrap()
                .sub,
            "alice"
        );
        assert_eq!(
            verify(&keys, &p, 500, &c(serde_json::json!({"aud": ["app"]}))).unwrap_err(),
            TokenError::Audience
        );
        assert_eq!(
            verify(
                &keys,
                &p,
                500,
                &c(serde_json::json!({"iss": "https://evil"}))
            )
            .unwrap_err(),
            TokenError::Issuer
        );
        let no_iss = sign_json(
            &k,
            None,
            &serde_json::json!({"sub": "alice", "aud": "bkv", "exp": 1_000}),
        );
        assert_eq!(
            verify(&keys, &p, 500, &no_iss).unwrap_err(),
            TokenError::Claims
        );
        let no_aud = sign_json(
            &k,
            None,
            &serde_json::json!({"sub": "alice", "exp": 1_000, "iss": "https://id.example"}),
        );
        assert_eq!(
            verify(&keys, &p, 500, &no_aud).unwrap_err(),
            TokenError::Claims
        );
        // Expired 20 s ago: within the 30 s leeway; 40 s ago: not.
        assert!(verify(&keys, &p, 1_020, &c(serde_json::json!({}))).is_ok());
        assert_eq!(
            verify(&keys, &p, 1_040, &c(serde_json::json!({}))).unwrap_err(),
            TokenError::Expired
        );
        assert!(verify(&keys, &p, 500, &c(serde_json::json!({"nbf": 520}))).is_ok());
        assert_eq!(
            verify(&keys, &p, 500, &c(serde_json::json!({"nbf": 540}))).unwrap_err(),
            TokenError::NotYetValid
        );
        assert_eq!(
            verify(
                &keys,
                &p,
                500,
                &c(serde_json::json!({"exp": 500 + 3600 + 31}))
            )
            .unwrap_err(),
            TokenError::TooLongLived
        );
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid_and_can_be_replaced() {
        let a = SigningKey::from_bytes(&[1; 32]);
        let b = SigningKey::from_bytes(&[2; 32]);
        let jwk = |k: &SigningKey, kid: &str| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": B64.encode(k.verifying_key().as_bytes())});
        let set = serde_json::json!({"keys": [jwk(&a, "a"), jwk(&b, "b")]}).to_string();
        let v = Verifier::new(KeySet::from_jwks(set.as_bytes()).unwrap(), policy("bkv"));
        let claims = serde_json::json!({"sub": "alice", "aud": "bkv", "exp": 100});
        assert!(v.verify(50, &sign_json(&a, Some("a"), &claims)).is_ok());
        assert!(v.verify(50, &sign_json(&b, Some("b"), &claims)).is_ok());
        assert_eq!(
            v.verify(50, &sign_json(&a, Some("b"), &claims))
                .unwrap_err(),
            TokenError::Signature
        );
        assert_eq!(
            v.verify(50, &sign_json(&a, Some("c"), &claims))
                .unwrap_err(),
            TokenError::UnknownKey
        );
        assert_eq!(
            v.verify(50, &sign_json(&a, None, &claims)).unwrap_err(),
            TokenError::UnknownKey
        );
        // Key a retired: its tokens stop working, b's keep working.
        v.replace_keys(
            KeySet::from_jwks(
                serde_json::json!({"keys": [jwk(&b, "b")]})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap(),
        );
        assert_eq!(
            v.verify(50, &sign_json(&a, Some("a"), &claims))
                .unwrap_err(),
            TokenError::UnknownKey
        );
        assert!(v.verify(50, &sign_json(&b, Some("b"), &claims)).is_ok());
        // Refused sets: symmetric keys, duplicate kids, several keys without kids, garbage.
        let oct = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string();
        assert!(KeySet::from_jwks(oct.as_bytes()).is_err());
        let dup = serde_json::json!({"keys": [jwk(&a, "a"), jwk(&b, "a")]}).to_string();
        assert!(KeySet::from_jwks(dup.as_bytes()).is_err());
        let mut nokid = jwk(&a, "a");
        nokid.as_object_mut().unwrap().remove("kid");
        let two = serde_json::json!({"keys": [nokid.clone(), jwk(&b, "b")]}).to_string();
        assert!(KeySet::from_jwks(two.as_bytes()).is_err());
        assert!(KeySet::from_jwks(b"{").is_err());
        assert!(KeySet::from_jwks(&vec![b' '; MAX_JWKS + 1]).is_err());
        // One key without a kid: tokens without a kid use it.
        let single =
            KeySet::from_jwks(serde_json::json!({"keys": [nokid]}).to_string().as_bytes()).unwrap();
        assert!(verify(&single, &policy("bkv"), 50, &sign_json(&a, None, &claims)).is_ok());
    }

    /// Tokens from a P-256 identity provider verify through its JWKS.
    #[test]
    fn es256_tokens_verify_through_a_jwks() {
        use p256::ecdsa::SigningKey as P256Key;
        let sk = P256Key::from_slice(&[0x42; 32]).unwrap();
        let point = sk.verifying_key().to_encoded_point(false);
        let set = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "p", "alg": "ES256",
            "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap())}]});
        let keys = KeySet::from_jwks(set.to_string().as_bytes()).unwrap();
        let h = B64.encode(r#"{"alg":"ES256","kid":"p"}"#);
        let c = B64.encode(r#"{"sub":"bob","aud":"bkv","exp":100}"#);
        let input = format!("{h}.{c}");
        let sig: p256::ecdsa::Signature =
            p256::ecdsa::signature::Signer::sign(&sk, input.as_bytes());
        let token = format!("{input}.{}", B64.encode(sig.to_bytes()));
        assert_eq!(
            verify(&keys, &policy("bkv"), 50, &token).unwrap().sub,
            "bob"
        );
    }
}
