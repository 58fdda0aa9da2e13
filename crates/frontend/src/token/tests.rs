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
    let sig: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&sk, input.as_bytes());
    let token = format!("{input}.{}", B64.encode(sig.to_bytes()));
    assert_eq!(
        verify(&keys, &policy("bkv"), 50, &token).unwrap().sub,
        "bob"
    );
}
