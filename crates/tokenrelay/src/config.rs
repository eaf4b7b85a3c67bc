//! The configuration file: one TOML document, a `[[provider]]` table per upstream.
//!
//! ```toml
//! listen = "127.0.0.1:8787"
//!
//! [[provider]]
//! name = "azure"
//! upstream = "https://my-resource.openai.azure.com"
//! inject = "api-key"     # bearer | api-key | x-api-key | { header = "X", template = "Bearer {token}" }
//! scope = "https://cognitiveservices.azure.com/.default"
//! [provider.source]
//! kind = "command"
//! command = "az account get-access-token --scope https://cognitiveservices.azure.com/.default --query accessToken -o tsv"
//! ```
//!
//! Unknown keys are errors; every error names the file, the line and the key path. Durations
//! are humantime strings (`"30s"`, `"15m"`). Secrets are never inline: a source takes
//! `*_file` or `*_env`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::inject::Style;
use crate::proxy::builder::{check_name, check_prefix, parse_header, parse_retry_status};
use crate::proxy::Upstream;
use crate::secret::Secret;
use crate::source::output::OutputFormat;
use crate::source::{
    CommandSource, EnvSource, FileSource, Program, SharedEnv, Source, StaticSource, TokenRequest,
    DEFAULT_TTL,
};

/// Default listen address of `serve`: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// Default lifetime a request needs left on its token before it is sent (2 min, capped at a
/// third of the token's lifetime): a 60-min token is refreshed before a request that would
/// start in its last 2 minutes, so a 2-minute stream never outlives its credential.
pub const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(120);

/// Default time a client has to send a request's headers (30 s), counted from when the
/// connection is ready for a request: a new connection, or a keep-alive one after its last
/// response. So it is also how long an idle HTTP/1.1 keep-alive connection is kept, and a
/// client that never finishes its headers (slowloris) is closed after 30 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Default time an HTTP/2 connection may go without a new request before it is closed
/// gracefully (5 min): streams still running finish first (GOAWAY), so a long stream is never
/// cut; the client opens a new connection for its next request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Default cap on connections open at once per listener (4096): past it a new connection is
/// answered `503` and closed, and counted in `tokenrelay_connections_refused_total`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Default time an upstream has to send response headers once the request is sent (10 min):
/// an upstream that accepts and never answers gets `504`. Streams are not bounded by it
/// once their headers have arrived.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(600);

/// Default shortest time between two refreshes forced by a `retry_on` answer (5 s): a flood
/// of 403s that are not about the credential (a missing permission) costs one acquisition
/// per 5 s, not one per request; inside the interval the answer is passed through.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Listener for the proxy (default [`DEFAULT_LISTEN`]).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Separate listener for `/healthz`, `/readyz`, `/metrics`, `/status` (default: same as `listen`).
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Environment variable holding the key local clients must present.
    #[serde(default)]
    pub local_key_env: Option<String>,
    /// File holding the key local clients must present.
    #[serde(default)]
    pub local_key_file: Option<PathBuf>,
    /// PEM bundle of extra CA certificates trusted for upstream TLS (besides the system roots).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// `Host` values served besides loopback names when no local key is set (`"name"` for
    /// any port, `"name:port"` for one, `"*"` for any): for a proxy reached by another name.
    /// Without it a request with a foreign `Host` (DNS rebinding) gets 421.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`"http://localhost:3000"`) whose requests are served; a request with
    /// any other `Origin` (or `Sec-Fetch-Site: cross-site`/`same-site`) gets 403. CORS
    /// preflights of an allowed origin are answered by the proxy itself.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// See [`DEFAULT_HEADER_READ_TIMEOUT`].
    #[serde(default, with = "humantime_serde")]
    pub header_read_timeout: Option<Duration>,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// See [`DEFAULT_MAX_CONNECTIONS`].
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Providers.
    #[serde(default, rename = "provider")]
    pub providers: Vec<ProviderConfig>,
}

/// One upstream and the identity that authenticates to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProviderConfig {
    /// Unique name (letters, digits, `-`, `_`).
    pub name: String,
    /// Base URL requests are forwarded to (required by `serve`/`run`, not by `token`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// How the token is put on requests (default `bearer`).
    #[serde(default)]
    pub inject: Style,
    /// Scope asked of the source, forwarded verbatim.
    #[serde(default)]
    pub scope: Option<String>,
    /// Path prefix that routes to this provider (`/azure`); stripped before forwarding.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// A listener of its own for this provider.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Extra static headers set on every upstream request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Upstream statuses that mean "credential rejected" (default `[401]`).
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<u16>,
    /// See [`DEFAULT_MIN_REMAINING`].
    #[serde(default, with = "humantime_serde")]
    pub min_remaining: Option<Duration>,
    /// See [`DEFAULT_UPSTREAM_TIMEOUT`].
    #[serde(default, with = "humantime_serde")]
    pub upstream_timeout: Option<Duration>,
    /// See [`DEFAULT_MIN_REFRESH_INTERVAL`].
    #[serde(default, with = "humantime_serde")]
    pub min_refresh_interval: Option<Duration>,
    /// Error body shape for the proxy's own errors (default: `anthropic` with `x-api-key`,
    /// else `openai`).
    #[serde(default)]
    pub error_style: Option<ErrorStyle>,
    /// Region for `inject = "aws-sigv4"` (default `$AWS_REGION`, then `$AWS_DEFAULT_REGION`).
    #[serde(default)]
    pub aws_region: Option<String>,
    /// Service name for `inject = "aws-sigv4"` (default `bedrock`).
    #[serde(default)]
    pub aws_service: Option<String>,
    /// Where the token comes from.
    pub source: SourceConfig,
}

fn default_retry_on() -> Vec<u16> {
    vec![401]
}

impl ProviderConfig {
    /// A provider called `name` with tokens from `source` and every other key at its default
    /// (as a `[[provider]]` table with only `name` and `[provider.source]`).
    pub fn new(name: impl Into<String>, source: SourceConfig) -> Self {
        ProviderConfig {
            name: name.into(),
            upstream: None,
            inject: Style::default(),
            scope: None,
            path_prefix: None,
            listen: None,
            headers: BTreeMap::new(),
            retry_on: default_retry_on(),
            min_remaining: None,
            upstream_timeout: None,
            min_refresh_interval: None,
            error_style: None,
            aws_region: None,
            aws_service: None,
            source,
        }
    }
}

/// The JSON shape of the proxy's own error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorStyle {
    /// `{"error": {"message", "type", "code"}}`
    Openai,
    /// `{"type": "error", "error": {"type", "message"}}`
    Anthropic,
}

/// Where a provider's token comes from; the `kind` key selects the variant and the other
/// keys are that kind's own (unknown ones are errors that name the key).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SourceConfig {
    /// `kind = "static"`
    Static(StaticConfig),
    /// `kind = "env"`
    Env(EnvConfig),
    /// `kind = "file"`
    File(FileConfig),
    /// `kind = "command"`
    Command(CommandConfig),
    /// `kind = "oauth2"`
    OAuth2(crate::source::oauth::OAuth2Config),
    /// `kind = "refresh-token"`
    RefreshToken(crate::source::refresh::RefreshTokenConfig),
    /// `kind = "entra-federated"`
    EntraFederated(crate::source::entra::EntraFederatedConfig),
    /// `kind = "github-oidc"`
    GithubOidc(crate::source::github_oidc::GithubOidcConfig),
    /// `kind = "github-oidc-entra"`
    GithubOidcEntra(crate::source::github_oidc::GithubOidcEntraConfig),
    /// `kind = "managed-identity"`
    ManagedIdentity(crate::source::imds::ManagedIdentityConfig),
    /// `kind = "azure-cli"`
    AzureCli(crate::source::AzureCliConfig),
    /// `kind = "aws-web-identity"`
    AwsWebIdentity(crate::source::aws::AwsWebIdentityConfig),
    /// `kind = "token-exchange"`
    TokenExchange(crate::source::exchange::TokenExchangeConfig),
    /// `kind = "plugin"`
    Plugin(crate::source::plugin::PluginConfig),
}

/// A value read once at start-up from `value_env` or `value_file`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StaticConfig {
    /// Variable holding the value.
    #[serde(default)]
    pub value_env: Option<String>,
    /// File holding the value.
    #[serde(default)]
    pub value_file: Option<PathBuf>,
}

/// An environment variable, read at each acquisition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EnvConfig {
    /// Variable name.
    pub name: String,
    /// Parser (default auto).
    #[serde(default)]
    pub format: OutputFormat,
    /// Lifetime when none is stated (default 15m).
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
}

impl EnvConfig {
    /// The variable `name`, auto-detected format, default lifetime.
    pub fn new(name: impl Into<String>) -> Self {
        EnvConfig {
            name: name.into(),
            format: OutputFormat::default(),
            default_ttl: None,
        }
    }
}

/// A file, re-read when it changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FileConfig {
    /// Path.
    pub path: PathBuf,
    /// Parser (default auto).
    #[serde(default)]
    pub format: OutputFormat,
    /// Lifetime when none is stated (default 15m).
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
}

impl FileConfig {
    /// The file at `path`, auto-detected format, default lifetime.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileConfig {
            path: path.into(),
            format: OutputFormat::default(),
            default_ttl: None,
        }
    }
}

/// A command's stdout.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CommandConfig {
    /// A shell command line (`sh -c`).
    #[serde(default)]
    pub command: Option<String>,
    /// Or a program and arguments, run without a shell.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Parser (default auto).
    #[serde(default)]
    pub format: OutputFormat,
    /// Time limit (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Lifetime when none is stated (default 15m).
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
}

/// The `kind` names, for error messages.
pub const SOURCE_KINDS: &[&str] = &[
    "static",
    "env",
    "file",
    "command",
    "oauth2",
    "refresh-token",
    "entra-federated",
    "github-oidc",
    "github-oidc-entra",
    "managed-identity",
    "azure-cli",
    "aws-web-identity",
    "token-exchange",
    "plugin",
];

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(d)?;
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(_) => return Err(D::Error::custom("`kind` must be a string")),
            None => {
                return Err(D::Error::custom(format!(
                    "missing `kind` (one of {})",
                    SOURCE_KINDS.join(", ")
                )))
            }
        };
        fn part<T: serde::de::DeserializeOwned, E: serde::de::Error>(
            table: toml::Table,
        ) -> std::result::Result<T, E> {
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                E::custom(format!("{key}: {}", e.into_inner().message()))
            })
        }
        Ok(match kind.as_str() {
            "static" => SourceConfig::Static(part(table)?),
            "env" => SourceConfig::Env(part(table)?),
            "file" => SourceConfig::File(part(table)?),
            "command" => SourceConfig::Command(part(table)?),
            "oauth2" => SourceConfig::OAuth2(part(table)?),
            "refresh-token" => SourceConfig::RefreshToken(part(table)?),
            "entra-federated" => SourceConfig::EntraFederated(part(table)?),
            "github-oidc" => SourceConfig::GithubOidc(part(table)?),
            "github-oidc-entra" => SourceConfig::GithubOidcEntra(part(table)?),
            "managed-identity" => SourceConfig::ManagedIdentity(part(table)?),
            "azure-cli" => SourceConfig::AzureCli(part(table)?),
            "aws-web-identity" => SourceConfig::AwsWebIdentity(part(table)?),
            "token-exchange" => SourceConfig::TokenExchange(part(table)?),
            "plugin" => SourceConfig::Plugin(part(table)?),
            other => {
                return Err(D::Error::custom(format!(
                    "unknown source kind {other:?} (expected one of {})",
                    SOURCE_KINDS.join(", ")
                )))
            }
        })
    }
}

impl SourceConfig {
    /// The `kind` string.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Static(_) => "static",
            SourceConfig::Env(_) => "env",
            SourceConfig::File(_) => "file",
            SourceConfig::Command(_) => "command",
            SourceConfig::OAuth2(_) => "oauth2",
            SourceConfig::RefreshToken(_) => "refresh-token",
            SourceConfig::EntraFederated(_) => "entra-federated",
            SourceConfig::GithubOidc(_) => "github-oidc",
            SourceConfig::GithubOidcEntra(_) => "github-oidc-entra",
            SourceConfig::ManagedIdentity(_) => "managed-identity",
            SourceConfig::AzureCli(_) => "azure-cli",
            SourceConfig::AwsWebIdentity(_) => "aws-web-identity",
            SourceConfig::TokenExchange(_) => "token-exchange",
            SourceConfig::Plugin(_) => "plugin",
        }
    }

    /// The environment variables this source reads credentials from: its `*_env` keys and
    /// the standard variables of its kind (`ACTIONS_ID_TOKEN_REQUEST_TOKEN`, `IDENTITY_HEADER`,
    /// …), nested sources included. `tokenrelay run` keeps them from the child it wraps, so
    /// the child cannot mint tokens with tokenrelay's identity.
    ///
    /// ```
    /// use tokenrelay::config::Config;
    /// let cfg = Config::from_toml(
    ///     "[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"oauth2\"\ntoken_url = \"https://idp/token\"\nclient_id = \"c\"\nclient_secret_env = \"MY_SECRET\"\n",
    ///     "t.toml",
    /// )
    /// .unwrap();
    /// assert_eq!(cfg.providers[0].source.credential_env_vars(), ["MY_SECRET"]);
    /// ```
    pub fn credential_env_vars(&self) -> Vec<String> {
        const GITHUB_OIDC: &[&str] = &[
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            "ACTIONS_ID_TOKEN_REQUEST_URL",
        ];
        const MANAGED_IDENTITY: &[&str] = &[
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "MSI_ENDPOINT",
            "MSI_SECRET",
        ];
        let named = |vars: &[&Option<String>]| -> Vec<String> {
            vars.iter().filter_map(|v| v.as_ref().cloned()).collect()
        };
        let standard =
            |vars: &[&str]| -> Vec<String> { vars.iter().map(|v| (*v).to_owned()).collect() };
        match self {
            SourceConfig::Static(c) => named(&[&c.value_env]),
            SourceConfig::Env(c) => vec![c.name.clone()],
            SourceConfig::File(_) | SourceConfig::Command(_) | SourceConfig::Plugin(_) => vec![],
            SourceConfig::AzureCli(_) => vec![],
            SourceConfig::OAuth2(c) => named(&[&c.client_secret_env]),
            SourceConfig::RefreshToken(c) => named(&[&c.client_secret_env, &c.refresh_token_env]),
            SourceConfig::EntraFederated(_) => standard(&["AZURE_FEDERATED_TOKEN_FILE"]),
            SourceConfig::GithubOidc(_) | SourceConfig::GithubOidcEntra(_) => standard(GITHUB_OIDC),
            SourceConfig::ManagedIdentity(_) => standard(MANAGED_IDENTITY),
            SourceConfig::AwsWebIdentity(c) => {
                let mut v = standard(&["AWS_WEB_IDENTITY_TOKEN_FILE"]);
                if let Some(inner) = &c.web_identity {
                    v.extend(inner.credential_env_vars());
                }
                v
            }
            SourceConfig::TokenExchange(c) => {
                let mut v = named(&[&c.client_secret_env]);
                v.extend(c.subject.credential_env_vars());
                v
            }
        }
    }

    /// Builds the source. `env` is where standard variables are read from.
    ///
    /// # Errors
    /// A config error naming `path` (e.g. `provider[0] (azure).source`) and the key.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        let ttl = |t: &Option<Duration>| t.unwrap_or(DEFAULT_TTL);
        Ok(match self {
            SourceConfig::Static(c) => {
                let value = match (&c.value_env, &c.value_file) {
                    (Some(var), None) => env.var(var).ok_or_else(|| {
                        Error::config(
                            format!("{path}.value_env"),
                            format!("environment variable {var} is not set"),
                        )
                    })?,
                    (None, Some(file)) => {
                        let key = format!("{path}.value_file");
                        let bytes = crate::source::read_config_file(&key, file)?;
                        String::from_utf8(bytes)
                            .map_err(|_| {
                                Error::config(key, format!("{} is not UTF-8", file.display()))
                            })?
                            .trim()
                            .to_owned()
                    }
                    _ => {
                        return Err(Error::config(
                            path,
                            "a static source takes exactly one of value_env or value_file (never an inline secret)",
                        ))
                    }
                };
                Arc::new(StaticSource::new(Secret::new(value)))
            }
            SourceConfig::Env(c) => Arc::new(
                EnvSource::new(c.name.clone())
                    .with_env(env.clone())
                    .with_format(c.format)
                    .with_default_ttl(ttl(&c.default_ttl)),
            ),
            SourceConfig::File(c) => Arc::new(
                FileSource::new(c.path.clone())
                    .with_format(c.format)
                    .with_default_ttl(ttl(&c.default_ttl)),
            ),
            SourceConfig::Command(c) => {
                let program = Program::from_keys(path, "command", &c.command, &c.args)?;
                let mut src = CommandSource::new(program)
                    .with_format(c.format)
                    .with_default_ttl(ttl(&c.default_ttl));
                if let Some(t) = c.timeout {
                    src = src.with_timeout(t);
                }
                Arc::new(src)
            }
            SourceConfig::OAuth2(c) => c.build(path, env)?,
            SourceConfig::RefreshToken(c) => c.build(path, env)?,
            SourceConfig::EntraFederated(c) => c.build(path, env)?,
            SourceConfig::GithubOidc(c) => c.build(path, env)?,
            SourceConfig::GithubOidcEntra(c) => c.build(path, env)?,
            SourceConfig::ManagedIdentity(c) => c.build(path, env)?,
            SourceConfig::AzureCli(c) => c.build(path, env)?,
            SourceConfig::AwsWebIdentity(c) => c.build(path, env)?,
            SourceConfig::TokenExchange(c) => c.build(path, env)?,
            SourceConfig::Plugin(c) => c.build(path, env)?,
        })
    }
}

impl ProviderConfig {
    /// The token request this provider makes.
    pub fn request(&self) -> TokenRequest {
        TokenRequest::new(self.name.as_str()).with_scope(self.scope.as_deref())
    }

    /// The error style, defaulted from the inject style.
    pub fn error_style(&self) -> ErrorStyle {
        self.error_style.unwrap_or(match self.inject {
            Style::XApiKey => ErrorStyle::Anthropic,
            _ => ErrorStyle::Openai,
        })
    }
}

impl Config {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// A config error naming the file, line and key.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(path.display().to_string(), format!("cannot read: {e}")))?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates TOML `text`; `origin` names it in errors.
    ///
    /// # Errors
    /// A config error with the line and key.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config> {
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            // Keep toml's message and line, and the key path; never the document's text
            // (a config file may hold secrets by mistake).
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = inner.message();
            let at = if key.is_empty() || key == "." {
                String::new()
            } else {
                format!(" at {key}")
            };
            match line {
                Some(l) => Error::config(origin, format!("line {l}{at}: {msg}")),
                None => Error::config(origin, format!("{}{msg}", at.trim_start())),
            }
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Checks cross-field rules.
    ///
    /// # Errors
    /// The first problem, with its key path.
    pub fn validate(&self, origin: &str) -> Result<()> {
        crate::proxy::check_listener_settings(self)
            .map_err(|e| Error::config(origin.to_owned(), e.to_string()))?;
        let mut names = std::collections::HashSet::new();
        let mut prefixes = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = format!("{origin}: provider[{i}] ({})", p.name);
            check_name(&p.name)
                .map_err(|m| Error::config(format!("{origin}: provider[{i}].name"), m))?;
            if !names.insert(p.name.clone()) {
                return Err(Error::config(at, "duplicate provider name"));
            }
            if let Some(u) = &p.upstream {
                u.parse::<Upstream>()
                    .map_err(|m| Error::config(format!("{at}.upstream"), m))?;
            }
            if let Some(prefix) = &p.path_prefix {
                check_prefix(prefix).map_err(|m| Error::config(format!("{at}.path_prefix"), m))?;
                if !prefixes.insert(prefix.clone()) {
                    return Err(Error::config(
                        format!("{at}.path_prefix"),
                        "duplicate path prefix",
                    ));
                }
            }
            if p.upstream_timeout.is_some_and(|d| d.is_zero()) {
                return Err(Error::config(
                    format!("{at}.upstream_timeout"),
                    "must be more than 0s",
                ));
            }
            for status in &p.retry_on {
                parse_retry_status(*status)
                    .map_err(|m| Error::config(format!("{at}.retry_on"), m))?;
            }
            for (k, v) in &p.headers {
                parse_header(k, v).map_err(|m| Error::config(format!("{at}.headers.{k}"), m))?;
            }
        }
        Ok(())
    }

    /// The environment variables tokenrelay reads credentials from with this file: the local
    /// key's `local_key_env` and every provider's [`SourceConfig::credential_env_vars`],
    /// sorted, without repeats.
    pub fn credential_env_vars(&self) -> Vec<String> {
        let mut v: Vec<String> = self.local_key_env.iter().cloned().collect();
        for p in &self.providers {
            v.extend(p.source.credential_env_vars());
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The provider called `name`, or the only one when `name` is `None`.
    ///
    /// # Errors
    /// When there is no such provider, or several and no name was given.
    pub fn provider(&self, name: Option<&str>) -> Result<&ProviderConfig> {
        match name {
            Some(n) => self.providers.iter().find(|p| p.name == n).ok_or_else(|| {
                let known: Vec<_> = self.providers.iter().map(|p| p.name.as_str()).collect();
                Error::config(
                    "--provider",
                    format!("no provider named {n:?} (configured: {})", known.join(", ")),
                )
            }),
            None => match self.providers.as_slice() {
                [one] => Ok(one),
                [] => Err(Error::config("config", "no [[provider]] is configured")),
                _ => Err(Error::config(
                    "--provider",
                    "several providers are configured; name one with --provider",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;

    const GOOD: &str = r#"
listen = "127.0.0.1:9000"

[[provider]]
name = "azure"
upstream = "https://my-resource.openai.azure.com"
inject = "api-key"
scope = "https://cognitiveservices.azure.com/.default"
retry_on = [401, 403]
min_remaining = "90s"
[provider.source]
kind = "command"
command = "az account get-access-token --query accessToken -o tsv"
timeout = "10s"

[[provider]]
name = "anthropic"
upstream = "https://api.anthropic.com"
inject = { header = "x-api-key" }
path_prefix = "/anthropic"
headers = { "anthropic-version" = "2023-06-01" }
[provider.source]
kind = "env"
name = "ANTHROPIC_TOKEN"
"#;

    #[test]
    fn parses_the_documented_shape() {
        let cfg = Config::from_toml(GOOD, "t.toml").unwrap();
        assert_eq!(cfg.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(cfg.providers.len(), 2);
        let az = &cfg.providers[0];
        assert_eq!(az.inject, Style::ApiKey);
        assert_eq!(az.retry_on, vec![401, 403]);
        assert_eq!(az.min_remaining, Some(Duration::from_secs(90)));
        assert_eq!(
            az.request().scope(),
            Some("https://cognitiveservices.azure.com/.default")
        );
        let an = &cfg.providers[1];
        assert_eq!(
            an.inject,
            Style::Header {
                header: http::HeaderName::from_static("x-api-key"),
                template: "{token}".into()
            }
        );
        assert_eq!(an.retry_on, vec![401]);
        let env: SharedEnv = Arc::new(MapEnv::default());
        let src = az.source.build("p", &env).unwrap();
        assert_eq!(src.kind(), "command");
        assert_eq!(src.timeout(), Duration::from_secs(11));
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text =
            "[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"command\"\ncomand = \"x\"\n";
        let err = Config::from_toml(text, "t.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("t.toml: invalid configuration: line "),
            "{err}"
        );
        assert!(err.contains("comand"), "{err}");
        let text = "lisen = \"x\"\n";
        let err = Config::from_toml(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("lisen"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("[[provider]]\nname = \"a\"\ninject = \"basic\"\n[provider.source]\nkind = \"env\"\nname = \"X\"\n", "unknown inject style"),
            ("[[provider]]\nname = \"a\"\nupstream = \"ftp://x\"\n[provider.source]\nkind = \"env\"\nname = \"X\"\n", "upstream"),
            ("[[provider]]\nname = \"a\"\nretry_on = [200]\n[provider.source]\nkind = \"env\"\nname = \"X\"\n", "retry_on"),
            ("[[provider]]\nname = \"a b\"\n[provider.source]\nkind = \"env\"\nname = \"X\"\n", "name"),
            ("[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"nope\"\n", "unknown source kind"),
            ("[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"command\"\ncommand = \"x\"\ntimeout = \"soon\"\n", "timeout"),
            ("[[provider]]\nname = \"a\"\ninject = { header = \"X\", template = \"Bearer\" }\n[provider.source]\nkind = \"env\"\nname = \"X\"\n", "{token}"),
            ("allowed_origins = [\"localhost:3000\"]\n[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"env\"\nname = \"X\"\n", "allowed_origins"),
            ("allowed_hosts = [\"a b\"]\n[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"env\"\nname = \"X\"\n", "allowed_hosts"),
            ("max_connections = 0\n[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"env\"\nname = \"X\"\n", "max_connections"),
            ("header_read_timeout = \"0s\"\n[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"env\"\nname = \"X\"\n", "header_read_timeout"),
            ("[[provider]]\nname = \"a\"\nupstream_timeout = \"0s\"\n[provider.source]\nkind = \"env\"\nname = \"X\"\n", "upstream_timeout"),
        ];
        for (text, want) in cases {
            let err = Config::from_toml(text, "t.toml").unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn duplicate_names_and_prefixes() {
        let text = "[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"env\"\nname = \"X\"\n[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"env\"\nname = \"X\"\n";
        assert!(Config::from_toml(text, "t")
            .unwrap_err()
            .to_string()
            .contains("duplicate provider name"));
    }

    #[test]
    fn source_build_errors() {
        let env: SharedEnv = Arc::new(MapEnv::default());
        let cmd = SourceConfig::Command(CommandConfig::default());
        assert!(cmd
            .build("provider[0] (a).source", &env)
            .unwrap_err()
            .to_string()
            .contains("exactly one of command"));
        let st = SourceConfig::Static(StaticConfig {
            value_env: Some("UNSET_X".into()),
            value_file: None,
        });
        let err = st.build("p.source", &env).unwrap_err().to_string();
        assert_eq!(
            err,
            "p.source.value_env: invalid configuration: environment variable UNSET_X is not set"
        );
    }

    #[test]
    fn credential_env_vars_of_each_kind() {
        let vars = |source: &str| {
            let text = format!(
                "local_key_env = \"LK\"\n[[provider]]\nname = \"a\"\n[provider.source]\n{source}\n"
            );
            Config::from_toml(&text, "t").unwrap().credential_env_vars()
        };
        let table: &[(&str, &[&str])] = &[
            ("kind = \"env\"\nname = \"TOK\"", &["LK", "TOK"]),
            ("kind = \"static\"\nvalue_env = \"V\"", &["LK", "V"]),
            ("kind = \"command\"\ncommand = \"x\"", &["LK"]),
            (
                "kind = \"refresh-token\"\ntoken_url = \"https://i/t\"\nrefresh_token_env = \"RT\"\nclient_secret_env = \"CS\"",
                &["CS", "LK", "RT"],
            ),
            (
                "kind = \"github-oidc-entra\"\ntenant_id = \"t\"\nclient_id = \"c\"",
                &["ACTIONS_ID_TOKEN_REQUEST_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_URL", "LK"],
            ),
            (
                "kind = \"managed-identity\"",
                &["IDENTITY_ENDPOINT", "IDENTITY_HEADER", "LK", "MSI_ENDPOINT", "MSI_SECRET"],
            ),
            ("kind = \"entra-federated\"", &["AZURE_FEDERATED_TOKEN_FILE", "LK"]),
            (
                "kind = \"token-exchange\"\ntoken_url = \"https://i/t\"\nclient_secret_env = \"CS\"\n[provider.source.subject]\nkind = \"github-oidc\"",
                &["ACTIONS_ID_TOKEN_REQUEST_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_URL", "CS", "LK"],
            ),
            (
                "kind = \"aws-web-identity\"\n[provider.source.web_identity]\nkind = \"env\"\nname = \"WI\"",
                &["AWS_WEB_IDENTITY_TOKEN_FILE", "LK", "WI"],
            ),
        ];
        for (source, want) in table {
            assert_eq!(vars(source), *want, "{source}");
        }
    }

    #[test]
    fn provider_lookup() {
        let cfg = Config::from_toml(GOOD, "t").unwrap();
        assert_eq!(cfg.provider(Some("anthropic")).unwrap().name, "anthropic");
        assert!(cfg
            .provider(None)
            .unwrap_err()
            .to_string()
            .contains("--provider"));
        assert!(cfg
            .provider(Some("x"))
            .unwrap_err()
            .to_string()
            .contains("azure, anthropic"));
    }
}
