//! Secret inputs of identity sources (client secrets, refresh tokens, keys): read from a file or
//! an environment variable at each use, never inline; files readable by group or others are
//! warned about once.

use std::path::{Path, PathBuf};

use super::{Fingerprint, SharedEnv};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;

/// Where a secret is read from.
#[derive(Debug, Clone)]
pub enum SecretInput {
    /// A file (trimmed); re-read at each use, so a rotated secret is picked up.
    File(PathBuf),
    /// An environment variable, read through the source's [`Env`](super::Env).
    Env(String, SharedEnv),
}

impl SecretInput {
    /// The input from a `*_file` / `*_env` pair of config keys: exactly one may be set.
    ///
    /// # Errors
    /// A config error at `path` when both are set.
    pub fn from_keys(
        path: &str,
        key: &str,
        file: &Option<PathBuf>,
        var: &Option<String>,
        env: &SharedEnv,
    ) -> Result<Option<Self>> {
        match (file, var) {
            (Some(f), None) => Ok(Some(SecretInput::File(f.clone()))),
            (None, Some(v)) => Ok(Some(SecretInput::Env(v.clone(), env.clone()))),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(Error::config(
                path,
                format!("set only one of {key}_file or {key}_env"),
            )),
        }
    }

    /// Reads the secret now.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] naming the file or variable (never its contents).
    pub fn read(&self, origin: &str, what: &str) -> Result<Secret> {
        let value = match self {
            SecretInput::File(p) => {
                warn_if_shared(p);
                std::fs::read_to_string(p).map_err(|e| {
                    Error::new(
                        origin,
                        ErrorKind::Unavailable(format!(
                            "cannot read {what} file {}: {e}",
                            p.display()
                        )),
                    )
                })?
            }
            SecretInput::Env(name, env) => env.var(name).ok_or_else(|| {
                Error::new(
                    origin,
                    ErrorKind::Unavailable(format!("{what} variable {name} is not set")),
                )
            })?,
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(Error::new(
                origin,
                ErrorKind::Unavailable(format!("{what} from {} is empty", self.name())),
            ));
        }
        Ok(Secret::new(value))
    }

    /// The file path or variable name (for messages).
    pub fn name(&self) -> String {
        match self {
            SecretInput::File(p) => p.display().to_string(),
            SecretInput::Env(n, _) => format!("${n}"),
        }
    }

    /// Adds the location and, hashed inside the keyed fingerprint, the current value.
    pub(crate) fn fingerprint(&self, fp: &mut Fingerprint, origin: &str, what: &str) -> Result<()> {
        fp.add(what, self.name().as_bytes());
        let s = self.read(origin, what)?;
        fp.add(what, s.expose().as_bytes());
        Ok(())
    }
}

/// Files already warned about, so a key read at every acquisition is warned about once.
static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Logs a warning (once per path) when a secret file is readable by group or others.
pub(crate) fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode();
    if mode & 0o077 == 0 {
        return;
    }
    if let Ok(mut warned) = WARNED.lock() {
        if warned.iter().any(|p| p == path) {
            return;
        }
        warned.push(path.to_owned());
    }
    tracing::warn!(
        path = %path.display(),
        mode = format!("{:o}", mode & 0o777),
        "secret file is readable by group or others; run chmod 600 on it"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;
    use std::sync::Arc;

    #[test]
    fn reads_file_or_env_never_both() {
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([("CS", " s1 \n"), ("EMPTY", "")]));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "from-file\n").unwrap();
        let i = SecretInput::from_keys("p", "client_secret", &Some(f.clone()), &None, &env)
            .unwrap()
            .unwrap();
        assert_eq!(i.read("o", "client secret").unwrap().expose(), "from-file");
        let i = SecretInput::from_keys("p", "client_secret", &None, &Some("CS".into()), &env)
            .unwrap()
            .unwrap();
        assert_eq!(i.read("o", "client secret").unwrap().expose(), "s1");
        let err = SecretInput::from_keys("p", "client_secret", &Some(f), &Some("CS".into()), &env)
            .unwrap_err();
        assert!(
            err.to_string().contains("only one of client_secret_file"),
            "{err}"
        );
        let err = SecretInput::Env("NOPE".into(), env.clone())
            .read("o", "client secret")
            .unwrap_err();
        assert_eq!(err.to_string(), "o: client secret variable NOPE is not set");
        let err = SecretInput::Env("EMPTY".into(), env)
            .read("o", "client secret")
            .unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
    }
}
