//! WebSocket pass-through (RFC 6455 over HTTP/1.1): the OpenAI and Azure OpenAI Realtime
//! APIs, and the Responses-over-WebSocket transports of Codex and Copilot CLI.
//!
//! ```text
//! GET + Connection: upgrade + Upgrade: websocket (HTTP/1.1)
//!   → local key (header, or the `openai-insecure-api-key.<key>` subprotocol) → browser rules
//!   → strip inbound credentials and that subprotocol → token (min_remaining) → inject
//!   → handshake on a new HTTP/1.1 connection → retry_on status: invalidate, retry once
//!   → 101 → bytes relayed both ways as they arrive (no reframing) until either side closes
//! ```
//!
//! The upstream checks the token at the handshake only: an open socket outlives its token.
//! [`registry`] counts open sockets per provider for `/status` and `/metrics`, and ends them
//! at `max_socket_lifetime` and at the end of the shutdown grace with a close frame (1001),
//! the only frame the proxy ever writes ([`frames`]).
//!
//! Handshakes do not use the upstream pool ([`super::upstream`]), which drives its
//! connections inline and offers HTTP/2 by ALPN: each takes a new HTTP/1.1-only connection
//! (same egress proxy and TLS settings), which becomes the socket.
//!
//! HTTP/2 clients: the listener does not offer RFC 8441 extended CONNECT (it never sends
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL`), so a client opens its WebSocket over HTTP/1.1; a
//! `CONNECT` request is answered `405`.

mod frames;
mod registry;
mod relay;

pub(crate) use registry::{Shutdown, Sockets};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use super::forward::{self, constant_time_eq, AttemptError};
use super::upstream::{SendError, UpstreamBody};
use super::{headers, BoxError, Provider, ProxyBody};
use crate::inject::Transport;
use crate::secret::Secret;

/// The subprotocol prefix that carries an API key where a browser cannot set headers
/// (OpenAI's Realtime API: `Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.<key>`).
pub(crate) const KEY_SUBPROTOCOL: &str = "openai-insecure-api-key.";

/// Whether `h` lists `token` in header `name` (comma-separated, case-insensitive).
fn lists(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether `req` opens a WebSocket (RFC 6455 §4.1): an HTTP/1.1 `GET` with `Upgrade:
/// websocket` and `Connection: upgrade`.
pub(crate) fn is_handshake<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::GET
        && req.version() == http::Version::HTTP_11
        && lists(req.headers(), header::UPGRADE, "websocket")
        && lists(req.headers(), header::CONNECTION, "upgrade")
}

/// The subprotocols offered in `h`, in order.
fn subprotocols(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Whether the WebSocket handshake `req` carries the local key as the
/// [`KEY_SUBPROTOCOL`] subprotocol (constant-time comparison).
pub(crate) fn has_subprotocol_key<B>(req: &Request<B>, key: &Secret) -> bool {
    if !is_handshake(req) {
        return false;
    }
    let want = key.expose().as_bytes();
    let mut ok = false;
    for p in subprotocols(req.headers()) {
        if let Some(k) = p.strip_prefix(KEY_SUBPROTOCOL) {
            ok |= constant_time_eq(k.as_bytes(), want);
        }
    }
    ok
}

/// Removes the [`KEY_SUBPROTOCOL`] entry (a credential) from `Sec-WebSocket-Protocol`,
/// keeping the others in order; removes the header when none is left. A value that is not
/// text is dropped with it.
fn strip_subprotocol_key(h: &mut HeaderMap) {
    if !h.contains_key(header::SEC_WEBSOCKET_PROTOCOL) {
        return;
    }
    let kept: Vec<&str> = subprotocols(h)
        .filter(|p| !p.starts_with(KEY_SUBPROTOCOL))
        .collect();
    let joined = kept.join(", ");
    h.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if let Ok(v) = HeaderValue::from_str(&joined) {
        if !joined.is_empty() {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
}

/// One handshake attempt on a new HTTP/1.1 connection that can be upgraded, within the
/// provider's `upstream_timeout`: the [`Transport`] the injector sends the handshake with, so
/// that stripping, injection, `min_remaining` and the one retry on a `retry_on` status are
/// the same code as for every other request.
struct Handshake<'a> {
    client: &'a super::upstream::UpstreamClient,
    timeout: std::time::Duration,
}

impl Transport<Incoming> for Handshake<'_> {
    type Body = Incoming;
    type Error = AttemptError;
    async fn send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, AttemptError> {
        // A handshake is a GET without a body.
        let (parts, _) = req.into_parts();
        let mut req = Request::from_parts(parts, Empty::<Bytes>::new());
        let client = self.client;
        let sent = async {
            let (io, proxied) = client.connect_http1().await?;
            if proxied {
                *req.uri_mut() = client.absolute(req.uri());
            }
            let (mut tx, conn) = hyper::client::conn::http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| SendError::Connect(Box::new(e)))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream WebSocket handshake connection ended");
                }
            });
            tx.send_request(req).await.map_err(SendError::Http)
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(r) => r.map_err(AttemptError::Send),
            Err(_) => Err(AttemptError::TimedOut),
        }
    }
}

/// Forwards the WebSocket handshake `req` to `p` (`strip` bytes of path prefix removed) on
/// worker `worker`; after a `101`, relays the socket in a task of its own.
pub(crate) async fn forward(
    p: &Provider,
    mut req: Request<Incoming>,
    strip: usize,
    worker: usize,
) -> Response<ProxyBody> {
    let started = tokio::time::Instant::now();
    let lane = p.lane(worker);
    let m = p.metrics.shard(worker);
    m.request();
    if lane.injector.signs() {
        return forward::reject(
            p,
            m,
            501,
            "websocket_unsupported",
            "WebSocket handshakes cannot be SigV4-signed (inject = \"aws-sigv4\")",
        );
    }
    // Counted from now (so that sockets being opened count too), released if no socket opens.
    let Some(ticket) = p.sockets.open() else {
        return forward::reject(
            p,
            m,
            503,
            "too_many_sockets",
            "too many open WebSockets (at most max_connections)",
        );
    };
    let client_side = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    parts.uri = match forward::upstream_target(p, std::mem::take(&mut parts.uri), strip) {
        Some(u) => u,
        None => {
            return forward::reject(
                p,
                m,
                400,
                "bad_path",
                "the request path cannot be forwarded",
            )
        }
    };
    strip_subprotocol_key(&mut parts.headers);
    headers::strip_request(&mut parts.headers);
    forward::upstream_head(p, lane, &mut parts);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut attempt = Handshake {
        client: &lane.client,
        timeout: p.upstream_timeout,
    };
    let mut resp = match lane
        .injector
        .send(&mut attempt, Request::from_parts(parts, body))
        .await
    {
        Ok(sent) => {
            if sent.retried.is_some() {
                m.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            sent.response
        }
        Err(e) => return forward::not_sent(p, m, e),
    };
    let status = resp.status().as_u16();
    m.record_status(status);
    m.record_latency(started.elapsed());
    tracing::debug!(provider = %p.name, status, "WebSocket handshake forwarded");
    if status != 101 {
        let mut out = resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync());
        headers::strip_response(out.headers_mut());
        return out;
    }
    let upstream_side = hyper::upgrade::on(&mut resp);
    let (mut head, _) = resp.into_parts();
    headers::strip_response(&mut head.headers);
    head.headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    head.headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let name = p.name.clone();
    tokio::spawn(async move { relay::relay(client_side, upstream_side, ticket, &name).await });
    Response::from_parts(head, forward::empty_body())
}

/// `/status` fields of `p`'s sockets: `open_sockets` and `oldest_socket_age_s`.
pub(crate) fn status(p: &Provider) -> (usize, Option<f64>) {
    let (n, oldest) = p.sockets.snapshot();
    (n, oldest.map(|d| d.as_secs_f64().round()))
}

/// Appends the `tokenrelay_open_sockets` and `tokenrelay_oldest_socket_age_seconds` gauges.
pub(crate) fn render_metrics(out: &mut String, providers: &[std::sync::Arc<Provider>]) {
    use std::fmt::Write as _;
    let snaps: Vec<_> = providers
        .iter()
        .map(|p| (&p.name, p.sockets.snapshot()))
        .collect();
    let _ = writeln!(
        out,
        "# HELP tokenrelay_open_sockets Open WebSockets per provider."
    );
    let _ = writeln!(out, "# TYPE tokenrelay_open_sockets gauge");
    for (name, (n, _)) in &snaps {
        let _ = writeln!(out, "tokenrelay_open_sockets{{provider=\"{name}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP tokenrelay_oldest_socket_age_seconds Age of the oldest open WebSocket per provider (0 when none is open).");
    let _ = writeln!(out, "# TYPE tokenrelay_oldest_socket_age_seconds gauge");
    for (name, (_, oldest)) in &snaps {
        let age = oldest.map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(
            out,
            "tokenrelay_oldest_socket_age_seconds{{provider=\"{name}\"}} {age:.3}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/v1/realtime?model=m");
        for (k, v) in pairs {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap_or_default()
    }

    #[test]
    fn handshakes_are_recognised_by_their_headers() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert!(is_handshake(&req(&ws)));
        assert!(!is_handshake(&req(&[("upgrade", "websocket")])));
        assert!(!is_handshake(&req(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c")
        ])));
        let mut post = req(&ws);
        *post.method_mut() = http::Method::POST;
        assert!(!is_handshake(&post));
        let mut h2 = req(&ws);
        *h2.version_mut() = http::Version::HTTP_2;
        assert!(!is_handshake(&h2));
    }

    #[test]
    fn the_key_subprotocol_is_checked_and_removed_keeping_the_rest() {
        let key = Secret::new("local-key");
        let offered = [
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            (
                "sec-websocket-protocol",
                "realtime, openai-insecure-api-key.local-key",
            ),
            ("sec-websocket-protocol", "openai-beta.realtime-v1"),
        ];
        let r = req(&offered);
        assert!(has_subprotocol_key(&r, &key));
        assert!(!has_subprotocol_key(&r, &Secret::new("other")));
        let mut h = r.headers().clone();
        strip_subprotocol_key(&mut h);
        assert_eq!(
            h.get_all("sec-websocket-protocol")
                .iter()
                .collect::<Vec<_>>(),
            ["realtime, openai-beta.realtime-v1"]
        );
        // Only the key: the header goes.
        let mut h = req(&[("sec-websocket-protocol", "openai-insecure-api-key.x")])
            .headers()
            .clone();
        strip_subprotocol_key(&mut h);
        assert!(h.get("sec-websocket-protocol").is_none());
        // Not a handshake: the subprotocol is no key.
        assert!(!has_subprotocol_key(
            &req(&[(
                "sec-websocket-protocol",
                "openai-insecure-api-key.local-key"
            )]),
            &key
        ));
    }
}
