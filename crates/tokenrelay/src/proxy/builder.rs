//! The proxy's validated model: [`Upstream`], [`ProviderSpec`] and [`ProxyBuilder`]. A
//! [`Config`] converts into a builder ([`ProxyBuilder::from_config`]); a program that embeds
//! the proxy builds one from values and sources directly. Every rule is checked here, once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, StatusCode};

use super::{Proxy, ProxyOptions};
use crate::config::{
    Config, ErrorStyle, ProviderConfig, DEFAULT_MIN_REFRESH_INTERVAL, DEFAULT_MIN_REMAINING,
    DEFAULT_UPSTREAM_TIMEOUT,
};
use crate::error::{Error, Result};
use crate::inject::Style;
use crate::secret::Secret;
use crate::source::{ProcessEnv, SharedEnv, Source, SourceConfig, TokenRequest};

/// A validated upstream base URL: `http://` or `https://`, a host, no credentials, no query.
///
/// ```
/// use tokenrelay::proxy::Upstream;
/// let u: Upstream = "https://my-resource.openai.azure.com/openai/".parse().unwrap();
/// assert_eq!(u.as_str(), "https://my-resource.openai.azure.com/openai");
/// assert!("ftp://x".parse::<Upstream>().is_err());
/// assert!("https://user:pw@x".parse::<Upstream>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    url: String,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
}

impl Upstream {
    /// The URL without a trailing `/`.
    pub fn as_str(&self) -> &str {
        &self.url
    }
    pub(crate) fn scheme(&self) -> &Scheme {
        &self.scheme
    }
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }
    /// The base path without a trailing `/` (may be empty).
    pub(crate) fn base_path(&self) -> &str {
        &self.base_path
    }
}

impl std::str::FromStr for Upstream {
    type Err = String;
    fn from_str(url: &str) -> std::result::Result<Self, String> {
        let url = url.trim_end_matches('/');
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let scheme = uri
            .scheme()
            .filter(|s| matches!(s.as_str(), "http" | "https"))
            .cloned()
            .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .cloned()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{url:?} must not carry credentials (user@host); tokenrelay injects them"
            ));
        }
        if uri.query().is_some() {
            return Err(format!(
                "{url:?} must not have a query; requests keep their own"
            ));
        }
        Ok(Upstream {
            url: url.to_owned(),
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// Checks a provider name: letters, digits, `-`, `_`.
pub(crate) fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "{name:?} must be non-empty letters, digits, '-' or '_'"
        ));
    }
    Ok(())
}

/// Checks a routing prefix: starts with `/`, does not end with one.
pub(crate) fn check_prefix(prefix: &str) -> std::result::Result<(), String> {
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
        return Err(format!(
            "{prefix:?} must start with '/' and not end with one (e.g. \"/azure\")"
        ));
    }
    Ok(())
}

/// Parses one extra header.
pub(crate) fn parse_header(
    name: &str,
    value: &str,
) -> std::result::Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    let v = HeaderValue::from_str(value).map_err(|_| "not a valid header value".to_owned())?;
    Ok((n, v))
}

/// Parses a `retry_on` status: a 4xx or 5xx.
pub(crate) fn parse_retry_status(code: u16) -> std::result::Result<StatusCode, String> {
    StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .ok_or_else(|| format!("{code} is not a 4xx/5xx status"))
}

/// One provider of the proxy, validated: where requests go, where the token comes from and
/// how it is put on them.
///
/// ```
/// # use std::sync::Arc;
/// use tokenrelay::proxy::{Proxy, ProviderSpec};
/// use tokenrelay::inject::Style;
/// use tokenrelay::source::StaticSource;
/// let spec = ProviderSpec::new(
///     "azure",
///     "https://my-resource.openai.azure.com".parse().unwrap(),
///     Arc::new(StaticSource::new("sk-test".into())),
/// )
/// .unwrap()
/// .style(Style::ApiKey)
/// .path_prefix("/azure")
/// .unwrap();
/// let proxy = Proxy::builder().provider(spec).build().unwrap();
/// # let _ = proxy;
/// ```
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    pub(crate) name: String,
    pub(crate) upstream: Upstream,
    pub(crate) source: Arc<dyn Source>,
    pub(crate) scope: Option<String>,
    pub(crate) style: Style,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) retry_on: Vec<StatusCode>,
    pub(crate) min_remaining: Duration,
    pub(crate) upstream_timeout: Duration,
    pub(crate) min_refresh_interval: Duration,
    pub(crate) error_style: Option<ErrorStyle>,
    pub(crate) sigv4: Option<(String, String)>,
    pub(crate) path_prefix: Option<String>,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) max_socket_lifetime: Option<Duration>,
}

impl ProviderSpec {
    /// A provider called `name` forwarding to `upstream` with tokens from `source`, with the
    /// defaults: bearer injection, `retry_on = [401]`, [`DEFAULT_MIN_REMAINING`],
    /// [`DEFAULT_UPSTREAM_TIMEOUT`], [`DEFAULT_MIN_REFRESH_INTERVAL`], on the main listener's
    /// root.
    ///
    /// # Errors
    /// A config error when `name` is not letters, digits, `-` or `_`.
    pub fn new(name: &str, upstream: Upstream, source: Arc<dyn Source>) -> Result<Self> {
        check_name(name).map_err(|m| Error::config("provider.name", m))?;
        Ok(ProviderSpec {
            name: name.to_owned(),
            upstream,
            source,
            scope: None,
            style: Style::Bearer,
            headers: Vec::new(),
            retry_on: vec![StatusCode::UNAUTHORIZED],
            min_remaining: DEFAULT_MIN_REMAINING,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            error_style: None,
            sigv4: None,
            path_prefix: None,
            listen: None,
            max_socket_lifetime: None,
        })
    }

    /// The scope asked of the source.
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// How the token is put on requests. For [`Style::AwsSigV4`] also call
    /// [`sigv4`](Self::sigv4).
    #[must_use]
    pub fn style(mut self, style: Style) -> Self {
        self.style = style;
        self
    }

    /// Adds a static header set on every upstream request.
    ///
    /// # Errors
    /// A config error when the name or value is not valid in a header.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self> {
        let h = parse_header(name, value)
            .map_err(|m| Error::config(format!("provider {}.headers.{name}", self.name), m))?;
        self.headers.push(h);
        Ok(self)
    }

    /// The upstream statuses that mean "credential rejected".
    #[must_use]
    pub fn retry_on(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.retry_on = statuses.into_iter().collect();
        self
    }

    /// See [`DEFAULT_MIN_REMAINING`].
    #[must_use]
    pub fn min_remaining(mut self, d: Duration) -> Self {
        self.min_remaining = d;
        self
    }

    /// See [`DEFAULT_UPSTREAM_TIMEOUT`]; must be more than zero.
    #[must_use]
    pub fn upstream_timeout(mut self, d: Duration) -> Self {
        self.upstream_timeout = d;
        self
    }

    /// See [`DEFAULT_MIN_REFRESH_INTERVAL`].
    #[must_use]
    pub fn min_refresh_interval(mut self, d: Duration) -> Self {
        self.min_refresh_interval = d;
        self
    }

    /// The shape of the proxy's own error bodies (default: Anthropic's with `x-api-key`,
    /// else OpenAI's).
    #[must_use]
    pub fn error_style(mut self, style: ErrorStyle) -> Self {
        self.error_style = Some(style);
        self
    }

    /// Signs requests with SigV4 for `region` and `service` (`bedrock`).
    #[must_use]
    pub fn sigv4(mut self, region: impl Into<String>, service: impl Into<String>) -> Self {
        self.style = Style::AwsSigV4;
        self.sigv4 = Some((region.into(), service.into()));
        self
    }

    /// Routes requests under `prefix` (`/azure`) to this provider, the prefix removed.
    ///
    /// # Errors
    /// A config error when the prefix does not start with `/` or ends with one.
    pub fn path_prefix(mut self, prefix: &str) -> Result<Self> {
        check_prefix(prefix)
            .map_err(|m| Error::config(format!("provider {}.path_prefix", self.name), m))?;
        self.path_prefix = Some(prefix.to_owned());
        Ok(self)
    }

    /// Closes WebSockets through this provider (with 1001) after `d`, for gateways that want a
    /// re-handshake with a fresh token (default: no limit).
    #[must_use]
    pub fn max_socket_lifetime(mut self, d: Duration) -> Self {
        self.max_socket_lifetime = Some(d);
        self
    }

    /// Gives this provider a listener of its own.
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// The provider of a config file's `[[provider]]` table `p` (named `at` in errors), with
    /// `source` for its tokens.
    ///
    /// # Errors
    /// A config error naming the key: no upstream, a bad upstream, header, status or prefix,
    /// SigV4 without a region.
    pub fn from_config(
        p: &ProviderConfig,
        at: &str,
        source: Arc<dyn Source>,
        env: &SharedEnv,
    ) -> Result<Self> {
        let url = p.upstream.as_deref().ok_or_else(|| {
            Error::config(at.to_owned(), "no upstream URL (upstream = \"https://…\")")
        })?;
        let upstream = url
            .parse()
            .map_err(|m| Error::config(format!("{at}.upstream"), m))?;
        let mut spec = ProviderSpec::new(&p.name, upstream, source)
            .map_err(|e| Error::config(format!("{at}.name"), e.to_string()))?
            .style(p.inject.clone());
        spec.scope = p.scope.clone();
        for (k, v) in &p.headers {
            let h =
                parse_header(k, v).map_err(|m| Error::config(format!("{at}.headers.{k}"), m))?;
            spec.headers.push(h);
        }
        // A Google source's quota project, unless the table sets the header itself.
        if let SourceConfig::Google(g) = &p.source {
            let set = spec.headers.iter().any(|(n, _)| n == "x-goog-user-project");
            if let Some(q) = g.quota_project(env).filter(|_| !set) {
                let h = parse_header("x-goog-user-project", &q)
                    .map_err(|m| Error::config(format!("{at}.source.quota_project"), m))?;
                spec.headers.push(h);
            }
        }
        spec.retry_on = p
            .retry_on
            .iter()
            .map(|s| parse_retry_status(*s))
            .collect::<std::result::Result<_, _>>()
            .map_err(|m| Error::config(format!("{at}.retry_on"), m))?;
        spec.min_remaining = p.min_remaining.unwrap_or(DEFAULT_MIN_REMAINING);
        spec.upstream_timeout = p.upstream_timeout.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT);
        spec.min_refresh_interval = p
            .min_refresh_interval
            .unwrap_or(DEFAULT_MIN_REFRESH_INTERVAL);
        spec.error_style = Some(p.error_style());
        if p.inject == Style::AwsSigV4 {
            let region = p
                .aws_region
                .clone()
                .or_else(|| env.var("AWS_REGION"))
                .or_else(|| env.var("AWS_DEFAULT_REGION"))
                .or_else(|| match &p.source {
                    SourceConfig::AwsHost(c) => c.profile_region(env),
                    _ => None,
                })
                .ok_or_else(|| {
                    Error::config(
                        format!("{at}.aws_region"),
                        "inject = \"aws-sigv4\" needs a region (aws_region, AWS_REGION in the environment, or the aws source's profile's region)",
                    )
                })?;
            let service = p.aws_service.clone().unwrap_or_else(|| "bedrock".into());
            spec = spec.sigv4(region, service);
        }
        if let Some(prefix) = &p.path_prefix {
            check_prefix(prefix).map_err(|m| Error::config(format!("{at}.path_prefix"), m))?;
            spec.path_prefix = Some(prefix.clone());
        }
        spec.listen = p.listen;
        spec.max_socket_lifetime = p.max_socket_lifetime;
        Ok(spec)
    }

    /// The token request this provider asks its source for.
    pub(crate) fn request(&self) -> TokenRequest {
        TokenRequest::new(self.name.as_str()).with_scope(self.scope.as_deref())
    }

    /// The error style, defaulted from the inject style.
    pub(crate) fn effective_error_style(&self) -> ErrorStyle {
        self.error_style.unwrap_or(match self.style {
            Style::XApiKey | Style::AnthropicOAuth => ErrorStyle::Anthropic,
            _ => ErrorStyle::Openai,
        })
    }
}

/// Builds a [`Proxy`] from providers and settings (see [`Proxy::builder`]).
#[derive(Debug, Clone, Default)]
pub struct ProxyBuilder {
    pub(crate) providers: Vec<ProviderSpec>,
    pub(crate) options: ProxyOptions,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) admin_listen: Option<SocketAddr>,
    pub(crate) local_key: Option<Secret>,
    pub(crate) ca_bundle: Option<PathBuf>,
    pub(crate) header_read_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) allowed_hosts: Vec<String>,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) env: Option<SharedEnv>,
}

impl ProxyBuilder {
    /// Adds a provider.
    #[must_use]
    pub fn provider(mut self, spec: ProviderSpec) -> Self {
        self.providers.push(spec);
        self
    }

    /// The main listener's address (default [`DEFAULT_LISTEN`](crate::config::DEFAULT_LISTEN)).
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// A separate listener for `/healthz`, `/readyz`, `/metrics` and `/status`.
    #[must_use]
    pub fn admin_listen(mut self, addr: SocketAddr) -> Self {
        self.admin_listen = Some(addr);
        self
    }

    /// The key local clients must present; required for a non-loopback listener.
    #[must_use]
    pub fn local_key(mut self, key: Secret) -> Self {
        self.local_key = Some(key);
        self
    }

    /// A PEM bundle of extra CA certificates trusted for upstreams.
    #[must_use]
    pub fn ca_bundle(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_bundle = Some(path.into());
        self
    }

    /// Serves requests whose `Host` is `host` (besides loopback names) without a local key.
    #[must_use]
    pub fn allow_host(mut self, host: impl Into<String>) -> Self {
        self.allowed_hosts.push(host.into());
        self
    }

    /// Serves browser pages from `origin` (`https://app.example`), with CORS.
    #[must_use]
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.allowed_origins.push(origin.into());
        self
    }

    /// The environment egress proxy variables (`HTTPS_PROXY`, `NO_PROXY`…) are read from
    /// (default: the process environment).
    #[must_use]
    pub fn env(mut self, env: SharedEnv) -> Self {
        self.env = Some(env);
        self
    }

    /// Listener limits: see [`DEFAULT_HEADER_READ_TIMEOUT`](crate::config::DEFAULT_HEADER_READ_TIMEOUT),
    /// [`DEFAULT_IDLE_TIMEOUT`](crate::config::DEFAULT_IDLE_TIMEOUT) and
    /// [`DEFAULT_MAX_CONNECTIONS`](crate::config::DEFAULT_MAX_CONNECTIONS) (`None` keeps
    /// each default).
    #[must_use]
    pub fn limits(
        mut self,
        header_read_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
        max_connections: Option<usize>,
    ) -> Self {
        self.header_read_timeout = header_read_timeout;
        self.idle_timeout = idle_timeout;
        self.max_connections = max_connections;
        self
    }

    /// The options that are not part of a config file; its `listen`, `admin_listen` and
    /// `local_key`, when set, replace the builder's.
    #[must_use]
    pub fn options(mut self, opts: ProxyOptions) -> Self {
        self.options = opts;
        self
    }

    /// The builder for every provider of `cfg`, their sources built from each
    /// `[provider.source]`.
    ///
    /// # Errors
    /// As [`from_config_with_sources`](Self::from_config_with_sources), and a source that
    /// cannot be built.
    pub fn from_config(cfg: &Config, env: &SharedEnv) -> Result<Self> {
        let mut sources = Vec::with_capacity(cfg.providers.len());
        for (i, p) in cfg.providers.iter().enumerate() {
            let at = format!("provider[{i}] ({})", p.name);
            sources.push(p.source.build(&format!("{at}.source"), env)?);
        }
        Self::from_config_with_sources(cfg, sources, env)
    }

    /// Like [`from_config`](Self::from_config), with the sources given (one per provider,
    /// in order): for embedding custom sources.
    ///
    /// # Errors
    /// A config error naming the key: no provider, a provider without upstream, an unset
    /// `local_key_env`, an unreadable `local_key_file`, a source count that does not match.
    pub fn from_config_with_sources(
        cfg: &Config,
        sources: Vec<Arc<dyn Source>>,
        env: &SharedEnv,
    ) -> Result<Self> {
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
        let mut b = ProxyBuilder {
            env: Some(env.clone()),
            listen: cfg.listen,
            admin_listen: cfg.admin_listen,
            ca_bundle: cfg.ca_bundle.clone(),
            header_read_timeout: cfg.header_read_timeout,
            idle_timeout: cfg.idle_timeout,
            max_connections: cfg.max_connections,
            ..ProxyBuilder::default()
        };
        b.allowed_hosts.clone_from(&cfg.allowed_hosts);
        b.allowed_origins.clone_from(&cfg.allowed_origins);
        for ((i, p), source) in cfg.providers.iter().enumerate().zip(sources) {
            let at = format!("provider[{i}] ({})", p.name);
            b.providers
                .push(ProviderSpec::from_config(p, &at, source, env)?);
        }
        b.local_key = match (&cfg.local_key_env, &cfg.local_key_file) {
            (Some(var), _) => Some(Secret::new(env.var(var).ok_or_else(|| {
                Error::config(
                    "local_key_env",
                    format!("environment variable {var} is not set"),
                )
            })?)),
            (None, Some(path)) => Some(Secret::new(
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
            (None, None) => None,
        };
        Ok(b)
    }

    /// Builds the proxy.
    ///
    /// # Errors
    /// A config error: no provider, two providers on one root, a duplicate name or prefix, a
    /// non-loopback listener without a local key, an empty local key, a zero timeout, an
    /// unreadable CA bundle.
    pub fn build(mut self) -> Result<Proxy> {
        let opts = std::mem::take(&mut self.options);
        // Options given at run time add to the file's lists and win over its addresses.
        self.allowed_hosts
            .extend(opts.allowed_hosts.iter().cloned());
        self.allowed_origins
            .extend(opts.allowed_origins.iter().cloned());
        self.listen = opts.listen.or(self.listen);
        self.admin_listen = opts.admin_listen.or(self.admin_listen);
        if opts.local_key.is_some() {
            self.local_key.clone_from(&opts.local_key);
        }
        let env = self.env.take().unwrap_or_else(|| Arc::new(ProcessEnv));
        Proxy::assemble(self, opts, &env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{EnvSource, MapEnv};

    /// The `x-goog-user-project` a provider with a Google source sends, in the order
    /// google-auth uses: the table's `quota_project`, `GOOGLE_CLOUD_QUOTA_PROJECT`, the
    /// credential file's `quota_project_id`; a header the table sets itself wins.
    #[test]
    fn a_google_sources_quota_project_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("adc.json");
        std::fs::write(
            &file,
            r#"{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r","quota_project_id":"from-file"}"#,
        )
        .unwrap();
        let build = |provider: &str, source: &str, pairs: &[(&str, &str)]| {
            let text = format!(
                "[[provider]]\nname = \"vertex\"\nupstream = \"https://aiplatform.googleapis.com\"\n{provider}[provider.source]\nkind = \"google\"\ncredentials_file = {:?}\n{source}",
                file.display().to_string()
            );
            let cfg = Config::from_toml(&text, "t").unwrap();
            let env: SharedEnv = Arc::new(MapEnv::from_pairs(pairs.iter().copied()));
            ProviderSpec::from_config(
                &cfg.providers[0],
                "provider vertex",
                Arc::new(EnvSource::new("X")),
                &env,
            )
        };
        let sent = |provider: &str, source: &str, pairs: &[(&str, &str)]| -> Vec<String> {
            build(provider, source, pairs)
                .unwrap()
                .headers
                .iter()
                .filter(|(n, _)| n == "x-goog-user-project")
                .map(|(_, v)| v.to_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(sent("", "", &[]), ["from-file"]);
        let var = [("GOOGLE_CLOUD_QUOTA_PROJECT", "from-env")];
        assert_eq!(sent("", "", &var), ["from-env"]);
        assert_eq!(
            sent("", "quota_project = \"from-table\"\n", &var),
            ["from-table"]
        );
        let own = "headers = { \"x-goog-user-project\" = \"own\" }\n";
        assert_eq!(sent(own, "quota_project = \"from-table\"\n", &var), ["own"]);
        let err = build("", "quota_project = \"a\\nb\"\n", &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("provider vertex.source.quota_project"),
            "{err}"
        );
    }
}
