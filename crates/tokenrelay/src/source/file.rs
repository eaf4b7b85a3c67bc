//! A token kept in a file (Kubernetes projected service-account tokens, a sidecar's output),
//! read again whenever the file changes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::inputs::{read_bounded_async, FileError, Holds, MAX_SECRET_FILE};
use super::output::{self, OutputFormat};
use super::{Fingerprint, Source, TokenRequest, DEFAULT_TTL};
use crate::error::{Error, ErrorKind, Result};
use crate::token::Token;

/// How often a file source is checked for a new token even when the current one is far from
/// expiry (10 s): a rotated file is picked up within ~10 s, for the cost of one `stat`.
pub const DEFAULT_FILE_RECHECK: Duration = Duration::from_secs(10);

/// Reads the token from a file; re-reads only when its size or modification time changed.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    format: OutputFormat,
    default_ttl: Duration,
    last: Mutex<Option<(u64, Option<SystemTime>, Token)>>,
}

impl FileSource {
    /// Reads `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSource {
            path: path.into(),
            format: OutputFormat::Auto,
            default_ttl: DEFAULT_TTL,
            last: Mutex::new(None),
        }
    }

    /// How to parse the contents (default: auto).
    #[must_use]
    pub fn with_format(mut self, format: OutputFormat) -> Self {
        self.format = format;
        self
    }

    /// Lifetime assumed when the contents state none.
    #[must_use]
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, kind: ErrorKind) -> Error {
        Error::new(self.describe(), kind)
    }
}

#[async_trait]
impl Source for FileSource {
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        let meta = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| self.err(FileError::Io(e).kind("")))?;
        let stamp = (meta.len(), meta.modified().ok());
        let now = SystemTime::now();
        if let Ok(last) = self.last.lock() {
            if let Some((len, mtime, token)) = last.as_ref() {
                if (*len, *mtime) == stamp && !token.is_expired(now) {
                    return Ok(token.clone());
                }
            }
        }
        // Checks the type and size again and bounds the read itself, so a file that grows
        // after the stat above still cannot exceed the cap.
        let bytes = read_bounded_async(&self.path, MAX_SECRET_FILE, Holds::Token)
            .await
            .map_err(|e| self.err(e.kind("")))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            self.err(ErrorKind::InvalidResponse(format!(
                "{} is not UTF-8 (invalid byte at offset {})",
                self.path.display(),
                e.utf8_error().valid_up_to()
            )))
        })?;
        let parsed = output::parse(&text, self.format).map_err(|e| {
            self.err(ErrorKind::InvalidResponse(format!(
                "{}: {e}",
                self.path.display()
            )))
        })?;
        let token = parsed.into_token(&self.describe(), now, Some(self.default_ttl));
        if let Ok(mut last) = self.last.lock() {
            *last = Some((stamp.0, stamp.1, token.clone()));
        }
        Ok(token)
    }
    fn kind(&self) -> &'static str {
        "file"
    }
    fn describe(&self) -> String {
        format!("file source {}", self.path.display())
    }
    fn recheck_interval(&self) -> Option<Duration> {
        Some(DEFAULT_FILE_RECHECK)
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("file", self.path.as_os_str().as_encoded_bytes());
        Ok(())
    }
    fn persistable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_file_names_path_and_cause() {
        let src = FileSource::new("/nonexistent/tokenrelay/token");
        let err = src.acquire(&TokenRequest::new("p")).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("file source /nonexistent/tokenrelay/token: cannot read"),
            "{msg}"
        );
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[tokio::test]
    async fn rereads_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        std::fs::write(&path, "first\n").unwrap();
        let src = FileSource::new(&path);
        let req = TokenRequest::new("p");
        assert_eq!(src.acquire(&req).await.unwrap().secret().expose(), "first");
        std::fs::write(&path, "second-longer\n").unwrap();
        assert_eq!(
            src.acquire(&req).await.unwrap().secret().expose(),
            "second-longer"
        );
    }

    #[tokio::test]
    async fn empty_or_binary_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        std::fs::write(&path, "").unwrap();
        let err = FileSource::new(&path)
            .acquire(&TokenRequest::new("p"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("output is empty"), "{err}");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let err = FileSource::new(&path)
            .acquire(&TokenRequest::new("p"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[tokio::test]
    async fn fifos_devices_and_large_files_are_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_SECRET_FILE as usize + 1]).unwrap();
        for (path, cause) in [
            (fifo, "not a regular file (fifo)"),
            ("/dev/zero".into(), "not a regular file (character device)"),
            (big, "larger than 1 MiB"),
        ] {
            let (src, req) = (FileSource::new(&path), TokenRequest::new("p"));
            let err = tokio::time::timeout(Duration::from_secs(5), src.acquire(&req))
                .await
                .expect("must not hang")
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("file source {}: {cause}", path.display())
            );
        }
    }
}
