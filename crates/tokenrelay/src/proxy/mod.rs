//! The sidecar: a streaming reverse proxy that injects fresh tokens.
//!
//! ```text
//! request → local key check → route (path prefix / listener) → strip inbound credentials
//!   → cache.get (refresh first if < min_remaining left) → inject → forward, streaming both ways
//!   → on `retry_on` status: invalidate that generation, re-acquire, retry once if the body
//!     was kept (≤ replay limit), else pass the status through → response
//! ```
//!
//! `/healthz`, `/readyz`, `/metrics` and `/status` are answered on the main listener unless an
//! admin listener is configured. The proxy's own errors are JSON in the provider's error shape.
//!
//! ```no_run
//! # async fn demo() -> tokenrelay::Result<()> {
//! use std::sync::Arc;
//! use tokenrelay::config::Config;
//! use tokenrelay::proxy::{Proxy, ProxyOptions};
//! use tokenrelay::source::ProcessEnv;
//!
//! let cfg = Config::from_file("tokenrelay.toml".as_ref())?;
//! let proxy = Proxy::new(&cfg, &(Arc::new(ProcessEnv) as _), ProxyOptions::default())?;
//! let bound = proxy.bind().await?;
//! println!("listening on {}", bound.local_addr());
//! bound.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod admin;
pub(crate) mod builder;
mod coalesce;
mod forward;
mod guard;
mod h2_upstream;
mod headers;
mod metrics;
mod server;
mod upstream;
mod websocket;

pub use builder::{ProviderSpec, ProxyBuilder, Upstream};
pub use server::BoundProxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use crate::cache::{Cache, CacheEntry};
#[cfg(doc)]
use crate::config::DEFAULT_UPSTREAM_TIMEOUT;
use crate::config::{
    Config, ErrorStyle, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS,
};
use crate::error::{Error, Result};
use crate::inject::{Injector, Style};
use crate::secret::Secret;
use crate::source::{SharedEnv, Source};

/// Largest request body kept in memory so that the request can be replayed after a 401
/// (1 MiB): chat requests, even with long histories, fit; a larger upload is streamed and a
/// 401 on it is passed through to the client (the next request gets a fresh token).
pub const DEFAULT_REPLAY_LIMIT: usize = 1024 * 1024;

/// How long in-flight requests (and streams) may run after SIGINT/SIGTERM before the proxy
/// closes them (30 s).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Time allowed to connect to an upstream (10 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of the proxy's responses.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Options that are not part of the config file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyOptions {
    /// Overrides the config's `listen`.
    pub listen: Option<SocketAddr>,
    /// Overrides the config's `admin_listen`.
    pub admin_listen: Option<SocketAddr>,
    /// The key local clients must present (`Authorization: Bearer`, `api-key` or `x-api-key`).
    pub local_key: Option<Secret>,
    /// See [`DEFAULT_REPLAY_LIMIT`].
    pub replay_limit: usize,
    /// See [`DEFAULT_SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
    /// Speak HTTP/2 with prior knowledge to plain-HTTP upstreams (h2c).
    pub upstream_h2c: bool,
    /// Offer HTTP/1.1 only to HTTPS upstreams (ALPN `http/1.1`), instead of h2 and HTTP/1.1:
    /// nginx's latency at one request at a time, less throughput under load than one
    /// multiplexed h2 connection (docs/benchmarks.md, "The TLS path").
    pub upstream_http1: bool,
    /// Worker threads, each with its own single-threaded runtime, listener socket
    /// (`SO_REUSEPORT`) and upstream connection pool (default: one per CPU, see
    /// [`default_workers`]).
    pub workers: usize,
    /// `Host` values served besides loopback ones, added to the config's `allowed_hosts`.
    pub allowed_hosts: Vec<String>,
    /// Browser origins served, added to the config's `allowed_origins`.
    pub allowed_origins: Vec<String>,
}

/// One worker per available CPU (at least one): like nginx's `worker_processes auto`, a
/// request is served start to finish on one thread, with no cross-thread wake-ups.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            listen: None,
            admin_listen: None,
            local_key: None,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            upstream_h2c: false,
            upstream_http1: false,
            workers: default_workers(),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

/// Checks the listener settings of `cfg` (`allowed_hosts`, `allowed_origins`, timeouts,
/// `max_connections`), as [`Proxy::new`] will use them.
///
/// # Errors
/// A config error naming the key.
pub(crate) fn check_listener_settings(cfg: &Config) -> Result<()> {
    guard::Guard::new(false, &cfg.allowed_hosts, &cfg.allowed_origins)?;
    check_limits(
        cfg.header_read_timeout,
        cfg.idle_timeout,
        cfg.max_connections,
    )
}

fn check_limits(
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_connections: Option<usize>,
) -> Result<()> {
    for (key, d) in [
        ("header_read_timeout", header_read_timeout),
        ("idle_timeout", idle_timeout),
    ] {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(key, "must be more than 0s"));
        }
    }
    if max_connections == Some(0) {
        return Err(Error::config("max_connections", "must be at least 1"));
    }
    Ok(())
}

/// One provider at run time.
pub(crate) struct Provider {
    pub name: Arc<str>,
    /// The upstream base URL, validated once.
    pub upstream: Upstream,
    /// `Proxy-Authorization` for a plain-HTTP upstream reached through a forward proxy.
    pub proxy_auth: Option<HeaderValue>,
    pub prefix: Option<String>,
    /// The header the token goes in (shown by `/status`).
    pub inject_header: HeaderName,
    pub entry: CacheEntry,
    /// See [`DEFAULT_UPSTREAM_TIMEOUT`].
    pub upstream_timeout: Duration,
    pub style: ErrorStyle,
    /// What each worker thread uses of this provider on every request (see [`Lane`]).
    pub lanes: Box<[Lane]>,
    pub metrics: metrics::ProviderMetrics,
    /// Open WebSockets (see [`websocket`]).
    pub sockets: Arc<websocket::Sockets>,
}

impl Provider {
    /// The lane of worker `worker`.
    pub(crate) fn lane(&self, worker: usize) -> &Lane {
        &self.lanes[worker % self.lanes.len()]
    }
}

/// One worker thread's share of a provider: what a request needs to write, or to clone
/// (a reference count is a write), held once per worker. Requests on different workers then
/// touch no common cache line, as nginx's worker processes share none; one shared copy would
/// move its lines between the CPUs on every request. Aligned to two cache lines (the
/// adjacent-line prefetcher pairs them) so that lanes side by side never share one.
#[repr(align(128))]
pub(crate) struct Lane {
    /// This worker's connection pool to the upstream, with its own copies of the upstream's
    /// authority and `Host` header.
    pub client: upstream::UpstreamClient,
    /// This worker's injection rules and the header value of the latest token generation it
    /// sent.
    pub injector: Injector,
}

/// How a listener routes.
#[derive(Clone)]
pub(crate) struct Router {
    root: Option<usize>,
    prefixed: Vec<(String, usize)>,
    admin: bool,
}

pub(crate) struct State {
    pub providers: Vec<Arc<Provider>>,
    pub local_key: Option<Secret>,
    /// The browser-origin rules.
    pub guard: guard::Guard,
    /// Connection limits and timeouts of every listener.
    pub limits: server::Limits,
    /// Counters that belong to no provider (connections, refusals before routing).
    pub listener_metrics: metrics::ListenerMetrics,
    /// Open WebSockets of every provider, closed at the end of the shutdown grace.
    pub sockets: Arc<websocket::Shutdown>,
}

/// A configured proxy, not yet listening.
pub struct Proxy {
    state: Arc<State>,
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    own_listeners: Vec<(SocketAddr, usize)>,
    shutdown_grace: Duration,
    workers: usize,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("listen", &self.listen)
            .field("providers", &self.state.providers.len())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A builder taking providers and sources as values.
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    /// Builds the proxy for every provider in `cfg` (each must have an `upstream`):
    /// [`ProxyBuilder::from_config`] with `opts`.
    ///
    /// # Errors
    /// A config error: a provider without upstream, two root providers on one listener, a
    /// non-loopback listener without a local key, a source that cannot be built.
    pub fn new(cfg: &Config, env: &SharedEnv, opts: ProxyOptions) -> Result<Proxy> {
        ProxyBuilder::from_config(cfg, env)?.options(opts).build()
    }

    /// Like [`Proxy::new`], but with the sources given (one per provider, in order) instead
    /// of built from each provider's `[provider.source]`: for embedding custom sources.
    ///
    /// # Errors
    /// As [`Proxy::new`], and when the number of sources does not match.
    pub fn with_sources(
        cfg: &Config,
        sources: Vec<Arc<dyn Source>>,
        env: &SharedEnv,
        opts: ProxyOptions,
    ) -> Result<Proxy> {
        ProxyBuilder::from_config_with_sources(cfg, sources, env)?
            .options(opts)
            .build()
    }

    /// The proxy of a builder whose run-time options are merged in.
    fn assemble(b: ProxyBuilder, opts: ProxyOptions, env: &SharedEnv) -> Result<Proxy> {
        if b.providers.is_empty() {
            return Err(Error::config("config", "no [[provider]] is configured"));
        }
        check_limits(b.header_read_timeout, b.idle_timeout, b.max_connections)?;
        let mut names = std::collections::HashSet::new();
        let mut prefixes = std::collections::HashSet::new();
        for p in &b.providers {
            if !names.insert(p.name.as_str()) {
                return Err(Error::config(
                    format!("provider {}", p.name),
                    "duplicate provider name",
                ));
            }
            if let Some(prefix) = &p.path_prefix {
                if !prefixes.insert(prefix.as_str()) {
                    return Err(Error::config(
                        format!("provider {}.path_prefix", p.name),
                        "duplicate path prefix",
                    ));
                }
            }
            if p.max_socket_lifetime.is_some_and(|d| d.is_zero()) {
                return Err(Error::config(
                    format!("provider {}.max_socket_lifetime", p.name),
                    "must be more than 0s",
                ));
            }
            if p.upstream_timeout.is_zero() {
                return Err(Error::config(
                    format!("provider {}.upstream_timeout", p.name),
                    "must be more than 0s",
                ));
            }
            if p.style == Style::AwsSigV4 && p.sigv4.is_none() {
                return Err(Error::config(
                    format!("provider {}.aws_region", p.name),
                    "inject = \"aws-sigv4\" needs a region",
                ));
            }
        }
        let workers = opts.workers.max(1);
        let settings = upstream::ClientSettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: Duration::from_secs(90),
            h2c: opts.upstream_h2c,
            http1_only: opts.upstream_http1,
        };
        let egress = upstream::Egress::new(
            settings.connect_timeout,
            upstream::tls_config(b.ca_bundle.as_deref())?,
            env.as_ref(),
        );
        let sockets = Arc::new(websocket::Shutdown::new(
            b.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        ));
        let mut providers = Vec::new();
        let mut own_listeners = Vec::new();
        for (i, p) in b.providers.into_iter().enumerate() {
            let (scheme, authority) = (p.upstream.scheme(), p.upstream.authority());
            let entry = Cache::new(p.source.clone()).entry(p.request());
            let mut injector = Injector::new(entry.clone());
            injector.set_style(p.style.clone());
            injector.set_extra_headers(p.headers.clone());
            injector.set_retry_on(p.retry_on.clone());
            injector.set_min_remaining(p.min_remaining);
            injector.set_min_refresh_interval(p.min_refresh_interval);
            injector.set_replay_limit(opts.replay_limit);
            if let Some((region, service)) = &p.sigv4 {
                injector.set_sigv4(region.clone(), service.clone());
            }
            injector.set_origin(scheme.clone(), authority.clone());
            let lanes = (0..workers)
                .map(|_| Lane {
                    client: upstream::UpstreamClient::new(&egress, &settings, scheme, authority),
                    injector: injector.clone(),
                })
                .collect();
            if let Some(addr) = p.listen {
                own_listeners.push((addr, i));
            }
            providers.push(Arc::new(Provider {
                name: p.name.as_str().into(),
                proxy_auth: egress.proxy_auth(scheme, authority),
                prefix: p.path_prefix.clone(),
                inject_header: p.style.header_name(),
                entry,
                upstream_timeout: p.upstream_timeout,
                style: p.effective_error_style(),
                lanes,
                metrics: metrics::ProviderMetrics::new(workers),
                upstream: p.upstream,
                sockets: websocket::Sockets::new(p.max_socket_lifetime, sockets.clone()),
            }));
        }
        let listen = match b.listen {
            Some(a) => a,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| Error::config("listen", "bad default"))?,
        };
        let admin_listen = b.admin_listen;
        let local_key = b.local_key;
        if local_key.as_ref().is_some_and(Secret::is_empty) {
            return Err(Error::config("local key", "the local key is empty"));
        }
        let all_addrs = std::iter::once(listen)
            .chain(admin_listen)
            .chain(own_listeners.iter().map(|(a, _)| *a));
        for addr in all_addrs {
            if !addr.ip().is_loopback() && local_key.is_none() {
                return Err(Error::config(
                    "listen",
                    format!("{addr} is not a loopback address: binding it requires a local key (local_key_env / local_key_file) so that only your clients can use your tokens"),
                ));
            }
        }
        let guard = guard::Guard::new(local_key.is_some(), &b.allowed_hosts, &b.allowed_origins)?;
        let limits = server::Limits {
            header_read_timeout: b.header_read_timeout.unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
            idle_timeout: b.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            max_connections: b.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        };
        let state = State {
            providers,
            local_key,
            guard,
            limits,
            listener_metrics: metrics::ListenerMetrics::default(),
            sockets,
        };
        let proxy = Proxy {
            state: Arc::new(state),
            listen,
            admin_listen,
            own_listeners,
            shutdown_grace: opts.shutdown_grace,
            workers,
        };
        proxy.main_router()?;
        Ok(proxy)
    }

    fn main_router(&self) -> Result<Router> {
        let mut root = None;
        let mut prefixed = Vec::new();
        for (i, p) in self.state.providers.iter().enumerate() {
            if self.own_listeners.iter().any(|(_, j)| *j == i) {
                continue;
            }
            match &p.prefix {
                Some(pre) => prefixed.push((pre.clone(), i)),
                None if root.is_none() => root = Some(i),
                None => {
                    return Err(Error::config(
                        format!("provider {}", p.name),
                        "two providers share the main listener without a path_prefix; give each but one a path_prefix (or a listen address of its own)",
                    ))
                }
            }
        }
        // Longest prefix first.
        prefixed.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(Router {
            root,
            prefixed,
            admin: self.admin_listen.is_none(),
        })
    }
}

impl Router {
    /// The error style of this listener's answers that belong to no one route: its root
    /// provider's, else OpenAI's.
    fn style(&self, state: &State) -> ErrorStyle {
        self.root
            .and_then(|i| state.providers.get(i))
            .map_or(ErrorStyle::Openai, |p| p.style)
    }
}

#[cold]
#[inline(never)]
fn no_provider(router: &Router, path: &str) -> Response<ProxyBody> {
    let known: Vec<_> = router.prefixed.iter().map(|(p, _)| p.as_str()).collect();
    forward::plain_error(
        404,
        &format!(
            "no provider for path {path:?} (prefixes: {})",
            known.join(", ")
        ),
    )
}

#[cold]
#[inline(never)]
fn local_key_refused(provider: &Provider, worker: usize) -> Response<ProxyBody> {
    provider
        .metrics
        .shard(worker)
        .local_key_rejections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    forward::error_response(
        provider.style,
        401,
        "local_key_invalid",
        &format!(
            "tokenrelay: provider {}: missing or wrong local key (send it as Authorization: Bearer, api-key or x-api-key)",
            provider.name
        ),
    )
}

/// Answers a request refused before it reached a provider's upstream, in `style`.
#[cold]
#[inline(never)]
fn refused(state: &State, style: ErrorStyle, why: guard::Refusal) -> Response<ProxyBody> {
    state.listener_metrics.refused(why);
    let (status, code, message) = why.answer();
    tracing::info!(reason = why.label(), status, "request refused");
    let mut resp = forward::error_response(style, status, code, &format!("tokenrelay: {message}"));
    if why == guard::Refusal::Method {
        resp.headers_mut().insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
    }
    resp
}

async fn handle(ctx: &server::Ctx, req: Request<Incoming>) -> Response<ProxyBody> {
    let (state, router) = (&ctx.state, &ctx.router);
    if guard::refused_method(req.method()) {
        // Before routing: a CONNECT's target has no path to route by.
        return refused(state, router.style(state), guard::Refusal::Method);
    }
    let path = req.uri().path();
    let admin = router.admin && admin::is_admin_path(path);
    // Route first (the path alone decides), so that refusals come in the provider's shape.
    let routed = if admin {
        None
    } else if router.root.is_none() && router.prefixed.is_empty() {
        return forward::plain_error(404, "not found");
    } else {
        let mut chosen = None;
        for (prefix, i) in &router.prefixed {
            if let Some(rest) = path.strip_prefix(prefix.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    chosen = Some((*i, prefix.len()));
                    break;
                }
            }
        }
        let Some((idx, strip)) = chosen.or(router.root.map(|i| (i, 0))) else {
            return no_provider(router, path);
        };
        let Some(provider) = state.providers.get(idx) else {
            return forward::plain_error(500, "routing table is inconsistent");
        };
        Some((provider, strip))
    };
    let style = routed.map_or(ErrorStyle::Openai, |(p, _)| p.style);
    // Browser-origin rules, the method and the path, before any token is taken.
    let origin = match state.guard.check(&req) {
        Ok(o) => o,
        Err(why) => return refused(state, style, why),
    };
    if req.method() == http::Method::OPTIONS {
        return guard::options_response(&req, origin);
    }
    let mut resp = match routed {
        None => admin::respond(state, &req),
        // An allowed page reads these refusals too (CORS headers below).
        Some((provider, _))
            if state.local_key.as_ref().is_some_and(|key| {
                !forward::has_local_key(req.headers(), key)
                    && !websocket::has_subprotocol_key(&req, key)
            }) =>
        {
            local_key_refused(provider, ctx.worker)
        }
        Some((_, strip)) if guard::climbs_above_root(&path[strip..]) => {
            refused(state, style, guard::Refusal::Path)
        }
        Some((provider, strip)) if websocket::is_handshake(&req) => {
            websocket::forward(provider, req, strip, ctx.worker).await
        }
        Some((provider, strip)) => forward::forward(provider, req, strip, ctx.worker).await,
    };
    if let Some(origin) = origin {
        guard::add_cors(resp.headers_mut(), origin);
    }
    resp
}
