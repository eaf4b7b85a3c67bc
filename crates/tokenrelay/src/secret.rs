//! [`Secret`]: a string that never shows itself in `Debug`, `Display` or logs.

use std::fmt;
use std::sync::Arc;

/// A secret value (token, key, client secret) that prints as `[redacted]`.
///
/// The only way to read the bytes is [`Secret::expose`], so every place that touches a secret
/// is one `grep expose` away. `Secret` deliberately implements neither `Serialize` nor
/// `Display` of its contents. Cloning is cheap (reference counted).
///
/// ```
/// use tokenrelay::Secret;
/// let s = Secret::new("sk-very-secret");
/// assert_eq!(format!("{s:?}"), "[redacted]");
/// assert_eq!(s.to_string(), "[redacted]");
/// assert_eq!(s.expose(), "sk-very-secret");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// Returns the secret's contents. Call this only where the value leaves the process
    /// (a header, a request body, stdout of `tokenrelay token`).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length of the secret in bytes (safe to log).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}
