//! The proxy's upstream HTTP client: hyper-util's pooled client over a connector that honours
//! `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` and speaks TLS with rustls.
//!
//! The proxy sends every request to a URI it builds from parts it parsed once at start-up,
//! so the hot path parses no URL (a general-purpose client such as reqwest re-parses and
//! IDNA-normalises every URL it is given, which was ~6% of the proxy's CPU).
//!
//! Connections, per destination:
//! - no proxy applies (none set, or `NO_PROXY` matches the host): a direct TCP connection;
//! - `https://` through an HTTP proxy: an HTTP `CONNECT` tunnel (with `Proxy-Authorization` when
//!   the proxy URL has `user:pass@`), then TLS to the upstream inside it;
//! - `http://` through an HTTP proxy: a connection to the proxy, requests in absolute form, with
//!   `Proxy-Authorization` added per request (see [`UpstreamClient::proxy_auth`]).
//!
//! SOCKS and `https://` proxies are refused with a clear error. Each upper-case variable is read
//! before its lower-case form, and all are ignored when `REQUEST_METHOD` is set (a CGI
//! environment, where `HTTP_PROXY` can come from a request header): reqwest's rules, so the
//! identity-provider clients (reqwest, process environment) egress the same way. curl differs:
//! it prefers the lower-case names and never reads upper-case `HTTP_PROXY`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::source::Env;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body sent upstream: kept in memory (replayable after a 401) or streamed.
pub(crate) type UpstreamBody = Either<Full<Bytes>, Incoming>;

/// Settings of the upstream client.
pub(crate) struct ClientSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// HTTP/2 with prior knowledge on plain-HTTP upstreams (h2c).
    pub h2c: bool,
}

/// Idle HTTP/1 connections kept per client at most.
const MAX_IDLE: usize = 256;

/// One upstream's client with its connection pool: the proxy has one per provider and worker
/// thread, so the pool is never shared across threads and holds connections to one origin.
///
/// HTTP/1.1 connections are used by one request at a time; a connection goes back to the pool
/// when its response body has been read to the end (a response dropped early closes its
/// connection, as hyper does). An HTTP/2 connection (negotiated by ALPN, or h2c) is shared by
/// all requests. A request that could not be written on a reused connection (closed by the
/// upstream meanwhile) is sent again on another one.
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    inner: Arc<Pool>,
}

struct Pool {
    connector: hyper_rustls::HttpsConnector<ProxyConnector>,
    matcher: Arc<Matcher>,
    h2c: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
}

struct Idle {
    tx: http1::SendRequest<UpstreamBody>,
    proxied: bool,
    since: Instant,
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made (DNS, TCP, proxy, TLS, or the connect timeout).
    Connect(BoxError),
    /// The connection failed while the request was sent or the response head read.
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "cannot connect: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e.as_ref()),
            SendError::Http(e) => Some(e),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl UpstreamClient {
    /// Builds a client; `env` supplies the proxy variables.
    pub(crate) fn new(
        settings: &ClientSettings,
        tls: Arc<rustls::ClientConfig>,
        env: &dyn Env,
    ) -> Self {
        let matcher = Arc::new(matcher_from(env));
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let connector = ProxyConnector {
            http,
            matcher: matcher.clone(),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        UpstreamClient {
            inner: Arc::new(Pool {
                connector: https,
                matcher,
                h2c: settings.h2c,
                connect_timeout: settings.connect_timeout,
                idle_timeout: settings.pool_idle_timeout,
                idle: Mutex::new(Vec::new()),
                h2: Mutex::new(None),
            }),
        }
    }

    /// Sends `req`, whose URI is absolute (`scheme://authority/path?query`) and which carries
    /// its `Host` header.
    pub(crate) async fn send(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let pool = &self.inner;
        let absolute = req.uri().clone();
        // A shared HTTP/2 connection.
        let h2 = lock(&pool.h2)
            .as_ref()
            .filter(|tx| !tx.is_closed())
            .cloned();
        if let Some(mut tx) = h2 {
            if tx.ready().await.is_ok() {
                match tx.try_send_request(req).await {
                    Ok(resp) => return Ok(resp.map(PooledBody::done)),
                    Err(mut e) => match e.take_message() {
                        Some(r) => req = r,
                        None => return Err(SendError::Http(e.into_error())),
                    },
                }
            }
        }
        // An idle HTTP/1.1 connection.
        loop {
            let Some(mut idle) = lock(&pool.idle).pop() else {
                break;
            };
            if idle.tx.is_closed() || idle.since.elapsed() > pool.idle_timeout {
                continue;
            }
            if idle.tx.ready().await.is_err() {
                continue;
            }
            *req.uri_mut() = request_target(&absolute, idle.proxied);
            match idle.tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(|b| PooledBody::h1(b, self, idle.tx, idle.proxied))),
                Err(mut e) => match e.take_message() {
                    Some(mut r) => {
                        *r.uri_mut() = absolute.clone();
                        req = r;
                    }
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        // A new connection.
        let io = tokio::time::timeout(
            pool.connect_timeout,
            tower_service::Service::call(&mut pool.connector.clone(), absolute.clone()),
        )
        .await
        .map_err(|_| {
            SendError::Connect(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {:?}", pool.connect_timeout),
            )))
        })?
        .map_err(SendError::Connect)?;
        let connected = io.connected();
        if connected.is_negotiated_h2() || pool.h2c {
            let (mut tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| SendError::Connect(Box::new(e)))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            *lock(&pool.h2) = Some(tx.clone());
            let resp = tx.send_request(req).await.map_err(SendError::Http)?;
            return Ok(resp.map(PooledBody::done));
        }
        let proxied = connected.is_proxied();
        let (mut tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        *req.uri_mut() = request_target(&absolute, proxied);
        let resp = tx.send_request(req).await.map_err(SendError::Http)?;
        Ok(resp.map(|b| PooledBody::h1(b, self, tx, proxied)))
    }

    /// The `Proxy-Authorization` value to add to requests for `upstream` when it is plain HTTP
    /// sent through a proxy with credentials (a `CONNECT` tunnel carries them itself).
    pub(crate) fn proxy_auth(&self, upstream: &Uri) -> Option<HeaderValue> {
        if upstream.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let mut v = self
            .inner
            .matcher
            .intercept(upstream)?
            .basic_auth()?
            .clone();
        v.set_sensitive(true);
        Some(v)
    }

    fn put_back(&self, tx: http1::SendRequest<UpstreamBody>, proxied: bool) {
        if tx.is_closed() {
            return;
        }
        let mut idle = lock(&self.inner.idle);
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                tx,
                proxied,
                since: Instant::now(),
            });
        }
    }
}

/// The HTTP/1.1 request target: absolute-form to a forward proxy, origin-form otherwise.
fn request_target(absolute: &Uri, proxied: bool) -> Uri {
    if proxied {
        return absolute.clone();
    }
    absolute
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from)
}

/// A response body that returns its HTTP/1.1 connection to the pool once read to the end.
pub(crate) struct PooledBody {
    inner: Incoming,
    back: Option<(UpstreamClient, http1::SendRequest<UpstreamBody>, bool)>,
}

impl PooledBody {
    fn done(inner: Incoming) -> Self {
        PooledBody { inner, back: None }
    }

    fn h1(
        inner: Incoming,
        client: &UpstreamClient,
        tx: http1::SendRequest<UpstreamBody>,
        proxied: bool,
    ) -> Self {
        let mut body = PooledBody {
            inner,
            back: Some((client.clone(), tx, proxied)),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((client, tx, proxied)) = self.back.take() {
            client.put_back(tx, proxied);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The proxy matcher from `env`, with reqwest's rules (see the module docs).
fn matcher_from(env: &dyn Env) -> Matcher {
    let first = |names: [&str; 2]| names.iter().find_map(|n| env.var(n)).unwrap_or_default();
    if env.var("REQUEST_METHOD").is_some() {
        return Matcher::builder().build();
    }
    Matcher::builder()
        .all(first(["ALL_PROXY", "all_proxy"]))
        .http(first(["HTTP_PROXY", "http_proxy"]))
        .https(first(["HTTPS_PROXY", "https_proxy"]))
        .no(first(["NO_PROXY", "no_proxy"]))
        .build()
}

/// The TLS settings for upstreams: the system's roots plus an optional PEM bundle; ALPN is
/// set by the connector (h2, http/1.1).
///
/// # Errors
/// A config error when the bundle cannot be read or holds no usable certificate.
pub(crate) fn tls_config(ca_bundle: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "skipping unreadable system certificates");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_bundle {
        let pem = std::fs::read(path).map_err(|e| {
            Error::config("ca_bundle", format!("cannot read {}: {e}", path.display()))
        })?;
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                Error::config(
                    "ca_bundle",
                    format!("{} is not a PEM bundle: {e}", path.display()),
                )
            })?;
            roots.add(cert).map_err(|e| {
                Error::config(
                    "ca_bundle",
                    format!(
                        "{}: a certificate cannot be used as a root: {e}",
                        path.display()
                    ),
                )
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(Error::config(
                "ca_bundle",
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config("tls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Connects directly, through a `CONNECT` tunnel, or to a forward proxy (see module docs).
#[derive(Clone)]
pub(crate) struct ProxyConnector {
    http: HttpConnector,
    matcher: Arc<Matcher>,
}

impl tower_service::Service<Uri> for ProxyConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let intercept = self.matcher.intercept(&dst);
        Box::pin(async move {
            let Some(proxy) = intercept else {
                let io = tower_service::Service::call(&mut http, dst).await?;
                return Ok(Conn { io, proxied: false });
            };
            let proxy_uri = proxy.uri().clone();
            // The connection to the proxy is plain TCP: an https:// proxy (TLS to the proxy)
            // would get a cleartext CONNECT, so it is refused like SOCKS.
            if proxy_uri.scheme_str() != Some("http") {
                return Err(format!(
                    "{}:// proxies are not supported; only http:// proxies are supported in HTTPS_PROXY/HTTP_PROXY/ALL_PROXY",
                    proxy_uri.scheme_str().unwrap_or("?")
                )
                .into());
            }
            if dst.scheme() == Some(&http::uri::Scheme::HTTPS) {
                let mut tunnel = Tunnel::new(proxy_uri.clone(), http);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let io = tower_service::Service::call(&mut tunnel, dst)
                    .await
                    .map_err(|e| via_proxy(&proxy_uri, &e))?;
                Ok(Conn { io, proxied: false })
            } else {
                let io = tower_service::Service::call(&mut http, proxy_uri.clone())
                    .await
                    .map_err(|e| via_proxy(&proxy_uri, &e))?;
                Ok(Conn { io, proxied: true })
            }
        })
    }
}

/// A failure to reach the upstream through the proxy at `proxy`, as an I/O error that names the
/// proxy and carries the deepest cause (and its kind, so a timeout stays a timeout): the proxy's
/// error message quotes only the deepest cause, and "upstream … unreachable: connection refused"
/// alone would blame the upstream for a proxy that is down.
fn via_proxy(proxy: &Uri, e: &(dyn std::error::Error + 'static)) -> BoxError {
    let mut deepest = e;
    while let Some(s) = deepest.source() {
        deepest = s;
    }
    let kind = deepest
        .downcast_ref::<std::io::Error>()
        .map_or(std::io::ErrorKind::Other, std::io::Error::kind);
    let at = proxy.authority().map_or("?", |a| a.as_str());
    Box::new(std::io::Error::new(kind, format!("proxy {at}: {deepest}")))
}

/// A TCP connection to the upstream or to a proxy.
pub(crate) struct Conn {
    io: TokioIo<TcpStream>,
    /// Connected to a forward proxy: requests go out in absolute form.
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
