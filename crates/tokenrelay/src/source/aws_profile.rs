//! Which AWS credentials a profile names, decided the way botocore decides (its
//! `create_credential_resolver` and `AssumeRoleProvider`), as a [`Plan`] the `aws` source then
//! carries out. Pure: the files are read by the caller at each acquisition.
//!
//! For the active profile: environment keys (unless the profile was named by the table's
//! `profile` key, like `boto3.Session(profile_name=…)`), then `role_arn` with `source_profile`
//! or `credential_source`, then `web_identity_token_file` (or `AWS_WEB_IDENTITY_TOKEN_FILE`)
//! with `role_arn` (or `AWS_ROLE_ARN`), then static keys from the credentials file, then
//! `credential_process`, then static keys from the config file. `None`: nothing here, go on to
//! the container endpoint and IMDS.

use std::path::PathBuf;

use super::aws_ini::AwsFiles;
use super::output::check_token_text;
use super::SharedEnv;
use crate::secret::Secret;
use crate::token::AwsCredentials;

/// Longest `source_profile` chain followed (8 roles deep); past it the profile is refused.
pub const MAX_SOURCE_PROFILE_DEPTH: usize = 8;

/// Regions whose STS endpoint is the global one when `sts_regional_endpoints = legacy`.
const LEGACY_GLOBAL_STS_REGIONS: &[&str] = &[
    "ap-northeast-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "aws-global",
    "ca-central-1",
    "eu-central-1",
    "eu-north-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
];

/// How the profile was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chosen {
    /// The table's `profile` key: environment keys and web identity variables are not used.
    Table,
    /// `AWS_PROFILE`.
    Env,
    /// Nobody chose: `default`, which may be missing.
    Default,
}

/// Where STS is and the region its requests are signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sts {
    /// The endpoint URL.
    pub endpoint: String,
    /// The signing region.
    pub region: String,
}

/// What to do to get the credentials; `ctx` names the profile and file (for errors).
#[derive(Debug)]
pub(crate) enum Plan {
    /// Keys as they are (no expiry).
    Static { creds: AwsCredentials, ctx: String },
    /// Run `credential_process` (split like a shell line, run without a shell).
    Process { argv: Vec<String>, ctx: String },
    /// `AssumeRoleWithWebIdentity` with the token in `token_file`.
    WebIdentity { role: Role, token_file: PathBuf },
    /// `AssumeRole`, signed with the credentials of `source`.
    AssumeRole { role: Role, source: Box<Plan> },
    /// The container credentials endpoint (`credential_source = EcsContainer`).
    Container { ctx: String },
    /// IMDSv2 (`credential_source = Ec2InstanceMetadata`).
    Imds { ctx: String },
}

/// A role to assume and how.
#[derive(Debug, Clone)]
pub(crate) struct Role {
    /// `role_arn`.
    pub arn: String,
    /// `role_session_name`, else `tokenrelay-<unix seconds>` (botocore: `botocore-session-…`).
    pub session_name: String,
    /// `external_id`.
    pub external_id: Option<String>,
    /// `duration_seconds`.
    pub duration_seconds: Option<u64>,
    /// `profile NAME in FILE`.
    pub ctx: String,
}

impl Plan {
    /// The profile and file this step comes from.
    pub(crate) fn ctx(&self) -> &str {
        match self {
            Plan::Static { ctx, .. }
            | Plan::Process { ctx, .. }
            | Plan::Container { ctx }
            | Plan::Imds { ctx } => ctx,
            Plan::WebIdentity { role, .. } | Plan::AssumeRole { role, .. } => &role.ctx,
        }
    }
}

/// A refusal: the context (`profile ci in /home/u/.aws/config`) and the cause.
pub(crate) type Refusal = (String, String);

struct Resolver<'a> {
    files: &'a AwsFiles,
    env: &'a SharedEnv,
    now_secs: u64,
}

/// The plan for `profile`, or `None` when the profiles and environment hold nothing (the chain
/// goes on to the container endpoint and IMDS).
///
/// # Errors
/// A profile named explicitly that does not exist, a loop or over-deep `source_profile`
/// chain, a role without a source, half a key pair, an unsupported key (`mfa_serial`, SSO).
pub(crate) fn resolve(
    files: &AwsFiles,
    env: &SharedEnv,
    profile: &str,
    chosen: Chosen,
    now_secs: u64,
) -> Result<Option<Plan>, Refusal> {
    let r = Resolver {
        files,
        env,
        now_secs,
    };
    let use_env = chosen != Chosen::Table;
    if use_env {
        if let Some(p) = env_keys(env)? {
            return Ok(Some(p));
        }
    }
    if !files.has_profile(profile) && chosen != Chosen::Default {
        return Err((
            format!("profile {profile}"),
            format!(
                "no such profile in {} or {}",
                files.config_path.display(),
                files.credentials_path.display()
            ),
        ));
    }
    if r.get(profile, "role_arn").is_some() && r.get(profile, "web_identity_token_file").is_none() {
        return r
            .assume_role(profile, &mut vec![profile.to_owned()])
            .map(Some);
    }
    r.profile_chain(profile, use_env)
}

/// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`).
fn env_keys(env: &SharedEnv) -> Result<Option<Plan>, Refusal> {
    let var = |n: &str| env.var(n).filter(|v| !v.trim().is_empty());
    let ctx = || "environment".to_owned();
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => {
            let token = var("AWS_SESSION_TOKEN").or_else(|| var("AWS_SECURITY_TOKEN"));
            Ok(Some(Plan::Static {
                creds: keys(&id, &secret, token.as_deref()).map_err(|e| (ctx(), e))?,
                ctx: ctx(),
            }))
        }
        (Some(_), None) => Err((
            ctx(),
            "AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY".into(),
        )),
        (None, Some(_)) => Err((
            ctx(),
            "AWS_SECRET_ACCESS_KEY is set without AWS_ACCESS_KEY_ID".into(),
        )),
    }
}

fn keys(id: &str, secret: &str, token: Option<&str>) -> Result<AwsCredentials, String> {
    let (id, secret) = (id.trim(), secret.trim());
    check_token_text(id).map_err(|e| format!("access key id: {e}"))?;
    check_token_text(secret).map_err(|e| format!("secret access key: {e}"))?;
    if let Some(t) = token {
        check_token_text(t.trim()).map_err(|e| format!("session token: {e}"))?;
    }
    Ok(AwsCredentials {
        access_key_id: id.to_owned(),
        secret_access_key: Secret::new(secret),
        session_token: token.map(|t| Secret::new(t.trim())),
    })
}

impl Resolver<'_> {
    fn get(&self, profile: &str, key: &str) -> Option<&str> {
        self.files.get(profile, key).map(|(v, _)| v)
    }

    /// The profile's `key`, else (when the environment may be used) the variable `var`.
    fn key_or_env(&self, profile: &str, key: &str, var: &str, use_env: bool) -> Option<String> {
        self.get(profile, key)
            .map(str::to_owned)
            .or_else(|| use_env.then(|| self.env.var(var)).flatten())
            .filter(|v| !v.trim().is_empty())
    }

    fn ctx(&self, profile: &str) -> String {
        format!(
            "profile {profile} in {}",
            self.files.file_of(profile).display()
        )
    }

    /// Static keys of one file's section (`credentials` or `config`).
    fn static_in(&self, profile: &str, credentials_file: bool) -> Result<Option<Plan>, Refusal> {
        let (map, path) = if credentials_file {
            (&self.files.credentials, &self.files.credentials_path)
        } else {
            (&self.files.config, &self.files.config_path)
        };
        let Some(s) = map.get(profile) else {
            return Ok(None);
        };
        let get = |k: &str| s.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let ctx = format!("profile {profile} in {}", path.display());
        match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (None, None) => Ok(None),
            (Some(id), Some(secret)) => {
                let token = get("aws_session_token").or_else(|| get("aws_security_token"));
                let creds = keys(id, secret, token).map_err(|e| (ctx.clone(), e))?;
                Ok(Some(Plan::Static { creds, ctx }))
            }
            (Some(_), None) => Err((
                ctx,
                "aws_access_key_id without aws_secret_access_key".into(),
            )),
            (None, Some(_)) => Err((
                ctx,
                "aws_secret_access_key without aws_access_key_id".into(),
            )),
        }
    }

    fn has_static(&self, profile: &str) -> bool {
        self.get(profile, "aws_access_key_id").is_some()
    }

    fn role(&self, profile: &str, arn: &str, use_env: bool) -> Result<Role, Refusal> {
        let ctx = self.ctx(profile);
        let session_name = self
            .key_or_env(
                profile,
                "role_session_name",
                "AWS_ROLE_SESSION_NAME",
                use_env,
            )
            .unwrap_or_else(|| format!("tokenrelay-{}", self.now_secs));
        let duration_seconds = match self.get(profile, "duration_seconds") {
            None => None,
            Some(d) => Some(d.parse::<u64>().map_err(|_| {
                (
                    ctx.clone(),
                    "duration_seconds is not a whole number of seconds".to_owned(),
                )
            })?),
        };
        Ok(Role {
            arn: arn.to_owned(),
            session_name,
            external_id: self.get(profile, "external_id").map(str::to_owned),
            duration_seconds,
            ctx,
        })
    }

    /// botocore's profile providers: web identity, SSO (refused), the credentials file's keys,
    /// `credential_process`, the config file's keys.
    fn profile_chain(&self, profile: &str, use_env: bool) -> Result<Option<Plan>, Refusal> {
        let token_file = self.key_or_env(
            profile,
            "web_identity_token_file",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            use_env,
        );
        if let Some(file) = token_file {
            let arn = self
                .key_or_env(profile, "role_arn", "AWS_ROLE_ARN", use_env)
                .ok_or_else(|| {
                    (
                        self.ctx(profile),
                        "web_identity_token_file needs role_arn (or AWS_ROLE_ARN)".to_owned(),
                    )
                })?;
            let mut role = self.role(profile, &arn, use_env)?;
            if self.get(profile, "web_identity_token_file").is_none() {
                role.ctx = "environment AWS_WEB_IDENTITY_TOKEN_FILE".into();
            }
            return Ok(Some(Plan::WebIdentity {
                role,
                token_file: PathBuf::from(file),
            }));
        }
        if self.get(profile, "sso_session").is_some()
            || self.get(profile, "sso_start_url").is_some()
        {
            return Err((
                self.ctx(profile),
                "IAM Identity Center (sso_*) profiles are not supported; use credential_process = aws configure export-credentials --profile NAME --format process".into(),
            ));
        }
        if let Some(p) = self.static_in(profile, true)? {
            return Ok(Some(p));
        }
        if let Some(line) = self.get(profile, "credential_process") {
            let argv = shlex::split(line)
                .filter(|a| !a.is_empty())
                .ok_or_else(|| {
                    (
                        self.ctx(profile),
                        "credential_process is not a command line (unbalanced quotes?)".to_owned(),
                    )
                })?;
            return Ok(Some(Plan::Process {
                argv,
                ctx: self.ctx(profile),
            }));
        }
        self.static_in(profile, false)
    }

    /// A source profile's credentials: its own chain when it has keys or no role, else its
    /// role (botocore's `_resolve_credentials_from_profile`).
    fn source(&self, profile: &str, visited: &mut Vec<String>) -> Result<Plan, Refusal> {
        let assumes = self.get(profile, "role_arn").is_some()
            && self.get(profile, "web_identity_token_file").is_none();
        if self.has_static(profile) || !assumes {
            return self.profile_chain(profile, false)?.ok_or_else(|| {
                (
                    self.ctx(profile),
                    "the source profile has no credentials".to_owned(),
                )
            });
        }
        self.assume_role(profile, visited)
    }

    fn assume_role(&self, profile: &str, visited: &mut Vec<String>) -> Result<Plan, Refusal> {
        let ctx = self.ctx(profile);
        let arn = self.get(profile, "role_arn").unwrap_or_default().to_owned();
        if self.get(profile, "mfa_serial").is_some() {
            return Err((
                ctx,
                "mfa_serial needs an MFA code typed in; not supported (use credential_process)"
                    .into(),
            ));
        }
        let role = self.role(profile, &arn, false)?;
        let source = match (
            self.get(profile, "source_profile"),
            self.get(profile, "credential_source"),
        ) {
            (Some(_), Some(_)) => {
                return Err((
                    ctx,
                    "role_arn takes source_profile or credential_source, not both".into(),
                ))
            }
            (None, None) => {
                return Err((
                    ctx,
                    "role_arn needs source_profile or credential_source".into(),
                ))
            }
            (Some(sp), None) => {
                if !self.files.has_profile(sp) {
                    return Err((ctx, format!("source_profile {sp} does not exist")));
                }
                let self_keys = sp == profile && self.has_static(sp);
                if visited.iter().any(|v| v == sp) && !self_keys {
                    visited.push(sp.to_owned());
                    return Err((
                        ctx,
                        format!("source_profile loops: {}", visited.join(" -> ")),
                    ));
                }
                if visited.len() >= MAX_SOURCE_PROFILE_DEPTH {
                    return Err((
                        ctx,
                        format!(
                            "source_profile chain is deeper than {MAX_SOURCE_PROFILE_DEPTH} profiles"
                        ),
                    ));
                }
                visited.push(sp.to_owned());
                self.source(sp, visited)?
            }
            (None, Some(cs)) => match cs {
                "Environment" => env_keys(self.env)?.ok_or_else(|| {
                    (
                        ctx.clone(),
                        "credential_source = Environment but AWS_ACCESS_KEY_ID is not set".into(),
                    )
                })?,
                "Ec2InstanceMetadata" => Plan::Imds { ctx: ctx.clone() },
                "EcsContainer" => Plan::Container { ctx: ctx.clone() },
                other => {
                    return Err((
                        ctx,
                        format!(
                            "credential_source {other:?} is not one of Environment, Ec2InstanceMetadata, EcsContainer"
                        ),
                    ))
                }
            },
        };
        Ok(Plan::AssumeRole {
            role,
            source: Box::new(source),
        })
    }
}

/// The STS endpoint and signing region for `profile`: `AWS_ENDPOINT_URL_STS`, then
/// `AWS_ENDPOINT_URL`, then the profile's `endpoint_url` (none of them when
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` or `ignore_configured_endpoint_urls` is `true`); else
/// the region (`AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`):
/// `https://sts.{region}.amazonaws.com/`, or the global `https://sts.amazonaws.com/` without a
/// region or, for the legacy regions, with `sts_regional_endpoints = legacy`.
///
/// # Errors
/// A region that is not a region name, an unknown `sts_regional_endpoints`.
pub(crate) fn sts(files: &AwsFiles, env: &SharedEnv, profile: &str) -> Result<Sts, Refusal> {
    let var = |n: &str| env.var(n).filter(|v| !v.trim().is_empty());
    let key = |k: &str| files.get(profile, k).map(|(v, _)| v.to_owned());
    let ctx = || format!("profile {profile} in {}", files.file_of(profile).display());
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .or_else(|| key("region"));
    if let Some(r) = &region {
        if !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err((ctx(), "region is not a region name".into()));
        }
    }
    let truthy = |v: Option<String>| v.is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let ignore = truthy(var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"))
        || truthy(key("ignore_configured_endpoint_urls"));
    let configured = (!ignore)
        .then(|| {
            var("AWS_ENDPOINT_URL_STS")
                .or_else(|| var("AWS_ENDPOINT_URL"))
                .or_else(|| key("endpoint_url"))
        })
        .flatten();
    let signing = region.clone().unwrap_or_else(|| "us-east-1".into());
    if let Some(endpoint) = configured {
        return Ok(Sts {
            endpoint,
            region: signing,
        });
    }
    let mode = var("AWS_STS_REGIONAL_ENDPOINTS")
        .or_else(|| key("sts_regional_endpoints"))
        .unwrap_or_else(|| "regional".into());
    let global = Sts {
        endpoint: "https://sts.amazonaws.com/".into(),
        region: "us-east-1".into(),
    };
    match (mode.as_str(), region) {
        ("regional" | "legacy", None) => Ok(global),
        ("legacy", Some(r)) if LEGACY_GLOBAL_STS_REGIONS.contains(&r.as_str()) => Ok(global),
        ("regional" | "legacy", Some(r)) => {
            let suffix = if r.starts_with("cn-") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            Ok(Sts {
                endpoint: format!("https://sts.{r}.{suffix}/"),
                region: r,
            })
        }
        (other, _) => Err((
            ctx(),
            format!("sts_regional_endpoints {other:?} is not regional or legacy"),
        )),
    }
}

#[cfg(test)]
#[path = "aws_profile_tests.rs"]
mod tests;
