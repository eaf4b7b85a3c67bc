//! Google Application Default Credentials (`kind = "google"`): the credential file named by
//! `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's well-known file
//! (`$CLOUDSDK_CONFIG/application_default_credentials.json`, default
//! `~/.config/gcloud/…`), else the GCE / GKE metadata server, in google-auth's order; or
//! workload identity federation from the table alone (`workload_identity_provider`, an optional
//! `service_account`, and a nested `subject` source, default `github-oidc`).
//!
//! The scope is the provider's (space-separated), else `scopes` / `scope` here, else
//! [`DEFAULT_GOOGLE_SCOPE`]. The file is read and checked when the config is loaded; subject
//! tokens (a `credential_source.file` or `.url`) are read again at every acquisition.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use super::google_calls::{self as calls, Minted, StsRequest};
use super::google_files::{
    self as files, CredentialSource, ExternalAccount, GoogleCredential, GOOGLE_IAM_CREDENTIALS,
    GOOGLE_STS_URL,
};
use super::http::IdpClient;
use super::inputs::read_bounded;
use super::oauth::check_url;
use super::SourceConfig;
use super::{
    acquire_with_timeout, Fingerprint, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT,
    DEFAULT_TTL,
};
use crate::error::{Error, Result};
use crate::token::Token;

/// Scope asked for when neither the provider nor the source names one.
pub const DEFAULT_GOOGLE_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Scope of an `impersonated_service_account`'s service account source (google-auth's).
const IAM_SCOPE: &str = "https://www.googleapis.com/auth/iam";

/// Default metadata server host (`GCE_METADATA_HOST` replaces it).
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

/// Lifetime asked of `generateAccessToken` when neither the file nor the table says (1 h).
pub const DEFAULT_IMPERSONATION_LIFETIME: Duration = Duration::from_secs(3600);

/// What the source authenticates with.
#[derive(Debug)]
enum Mode {
    File {
        path: PathBuf,
        cred: GoogleCredential,
    },
    Federation(ExternalAccount),
    Metadata {
        host: String,
        why: String,
    },
}

/// Gets Google OAuth access tokens (Vertex AI, Gemini on Vertex, Claude on Vertex).
#[derive(Debug)]
pub struct GoogleSource {
    mode: Mode,
    scopes: Vec<String>,
    subject: Option<Arc<dyn Source>>,
    lifetime: Duration,
    user_token_uri: Option<String>,
    iam_url: String,
    http: IdpClient,
    metadata_http: IdpClient,
    timeout: Duration,
}

impl GoogleSource {
    fn scopes<'a>(&'a self, req: &'a TokenRequest) -> Vec<&'a str> {
        match req.scope() {
            Some(s) if !s.trim().is_empty() => s.split_whitespace().collect(),
            _ => self.scopes.iter().map(String::as_str).collect(),
        }
    }

    async fn mint(&self, req: &TokenRequest, origin: &str) -> Result<Minted> {
        let scopes = self.scopes(req);
        match &self.mode {
            Mode::File { cred, .. } => self.credential(cred, origin, &scopes, req).await,
            Mode::Federation(ext) => self.external(ext, origin, &scopes, req).await,
            Mode::Metadata { host, .. } => {
                calls::metadata_token(&self.metadata_http, origin, host, &scopes).await
            }
        }
    }

    async fn credential(
        &self,
        cred: &GoogleCredential,
        origin: &str,
        scopes: &[&str],
        req: &TokenRequest,
    ) -> Result<Minted> {
        let joined = scopes.join(" ");
        match cred {
            GoogleCredential::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => {
                let token_uri = self.user_token_uri.as_deref().unwrap_or(token_uri);
                let at = format!("{origin}: token_uri {token_uri}");
                calls::refresh_grant(
                    &self.http,
                    &at,
                    token_uri,
                    client_id,
                    client_secret,
                    refresh_token,
                    (!joined.is_empty()).then_some(joined.as_str()),
                )
                .await
            }
            GoogleCredential::ServiceAccount {
                client_email,
                private_key_id,
                key,
                token_uri,
            } => {
                let at = format!("{origin}: token_uri {token_uri}");
                calls::jwt_grant(
                    &self.http,
                    &at,
                    token_uri,
                    client_email,
                    private_key_id.as_deref(),
                    key,
                    &joined,
                )
                .await
            }
            GoogleCredential::External(ext) => self.external(ext, origin, scopes, req).await,
            GoogleCredential::Impersonated {
                source,
                target,
                delegates,
            } => {
                let url = files::impersonation_url(&self.iam_url, target);
                // google-auth: a service account source gets the IAM scope, a user's refresh
                // token keeps the scopes it was granted.
                let source_scopes: &[&str] = match **source {
                    GoogleCredential::ServiceAccount { .. } => &[IAM_SCOPE],
                    _ => &[],
                };
                let at = format!("{origin}: source_credentials");
                let inner = Box::pin(self.credential(source, &at, source_scopes, req)).await?;
                let at = format!("{origin}: service_account_impersonation_url");
                calls::generate_access_token(
                    &self.http,
                    &at,
                    &url,
                    &inner.token,
                    scopes,
                    delegates,
                    self.lifetime,
                )
                .await
            }
        }
    }

    async fn external(
        &self,
        ext: &ExternalAccount,
        origin: &str,
        scopes: &[&str],
        req: &TokenRequest,
    ) -> Result<Minted> {
        let subject = match (&self.subject, &ext.credential_source) {
            (Some(s), _) => acquire_with_timeout(s.as_ref(), &TokenRequest::new(req.provider()))
                .await
                .map_err(|e| e.context(&format!("{origin}: subject")))?
                .secret()
                .clone(),
            (None, cs) => calls::subject_token(&self.http, origin, cs).await?,
        };
        // With impersonation the STS token only has to call IAM Credentials.
        let sts_scope = match &ext.impersonation_url {
            Some(_) => DEFAULT_GOOGLE_SCOPE.to_owned(),
            None => scopes.join(" "),
        };
        let at = format!(
            "{origin}: token_url {} (audience {})",
            ext.token_url, ext.audience
        );
        let sts = calls::sts_exchange(
            &self.http,
            &at,
            &StsRequest {
                token_url: &ext.token_url,
                audience: &ext.audience,
                subject_token_type: &ext.subject_token_type,
                scope: &sts_scope,
                client: ext.client.as_ref(),
                user_project: ext.workforce_pool_user_project.as_deref(),
            },
            &subject,
        )
        .await?;
        let Some(url) = &ext.impersonation_url else {
            return Ok(sts);
        };
        let lifetime = ext
            .token_lifetime_seconds
            .map(Duration::from_secs)
            .unwrap_or(self.lifetime);
        let at = format!("{origin}: service_account_impersonation_url");
        calls::generate_access_token(&self.http, &at, url, &sts.token, scopes, &[], lifetime).await
    }
}

#[async_trait]
impl Source for GoogleSource {
    #[tracing::instrument(skip_all, fields(source = %self.describe()))]
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let origin = self.describe();
        let now = SystemTime::now();
        let m = self.mint(req, &origin).await?;
        let expiry = match m.expires_at {
            Some(at) => crate::token::cap_expiry(now, at),
            None => crate::token::expiry_after(now, DEFAULT_TTL),
        };
        Ok(Token::new(m.token, origin)
            .acquired_at(now)
            .expires_at(expiry))
    }
    fn kind(&self) -> &'static str {
        "google"
    }
    fn describe(&self) -> String {
        match &self.mode {
            Mode::File { path, cred } => {
                format!("google source ({} {})", cred.type_name(), path.display())
            }
            Mode::Federation(ext) => format!("google source (workload identity {})", ext.audience),
            Mode::Metadata { host, why } => format!("google source (metadata server {host}{why})"),
        }
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"google");
        fp.add("describe", self.describe().as_bytes());
        fp.add("scopes", self.scopes.join(" ").as_bytes());
        if let Mode::File { path, .. } = &self.mode {
            // The file holds the secret (key, refresh token): hash its bytes.
            let bytes = read_bounded(path, super::MAX_SECRET_FILE)
                .map_err(|e| crate::Error::new(self.describe(), e.kind("")))?;
            fp.add("file", &bytes);
        }
        if let Some(s) = &self.subject {
            s.fingerprint(fp)?;
        }
        Ok(())
    }
}

/// `kind = "google"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleConfig {
    /// A credential file to use instead of the ADC search.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Scope when the provider sets none (default [`DEFAULT_GOOGLE_SCOPE`]).
    #[serde(default)]
    pub scope: Option<String>,
    /// Or several scopes.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// `projects/N/locations/global/workloadIdentityPools/P/providers/X`: federation from
    /// the table, without a credential file.
    #[serde(default)]
    pub workload_identity_provider: Option<String>,
    /// Service account to impersonate after the federation exchange (`sa@p.iam.gserviceaccount.com`).
    #[serde(default)]
    pub service_account: Option<String>,
    /// Where the subject token comes from (`[provider.source.subject]`; default `github-oidc`
    /// with audience `https://iam.googleapis.com/` + the provider). Replaces an
    /// `external_account` file's `credential_source`.
    #[serde(default)]
    pub subject: Option<Box<SourceConfig>>,
    /// STS endpoint for `workload_identity_provider` (default `https://sts.googleapis.com/v1/token`).
    #[serde(default)]
    pub token_url: Option<String>,
    /// Base URL of the IAM Credentials API (default `https://iamcredentials.googleapis.com`),
    /// for `service_account` and `impersonated_service_account` files (an `external_account`
    /// file's own `service_account_impersonation_url` is used as written).
    #[serde(default)]
    pub iam_credentials_url: Option<String>,
    /// Lifetime asked of `generateAccessToken` (default 1h; a file's
    /// `service_account_impersonation.token_lifetime_seconds` wins).
    #[serde(default, with = "humantime_serde")]
    pub token_lifetime: Option<Duration>,
    /// OAuth token endpoint for `authorized_user` credentials (default
    /// `https://oauth2.googleapis.com/token`; like google-auth, a file's `token_uri` is ignored
    /// for them).
    #[serde(default)]
    pub token_uri: Option<String>,
    /// Metadata server host (default `GCE_METADATA_HOST`, else `metadata.google.internal`).
    #[serde(default)]
    pub metadata_host: Option<String>,
    /// Extra CA certificates (PEM) to trust.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Time limit for one acquisition, every call included (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// The project billed for the API calls, sent upstream as `x-goog-user-project` (default
    /// `GOOGLE_CLOUD_QUOTA_PROJECT`, else the credential file's `quota_project_id`).
    #[serde(default)]
    pub quota_project: Option<String>,
}

impl GoogleConfig {
    /// The credential file the ADC search finds (none: federation from the table, or the
    /// metadata server), and why it was chosen, for messages.
    fn credential_file(&self, env: &SharedEnv) -> (Option<PathBuf>, &'static str) {
        match &self.credentials_file {
            Some(f) => (Some(f.clone()), ""),
            None => match env
                .var("GOOGLE_APPLICATION_CREDENTIALS")
                .filter(|v| !v.is_empty())
            {
                Some(f) => (
                    Some(PathBuf::from(f)),
                    " (from GOOGLE_APPLICATION_CREDENTIALS)",
                ),
                None => (well_known_file(env).filter(|p| p.is_file()), ""),
            },
        }
    }

    /// The quota project for `x-goog-user-project`, as google-auth picks it: `quota_project`,
    /// else `GOOGLE_CLOUD_QUOTA_PROJECT`, else the credential file's `quota_project_id`.
    /// Read once, when the proxy is built; an unreadable file is the source's error to report.
    pub fn quota_project(&self, env: &SharedEnv) -> Option<String> {
        let from_file = || {
            if self.workload_identity_provider.is_some() {
                return None;
            }
            let path = self.credential_file(env).0?;
            let bytes = super::inputs::read_config_file("", &path).ok()?;
            let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            v.get("quota_project_id")?.as_str().map(str::to_owned)
        };
        self.quota_project
            .clone()
            .or_else(|| env.var("GOOGLE_CLOUD_QUOTA_PROJECT"))
            .or_else(from_file)
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty())
    }

    fn mode(&self, path: &str, env: &SharedEnv) -> Result<Mode> {
        if let Some(wip) = &self.workload_identity_provider {
            return self.federation(path, wip).map(Mode::Federation);
        }
        let (file, why) = self.credential_file(env);
        match file {
            Some(file) => {
                let at = format!("{path}: google source{why}");
                let cred = files::load(&at, &file)?;
                Ok(Mode::File { path: file, cred })
            }
            None => {
                let host = self
                    .metadata_host
                    .clone()
                    .or_else(|| env.var("GCE_METADATA_HOST"))
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| DEFAULT_METADATA_HOST.into());
                if !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
                {
                    return Err(Error::config(
                        format!("{path}.metadata_host"),
                        "must be a host or host:port",
                    ));
                }
                let why = if self.metadata_host.is_none() && env.var("GCE_METADATA_HOST").is_none()
                {
                    match well_known_file(env) {
                        Some(p) => {
                            format!("; no GOOGLE_APPLICATION_CREDENTIALS and no {}", p.display())
                        }
                        None => "; no GOOGLE_APPLICATION_CREDENTIALS".into(),
                    }
                } else {
                    String::new()
                };
                Ok(Mode::Metadata { host, why })
            }
        }
    }

    fn iam_url(&self) -> String {
        self.iam_credentials_url
            .clone()
            .unwrap_or_else(|| GOOGLE_IAM_CREDENTIALS.into())
    }

    fn federation(&self, path: &str, wip: &str) -> Result<ExternalAccount> {
        let wip = wip.trim().trim_start_matches("//iam.googleapis.com/");
        let parts: Vec<&str> = wip.split('/').collect();
        if !matches!(
            parts.as_slice(),
            [
                "projects",
                _,
                "locations",
                _,
                "workloadIdentityPools",
                _,
                "providers",
                _
            ]
        ) || parts.iter().any(|p| p.is_empty())
        {
            return Err(Error::config(
                format!("{path}.workload_identity_provider"),
                "must be projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER",
            ));
        }
        if self.credentials_file.is_some() {
            return Err(Error::config(
                path,
                "set only one of credentials_file or workload_identity_provider",
            ));
        }
        let token_url = self
            .token_url
            .clone()
            .unwrap_or_else(|| GOOGLE_STS_URL.into());
        check_url(path, "token_url", &token_url)?;
        let impersonation_url = match &self.service_account {
            Some(sa) => {
                if !sa.contains('@') || sa.contains(['/', ':', '?', '#']) {
                    return Err(Error::config(
                        format!("{path}.service_account"),
                        "must be a service account email",
                    ));
                }
                Some(files::impersonation_url(&self.iam_url(), sa))
            }
            None => None,
        };
        if let Some(u) = &impersonation_url {
            check_url(path, "service_account_impersonation_url", u)?;
        }
        Ok(ExternalAccount {
            audience: format!("//iam.googleapis.com/{wip}"),
            subject_token_type: super::exchange::TOKEN_TYPE_JWT.into(),
            token_url,
            impersonation_url,
            token_lifetime_seconds: None,
            credential_source: CredentialSource::Configured,
            client: None,
            workforce_pool_user_project: None,
        })
    }

    /// Builds the source.
    ///
    /// # Errors
    /// A config error naming the key, or the credential file and its field.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        let mode = self.mode(path, env)?;
        let audience = match &mode {
            Mode::Federation(e) => Some(e.audience.clone()),
            Mode::File {
                cred: GoogleCredential::External(e),
                ..
            } => Some(e.audience.clone()),
            _ => None,
        };
        let subject_cfg = match (&self.subject, &mode) {
            (Some(s), _) => Some((**s).clone()),
            (None, Mode::Federation(_)) => Some(SourceConfig::GithubOidc(Default::default())),
            (None, _) => None,
        };
        let subject = match subject_cfg {
            None => None,
            Some(mut s) => {
                let Some(aud) = &audience else {
                    return Err(Error::config(
                        format!("{path}.subject"),
                        "only an external_account file or workload_identity_provider takes a subject source",
                    ));
                };
                if let SourceConfig::GithubOidc(g) = &mut s {
                    // google-github-actions/auth: https://iam.googleapis.com/projects/…/providers/…
                    g.audience.get_or_insert_with(|| format!("https:{aud}"));
                }
                Some(s.build(&format!("{path}.subject"), env)?)
            }
        };
        let scopes = match super::oauth::joined_scope(path, &self.scope, &self.scopes)? {
            Some(s) => s.split_whitespace().map(str::to_owned).collect(),
            None => vec![DEFAULT_GOOGLE_SCOPE.to_owned()],
        };
        if let Some(u) = &self.token_uri {
            check_url(path, "token_uri", u)?;
        }
        check_url(path, "iam_credentials_url", &self.iam_url())?;
        let ca = format!("{path}.ca_bundle");
        Ok(Arc::new(GoogleSource {
            user_token_uri: self.token_uri.clone(),
            iam_url: self.iam_url(),
            mode,
            scopes,
            subject,
            lifetime: self
                .token_lifetime
                .unwrap_or(DEFAULT_IMPERSONATION_LIFETIME),
            http: IdpClient::with_ca_bundle(&ca, self.ca_bundle.as_deref())?,
            // The metadata server answers only to this machine: never through HTTPS_PROXY.
            metadata_http: IdpClient::direct(&ca, self.ca_bundle.as_deref())?,
            timeout: self.timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT),
        }))
    }
}

/// gcloud's application default credentials file.
fn well_known_file(env: &SharedEnv) -> Option<PathBuf> {
    let dir = match env.var("CLOUDSDK_CONFIG").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env.var("HOME").filter(|v| !v.is_empty())?).join(".config/gcloud"),
    };
    Some(dir.join("application_default_credentials.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;

    fn env(pairs: &[(&str, &str)]) -> SharedEnv {
        Arc::new(MapEnv::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn adc_order_file_then_well_known_then_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let user =
            r#"{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r"}"#;
        let a = dir.path().join("a.json");
        std::fs::write(&a, user).unwrap();
        let gcloud = dir.path().join("gcloud");
        std::fs::create_dir(&gcloud).unwrap();
        std::fs::write(gcloud.join("application_default_credentials.json"), user).unwrap();
        let d = dir.path().display().to_string();
        let g = gcloud.display().to_string();
        let cfg = GoogleConfig::default();
        let s = cfg
            .build(
                "p",
                &env(&[
                    ("GOOGLE_APPLICATION_CREDENTIALS", &a.display().to_string()),
                    ("CLOUDSDK_CONFIG", &g),
                ]),
            )
            .unwrap();
        assert_eq!(
            s.describe(),
            format!("google source (authorized_user {d}/a.json)")
        );
        let s = cfg.build("p", &env(&[("CLOUDSDK_CONFIG", &g)])).unwrap();
        assert!(
            s.describe()
                .ends_with("gcloud/application_default_credentials.json)"),
            "{}",
            s.describe()
        );
        let s = cfg.build("p", &env(&[("HOME", &d)])).unwrap();
        assert_eq!(
            s.describe(),
            format!("google source (metadata server metadata.google.internal; no GOOGLE_APPLICATION_CREDENTIALS and no {d}/.config/gcloud/application_default_credentials.json)")
        );
        let s = cfg
            .build("p", &env(&[("GCE_METADATA_HOST", "127.0.0.1:9")]))
            .unwrap();
        assert_eq!(s.describe(), "google source (metadata server 127.0.0.1:9)");
        let err = cfg
            .build(
                "p",
                &env(&[("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent.json")]),
            )
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p: google source (from GOOGLE_APPLICATION_CREDENTIALS): invalid configuration: cannot read /nonexistent.json"), "{err}");
    }

    #[test]
    fn federation_from_the_table() {
        let cfg = GoogleConfig {
            workload_identity_provider: Some(
                "projects/1/locations/global/workloadIdentityPools/p/providers/gh".into(),
            ),
            service_account: Some("sa@proj.iam.gserviceaccount.com".into()),
            subject: Some(Box::new(SourceConfig::Env(crate::source::EnvConfig {
                name: "T".into(),
                format: Default::default(),
                default_ttl: None,
            }))),
            ..Default::default()
        };
        let s = cfg.build("p", &env(&[])).unwrap();
        assert_eq!(
            s.describe(),
            "google source (workload identity //iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/gh)"
        );
        let bad = GoogleConfig {
            workload_identity_provider: Some("projects/1/providers/gh".into()),
            ..Default::default()
        };
        assert!(bad
            .build("p", &env(&[]))
            .unwrap_err()
            .to_string()
            .contains("p.workload_identity_provider"));
        // the default subject is github-oidc, which needs the Actions variables
        let gh = GoogleConfig {
            subject: None,
            ..cfg
        };
        let err = gh.build("p", &env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("p.subject") && err.contains("ACTIONS_ID_TOKEN_REQUEST_URL"),
            "{err}"
        );
    }
}
