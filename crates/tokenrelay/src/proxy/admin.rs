//! `/healthz`, `/readyz`, `/metrics`, `/status`: never a token byte.

use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use serde_json::json;

use super::forward::{has_local_key, plain_error};
use super::metrics::{self, Sample};
use super::{ProxyBody, State};
use http_body_util::{BodyExt, Full};

const PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/status"];

pub(crate) fn is_admin_path(path: &str) -> bool {
    PATHS.contains(&path)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(bytes::Bytes::from(body))
            .map_err(|never| -> super::BoxError { match never {} })
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn secs_until(t: Option<SystemTime>, now: SystemTime) -> Option<f64> {
    t.map(|t| {
        t.duration_since(now)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    })
}

// Out of line: the admin endpoints are rare next to proxied requests.
#[inline(never)]
pub(crate) fn respond<B>(state: &State, req: &Request<B>) -> Response<ProxyBody> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return plain_error(405, "admin endpoints answer GET only");
    }
    let now = SystemTime::now();
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let not_ready: Vec<_> = state
                .providers
                .iter()
                .filter(|p| !p.entry.status().valid)
                .map(|p| p.name.to_string())
                .collect();
            if not_ready.is_empty() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: no valid token for {}\n", not_ready.join(", ")),
                )
            }
        }
        "/metrics" => {
            let statuses: Vec<_> = state.providers.iter().map(|p| p.entry.status()).collect();
            let samples: Vec<Sample<'_>> = state
                .providers
                .iter()
                .zip(&statuses)
                .map(|(p, s)| Sample {
                    provider: &p.name,
                    metrics: &p.metrics,
                    acquisitions: s.acquisitions,
                    refresh_failures: s.failures,
                    seconds_until_expiry: secs_until(s.expires_at, now),
                    ready: s.valid,
                })
                .collect();
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(&state.listener_metrics, &samples),
            )
        }
        _ => {
            if let Some(key) = &state.local_key {
                if !has_local_key(req.headers(), key) {
                    return plain_error(401, "/status needs the local key");
                }
            }
            let providers: Vec<_> = state
                .providers
                .iter()
                .map(|p| {
                    let s = p.entry.status();
                    json!({
                        "name": &*p.name,
                        "upstream": p.upstream.as_str(),
                        "path_prefix": p.prefix,
                        "inject": p.inject_header.as_str(),
                        "scope": s.scope,
                        "source_kind": s.source_kind,
                        "source": s.source,
                        "ready": s.valid,
                        "generation": s.generation,
                        "expires_at": s.expires_at.map(crate::rfc3339),
                        "expires_in_s": secs_until(s.expires_at, now).map(|x| x.round()),
                        "refresh_in_s": secs_until(s.refresh_at, now).map(|x| x.round()),
                        "acquisitions": s.acquisitions,
                        "failures": s.failures,
                        "last_error": s.last_error.map(|(at, msg)| json!({"at": crate::rfc3339(at), "message": msg})),
                        "requests": p.metrics.total(|c| &c.requests),
                        "retries": p.metrics.total(|c| &c.retries),
                    })
                })
                .collect();
            reply(
                StatusCode::OK,
                "application/json",
                json!({ "providers": providers }).to_string(),
            )
        }
    }
}
