//! Where tokens come from: the [`Source`] trait and the built-in sources.
//!
//! | kind | type | reads |
//! |---|---|---|
//! | `static` | [`StaticSource`] | a value fixed at start-up |
//! | `env` | [`EnvSource`] | an environment variable, at each acquisition |
//! | `file` | [`FileSource`] | a file, again whenever its size or mtime changes |
//! | `command` | [`CommandSource`] | a command's stdout (argv or `sh -c`) |
//! | `oauth2` | [`ClientCredentialsSource`] | OAuth 2.0 client credentials (secret or private-key JWT) |
//! | `refresh-token` | [`RefreshTokenSource`] | the refresh token grant, keeping rotated refresh tokens |
//! | `entra-federated` | [`ClientCredentialsSource`] | Entra workload identity federation (token file) |
//! | `github-oidc` | [`GithubOidc`] | a GitHub Actions OIDC token |
//! | `github-oidc-entra` | [`ClientCredentialsSource`] | GitHub Actions OIDC → Entra access token |
//! | `managed-identity` | [`ManagedIdentitySource`] | Azure IMDS / App Service managed identity |
//! | `azure-cli` | [`AzureCliSource`] | `az account get-access-token` |
//! | `aws-web-identity` | [`AwsWebIdentitySource`] | AWS STS AssumeRoleWithWebIdentity |
//! | `google` | [`GoogleSource`] | Google Application Default Credentials (files, federation, metadata server) |
//! | `aws` | [`AwsSource`] | the AWS SDKs' chain: environment keys, `~/.aws` profiles (static keys, `credential_process`, web identity, `role_arn` + `source_profile`), ECS / EKS Pod Identity container credentials, EC2 IMDSv2 |
//! | `anthropic-federated` | [`AnthropicFederatedSource`] | Anthropic workload identity federation |
//! | `token-exchange` | [`TokenExchangeSource`] | RFC 8693 token exchange of another source's token |
//! | `plugin` | [`PluginSource`] | a helper process over JSON-RPC (`providerToken.acquire`) |
//!
//! Sources that call identity providers share [`IdpClient`]: timeouts, a bounded retry on
//! 429/5xx honouring `Retry-After`, and OAuth error parsing (see its `DEFAULT_*` constants).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::token::Token;

pub mod anthropic;
pub mod assertion;
pub mod aws;
pub mod aws_chain;
mod aws_ini;
mod aws_profile;
mod aws_run;
mod azure_cli;
mod command;
mod config;
pub mod entra;
mod env;
pub mod exchange;
mod file;
pub mod github_oidc;
pub mod google;
pub(crate) mod google_calls;
pub mod google_files;
pub mod http;
pub mod imds;
mod inputs;
pub mod oauth;
pub mod output;
pub mod plugin;
pub mod refresh;

pub use anthropic::AnthropicFederatedSource;
pub use aws::AwsWebIdentitySource;
pub use aws_chain::AwsHostSource;
pub use aws_run::AwsSource;
pub use azure_cli::{AzureCliConfig, AzureCliSource};
pub use command::{CommandSource, Program};
pub use config::{CommandConfig, EnvConfig, FileConfig, SourceConfig, StaticConfig, SOURCE_KINDS};
pub use env::{EnvSource, StaticSource};
pub use exchange::TokenExchangeSource;
pub use file::FileSource;
pub use github_oidc::GithubOidc;
pub use google::GoogleSource;
pub use http::IdpClient;
pub use imds::ManagedIdentitySource;
pub(crate) use inputs::read_config_file;
pub use inputs::{SecretInput, MAX_SECRET_FILE};
pub use oauth::ClientCredentialsSource;
pub use plugin::PluginSource;
pub use refresh::RefreshTokenSource;

/// How long a source may take before it is abandoned (30 s): a command that hangs longer is
/// killed with its whole process group.
pub const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Lifetime assumed for a token whose source states none and that is not a JWT with `exp`
/// (15 min): an opaque key printed by a command is run again after ~10 min.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

/// What a caller asks a source for: which provider, and which scope (forwarded verbatim).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct TokenRequest {
    provider: Arc<str>,
    scope: Option<Arc<str>>,
}

impl TokenRequest {
    /// A request for `provider` with no scope.
    pub fn new(provider: impl Into<Arc<str>>) -> Self {
        TokenRequest {
            provider: provider.into(),
            scope: None,
        }
    }

    /// Sets the scope (e.g. `https://cognitiveservices.azure.com/.default`).
    #[must_use]
    pub fn with_scope(mut self, scope: Option<impl Into<Arc<str>>>) -> Self {
        self.scope = scope.map(Into::into);
        self
    }

    /// The provider name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The scope, if any.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

/// Something that can produce a [`Token`] on demand.
///
/// Implementations do the slow part (run a command, call an identity provider); the
/// [`Cache`](crate::Cache) decides when. `acquire` is cancellation-safe: dropping its future
/// must stop the work (a command source kills its process group).
///
/// ```
/// use async_trait::async_trait;
/// use tokenrelay::{Result, Secret, Source, Token, TokenRequest};
///
/// #[derive(Debug)]
/// struct Fixed;
///
/// #[async_trait]
/// impl Source for Fixed {
///     async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
///         Ok(Token::new(Secret::new(format!("tok-for-{}", req.provider())), "fixed"))
///     }
///     fn kind(&self) -> &'static str { "fixed" }
///     fn describe(&self) -> String { "fixed source".into() }
/// }
/// ```
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug + 'static {
    /// Obtains a fresh token.
    ///
    /// # Errors
    /// An [`Error`] whose origin names this source and whose kind says why.
    async fn acquire(&self, req: &TokenRequest) -> Result<Token>;

    /// The source kind as written in config (`command`, `file`, `oauth2`, …).
    fn kind(&self) -> &'static str;

    /// A one-line description for errors and `/status`, never containing a secret.
    fn describe(&self) -> String;

    /// How long one acquisition may take.
    fn timeout(&self) -> Duration {
        DEFAULT_SOURCE_TIMEOUT
    }

    /// Re-acquire at least this often even if the token is far from expiry (a file source
    /// uses it to notice a rotated file). `None`: only expiry matters.
    fn recheck_interval(&self) -> Option<Duration> {
        None
    }

    /// Feeds everything that shapes the token into `fp`: the source definition and, hashed,
    /// the secret inputs (so a rotated client secret never gets a token minted under the old
    /// one). Used to key the helper's shared cache.
    ///
    /// # Errors
    /// When a secret input cannot be read.
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", self.kind().as_bytes());
        fp.add("describe", self.describe().as_bytes());
        Ok(())
    }

    /// Hands the source a refresh token kept from an earlier process (one it attached to a
    /// token with [`Token::with_refresh_token`]), to use in preference to its configured input.
    /// The default ignores it: only sources whose refresh tokens rotate keep one.
    fn resume_refresh_token(&self, _refresh: Secret) {}

    /// Whether the helper's cross-process cache is worth using for this source (false for
    /// sources that are as cheap to read as the cache itself: env, file, static).
    fn persistable(&self) -> bool {
        true
    }
}

/// Runs `source.acquire` under its timeout; a timed-out acquisition is dropped (which kills a
/// command's process group) and reported as [`ErrorKind::Timeout`].
///
/// # Errors
/// The source's error, or a timeout naming the source.
pub async fn acquire_with_timeout(source: &dyn Source, req: &TokenRequest) -> Result<Token> {
    let limit = source.timeout();
    match tokio::time::timeout(limit, source.acquire(req)).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(source.describe(), ErrorKind::Timeout(limit))),
    }
}

/// A keyed hash (HMAC-SHA-256) of what shapes a token; see [`Source::fingerprint`].
pub struct Fingerprint(Hmac<Sha256>);

impl Fingerprint {
    /// A fingerprint keyed with `key` (a per-user random key kept beside the cache).
    pub fn new(key: &[u8]) -> Self {
        // HMAC pads keys up to the block size and hashes longer ones (RFC 2104); doing the
        // same here makes construction infallible.
        let mut block = [0u8; 64];
        if key.len() <= block.len() {
            block[..key.len()].copy_from_slice(key);
        } else {
            block[..32].copy_from_slice(&Sha256::digest(key));
        }
        Fingerprint(<Hmac<Sha256> as KeyInit>::new(&block.into()))
    }

    /// Adds a labelled value (length-prefixed, so `("a","bc")` ≠ `("ab","c")`).
    pub fn add(&mut self, label: &str, value: &[u8]) {
        for part in [label.as_bytes(), value] {
            self.0.update(&(part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
    }

    /// The hex digest.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize().into_bytes())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprint")
    }
}

/// Read access to environment variables, so that tests pass a map instead of mutating the
/// process environment.
pub trait Env: Send + Sync + fmt::Debug + 'static {
    /// The variable's value, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed map of variables (for tests and embedding). Its `Debug` lists the names only:
/// values may be secrets.
#[derive(Clone, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl fmt::Debug for MapEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_tuple("MapEnv").field(&names).finish()
    }
}

impl MapEnv {
    /// A map from `(name, value)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        MapEnv(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// The shared handle sources use to read the environment.
pub type SharedEnv = Arc<dyn Env>;
