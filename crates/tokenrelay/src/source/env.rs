//! Sources that read a value already in the process: a fixed secret or an environment variable.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::output::{self, OutputFormat};
use super::{Fingerprint, ProcessEnv, SharedEnv, Source, TokenRequest, DEFAULT_TTL};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::token::Token;
use std::sync::Arc;

/// A token fixed when the source is built (read from a file or variable at start-up).
///
/// Its expiry is the JWT `exp` if it is one, else `default_ttl` after each acquisition.
#[derive(Debug, Clone)]
pub struct StaticSource {
    secret: Secret,
    default_ttl: Duration,
}

impl StaticSource {
    /// A source that always answers `secret`.
    pub fn new(secret: Secret) -> Self {
        StaticSource {
            secret,
            default_ttl: DEFAULT_TTL,
        }
    }
}

#[async_trait]
impl Source for StaticSource {
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        let parsed = output::parse(self.secret.expose(), OutputFormat::Raw)
            .map_err(|e| Error::new(self.describe(), ErrorKind::InvalidResponse(e)))?;
        Ok(parsed.into_token(&self.describe(), SystemTime::now(), Some(self.default_ttl)))
    }
    fn kind(&self) -> &'static str {
        "static"
    }
    fn describe(&self) -> String {
        "static source".into()
    }
    fn persistable(&self) -> bool {
        false
    }
}

/// Reads the token from an environment variable at each acquisition.
///
/// ```
/// # tokio_test_block(async {
/// use std::sync::Arc;
/// use tokenrelay::source::{EnvSource, MapEnv};
/// use tokenrelay::{Source, TokenRequest};
/// let env = Arc::new(MapEnv::from_pairs([("MY_TOKEN", "abc")]));
/// let src = EnvSource::new("MY_TOKEN").with_env(env);
/// let t = src.acquire(&TokenRequest::new("p")).await.unwrap();
/// assert_eq!(t.secret().expose(), "abc");
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct EnvSource {
    name: String,
    env: SharedEnv,
    format: OutputFormat,
    default_ttl: Duration,
}

impl EnvSource {
    /// Reads variable `name` from the process environment.
    pub fn new(name: impl Into<String>) -> Self {
        EnvSource {
            name: name.into(),
            env: Arc::new(ProcessEnv),
            format: OutputFormat::Auto,
            default_ttl: DEFAULT_TTL,
        }
    }

    /// Reads from `env` instead of the process environment.
    #[must_use]
    pub fn with_env(mut self, env: SharedEnv) -> Self {
        self.env = env;
        self
    }

    /// How to parse the value (default: auto).
    #[must_use]
    pub fn with_format(mut self, format: OutputFormat) -> Self {
        self.format = format;
        self
    }

    /// Lifetime assumed when the value states none.
    #[must_use]
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }
}

#[async_trait]
impl Source for EnvSource {
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        let value = self.env.var(&self.name).ok_or_else(|| {
            Error::new(
                self.describe(),
                ErrorKind::Unavailable(format!(
                    "environment variable {} is not set (or not UTF-8)",
                    self.name
                )),
            )
        })?;
        let parsed = output::parse(&value, self.format)
            .map_err(|e| Error::new(self.describe(), ErrorKind::InvalidResponse(e)))?;
        Ok(parsed.into_token(&self.describe(), SystemTime::now(), Some(self.default_ttl)))
    }
    fn kind(&self) -> &'static str {
        "env"
    }
    fn describe(&self) -> String {
        format!("env source {}", self.name)
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("env", self.name.as_bytes());
        fp.add(
            "value",
            self.env.var(&self.name).unwrap_or_default().as_bytes(),
        );
        Ok(())
    }
    fn persistable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;

    #[tokio::test]
    async fn unset_variable_names_it() {
        let src = EnvSource::new("NOPE_TOKEN").with_env(Arc::new(MapEnv::default()));
        let err = src.acquire(&TokenRequest::new("p")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "env source NOPE_TOKEN: environment variable NOPE_TOKEN is not set (or not UTF-8)"
        );
    }

    #[tokio::test]
    async fn garbage_value_is_rejected() {
        let env = Arc::new(MapEnv::from_pairs([("T", "two\nlines")]));
        let err = EnvSource::new("T")
            .with_env(env)
            .acquire(&TokenRequest::new("p"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("several lines"), "{err}");
    }

    #[tokio::test]
    async fn default_ttl_is_applied() {
        let env = Arc::new(MapEnv::from_pairs([("T", "opaque")]));
        let src = EnvSource::new("T")
            .with_env(env)
            .with_default_ttl(Duration::from_secs(60));
        let t = src.acquire(&TokenRequest::new("p")).await.unwrap();
        assert_eq!(t.lifetime(), Some(Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn static_source() {
        let t = StaticSource::new(Secret::new("k"))
            .acquire(&TokenRequest::new("p"))
            .await
            .unwrap();
        assert_eq!(t.secret().expose(), "k");
        assert!(StaticSource::new(Secret::new("a b"))
            .acquire(&TokenRequest::new("p"))
            .await
            .is_err());
    }
}
