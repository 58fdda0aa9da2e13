//! The native transport: reqwest (its connection pool, TLS roots and timeouts).

use super::{Http, HttpRequest, HttpResponse, Method};
use crate::error::{ClientError, Result};
use futures::future::BoxFuture;
use secrecy::ExposeSecret;

/// The native transport: a reqwest client (its connection pool, TLS roots and timeouts).
#[derive(Clone)]
pub struct ReqwestHttp(pub reqwest::Client);

impl Http for ReqwestHttp {
    fn send(&self, req: HttpRequest) -> BoxFuture<'_, Result<HttpResponse>> {
        Box::pin(async move {
            let method = match req.method {
                Method::Get => reqwest::Method::GET,
                Method::Post => reqwest::Method::POST,
                Method::Delete => reqwest::Method::DELETE,
                Method::Put => reqwest::Method::PUT,
                Method::Head => reqwest::Method::HEAD,
            };
            let mut b = self.0.request(method, &req.url);
            if let Some(t) = &req.token {
                b = b.bearer_auth(t.expose_secret());
            }
            for (name, value) in &req.headers {
                b = b.header(*name, value);
            }
            if let Some((body, content_type)) = &req.body {
                b = b
                    .header(reqwest::header::CONTENT_TYPE, *content_type)
                    .body(body.clone());
            }
            let resp = match req.idempotent {
                true => send_resending(b).await?,
                false => b.send().await.map_err(http_err)?,
            };
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            // An error body is read only so far (its start says what happened): a longer one
            // (a proxy's page) is cut, not an error of its own.
            let body = match (200..300).contains(&status) {
                true => read_limited(resp, req.limit).await?,
                false => read_prefix(resp, req.limit.min(MAX_ERROR_BODY)).await,
            };
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        })
    }
}

/// Largest error body read from the frontend.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Reads a reqwest response's body, refusing more than `limit` bytes: a hostile frontend
/// cannot make the client buffer without bound.
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ClientError::Protocol(format!(
            "response larger than {limit} bytes"
        )));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http_err)? {
        if out.len() + chunk.len() > limit {
            return Err(ClientError::Protocol(format!(
                "response larger than {limit} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// At most the first `limit` bytes of a body; whatever fails to arrive is left out.
async fn read_prefix(mut resp: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        if out.len() >= limit {
            break;
        }
    }
    out
}

fn http_err(e: reqwest::Error) -> ClientError {
    ClientError::Unavailable(format!("frontend unreachable: {e}"))
}

/// Sends a request, resending the same bytes when the connection failed before an answer
/// arrived (a kept-alive connection the frontend had just closed, a reset). Only for requests
/// marked idempotent: a session open is harmless to repeat, and a resent session message is
/// answered from the node's record of its reply, never processed twice.
async fn send_resending(req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
    let mut attempt = 0;
    loop {
        let Some(this) = req.try_clone() else {
            return req.send().await.map_err(http_err);
        };
        match this.send().await {
            Ok(resp) => return Ok(resp),
            Err(e) if attempt < 2 && (e.is_request() || e.is_connect()) && !e.is_timeout() => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "resending after a connection failure");
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(http_err(e)),
        }
    }
}
