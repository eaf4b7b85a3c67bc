//! Forwarding one request: strip, inject, send, retry once on a rejected credential, stream back.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use serde_json::json;

use super::headers;
use super::upstream::{PooledBody, SendError, UpstreamBody};
use super::{BoxError, Provider, ProxyBody, State};
use crate::cache::CachedToken;
use crate::config::ErrorStyle;
use crate::error::{Error, ErrorKind};
use crate::secret::Secret;

/// A full JSON body.
fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync()
}

/// A JSON error in the provider's shape.
#[cold]
#[inline(never)]
pub(crate) fn error_response(
    style: ErrorStyle,
    status: u16,
    code: &str,
    message: &str,
) -> Response<ProxyBody> {
    let body = match style {
        ErrorStyle::Openai => json!({
            "error": { "message": message, "type": "tokenrelay_error", "code": code }
        }),
        ErrorStyle::Anthropic => json!({
            "type": "error",
            "error": {
                "type": if status == 401 { "authentication_error" } else { "api_error" },
                "message": message,
            }
        }),
    };
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert("x-tokenrelay-error", HeaderValue::from_static("1"));
    resp
}

/// A JSON error not tied to a provider (routing).
#[cold]
#[inline(never)]
pub(crate) fn plain_error(status: u16, message: &str) -> Response<ProxyBody> {
    error_response(
        ErrorStyle::Openai,
        status,
        "tokenrelay",
        &format!("tokenrelay: {message}"),
    )
}

/// Whether the request carries the local key (constant-time comparison).
pub(crate) fn has_local_key(h: &HeaderMap, key: &Secret) -> bool {
    let want = key.expose().as_bytes();
    let candidates = [
        h.get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            }),
        h.get("api-key").and_then(|v| v.to_str().ok()),
        h.get("x-api-key").and_then(|v| v.to_str().ok()),
    ];
    let mut ok = false;
    for c in candidates.into_iter().flatten() {
        ok |= constant_time_eq(c.trim().as_bytes(), want);
    }
    ok
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A copy of a request head for a second attempt (`Parts` is not `Clone`: extensions are
/// not copied, and none are set on upstream requests).
fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

/// The request body: kept in memory (replayable) or streamed.
enum Body {
    Kept(Bytes),
    Stream(Incoming),
}

/// Reads a body of at most `limit` bytes whole. A body that came in one frame (a small JSON
/// request usually does) is kept as it is, without a copy. Trailers are dropped.
async fn read_whole(mut body: Incoming, limit: usize) -> Result<Bytes, BoxError> {
    let mut only: Option<Bytes> = None; // the one frame so far
    let mut joined = BytesMut::new(); // every frame, once there are two
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(format!("it is larger than {limit} bytes").into());
        }
        match only.take() {
            None if joined.is_empty() => only = Some(data),
            None => joined.extend_from_slice(&data),
            Some(first) => {
                joined.reserve(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(only.unwrap_or_else(|| joined.freeze()))
}

/// The injected header value for this token, computed once per token generation.
fn header_value(p: &Provider, lease: &CachedToken) -> Result<HeaderValue, Error> {
    if let Some(cached) = p.header_value.load().as_ref() {
        if cached.0 == lease.generation() {
            return Ok(cached.1.clone());
        }
    }
    new_header_value(p, lease)
}

/// Builds and caches the header value for a token generation not seen yet.
#[cold]
#[inline(never)]
fn new_header_value(p: &Provider, lease: &CachedToken) -> Result<HeaderValue, Error> {
    let text = p.inject.header_value(lease.token().secret().expose());
    let mut v = HeaderValue::from_str(&text).map_err(|_| {
        Error::new(
            format!("provider {}", p.name),
            ErrorKind::InvalidResponse("the token cannot be sent as a header value".into()),
        )
    })?;
    v.set_sensitive(true);
    p.header_value
        .store(Some(Arc::new((lease.generation(), v.clone()))));
    Ok(v)
}

#[cold]
#[inline(never)]
fn upstream_error(p: &Provider, e: &SendError) -> (u16, &'static str, String) {
    let mut cause = String::new();
    let mut timed_out = false;
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        cause = s.to_string();
        timed_out |= s
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        src = s.source();
    }
    if cause.is_empty() {
        cause = e.to_string();
    }
    let host = p.authority.as_str();
    let name = &p.name;
    if timed_out {
        (
            504,
            "upstream_timeout",
            format!("tokenrelay: provider {name}: upstream {host} timed out: {cause}"),
        )
    } else if matches!(e, SendError::Connect(_)) {
        (
            502,
            "upstream_unreachable",
            format!("tokenrelay: provider {name}: upstream {host} unreachable: {cause}"),
        )
    } else {
        (
            502,
            "upstream_failed",
            format!("tokenrelay: provider {name}: upstream {host} failed: {cause}"),
        )
    }
}

/// Refuses a request the proxy cannot forward as it is: counted by status, answered in the
/// provider's error shape with a message naming the provider.
#[cold]
#[inline(never)]
fn reject(p: &Provider, status: u16, code: &str, detail: &str) -> Response<ProxyBody> {
    p.metrics.record_status(status);
    error_response(
        p.style,
        status,
        code,
        &format!("tokenrelay: provider {}: {detail}", p.name),
    )
}

#[cold]
#[inline(never)]
fn token_error(p: &Provider, e: &Error) -> Response<ProxyBody> {
    p.metrics
        .proxy_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let status = e.http_status();
    p.metrics.record_status(status);
    tracing::warn!(provider = %p.name, error = %e, "no token for request");
    error_response(
        p.style,
        status,
        "token_unavailable",
        &format!("tokenrelay: provider {}: no valid token: {e}", p.name),
    )
}

/// Signs the request with SigV4 using the token's AWS credentials; returns the headers to add,
/// or the error response to send (built only on the failure path, so its size does not matter).
#[inline(never)]
#[allow(clippy::result_large_err)]
fn sigv4_headers(
    p: &Provider,
    (region, service): &(String, String),
    method: &http::Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Option<&Bytes>,
    lease: &CachedToken,
) -> Result<Vec<(http::HeaderName, HeaderValue)>, Response<ProxyBody>> {
    let Some(body) = body else {
        return Err(reject(
            p,
            413,
            "request_too_large",
            "a body larger than the replay limit cannot be SigV4-signed (raise --replay-limit)",
        ));
    };
    let Some(creds) = lease.token().aws() else {
        let e = Error::new(
            format!("provider {}", p.name),
            ErrorKind::Config("inject = \"aws-sigv4\" needs a source that gives AWS credentials (aws-web-identity, or a command printing credential_process JSON)".into()),
        );
        return Err(token_error(p, &e));
    };
    crate::source::sign_request(
        method,
        uri,
        headers,
        body,
        creds,
        region,
        service,
        std::time::SystemTime::now(),
    )
    .map_err(|e| token_error(p, &e))
}

/// Sends one attempt upstream with the credential of `lease` injected.
async fn send(
    p: &Provider,
    worker: usize,
    mut parts: http::request::Parts,
    body: UpstreamBody,
    kept: Option<&Bytes>,
    lease: &CachedToken,
) -> Result<Response<PooledBody>, Response<ProxyBody>> {
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    headers.insert(header::HOST, p.host_header.clone());
    for (k, v) in &p.extra_headers {
        headers.insert(k.clone(), v.clone());
    }
    if let Some(auth) = &p.proxy_auth {
        headers.insert(header::PROXY_AUTHORIZATION, auth.clone());
    }
    if let Some(sig) = &p.sigv4 {
        for (k, v) in sigv4_headers(p, sig, &parts.method, &parts.uri, headers, kept, lease)? {
            headers.insert(k, v);
        }
    } else {
        let value = header_value(p, lease).map_err(|e| token_error(p, &e))?;
        headers.insert(p.inject_header.clone(), value);
    }
    let client = &p.clients[worker % p.clients.len()];
    client
        .send(Request::from_parts(parts, body))
        .await
        .map_err(|e| upstream_failed(p, &e))
}

/// The answer to a request the upstream did not answer: counted, logged once, in the
/// provider's error shape.
#[cold]
#[inline(never)]
fn upstream_failed(p: &Provider, e: &SendError) -> Response<ProxyBody> {
    let (status, code, msg) = upstream_error(p, e);
    p.metrics
        .proxy_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    p.metrics.record_status(status);
    tracing::warn!(provider = %p.name, status, "{msg}");
    error_response(p.style, status, code, &msg)
}

/// The second and last attempt after the upstream answered `rejected` to the token of `lease`
/// (already invalidated): with a fresh token and the kept body.
async fn retry(
    p: &Provider,
    worker: usize,
    rejected: u16,
    lease: &CachedToken,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<Response<PooledBody>, Response<ProxyBody>> {
    p.metrics
        .retries
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let fresh = p.entry.get().await.map_err(|e| token_error(p, &e))?;
    tracing::info!(
        provider = %p.name,
        status = rejected,
        old_generation = lease.generation(),
        new_generation = fresh.generation(),
        "upstream rejected the token; retrying once with a fresh one"
    );
    send(
        p,
        worker,
        parts,
        Either::Left(Full::new(body.clone())),
        Some(&body),
        &fresh,
    )
    .await
}

/// The upstream URI for a request path (`strip` bytes of routing prefix removed) and query.
fn upstream_uri(p: &Provider, uri: &http::Uri, strip: usize) -> Option<http::Uri> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(p.scheme.clone());
    parts.authority = Some(p.authority.clone());
    if strip == 0 && p.base_path.is_empty() && uri.path().starts_with('/') {
        // Nothing to rewrite: the client's path and query, already parsed, go as they are.
        parts.path_and_query = uri.path_and_query().cloned();
        return http::Uri::from_parts(parts).ok();
    }
    let rest = uri.path().get(strip..).unwrap_or("");
    let query = uri.query();
    let mut pq = String::with_capacity(
        p.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1,
    );
    pq.push_str(&p.base_path);
    if !rest.starts_with('/') {
        pq.push('/');
    }
    pq.push_str(rest);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    parts.path_and_query = Some(http::uri::PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok()?);
    http::Uri::from_parts(parts).ok()
}

/// Forwards `req` to `p`, `strip` bytes of path prefix removed.
pub(crate) async fn forward(
    state: &State,
    p: &Provider,
    req: Request<Incoming>,
    strip: usize,
    worker: usize,
) -> Response<ProxyBody> {
    let started = tokio::time::Instant::now();
    p.metrics
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (mut parts, body) = req.into_parts();
    parts.uri = match upstream_uri(p, &parts.uri, strip) {
        Some(u) => u,
        None => return reject(p, 400, "bad_path", "the request path cannot be forwarded"),
    };
    headers::strip_request(&mut parts.headers, &p.inject_header);

    // Keep small bodies so a rejected credential can be retried.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = if hyper::body::Body::is_end_stream(&body) {
        Body::Kept(Bytes::new())
    } else if declared.is_some_and(|n| n <= state.replay_limit) {
        match read_whole(body, state.replay_limit).await {
            Ok(b) => Body::Kept(b),
            Err(e) => {
                return reject(
                    p,
                    400,
                    "request_body",
                    &format!("cannot read the request body: {e}"),
                )
            }
        }
    } else {
        Body::Stream(body)
    };

    let lease = match p.entry.try_get_with_min_remaining(p.min_remaining) {
        Some(l) => l,
        // Boxed: waiting for an acquisition is rare, and its future is large.
        None => match Box::pin(p.entry.get_with_min_remaining(p.min_remaining)).await {
            Ok(l) => l,
            Err(e) => return token_error(p, &e),
        },
    };
    let (first_body, replay) = match body {
        Body::Kept(b) => (Either::Left(Full::new(b.clone())), Some(b)),
        Body::Stream(s) => (Either::Right(s), None),
    };
    let retry_parts = replay.as_ref().map(|_| clone_parts(&parts));
    let mut resp = match send(p, worker, parts, first_body, replay.as_ref(), &lease).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    if p.retry_on.contains(&resp.status().as_u16()) {
        let rejected = resp.status().as_u16();
        p.entry.invalidate(lease.generation());
        match (replay, retry_parts) {
            (Some(bytes), Some(again)) => {
                drop(resp);
                // Boxed: a second send in this future's state would double its size.
                resp = match Box::pin(retry(p, worker, rejected, &lease, again, bytes)).await {
                    Ok(r) => r,
                    Err(e) => return e,
                };
            }
            _ => log_not_replayed(p, rejected),
        }
    }
    let status = resp.status().as_u16();
    p.metrics.record_status(status);
    p.metrics.record_latency(started.elapsed());
    log_forwarded(p, status, started);
    let mut out = resp;
    headers::strip_hop_by_hop(out.headers_mut());
    out.map(|b| {
        let spawned = !b.is_driven_inline();
        super::coalesce::Coalesce::new(b, spawned)
            .map_err(|e| -> BoxError { Box::new(e) })
            .boxed_unsync()
    })
}

// The per-request log lines live out of line: a `tracing` event expands to a few hundred
// bytes of code, which would sit in the middle of the hot path even while disabled.

#[cold]
#[inline(never)]
fn log_not_replayed(p: &Provider, rejected: u16) {
    tracing::info!(
        provider = %p.name,
        status = rejected,
        "upstream rejected the token; body was streamed so the status is passed through (the next request gets a fresh token)"
    );
}

#[inline(never)]
fn log_forwarded(p: &Provider, status: u16, started: tokio::time::Instant) {
    tracing::debug!(provider = %p.name, status, elapsed_us = started.elapsed().as_micros() as u64, "forwarded");
}
