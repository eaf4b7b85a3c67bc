//! The library's one error type: [`Error`] = where it happened + [`ErrorKind`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What went wrong. Messages are lower-case, name the cause, and never contain token bytes
/// or raw identity-provider bodies (only the standard `error` / `error_description` fields).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is invalid (a missing key, a bad value, conflicting options).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The source did not answer in time.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// An input the source needs is missing: an unset environment variable, a missing file.
    #[error("{0}")]
    Unavailable(String),
    /// A command exited unsuccessfully or could not be started.
    #[error("{0}")]
    CommandFailed(String),
    /// The identity provider answered with a non-success status.
    #[error(
        "identity provider answered HTTP {status}{}",
        idp_detail(error, description)
    )]
    IdpRejected {
        /// HTTP status code.
        status: u16,
        /// The OAuth `error` code, if the body had one (e.g. `invalid_client`).
        error: Option<String>,
        /// The OAuth `error_description`, if any (Entra puts `AADSTS…` codes here).
        description: Option<String>,
    },
    /// The source answered, but not with something we can use as a token.
    #[error("{0}")]
    InvalidResponse(String),
    /// A network failure while talking to an identity provider or plugin.
    #[error("{0}")]
    Transport(String),
}

fn idp_detail(error: &Option<String>, description: &Option<String>) -> String {
    match (error, description) {
        (Some(e), Some(d)) => format!(": {e}: {d}"),
        (Some(e), None) => format!(": {e}"),
        (None, Some(d)) => format!(": {d}"),
        (None, None) => String::new(),
    }
}

/// An error from a source, the cache or the proxy: the origin (which source or provider) and
/// the [`ErrorKind`]. Its `Display` is one line: `command source `az …`: timed out after 30s`.
///
/// ```
/// use tokenrelay::{Error, ErrorKind};
/// let e = Error::new("env source MY_TOKEN", ErrorKind::Unavailable("variable is not set".into()));
/// assert_eq!(e.to_string(), "env source MY_TOKEN: variable is not set");
/// assert!(!e.is_retryable());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    origin: Arc<str>,
    kind: ErrorKind,
}

impl Error {
    /// An error of `kind` that happened in `origin` (a source or provider description).
    pub fn new(origin: impl Into<Arc<str>>, kind: ErrorKind) -> Self {
        Error {
            origin: origin.into(),
            kind,
        }
    }

    /// A configuration error.
    pub fn config(origin: impl Into<Arc<str>>, msg: impl Into<String>) -> Self {
        Error::new(origin, ErrorKind::Config(msg.into()))
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Where it went wrong (source or provider description).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The same error with `prefix` put in front of the origin (`provider azure: command …`).
    pub fn context(self, prefix: &str) -> Self {
        Error {
            origin: format!("{prefix}: {}", self.origin).into(),
            kind: self.kind,
        }
    }

    /// Whether trying again later may succeed (timeouts, transport failures, 429 and 5xx).
    pub fn is_retryable(&self) -> bool {
        match &self.kind {
            ErrorKind::Timeout(_) | ErrorKind::Transport(_) => true,
            ErrorKind::IdpRejected { status, .. } => *status == 429 || *status >= 500,
            ErrorKind::CommandFailed(_) => true,
            _ => false,
        }
    }

    /// The HTTP status the proxy answers with when this error stops a request: 504 when the
    /// source timed out, 500 for configuration errors, 503 when no credential can be had
    /// otherwise. (The upstream's own failures are the proxy's 502 and 504, not errors of
    /// this type.)
    pub fn http_status(&self) -> http::StatusCode {
        match &self.kind {
            ErrorKind::Timeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Config(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
            _ => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether this is a configuration/usage error (exit code 2) rather than a runtime one.
    pub fn is_config(&self) -> bool {
        matches!(self.kind, ErrorKind::Config(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.kind)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("origin", &self.origin)
            .field("kind", &self.kind)
            .finish()
    }
}

impl std::error::Error for Error {}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Keeps the last non-empty line of a command's stderr (or an IdP message), bounded, with
/// control characters replaced, so it fits in a one-line error.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("");
    let cleaned: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cleaned.chars().count() > max {
        let cut: String = cleaned.chars().take(max).collect();
        format!("{cut}…")
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idp_rejected_names_oauth_fields() {
        let e = Error::new(
            "oauth2 source https://idp/token",
            ErrorKind::IdpRejected {
                status: 400,
                error: Some("invalid_client".into()),
                description: Some("AADSTS7000215: Invalid client secret".into()),
            },
        );
        assert_eq!(
            e.to_string(),
            "oauth2 source https://idp/token: identity provider answered HTTP 400: invalid_client: AADSTS7000215: Invalid client secret"
        );
        assert!(!e.is_retryable());
        assert_eq!(e.http_status(), 503);
    }

    #[test]
    fn one_line_keeps_last_line_and_bounds_it() {
        assert_eq!(
            one_line("a\nERROR: please run az login\n\n", 100),
            "ERROR: please run az login"
        );
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("a\tb", 10), "a b");
    }
}
