//! OAuth 2.0 client credentials (RFC 6749 §4.4) against any token endpoint, with a client
//! secret (HTTP Basic or form post) or a JWT client assertion (RFC 7523: signed with a private
//! key, or minted elsewhere as in Entra workload identity federation).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use super::assertion::{ClientAssertion, PrivateKeyJwt, Thumbprint, JWT_BEARER_ASSERTION_TYPE};
use super::http::{IdpClient, TokenResponse};
use super::inputs::SecretInput;
use super::{Fingerprint, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT, DEFAULT_TTL};
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::token::Token;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client authentication (public clients, or a token exchange that needs none).
    None,
    /// `client_secret_basic`: HTTP Basic with the client id and secret.
    SecretBasic(SecretInput),
    /// `client_secret_post`: `client_id` and `client_secret` in the form.
    SecretPost(SecretInput),
    /// `private_key_jwt` / federated: `client_assertion_type` + `client_assertion`.
    Assertion(Arc<dyn ClientAssertion>),
}

/// A client id and how it authenticates.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    /// `client_id` (required unless `auth` is [`ClientAuth::None`]).
    pub client_id: Option<String>,
    /// The credential.
    pub auth: ClientAuth,
}

impl OAuthClient {
    /// A client that authenticates with a secret when one is configured (`basic` or `post`)
    /// and not at all otherwise: the refresh-token and token-exchange grants.
    ///
    /// # Errors
    /// When both secret keys are set, or a secret is given without `client_id`.
    pub fn with_optional_secret(
        path: &str,
        client_id: &Option<String>,
        secret_file: &Option<PathBuf>,
        secret_env: &Option<String>,
        method: AuthMethod,
        env: &SharedEnv,
    ) -> Result<Self> {
        let secret = SecretInput::from_keys(path, "client_secret", secret_file, secret_env, env)?;
        let auth = match (secret, method) {
            (None, _) => ClientAuth::None,
            (Some(s), AuthMethod::Basic) => ClientAuth::SecretBasic(s),
            (Some(s), AuthMethod::Post) => ClientAuth::SecretPost(s),
        };
        if !matches!(auth, ClientAuth::None) && client_id.is_none() {
            return Err(Error::config(path, "a client secret needs client_id"));
        }
        Ok(OAuthClient {
            client_id: client_id.clone(),
            auth,
        })
    }

    /// Posts a token request: `form` plus `scope` (when there is one) and this client's
    /// authentication, to `token_url` through `http`.
    ///
    /// # Errors
    /// When the client's secret or assertion cannot be had, or the IdP refuses.
    pub async fn token_request(
        &self,
        http: &IdpClient,
        origin: &str,
        token_url: &str,
        mut form: Vec<(&'static str, String)>,
        scope: Option<String>,
    ) -> Result<TokenResponse> {
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let basic = self.apply(origin, token_url, &mut form).await?;
        let params: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http.token_request(
            origin,
            token_url,
            &params,
            basic.as_ref().map(|(id, s)| (id.as_str(), s)),
        )
        .await
    }

    /// Adds the client's parameters to `form`; returns HTTP Basic credentials to send, if any.
    ///
    /// # Errors
    /// When the secret cannot be read or the assertion cannot be made.
    pub async fn apply(
        &self,
        origin: &str,
        token_url: &str,
        form: &mut Vec<(&'static str, String)>,
    ) -> Result<Option<(String, Secret)>> {
        let id = self.client_id.clone();
        match &self.auth {
            ClientAuth::None => {
                if let Some(id) = id {
                    form.push(("client_id", id));
                }
                Ok(None)
            }
            ClientAuth::SecretBasic(s) => {
                let secret = s.read(origin, "client secret").await?;
                Ok(Some((id.unwrap_or_default(), secret)))
            }
            ClientAuth::SecretPost(s) => {
                let secret = s.read(origin, "client secret").await?;
                form.push(("client_id", id.unwrap_or_default()));
                form.push(("client_secret", secret.expose().to_owned()));
                Ok(None)
            }
            ClientAuth::Assertion(a) => {
                let assertion = a
                    .assertion(token_url)
                    .await
                    .map_err(|e| e.context(origin))?;
                if let Some(id) = id {
                    form.push(("client_id", id));
                }
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION_TYPE.into()));
                form.push(("client_assertion", assertion.expose().to_owned()));
                Ok(None)
            }
        }
    }

    /// Feeds the client id and, hashed, the credential into `fp`.
    ///
    /// # Errors
    /// When the secret or key cannot be read.
    pub fn fingerprint(&self, fp: &mut Fingerprint, origin: &str) -> Result<()> {
        fp.add(
            "client_id",
            self.client_id.as_deref().unwrap_or("").as_bytes(),
        );
        match &self.auth {
            ClientAuth::None => fp.add("auth", b"none"),
            ClientAuth::SecretBasic(s) => s.fingerprint(fp, origin, "client_secret_basic")?,
            ClientAuth::SecretPost(s) => s.fingerprint(fp, origin, "client_secret_post")?,
            ClientAuth::Assertion(a) => a.fingerprint(fp)?,
        }
        Ok(())
    }
}

/// Gets tokens with the client credentials grant. Used for `oauth2`, `entra-federated` and
/// `github-oidc-entra` (the latter two with a federated [`ClientAssertion`]).
///
/// The scope is the request's, else the configured one, sent verbatim.
#[derive(Debug)]
pub struct ClientCredentialsSource {
    kind: &'static str,
    token_url: String,
    client: OAuthClient,
    scope: Option<String>,
    extra: Vec<(&'static str, String)>,
    http: IdpClient,
    timeout: Duration,
    default_ttl: Duration,
}

impl ClientCredentialsSource {
    /// A source of `kind` posting to `token_url` as `client`.
    pub fn new(
        kind: &'static str,
        token_url: impl Into<String>,
        client: OAuthClient,
        http: IdpClient,
    ) -> Self {
        ClientCredentialsSource {
            kind,
            token_url: token_url.into(),
            client,
            scope: None,
            extra: Vec::new(),
            http,
            timeout: DEFAULT_SOURCE_TIMEOUT,
            default_ttl: DEFAULT_TTL,
        }
    }

    /// The scope used when the request has none.
    #[must_use]
    pub fn with_scope(mut self, scope: Option<String>) -> Self {
        self.scope = scope;
        self
    }

    /// An extra form parameter (`audience`, `resource`).
    #[must_use]
    pub fn with_param(mut self, name: &'static str, value: Option<String>) -> Self {
        if let Some(v) = value {
            self.extra.push((name, v));
        }
        self
    }

    /// How long one acquisition may take (default 30 s).
    #[must_use]
    pub fn with_timeout(mut self, t: Option<Duration>) -> Self {
        self.timeout = t.unwrap_or(DEFAULT_SOURCE_TIMEOUT);
        self
    }

    /// Lifetime assumed when the answer states none and the token is not a JWT.
    #[must_use]
    pub fn with_default_ttl(mut self, t: Option<Duration>) -> Self {
        self.default_ttl = t.unwrap_or(DEFAULT_TTL);
        self
    }
}

#[async_trait]
impl Source for ClientCredentialsSource {
    #[tracing::instrument(skip_all, fields(source = %self.describe()))]
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let origin = self.describe();
        let mut form: Vec<(&'static str, String)> =
            vec![("grant_type", "client_credentials".into())];
        form.extend(self.extra.iter().cloned());
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
        Ok(resp.into_token(origin, now, self.default_ttl))
    }
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn describe(&self) -> String {
        format!("{} source {}", self.kind, self.token_url)
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", self.kind.as_bytes());
        fp.add("token_url", self.token_url.as_bytes());
        fp.add("scope", self.scope.as_deref().unwrap_or("").as_bytes());
        for (k, v) in &self.extra {
            fp.add(k, v.as_bytes());
        }
        self.client.fingerprint(fp, &self.describe())
    }
}

/// `kind = "oauth2"`: client credentials with a secret or a private-key JWT.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OAuth2Config {
    /// Token endpoint URL.
    pub token_url: String,
    /// `client_id`.
    pub client_id: String,
    /// File holding the client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// `basic` (default) or `post`.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// PEM private key for a signed client assertion (instead of a secret).
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// PEM certificate whose thumbprint goes in the assertion header (Entra certificates).
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// `RS256`, `PS256` or `ES256` (default from the key type).
    #[serde(default)]
    pub algorithm: Option<jsonwebtoken::Algorithm>,
    /// `x5t#S256` (default), `x5t` or `both`.
    #[serde(default)]
    pub thumbprint: Thumbprint,
    /// Scope when the provider sets none (space-separated, verbatim).
    #[serde(default)]
    pub scope: Option<String>,
    /// Or several scopes, joined with spaces.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// `audience` form parameter (Auth0, Okta custom servers).
    #[serde(default)]
    pub audience: Option<String>,
    /// `resource` form parameter (RFC 8707, ADFS).
    #[serde(default)]
    pub resource: Option<String>,
    /// Extra CA certificates (PEM) to trust for the token endpoint.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Time limit for one acquisition (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Lifetime when the answer states none (default 15m).
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
}

/// Client secret authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// `client_secret_basic`.
    #[default]
    Basic,
    /// `client_secret_post`.
    Post,
}

/// Joins `scope` / `scopes` (only one may be set).
pub(crate) fn joined_scope(
    path: &str,
    scope: &Option<String>,
    scopes: &Option<Vec<String>>,
) -> Result<Option<String>> {
    match (scope, scopes) {
        (Some(_), Some(_)) => Err(Error::config(path, "set only one of scope or scopes")),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(v)) => Ok(Some(v.join(" "))),
        (None, None) => Ok(None),
    }
}

/// Checks `url` with [`check_idp_url`](super::http::check_idp_url); a config error at
/// `path.key` (`provider.azure.source.token_url: …`).
pub(crate) fn check_url(path: &str, key: &str, url: &str) -> Result<()> {
    super::http::check_idp_url(url).map_err(|msg| Error::config(format!("{path}.{key}"), msg))
}

impl OAuth2Config {
    /// The client this config describes.
    ///
    /// # Errors
    /// A config error naming `path` when the credential is missing or ambiguous.
    pub fn client(&self, path: &str, env: &SharedEnv) -> Result<OAuthClient> {
        let secret = SecretInput::from_keys(
            path,
            "client_secret",
            &self.client_secret_file,
            &self.client_secret_env,
            env,
        )?;
        let auth = match (secret, &self.private_key_file) {
            (Some(s), None) => match self.auth_method {
                AuthMethod::Basic => ClientAuth::SecretBasic(s),
                AuthMethod::Post => ClientAuth::SecretPost(s),
            },
            (None, Some(key)) => ClientAuth::Assertion(Arc::new(PrivateKeyJwt::from_pem_files(
                &format!("{path}.private_key_file"),
                &self.client_id,
                key,
                self.certificate_file.as_deref(),
                self.algorithm,
                self.thumbprint,
            )?)),
            _ => {
                return Err(Error::config(
                    path,
                    "an oauth2 source takes exactly one of client_secret_file, client_secret_env or private_key_file",
                ))
            }
        };
        Ok(OAuthClient {
            client_id: Some(self.client_id.clone()),
            auth,
        })
    }

    /// Builds the source.
    ///
    /// # Errors
    /// A config error naming `path` and the key.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        check_url(path, "token_url", &self.token_url)?;
        let http =
            IdpClient::with_ca_bundle(&format!("{path}.ca_bundle"), self.ca_bundle.as_deref())?;
        let client = self.client(path, env)?;
        Ok(Arc::new(
            ClientCredentialsSource::new("oauth2", self.token_url.clone(), client, http)
                .with_scope(joined_scope(path, &self.scope, &self.scopes)?)
                .with_param("audience", self.audience.clone())
                .with_param("resource", self.resource.clone())
                .with_timeout(self.timeout)
                .with_default_ttl(self.default_ttl),
        ))
    }
}

/// The scope to ask for: the request's, else the source's configured one (verbatim).
pub(crate) fn request_scope(req: &TokenRequest, configured: &Option<String>) -> Option<String> {
    req.scope()
        .map(str::to_owned)
        .or_else(|| configured.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;

    #[test]
    fn an_unreadable_ca_bundle_is_named_once() {
        let cfg = OAuth2Config {
            token_url: "https://idp.example/token".into(),
            client_id: "c".into(),
            client_secret_env: Some("CS".into()),
            ca_bundle: Some("/nonexistent/ca.pem".into()),
            ..OAuth2Config::default()
        };
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([("CS", "s")]));
        let err = cfg
            .build("provider[0] (a).source", &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("provider[0] (a).source.ca_bundle: invalid configuration: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        assert_eq!(err.matches("invalid configuration").count(), 1, "{err}");
    }
}
