//! Microsoft Entra workload identity federation: the client authenticates with a token issued
//! by another identity provider (a Kubernetes projected service-account token, a GitHub
//! Actions OIDC token) as its `client_assertion`, at
//! `{authority_host}/{tenant_id}/oauth2/v2.0/token`.
//!
//! Like the Azure SDKs, the standard variables fill what the config leaves out:
//! `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::assertion::ClientAssertion;
use super::http::IdpClient;
use super::inputs::{read_bounded_async, Holds, MAX_SECRET_FILE};
use super::oauth::{check_url, ClientAuth, ClientCredentialsSource, OAuthClient};
use super::output::check_token_text;
use super::{Fingerprint, SharedEnv, Source};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;

/// The Entra authority used when neither `authority_host` nor `AZURE_AUTHORITY_HOST` is set.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// A federated token read from a file at every use (Kubernetes rotates projected tokens in
/// place, so the file is never cached).
#[derive(Debug, Clone)]
pub struct FederatedTokenFile {
    path: PathBuf,
}

impl FederatedTokenFile {
    /// Reads `path` at each assertion.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FederatedTokenFile { path: path.into() }
    }
}

#[async_trait]
impl ClientAssertion for FederatedTokenFile {
    async fn assertion(&self, _token_url: &str) -> Result<Secret> {
        let bytes = read_bounded_async(&self.path, MAX_SECRET_FILE, Holds::Secret)
            .await
            .map_err(|e| Error::new(self.describe(), e.kind("")))?;
        let text = String::from_utf8_lossy(&bytes);
        let token = text.trim();
        check_token_text(token)
            .map_err(|e| Error::new(self.describe(), ErrorKind::InvalidResponse(e)))?;
        Ok(Secret::new(token))
    }
    fn describe(&self) -> String {
        format!("federated token file {}", self.path.display())
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        // The file rotates; the identity it proves does not.
        fp.add(
            "federated_token_file",
            self.path.as_os_str().as_encoded_bytes(),
        );
        Ok(())
    }
}

/// A config value, else a standard environment variable, else a config error naming both.
pub(crate) fn key_or_env(
    path: &str,
    key: &str,
    value: &Option<String>,
    var: &str,
    env: &SharedEnv,
) -> Result<String> {
    value
        .clone()
        .or_else(|| env.var(var))
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| {
            Error::config(
                format!("{path}.{key}"),
                format!("not set (set {key} or the {var} environment variable)"),
            )
        })
}

/// Tenant, client and authority of an Entra app, resolved from config and environment.
#[derive(Debug, Clone)]
pub(crate) struct EntraApp {
    pub tenant_id: String,
    pub client_id: String,
    pub token_url: String,
}

impl EntraApp {
    pub(crate) fn resolve(
        path: &str,
        tenant_id: &Option<String>,
        client_id: &Option<String>,
        authority_host: &Option<String>,
        env: &SharedEnv,
    ) -> Result<Self> {
        let tenant_id = key_or_env(path, "tenant_id", tenant_id, "AZURE_TENANT_ID", env)?;
        let client_id = key_or_env(path, "client_id", client_id, "AZURE_CLIENT_ID", env)?;
        if !tenant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(Error::config(
                format!("{path}.tenant_id"),
                "must be a tenant id or domain name",
            ));
        }
        let authority = authority_host
            .clone()
            .or_else(|| env.var("AZURE_AUTHORITY_HOST"))
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_owned());
        check_url(path, "authority_host", &authority)?;
        let token_url = format!(
            "{}/{tenant_id}/oauth2/v2.0/token",
            authority.trim_end_matches('/')
        );
        Ok(EntraApp {
            tenant_id,
            client_id,
            token_url,
        })
    }

    pub(crate) fn source(
        &self,
        kind: &'static str,
        assertion: Arc<dyn ClientAssertion>,
        scope: Option<String>,
        http: IdpClient,
    ) -> ClientCredentialsSource {
        ClientCredentialsSource::new(
            kind,
            self.token_url.clone(),
            OAuthClient {
                client_id: Some(self.client_id.clone()),
                auth: ClientAuth::Assertion(assertion),
            },
            http,
        )
        .with_scope(scope)
    }
}

/// `kind = "entra-federated"`: every key may come from the standard variables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EntraFederatedConfig {
    /// Directory (tenant) id; default `AZURE_TENANT_ID`.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Application (client) id; default `AZURE_CLIENT_ID`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Token file from the federated issuer; default `AZURE_FEDERATED_TOKEN_FILE`.
    #[serde(default)]
    pub federated_token_file: Option<PathBuf>,
    /// Default `AZURE_AUTHORITY_HOST`, else [`DEFAULT_AUTHORITY_HOST`].
    #[serde(default)]
    pub authority_host: Option<String>,
    /// Scope when the provider sets none (e.g. `https://cognitiveservices.azure.com/.default`).
    #[serde(default)]
    pub scope: Option<String>,
    /// Extra CA certificates (PEM) to trust.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Time limit for one acquisition (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl EntraFederatedConfig {
    /// Builds the source.
    ///
    /// # Errors
    /// A config error naming the missing key and its variable.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        let app = EntraApp::resolve(
            path,
            &self.tenant_id,
            &self.client_id,
            &self.authority_host,
            env,
        )?;
        let file = match &self.federated_token_file {
            Some(f) => f.clone(),
            None => PathBuf::from(key_or_env(
                path,
                "federated_token_file",
                &None,
                "AZURE_FEDERATED_TOKEN_FILE",
                env,
            )?),
        };
        let http =
            IdpClient::with_ca_bundle(&format!("{path}.ca_bundle"), self.ca_bundle.as_deref())?;
        tracing::debug!(tenant = %app.tenant_id, client_id = %app.client_id, "entra federation configured");
        Ok(Arc::new(
            app.source(
                "entra-federated",
                Arc::new(FederatedTokenFile::new(file)),
                self.scope.clone(),
                http,
            )
            .with_timeout(self.timeout),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;

    #[test]
    fn env_fills_what_config_leaves_out() {
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([
            ("AZURE_TENANT_ID", "t1"),
            ("AZURE_CLIENT_ID", "c1"),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"),
        ]));
        let app = EntraApp::resolve("p", &None, &None, &None, &env).unwrap();
        assert_eq!(app.client_id, "c1");
        assert_eq!(
            app.token_url,
            "https://login.microsoftonline.us/t1/oauth2/v2.0/token"
        );
        let app =
            EntraApp::resolve("p", &Some("t2".into()), &Some("c2".into()), &None, &env).unwrap();
        assert_eq!(app.client_id, "c2");
        let empty: SharedEnv = Arc::new(MapEnv::default());
        let app =
            EntraApp::resolve("p", &Some("t".into()), &Some("c".into()), &None, &empty).unwrap();
        assert_eq!(
            app.token_url,
            "https://login.microsoftonline.com/t/oauth2/v2.0/token"
        );
    }

    #[test]
    fn missing_federation_variables_are_named() {
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([("AZURE_TENANT_ID", "t")]));
        let err = EntraFederatedConfig::default()
            .build("provider[0] (azure).source", &env)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider[0] (azure).source.client_id: invalid configuration: not set (set client_id or the AZURE_CLIENT_ID environment variable)"
        );
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
        ]));
        let err = EntraFederatedConfig::default()
            .build("p", &env)
            .unwrap_err();
        assert!(
            err.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"),
            "{err}"
        );
        let err = EntraFederatedConfig {
            tenant_id: Some("../x".into()),
            ..Default::default()
        }
        .build("p", &env)
        .unwrap_err();
        assert!(err.to_string().contains("tenant_id"), "{err}");
    }
}
