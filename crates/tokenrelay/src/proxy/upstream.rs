//! The proxy's upstream HTTP client: a small connection pool of our own (one per provider and
//! worker thread, see [`UpstreamClient`]) over hyper's HTTP/1.1 connection API and the `h2`
//! crate (see [`h2_upstream`](super::h2_upstream)), with a connector that
//! honours `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` and speaks TLS with rustls.
//!
//! A client serves one upstream origin, parsed once at start-up, and is given requests with
//! an origin-form target (`/path?query`): the hot path parses no URL (a general-purpose
//! client such as reqwest re-parses and IDNA-normalises every URL it is given; the cost is in
//! docs/benchmarks.md) and builds an absolute one only where the protocol wants it (HTTP/2,
//! a forward proxy).
//!
//! Connections, per destination:
//! - no proxy applies (none set, or `NO_PROXY` matches the host): a direct TCP connection;
//! - `https://` through an HTTP proxy: an HTTP `CONNECT` tunnel (with `Proxy-Authorization` when
//!   the proxy URL has `user:pass@`), then TLS to the upstream inside it;
//! - `http://` through an HTTP proxy: a connection to the proxy, requests in absolute form, with
//!   `Proxy-Authorization` added per request (see [`Egress::proxy_auth`]).
//!
//! SOCKS and `https://` proxies are refused with a clear error. Each upper-case variable is read
//! before its lower-case form, and all are ignored when `REQUEST_METHOD` is set (a CGI
//! environment, where `HTTP_PROXY` can come from a request header): reqwest's rules, so the
//! identity-provider clients (reqwest, process environment) egress the same way. curl differs:
//! it prefers the lower-case names and never reads upper-case `HTTP_PROXY`.
// The feature `bench-hyper-util-client` (bench/ only) sends through hyper-util's client and
// leaves this pool unused.
#![cfg_attr(feature = "bench-hyper-util-client", allow(dead_code, unused_imports))]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
#[cfg(feature = "bench-hyper-util-client")]
use hyper_util::rt::TokioTimer;
use tokio::net::TcpStream;

use super::h2_upstream::{self, H2Body, H2Conn};
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
    /// Offer only HTTP/1.1 to HTTPS upstreams by ALPN.
    pub http1_only: bool,
}

/// Idle HTTP/1 connections kept per client at most.
const MAX_IDLE: usize = 256;

/// Idle time before TCP keepalive probes on upstream connections (`SO_KEEPALIVE`,
/// `TCP_KEEPIDLE`; the kernel's probe interval and count apply). Go's `net/http` probes after
/// 15–30 s; nginx and hyper-util do not by default.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A connection made by [`UpstreamClient::connect_http1`].
pub(crate) type UpgradeIo = hyper_rustls::MaybeHttpsStream<Conn>;

/// An HTTP/1.1 connection: the sender half and the connection future that does its I/O.
type H1Conn = http1::Connection<hyper_rustls::MaybeHttpsStream<Conn>, UpstreamBody>;

/// One upstream's client with its connection pool: the proxy has one per provider and worker
/// thread, so the pool is never shared across threads and holds connections to one origin.
///
/// An HTTP/1.1 connection serves one request at a time and is driven by the request that uses
/// it, inline: the request future writes the request and reads the response head, then the
/// response body reads the rest as it is polled. No task is spawned and no wake-up crosses
/// tasks, so a burst of SSE events that arrived in one packet is decoded and forwarded in one
/// go. The connection goes back to the pool when its body has been read to the end; a response
/// dropped early closes it. A request that could not be written on a reused connection
/// (closed by the upstream meanwhile) is sent on another one. An HTTP/2 connection
/// (negotiated by ALPN, or h2c) runs as its own task and is shared by all requests; each
/// request's task awaits its own response head and reads its body from the stream.
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    inner: Arc<Pool>,
}

// Aligned to two cache lines: each worker locks its own pool's idle list on every request,
// and pools allocated side by side must not share a line.
#[repr(align(128))]
struct Pool {
    connector: hyper_rustls::HttpsConnector<ProxyConnector>,
    /// See [`Egress`]: HTTP/1.1 only, for [`UpstreamClient::connect_http1`].
    http1_connector: hyper_rustls::HttpsConnector<ProxyConnector>,
    /// The upstream's scheme and authority: this pool's own copies (see [`UpstreamClient::new`]).
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The `Host` header for the upstream.
    host: HeaderValue,
    h2c: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<H2Conn>>,
    /// What the upstream's last new connection spoke (see [`Proto`]).
    proto: AtomicU8,
    /// Held while a connection that may become the shared HTTP/2 one is made, so that a burst
    /// of cold requests opens one connection and shares it, instead of one each.
    connecting: tokio::sync::Mutex<()>,
    /// The feature `bench-hyper-util-client`: hyper-util's pooled client, used instead.
    #[cfg(feature = "bench-hyper-util-client")]
    legacy: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<ProxyConnector>,
        UpstreamBody,
    >,
}

/// What the upstream's last new connection negotiated, as [`Pool::proto`] holds it.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Proto {
    /// No connection made yet.
    Unknown = 0,
    /// HTTP/1.1: new connections are made side by side, one per request that needs one.
    Http1 = 1,
    /// HTTP/2: new connections are made one at a time (see [`Pool::connecting`]).
    Http2 = 2,
}

/// A live HTTP/1.1 connection.
struct H1 {
    tx: http1::SendRequest<UpstreamBody>,
    /// `None` once the connection has ended (it is then dropped, which fails or hands back
    /// whatever request it still held).
    conn: Option<H1Conn>,
    /// Connected to a forward proxy: requests go in absolute form.
    proxied: bool,
}

struct Idle {
    /// Boxed, as everywhere: a connection is large and moves with every request.
    h1: Box<H1>,
    since: Instant,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection could be made (DNS, TCP, proxy, TLS, or the connect timeout).
    #[error("cannot connect: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or the response head read.
    #[error("{0}")]
    Http(#[source] hyper::Error),
    /// The same, on an HTTP/2 connection.
    #[error("{0}")]
    Http2(#[source] h2::Error),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one attempt on a connection gave.
enum Attempt {
    Done(Response<Incoming>),
    /// The request was not written (the connection was closed or not ready): try another.
    Again(Request<UpstreamBody>),
    Failed(hyper::Error),
}

impl Attempt {
    fn of(r: std::result::Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>>) -> Self {
        match r {
            Ok(resp) => Attempt::Done(resp),
            Err(mut e) => match e.take_message() {
                Some(req) => Attempt::Again(req),
                None => Attempt::Failed(e.into_error()),
            },
        }
    }
}

/// Drives the connection `slot` inline until `progress` is ready, or until both wait (then
/// `Pending`); an ended connection is dropped from `slot`.
///
/// Both are polled with the task's own waker: whatever wakes one of them (the network, a
/// streamed request body, hyper's channels between the connection and the response) wakes
/// the task, which polls both again, so no wake-up depends on how hyper's channels signal
/// each other. (An earlier version relayed the connection's wake-ups through a waker of its
/// own to save one task poll per request; docs/design.md, "The proxy's own machinery", says
/// why it went.)
fn drive<C: Future + Unpin, T>(
    slot: &mut Option<C>,
    cx: &mut Context<'_>,
    mut progress: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> Poll<T> {
    loop {
        if let Poll::Ready(v) = progress(cx) {
            return Poll::Ready(v);
        }
        let Some(conn) = slot.as_mut() else {
            // The connection has ended and been dropped: `progress` had its answer above.
            return Poll::Pending;
        };
        if Pin::new(conn).poll(cx).is_ready() {
            *slot = None;
            continue;
        }
        // The connection may have handed `progress` what it read.
        return progress(cx);
    }
}

impl H1 {
    /// Tells whether the connection can take a request now. Usually the poll that read the
    /// end of the previous response already left it waiting for the next request; otherwise it
    /// is polled once more to catch up (a close by the upstream, the end of the exchange),
    /// under a no-op waker: the request that takes it drives it with its own.
    fn usable(&mut self) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        if self.tx.is_ready() {
            return true;
        }
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        if Pin::new(conn).poll(cx).is_ready() {
            self.conn = None;
            return false;
        }
        self.tx.is_ready() && !self.tx.is_closed()
    }

    /// Sends `req` and drives the connection until the response head is in.
    async fn attempt(&mut self, req: Request<UpstreamBody>) -> Attempt {
        let mut sent = std::pin::pin!(self.tx.try_send_request(req));
        let conn = &mut self.conn;
        Attempt::of(std::future::poll_fn(|cx| drive(conn, cx, |cx| sent.as_mut().poll(cx))).await)
    }

    /// A connection just made.
    fn new(tx: http1::SendRequest<UpstreamBody>, conn: H1Conn, proxied: bool) -> Box<Self> {
        Box::new(H1 {
            tx,
            conn: Some(conn),
            proxied,
        })
    }
}

/// How connections to upstreams are made: TCP (or a tunnel through an egress proxy), then TLS.
/// Built once and shared by every client.
#[derive(Clone)]
pub(crate) struct Egress {
    connector: hyper_rustls::HttpsConnector<ProxyConnector>,
    /// The same, offering only HTTP/1.1 by ALPN: for WebSocket handshakes (RFC 6455 needs
    /// HTTP/1.1's `Upgrade`), which an upstream that prefers HTTP/2 would otherwise not get.
    http1_connector: hyper_rustls::HttpsConnector<ProxyConnector>,
    matcher: Arc<Matcher>,
}

impl Egress {
    /// The connector, with the proxy variables from `env` and the TLS settings `tls`.
    pub(crate) fn new(connect_timeout: Duration, tls: rustls::ClientConfig, env: &dyn Env) -> Self {
        let matcher = Arc::new(matcher_from(env));
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        // A long SSE stream or WebSocket relay to an upstream that vanished (a NAT or load
        // balancer dropped the flow) is noticed by the kernel's probes, not only by timeouts.
        http.set_keepalive(Some(TCP_KEEPALIVE));
        let connector = ProxyConnector {
            http,
            matcher: matcher.clone(),
        };
        let http1_connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector.clone());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        Egress {
            connector,
            http1_connector,
            matcher,
        }
    }

    /// The `Proxy-Authorization` value to add to requests for the upstream at `scheme` and
    /// `authority` when it is plain HTTP sent through a proxy with credentials (a `CONNECT`
    /// tunnel carries them itself).
    pub(crate) fn proxy_auth(
        &self,
        scheme: &http::uri::Scheme,
        authority: &http::uri::Authority,
    ) -> Option<HeaderValue> {
        if *scheme != http::uri::Scheme::HTTP {
            return None;
        }
        let upstream = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        let mut v = self.matcher.intercept(&upstream)?.basic_auth()?.clone();
        v.set_sensitive(true);
        Some(v)
    }
}

impl UpstreamClient {
    /// A client with an empty pool for the upstream at `scheme` and `authority`, connecting
    /// through `egress`.
    ///
    /// The client keeps copies of the authority and its `Host` header of its own, not clones
    /// sharing a reference count with other workers' clients: every request clones them.
    pub(crate) fn new(
        egress: &Egress,
        settings: &ClientSettings,
        scheme: &http::uri::Scheme,
        authority: &http::uri::Authority,
    ) -> Self {
        let text = authority.as_str();
        let authority =
            http::uri::Authority::from_maybe_shared(Bytes::copy_from_slice(text.as_bytes()))
                .unwrap_or_else(|_| authority.clone());
        // An authority is visible ASCII, always a valid header value.
        let host = HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""));
        let connector = if settings.http1_only {
            &egress.http1_connector
        } else {
            &egress.connector
        };
        UpstreamClient {
            inner: Arc::new(Pool {
                connector: connector.clone(),
                http1_connector: egress.http1_connector.clone(),
                scheme: scheme.clone(),
                authority,
                host,
                h2c: settings.h2c,
                connect_timeout: settings.connect_timeout,
                idle_timeout: settings.pool_idle_timeout,
                idle: Mutex::new(Vec::new()),
                h2: Mutex::new(None),
                // Only TLS negotiates the protocol (ALPN); plain HTTP is HTTP/1.1 unless h2c.
                proto: AtomicU8::new(if settings.h2c {
                    Proto::Http2
                } else if *scheme == http::uri::Scheme::HTTPS && !settings.http1_only {
                    Proto::Unknown
                } else {
                    Proto::Http1
                } as u8),
                connecting: tokio::sync::Mutex::new(()),
                #[cfg(feature = "bench-hyper-util-client")]
                legacy: hyper_util::client::legacy::Client::builder(BoxingExecutor)
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(settings.pool_idle_timeout)
                    .pool_max_idle_per_host(MAX_IDLE)
                    .http2_only(settings.h2c)
                    .build(connector.clone()),
            }),
        }
    }

    /// The `Host` header value for the upstream (this client's own copy).
    pub(crate) fn host(&self) -> &HeaderValue {
        &self.inner.host
    }

    /// A new HTTP/1.1-only connection to the upstream, outside the pool (a WebSocket
    /// handshake takes its connection for good), and whether it goes to a forward proxy (the
    /// request then needs [`absolute`](Self::absolute) form). Bounded by the connect timeout.
    pub(crate) async fn connect_http1(&self) -> Result<(UpgradeIo, bool), SendError> {
        let io = self.connect_with(&self.inner.http1_connector).await?;
        let proxied = io.connected().is_proxied();
        Ok((io, proxied))
    }

    /// A new connection made by `connector`, within the connect timeout.
    async fn connect_with(
        &self,
        connector: &hyper_rustls::HttpsConnector<ProxyConnector>,
    ) -> Result<UpgradeIo, SendError> {
        let pool = &self.inner;
        tokio::time::timeout(
            pool.connect_timeout,
            // The connector needs only the scheme and authority: `scheme://authority/`.
            tower_service::Service::call(&mut connector.clone(), self.absolute(&Uri::default())),
        )
        .await
        .map_err(|_| {
            SendError::Connect(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {:?}", pool.connect_timeout),
            )))
        })?
        .map_err(SendError::Connect)
    }

    /// `target` (origin-form) as an absolute URI on this client's upstream.
    pub(crate) fn absolute(&self, target: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.inner.scheme.clone());
        parts.authority = Some(self.inner.authority.clone());
        parts.path_and_query = Some(
            target
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or_else(|_| target.clone())
    }

    /// Takes the most recently used idle HTTP/1.1 connection, dropping those idle too long.
    ///
    /// It is not polled here: [`put_back`](Self::put_back) left it ready for a request, and
    /// a close by the upstream since then is seen by the attempt itself, which hands the
    /// unwritten request back for the next connection (see [`send`](Self::send)). Polling it
    /// here as well would cost as much as a third of the pool's work per request.
    fn checkout(&self) -> Option<Box<H1>> {
        loop {
            let idle = lock(&self.inner.idle).pop()?;
            if idle.since.elapsed() > self.inner.idle_timeout || idle.h1.tx.is_closed() {
                continue;
            }
            return Some(idle.h1);
        }
    }

    /// Sends `req`, whose URI is the origin-form target (`/path?query`) and which carries its
    /// `Host` header.
    ///
    /// The common case, an idle HTTP/1.1 connection, runs inline; the shared HTTP/2
    /// connection and a new connection are separate boxed futures. Their states (a connector,
    /// handshakes, timers) would otherwise make this future, and every future awaiting it up to
    /// the connection's task, several kilobytes larger (~7 KB instead of ~1.3 KB; a test pins
    /// the ratio).
    #[cfg(not(feature = "bench-hyper-util-client"))]
    pub(crate) async fn send(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        // A shared HTTP/2 connection.
        if let Some(tx) = self.shared_h2() {
            match Box::pin(self.send_h2(tx, req)).await {
                Ok(sent) => return sent,
                Err(back) => req = back,
            }
        }
        // An idle HTTP/1.1 connection.
        while let Some(mut h1) = self.checkout() {
            if h1.proxied {
                *req.uri_mut() = self.absolute(req.uri());
            }
            match h1.attempt(req).await {
                Attempt::Done(resp) => return Ok(self.response(resp, h1)),
                Attempt::Again(mut r) => {
                    if h1.proxied {
                        *r.uri_mut() = origin_form(r.uri());
                    }
                    req = r;
                }
                Attempt::Failed(e) => return Err(SendError::Http(e)),
            }
        }
        Box::pin(self.send_on_new_connection(req)).await
    }

    /// [`send`](Self::send) through hyper-util's pooled client instead of this pool (the
    /// feature `bench-hyper-util-client`, for bench/ only).
    #[cfg(feature = "bench-hyper-util-client")]
    pub(crate) async fn send(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        *req.uri_mut() = self.absolute(req.uri());
        // hyper-util sets `Host` from the URI on HTTP/1.1 and leaves HTTP/2 its `:authority`.
        req.headers_mut().remove(http::header::HOST);
        // Its errors wrap hyper's; for the benchmark they all answer as a failed connection.
        match self.inner.legacy.request(req).await {
            Ok(resp) => Ok(resp.map(PooledBody::spawned)),
            Err(e) => Err(SendError::Connect(Box::new(e))),
        }
    }

    /// The shared HTTP/2 connection, unless there is none or it has closed.
    fn shared_h2(&self) -> Option<H2Conn> {
        lock(&self.inner.h2)
            .as_ref()
            .filter(|conn| !conn.is_closed())
            .cloned()
    }

    /// Connects (see [`Egress`]) and sends `req` on the new connection, which becomes the
    /// shared one if it speaks HTTP/2.
    ///
    /// Unless the upstream's last new connection spoke HTTP/1.1, one request at a time
    /// connects: the others wait for it (at most the connect timeout, which bounds its
    /// connection and handshake) and then share its HTTP/2 connection, or, if it turned out
    /// to be HTTP/1.1, connect side by side. (hyper-util's pool gates only a client set to
    /// HTTP/2 only: given the same cold burst over ALPN, it opens a connection per request;
    /// `tests/tls.rs` checks ours.)
    async fn send_on_new_connection(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let pool = &self.inner;
        if pool.proto.load(Ordering::Relaxed) == Proto::Http1 as u8 {
            let io = self.connect_with(&pool.connector).await?;
            return self.send_on(io, req).await;
        }
        // Bounded: behind a connection that hangs until its timeout, the next one in line
        // connects on its own rather than waiting its turn behind every other.
        let gate = tokio::time::timeout(pool.connect_timeout, pool.connecting.lock())
            .await
            .ok();
        if let Some(tx) = self.shared_h2() {
            drop(gate);
            return match self.send_h2(tx, req).await {
                Ok(sent) => sent,
                // It closed meanwhile: connect again (once; a new connection is not retried).
                Err(req) => {
                    let io = self.connect_with(&pool.connector).await?;
                    self.send_on(io, req).await
                }
            };
        }
        if pool.proto.load(Ordering::Relaxed) == Proto::Http1 as u8 {
            drop(gate);
            let io = self.connect_with(&pool.connector).await?;
            return self.send_on(io, req).await;
        }
        let io = self.connect_with(&pool.connector).await?;
        if !(io.connected().is_negotiated_h2() || pool.h2c) {
            pool.proto.store(Proto::Http1 as u8, Ordering::Relaxed);
            drop(gate);
            return self.send_on(io, req).await;
        }
        let tx = tokio::time::timeout(pool.connect_timeout, self.handshake_h2(io))
            .await
            .map_err(|_| {
                SendError::Connect(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no HTTP/2 handshake within {:?}", pool.connect_timeout),
                )))
            })??;
        drop(gate);
        self.send_h2_new(tx, req).await
    }

    /// The HTTP/2 handshake on `io`, whose connection task is spawned; the connection becomes
    /// the shared one.
    async fn handshake_h2(&self, io: UpgradeIo) -> Result<H2Conn, SendError> {
        let conn = H2Conn::handshake(io)
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        let pool = &self.inner;
        pool.proto.store(Proto::Http2 as u8, Ordering::Relaxed);
        *lock(&pool.h2) = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `req` on the HTTP/2 connection `conn` just made.
    async fn send_h2_new(
        &self,
        conn: H2Conn,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        match self.send_h2(conn, req).await {
            Ok(sent) => sent,
            Err(_) => Err(SendError::Connect(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the upstream closed the new HTTP/2 connection before the request was sent",
            )))),
        }
    }

    /// Sends `req` on the connection `io` just made: the shared HTTP/2 one if it negotiated
    /// HTTP/2, else a new HTTP/1.1 connection of the pool.
    async fn send_on(
        &self,
        io: UpgradeIo,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let connected = io.connected();
        if connected.is_negotiated_h2() || self.inner.h2c {
            let tx = self.handshake_h2(io).await?;
            return self.send_h2_new(tx, req).await;
        }
        let proxied = connected.is_proxied();
        // A flat write buffer, as on the client side (see `server::accept_loop`).
        let (tx, conn) = http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        let mut h1 = H1::new(tx, conn, proxied);
        if proxied {
            *req.uri_mut() = self.absolute(req.uri());
        }
        match h1.attempt(req).await {
            Attempt::Done(resp) => Ok(self.response(resp, h1)),
            Attempt::Again(_) => Err(SendError::Connect(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the upstream closed the new connection before the request was sent",
            )))),
            Attempt::Failed(e) => Err(SendError::Http(e)),
        }
    }

    fn response(&self, resp: Response<Incoming>, h1: Box<H1>) -> Response<PooledBody> {
        let client = self.clone();
        resp.map(|inner| {
            let ended = inner.is_end_stream();
            let mut body = PooledBody {
                inner: Inner::Http1(inner),
                h1: Some((client, h1)),
            };
            if ended {
                body.release();
            }
            body
        })
    }

    /// Returns a connection whose response has been read to the end. It is kept only if it
    /// can take the next request now: a connection still sending a request body (the upstream
    /// answered before reading it all) is closed, as nginx does, rather than left undriven.
    fn put_back(&self, mut h1: Box<H1>) {
        if !h1.usable() {
            return;
        }
        // Idle, it is polled by no one: a close by the upstream is seen at the next checkout
        // (the waker it last registered belongs to a task that has moved on; a wake-up of it
        // costs that task one spurious poll at most).
        let now = Instant::now();
        let mut idle = lock(&self.inner.idle);
        // Oldest first: connections idle too long are closed here rather than kept until a
        // burst reaches them.
        let expired = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) > self.inner.idle_timeout)
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE {
            idle.push(Idle { h1, since: now });
        }
    }
}

impl UpstreamClient {
    /// Sends `req` (origin-form) on the shared HTTP/2 connection `conn`; hands the request
    /// back (untouched) when it was not sent (the connection is closing), so that another
    /// connection can take it.
    async fn send_h2(
        &self,
        conn: H2Conn,
        mut req: Request<UpstreamBody>,
    ) -> std::result::Result<Result<Response<PooledBody>, SendError>, Request<UpstreamBody>> {
        let Some(mut tx) = conn.ready().await else {
            return Err(req);
        };
        *req.uri_mut() = self.absolute(req.uri());
        // RFC 9113 §8.3.1: the authority goes in `:authority` (from the URI), and a `Host`
        // beside it is a duplicate that nginx answers with 400.
        req.headers_mut().remove(http::header::HOST);
        Ok(h2_upstream::send(&mut tx, req)
            .await
            .map(|resp| resp.map(PooledBody::h2))
            .map_err(SendError::Http2))
    }
}

/// Spawns hyper's HTTP/2 tasks (one or two per request: the request body's pipe, the
/// response's hand-over) on tokio, boxed first: for hyper-util's client under the feature
/// `bench-hyper-util-client` (the pool's own HTTP/2 side is `h2_upstream`).
///
/// tokio keeps a spawned future inline in its task cell unless it is larger than 16 KiB, and
/// moves it (and rewrites the cell's stage) several times between spawn and completion;
/// hyper's per-request futures are large, so each move is a large copy. Boxed, the moves are a
/// pointer's. (The figures are in docs/benchmarks.md, "The TLS path".)
#[cfg(feature = "bench-hyper-util-client")]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BoxingExecutor;

#[cfg(feature = "bench-hyper-util-client")]
impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}

/// The origin-form target (`/path?query`) of `uri`.
pub(crate) fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from)
}

/// A response body. On HTTP/1.1 it drives its connection as it is polled (see
/// [`UpstreamClient`]) and returns it to the pool once read to the end; on HTTP/2 it reads its
/// stream (see [`h2_upstream`]).
pub(crate) struct PooledBody {
    inner: Inner,
    h1: Option<(UpstreamClient, Box<H1>)>,
}

enum Inner {
    Http1(Incoming),
    Http2(H2Body),
}

/// Why a response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error(transparent)]
    Http1(hyper::Error),
    #[error(transparent)]
    Http2(h2::Error),
}

impl PooledBody {
    /// A body fed by a connection that runs as its own task (hyper-util's client).
    #[cfg(feature = "bench-hyper-util-client")]
    fn spawned(inner: Incoming) -> Self {
        PooledBody {
            inner: Inner::Http1(inner),
            h1: None,
        }
    }

    fn h2(body: H2Body) -> Self {
        PooledBody {
            inner: Inner::Http2(body),
            h1: None,
        }
    }

    /// Whether the body's connection is driven by its own polls: then `Pending` means the
    /// upstream has sent nothing more yet, and there is no other task to wait for.
    pub(crate) fn is_driven_inline(&self) -> bool {
        self.h1.is_some()
    }

    fn release(&mut self) {
        if let Some((client, h1)) = self.h1.take() {
            client.put_back(h1);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let inner = match &mut this.inner {
            Inner::Http1(inner) => inner,
            Inner::Http2(body) => {
                return Pin::new(body)
                    .poll_frame(cx)
                    .map(|f| f.map(|f| f.map_err(BodyError::Http2)));
            }
        };
        let polled = match this.h1.as_mut() {
            Some((_, h1)) => drive(&mut h1.conn, cx, |cx| Pin::new(&mut *inner).poll_frame(cx)),
            None => Pin::new(&mut *inner).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.h1 = None,
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled.map(|f| f.map(|f| f.map_err(BodyError::Http1)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Http1(b) => b.is_end_stream(),
            Inner::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Inner::Http1(b) => b.size_hint(),
            Inner::Http2(b) => b.size_hint(),
        }
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
pub(crate) fn tls_config(ca_bundle: Option<&std::path::Path>) -> Result<rustls::ClientConfig> {
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
    Ok(cfg)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The future of the common path stays small: the new-connection and HTTP/2 paths are
    /// boxed, so their connector, handshake and timer states are not part of it (1.3 KB
    /// against the new-connection future's 7.2 KB, with rustc 1.95).
    #[test]
    fn the_send_future_stays_small() {
        let egress = Egress::new(
            Duration::from_secs(1),
            tls_config(None).unwrap(),
            &crate::source::MapEnv(Default::default()),
        );
        let client = UpstreamClient::new(
            &egress,
            &ClientSettings {
                connect_timeout: Duration::from_secs(1),
                pool_idle_timeout: Duration::from_secs(90),
                h2c: false,
                http1_only: false,
            },
            &http::uri::Scheme::HTTP,
            &http::uri::Authority::from_static("127.0.0.1:9"),
        );
        let req = Request::new(Either::Left(Full::new(Bytes::new())));
        let fut = client.send(req);
        let size = std::mem::size_of_val(&fut);
        let req = Request::new(Either::Left(Full::new(Bytes::new())));
        let boxed = std::mem::size_of_val(&client.send_on_new_connection(req));
        assert!(
            size * 2 < boxed,
            "UpstreamClient::send's future is {size} bytes, the boxed new-connection one {boxed}"
        );
    }

    /// Upstream connections probe an idle peer (`SO_KEEPALIVE` with `TCP_KEEPIDLE`).
    #[tokio::test]
    async fn upstream_connections_have_tcp_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let egress = Egress::new(
            Duration::from_secs(1),
            tls_config(None).unwrap(),
            &crate::source::MapEnv(Default::default()),
        );
        let mut connector = egress.connector.clone();
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let io = tower_service::Service::call(&mut connector, uri)
            .await
            .unwrap();
        let hyper_rustls::MaybeHttpsStream::Http(conn) = io else {
            panic!("a plain-HTTP upstream got TLS");
        };
        let sock = socket2::SockRef::from(conn.io.inner());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE);
    }
}
