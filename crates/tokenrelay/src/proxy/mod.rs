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
mod coalesce;
mod forward;
mod guard;
mod headers;
mod metrics;
mod server;
mod upstream;
mod websocket;

pub use server::BoundProxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use crate::cache::{Cache, CacheEntry};
use crate::config::{
    Config, ErrorStyle, Inject, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MIN_REFRESH_INTERVAL, DEFAULT_MIN_REMAINING,
    DEFAULT_UPSTREAM_TIMEOUT,
};
use crate::error::{Error, Result};
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
    for (key, d) in [
        ("header_read_timeout", cfg.header_read_timeout),
        ("idle_timeout", cfg.idle_timeout),
    ] {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(key, "must be more than 0s"));
        }
    }
    if cfg.max_connections == Some(0) {
        return Err(Error::config("max_connections", "must be at least 1"));
    }
    Ok(())
}

/// One provider at run time.
pub(crate) struct Provider {
    pub name: Arc<str>,
    /// The upstream URL as configured, without a trailing `/` (shown by `/status`).
    pub upstream: String,
    /// The upstream's scheme and authority, parsed once.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// The upstream's base path without a trailing `/` (may be empty).
    pub base_path: String,
    /// `Proxy-Authorization` for a plain-HTTP upstream reached through a forward proxy.
    pub proxy_auth: Option<HeaderValue>,
    pub prefix: Option<String>,
    pub inject: Inject,
    pub inject_header: HeaderName,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    pub entry: CacheEntry,
    pub retry_on: Vec<u16>,
    pub min_remaining: Duration,
    /// See [`DEFAULT_UPSTREAM_TIMEOUT`].
    pub upstream_timeout: Duration,
    /// See [`DEFAULT_MIN_REFRESH_INTERVAL`].
    pub min_refresh_interval: Duration,
    pub style: ErrorStyle,
    /// What each worker thread uses of this provider on every request (see [`Lane`]).
    pub lanes: Box<[Lane]>,
    pub metrics: metrics::ProviderMetrics,
    /// `(region, service)` when requests are signed with SigV4 instead of carrying a header.
    pub sigv4: Option<(String, String)>,
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
    /// The injected header value of the latest token generation this worker has used.
    pub header_value: std::sync::Mutex<Option<(u64, HeaderValue)>>,
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
    pub replay_limit: usize,
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

/// Splits an upstream URL into scheme, authority and base path (no trailing `/`).
fn parse_upstream(
    at: &str,
    url: &str,
) -> Result<(http::uri::Scheme, http::uri::Authority, String)> {
    let bad = |why: &str| Error::config(format!("{at}.upstream"), format!("{url:?} {why}"));
    let uri: http::Uri = url
        .parse()
        .map_err(|e| bad(&format!("is not a URL: {e}")))?;
    let scheme = uri
        .scheme()
        .filter(|s| matches!(s.as_str(), "http" | "https"))
        .cloned()
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let authority = uri.authority().cloned().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "must not carry credentials (user@host); tokenrelay injects them",
        ));
    }
    if uri.query().is_some() {
        return Err(bad("must not have a query; requests keep their own"));
    }
    Ok((
        scheme,
        authority,
        uri.path().trim_end_matches('/').to_owned(),
    ))
}

impl Proxy {
    /// Builds the proxy for every provider in `cfg` (each must have an `upstream`).
    ///
    /// # Errors
    /// A config error: a provider without upstream, two root providers on one listener, a
    /// non-loopback listener without a local key, a source that cannot be built.
    pub fn new(cfg: &Config, env: &SharedEnv, opts: ProxyOptions) -> Result<Proxy> {
        let mut sources = Vec::with_capacity(cfg.providers.len());
        for (i, p) in cfg.providers.iter().enumerate() {
            let at = format!("provider[{i}] ({})", p.name);
            sources.push(p.source.build(&format!("{at}.source"), env)?);
        }
        Self::with_sources(cfg, sources, env, opts)
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
        if cfg.providers.is_empty() {
            return Err(Error::config("config", "no [[provider]] is configured"));
        }
        if sources.len() != cfg.providers.len() {
            return Err(Error::config(
                "proxy",
                format!(
                    "{} sources for {} providers",
                    sources.len(),
                    cfg.providers.len()
                ),
            ));
        }
        let workers = opts.workers.max(1);
        let settings = upstream::ClientSettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: Duration::from_secs(90),
            h2c: opts.upstream_h2c,
        };
        let egress = upstream::Egress::new(
            settings.connect_timeout,
            upstream::tls_config(cfg.ca_bundle.as_deref())?,
            env.as_ref(),
        );
        let sockets = Arc::new(websocket::Shutdown::new(
            cfg.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        ));
        let mut providers = Vec::new();
        for ((i, p), source) in cfg.providers.iter().enumerate().zip(sources) {
            let at = format!("provider[{i}] ({})", p.name);
            let upstream = p
                .upstream
                .as_deref()
                .ok_or_else(|| {
                    Error::config(at.clone(), "no upstream URL (upstream = \"https://…\")")
                })?
                .trim_end_matches('/')
                .to_owned();
            let (scheme, authority, base_path) = parse_upstream(&at, &upstream)?;
            let lanes = (0..workers)
                .map(|_| Lane {
                    client: upstream::UpstreamClient::new(&egress, &settings, &scheme, &authority),
                    header_value: std::sync::Mutex::new(None),
                })
                .collect();
            let proxy_auth = egress.proxy_auth(&scheme, &authority);
            let entry = Cache::new(source).entry(p.request());
            let inject_header = HeaderName::from_bytes(p.inject.header_name().as_bytes())
                .map_err(|e| Error::config(format!("{at}.inject"), e.to_string()))?;
            let mut extra_headers = Vec::new();
            for (k, v) in &p.headers {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| Error::config(format!("{at}.headers"), e.to_string()))?;
                let value = HeaderValue::from_str(v)
                    .map_err(|e| Error::config(format!("{at}.headers.{k}"), e.to_string()))?;
                extra_headers.push((name, value));
            }
            let sigv4 = if p.inject == Inject::AwsSigV4 {
                let region = p
                    .aws_region
                    .clone()
                    .or_else(|| env.var("AWS_REGION"))
                    .or_else(|| env.var("AWS_DEFAULT_REGION"))
                    .ok_or_else(|| {
                        Error::config(
                            format!("{at}.aws_region"),
                            "inject = \"aws-sigv4\" needs a region (aws_region, or AWS_REGION in the environment)",
                        )
                    })?;
                let service = p.aws_service.clone().unwrap_or_else(|| "bedrock".into());
                Some((region, service))
            } else {
                None
            };
            providers.push(Arc::new(Provider {
                name: p.name.as_str().into(),
                upstream,
                scheme,
                authority,
                base_path,
                proxy_auth,
                prefix: p.path_prefix.clone(),
                inject: p.inject.clone(),
                inject_header,
                extra_headers,
                entry,
                retry_on: p.retry_on.clone(),
                min_remaining: p.min_remaining.unwrap_or(DEFAULT_MIN_REMAINING),
                upstream_timeout: p.upstream_timeout.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
                min_refresh_interval: p
                    .min_refresh_interval
                    .unwrap_or(DEFAULT_MIN_REFRESH_INTERVAL),
                style: p.error_style(),
                lanes,
                metrics: metrics::ProviderMetrics::new(workers),
                sigv4,
                sockets: websocket::Sockets::new(p.max_socket_lifetime, sockets.clone()),
            }));
        }
        let listen = match opts.listen.or(cfg.listen) {
            Some(a) => a,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| Error::config("listen", "bad default"))?,
        };
        let admin_listen = opts.admin_listen.or(cfg.admin_listen);
        let own_listeners: Vec<(SocketAddr, usize)> = cfg
            .providers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.listen.map(|a| (a, i)))
            .collect();
        let local_key = match (&opts.local_key, &cfg.local_key_env, &cfg.local_key_file) {
            (Some(k), _, _) => Some(k.clone()),
            (None, Some(var), _) => Some(Secret::new(env.var(var).ok_or_else(|| {
                Error::config(
                    "local_key_env",
                    format!("environment variable {var} is not set"),
                )
            })?)),
            (None, None, Some(path)) => Some(Secret::new(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Error::config(
                            "local_key_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?
                    .trim()
                    .to_owned(),
            )),
            _ => None,
        };
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
        let hosts: Vec<String> = cfg
            .allowed_hosts
            .iter()
            .chain(&opts.allowed_hosts)
            .cloned()
            .collect();
        let origins: Vec<String> = cfg
            .allowed_origins
            .iter()
            .chain(&opts.allowed_origins)
            .cloned()
            .collect();
        let guard = guard::Guard::new(local_key.is_some(), &hosts, &origins)?;
        let limits = server::Limits {
            header_read_timeout: cfg
                .header_read_timeout
                .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
            idle_timeout: cfg.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            max_connections: cfg.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        };
        let state = State {
            providers,
            local_key,
            replay_limit: opts.replay_limit,
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
        Some((provider, strip)) => forward::forward(state, provider, req, strip, ctx.worker).await,
    };
    if let Some(origin) = origin {
        guard::add_cors(resp.headers_mut(), origin);
    }
    resp
}
