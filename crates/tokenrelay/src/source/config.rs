//! Source configuration: the `[provider.source]` table of every kind, chosen by its `kind`
//! key. The kinds are listed once, in the `source_kinds!` table below: the enum, the names accepted in
//! config files ([`SOURCE_KINDS`]), parsing and [`SourceConfig::kind`] all come from it. Each
//! kind's own config type lives beside its source.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::output::OutputFormat;
use super::{
    CommandSource, EnvSource, FileSource, Program, SharedEnv, Source, StaticSource, DEFAULT_TTL,
};
use crate::error::{Error, Result};
use crate::secret::Secret;

/// The one table of source kinds: `"name" => Variant(ConfigType)`.
macro_rules! source_kinds {
    ($( $name:literal => $variant:ident($ty:ty) ),* $(,)?) => {
        /// Where a provider's token comes from; the `kind` key selects the variant and the
        /// other keys are that kind's own (unknown ones are errors that name the key).
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        pub enum SourceConfig {
            $(
                #[doc = concat!("`kind = \"", $name, "\"`")]
                $variant($ty),
            )*
        }

        /// The `kind` names a config file may use.
        pub const SOURCE_KINDS: &[&str] = &[$($name),*];

        impl SourceConfig {
            /// The `kind` string.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( SourceConfig::$variant(_) => $name, )*
                }
            }

            /// Parses the keys of a `kind` table (`kind` removed).
            fn parse_kind<E: serde::de::Error>(kind: &str, table: toml::Table) -> std::result::Result<Self, E> {
                Ok(match kind {
                    $( $name => SourceConfig::$variant(part(table)?), )*
                    other => {
                        return Err(E::custom(format!(
                            "unknown source kind {other:?} (expected one of {})",
                            SOURCE_KINDS.join(", ")
                        )))
                    }
                })
            }
        }
    };
}

source_kinds! {
    "static" => Static(StaticConfig),
    "env" => Env(EnvConfig),
    "file" => File(FileConfig),
    "command" => Command(CommandConfig),
    "oauth2" => OAuth2(super::oauth::OAuth2Config),
    "refresh-token" => RefreshToken(super::refresh::RefreshTokenConfig),
    "entra-federated" => EntraFederated(super::entra::EntraFederatedConfig),
    "github-oidc" => GithubOidc(super::github_oidc::GithubOidcConfig),
    "github-oidc-entra" => GithubOidcEntra(super::github_oidc::GithubOidcEntraConfig),
    "managed-identity" => ManagedIdentity(super::imds::ManagedIdentityConfig),
    "azure-cli" => AzureCli(super::AzureCliConfig),
    "aws-web-identity" => AwsWebIdentity(super::aws::AwsWebIdentityConfig),
    "token-exchange" => TokenExchange(super::exchange::TokenExchangeConfig),
    "plugin" => Plugin(super::plugin::PluginConfig),
    "aws" => AwsHost(super::aws_chain::AwsHostConfig),
    "google" => Google(super::google::GoogleConfig),
    "anthropic-federated" => AnthropicFederated(super::anthropic::AnthropicFederatedConfig),
}

/// Deserializes a kind's keys, naming the key path of an error.
fn part<T: serde::de::DeserializeOwned, E: serde::de::Error>(
    table: toml::Table,
) -> std::result::Result<T, E> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        E::custom(format!("{key}: {}", e.into_inner().message()))
    })
}

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
        SourceConfig::parse_kind(&kind, table)
    }
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

impl SourceConfig {
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
            SourceConfig::AwsHost(_) => standard(&[
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_SECURITY_TOKEN",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            ]),
            SourceConfig::Google(c) => {
                let mut v = standard(&["GOOGLE_APPLICATION_CREDENTIALS"]);
                if let Some(inner) = &c.subject {
                    v.extend(inner.credential_env_vars());
                } else if c.workload_identity_provider.is_some() {
                    v.extend(standard(GITHUB_OIDC));
                }
                v
            }
            SourceConfig::AnthropicFederated(c) => match &c.subject {
                Some(inner) => inner.credential_env_vars(),
                None => standard(GITHUB_OIDC),
            },
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
            SourceConfig::AwsHost(c) => c.build(path, env)?,
            SourceConfig::Google(c) => c.build(path, env)?,
            SourceConfig::AnthropicFederated(c) => c.build(path, env)?,
        })
    }
}
