//! Forwarding one request: strip, inject, send, retry once on a rejected credential, stream back.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;

use super::headers;
use super::metrics::Counters;
use super::upstream::{PooledBody, SendError, UpstreamBody};
use super::{BoxError, Lane, Provider, ProxyBody};
use crate::config::ErrorStyle;
use crate::error::Error;
use crate::inject::{InjectError, Transport};
use crate::secret::Secret;

/// A full JSON body.
fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync()
}

/// An empty body.
pub(crate) fn empty_body() -> ProxyBody {
    full(Bytes::new())
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
    let host = p.upstream.authority().as_str();
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
fn reject(
    p: &Provider,
    m: &Counters,
    status: u16,
    code: &str,
    detail: &str,
) -> Response<ProxyBody> {
    m.record_status(status);
    error_response(
        p.style,
        status,
        code,
        &format!("tokenrelay: provider {}: {detail}", p.name),
    )
}

#[cold]
#[inline(never)]
fn token_error(p: &Provider, m: &Counters, e: &Error) -> Response<ProxyBody> {
    m.proxy_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let status = e.http_status().as_u16();
    m.record_status(status);
    tracing::warn!(provider = %p.name, error = %e, "no token for request");
    error_response(
        p.style,
        status,
        "token_unavailable",
        &format!("tokenrelay: provider {}: no valid token: {e}", p.name),
    )
}

/// Sets what every upstream request carries besides what the injector sets: HTTP/1.1
/// (hyper picks HTTP/2 by the connection), the upstream's `Host`, and `Proxy-Authorization`
/// for a plain-HTTP upstream behind a forward proxy.
fn upstream_head(p: &Provider, lane: &Lane, parts: &mut http::request::Parts) {
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    headers.insert(header::HOST, lane.client.host().clone());
    if let Some(auth) = &p.proxy_auth {
        headers.insert(header::PROXY_AUTHORIZATION, auth.clone());
    }
}

/// Why one upstream attempt got no response.
enum AttemptError {
    Send(SendError),
    TimedOut,
}

/// One upstream attempt on this worker's client, bounded by `upstream_timeout`.
struct Attempt<'a> {
    client: &'a super::upstream::UpstreamClient,
    timeout: std::time::Duration,
}

impl Transport<Incoming> for Attempt<'_> {
    type Body = PooledBody;
    type Error = AttemptError;
    async fn send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, AttemptError> {
        match tokio::time::timeout(self.timeout, self.client.send(req)).await {
            Ok(sent) => sent.map_err(AttemptError::Send),
            Err(_) => Err(AttemptError::TimedOut),
        }
    }
}

/// The answer to a request the injector could not send.
#[cold]
#[inline(never)]
fn not_sent(p: &Provider, m: &Counters, e: InjectError<AttemptError>) -> Response<ProxyBody> {
    match e {
        InjectError::Token(e) => token_error(p, m, &e),
        InjectError::Body(e) => reject(
            p,
            m,
            400,
            "request_body",
            &format!("cannot read the request body: {e}"),
        ),
        InjectError::TooLargeToSign { .. } => reject(
            p,
            m,
            413,
            "request_too_large",
            "a body larger than the replay limit cannot be SigV4-signed (raise --replay-limit)",
        ),
        InjectError::Service(AttemptError::Send(e)) => upstream_failed(p, m, &e),
        InjectError::Service(AttemptError::TimedOut) => upstream_timed_out(p, m),
    }
}

/// The answer to a request whose upstream sent no response headers within `upstream_timeout`.
#[cold]
#[inline(never)]
fn upstream_timed_out(p: &Provider, m: &Counters) -> Response<ProxyBody> {
    m.proxy_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    m.record_status(504);
    let msg = format!(
        "tokenrelay: provider {}: upstream {} sent no response within {} (upstream_timeout)",
        p.name,
        p.upstream.authority(),
        humantime::format_duration(p.upstream_timeout)
    );
    tracing::warn!(provider = %p.name, status = 504, "{msg}");
    error_response(p.style, 504, "upstream_timeout", &msg)
}

/// The answer to a request the upstream did not answer: counted, logged once, in the
/// provider's error shape.
#[cold]
#[inline(never)]
fn upstream_failed(p: &Provider, m: &Counters, e: &SendError) -> Response<ProxyBody> {
    let (status, code, msg) = upstream_error(p, e);
    m.proxy_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    m.record_status(status);
    tracing::warn!(provider = %p.name, status, "{msg}");
    error_response(p.style, status, code, &msg)
}

/// The request target upstream, in origin form: the request's path (`strip` bytes of routing
/// prefix removed, the upstream's base path in front) and query.
fn upstream_target(p: &Provider, uri: http::Uri, strip: usize) -> Option<http::Uri> {
    if strip == 0 && p.upstream.base_path().is_empty() && uri.path().starts_with('/') {
        // Nothing to rewrite: the client's path and query, already parsed, go as they are.
        if uri.scheme().is_none() && uri.authority().is_none() {
            return Some(uri);
        }
        return Some(super::upstream::origin_form(&uri));
    }
    let rest = uri.path().get(strip..).unwrap_or("");
    let query = uri.query();
    let mut pq = String::with_capacity(
        p.upstream.base_path().len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1,
    );
    pq.push_str(p.upstream.base_path());
    if !rest.starts_with('/') {
        pq.push('/');
    }
    pq.push_str(rest);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    http::uri::PathAndQuery::from_maybe_shared(Bytes::from(pq))
        .ok()
        .map(http::Uri::from)
}

/// Forwards `req` to `p`, `strip` bytes of path prefix removed, on worker `worker`.
pub(crate) async fn forward(
    p: &Provider,
    req: Request<Incoming>,
    strip: usize,
    worker: usize,
) -> Response<ProxyBody> {
    let started = tokio::time::Instant::now();
    let (lane, m) = (p.lane(worker), p.metrics.shard(worker));
    m.request();
    let (mut parts, body) = req.into_parts();
    parts.uri = match upstream_target(p, std::mem::take(&mut parts.uri), strip) {
        Some(u) => u,
        None => {
            return reject(
                p,
                m,
                400,
                "bad_path",
                "the request path cannot be forwarded",
            )
        }
    };
    headers::strip_request(&mut parts.headers);
    upstream_head(p, lane, &mut parts);
    let mut attempt = Attempt {
        client: &lane.client,
        timeout: p.upstream_timeout,
    };
    let req = Request::from_parts(parts, body);
    let resp = match lane.injector.send(&mut attempt, req).await {
        Ok(sent) => {
            if sent.retried.is_some() {
                m.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            sent.response
        }
        Err(e) => return not_sent(p, m, e),
    };
    let status = resp.status().as_u16();
    m.record_status(status);
    m.record_latency(started.elapsed());
    log_forwarded(p, status, started);
    let mut out = resp;
    headers::strip_response(out.headers_mut());
    out.map(|b| {
        let spawned = !b.is_driven_inline();
        super::coalesce::Coalesce::new(b, spawned)
            .map_err(|e| -> BoxError { Box::new(e) })
            .boxed_unsync()
    })
}

// The per-request log lines live out of line: a `tracing` event expands to a few hundred
// bytes of code, which would sit in the middle of the hot path even while disabled.

#[inline(never)]
fn log_forwarded(p: &Provider, status: u16, started: tokio::time::Instant) {
    tracing::debug!(provider = %p.name, status, elapsed_us = started.elapsed().as_micros() as u64, "forwarded");
}
