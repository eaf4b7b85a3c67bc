//! Secret inputs of identity sources (client secrets, refresh tokens, keys): read from a file or
//! an environment variable at each use, never inline; files readable by group or others are
//! warned about once.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Fingerprint, SharedEnv};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;

/// Largest secret or token file read (1 MiB): a key, a JWT or a PEM bundle is a few KiB, so
/// anything larger is a wrong path (a log, a disk image), not a credential.
pub const MAX_SECRET_FILE: u64 = 1024 * 1024;

/// Why [`read_bounded`] failed. Its `Display` is the cause only (`not a regular file (fifo)`,
/// `larger than 1 MiB`, `cannot read: …`); callers put the key or source and the path first.
#[derive(Debug)]
pub(crate) enum FileError {
    /// Opening, inspecting or reading failed.
    Io(std::io::Error),
    /// A FIFO, socket, device or directory: reading it could block for ever or never end.
    NotRegular(&'static str),
    /// More than the cap (in bytes).
    TooLarge(u64),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io(e) => write!(f, "cannot read: {e}"),
            FileError::NotRegular(what) => write!(f, "not a regular file ({what})"),
            FileError::TooLarge(cap) if cap % (1024 * 1024) == 0 => {
                write!(f, "larger than {} MiB", cap / (1024 * 1024))
            }
            FileError::TooLarge(cap) => write!(f, "larger than {cap} bytes"),
        }
    }
}

impl FileError {
    /// The error kind, with `what` (`client secret file /x`) before the cause.
    pub(crate) fn kind(&self, what: &str) -> ErrorKind {
        let msg = if what.is_empty() {
            self.to_string()
        } else {
            format!("{what}: {self}")
        };
        match self {
            FileError::TooLarge(_) => ErrorKind::InvalidResponse(msg),
            FileError::Io(_) | FileError::NotRegular(_) => ErrorKind::Unavailable(msg),
        }
    }
}

fn file_type_name(t: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        None
    } else if t.is_fifo() {
        Some("fifo")
    } else if t.is_socket() {
        Some("socket")
    } else if t.is_char_device() {
        Some("character device")
    } else if t.is_block_device() {
        Some("block device")
    } else if t.is_dir() {
        Some("directory")
    } else {
        Some("not a file")
    }
}

/// Reads a small file holding a secret or token, at most `cap` bytes. Blocking: async code
/// calls [`read_bounded_async`].
///
/// Only a regular file is read: its type is checked before opening (a FIFO would block the
/// open until a writer comes, a device may never end), the file is opened non-blocking and
/// checked again (so one swapped in meanwhile cannot hang either), and the read stops at
/// `cap + 1` bytes, so a file that grows after the check still cannot exceed the cap.
///
/// # Errors
/// [`FileError`], naming the cause only.
pub(crate) fn read_bounded(path: &Path, cap: u64) -> std::result::Result<Vec<u8>, FileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let check = |meta: &std::fs::Metadata| match file_type_name(meta.file_type()) {
        Some(what) => Err(FileError::NotRegular(what)),
        None if meta.len() > cap => Err(FileError::TooLarge(cap)),
        None => Ok(()),
    };
    check(&std::fs::metadata(path).map_err(FileError::Io)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(FileError::Io)?;
    check(&file.metadata().map_err(FileError::Io)?)?;
    read_capped(file, cap)
}

/// Reads `r` to its end, failing once it has given more than `cap` bytes (of which at most
/// `cap + 1` are read): the bound holds whatever a `stat` said before.
fn read_capped(r: impl Read, cap: u64) -> std::result::Result<Vec<u8>, FileError> {
    let mut buf = Vec::new();
    r.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(FileError::Io)?;
    if buf.len() as u64 > cap {
        return Err(FileError::TooLarge(cap));
    }
    Ok(buf)
}

/// [`read_bounded`] for a file named in the configuration and read while it is loaded (a
/// private key, a certificate, a CA bundle): a config error at `origin` naming the path.
///
/// # Errors
/// `cannot read PATH: …`, `PATH: not a regular file (fifo)`, `PATH: larger than 1 MiB`.
pub(crate) fn read_config_file(origin: &str, path: &Path) -> Result<Vec<u8>> {
    read_bounded(path, MAX_SECRET_FILE).map_err(|e| {
        let msg = match e {
            FileError::Io(e) => format!("cannot read {}: {e}", path.display()),
            other => format!("{}: {other}", path.display()),
        };
        Error::config(origin, msg)
    })
}

/// Whether [`read_bounded_async`] reads a secret (and so warns, once, when group or others
/// can read the file) or a token file that may be shared on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holds {
    /// A client secret, refresh token, key or assertion.
    Secret,
    /// A token written by another program (the file source).
    Token,
}

/// [`read_bounded`] (and, for a secret, the permission check) on tokio's blocking pool, off
/// the async workers.
///
/// # Errors
/// As for [`read_bounded`].
pub(crate) async fn read_bounded_async(
    path: &Path,
    cap: u64,
    holds: Holds,
) -> std::result::Result<Vec<u8>, FileError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if holds == Holds::Secret {
            warn_if_shared(&owned);
        }
        read_bounded(&owned, cap)
    })
    .await
    .unwrap_or_else(|e| Err(FileError::Io(std::io::Error::other(e.to_string()))))
}

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

    /// Reads the secret now (a file on tokio's blocking pool, at most [`MAX_SECRET_FILE`]).
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] naming the file or variable (never its contents).
    pub async fn read(&self, origin: &str, what: &str) -> Result<Secret> {
        match self {
            SecretInput::File(p) => {
                let bytes = read_bounded_async(p, MAX_SECRET_FILE, Holds::Secret).await;
                self.finish(origin, what, bytes)
            }
            SecretInput::Env(..) => self.read_blocking(origin, what),
        }
    }

    /// Like [`read`](Self::read), on the calling thread (for [`Source::fingerprint`](super::Source::fingerprint),
    /// which is not async).
    ///
    /// # Errors
    /// As for [`read`](Self::read).
    pub fn read_blocking(&self, origin: &str, what: &str) -> Result<Secret> {
        match self {
            SecretInput::File(p) => {
                warn_if_shared(p);
                self.finish(origin, what, read_bounded(p, MAX_SECRET_FILE))
            }
            SecretInput::Env(name, env) => {
                let value = env.var(name).ok_or_else(|| {
                    Error::new(
                        origin,
                        ErrorKind::Unavailable(format!("{what} variable {name} is not set")),
                    )
                })?;
                self.check(origin, what, &value)
            }
        }
    }

    fn finish(
        &self,
        origin: &str,
        what: &str,
        bytes: std::result::Result<Vec<u8>, FileError>,
    ) -> Result<Secret> {
        let label = format!("{what} file {}", self.name());
        let bytes = bytes.map_err(|e| Error::new(origin, e.kind(&label)))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::new(
                origin,
                ErrorKind::Unavailable(format!("{label}: not UTF-8 text")),
            )
        })?;
        self.check(origin, what, &text)
    }

    fn check(&self, origin: &str, what: &str, value: &str) -> Result<Secret> {
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
        let s = self.read_blocking(origin, what)?;
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

    #[tokio::test]
    async fn reads_file_or_env_never_both() {
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([("CS", " s1 \n"), ("EMPTY", "")]));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "from-file\n").unwrap();
        let i = SecretInput::from_keys("p", "client_secret", &Some(f.clone()), &None, &env)
            .unwrap()
            .unwrap();
        assert_eq!(
            i.read("o", "client secret").await.unwrap().expose(),
            "from-file"
        );
        let i = SecretInput::from_keys("p", "client_secret", &None, &Some("CS".into()), &env)
            .unwrap()
            .unwrap();
        assert_eq!(i.read("o", "client secret").await.unwrap().expose(), "s1");
        let err = SecretInput::from_keys("p", "client_secret", &Some(f), &Some("CS".into()), &env)
            .unwrap_err();
        assert!(
            err.to_string().contains("only one of client_secret_file"),
            "{err}"
        );
        let err = SecretInput::Env("NOPE".into(), env.clone())
            .read("o", "client secret")
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "o: client secret variable NOPE is not set");
        let err = SecretInput::Env("EMPTY".into(), env)
            .read("o", "client secret")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
    }

    #[tokio::test]
    async fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let input = SecretInput::File(fifo.clone());
        // would block for ever in open(2) without a writer if it were opened
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            input.read("entra-federated source", "federated token"),
        )
        .await
        .expect("a FIFO must not hang the read")
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "entra-federated source: federated token file {}: not a regular file (fifo)",
                fifo.display()
            )
        );
        let err = SecretInput::File("/dev/zero".into())
            .read("o", "client secret")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "o: client secret file /dev/zero: not a regular file (character device)"
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_SECRET_FILE as usize + 1]).unwrap();
        let err = SecretInput::File(big.clone())
            .read("o", "refresh token")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("o: refresh token file {}: larger than 1 MiB", big.display())
        );
        let err = SecretInput::File(dir.path().to_owned())
            .read_blocking("o", "client secret")
            .unwrap_err();
        assert!(
            err.to_string().ends_with("not a regular file (directory)"),
            "{err}"
        );
    }

    #[test]
    fn the_cap_holds_whatever_stat_said() {
        // an endless reader stands for a file that grew after its size was checked
        let endless = std::io::repeat(b'a');
        assert!(matches!(
            read_capped(endless, 1024),
            Err(FileError::TooLarge(1024))
        ));
        assert_eq!(read_capped(&b"abc"[..], 3).unwrap(), b"abc");
    }
}
