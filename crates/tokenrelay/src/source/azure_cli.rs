//! The Azure CLI as a source: `az account get-access-token --scope SCOPE -o json`, run without a
//! shell through [`CommandSource`], with the expiry read from the answer (`expires_on`, else the
//! JWT's `exp`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::output::OutputFormat;
use super::{
    CommandSource, Fingerprint, Program, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT,
};
use crate::error::{Error, ErrorKind, Result};
use crate::token::Token;

/// Runs `az account get-access-token` for each acquisition.
#[derive(Debug)]
pub struct AzureCliSource {
    program: String,
    scope: Option<String>,
    tenant: Option<String>,
    timeout: Duration,
    env: SharedEnv,
}

impl AzureCliSource {
    fn argv(&self, program: &Path, scope: &str) -> Vec<String> {
        let mut argv = vec![
            program.display().to_string(),
            "account".into(),
            "get-access-token".into(),
            "--scope".into(),
            scope.into(),
            "-o".into(),
            "json".into(),
        ];
        if let Some(t) = &self.tenant {
            argv.extend(["--tenant".into(), t.clone()]);
        }
        argv
    }

    /// Where the program is (a path, or a name looked up on the source's `PATH`).
    fn resolve(&self) -> Option<PathBuf> {
        if self.program.contains('/') {
            let p = PathBuf::from(&self.program);
            return p.is_file().then_some(p);
        }
        self.env
            .var("PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(&self.program))
            .find(|p| p.is_file())
    }
}

#[async_trait]
impl Source for AzureCliSource {
    #[tracing::instrument(skip_all, fields(source = "azure-cli"))]
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let scope = req
            .scope()
            .map(str::to_owned)
            .or_else(|| self.scope.clone())
            .ok_or_else(|| {
                Error::config(
                    self.describe(),
                    "no scope: set scope on the provider or the source",
                )
            })?;
        let program = self.resolve().ok_or_else(|| {
            Error::new(
                self.describe(),
                ErrorKind::Unavailable(
                    "`az` not found; install the Azure CLI or use another source".into(),
                ),
            )
        })?;
        let cmd = CommandSource::new(Program::Argv(self.argv(&program, &scope)))
            .with_format(OutputFormat::Json)
            .with_timeout(self.timeout);
        // The command's own messages name `az`; re-home them under this source.
        let token = cmd
            .acquire(req)
            .await
            .map_err(|e| Error::new(self.describe(), e.kind().clone()))?;
        if token.expiry().is_none() {
            return Err(Error::new(
                self.describe(),
                ErrorKind::InvalidResponse(
                    "az answered without expires_on and the token is not a JWT".into(),
                ),
            ));
        }
        Ok(token)
    }
    fn kind(&self) -> &'static str {
        "azure-cli"
    }
    fn describe(&self) -> String {
        "azure-cli source".into()
    }
    fn timeout(&self) -> Duration {
        self.timeout + Duration::from_secs(1)
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"azure-cli");
        fp.add("program", self.program.as_bytes());
        fp.add("scope", self.scope.as_deref().unwrap_or("").as_bytes());
        fp.add("tenant", self.tenant.as_deref().unwrap_or("").as_bytes());
        Ok(())
    }
}

/// `kind = "azure-cli"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AzureCliConfig {
    /// Scope when the provider sets none.
    #[serde(default)]
    pub scope: Option<String>,
    /// `--tenant` to pass.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// The `az` program (default `az` on `PATH`).
    #[serde(default)]
    pub program: Option<String>,
    /// Time limit (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl AzureCliConfig {
    /// Builds the source.
    ///
    /// # Errors
    /// Never today; kept fallible like the other kinds.
    pub fn build(&self, _path: &str, env: &SharedEnv) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(AzureCliSource {
            program: self.program.clone().unwrap_or_else(|| "az".into()),
            scope: self.scope.clone(),
            tenant: self.tenant_id.clone(),
            timeout: self.timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT),
            env: env.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;
    use std::os::unix::fs::PermissionsExt;

    fn fake_az(dir: &Path, body: &str) -> String {
        let p = dir.join("az");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir.display().to_string()
    }

    fn source(path_var: &str) -> Arc<dyn Source> {
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([("PATH", path_var)]));
        AzureCliConfig::default().build("p", &env).unwrap()
    }

    fn req() -> TokenRequest {
        TokenRequest::new("azure").with_scope(Some("https://cognitiveservices.azure.com/.default"))
    }

    #[tokio::test]
    async fn missing_az_is_clear() {
        let err = source("/nonexistent").acquire(&req()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "azure-cli source: `az` not found; install the Azure CLI or use another source"
        );
    }

    #[tokio::test]
    async fn not_logged_in_passes_az_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_az(
            dir.path(),
            "echo \"ERROR: Please run 'az login' to setup account.\" >&2; exit 1",
        );
        let err = source(&path).acquire(&req()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "azure-cli source: exited with status 1: ERROR: Please run 'az login' to setup account."
        );
    }

    #[tokio::test]
    async fn parses_real_expiry_and_passes_scope() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("args");
        // an hour from now, to the second (az prints epoch seconds)
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let path = fake_az(
            dir.path(),
            &format!(
                "echo \"$@\" > {}\ncat <<'EOF'\n{{\"accessToken\":\"az-tok\",\"expiresOn\":\"2033-05-18 03:33:20.000000\",\"expires_on\":{exp},\"subscription\":\"s\",\"tenant\":\"t\",\"tokenType\":\"Bearer\"}}\nEOF",
                log.display()
            ),
        );
        let t = source(&path).acquire(&req()).await.unwrap();
        assert_eq!(t.secret().expose(), "az-tok");
        assert_eq!(
            t.expiry(),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(exp))
        );
        assert_eq!(
            std::fs::read_to_string(log).unwrap().trim(),
            "account get-access-token --scope https://cognitiveservices.azure.com/.default -o json"
        );
    }
}
