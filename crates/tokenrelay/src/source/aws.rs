//! AWS STS `AssumeRoleWithWebIdentity`: trade an OIDC token (a Kubernetes/EKS projected token
//! file, or one minted by another source such as `github-oidc` with audience
//! `sts.amazonaws.com`) for temporary AWS credentials. The call itself is unsigned; the
//! credentials then sign upstream requests with SigV4 ([`sign_request`](crate::inject::sign_request)).
//!
//! Standard variables fill what the config leaves out: `AWS_ROLE_ARN`,
//! `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_SESSION_NAME`, `AWS_REGION` (or
//! `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL_STS`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use super::entra::key_or_env;
use super::http::squash;
use super::http::IdpClient;
use super::inputs::SecretInput;
use super::oauth::check_url;
use super::SourceConfig;
use super::{
    acquire_with_timeout, Fingerprint, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT,
};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::token::{AwsCredentials, Token};

/// Where the web identity token comes from.
#[derive(Debug, Clone)]
pub enum WebIdentity {
    /// A file, re-read at each acquisition (EKS rotates it).
    File(PathBuf),
    /// Another source (e.g. GitHub OIDC); asked for a new token at each acquisition.
    Source(Arc<dyn Source>),
}

/// Gets temporary AWS credentials with `AssumeRoleWithWebIdentity`.
#[derive(Debug)]
pub struct AwsWebIdentitySource {
    role_arn: String,
    session_name: String,
    endpoint: String,
    duration: Option<Duration>,
    identity: WebIdentity,
    http: IdpClient,
    timeout: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsResponse {
    #[serde(rename = "AssumeRoleWithWebIdentityResult", alias = "AssumeRoleResult")]
    result: StsResult,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsResult {
    credentials: StsCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsErrorResponse {
    error: StsError,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Parses an STS answer (`AssumeRoleWithWebIdentity` or `AssumeRole`): credentials and
/// expiry, or the `<Error>`'s code and message.
///
/// # Errors
/// [`ErrorKind::IdpRejected`] for an error answer, [`ErrorKind::InvalidResponse`] for an
/// answer that is not the documented XML (never quoting it).
pub fn parse_sts_response(
    status: u16,
    body: &[u8],
) -> std::result::Result<(AwsCredentials, SystemTime), ErrorKind> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ErrorKind::InvalidResponse(format!(
            "STS answered HTTP {status} with a body that is not UTF-8"
        ))
    })?;
    if !(200..300).contains(&status) {
        let (error, description) = match quick_xml::de::from_str::<StsErrorResponse>(text) {
            Ok(e) => (
                e.error.code.map(|c| squash(&c, 100)),
                e.error.message.map(|m| squash(&m, 400)),
            ),
            Err(_) => (None, None),
        };
        return Err(ErrorKind::IdpRejected {
            status,
            error,
            description,
        });
    }
    let r: StsResponse = quick_xml::de::from_str(text).map_err(|_| {
        ErrorKind::InvalidResponse(format!(
            "STS answered HTTP {status} without an AssumeRole…Result holding Credentials"
        ))
    })?;
    let c = r.result.credentials;
    let utc = c.expiration.trim();
    let utc = utc.strip_suffix("+00:00").unwrap_or(utc);
    let expires = humantime::parse_rfc3339_weak(utc).map_err(|_| {
        ErrorKind::InvalidResponse("STS Expiration is not an RFC 3339 UTC time".into())
    })?;
    for (name, v) in [
        ("AccessKeyId", &c.access_key_id),
        ("SecretAccessKey", &c.secret_access_key),
        ("SessionToken", &c.session_token),
    ] {
        super::output::check_token_text(v.trim())
            .map_err(|e| ErrorKind::InvalidResponse(format!("{name}: {e}")))?;
    }
    Ok((
        AwsCredentials {
            access_key_id: c.access_key_id.trim().to_owned(),
            secret_access_key: Secret::new(c.secret_access_key.trim()),
            session_token: Some(Secret::new(c.session_token.trim())),
        },
        expires,
    ))
}

impl AwsWebIdentitySource {
    async fn web_identity_token(&self, req: &TokenRequest) -> Result<Secret> {
        match &self.identity {
            WebIdentity::File(p) => {
                SecretInput::File(p.clone())
                    .read(&self.describe(), "web identity token")
                    .await
            }
            WebIdentity::Source(s) => {
                let nested = TokenRequest::new(req.provider());
                let t = acquire_with_timeout(s.as_ref(), &nested)
                    .await
                    .map_err(|e| e.context(&self.describe()))?;
                Ok(t.secret().clone())
            }
        }
    }
}

/// One `AssumeRoleWithWebIdentity` call (unsigned), shared by `aws-web-identity` and the
/// `aws` source's `web_identity_token_file` profiles.
pub(crate) struct WebIdentityCall<'a> {
    /// STS endpoint URL.
    pub endpoint: &'a str,
    /// `RoleArn`.
    pub role_arn: &'a str,
    /// `RoleSessionName`.
    pub session_name: &'a str,
    /// `DurationSeconds`.
    pub duration_seconds: Option<u64>,
}

impl WebIdentityCall<'_> {
    /// Sends the call with `web_token` and makes the token (the session token as its secret,
    /// the credentials for SigV4).
    ///
    /// # Errors
    /// STS's refusal (code and message), a transport error, an unusable answer; named `origin`.
    pub(crate) async fn send(
        &self,
        http: &IdpClient,
        origin: &str,
        web_token: &Secret,
    ) -> Result<Token> {
        let duration = self.duration_seconds.map(|d| d.to_string());
        let mut form: Vec<(&str, &str)> = vec![
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", self.role_arn),
            ("RoleSessionName", self.session_name),
            ("WebIdentityToken", web_token.expose()),
        ];
        if let Some(d) = &duration {
            form.push(("DurationSeconds", d));
        }
        let now = SystemTime::now();
        let resp = http
            .send(origin, |c| c.post(self.endpoint).form(&form))
            .await?;
        let (creds, expires) =
            parse_sts_response(resp.status, &resp.body).map_err(|k| Error::new(origin, k))?;
        Ok(sts_token(creds, expires, origin, now))
    }
}

/// The token for STS credentials: the session token as its secret, expiring at `expires`.
pub(crate) fn sts_token(
    creds: AwsCredentials,
    expires: SystemTime,
    origin: &str,
    now: SystemTime,
) -> Token {
    let session = creds
        .session_token
        .clone()
        .unwrap_or_else(|| creds.secret_access_key.clone());
    Token::new(session, origin)
        .acquired_at(now)
        .expires_at(expires)
        .capped_at(now)
        .with_aws(creds)
}

#[async_trait]
impl Source for AwsWebIdentitySource {
    #[tracing::instrument(skip_all, fields(source = %self.describe()))]
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let web_token = self.web_identity_token(req).await?;
        let call = WebIdentityCall {
            endpoint: &self.endpoint,
            role_arn: &self.role_arn,
            session_name: &self.session_name,
            duration_seconds: self.duration.map(|d| d.as_secs()),
        };
        call.send(&self.http, &self.describe(), &web_token).await
    }
    fn kind(&self) -> &'static str {
        "aws-web-identity"
    }
    fn describe(&self) -> String {
        format!("aws-web-identity source {}", self.role_arn)
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"aws-web-identity");
        fp.add("role_arn", self.role_arn.as_bytes());
        fp.add("session", self.session_name.as_bytes());
        fp.add("endpoint", self.endpoint.as_bytes());
        match &self.identity {
            WebIdentity::File(p) => fp.add("file", p.as_os_str().as_encoded_bytes()),
            WebIdentity::Source(s) => s.fingerprint(fp)?,
        }
        Ok(())
    }
}

/// `kind = "aws-web-identity"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AwsWebIdentityConfig {
    /// Role to assume; default `AWS_ROLE_ARN`.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// File holding the OIDC token; default `AWS_WEB_IDENTITY_TOKEN_FILE`.
    #[serde(default)]
    pub web_identity_token_file: Option<PathBuf>,
    /// Or a nested source producing it (`[provider.source.web_identity]`).
    #[serde(default)]
    pub web_identity: Option<Box<SourceConfig>>,
    /// Default `AWS_ROLE_SESSION_NAME`, else `tokenrelay`.
    #[serde(default)]
    pub role_session_name: Option<String>,
    /// Region for the regional STS endpoint; default `AWS_REGION` / `AWS_DEFAULT_REGION`.
    #[serde(default)]
    pub region: Option<String>,
    /// STS endpoint override; default `AWS_ENDPOINT_URL_STS`, else `https://sts.{region}.amazonaws.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Credential lifetime to ask for (`DurationSeconds`; STS default 1h).
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// Extra CA certificates (PEM) to trust.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Time limit for one acquisition (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl AwsWebIdentityConfig {
    /// The region (config, `AWS_REGION`, `AWS_DEFAULT_REGION`).
    pub fn region(&self, env: &SharedEnv) -> Option<String> {
        self.region
            .clone()
            .or_else(|| env.var("AWS_REGION"))
            .or_else(|| env.var("AWS_DEFAULT_REGION"))
            .filter(|r| !r.is_empty())
    }

    /// Builds the source.
    ///
    /// # Errors
    /// A config error naming the missing key or variable.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        let role_arn = key_or_env(path, "role_arn", &self.role_arn, "AWS_ROLE_ARN", env)?;
        let identity = match (&self.web_identity, &self.web_identity_token_file) {
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    path,
                    "set only one of web_identity_token_file or [web_identity]",
                ))
            }
            (Some(nested), None) => {
                let mut nested = (**nested).clone();
                if let SourceConfig::GithubOidc(g) = &mut nested {
                    g.audience.get_or_insert_with(|| "sts.amazonaws.com".into());
                }
                WebIdentity::Source(nested.build(&format!("{path}.web_identity"), env)?)
            }
            (None, Some(f)) => WebIdentity::File(f.clone()),
            (None, None) => WebIdentity::File(PathBuf::from(key_or_env(
                path,
                "web_identity_token_file",
                &None,
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                env,
            )?)),
        };
        let endpoint = match self
            .endpoint
            .clone()
            .or_else(|| env.var("AWS_ENDPOINT_URL_STS"))
            .filter(|e| !e.is_empty())
        {
            Some(e) => e,
            None => match self.region(env) {
                Some(r) if r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                    format!("https://sts.{r}.amazonaws.com/")
                }
                Some(_) => {
                    return Err(Error::config(format!("{path}.region"), "not a region name"))
                }
                None => "https://sts.amazonaws.com/".into(),
            },
        };
        check_url(path, "endpoint", &endpoint)?;
        let session_name = self
            .role_session_name
            .clone()
            .or_else(|| env.var("AWS_ROLE_SESSION_NAME"))
            .unwrap_or_else(|| "tokenrelay".into());
        let http =
            IdpClient::with_ca_bundle(&format!("{path}.ca_bundle"), self.ca_bundle.as_deref())?;
        Ok(Arc::new(AwsWebIdentitySource {
            role_arn,
            session_name,
            endpoint,
            duration: self.duration,
            identity,
            http,
            timeout: self.timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>repo:o/r:ref:refs/heads/main</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn><AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>FwoGZXIvYXdzEXAMPLE</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY</SecretAccessKey>
      <Expiration>2033-05-18T03:33:20Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
    <Provider>token.actions.githubusercontent.com</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>ad4156e9</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn parses_credentials_and_expiry() {
        let (c, exp) = parse_sts_response(200, OK.as_bytes()).unwrap();
        assert_eq!(c.access_key_id, "ASIAEXAMPLE");
        assert_eq!(
            c.secret_access_key.expose(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        );
        assert_eq!(c.session_token.unwrap().expose(), "FwoGZXIvYXdzEXAMPLE");
        assert_eq!(
            exp,
            std::time::UNIX_EPOCH + Duration::from_secs(2_000_000_000)
        );
    }

    #[test]
    fn errors_carry_code_and_message_only() {
        let body = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider found in your account for https://token.actions.githubusercontent.com</Message></Error><RequestId>x</RequestId></ErrorResponse>"#;
        let e = parse_sts_response(400, body.as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "identity provider answered HTTP 400: InvalidIdentityToken: No OpenIDConnect provider found in your account for https://token.actions.githubusercontent.com"
        );
        let e = parse_sts_response(200, b"<html>oops</html>").unwrap_err();
        assert!(
            e.to_string().contains("without an AssumeRole…Result"),
            "{e}"
        );
        let e = parse_sts_response(503, b"busy").unwrap_err();
        assert_eq!(e.to_string(), "identity provider answered HTTP 503");
    }

    #[test]
    fn env_fills_role_file_and_endpoint() {
        let env: SharedEnv = Arc::new(crate::source::MapEnv::from_pairs([
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("AWS_REGION", "eu-west-1"),
        ]));
        let s = AwsWebIdentityConfig::default().build("p", &env).unwrap();
        assert_eq!(
            s.describe(),
            "aws-web-identity source arn:aws:iam::123456789012:role/r"
        );
        let none: SharedEnv = Arc::new(crate::source::MapEnv::default());
        let err = AwsWebIdentityConfig::default()
            .build("p", &none)
            .unwrap_err();
        assert!(err.to_string().contains("AWS_ROLE_ARN"), "{err}");
    }
}
