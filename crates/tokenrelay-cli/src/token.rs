//! `tokenrelay token`: the credential helper.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, ValueEnum};
use serde_json::json;
use tokenrelay::persist::{self, Lookup, SharedCache};
use tokenrelay::source::acquire_with_timeout;
use tokenrelay::Token;

use crate::args::{process_env, ProviderArgs};
use crate::{CmdResult, Failure};

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub(crate) enum Output {
    /// The token alone, one line.
    #[default]
    Raw,
    /// `{"token", "expiresOnTimestamp", "refreshAfterTimestamp", "source"}`: the token with its
    /// expiry and the time after which the shared cache refreshes it, both in milliseconds since
    /// the epoch (the names of `@azure/core-auth`'s `AccessToken`), for callbacks that keep the
    /// token in process until then (a plain-string callback takes `raw`). Both times are absent
    /// for a token without a known expiry: ask again on every use.
    Json,
    /// A kubectl `client.authentication.k8s.io/v1` ExecCredential.
    ExecCredential,
    /// AWS `credential_process` JSON (`Version: 1`, `AccessKeyId`, `SecretAccessKey`,
    /// `SessionToken`, `Expiration`), for a source that gives AWS credentials (`aws`,
    /// `aws-web-identity`): `credential_process = tokenrelay token -o credential-process …` in
    /// `~/.aws/config` lets the AWS CLI and SDKs share tokenrelay's cache.
    CredentialProcess,
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    provider: ProviderArgs,
    /// What to print.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Raw)]
    output: Output,
    /// Drop the cached token (as after a 401) and print a freshly acquired one.
    #[arg(long)]
    invalidate: bool,
    /// Do not use the shared cache: acquire from the source every time.
    #[arg(long)]
    no_cache: bool,
    /// Directory of the shared cache (default: $TOKENRELAY_CACHE_DIR, $XDG_RUNTIME_DIR/tokenrelay,
    /// or ~/.cache/tokenrelay).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

pub(crate) async fn run(a: TokenArgs) -> CmdResult {
    let started = SystemTime::now();
    let cfg = a.provider.load()?;
    let provider = cfg.provider(a.provider.chosen())?;
    let env = process_env();
    let source = provider
        .source
        .build(&format!("provider {}.source", provider.name), &env)?;
    let req = provider.request();

    let token = if a.no_cache || !source.persistable() {
        acquire_with_timeout(source.as_ref(), &req).await?
    } else {
        let dir = match &a.cache_dir {
            Some(d) => d.clone(),
            None => persist::default_dir(env.as_ref()).ok_or_else(|| {
                Failure::usage("no cache directory: set HOME, XDG_RUNTIME_DIR or --cache-dir (or pass --no-cache)")
            })?,
        };
        let cache = SharedCache::open(&dir)?;
        let lookup = Lookup {
            invalidate_before: a.invalidate.then_some(started),
        };
        let (token, served) = cache.get(source.as_ref(), &req, lookup).await?;
        tracing::debug!(?served, "token served");
        token
    };
    if token.is_expired(SystemTime::now()) {
        return Err(Failure::runtime(format!(
            "{}: the token it gave is already expired",
            source.describe()
        )));
    }
    print(&token, a.output, source.kind())
}

fn print(token: &Token, output: Output, kind: &str) -> CmdResult {
    let text = match output {
        Output::Raw => token.secret().expose().to_owned(),
        Output::Json => {
            let mut v = json!({ "token": token.secret().expose(), "source": kind });
            if let Some(exp) = token.expiry() {
                v["expiresOnTimestamp"] = json!(millis(exp));
                v["refreshAfterTimestamp"] = json!(millis(refresh_after(token, exp)));
            }
            v.to_string()
        }
        Output::CredentialProcess => {
            let aws = token.aws().ok_or_else(|| {
                Failure::usage(format!(
                    "-o credential-process needs AWS credentials; a {kind} source gives none"
                ))
            })?;
            let mut v = json!({
                "Version": 1,
                "AccessKeyId": aws.access_key_id,
                "SecretAccessKey": aws.secret_access_key.expose(),
            });
            if let Some(t) = &aws.session_token {
                v["SessionToken"] = json!(t.expose());
            }
            if let Some(exp) = token.expiry() {
                v["Expiration"] = json!(tokenrelay::rfc3339(exp));
            }
            v.to_string()
        }
        Output::ExecCredential => {
            let mut status = json!({ "token": token.secret().expose() });
            if let Some(exp) = token.expiry() {
                status["expirationTimestamp"] = json!(tokenrelay::rfc3339(exp));
            }
            json!({
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": status,
            })
            .to_string()
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::runtime(format!("cannot write the token to stdout: {e}")))
}

/// The latest time the shared cache would refresh `token` (its refresh window without the
/// jitter, which only moves refreshes earlier): a caller that holds the token until then and
/// asks again finds the cached entry due, so one source run serves the whole lifetime.
fn refresh_after(token: &Token, exp: SystemTime) -> SystemTime {
    tokenrelay::cache::policy::refresh_at(token.acquired(), exp, 0.0)
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
