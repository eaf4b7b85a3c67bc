//! The refresh token grant (RFC 6749 §6): trade a long-lived refresh token for access tokens,
//! keeping the rotated refresh token when the server issues a new one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use super::http::{IdpClient, TokenResponse};
use super::inputs::SecretInput;
use super::oauth::{check_url, joined_scope, request_scope, AuthMethod, OAuthClient};
use super::{Fingerprint, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT, DEFAULT_TTL};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::token::Token;

/// Gets access tokens with a refresh token. When the server rotates the refresh token, the new
/// one is used from then on and, if it came from a file, written back to that file (mode 0600,
/// via a temporary file and an atomic rename). A rotated token its input does not hold (a
/// variable, or a failed write-back) rides on the tokens given ([`Token::refresh_token`]) so
/// the helper's cache keeps it across processes.
#[derive(Debug)]
pub struct RefreshTokenSource {
    token_url: String,
    client: OAuthClient,
    refresh: SecretInput,
    /// The refresh token in use when its input does not hold it: rotated from a variable,
    /// not written back to its file, or resumed from the helper's cache.
    rotated: Mutex<Option<Secret>>,
    scope: Option<String>,
    http: IdpClient,
    timeout: Duration,
    default_ttl: Duration,
}

impl RefreshTokenSource {
    /// A source trading the refresh token in `refresh` at `token_url`.
    pub fn new(
        token_url: impl Into<String>,
        client: OAuthClient,
        refresh: SecretInput,
        http: IdpClient,
    ) -> Self {
        RefreshTokenSource {
            token_url: token_url.into(),
            client,
            refresh,
            rotated: Mutex::new(None),
            scope: None,
            http,
            timeout: DEFAULT_SOURCE_TIMEOUT,
            default_ttl: DEFAULT_TTL,
        }
    }

    /// One refresh token grant with `refresh`.
    async fn grant(
        &self,
        req: &TokenRequest,
        origin: &str,
        refresh: &Secret,
    ) -> Result<TokenResponse> {
        let form: Vec<(&'static str, String)> = vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", refresh.expose().to_owned()),
        ];
        self.client
            .token_request(
                &self.http,
                origin,
                &self.token_url,
                form,
                request_scope(req, &self.scope),
            )
            .await
    }

    fn forget(&self) {
        if let Ok(mut r) = self.rotated.lock() {
            *r = None;
        }
    }

    /// Makes `new` the refresh token used from now on. A file input gets it written back; when
    /// that fails (read-only file or directory), or the input is a variable, it is kept in
    /// memory and attached to the tokens this source gives, so nothing is lost: the access
    /// token is still answered and the failure is logged once, here.
    fn store(&self, new: Secret) {
        let written = match &self.refresh {
            SecretInput::File(path) => match write_private(path, new.expose()) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(
                        path = %path.display(),
                        error = %e,
                        "cannot write the rotated refresh token back; keeping it in memory (and in the helper's cache)"
                    );
                    false
                }
            },
            SecretInput::Env(name, _) => {
                tracing::warn!(
                    variable = %name,
                    "the server rotated the refresh token; it is kept in memory and in the helper's cache only (use refresh_token_file to persist it)"
                );
                false
            }
        };
        if let Ok(mut r) = self.rotated.lock() {
            *r = (!written).then_some(new);
        }
    }

    /// The refresh token the configured input does not hold, if any.
    fn unsaved(&self) -> Option<Secret> {
        self.rotated.lock().ok().and_then(|r| r.clone())
    }
}

fn is_invalid_grant(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::IdpRejected { error: Some(code), .. } if code == "invalid_grant")
}

/// Writes `contents` to `path` through a 0600 temporary file in the same directory and an
/// atomic rename, so a crash never leaves a truncated token behind.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A random name, created exclusively: a temporary file left by a crashed process (even
    // one with our pid, e.g. pid 1 in a container) never blocks the write.
    let tmp = dir.join(format!(".{name}.tokenrelay-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[async_trait]
impl Source for RefreshTokenSource {
    #[tracing::instrument(skip_all, fields(source = %self.describe()))]
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let origin = self.describe();
        let kept = self.unsaved();
        let refresh = match &kept {
            Some(r) => r.clone(),
            None => self.refresh.read(&origin, "refresh token").await?,
        };
        let now = SystemTime::now();
        let mut resp = match self.grant(req, &origin, &refresh).await {
            // The kept token was rejected: the user may have put a new one in the input
            // (signed in again); try that once before giving up.
            Err(e) if kept.is_some() && is_invalid_grant(&e) => {
                let configured = self.refresh.read(&origin, "refresh token").await?;
                if configured == refresh {
                    return Err(e);
                }
                tracing::warn!(
                    input = %self.refresh.name(),
                    "the kept rotated refresh token was rejected; trying the configured one"
                );
                self.forget();
                self.grant(req, &origin, &configured).await?
            }
            r => r?,
        };
        if let Some(new) = resp.refresh_token.take() {
            if new != refresh {
                tracing::debug!("refresh token rotated");
                self.store(new);
            }
        }
        let token = resp.into_token(origin, now, self.default_ttl);
        Ok(match self.unsaved() {
            Some(r) => token.with_refresh_token(r),
            None => token,
        })
    }
    fn kind(&self) -> &'static str {
        "refresh-token"
    }
    fn describe(&self) -> String {
        format!("refresh-token source {}", self.token_url)
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn resume_refresh_token(&self, refresh: Secret) {
        if let Ok(mut r) = self.rotated.lock() {
            *r = Some(refresh);
        }
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"refresh-token");
        fp.add("token_url", self.token_url.as_bytes());
        fp.add("scope", self.scope.as_deref().unwrap_or("").as_bytes());
        // Only where the refresh token lives: it rotates, and the access token it gave stays good.
        fp.add("refresh_token", self.refresh.name().as_bytes());
        self.client.fingerprint(fp, &self.describe())
    }
}

/// `kind = "refresh-token"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RefreshTokenConfig {
    /// Token endpoint URL.
    pub token_url: String,
    /// `client_id` (sent in the form for public clients).
    #[serde(default)]
    pub client_id: Option<String>,
    /// File holding the client secret (confidential clients).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// `basic` (default) or `post`.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// File holding the refresh token; a rotated one is written back here (0600).
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
    /// Or a variable holding it (a rotated token is then kept in memory only).
    #[serde(default)]
    pub refresh_token_env: Option<String>,
    /// Scope when the provider sets none.
    #[serde(default)]
    pub scope: Option<String>,
    /// Or several scopes, joined with spaces.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Extra CA certificates (PEM) to trust.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Time limit for one acquisition (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Lifetime when the answer states none (default 15m).
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
}

impl RefreshTokenConfig {
    /// Builds the source.
    ///
    /// # Errors
    /// A config error naming `path` and the key.
    pub fn build(&self, path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        check_url(path, "token_url", &self.token_url)?;
        let refresh = SecretInput::from_keys(
            path,
            "refresh_token",
            &self.refresh_token_file,
            &self.refresh_token_env,
            env,
        )?
        .ok_or_else(|| Error::config(path, "set refresh_token_file or refresh_token_env"))?;
        let client = OAuthClient::with_optional_secret(
            path,
            &self.client_id,
            &self.client_secret_file,
            &self.client_secret_env,
            self.auth_method,
            env,
        )?;
        let http =
            IdpClient::with_ca_bundle(&format!("{path}.ca_bundle"), self.ca_bundle.as_deref())?;
        let mut src = RefreshTokenSource::new(self.token_url.clone(), client, refresh, http);
        src.scope = joined_scope(path, &self.scope, &self.scopes)?;
        src.timeout = self.timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT);
        src.default_ttl = self.default_ttl.unwrap_or(DEFAULT_TTL);
        Ok(Arc::new(src))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_private_is_0600_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rt");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, "new-token").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new-token\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
