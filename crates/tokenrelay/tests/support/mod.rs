//! Test support: a loopback upstream with programmable behaviour, and sources with known tokens.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokenrelay::config::Config;
use tokenrelay::proxy::{Proxy, ProxyOptions};
use tokenrelay::source::{MapEnv, SharedEnv};
use tokenrelay::{Result, Secret, Source, Token, TokenRequest};
use tokio::net::TcpListener;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

type Handler = Arc<dyn Fn(Seen) -> Response<Body> + Send + Sync>;

/// A loopback upstream that records requests and answers with `handler`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start(handler: impl Fn(Seen) -> Response<Body> + Send + Sync + 'static) -> Self {
        let handler: Handler = Arc::new(handler);
        Self::start_raw(move |req: Request<Incoming>, seen: Arc<Mutex<Vec<Seen>>>| {
            let handler = handler.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let s = Seen {
                    path_and_query: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    headers: parts.headers,
                    body,
                    version: parts.version,
                };
                seen.lock().unwrap().push(s.clone());
                handler(s)
            }
        })
        .await
    }

    /// An upstream whose handler sees the raw request (for streaming tests).
    pub async fn start_raw<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>, Arc<Mutex<Vec<Seen>>>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let h = handler.clone();
                let seen = seen2.clone();
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(h(req, seen).await) }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Tokens `tok-<provider>-<n>` living `lifetime`; remembers which are valid so an upstream can
/// check expiry and revocation like a real one.
#[derive(Debug)]
pub struct Issuer {
    pub name: String,
    pub lifetime: Duration,
    pub count: AtomicUsize,
    pub issued: Mutex<Vec<(String, SystemTime)>>,
    pub revoked: Mutex<HashSet<String>>,
    pub fail: std::sync::atomic::AtomicBool,
}

impl Issuer {
    pub fn new(name: &str, lifetime: Duration) -> Arc<Self> {
        Arc::new(Issuer {
            name: name.into(),
            lifetime,
            count: AtomicUsize::new(0),
            issued: Mutex::new(Vec::new()),
            revoked: Mutex::new(HashSet::new()),
            fail: Default::default(),
        })
    }

    pub fn acquisitions(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Whether `token` was issued here, is unexpired and not revoked.
    pub fn accepts(&self, token: &str) -> bool {
        let now = SystemTime::now();
        !self.revoked.lock().unwrap().contains(token)
            && self
                .issued
                .lock()
                .unwrap()
                .iter()
                .any(|(t, exp)| t == token && now < *exp)
    }

    pub fn revoke_all(&self) {
        let issued = self.issued.lock().unwrap();
        let mut r = self.revoked.lock().unwrap();
        for (t, _) in issued.iter() {
            r.insert(t.clone());
        }
    }
}

/// A `Source` backed by an `Issuer`.
#[derive(Debug, Clone)]
pub struct IssuerSource(pub Arc<Issuer>);

#[async_trait]
impl Source for IssuerSource {
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        if self.0.fail.load(Ordering::SeqCst) {
            return Err(tokenrelay::Error::new(
                self.describe(),
                tokenrelay::ErrorKind::Unavailable("issuer is down".into()),
            ));
        }
        let n = self.0.count.fetch_add(1, Ordering::SeqCst) + 1;
        let tok = format!("tok-{}-{n}", self.0.name);
        let now = SystemTime::now();
        let exp = now + self.0.lifetime;
        self.0.issued.lock().unwrap().push((tok.clone(), exp));
        Ok(Token::new(Secret::new(tok), "issuer")
            .acquired_at(now)
            .expires_at(exp))
    }
    fn kind(&self) -> &'static str {
        "issuer"
    }
    fn describe(&self) -> String {
        "issuer source".to_owned()
    }
}

/// The bearer token of a request, if any.
pub fn bearer(h: &HeaderMap) -> Option<String> {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// Starts a proxy for `toml` with the given sources (one per provider), on an ephemeral port.
pub async fn proxy(toml: &str, sources: Vec<Arc<dyn Source>>, opts: ProxyOptions) -> SocketAddr {
    let cfg = Config::from_toml(toml, "test.toml").unwrap();
    let env: SharedEnv = Arc::new(MapEnv::default());
    let mut opts = opts;
    opts.listen = Some("127.0.0.1:0".parse().unwrap());
    let p = Proxy::with_sources(&cfg, sources, &env, opts).unwrap();
    let bound = p.bind().await.unwrap();
    let addr = bound.local_addr();
    tokio::spawn(bound.run(std::future::pending()));
    addr
}

/// A provider table for `name` pointing at `upstream`, with a placeholder source.
pub fn provider_toml(name: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[provider]]\nname = \"{name}\"\nupstream = \"{upstream}\"\n{extra}\n[provider.source]\nkind = \"env\"\nname = \"UNUSED\"\n"
    )
}

/// Like [`proxy`], but returns a trigger for graceful shutdown, the server task and every
/// listener address (main first).
pub async fn proxy_with_shutdown(
    toml: &str,
    sources: Vec<Arc<dyn Source>>,
    opts: ProxyOptions,
) -> (
    Vec<SocketAddr>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<tokenrelay::Result<()>>,
) {
    let cfg = Config::from_toml(toml, "test.toml").unwrap();
    let env: SharedEnv = Arc::new(MapEnv::default());
    let mut opts = opts;
    opts.listen = Some("127.0.0.1:0".parse().unwrap());
    let p = Proxy::with_sources(&cfg, sources, &env, opts).unwrap();
    let bound = p.bind().await.unwrap();
    let addrs = bound.addrs().to_vec();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(bound.run(async {
        let _ = rx.await;
    }));
    (addrs, tx, task)
}

/// Resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A file of `tests/fixtures/tls`: a test CA (`ca.pem`) and the `localhost` certificate it
/// signed (`server.pem`, `server-key.pem`).
pub fn tls_fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// A loopback HTTPS upstream with the fixture's `localhost` certificate (h2 and http/1.1 by
/// ALPN) that answers each request with `handler`.
pub async fn tls_upstream(
    handler: impl Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
) -> SocketAddr {
    tls_upstream_with(&[b"h2", b"http/1.1"], handler).await.0
}

/// [`tls_upstream`] offering the protocols `alpn`, and the count of the TLS connections it
/// accepted.
pub async fn tls_upstream_with(
    alpn: &[&[u8]],
    handler: impl Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(tls_fixture("server.pem"))
        .unwrap()
        .collect::<std::result::Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(tls_fixture("server-key.pem")).unwrap();
    let mut cfg = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let resp = handler(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// Instants at which a timed SSE upstream sent its events, in order.
pub type SentAt = Arc<Mutex<Vec<tokio::time::Instant>>>;

/// A loopback upstream answering every request with a `text/event-stream` of `events` events
/// (`data: <i>\n\n`): the first `first_after` after the request, each next one `gap` after
/// the one before. Also returns when each event was sent.
pub async fn timed_sse_upstream(
    events: u32,
    first_after: Duration,
    gap: Duration,
) -> (Upstream, SentAt) {
    let sent_at = SentAt::default();
    let sent = sent_at.clone();
    let up = Upstream::start_raw(move |_req, _seen| {
        let sent = sent.clone();
        async move {
            let stream = futures_util::stream::unfold(0u32, move |i| {
                let sent = sent.clone();
                async move {
                    if i == events {
                        return None;
                    }
                    let wait = if i == 0 { first_after } else { gap };
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    sent.lock().unwrap().push(tokio::time::Instant::now());
                    let event = hyper::body::Frame::data(Bytes::from(format!("data: {i}\n\n")));
                    Some((Ok::<_, Infallible>(event), i + 1))
                }
            });
            let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
    })
    .await;
    (up, sent_at)
}

/// Reads an SSE response to its end: when each `data:` event arrived, and the whole text.
pub async fn receive_events(resp: &mut reqwest::Response) -> (Vec<tokio::time::Instant>, String) {
    let mut received = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        let at = tokio::time::Instant::now();
        let chunk = String::from_utf8_lossy(&chunk).into_owned();
        for _ in 0..chunk.matches("data:").count() {
            received.push(at);
        }
        text.push_str(&chunk);
    }
    (received, text)
}
