//! GitHub Actions OIDC tokens: `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=…` with
//! `Authorization: Bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN` answers `{"value": "<jwt>"}`.
//! The job needs `permissions: id-token: write` for GitHub to set both variables.
//!
//! `github-oidc` hands out that JWT itself; `github-oidc-entra` uses a freshly minted one as
//! the Entra `client_assertion` on every token request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::assertion::ClientAssertion;
use super::entra::EntraApp;
use super::http::{rejected, IdpClient};
use super::output::check_token_text;
use super::{Fingerprint, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT};
use crate::error::{Error, ErrorKind, Result};
use crate::jwt;
use crate::secret::Secret;
use crate::token::Token;

/// The audience Entra expects of a federated credential (`api://AzureADTokenExchange`).
pub const ENTRA_FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Mints GitHub Actions OIDC tokens for one audience.
#[derive(Debug, Clone)]
pub struct GithubOidc {
    request_url: String,
    request_token: Secret,
    audience: Option<String>,
    http: IdpClient,
    timeout: Duration,
}

impl GithubOidc {
    /// From `ACTIONS_ID_TOKEN_REQUEST_URL` and `ACTIONS_ID_TOKEN_REQUEST_TOKEN` in `env`.
    ///
    /// # Errors
    /// A config error naming the missing variable and the workflow permission that sets it.
    pub fn from_env(
        path: &str,
        env: &SharedEnv,
        audience: Option<String>,
        http: IdpClient,
    ) -> Result<Self> {
        let hint = |var: &str| {
            Error::config(
                path,
                format!(
                    "{var} is not set (is this a GitHub Actions job with `permissions: id-token: write`?)"
                ),
            )
        };
        let request_url = env
            .var("ACTIONS_ID_TOKEN_REQUEST_URL")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| hint("ACTIONS_ID_TOKEN_REQUEST_URL"))?;
        let request_token = env
            .var("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| hint("ACTIONS_ID_TOKEN_REQUEST_TOKEN"))?;
        // The request token is sent there: https://, or plain HTTP to a local host only.
        super::http::check_idp_url(&request_url)
            .map_err(|e| Error::config(path, format!("ACTIONS_ID_TOKEN_REQUEST_URL: {e}")))?;
        Ok(GithubOidc {
            request_url,
            request_token: Secret::new(request_token),
            audience,
            http,
            timeout: DEFAULT_SOURCE_TIMEOUT,
        })
    }

    fn url(&self) -> Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.request_url).map_err(|e| {
            Error::config(
                ClientAssertion::describe(self),
                format!("ACTIONS_ID_TOKEN_REQUEST_URL: {e}"),
            )
        })?;
        if let Some(aud) = &self.audience {
            url.query_pairs_mut().append_pair("audience", aud);
        }
        Ok(url)
    }

    /// Mints a new OIDC token.
    ///
    /// # Errors
    /// The GitHub answer's status, a body without `value`, or a transport failure.
    pub async fn mint(&self) -> Result<Secret> {
        let origin = ClientAssertion::describe(self);
        let url = self.url()?;
        let resp = self
            .http
            .send(&origin, |c| {
                c.get(url.clone())
                    .bearer_auth(self.request_token.expose())
                    .header(http::header::ACCEPT, "application/json; api-version=2.0")
            })
            .await?;
        if !(200..300).contains(&resp.status) {
            return Err(Error::new(origin, rejected(&resp)));
        }
        let v: Value = serde_json::from_slice(&resp.body).map_err(|_| {
            Error::new(
                &*origin,
                ErrorKind::InvalidResponse(format!(
                    "GitHub answered HTTP {} with a body that is not JSON",
                    resp.status
                )),
            )
        })?;
        let token = v.get("value").and_then(Value::as_str).ok_or_else(|| {
            Error::new(
                &*origin,
                ErrorKind::InvalidResponse("GitHub's answer has no `value`".into()),
            )
        })?;
        check_token_text(token)
            .map_err(|e| Error::new(&*origin, ErrorKind::InvalidResponse(format!("value: {e}"))))?;
        Ok(Secret::new(token))
    }
}

#[async_trait]
impl ClientAssertion for GithubOidc {
    async fn assertion(&self, _token_url: &str) -> Result<Secret> {
        self.mint().await
    }
    fn describe(&self) -> String {
        match &self.audience {
            Some(a) => format!("github-oidc source (audience {a})"),
            None => "github-oidc source".into(),
        }
    }
}

#[async_trait]
impl Source for GithubOidc {
    #[tracing::instrument(skip_all, fields(source = %ClientAssertion::describe(self)))]
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        let now = SystemTime::now();
        let secret = self.mint().await?;
        let exp = jwt::decode_unverified(secret.expose())
            .ok()
            .and_then(|d| d.expires_at())
            .ok_or_else(|| {
                Error::new(
                    ClientAssertion::describe(self),
                    ErrorKind::InvalidResponse("GitHub's token is not a JWT with exp".into()),
                )
            })?;
        Ok(Token::new(secret, ClientAssertion::describe(self))
            .acquired_at(now)
            .expires_at(exp)
            .capped_at(now))
    }
    fn kind(&self) -> &'static str {
        "github-oidc"
    }
    fn describe(&self) -> String {
        ClientAssertion::describe(self)
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"github-oidc");
        fp.add("request_url", self.request_url.as_bytes());
        fp.add(
            "audience",
            self.audience.as_deref().unwrap_or("").as_bytes(),
        );
        Ok(())
    }
}

/// `kind = "github-oidc"`: the raw GitHub Actions OIDC token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GithubOidcConfig {
    /// `aud` of the token (GitHub's default: the repository owner's URL).
    #[serde(default)]
    pub audience: Option<String>,
    /// Extra CA certificates (PEM) to trust (GitHub Enterprise Server).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Time limit for one acquisition (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl GithubOidcConfig {
    /// The minting client (also used nested, e.g. as an AWS web identity).
    ///
    /// # Errors
    /// A config error when the Actions variables are missing.
    pub fn oidc(&self, path: &str, env: &SharedEnv) -> Result<GithubOidc> {
        let http =
            IdpClient::with_ca_bundle(&format!("{path}.ca_bundle"), self.ca_bundle.as_deref())?;
        let mut g = GithubOidc::from_env(path, env, self.audience.clone(), http)?;
        g.timeout = self.timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT);
        Ok(g)
    }

    /// Builds the source.
    ///
    /// # Errors
    /// A config error when the Actions variables are missing.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(self.oidc(path, env)?))
    }
}

/// `kind = "github-oidc-entra"`: GitHub OIDC → Entra access token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GithubOidcEntraConfig {
    /// Directory (tenant) id; default `AZURE_TENANT_ID`.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Application (client) id; default `AZURE_CLIENT_ID`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Default `AZURE_AUTHORITY_HOST`, else `https://login.microsoftonline.com`.
    #[serde(default)]
    pub authority_host: Option<String>,
    /// Audience of the GitHub token (default `api://AzureADTokenExchange`).
    #[serde(default)]
    pub audience: Option<String>,
    /// Scope when the provider sets none.
    #[serde(default)]
    pub scope: Option<String>,
    /// Extra CA certificates (PEM) to trust.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Time limit for one acquisition, both calls (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl GithubOidcEntraConfig {
    /// Builds the source.
    ///
    /// # Errors
    /// A config error naming the missing key or variable.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        let app = EntraApp::resolve(
            path,
            &self.tenant_id,
            &self.client_id,
            &self.authority_host,
            env,
        )?;
        let http =
            IdpClient::with_ca_bundle(&format!("{path}.ca_bundle"), self.ca_bundle.as_deref())?;
        let audience = self
            .audience
            .clone()
            .unwrap_or_else(|| ENTRA_FEDERATION_AUDIENCE.to_owned());
        let gh = GithubOidc::from_env(path, env, Some(audience), http.clone())?;
        Ok(Arc::new(
            app.source("github-oidc-entra", Arc::new(gh), self.scope.clone(), http)
                .with_timeout(self.timeout),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;

    #[test]
    fn missing_actions_variables_hint_at_permissions() {
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
        ]));
        let err = GithubOidcEntraConfig::default()
            .build("p", &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ACTIONS_ID_TOKEN_REQUEST_URL is not set"),
            "{err}"
        );
        assert!(err.contains("id-token: write"), "{err}");
    }

    #[test]
    fn audience_is_appended_to_the_request_url() {
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([
            (
                "ACTIONS_ID_TOKEN_REQUEST_URL",
                "https://gh.example/token?api-version=2.0",
            ),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "rt"),
        ]));
        let g = GithubOidc::from_env(
            "p",
            &env,
            Some(ENTRA_FEDERATION_AUDIENCE.into()),
            IdpClient::new().unwrap(),
        )
        .unwrap();
        assert_eq!(
            g.url().unwrap().as_str(),
            "https://gh.example/token?api-version=2.0&audience=api%3A%2F%2FAzureADTokenExchange"
        );
        assert!(!format!("{g:?}").contains("\"rt\""));
    }
}
