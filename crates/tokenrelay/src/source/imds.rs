//! Azure managed identity: the Instance Metadata Service on VMs and AKS nodes
//! (`GET http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=…`
//! with `Metadata: true`), and the App Service / Container Apps / Functions style endpoint
//! (`IDENTITY_ENDPOINT` with `X-IDENTITY-HEADER: $IDENTITY_HEADER`, api-version 2019-08-01).
//!
//! The resource is the configured `resource`, else the request's scope without `/.default`
//! (`https://cognitiveservices.azure.com/.default` → `https://cognitiveservices.azure.com`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use super::http::{parse_token_response, IdpClient};
use super::{Fingerprint, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT, DEFAULT_TTL};
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::token::Token;

/// The IMDS token endpoint.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

const IMDS_PATH: &str = "/metadata/identity/oauth2/token";

/// Which managed identity endpoint is spoken to.
#[derive(Debug, Clone)]
enum Endpoint {
    Imds(String),
    AppService { url: String, header: Secret },
}

/// Which identity, when the host has several (user-assigned identities).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySelector {
    /// The system-assigned identity (or the only one).
    Default,
    /// By client (application) id.
    ClientId(String),
    /// By object (principal) id.
    ObjectId(String),
    /// By ARM resource id.
    ResourceId(String),
}

/// Gets tokens from the host's managed identity.
#[derive(Debug)]
pub struct ManagedIdentitySource {
    endpoint: Endpoint,
    selector: IdentitySelector,
    resource: Option<String>,
    http: IdpClient,
    timeout: Duration,
}

impl ManagedIdentitySource {
    fn resource(&self, req: &TokenRequest) -> Result<String> {
        if let Some(r) = &self.resource {
            return Ok(r.clone());
        }
        let scope = req.scope().ok_or_else(|| {
            Error::config(
                self.describe(),
                "no resource: set resource, or a scope on the provider",
            )
        })?;
        Ok(scope_to_resource(scope))
    }
}

/// `https://x/.default` → `https://x`; a scope without `/.default` is used as is.
pub fn scope_to_resource(scope: &str) -> String {
    let first = scope.split_whitespace().next().unwrap_or(scope);
    first.strip_suffix("/.default").unwrap_or(first).to_owned()
}

#[async_trait]
impl Source for ManagedIdentitySource {
    #[tracing::instrument(skip_all, fields(source = %self.describe()))]
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let origin = self.describe();
        let resource = self.resource(req)?;
        let (url, api_version, id_params) = match &self.endpoint {
            Endpoint::Imds(u) => (u, "2018-02-01", ["client_id", "object_id", "msi_res_id"]),
            Endpoint::AppService { url, .. } => (
                url,
                "2019-08-01",
                ["client_id", "principal_id", "mi_res_id"],
            ),
        };
        let mut query: Vec<(&str, &str)> =
            vec![("api-version", api_version), ("resource", &resource)];
        match &self.selector {
            IdentitySelector::Default => {}
            IdentitySelector::ClientId(v) => query.push((id_params[0], v)),
            IdentitySelector::ObjectId(v) => query.push((id_params[1], v)),
            IdentitySelector::ResourceId(v) => query.push((id_params[2], v)),
        }
        let now = SystemTime::now();
        let resp = self
            .http
            .send(&origin, |c| {
                let rb = c.get(url.as_str()).query(&query);
                match &self.endpoint {
                    Endpoint::Imds(_) => rb.header("Metadata", "true"),
                    Endpoint::AppService { header, .. } => {
                        rb.header("X-IDENTITY-HEADER", header.expose())
                    }
                }
            })
            .await?;
        let t = parse_token_response(&resp, now).map_err(|k| Error::new(&*origin, k))?;
        Ok(t.into_token(origin, now, DEFAULT_TTL))
    }
    fn kind(&self) -> &'static str {
        "managed-identity"
    }
    fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Imds(u) if u == IMDS_ENDPOINT => "managed-identity source (IMDS)".into(),
            Endpoint::Imds(u) => format!("managed-identity source (IMDS at {u})"),
            Endpoint::AppService { url, .. } => {
                format!("managed-identity source (IDENTITY_ENDPOINT {url})")
            }
        }
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"managed-identity");
        fp.add("describe", self.describe().as_bytes());
        fp.add("selector", format!("{:?}", self.selector).as_bytes());
        fp.add(
            "resource",
            self.resource.as_deref().unwrap_or("").as_bytes(),
        );
        Ok(())
    }
}

/// `kind = "managed-identity"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ManagedIdentityConfig {
    /// User-assigned identity by client id (default: `AZURE_CLIENT_ID` is NOT used, to match
    /// the SDKs' ManagedIdentityCredential; set it here).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Or by object (principal) id.
    #[serde(default)]
    pub object_id: Option<String>,
    /// Or by ARM resource id.
    #[serde(default)]
    pub msi_res_id: Option<String>,
    /// Resource to ask for (default: the provider's scope without `/.default`).
    #[serde(default)]
    pub resource: Option<String>,
    /// Token endpoint override (a base URL such as `http://127.0.0.1:8080` gets the IMDS path).
    /// Default: `IDENTITY_ENDPOINT` when set (App Service style), else IMDS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Extra CA certificates (PEM) to trust.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Time limit for one acquisition (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl ManagedIdentityConfig {
    /// Builds the source.
    ///
    /// # Errors
    /// A config error naming the key.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        let selector = match (&self.client_id, &self.object_id, &self.msi_res_id) {
            (None, None, None) => IdentitySelector::Default,
            (Some(c), None, None) => IdentitySelector::ClientId(c.clone()),
            (None, Some(o), None) => IdentitySelector::ObjectId(o.clone()),
            (None, None, Some(r)) => IdentitySelector::ResourceId(r.clone()),
            _ => {
                return Err(Error::config(
                    path,
                    "set at most one of client_id, object_id or msi_res_id",
                ))
            }
        };
        let identity_endpoint = env.var("IDENTITY_ENDPOINT").filter(|v| !v.is_empty());
        let endpoint = match (identity_endpoint, &self.endpoint) {
            (Some(from_env), configured) => {
                let header = env
                    .var("IDENTITY_HEADER")
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        Error::config(path, "IDENTITY_ENDPOINT is set but IDENTITY_HEADER is not")
                    })?;
                let url = configured.clone().unwrap_or(from_env);
                super::oauth::check_url(path, "endpoint", &url)?;
                Endpoint::AppService {
                    url,
                    header: Secret::new(header),
                }
            }
            (None, Some(u)) => {
                super::oauth::check_url(path, "endpoint", u)?;
                let parsed = reqwest::Url::parse(u)
                    .map_err(|e| Error::config(format!("{path}.endpoint"), e.to_string()))?;
                let url = if parsed.path().is_empty() || parsed.path() == "/" {
                    format!("{}{IMDS_PATH}", u.trim_end_matches('/'))
                } else {
                    u.clone()
                };
                Endpoint::Imds(url)
            }
            (None, None) => Endpoint::Imds(IMDS_ENDPOINT.to_owned()),
        };
        // Metadata endpoints answer only to this machine: never through HTTPS_PROXY.
        let http = IdpClient::direct(&format!("{path}.ca_bundle"), self.ca_bundle.as_deref())?;
        Ok(Arc::new(ManagedIdentitySource {
            endpoint,
            selector,
            resource: self.resource.clone(),
            http,
            timeout: self.timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;

    #[test]
    fn resource_from_scope() {
        assert_eq!(
            scope_to_resource("https://cognitiveservices.azure.com/.default"),
            "https://cognitiveservices.azure.com"
        );
        assert_eq!(scope_to_resource("api://x"), "api://x");
    }

    #[test]
    fn endpoint_selection() {
        let none: SharedEnv = Arc::new(MapEnv::default());
        let s = ManagedIdentityConfig::default().build("p", &none).unwrap();
        assert_eq!(s.describe(), "managed-identity source (IMDS)");
        let s = ManagedIdentityConfig {
            endpoint: Some("http://127.0.0.1:9/".into()),
            ..Default::default()
        }
        .build("p", &none)
        .unwrap();
        assert_eq!(
            s.describe(),
            "managed-identity source (IMDS at http://127.0.0.1:9/metadata/identity/oauth2/token)"
        );
        let app: SharedEnv = Arc::new(MapEnv::from_pairs([
            ("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ]));
        let s = ManagedIdentityConfig::default().build("p", &app).unwrap();
        assert!(
            s.describe().contains("IDENTITY_ENDPOINT"),
            "{}",
            s.describe()
        );
        let half: SharedEnv = Arc::new(MapEnv::from_pairs([("IDENTITY_ENDPOINT", "http://x/")]));
        let err = ManagedIdentityConfig::default()
            .build("p", &half)
            .unwrap_err();
        assert!(err.to_string().contains("IDENTITY_HEADER is not"), "{err}");
        let err = ManagedIdentityConfig {
            client_id: Some("a".into()),
            object_id: Some("b".into()),
            ..Default::default()
        }
        .build("p", &none)
        .unwrap_err();
        assert!(err.to_string().contains("at most one"), "{err}");
    }
}
