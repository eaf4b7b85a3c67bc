//! Google credential files, as `gcloud` and the Google Cloud console write them and
//! `google-auth` reads them: `authorized_user`, `service_account`, `external_account`
//! (workload identity federation) and `impersonated_service_account`.
//!
//! Parsing happens once, when the config is loaded; every error names the file, its `type`
//! and the field (`external_account /etc/gcp.json: credential_source.file: missing`), never a
//! value from the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use jsonwebtoken::EncodingKey;
use serde::Deserialize;

use super::inputs::{read_config_file, warn_if_shared};
use crate::error::{Error, Result};
use crate::secret::Secret;

/// Google's OAuth 2.0 token endpoint (the default `token_uri`).
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Google's Security Token Service (the default `token_url` of workload identity federation).
pub const GOOGLE_STS_URL: &str = "https://sts.googleapis.com/v1/token";
/// The IAM Credentials API (`generateAccessToken`).
pub const GOOGLE_IAM_CREDENTIALS: &str = "https://iamcredentials.googleapis.com";

/// A parsed credential file.
pub enum GoogleCredential {
    /// `authorized_user`: a user's refresh token (`gcloud auth application-default login`).
    AuthorizedUser {
        /// `client_id`.
        client_id: String,
        /// `client_secret`.
        client_secret: Secret,
        /// `refresh_token`.
        refresh_token: Secret,
        /// Always [`GOOGLE_TOKEN_URI`]: like google-auth, the file's `token_uri` is ignored, so
        /// a file cannot send the refresh token elsewhere (the table's `token_uri` can).
        token_uri: String,
    },
    /// `service_account`: a key that signs RFC 7523 JWT grants.
    ServiceAccount {
        /// `client_email` (the JWT's `iss`).
        client_email: String,
        /// `private_key_id` (the JWT header's `kid`).
        private_key_id: Option<String>,
        /// `private_key`, parsed.
        key: EncodingKey,
        /// `token_uri` (the JWT's `aud`, and where it is posted).
        token_uri: String,
    },
    /// `external_account`: workload identity federation.
    External(ExternalAccount),
    /// `impersonated_service_account`: source credentials, then `generateAccessToken`.
    Impersonated {
        /// `source_credentials`, itself an `authorized_user` or `service_account`.
        source: Box<GoogleCredential>,
        /// The service account named in `service_account_impersonation_url` (like google-auth,
        /// only the account is taken from the URL: the call goes to IAM Credentials).
        target: String,
        /// `delegates`.
        delegates: Vec<String>,
    },
}

impl fmt::Debug for GoogleCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

impl GoogleCredential {
    /// The file's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            GoogleCredential::AuthorizedUser { .. } => "authorized_user",
            GoogleCredential::ServiceAccount { .. } => "service_account",
            GoogleCredential::External(_) => "external_account",
            GoogleCredential::Impersonated { .. } => "impersonated_service_account",
        }
    }
}

/// An `external_account` file.
#[derive(Debug, Clone)]
pub struct ExternalAccount {
    /// `audience` (`//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X`).
    pub audience: String,
    /// `subject_token_type`.
    pub subject_token_type: String,
    /// `token_url` (default [`GOOGLE_STS_URL`]).
    pub token_url: String,
    /// `service_account_impersonation_url`.
    pub impersonation_url: Option<String>,
    /// `service_account_impersonation.token_lifetime_seconds`.
    pub token_lifetime_seconds: Option<u64>,
    /// `credential_source`.
    pub credential_source: CredentialSource,
    /// `client_id` / `client_secret` (workforce pools), sent with HTTP Basic.
    pub client: Option<(String, Secret)>,
    /// `workforce_pool_user_project`.
    pub workforce_pool_user_project: Option<String>,
}

/// Where an `external_account` gets its subject token.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// `credential_source.file`, re-read at each acquisition.
    File {
        /// The path.
        path: PathBuf,
        /// `format.subject_token_field_name` when `format.type` is `json`.
        json_field: Option<String>,
    },
    /// `credential_source.url`, fetched at each acquisition with `headers`.
    Url {
        /// The URL.
        url: String,
        /// `headers` (may carry a bearer: kept as secrets).
        headers: Vec<(String, Secret)>,
        /// `format.subject_token_field_name` when `format.type` is `json`.
        json_field: Option<String>,
    },
    /// A tokenrelay source given in the config (`[provider.source.subject]`).
    Configured,
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct AuthorizedUserFile {
    client_id: String,
    client_secret: String,
    refresh_token: String,
}

#[derive(Deserialize)]
struct ServiceAccountFile {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(Deserialize)]
struct ExternalAccountFile {
    audience: String,
    subject_token_type: String,
    #[serde(default)]
    token_url: Option<String>,
    #[serde(default)]
    service_account_impersonation_url: Option<String>,
    #[serde(default)]
    service_account_impersonation: Option<ImpersonationOptions>,
    credential_source: CredentialSourceFile,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    workforce_pool_user_project: Option<String>,
}

#[derive(Deserialize)]
struct ImpersonationOptions {
    #[serde(default)]
    token_lifetime_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct CredentialSourceFile {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    format: Option<FormatFile>,
    #[serde(default)]
    environment_id: Option<String>,
    #[serde(default)]
    executable: Option<serde_json::Value>,
    #[serde(default)]
    certificate: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct FormatFile {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    subject_token_field_name: Option<String>,
}

#[derive(Deserialize)]
struct ImpersonatedFile {
    service_account_impersonation_url: String,
    #[serde(default)]
    delegates: Vec<String>,
    source_credentials: serde_json::Value,
}

/// Reads and parses the credential file at `path`; errors are config errors at `origin`.
///
/// # Errors
/// An unreadable file, a file that is not JSON, an unknown `type`, or a missing or invalid
/// field, named as `TYPE PATH: FIELD: cause`.
pub fn load(origin: &str, path: &Path) -> Result<GoogleCredential> {
    warn_if_shared(path);
    let bytes = read_config_file(origin, path)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        Error::config(
            origin,
            format!(
                "{}: not a JSON credential file (line {})",
                path.display(),
                e.line()
            ),
        )
    })?;
    parse(origin, path, value)
}

fn parse(origin: &str, path: &Path, value: serde_json::Value) -> Result<GoogleCredential> {
    let kind = serde_json::from_value::<TypeOnly>(value.clone())
        .ok()
        .and_then(|t| t.kind)
        .ok_or_else(|| Error::config(origin, format!("{}: type: missing", path.display())))?;
    let at = |field: &str, msg: &str| {
        Error::config(origin, format!("{kind} {}: {field}: {msg}", path.display()))
    };
    fn fields<T: serde::de::DeserializeOwned>(
        v: serde_json::Value,
        at: &dyn Fn(&str, &str) -> Error,
    ) -> Result<T> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let key = e.path().to_string();
            let msg = e.into_inner().to_string();
            // serde says "missing field `x`" at the parent: name the field itself.
            match msg
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
            {
                Some(field) if key == "." => at(field, "missing"),
                Some(field) => at(&format!("{key}.{field}"), "missing"),
                None => at(&key, "invalid value (wrong type)"),
            }
        })
    }
    let url_field = |field: &str, url: &str| -> Result<()> {
        super::http::check_idp_url(url).map_err(|e| at(field, &e))
    };
    match kind.as_str() {
        "authorized_user" => {
            let f: AuthorizedUserFile = fields(value, &at)?;
            let token_uri = GOOGLE_TOKEN_URI.to_owned();
            for (field, v) in [("client_id", &f.client_id), ("refresh_token", &f.refresh_token)] {
                if v.trim().is_empty() {
                    return Err(at(field, "empty"));
                }
            }
            Ok(GoogleCredential::AuthorizedUser {
                client_id: f.client_id,
                client_secret: Secret::new(f.client_secret),
                refresh_token: Secret::new(f.refresh_token),
                token_uri,
            })
        }
        "service_account" => {
            let f: ServiceAccountFile = fields(value, &at)?;
            let token_uri = f.token_uri.unwrap_or_else(|| GOOGLE_TOKEN_URI.into());
            url_field("token_uri", &token_uri)?;
            if f.client_email.trim().is_empty() {
                return Err(at("client_email", "empty"));
            }
            let key = EncodingKey::from_rsa_pem(f.private_key.as_bytes())
                .map_err(|_| at("private_key", "not a PEM RSA private key"))?;
            Ok(GoogleCredential::ServiceAccount {
                client_email: f.client_email,
                private_key_id: f.private_key_id.filter(|k| !k.is_empty()),
                key,
                token_uri,
            })
        }
        "external_account" => {
            let f: ExternalAccountFile = fields(value, &at)?;
            Ok(GoogleCredential::External(external(f, &at, &url_field)?))
        }
        "impersonated_service_account" => {
            let f: ImpersonatedFile = fields(value, &at)?;
            let url = &f.service_account_impersonation_url;
            let target = url
                .rfind('/')
                .zip(url.find(":generateAccessToken"))
                .filter(|(a, b)| a < b)
                .map(|(a, b)| url[a + 1..b].to_owned())
                .filter(|t| t.contains('@') && !t.contains(['?', '#', '%']))
                .ok_or_else(|| {
                    at(
                        "service_account_impersonation_url",
                        "does not end in /SERVICE_ACCOUNT_EMAIL:generateAccessToken",
                    )
                })?;
            let source = parse(origin, path, f.source_credentials).map_err(|e| {
                Error::config(origin, format!("{kind} source_credentials: {}", config_msg(&e)))
            })?;
            if !matches!(
                source,
                GoogleCredential::AuthorizedUser { .. } | GoogleCredential::ServiceAccount { .. }
            ) {
                return Err(at(
                    "source_credentials.type",
                    "must be authorized_user or service_account",
                ));
            }
            Ok(GoogleCredential::Impersonated {
                source: Box::new(source),
                target,
                delegates: f.delegates,
            })
        }
        other => Err(Error::config(
            origin,
            format!(
                "{}: type: {other:?} is not one of authorized_user, service_account, external_account, impersonated_service_account",
                path.display()
            ),
        )),
    }
}

fn config_msg(e: &Error) -> String {
    match e.kind() {
        crate::ErrorKind::Config(m) => m.clone(),
        other => other.to_string(),
    }
}

fn external(
    f: ExternalAccountFile,
    at: &dyn Fn(&str, &str) -> Error,
    url_field: &dyn Fn(&str, &str) -> Result<()>,
) -> Result<ExternalAccount> {
    let token_url = f.token_url.unwrap_or_else(|| GOOGLE_STS_URL.into());
    url_field("token_url", &token_url)?;
    if let Some(u) = &f.service_account_impersonation_url {
        url_field("service_account_impersonation_url", u)?;
    }
    if f.audience.trim().is_empty() {
        return Err(at("audience", "empty"));
    }
    let cs = f.credential_source;
    let json_field = match cs.format {
        None => None,
        Some(FormatFile {
            kind,
            subject_token_field_name,
        }) => match kind.as_deref() {
            None | Some("text") => None,
            Some("json") => Some(
                subject_token_field_name
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        at(
                            "credential_source.format.subject_token_field_name",
                            "missing (format.type is json)",
                        )
                    })?,
            ),
            Some(_) => return Err(at("credential_source.format.type", "must be text or json")),
        },
    };
    let credential_source = match (cs.file, cs.url) {
        (Some(path), None) => CredentialSource::File { path, json_field },
        (None, Some(url)) => {
            url_field("credential_source.url", &url)?;
            let mut headers = Vec::new();
            for (k, v) in cs.headers {
                if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || http::HeaderValue::from_str(&v).is_err()
                {
                    return Err(at(
                        &format!("credential_source.headers.{k}"),
                        "not a valid header",
                    ));
                }
                headers.push((k, Secret::new(v)));
            }
            CredentialSource::Url {
                url,
                headers,
                json_field,
            }
        }
        (Some(_), Some(_)) => return Err(at("credential_source", "set only one of file or url")),
        (None, None) => {
            let which = if cs.environment_id.is_some() {
                "environment_id (AWS) is not supported; use a file or url source, or [provider.source.subject]"
            } else if cs.executable.is_some() {
                "executable is not supported; use a command source as [provider.source.subject]"
            } else if cs.certificate.is_some() {
                "certificate (X.509 federation) is not supported"
            } else {
                "missing file or url"
            };
            return Err(at("credential_source", which));
        }
    };
    let client = match (f.client_id, f.client_secret) {
        (Some(id), Some(secret)) => Some((id, Secret::new(secret))),
        (None, None) => None,
        (Some(_), None) => return Err(at("client_secret", "missing (client_id is set)")),
        (None, Some(_)) => return Err(at("client_id", "missing (client_secret is set)")),
    };
    Ok(ExternalAccount {
        audience: f.audience,
        subject_token_type: f.subject_token_type,
        token_url,
        impersonation_url: f.service_account_impersonation_url,
        token_lifetime_seconds: f
            .service_account_impersonation
            .and_then(|o| o.token_lifetime_seconds),
        credential_source,
        client,
        workforce_pool_user_project: f.workforce_pool_user_project,
    })
}

/// The `generateAccessToken` URL of service account `email`, on `iam_base`.
pub fn impersonation_url(iam_base: &str, email: &str) -> String {
    format!(
        "{}/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
        iam_base.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<GoogleCredential> {
        parse(
            "google source",
            Path::new("/c.json"),
            serde_json::from_str(text).unwrap(),
        )
    }

    fn err(text: &str) -> String {
        parse_str(text).unwrap_err().to_string()
    }

    #[test]
    fn names_file_type_and_field() {
        assert_eq!(
            err(r#"{"client_id":"c"}"#),
            "google source: invalid configuration: /c.json: type: missing"
        );
        assert!(err(r#"{"type":"nope"}"#).contains("type: \"nope\" is not one of"));
        assert_eq!(
            err(r#"{"type":"authorized_user","client_id":"c","client_secret":"s"}"#),
            "google source: invalid configuration: authorized_user /c.json: refresh_token: missing"
        );
        assert_eq!(
            err(r#"{"type":"service_account","client_email":"a@b","private_key":"nope"}"#),
            "google source: invalid configuration: service_account /c.json: private_key: not a PEM RSA private key"
        );
        let ext = r#"{"type":"external_account","audience":"//iam/x","subject_token_type":"urn:ietf:params:oauth:token-type:jwt","credential_source":{}}"#;
        assert!(
            err(ext).ends_with("external_account /c.json: credential_source: missing file or url")
        );
        let ext = r#"{"type":"external_account","audience":"//iam/x","subject_token_type":"t","credential_source":{"file":"/f","format":{"type":"json"}}}"#;
        assert!(err(ext).contains("credential_source.format.subject_token_field_name: missing"));
        let ext = r#"{"type":"external_account","audience":"//iam/x","subject_token_type":"t","credential_source":{"file":7}}"#;
        assert!(
            err(ext).contains("credential_source.file: invalid value"),
            "{}",
            err(ext)
        );
        let ext = r#"{"type":"external_account","audience":"//iam/x","subject_token_type":"t","token_url":"http://sts.example.com/v1/token","credential_source":{"file":"/f"}}"#;
        assert!(
            err(ext).contains("token_url: http:// is only allowed"),
            "{}",
            err(ext)
        );
        let imp = r#"{"type":"impersonated_service_account","service_account_impersonation_url":"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/a@b:generateAccessToken","source_credentials":{"type":"authorized_user","client_id":"c","refresh_token":"r"}}"#;
        assert!(
            err(imp)
                .contains("source_credentials: authorized_user /c.json: client_secret: missing"),
            "{}",
            err(imp)
        );
    }

    #[test]
    fn parses_the_actions_shape() {
        let text = r#"{"type":"external_account","audience":"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/gh",
          "subject_token_type":"urn:ietf:params:oauth:token-type:jwt","token_url":"https://sts.googleapis.com/v1/token",
          "service_account_impersonation_url":"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken",
          "credential_source":{"url":"https://pipelines.actions.githubusercontent.com/x?api-version=2.0&audience=https://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/gh",
            "headers":{"Authorization":"Bearer req-token"},"format":{"type":"json","subject_token_field_name":"value"}}}"#;
        let GoogleCredential::External(e) = parse_str(text).unwrap() else {
            panic!("not external")
        };
        assert!(e.impersonation_url.is_some());
        let CredentialSource::Url {
            headers,
            json_field,
            ..
        } = e.credential_source
        else {
            panic!("not url")
        };
        assert_eq!(json_field.as_deref(), Some("value"));
        assert_eq!(headers[0].0, "Authorization");
        assert_eq!(format!("{:?}", headers[0].1), "[redacted]");
    }
}
