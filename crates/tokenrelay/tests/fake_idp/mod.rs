//! A loopback identity provider for the source tests: records each request (method, path,
//! query, headers, form) and answers with whatever the test's handler returns. Handlers check
//! what a real IdP checks (grant type, assertion signature and claims, bearer, headers).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use tokenrelay::config::Config;
use tokenrelay::source::{MapEnv, SharedEnv};
use tokenrelay::Source;
use tokio::net::TcpListener;

/// One request as the IdP saw it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: http::HeaderMap,
    pub form: HashMap<String, String>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn form(&self, name: &str) -> Option<&str> {
        self.form.get(name).map(String::as_str)
    }
}

/// An answer: status, extra headers, body, and an optional delay before it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Option<Duration>,
}

impl Resp {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Resp {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
            delay: None,
        }
    }
    pub fn text(status: u16, ctype: &str, body: &str) -> Self {
        Resp {
            status,
            headers: vec![("content-type", ctype.into())],
            body: body.into(),
            delay: None,
        }
    }
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }
    /// An OAuth error answer.
    pub fn oauth_error(status: u16, error: &str, description: &str) -> Self {
        Resp::json(
            status,
            serde_json::json!({"error": error, "error_description": description, "error_codes": [7000215]}),
        )
    }
    /// A token answer living `secs` seconds.
    pub fn token(token: &str, secs: u64) -> Self {
        Resp::json(
            200,
            serde_json::json!({"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": token}),
        )
    }
}

type Handler = Arc<dyn Fn(&Req, usize) -> Resp + Send + Sync>;

/// The running IdP.
pub struct FakeIdp {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Req>>>,
}

impl FakeIdp {
    /// Starts on 127.0.0.1 with `handler(request, index of this request)`.
    pub async fn start(handler: impl Fn(&Req, usize) -> Resp + Send + Sync + 'static) -> Self {
        let handler: Handler = Arc::new(handler);
        let seen: Arc<Mutex<Vec<Req>>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, seen) = (handler.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (handler, seen) = (handler.clone(), seen.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let parse = |s: &[u8]| -> HashMap<String, String> {
                                form_urlencoded::parse(s).into_owned().collect()
                            };
                            let r = Req {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                query: parse(parts.uri.query().unwrap_or("").as_bytes()),
                                headers: parts.headers,
                                form: parse(&body),
                            };
                            let n = {
                                let mut v = seen.lock().unwrap();
                                v.push(r.clone());
                                v.len() - 1
                            };
                            let resp = handler(&r, n);
                            if let Some(d) = resp.delay {
                                tokio::time::sleep(d).await;
                            }
                            let mut out = http::Response::new(Full::new(Bytes::from(resp.body)));
                            *out.status_mut() = http::StatusCode::from_u16(resp.status).unwrap();
                            for (k, v) in resp.headers {
                                out.headers_mut().insert(k, v.parse().unwrap());
                            }
                            Ok::<_, Infallible>(out)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeIdp { addr, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Verifies a JWT client assertion as Entra does: signature with the test key, `aud`, `iss`,
/// `sub`, unexpired. Returns the claims.
pub fn verify_assertion(
    jwt: &str,
    public_pem: &str,
    alg: Algorithm,
    aud: &str,
    iss: &str,
    sub: &str,
) -> Result<serde_json::Value, String> {
    let pem = std::fs::read(fixture(public_pem)).unwrap();
    let key = match alg {
        Algorithm::ES256 => DecodingKey::from_ec_pem(&pem).unwrap(),
        _ => DecodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut v = Validation::new(alg);
    v.set_audience(&[aud]);
    v.set_issuer(&[iss]);
    v.sub = Some(sub.to_owned());
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
pub const GITHUB_SUBJECT: &str = "repo:octo/app:ref:refs/heads/main";

/// A GitHub-shaped OIDC token signed with the test RSA key, unique per `n`.
pub fn github_jwt(aud: &str, n: usize, lifetime: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": GITHUB_ISSUER, "sub": GITHUB_SUBJECT, "aud": aud,
        "jti": format!("gh-{n}"), "iat": now, "nbf": now, "exp": now + lifetime,
        "repository": "octo/app",
    });
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("test-rsa-key.pem")).unwrap()).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("gh-test".into());
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

/// Builds the source of a one-provider config whose `[provider.source]` table is `source`.
pub fn build(
    scope: Option<&str>,
    source: &str,
    env: &[(&str, &str)],
) -> tokenrelay::Result<Arc<dyn Source>> {
    let scope_line = scope
        .map(|s| format!("scope = \"{s}\"\n"))
        .unwrap_or_default();
    let text = format!("[[provider]]\nname = \"p\"\n{scope_line}[provider.source]\n{source}\n");
    let cfg = Config::from_toml(&text, "test.toml")?;
    let env: SharedEnv = Arc::new(MapEnv::from_pairs(env.iter().copied()));
    cfg.providers[0]
        .source
        .build("provider[0] (p).source", &env)
}

pub fn basic_auth(r: &Req) -> Option<(String, String)> {
    use base64::Engine;
    let v = r.header("authorization")?.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (a, b) = s.split_once(':')?;
    // RFC 6749 §2.3.1: each part is form-urlencoded before the Basic encoding.
    let dec = |x: &str| -> String {
        form_urlencoded::parse(format!("v={x}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((dec(a), dec(b)))
}
