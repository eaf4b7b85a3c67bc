//! AWS credentials from the host, the end of the `kind = "aws"` chain (see
//! [`AwsSource`]), as the AWS SDKs find them after the environment
//! and the profiles: the ECS / EKS Pod Identity container endpoint
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, or `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` on
//! `http://169.254.170.2`, with `AWS_CONTAINER_AUTHORIZATION_TOKEN` or `…_TOKEN_FILE` as the
//! `Authorization` header), else EC2 IMDSv2 (`PUT /latest/api/token`, then the role's
//! credentials under `/latest/meta-data/iam/security-credentials/`). Both are metadata
//! endpoints: called directly, never through `HTTP(S)_PROXY`. The credentials sign upstream
//! requests with `inject = "aws-sigv4"`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use super::aws_profile::Chosen;
use super::aws_run::AwsSource;
use super::http::{rejected, IdpClient, IdpResponse};
use super::inputs::SecretInput;
use super::output::check_token_text;
use super::{Fingerprint, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::token::{AwsCredentials, Token};

/// The ECS container credentials host for `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
pub const ECS_CREDENTIALS_HOST: &str = "http://169.254.170.2";
/// The EC2 instance metadata service.
pub const IMDS_HOST: &str = "http://169.254.169.254";
/// Lifetime asked of an IMDSv2 session token (6 h, the SDKs' default).
const IMDS_TOKEN_TTL: &str = "21600";

#[derive(Debug)]
enum Endpoint {
    Container {
        url: String,
        auth: Option<SecretInput>,
    },
    Imds {
        base: String,
    },
}

/// Gets temporary AWS credentials from the container endpoint or IMDSv2.
#[derive(Debug)]
pub struct AwsHostSource {
    endpoint: Endpoint,
    http: IdpClient,
    timeout: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HostCredentials {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

/// Parses the JSON both endpoints answer (`AccessKeyId`, `SecretAccessKey`, `Token`,
/// `Expiration`).
///
/// # Errors
/// A non-2xx answer as [`ErrorKind::IdpRejected`], anything else unusable as
/// [`ErrorKind::InvalidResponse`] (never quoting the body).
pub fn parse_host_credentials(
    resp: &IdpResponse,
) -> std::result::Result<(AwsCredentials, Option<SystemTime>), ErrorKind> {
    if !(200..300).contains(&resp.status) {
        return Err(rejected(resp));
    }
    let c: HostCredentials = serde_json::from_slice(&resp.body).map_err(|_| {
        ErrorKind::InvalidResponse("the answer has no AccessKeyId / SecretAccessKey".into())
    })?;
    for (name, v) in [
        ("AccessKeyId", Some(&c.access_key_id)),
        ("SecretAccessKey", Some(&c.secret_access_key)),
        ("Token", c.token.as_ref()),
    ] {
        if let Some(v) = v {
            check_token_text(v.trim())
                .map_err(|e| ErrorKind::InvalidResponse(format!("{name}: {e}")))?;
        }
    }
    let expires = match &c.expiration {
        None => None,
        Some(t) => Some(
            humantime::parse_rfc3339_weak(t.trim().trim_end_matches('Z')).map_err(|_| {
                ErrorKind::InvalidResponse("Expiration is not an RFC 3339 UTC time".into())
            })?,
        ),
    };
    Ok((
        AwsCredentials {
            access_key_id: c.access_key_id.trim().to_owned(),
            secret_access_key: Secret::new(c.secret_access_key.trim()),
            session_token: c.token.map(|t| Secret::new(t.trim())),
        },
        expires,
    ))
}

impl AwsHostSource {
    async fn fetch(&self, origin: &str) -> Result<IdpResponse> {
        match &self.endpoint {
            Endpoint::Container { url, auth } => {
                let token = match auth {
                    Some(a) => Some(a.read(origin, "container authorization token").await?),
                    None => None,
                };
                self.http
                    .send(origin, |c| {
                        let rb = c.get(url.as_str());
                        match &token {
                            Some(t) => rb.header(http::header::AUTHORIZATION, t.expose()),
                            None => rb,
                        }
                    })
                    .await
            }
            Endpoint::Imds { base } => {
                let at = format!("{origin}: IMDSv2 token");
                let resp = self
                    .http
                    .send(&at, |c| {
                        c.put(format!("{base}/latest/api/token"))
                            .header("X-aws-ec2-metadata-token-ttl-seconds", IMDS_TOKEN_TTL)
                    })
                    .await?;
                if !(200..300).contains(&resp.status) {
                    return Err(Error::new(at, rejected(&resp)));
                }
                let session = std::str::from_utf8(&resp.body)
                    .ok()
                    .map(str::trim)
                    .filter(|t| check_token_text(t).is_ok())
                    .map(Secret::new)
                    .ok_or_else(|| {
                        Error::new(&*at, ErrorKind::InvalidResponse("not a token".into()))
                    })?;
                let list = format!("{base}/latest/meta-data/iam/security-credentials/");
                let at = format!("{origin}: role name");
                let resp = self
                    .http
                    .send(&at, |c| {
                        c.get(&list)
                            .header("X-aws-ec2-metadata-token", session.expose())
                    })
                    .await?;
                if !(200..300).contains(&resp.status) {
                    return Err(Error::new(at, rejected(&resp)));
                }
                let role = std::str::from_utf8(&resp.body)
                    .ok()
                    .and_then(|t| t.lines().map(str::trim).find(|l| !l.is_empty()))
                    .filter(|r| {
                        r.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
                    })
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Error::new(
                            &*at,
                            ErrorKind::Unavailable(
                                "no IAM role is attached to this instance".into(),
                            ),
                        )
                    })?;
                self.http
                    .send(origin, |c| {
                        c.get(format!("{list}{role}"))
                            .header("X-aws-ec2-metadata-token", session.expose())
                    })
                    .await
            }
        }
    }
}

#[async_trait]
impl Source for AwsHostSource {
    #[tracing::instrument(skip_all, fields(source = %self.describe()))]
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        let origin = self.describe();
        let now = SystemTime::now();
        let resp = self.fetch(&origin).await?;
        let (creds, expires) =
            parse_host_credentials(&resp).map_err(|k| Error::new(&*origin, k))?;
        let secret = creds
            .session_token
            .clone()
            .unwrap_or_else(|| creds.secret_access_key.clone());
        let t = Token::new(secret, origin).acquired_at(now);
        let t = match expires {
            Some(at) => t.expires_at(at).capped_at(now),
            None => t.expires_at(crate::token::expiry_after(now, super::DEFAULT_TTL)),
        };
        Ok(t.with_aws(creds))
    }
    fn kind(&self) -> &'static str {
        "aws"
    }
    fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Container { url, .. } => {
                let shown = url.split(['?', '#']).next().unwrap_or("");
                format!("aws source (container credentials {shown})")
            }
            Endpoint::Imds { base } => format!("aws source (IMDSv2 {base})"),
        }
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"aws");
        fp.add("describe", self.describe().as_bytes());
        if let Endpoint::Container { auth: Some(a), .. } = &self.endpoint {
            a.fingerprint(fp, &self.describe(), "container authorization token")?;
        }
        Ok(())
    }
}

/// `kind = "aws"`: the AWS SDKs' default credential chain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsHostConfig {
    /// The profile in `~/.aws/config` / `~/.aws/credentials` (default `AWS_PROFILE`, else
    /// `default`). Set here, it must exist and the `AWS_ACCESS_KEY_ID` /
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` variables are not used (as `boto3.Session(profile_name=…)`).
    #[serde(default)]
    pub profile: Option<String>,
    /// IMDS base URL (default `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else `http://169.254.169.254`).
    #[serde(default)]
    pub imds_endpoint: Option<String>,
    /// Extra CA certificates (PEM) to trust for STS.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Time limit for one acquisition, `credential_process` included (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl AwsHostSource {
    /// The container endpoint, when its variables are set.
    fn container(path: &str, env: &SharedEnv, timeout: Duration) -> Result<Option<Self>> {
        let var = |n: &str| env.var(n).filter(|v| !v.trim().is_empty());
        let url = match (
            var("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        ) {
            (_, Some(rel)) if rel.starts_with('/') => format!("{ECS_CREDENTIALS_HOST}{rel}"),
            (_, Some(_)) => {
                return Err(Error::config(
                    path,
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI must start with '/'",
                ))
            }
            (Some(full), None) => full,
            (None, None) => return Ok(None),
        };
        // The token goes there: https, or plain HTTP to loopback / link-local only
        // (ECS 169.254.170.2, EKS Pod Identity 169.254.170.23).
        super::http::check_idp_url(&url)
            .map_err(|e| Error::config(path, format!("AWS_CONTAINER_CREDENTIALS_*_URI: {e}")))?;
        let auth = match (
            var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        ) {
            (Some(f), _) => Some(SecretInput::File(PathBuf::from(f))),
            (None, Some(_)) => Some(SecretInput::Env(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN".into(),
                env.clone(),
            )),
            (None, None) => None,
        };
        Ok(Some(AwsHostSource {
            endpoint: Endpoint::Container { url, auth },
            // Metadata endpoints answer only to this machine: never through HTTPS_PROXY.
            http: IdpClient::direct(path, None)?,
            timeout,
        }))
    }

    /// IMDSv2 at `base` (else `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the link-local address).
    fn imds(path: &str, base: Option<&str>, env: &SharedEnv, timeout: Duration) -> Result<Self> {
        let base = base
            .map(str::to_owned)
            .or_else(|| env.var("AWS_EC2_METADATA_SERVICE_ENDPOINT"))
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| IMDS_HOST.into())
            .trim_end_matches('/')
            .to_owned();
        super::oauth::check_url(path, "imds_endpoint", &base)?;
        Ok(AwsHostSource {
            endpoint: Endpoint::Imds { base },
            http: IdpClient::direct(path, None)?,
            timeout,
        })
    }
}

impl AwsHostConfig {
    /// Builds the chain: environment keys, the profile, then the container endpoint when its
    /// variables are set, else IMDSv2.
    ///
    /// # Errors
    /// A config error naming the key or variable whose value is unusable.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        let timeout = self.timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT);
        let (profile, chosen) = self.profile_name(path, env)?;
        Ok(Arc::new(AwsSource {
            profile,
            chosen,
            env: env.clone(),
            http: IdpClient::with_ca_bundle(
                &format!("{path}.ca_bundle"),
                self.ca_bundle.as_deref(),
            )?,
            container: AwsHostSource::container(path, env, timeout)?,
            imds: AwsHostSource::imds(path, self.imds_endpoint.as_deref(), env, timeout)?,
            timeout,
        }))
    }

    /// The profile this source reads: the table's `profile`, else `AWS_PROFILE`, else
    /// `default`, and which of them it was.
    fn profile_name(&self, path: &str, env: &SharedEnv) -> Result<(String, Chosen)> {
        Ok(match (&self.profile, env.var("AWS_PROFILE")) {
            (Some(p), _) if !p.trim().is_empty() => (p.trim().to_owned(), Chosen::Table),
            (Some(_), _) => return Err(Error::config(format!("{path}.profile"), "is empty")),
            (None, Some(p)) if !p.trim().is_empty() => (p.trim().to_owned(), Chosen::Env),
            (None, _) => ("default".to_owned(), Chosen::Default),
        })
    }

    /// The `region` of this source's profile in the AWS config file, if it has one: where
    /// `inject = "aws-sigv4"` signs for when neither `aws_region` nor `AWS_REGION` /
    /// `AWS_DEFAULT_REGION` says, as the SDKs do. Read once, when the proxy is built (an
    /// unreadable file is the source's error to report, at its first acquisition).
    pub fn profile_region(&self, env: &SharedEnv) -> Option<String> {
        let (profile, _) = self.profile_name("", env).ok()?;
        let (config, credentials) = super::aws_ini::paths(env);
        let files = super::aws_ini::AwsFiles::read(config, credentials).ok()?;
        files
            .config
            .get(&profile)
            .and_then(|s| s.get("region"))
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;

    fn env(pairs: &[(&str, &str)]) -> SharedEnv {
        Arc::new(MapEnv::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn endpoint_choice() {
        let c = AwsHostConfig::default();
        let s = c.build("p", &env(&[])).unwrap();
        assert_eq!(
            s.describe(),
            "aws source (profile default, then IMDSv2 http://169.254.169.254)"
        );
        let s = c
            .build(
                "p",
                &env(&[(
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    "/v2/credentials/x",
                )]),
            )
            .unwrap();
        assert_eq!(
            s.describe(),
            "aws source (profile default, then container credentials http://169.254.170.2/v2/credentials/x)"
        );
        let s = AwsHostConfig {
            profile: Some("ci".into()),
            ..AwsHostConfig::default()
        }
        .build("p", &env(&[("AWS_PROFILE", "other")]))
        .unwrap();
        assert!(s.describe().starts_with("aws source (profile ci, then"));
        let err = c
            .build(
                "p",
                &env(&[(
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "http://example.com/creds",
                )]),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("only allowed for loopback and link-local"),
            "{err}"
        );
    }

    #[test]
    fn signs_for_the_profiles_region() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            "[default]\nregion = us-west-2\n[profile ci]\nregion = eu-west-1\n[profile none]\n",
        )
        .unwrap();
        let cfg_path = config.to_str().unwrap();
        let missing = dir.path().join("credentials");
        let files = [
            ("AWS_CONFIG_FILE", cfg_path),
            ("AWS_SHARED_CREDENTIALS_FILE", missing.to_str().unwrap()),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut pairs = files.to_vec();
            pairs.extend_from_slice(extra);
            env(&pairs)
        };
        let table = |p: &str| AwsHostConfig {
            profile: Some(p.into()),
            ..Default::default()
        };
        let none = AwsHostConfig::default();
        assert_eq!(
            none.profile_region(&with(&[])).as_deref(),
            Some("us-west-2")
        );
        assert_eq!(
            none.profile_region(&with(&[("AWS_PROFILE", "ci")]))
                .as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            table("ci")
                .profile_region(&with(&[("AWS_PROFILE", "none")]))
                .as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(table("none").profile_region(&with(&[])), None);
        assert_eq!(table("absent").profile_region(&with(&[])), None);
    }

    #[test]
    fn parses_container_answers() {
        let ok = IdpResponse {
            status: 200,
            body: bytes::Bytes::from_static(br#"{"AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2033-05-18T03:33:20Z"}"#),
        };
        let (c, exp) = parse_host_credentials(&ok).unwrap();
        assert_eq!(c.access_key_id, "ASIA1");
        assert_eq!(
            exp,
            Some(std::time::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        let bad = IdpResponse {
            status: 200,
            body: bytes::Bytes::from_static(b"<html>"),
        };
        assert!(parse_host_credentials(&bad).is_err());
    }
}
