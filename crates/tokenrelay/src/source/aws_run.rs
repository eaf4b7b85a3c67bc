//! The `kind = "aws"` source: the AWS SDKs' default credential chain. At each acquisition the
//! shared config and credentials files are read again and resolved ([`aws_profile`]); the plan
//! is then carried out here: static keys, `credential_process`, `AssumeRoleWithWebIdentity`,
//! `AssumeRole` (SigV4-signed with the source profile's credentials), the container endpoint
//! or IMDSv2 ([`aws_chain`]).
//!
//! [`aws_profile`]: super::aws_profile
//! [`aws_chain`]: super::aws_chain

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::aws::{parse_sts_response, sts_token, WebIdentityCall};
use super::aws_chain::AwsHostSource;
use super::aws_ini::{paths, AwsFiles};
use super::aws_profile::{resolve, sts, Chosen, Plan, Refusal, Role, Sts};
use super::command::{exit_message, run_captured, Program};
use super::http::IdpClient;
use super::inputs::{read_bounded, SecretInput};
use super::output::check_token_text;
use super::{Fingerprint, SharedEnv, Source, TokenRequest, DEFAULT_TTL};
use crate::error::{one_line, Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::token::{expiry_after, AwsCredentials, Token};

/// The AWS default credential chain (`kind = "aws"`).
#[derive(Debug)]
pub struct AwsSource {
    pub(crate) profile: String,
    pub(crate) chosen: Chosen,
    pub(crate) env: SharedEnv,
    /// For STS (honours `HTTPS_PROXY`).
    pub(crate) http: IdpClient,
    pub(crate) container: Option<AwsHostSource>,
    pub(crate) imds: AwsHostSource,
    pub(crate) timeout: Duration,
}

fn origin_of(ctx: &str) -> String {
    format!("aws source ({ctx})")
}

fn refused((ctx, msg): Refusal) -> Error {
    Error::config(origin_of(&ctx), msg)
}

impl AwsSource {
    fn host(&self) -> &AwsHostSource {
        self.container.as_ref().unwrap_or(&self.imds)
    }

    async fn read_files(&self) -> Result<AwsFiles> {
        let (config, credentials) = paths(&self.env);
        tokio::task::spawn_blocking(move || AwsFiles::read(config, credentials))
            .await
            .map_err(|e| Error::new("aws source", ErrorKind::Unavailable(e.to_string())))?
            .map_err(|e| Error::config("aws source", e))
    }

    /// Carries out `plan` (boxed: `AssumeRole` recurses into its source).
    fn run<'a>(
        &'a self,
        plan: &'a Plan,
        sts: &'a Sts,
        req: &'a TokenRequest,
    ) -> BoxFuture<'a, Result<Token>> {
        Box::pin(async move {
            let origin = origin_of(plan.ctx());
            match plan {
                Plan::Static { creds, .. } => {
                    let now = SystemTime::now();
                    let creds = AwsCredentials {
                        access_key_id: creds.access_key_id.clone(),
                        secret_access_key: creds.secret_access_key.clone(),
                        session_token: creds.session_token.clone(),
                    };
                    Ok(aws_token(creds, None, &origin, now))
                }
                Plan::Process { argv, .. } => self.credential_process(argv, &origin, req).await,
                Plan::WebIdentity { role, token_file } => {
                    let web_token = SecretInput::File(token_file.clone())
                        .read(&origin, "web_identity_token_file")
                        .await?;
                    let call = WebIdentityCall {
                        endpoint: &sts.endpoint,
                        role_arn: &role.arn,
                        session_name: &role.session_name,
                        duration_seconds: role.duration_seconds,
                    };
                    call.send(&self.http, &origin, &web_token).await
                }
                Plan::AssumeRole { role, source } => {
                    let src = self.run(source, sts, req).await?;
                    let creds = src.aws().ok_or_else(|| {
                        Error::new(
                            origin_of(source.ctx()),
                            ErrorKind::InvalidResponse("gave no AWS credentials".into()),
                        )
                    })?;
                    assume_role(&self.http, &origin, sts, role, creds).await
                }
                Plan::Container { .. } => match &self.container {
                    Some(c) => c.acquire(req).await,
                    None => Err(Error::config(
                        origin,
                        "credential_source = EcsContainer but neither AWS_CONTAINER_CREDENTIALS_RELATIVE_URI nor _FULL_URI is set",
                    )),
                },
                Plan::Imds { .. } => self.imds.acquire(req).await,
            }
        })
    }

    async fn credential_process(
        &self,
        argv: &[String],
        origin: &str,
        req: &TokenRequest,
    ) -> Result<Token> {
        let origin = format!("{origin}: credential_process");
        let program = Program::Argv(argv.to_vec());
        let mut cmd = program.process(&origin)?;
        cmd.env("TOKENRELAY_PROVIDER", req.provider());
        let done = run_captured(cmd, &origin, &program.path(), self.timeout).await?;
        if !done.status.success() {
            let stderr = String::from_utf8_lossy(&done.stderr);
            let detail = mask_credentials(&one_line(&stderr, 200));
            return Err(Error::new(
                origin,
                ErrorKind::CommandFailed(exit_message(done.status, &detail)),
            ));
        }
        let now = SystemTime::now();
        let (creds, expires) =
            parse_process_output(&done.stdout, now).map_err(|k| Error::new(&*origin, k))?;
        Ok(aws_token(creds, expires, &origin, now))
    }
}

/// A token for AWS credentials: the session token (else the secret key) as its secret,
/// expiring at `expires`, else after [`DEFAULT_TTL`] (so that changed files are read again).
fn aws_token(
    creds: AwsCredentials,
    expires: Option<SystemTime>,
    origin: &str,
    now: SystemTime,
) -> Token {
    match expires {
        Some(at) => sts_token(creds, at, origin, now),
        None => sts_token(creds, expiry_after(now, DEFAULT_TTL), origin, now),
    }
}

/// Replaces every word that could be a key, secret or token (16 or more characters of the
/// base64 / key alphabet) with `[redacted]`: a failing `credential_process` may print its
/// credentials to stderr, and its last stderr line goes into the error.
pub(crate) fn mask_credentials(line: &str) -> String {
    line.split(' ')
        .map(|w| {
            let core = w.trim_matches(|c: char| "\"',;:()[]{}".contains(c));
            let keyish = core.len() >= 16
                && core
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+/=_-.".contains(c))
                && core
                    .chars()
                    .any(|c| c.is_ascii_digit() || c.is_ascii_uppercase());
            if keyish {
                "[redacted]"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessOutput {
    version: Option<serde_json::Value>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    #[serde(default)]
    session_token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

/// Parses `credential_process` output: a JSON object with `Version: 1`, `AccessKeyId`,
/// `SecretAccessKey`, optional `SessionToken` and `Expiration` (RFC 3339, any offset).
///
/// # Errors
/// [`ErrorKind::InvalidResponse`] naming the field, never quoting the output.
pub(crate) fn parse_process_output(
    out: &[u8],
    now: SystemTime,
) -> std::result::Result<(AwsCredentials, Option<SystemTime>), ErrorKind> {
    let bad = |m: &str| ErrorKind::InvalidResponse(m.to_owned());
    let p: ProcessOutput = serde_json::from_slice(out)
        .map_err(|_| bad("output is not a JSON object with string fields"))?;
    match p.version.as_ref().and_then(serde_json::Value::as_u64) {
        Some(1) => {}
        None if p.version.is_none() => return Err(bad("output has no Version (expected 1)")),
        _ => return Err(bad("unsupported Version (expected 1)")),
    }
    let field = |v: Option<String>, name: &str| -> std::result::Result<String, ErrorKind> {
        let v = v.ok_or_else(|| bad(&format!("output has no {name}")))?;
        let v = v.trim().to_owned();
        check_token_text(&v).map_err(|e| bad(&format!("{name}: {e}")))?;
        Ok(v)
    };
    let id = field(p.access_key_id, "AccessKeyId")?;
    let secret = field(p.secret_access_key, "SecretAccessKey")?;
    let token = match p.session_token {
        Some(t) if !t.trim().is_empty() => Some(field(Some(t), "SessionToken")?),
        _ => None,
    };
    let expires = match p.expiration {
        None => None,
        Some(e) => {
            let at =
                parse_rfc3339(e.trim()).ok_or_else(|| bad("Expiration is not an RFC 3339 time"))?;
            if at <= now {
                return Err(bad("Expiration is in the past"));
            }
            Some(at)
        }
    };
    Ok((
        AwsCredentials {
            access_key_id: id,
            secret_access_key: Secret::new(secret),
            session_token: token.map(Secret::new),
        },
        expires,
    ))
}

/// An RFC 3339 time with `Z` or a `±HH:MM` offset.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    if let Some(base) = s.strip_suffix(['Z', 'z']) {
        return humantime::parse_rfc3339_weak(base).ok();
    }
    let (base, off) = s.split_at(s.len().checked_sub(6)?);
    let sign = match off.as_bytes().first()? {
        b'+' => 1i64,
        b'-' => -1,
        _ => return humantime::parse_rfc3339_weak(s).ok(),
    };
    let (h, m) = off.get(1..)?.split_once(':')?;
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(base).ok()?;
    let shift = Duration::from_secs(h * 3600 + m * 60);
    // local = utc + offset, so utc = local - offset
    if sign > 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

/// `AssumeRole`: a SigV4-signed POST to STS with `creds`.
async fn assume_role(
    http: &IdpClient,
    origin: &str,
    sts: &Sts,
    role: &Role,
    creds: &AwsCredentials,
) -> Result<Token> {
    let body = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", "AssumeRole")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &role.arn)
            .append_pair("RoleSessionName", &role.session_name);
        if let Some(d) = role.duration_seconds {
            form.append_pair("DurationSeconds", &d.to_string());
        }
        if let Some(x) = &role.external_id {
            form.append_pair("ExternalId", x);
        }
        form.finish().into_bytes()
    };
    let uri: http::Uri = sts
        .endpoint
        .parse()
        .map_err(|_| Error::config(origin, "the STS endpoint is not a URL"))?;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
    );
    let now = SystemTime::now();
    let resp = http
        .send(origin, |c| {
            // Signed per attempt: a retry gets a fresh X-Amz-Date.
            let mut rb = c.post(sts.endpoint.as_str()).body(body.clone());
            for (n, v) in &headers {
                rb = rb.header(n, v);
            }
            match crate::inject::sign_request(
                &http::Method::POST,
                &uri,
                &headers,
                &body,
                creds,
                &sts.region,
                "sts",
                SystemTime::now(),
            ) {
                Ok(signed) => {
                    for (n, v) in signed {
                        rb = rb.header(n, v);
                    }
                    rb
                }
                // Unsignable (cannot happen for a parsed absolute URI): sent unsigned, STS refuses.
                Err(_) => rb,
            }
        })
        .await?;
    let (c, expires) =
        parse_sts_response(resp.status, &resp.body).map_err(|k| Error::new(origin, k))?;
    Ok(sts_token(c, expires, origin, now))
}

#[async_trait]
impl Source for AwsSource {
    #[tracing::instrument(skip_all, fields(source = %self.describe()))]
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let files = self.read_files().await?;
        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let plan =
            resolve(&files, &self.env, &self.profile, self.chosen, now_secs).map_err(refused)?;
        match plan {
            None => self.host().acquire(req).await,
            Some(plan) => {
                let sts = sts(&files, &self.env, &self.profile).map_err(refused)?;
                super::oauth::check_url(&origin_of(plan.ctx()), "STS endpoint", &sts.endpoint)?;
                self.run(&plan, &sts, req).await
            }
        }
    }
    fn kind(&self) -> &'static str {
        "aws"
    }
    fn describe(&self) -> String {
        let host = self.host().describe();
        let host = host
            .strip_prefix("aws source (")
            .and_then(|h| h.strip_suffix(')'))
            .unwrap_or(&host);
        format!("aws source (profile {}, then {host})", self.profile)
    }
    fn timeout(&self) -> Duration {
        // credential_process enforces the limit itself (killing its group); this is a backstop.
        self.timeout + Duration::from_secs(1)
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"aws");
        fp.add("profile", self.profile.as_bytes());
        fp.add("chosen", format!("{:?}", self.chosen).as_bytes());
        let (config, credentials) = paths(&self.env);
        for p in [config, credentials] {
            fp.add("file", p.as_os_str().as_encoded_bytes());
            // Hashed inside the keyed fingerprint: a changed profile or rotated key is a new entry.
            match read_bounded(&p, super::aws_ini::MAX_AWS_CONFIG_FILE) {
                Ok(bytes) => fp.add("content", &bytes),
                Err(_) => fp.add("content", b"(unreadable)"),
            }
        }
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ROLE_ARN",
            "AWS_ROLE_SESSION_NAME",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL_STS",
            "AWS_ENDPOINT_URL",
            "AWS_STS_REGIONAL_ENDPOINTS",
        ] {
            fp.add(var, self.env.var(var).unwrap_or_default().as_bytes());
        }
        self.host().fingerprint(fp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn process_output() {
        let now = at(1_700_000_000);
        let (c, exp) = parse_process_output(
            br#"{"Version":1,"AccessKeyId":"ASIA1","SecretAccessKey":"s","SessionToken":"t","Expiration":"2033-05-18T05:33:20+02:00"}"#,
            now,
        )
        .unwrap();
        assert_eq!(c.access_key_id, "ASIA1");
        assert_eq!(c.session_token.unwrap().expose(), "t");
        assert_eq!(exp, Some(at(2_000_000_000)));
        let (c, exp) = parse_process_output(
            br#"{"Version":1,"AccessKeyId":"AKIA1","SecretAccessKey":"s"}"#,
            now,
        )
        .unwrap();
        assert!(c.session_token.is_none() && exp.is_none());
        for (out, want) in [
            (&b"not json"[..], "output is not a JSON object"),
            (br#"[1]"#, "output is not a JSON object"),
            (br#"{"AccessKeyId":"A","SecretAccessKey":"s"}"#, "no Version"),
            (br#"{"Version":2,"AccessKeyId":"A","SecretAccessKey":"s"}"#, "unsupported Version"),
            (br#"{"Version":1,"SecretAccessKey":"s3cr3t"}"#, "no AccessKeyId"),
            (br#"{"Version":1,"AccessKeyId":"A"}"#, "no SecretAccessKey"),
            (br#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"s3cr3t","Expiration":"soon"}"#, "not an RFC 3339"),
            (br#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"s3cr3t","Expiration":"2020-01-01T00:00:00Z"}"#, "in the past"),
            (br#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"two words"}"#, "SecretAccessKey"),
        ] {
            let e = parse_process_output(out, now).unwrap_err().to_string();
            assert!(e.contains(want), "{e} / {want}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn masks_key_like_words() {
        assert_eq!(
            mask_credentials("token expired: run `aws sso login` for AKIAIOSFODNN7EXAMPLE now"),
            "token expired: run `aws sso login` for [redacted] now"
        );
        assert_eq!(
            mask_credentials(r#"{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#),
            r#"{"SecretAccessKey": [redacted]"#
        );
        assert_eq!(
            mask_credentials("no-such-profile-here"),
            "no-such-profile-here"
        );
    }
}
