//! Anthropic workload identity federation (`kind = "anthropic-federated"`): an OIDC token from
//! a nested source (default `github-oidc` with audience `https://api.anthropic.com`) is
//! exchanged at `https://api.anthropic.com/v1/oauth/token` with the JWT bearer grant
//! (`grant_type = urn:ietf:params:oauth:grant-type:jwt-bearer`, `assertion`,
//! `federation_rule_id`, `organization_id`, `service_account_id`, optional `workspace_id`, as
//! JSON, with `anthropic-beta: oauth-2025-04-20,oidc-federation-2026-04-01`) for a short-lived
//! OAuth access token (`sk-ant-oat01-…`). Upstream it goes as `Authorization: Bearer` with
//! `anthropic-beta: oauth-2025-04-20` (`inject = "anthropic-oauth"`).
//!
//! Unset keys are read from `ANTHROPIC_FEDERATION_RULE_ID`, `ANTHROPIC_ORGANIZATION_ID`,
//! `ANTHROPIC_SERVICE_ACCOUNT_ID`, `ANTHROPIC_WORKSPACE_ID` (gh-aw's
//! `AWF_AUTH_ANTHROPIC_*` names map onto these keys; see docs/sources.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::entra::key_or_env;
use super::google_calls::JWT_BEARER_GRANT;
use super::http::{parse_token_response, IdpClient, IdpResponse};
use super::oauth::check_url;
use super::SourceConfig;
use super::{
    acquire_with_timeout, Fingerprint, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT,
};
use crate::error::{Error, ErrorKind, Result};
use crate::token::Token;

/// Anthropic's token endpoint.
pub const ANTHROPIC_TOKEN_URL: &str = "https://api.anthropic.com/v1/oauth/token";
/// Audience of the OIDC token Anthropic expects by default.
pub const ANTHROPIC_AUDIENCE: &str = "https://api.anthropic.com";
/// The beta that OAuth access tokens need on every API request.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";
/// The betas the token exchange needs.
pub const FEDERATION_BETAS: &str = "oauth-2025-04-20,oidc-federation-2026-04-01";
/// Lifetime assumed when the answer states none (1 h, Anthropic's documented default).
const DEFAULT_ANTHROPIC_TTL: Duration = Duration::from_secs(3600);

/// Exchanges an OIDC token for an Anthropic OAuth access token.
#[derive(Debug)]
pub struct AnthropicFederatedSource {
    token_url: String,
    rule: String,
    organization: String,
    service_account: String,
    workspace: Option<String>,
    subject: Arc<dyn Source>,
    http: IdpClient,
    timeout: Duration,
}

#[async_trait]
impl Source for AnthropicFederatedSource {
    #[tracing::instrument(skip_all, fields(source = %self.describe()))]
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let origin = self.describe();
        let assertion =
            acquire_with_timeout(self.subject.as_ref(), &TokenRequest::new(req.provider()))
                .await
                .map_err(|e| e.context(&format!("{origin}: subject")))?;
        let mut body = serde_json::json!({
            "grant_type": JWT_BEARER_GRANT,
            "assertion": assertion.secret().expose(),
            "federation_rule_id": self.rule,
            "organization_id": self.organization,
            "service_account_id": self.service_account,
        });
        if let Some(w) = &self.workspace {
            body["workspace_id"] = Value::String(w.clone());
        }
        let now = SystemTime::now();
        let resp = self
            .http
            .send(&origin, |c| {
                c.post(&self.token_url)
                    .header(http::header::ACCEPT, "application/json")
                    .header("anthropic-beta", FEDERATION_BETAS)
                    .json(&body)
            })
            .await?;
        if !(200..300).contains(&resp.status) {
            return Err(Error::new(origin, anthropic_rejected(&resp)));
        }
        let t = parse_token_response(&resp, now).map_err(|k| Error::new(&*origin, k))?;
        Ok(t.into_token(origin, now, DEFAULT_ANTHROPIC_TTL))
    }
    fn kind(&self) -> &'static str {
        "anthropic-federated"
    }
    fn describe(&self) -> String {
        format!(
            "anthropic-federated source (rule {}, service account {})",
            self.rule, self.service_account
        )
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"anthropic-federated");
        fp.add("token_url", self.token_url.as_bytes());
        fp.add("describe", self.describe().as_bytes());
        fp.add("organization", self.organization.as_bytes());
        fp.add(
            "workspace",
            self.workspace.as_deref().unwrap_or("").as_bytes(),
        );
        self.subject.fingerprint(fp)
    }
}

/// An Anthropic API error (`{"type": "error", "error": {"type", "message"}}`) or an OAuth one,
/// as [`ErrorKind::IdpRejected`] with the error type and message only.
fn anthropic_rejected(resp: &IdpResponse) -> ErrorKind {
    super::http::rejected_with_error_object(resp, "type")
}

/// `kind = "anthropic-federated"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicFederatedConfig {
    /// `fdrl_…`; default `ANTHROPIC_FEDERATION_RULE_ID`.
    #[serde(default)]
    pub federation_rule_id: Option<String>,
    /// The organization's UUID; default `ANTHROPIC_ORGANIZATION_ID`.
    #[serde(default)]
    pub organization_id: Option<String>,
    /// `svac_…`; default `ANTHROPIC_SERVICE_ACCOUNT_ID`.
    #[serde(default)]
    pub service_account_id: Option<String>,
    /// Needed when the rule covers several workspaces; default `ANTHROPIC_WORKSPACE_ID`.
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// Token endpoint (default `https://api.anthropic.com/v1/oauth/token`).
    #[serde(default)]
    pub token_url: Option<String>,
    /// Where the OIDC token comes from (`[provider.source.subject]`, default `github-oidc`
    /// with audience `https://api.anthropic.com`).
    #[serde(default)]
    pub subject: Option<Box<SourceConfig>>,
    /// Extra CA certificates (PEM) to trust.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Time limit for one acquisition, subject included (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl AnthropicFederatedConfig {
    /// Builds the source and its subject source.
    ///
    /// # Errors
    /// A config error naming the missing key or variable.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        let rule = key_or_env(
            path,
            "federation_rule_id",
            &self.federation_rule_id,
            "ANTHROPIC_FEDERATION_RULE_ID",
            env,
        )?;
        let organization = key_or_env(
            path,
            "organization_id",
            &self.organization_id,
            "ANTHROPIC_ORGANIZATION_ID",
            env,
        )?;
        let service_account = key_or_env(
            path,
            "service_account_id",
            &self.service_account_id,
            "ANTHROPIC_SERVICE_ACCOUNT_ID",
            env,
        )?;
        let workspace = self
            .workspace_id
            .clone()
            .or_else(|| env.var("ANTHROPIC_WORKSPACE_ID"))
            .map(|w| w.trim().to_owned())
            .filter(|w| !w.is_empty());
        let token_url = self
            .token_url
            .clone()
            .unwrap_or_else(|| ANTHROPIC_TOKEN_URL.into());
        check_url(path, "token_url", &token_url)?;
        let mut subject = self
            .subject
            .as_deref()
            .cloned()
            .unwrap_or_else(|| SourceConfig::GithubOidc(Default::default()));
        if let SourceConfig::GithubOidc(g) = &mut subject {
            g.audience.get_or_insert_with(|| ANTHROPIC_AUDIENCE.into());
        }
        let subject = subject.build(&format!("{path}.subject"), env)?;
        Ok(Arc::new(AnthropicFederatedSource {
            token_url,
            rule,
            organization,
            service_account,
            workspace,
            subject,
            http: IdpClient::with_ca_bundle(
                &format!("{path}.ca_bundle"),
                self.ca_bundle.as_deref(),
            )?,
            timeout: self.timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;

    #[test]
    fn keys_from_env_and_errors_name_them() {
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([
            ("ANTHROPIC_FEDERATION_RULE_ID", "fdrl_1"),
            ("ANTHROPIC_ORGANIZATION_ID", "org"),
            ("ANTHROPIC_SERVICE_ACCOUNT_ID", "svac_1"),
            ("ACTIONS_ID_TOKEN_REQUEST_URL", "https://gh.example/x?a=1"),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "r"),
        ]));
        let s = AnthropicFederatedConfig::default()
            .build("p", &env)
            .unwrap();
        assert_eq!(
            s.describe(),
            "anthropic-federated source (rule fdrl_1, service account svac_1)"
        );
        let none: SharedEnv = Arc::new(MapEnv::default());
        let err = AnthropicFederatedConfig::default()
            .build("p", &none)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p.federation_rule_id") && err.contains("ANTHROPIC_FEDERATION_RULE_ID"),
            "{err}"
        );
    }

    #[test]
    fn anthropic_errors_keep_type_and_message() {
        let resp = IdpResponse {
            status: 401,
            body: bytes::Bytes::from_static(
                br#"{"type":"error","error":{"type":"authentication_error","message":"token audience mismatch"}}"#,
            ),
        };
        assert_eq!(
            anthropic_rejected(&resp).to_string(),
            "identity provider answered HTTP 401: authentication_error: token audience mismatch"
        );
    }
}
