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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
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

/// One pooled client (the proxy has one per worker thread).
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    client: Client<hyper_rustls::HttpsConnector<ProxyConnector>, UpstreamBody>,
    matcher: Arc<Matcher>,
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
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(settings.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if settings.h2c {
            b.http2_only(true);
        }
        UpstreamClient {
            client: b.build(https),
            matcher,
        }
    }

    /// Sends `req` (its URI absolute).
    pub(crate) fn request(
        &self,
        req: http::Request<UpstreamBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.client.request(req)
    }

    /// The `Proxy-Authorization` value to add to requests for `upstream` when it is plain HTTP
    /// sent through a proxy with credentials (a `CONNECT` tunnel carries them itself).
    pub(crate) fn proxy_auth(&self, upstream: &Uri) -> Option<HeaderValue> {
        if upstream.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let mut v = self.matcher.intercept(upstream)?.basic_auth()?.clone();
        v.set_sensitive(true);
        Some(v)
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
