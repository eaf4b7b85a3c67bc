//! The demo's identity provider: an OAuth2 client-credentials token endpoint (RFC 6749 §4.4)
//! that issues short-lived HS256 JWTs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::{EncodingKey, Header};
use serde::Deserialize;
use serde_json::json;

use super::server::{json, Body};

pub(crate) const ISSUER: &str = "tokenrelay-demo-idp";
pub(crate) const AUDIENCE: &str = "tokenrelay-demo-upstream";
pub(crate) const CLIENT_ID: &str = "demo-client";
pub(crate) const CLIENT_SECRET: &str = "demo-client-secret";

/// State shared by the fake IdP and the fake upstream.
#[derive(Debug)]
pub(crate) struct Shared {
    pub key: [u8; 32],
    pub lifetime: Duration,
    /// Serial number of the last token issued.
    pub issued: AtomicU64,
    /// Tokens with a serial below this are rejected (simulated revocation).
    pub min_serial: AtomicU64,
}

impl Shared {
    pub(crate) fn new(lifetime: Duration) -> Arc<Self> {
        Arc::new(Shared {
            key: rand::random(),
            lifetime,
            issued: AtomicU64::new(0),
            min_serial: AtomicU64::new(0),
        })
    }

    /// Makes the upstream reject every token issued so far.
    pub(crate) fn revoke_all(&self) {
        self.min_serial
            .store(self.issued.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    }
}

#[derive(Deserialize)]
struct Form {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json(
        status,
        &json!({ "error": error, "error_description": description }),
    )
}

pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST || req.uri().path() != "/oauth2/token" {
        return oauth_error(StatusCode::NOT_FOUND, "not_found", "POST /oauth2/token");
    }
    // client_secret_basic (RFC 6749 §2.3.1): credentials may come in the Authorization header.
    let basic = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        });
    let ct_ok = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !ct_ok {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected a form body",
        );
    }
    let Ok(body) = req.into_body().collect().await else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unreadable body",
        );
    };
    let Ok(form) = serde_urlencoded::from_bytes::<Form>(&body.to_bytes()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "malformed form");
    };
    if form.grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials",
        );
    }
    let (id, secret) = match basic {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (form.client_id, form.client_secret),
    };
    if id.as_deref() != Some(CLIENT_ID) || secret.as_deref() != Some(CLIENT_SECRET) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    }
    let serial = shared.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": CLIENT_ID,
        "scp": form.scope.unwrap_or_default(),
        "iat": now,
        "exp": now + shared.lifetime.as_secs(),
        "jti": serial,
    });
    let Ok(token) = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(&shared.key),
    ) else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "cannot sign",
        );
    };
    tracing::debug!(serial, "demo idp issued a token");
    json(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": shared.lifetime.as_secs(),
        }),
    )
}
