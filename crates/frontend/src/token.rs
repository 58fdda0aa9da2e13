//! User authentication tokens: compact JWS (JWT) signed with Ed25519
//! (`alg: EdDSA`, RFC 8037). The app's own auth service issues them; the
//! frontend only verifies. Claims: `sub` (the user id the vault record is bound
//! to), `aud`, `exp`, optional `iat`/`nbf`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Longest accepted token.
pub const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token too long")]
    TooLong,
    #[error("token is not a compact JWS")]
    Format,
    #[error("token header is not EdDSA")]
    Algorithm,
    #[error("token signature is invalid")]
    Signature,
    #[error("token claims are malformed")]
    Claims,
    #[error("token is for another audience")]
    Audience,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token subject is not a valid user id: {0}")]
    Subject(&'static str),
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

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

/// Verifies a token and returns its claims.
pub fn verify(
    key: &VerifyingKey,
    audience: &str,
    now: u64,
    token: &str,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Format);
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Format)?;
    if header.alg != "EdDSA" {
        return Err(TokenError::Algorithm);
    }
    let sig_bytes: [u8; 64] = B64
        .decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(TokenError::Format)?;
    let signing_input_len = h.len() + 1 + c.len();
    let signing_input = token.get(..signing_input_len).ok_or(TokenError::Format)?;
    key.verify_strict(signing_input.as_bytes(), &Signature::from_bytes(&sig_bytes))
        .map_err(|_| TokenError::Signature)?;
    let claims: Claims = B64
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Claims)?;
    if claims.aud != audience {
        return Err(TokenError::Audience);
    }
    if now >= claims.exp {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| now < nbf) {
        return Err(TokenError::NotYetValid);
    }
    bkv_wire::validate_user_id(&claims.sub).map_err(TokenError::Subject)?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary tokens are rejected with an error, never a panic.
        #[test]
        fn verify_never_panics_on_garbage(t in "(?s).{0,300}", parts in proptest::collection::vec("[A-Za-z0-9_-]{0,80}", 0..5)) {
            let vk = SigningKey::from_bytes(&[7; 32]).verifying_key();
            prop_assert!(verify(&vk, "bkv", 0, &t).is_err());
            prop_assert!(verify(&vk, "bkv", 0, &parts.join(".")).is_err());
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

    #[test]
    fn verify_accepts_good_and_rejects_bad() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let vk = k.verifying_key();
        let t = mint(&k, &claims("alice", 100));
        assert_eq!(verify(&vk, "bkv", 50, &t).unwrap().sub, "alice");
        assert_eq!(
            verify(&vk, "bkv", 100, &t).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            verify(&vk, "other", 50, &t).unwrap_err(),
            TokenError::Audience
        );
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(
            verify(&other, "bkv", 50, &t).unwrap_err(),
            TokenError::Signature
        );
        // Swap in claims for another user under the same signature.
        let forged_claims = B64.encode(serde_json::to_vec(&claims("mallory", 100)).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(
            verify(&vk, "bkv", 50, &forged).unwrap_err(),
            TokenError::Signature
        );
        assert_eq!(
            verify(&vk, "bkv", 50, "a.b").unwrap_err(),
            TokenError::Format
        );
        assert_eq!(verify(&vk, "bkv", 50, "").unwrap_err(), TokenError::Format);
        assert_eq!(
            verify(&vk, "bkv", 50, &"a".repeat(5000)).unwrap_err(),
            TokenError::TooLong
        );
        let bad_sub = mint(&k, &claims("a/b", 100));
        assert!(matches!(
            verify(&vk, "bkv", 50, &bad_sub),
            Err(TokenError::Subject(_))
        ));
    }
}
