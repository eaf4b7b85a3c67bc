//! OAuth 2.0 Token Exchange (RFC 8693): a subject token from another source (GitHub OIDC, a
//! Kubernetes token file, an Entra token…) is exchanged at a token endpoint for the token the
//! upstream accepts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use super::http::IdpClient;
use super::oauth::{check_url, joined_scope, request_scope, AuthMethod, OAuthClient};
use super::{
    acquire_with_timeout, Fingerprint, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT,
    DEFAULT_TTL,
};
use crate::config::SourceConfig;
use crate::error::Result;
use crate::jwt;
use crate::token::Token;

/// `grant_type` of a token exchange.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Token type URI of a JWT.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Token type URI of an OAuth access token.
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Exchanges a subject token for an access token.
#[derive(Debug)]
pub struct TokenExchangeSource {
    token_url: String,
    client: OAuthClient,
    subject: Arc<dyn Source>,
    subject_token_type: Option<String>,
    params: Vec<(&'static str, String)>,
    scope: Option<String>,
    http: IdpClient,
    timeout: Duration,
    default_ttl: Duration,
}

#[async_trait]
impl Source for TokenExchangeSource {
    #[tracing::instrument(skip_all, fields(source = %self.describe()))]
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let origin = self.describe();
        // The subject source answers with its own configured scope/audience.
        let subject =
            acquire_with_timeout(self.subject.as_ref(), &TokenRequest::new(req.provider()))
                .await
                .map_err(|e| e.context(&origin))?;
        let subject_type = self.subject_token_type.clone().unwrap_or_else(|| {
            if jwt::looks_like_jwt(subject.secret().expose()) {
                TOKEN_TYPE_JWT.into()
            } else {
                TOKEN_TYPE_ACCESS_TOKEN.into()
            }
        });
        let mut form: Vec<(&'static str, String)> = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT.into()),
            ("subject_token", subject.secret().expose().to_owned()),
            ("subject_token_type", subject_type),
        ];
        form.extend(self.params.iter().cloned());
        let now = SystemTime::now();
        let resp = self
            .client
            .token_request(
                &self.http,
                &origin,
                &self.token_url,
                form,
                request_scope(req, &self.scope),
            )
            .await?;
        tracing::debug!(issued_token_type = ?resp.issued_token_type, "token exchanged");
        Ok(resp.into_token(origin, now, self.default_ttl))
    }
    fn kind(&self) -> &'static str {
        "token-exchange"
    }
    fn describe(&self) -> String {
        format!("token-exchange source {}", self.token_url)
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"token-exchange");
        fp.add("token_url", self.token_url.as_bytes());
        for (k, v) in &self.params {
            fp.add(k, v.as_bytes());
        }
        fp.add("scope", self.scope.as_deref().unwrap_or("").as_bytes());
        self.client.fingerprint(fp, &self.describe())?;
        self.subject.fingerprint(fp)
    }
}

/// `kind = "token-exchange"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TokenExchangeConfig {
    /// Token endpoint URL.
    pub token_url: String,
    /// Where the subject token comes from (`[provider.source.subject]`, any kind).
    pub subject: Box<SourceConfig>,
    /// `subject_token_type` (default: `…:jwt` for a JWT, else `…:access_token`).
    #[serde(default)]
    pub subject_token_type: Option<String>,
    /// `requested_token_type`.
    #[serde(default)]
    pub requested_token_type: Option<String>,
    /// `audience`.
    #[serde(default)]
    pub audience: Option<String>,
    /// `resource`.
    #[serde(default)]
    pub resource: Option<String>,
    /// Scope when the provider sets none.
    #[serde(default)]
    pub scope: Option<String>,
    /// Or several scopes, joined with spaces.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// `client_id`, when the server wants client authentication.
    #[serde(default)]
    pub client_id: Option<String>,
    /// File holding the client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// `basic` (default) or `post`.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// Extra CA certificates (PEM) to trust.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Time limit for one acquisition, subject included (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Lifetime when the answer states none (default 15m).
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
}

impl TokenExchangeConfig {
    /// Builds the source and its subject source.
    ///
    /// # Errors
    /// A config error naming the key, nested ones under `{path}.subject`.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        check_url(path, "token_url", &self.token_url)?;
        let subject = self.subject.build(&format!("{path}.subject"), env)?;
        let client = OAuthClient::with_optional_secret(
            path,
            &self.client_id,
            &self.client_secret_file,
            &self.client_secret_env,
            self.auth_method,
            env,
        )?;
        let mut params = Vec::new();
        for (k, v) in [
            ("requested_token_type", &self.requested_token_type),
            ("audience", &self.audience),
            ("resource", &self.resource),
        ] {
            if let Some(v) = v {
                params.push((k, v.clone()));
            }
        }
        let http =
            IdpClient::with_ca_bundle(&format!("{path}.ca_bundle"), self.ca_bundle.as_deref())?;
        Ok(Arc::new(TokenExchangeSource {
            token_url: self.token_url.clone(),
            client,
            subject,
            subject_token_type: self.subject_token_type.clone(),
            params,
            scope: joined_scope(path, &self.scope, &self.scopes)?,
            http,
            timeout: self.timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT),
            default_ttl: self.default_ttl.unwrap_or(DEFAULT_TTL),
        }))
    }
}
