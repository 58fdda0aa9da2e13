//! Every frontend endpoint and the node link answer malformed, oversized,
//! unauthenticated and replayed input with a clear error, and keep serving.

use bkv_testkit::system::*;
use std::io::{Read, Write};

fn dev_token(client: &reqwest::blocking_like::Client, url: &str, user: &str) -> String {
    let req = bkv_api::frontend::DevTokenRequest {
        user: user.to_owned(),
    };
    let (_, body) = client.post_json(
        &format!("{url}/v1/dev/token"),
        &serde_json::to_string(&req).unwrap(),
    );
    let t: bkv_api::frontend::DevTokenResponse = serde_json::from_value(body).unwrap();
    t.token
}

/// A tiny blocking HTTP/1.1 client over std TcpStream, so the test controls
/// every byte (including ones a real client library would refuse to send).
mod reqwest {
    pub mod blocking_like {
        use std::io::{Read, Write};
        pub struct Client;
        impl Client {
            pub fn raw(&self, url: &str, request: &[u8]) -> (u16, Vec<u8>) {
                let addr = url.trim_start_matches("http://");
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                    .unwrap();
                s.write_all(request).unwrap();
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                let text = String::from_utf8_lossy(&buf).to_string();
                let status = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
                let body = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    Some(i) => buf[i + 4..].to_vec(),
                    None => Vec::new(),
                };
                (status, body)
            }
            pub fn req(
                &self,
                url: &str,
                method: &str,
                path: &str,
                headers: &[(&str, &str)],
                body: &[u8],
            ) -> (u16, Vec<u8>) {
                let host = url.trim_start_matches("http://");
                let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    r.push_str(&format!("{k}: {v}\r\n"));
                }
                r.push_str("\r\n");
                let mut bytes = r.into_bytes();
                bytes.extend_from_slice(body);
                self.raw(url, &bytes)
            }
            pub fn post_json(&self, url: &str, body: &str) -> (u16, serde_json::Value) {
                let (base, path) = url.split_at(url.find("/v1").unwrap());
                let (s, b) = self.req(
                    base,
                    "POST",
                    path,
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                );
                (
                    s,
                    serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
                )
            }
        }
    }
}

fn error_code(body: &[u8]) -> String {
    let v: bkv_api::auditor::ErrorBody = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not an error body: {}", String::from_utf8_lossy(body)));
    assert!(!v.message.is_empty(), "no message in {v:?}");
    v.error
}

#[test]
fn malformed_input_gets_clear_errors_and_nothing_is_lost() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("f");
    std::fs::write(&file, b"precious").unwrap();
    let pw = "pw-for-endpoints\n";
    let o = dev.bkv(
        &[
            "backup",
            "create",
            "--user",
            "alice",
            "--password-stdin",
            file.to_str().unwrap(),
        ],
        pw,
    );
    assert!(o.status.success(), "{}", text(&o));

    let c = reqwest::blocking_like::Client;
    let url = dev.frontend_url.clone();
    let token = dev_token(&c, &url, "alice");
    let auth = format!("Bearer {token}");
    let a = [("Authorization", auth.as_str())];

    // Authentication.
    let (s, b) = c.req(&url, "POST", "/v1/sessions", &[], b"x");
    assert_eq!((s, error_code(&b).as_str()), (401, "unauthorized"));
    for bad in [
        "Bearer",
        "Bearer a.b.c",
        "Basic Zm9vOmJhcg==",
        &format!("Bearer {}x", token),
    ] {
        let (s, b) = c.req(
            &url,
            "POST",
            "/v1/sessions",
            &[("Authorization", bad)],
            b"x",
        );
        assert_eq!(s, 401, "{bad}");
        assert_eq!(error_code(&b), "unauthorized");
    }
    let long = format!("Bearer {}", "a".repeat(5000));
    let (s, _) = c.req(
        &url,
        "POST",
        "/v1/sessions",
        &[("Authorization", &long)],
        b"x",
    );
    assert_eq!(s, 401);

    // Sessions: garbage handshake, oversized body, bad and unknown ids.
    let (s, b) = c.req(&url, "POST", "/v1/sessions", &a, &[0u8; 100]);
    assert_eq!((s, error_code(&b).as_str()), (400, "handshake_failed"));
    let (s, b) = c.req(&url, "POST", "/v1/sessions", &a, b"");
    assert_eq!((s, error_code(&b).as_str()), (400, "handshake_failed"));
    let (s, _) = c.req(&url, "POST", "/v1/sessions", &a, &vec![0u8; 70_000]);
    assert_eq!(s, 413);
    for id in [
        "x",
        "0.zz",
        "9.00112233445566778899aabbccddeeff",
        "-1.00",
        &"0.".repeat(100),
    ] {
        let (s, b) = c.req(&url, "POST", &format!("/v1/sessions/{id}"), &a, b"abc");
        assert_eq!(
            (s, error_code(&b).as_str()),
            (400, "bad_session_id"),
            "{id}"
        );
    }
    let (s, b) = c.req(
        &url,
        "POST",
        "/v1/sessions/0.00112233445566778899aabbccddeeff",
        &a,
        b"abc",
    );
    assert_eq!((s, error_code(&b).as_str()), (404, "unknown_session"));
    // Sessions end only by an encrypted in-session Close: no HTTP verb.
    let (s, _) = c.req(&url, "DELETE", "/v1/sessions/0.zz", &a, b"");
    assert_eq!(s, 405);
    let (s, _) = c.req(&url, "GET", "/v1/nothing", &a, b"");
    assert_eq!(s, 404);
    let (s, _) = c.req(&url, "PUT", "/v1/sessions", &a, b"");
    assert_eq!(s, 405);

    // Dev token endpoint.
    for body in ["", "{", "{\"user\":5}", "{\"user\":\"a/b\"}", "[1,2]"] {
        let (s, _) = c.post_json(&format!("{url}/v1/dev/token"), body);
        assert_eq!(s, 400, "{body}");
    }
    // Passkey relying party: no token, garbage bodies, unknown or foreign
    // ceremonies, unknown credentials.
    let (s, _) = c.req(&url, "POST", "/v1/passkeys/registrations", &[], b"");
    assert_eq!(s, 401);
    let (s, b) = c.req(&url, "POST", "/v1/passkeys/registrations", &a, b"");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let started: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let ceremony = started["ceremony"].as_str().unwrap().to_owned();
    for body in [&b""[..], b"{", b"{\"credential\":5}", b"[1]"] {
        let path = format!("/v1/passkeys/registrations/{ceremony}");
        let (s, b) = c.req(&url, "POST", &path, &a, body);
        assert_eq!(s, 400, "{}", String::from_utf8_lossy(&b));
    }
    let bob = format!("Bearer {}", dev_token(&c, &url, "bob"));
    let fake = serde_json::json!({"credential": {"id": "AAAA", "rawId": "AAAA", "type": "public-key",
        "response": {"attestationObject": "AAAA", "clientDataJSON": "AAAA"}, "extensions": {}}});
    let fake = serde_json::to_vec(&fake).unwrap();
    let path = format!("/v1/passkeys/registrations/{ceremony}");
    let (s, b) = c.req(
        &url,
        "POST",
        &path,
        &[("Authorization", bob.as_str())],
        &fake,
    );
    assert_eq!(error_code(&b), "unknown_ceremony", "{s}");
    let (s, b) = c.req(&url, "POST", &path, &a, &fake);
    assert_eq!((s, error_code(&b).as_str()), (401, "passkey_rejected"));
    let (s, b) = c.req(&url, "POST", &path, &a, &fake);
    assert_eq!((s, error_code(&b).as_str()), (404, "unknown_ceremony"));
    for body in [&b"{}"[..], b"{\"credential_id\":\"!!\"}"] {
        let (s, _) = c.req(&url, "POST", "/v1/passkeys/assertions", &a, body);
        assert_eq!(s, 400);
    }
    let (s, b) = c.req(
        &url,
        "POST",
        "/v1/passkeys/assertions",
        &a,
        b"{\"credential_id\":\"AAAA\"}",
    );
    assert_eq!((s, error_code(&b).as_str()), (404, "unknown_passkey"));
    // Deleting needs a grant (proof of a protector), whatever the id.
    let (s, b) = c.req(&url, "DELETE", "/v1/passkeys/AAAA", &a, b"");
    assert_eq!((s, error_code(&b).as_str()), (403, "protector_required"));
    let (s, b) = c.req(&url, "GET", "/v1/passkeys", &a, b"");
    assert_eq!(s, 200);
    assert_eq!(b, br#"{"passkeys":[]}"#);

    // Not HTTP at all.
    let (s, _) = c.raw(&url, b"GARBAGE\r\n\r\n");
    assert_eq!(s, 400);

    // The node link: oversized frame, truncated frame, random bytes, bad frames.
    let node = dev.node_addr();
    for junk in [
        vec![0xff, 0xff, 0xff, 0xff],
        vec![0, 0, 0, 10, 1, 2],
        vec![0, 0, 0, 3, 9, 9, 9],
        (0..5000u32).map(|i| (i * 31) as u8).collect::<Vec<u8>>(),
    ] {
        let mut s = std::net::TcpStream::connect(&node).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(&junk).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }

    // Everything still works and nothing was counted or lost.
    let o = dev.bkv(&["backup", "status", "--user", "alice", "--json"], "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["record"]["Active"]["attempts"], 0, "{}", text(&o));
    let out = t.path().join("out");
    let o = dev.bkv(
        &[
            "backup",
            "restore",
            "--user",
            "alice",
            "--password-stdin",
            "--out",
            out.to_str().unwrap(),
        ],
        pw,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let (s, _) = c.req(&url, "GET", "/v1/health", &[], b"");
    assert_eq!(s, 200);
}
