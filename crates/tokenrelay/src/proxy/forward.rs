//! Forwarding one request: strip, inject, send, retry once on a rejected credential, stream back.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use serde_json::json;

use super::headers;
use super::metrics::Counters;
use super::upstream::{PooledBody, SendError, UpstreamBody};
use super::{BoxError, Lane, Provider, ProxyBody, State};
use crate::cache::Invalidation;
use crate::config::ErrorStyle;
use crate::error::{Error, ErrorKind};
use crate::secret::Secret;
use crate::token::Token;

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

/// How a request is authorised upstream.
enum Credential {
    /// The provider's injected header, with this value.
    Header(HeaderValue),
    /// SigV4 signature headers for this request.
    Signed(Vec<(http::HeaderName, HeaderValue)>),
}

/// The credential for a request with `token` (of `generation`): the injected header value,
/// built once per token generation by each worker, or the request's SigV4 signature. `parts`
/// carries every header but the credential; `kept` is the kept body.
#[allow(clippy::result_large_err)]
fn credential(
    p: &Provider,
    lane: &Lane,
    m: &Counters,
    (token, generation): (&Token, u64),
    parts: &http::request::Parts,
    kept: Option<&Bytes>,
) -> Result<Credential, Response<ProxyBody>> {
    if let Some(sig) = &p.sigv4 {
        return sigv4_headers(p, m, sig, parts, kept, token).map(Credential::Signed);
    }
    let mut slot = lane
        .header_value
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((g, v)) = slot.as_ref() {
        if *g == generation {
            return Ok(Credential::Header(v.clone()));
        }
    }
    let v = new_header_value(p, token).map_err(|e| token_error(p, m, &e))?;
    *slot = Some((generation, v.clone()));
    Ok(Credential::Header(v))
}

/// Builds the header value for a token generation this worker has not used yet.
#[cold]
#[inline(never)]
fn new_header_value(p: &Provider, token: &Token) -> Result<HeaderValue, Error> {
    let text = p.inject.header_value(token.secret().expose());
    let mut v = HeaderValue::from_str(&text).map_err(|_| {
        Error::new(
            format!("provider {}", p.name),
            ErrorKind::InvalidResponse("the token cannot be sent as a header value".into()),
        )
    })?;
    v.set_sensitive(true);
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
    let status = e.http_status();
    m.record_status(status);
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
    m: &Counters,
    (region, service): &(String, String),
    parts: &http::request::Parts,
    body: Option<&Bytes>,
    token: &Token,
) -> Result<Vec<(http::HeaderName, HeaderValue)>, Response<ProxyBody>> {
    let Some(body) = body else {
        return Err(reject(
            p,
            m,
            413,
            "request_too_large",
            "a body larger than the replay limit cannot be SigV4-signed (raise --replay-limit)",
        ));
    };
    let Some(creds) = token.aws() else {
        let e = Error::new(
            format!("provider {}", p.name),
            ErrorKind::Config("inject = \"aws-sigv4\" needs a source that gives AWS credentials (aws-web-identity, or a command printing credential_process JSON)".into()),
        );
        return Err(token_error(p, m, &e));
    };
    // The signature covers the absolute URI the upstream sees.
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(p.scheme.clone());
    uri.authority = Some(p.authority.clone());
    uri.path_and_query = parts.uri.path_and_query().cloned();
    let uri = http::Uri::from_parts(uri).map_err(|e| {
        reject(
            p,
            m,
            400,
            "bad_path",
            &format!("the request path cannot be signed: {e}"),
        )
    })?;
    crate::source::sign_request(
        &parts.method,
        &uri,
        &parts.headers,
        body,
        creds,
        region,
        service,
        std::time::SystemTime::now(),
    )
    .map_err(|e| token_error(p, m, &e))
}

/// Sets what every upstream request carries besides the credential: HTTP/1.1 (hyper picks
/// HTTP/2 by the connection), the upstream's `Host`, the configured extra headers, and
/// `Proxy-Authorization` for a plain-HTTP upstream behind a forward proxy.
fn upstream_head(p: &Provider, lane: &Lane, parts: &mut http::request::Parts) {
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    headers.insert(header::HOST, lane.client.host().clone());
    for (k, v) in &p.extra_headers {
        headers.insert(k.clone(), v.clone());
    }
    if p.inject == crate::config::Inject::AnthropicOAuth {
        headers::merge_anthropic_beta(headers, crate::source::anthropic::OAUTH_BETA);
    }
    if let Some(auth) = &p.proxy_auth {
        headers.insert(header::PROXY_AUTHORIZATION, auth.clone());
    }
}

/// Sends one attempt upstream with `credential` added to `parts`.
async fn send(
    p: &Provider,
    lane: &Lane,
    m: &Counters,
    mut parts: http::request::Parts,
    body: UpstreamBody,
    credential: Credential,
) -> Result<Response<PooledBody>, Response<ProxyBody>> {
    match credential {
        Credential::Header(v) => {
            parts.headers.insert(p.inject_header.clone(), v);
        }
        Credential::Signed(headers) => {
            for (k, v) in headers {
                parts.headers.insert(k, v);
            }
        }
    }
    match tokio::time::timeout(
        p.upstream_timeout,
        lane.client.send(Request::from_parts(parts, body)),
    )
    .await
    {
        Ok(sent) => sent.map_err(|e| upstream_failed(p, m, &e)),
        Err(_) => Err(upstream_timed_out(p, m)),
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
        p.authority,
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

/// The second and last attempt after the upstream answered `rejected` to the token of
/// `generation` (already invalidated): with a fresh token and the kept body.
async fn retry(
    (p, lane, m): (&Provider, &Lane, &Counters),
    rejected: u16,
    generation: u64,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<Response<PooledBody>, Response<ProxyBody>> {
    m.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let fresh = p.entry.get().await.map_err(|e| token_error(p, m, &e))?;
    tracing::info!(
        provider = %p.name,
        status = rejected,
        old_generation = generation,
        new_generation = fresh.generation(),
        "upstream rejected the token; retrying once with a fresh one"
    );
    let cred = credential(
        p,
        lane,
        m,
        (fresh.token(), fresh.generation()),
        &parts,
        Some(&body),
    )?;
    send(
        p,
        lane,
        m,
        parts,
        Either::Left(Full::new(body.clone())),
        cred,
    )
    .await
}

/// The request target upstream, in origin form: the request's path (`strip` bytes of routing
/// prefix removed, the upstream's base path in front) and query.
fn upstream_target(p: &Provider, uri: http::Uri, strip: usize) -> Option<http::Uri> {
    if strip == 0 && p.base_path.is_empty() && uri.path().starts_with('/') {
        // Nothing to rewrite: the client's path and query, already parsed, go as they are.
        if uri.scheme().is_none() && uri.authority().is_none() {
            return Some(uri);
        }
        return Some(super::upstream::origin_form(&uri));
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
    http::uri::PathAndQuery::from_maybe_shared(Bytes::from(pq))
        .ok()
        .map(http::Uri::from)
}

/// Forwards `req` to `p`, `strip` bytes of path prefix removed, on worker `worker`.
pub(crate) async fn forward(
    state: &State,
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
    headers::strip_request(&mut parts.headers, &p.inject_header);
    upstream_head(p, lane, &mut parts);

    // Keep small bodies so a rejected credential can be retried. hyper knows a declared
    // length (Content-Length) already.
    let declared = hyper::body::Body::size_hint(&body).exact();
    let body = if hyper::body::Body::is_end_stream(&body) {
        Body::Kept(Bytes::new())
    } else if declared.is_some_and(|n| n <= state.replay_limit as u64) {
        match read_whole(body, state.replay_limit).await {
            Ok(b) => Body::Kept(b),
            Err(e) => {
                return reject(
                    p,
                    m,
                    400,
                    "request_body",
                    &format!("cannot read the request body: {e}"),
                )
            }
        }
    } else {
        Body::Stream(body)
    };
    let (first_body, replay) = match body {
        Body::Kept(b) => (Either::Left(Full::new(b.clone())), Some(b)),
        Body::Stream(s) => (Either::Right(s), None),
    };

    // The token, lent from memory: no reference count to share with the other workers.
    let credential_of = |token: &Token, generation: u64| {
        let cred = credential(p, lane, m, (token, generation), &parts, replay.as_ref());
        (generation, cred)
    };
    let lent = p.entry.lend_with_min_remaining(p.min_remaining, |t| {
        credential_of(t.token(), t.generation())
    });
    let (generation, cred) = match lent {
        Some(x) => x,
        // Boxed: waiting for an acquisition is rare, and its future is large.
        None => match Box::pin(p.entry.get_with_min_remaining(p.min_remaining)).await {
            Ok(l) => credential_of(l.token(), l.generation()),
            Err(e) => return token_error(p, m, &e),
        },
    };
    let cred = match cred {
        Ok(c) => c,
        Err(e) => return e,
    };
    let retry_parts = replay.as_ref().map(|_| clone_parts(&parts));
    let mut resp = match send(p, lane, m, parts, first_body, cred).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    if p.retry_on.contains(&resp.status().as_u16()) {
        let rejected = resp.status().as_u16();
        let forced = p
            .entry
            .invalidate_at_most_every(generation, p.min_refresh_interval);
        match (replay, retry_parts) {
            _ if forced == Invalidation::RateLimited => log_rate_limited(p, rejected),
            (Some(bytes), Some(again)) => {
                drop(resp);
                // Boxed: a second send in this future's state would double its size.
                let retried = retry((p, lane, m), rejected, generation, again, bytes);
                resp = match Box::pin(retried).await {
                    Ok(r) => r,
                    Err(e) => return e,
                };
            }
            _ => log_not_replayed(p, rejected),
        }
    }
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

#[cold]
#[inline(never)]
fn log_not_replayed(p: &Provider, rejected: u16) {
    tracing::info!(
        provider = %p.name,
        status = rejected,
        "upstream rejected the token; body was streamed so the status is passed through (the next request gets a fresh token)"
    );
}

#[cold]
#[inline(never)]
fn log_rate_limited(p: &Provider, rejected: u16) {
    tracing::info!(
        provider = %p.name,
        status = rejected,
        min_refresh_interval_s = p.min_refresh_interval.as_secs(),
        "upstream rejected the token, and the last forced refresh was less than min_refresh_interval ago; passing the status through without another acquisition"
    );
}

#[inline(never)]
fn log_forwarded(p: &Provider, status: u16, started: tokio::time::Instant) {
    tracing::debug!(provider = %p.name, status, elapsed_us = started.elapsed().as_micros() as u64, "forwarded");
}
