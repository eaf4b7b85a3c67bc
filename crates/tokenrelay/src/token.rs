//! [`Token`]: a secret plus what we know about its lifetime and origin.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::secret::Secret;

/// The longest a token is trusted past its acquisition (24 h), whatever its source states.
///
/// An answer claiming more (an `expires_in` of 10^19 seconds, a JWT `exp` in the year 3000)
/// is treated as expiring 24 h after it was obtained, so it is refreshed after ~23 h 55 min
/// instead of trusted for ever; no identity provider we speak to issues access tokens for
/// longer (Entra at most 24 h, STS 12 h, GitHub OIDC minutes). The cap also keeps every later
/// time computation (refresh time, backoff, the helper's cache file) far from overflow.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tokenrelay::{expiry_after, MAX_TOKEN_LIFETIME};
/// let now = UNIX_EPOCH + Duration::from_secs(1_000);
/// assert_eq!(expiry_after(now, Duration::from_secs(3600)), now + Duration::from_secs(3600));
/// assert_eq!(expiry_after(now, Duration::MAX), now + MAX_TOKEN_LIFETIME);
/// ```
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The expiry of a token that lives `lifetime` from `now` (an `expires_in`, a default TTL),
/// at most [`MAX_TOKEN_LIFETIME`] away. Never overflows.
pub fn expiry_after(now: SystemTime, lifetime: Duration) -> SystemTime {
    now.checked_add(lifetime.min(MAX_TOKEN_LIFETIME))
        .unwrap_or(now)
}

/// `at`, or [`MAX_TOKEN_LIFETIME`] after `now` if that is sooner.
pub fn cap_expiry(now: SystemTime, at: SystemTime) -> SystemTime {
    match now.checked_add(MAX_TOKEN_LIFETIME) {
        Some(limit) => at.min(limit),
        None => at,
    }
}

/// AWS credentials carried by a token from an AWS source (the session token is the
/// token's [`Token::secret`]).
#[derive(Clone, Debug)]
pub struct AwsCredentials {
    /// `AccessKeyId` (not secret on its own).
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: Secret,
    /// `SessionToken`, when the credentials are temporary.
    pub session_token: Option<Secret>,
}

/// A credential obtained from a [`Source`](crate::Source).
///
/// `expires_at` is `None` when nothing stated an expiry and no default lifetime was applied:
/// the [`Cache`](crate::Cache) never stores such a token and asks the source again on every use
/// (the contract of a token callback that answers with a bare string).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tokenrelay::{Secret, Token};
/// let now = SystemTime::now();
/// let t = Token::new(Secret::new("abc"), "static")
///     .acquired_at(now)
///     .expires_at(now + Duration::from_secs(3600));
/// assert!(!t.is_expired(now));
/// assert_eq!(t.remaining(now), Some(Duration::from_secs(3600)));
/// assert_eq!(format!("{t:?}").contains("abc"), false);
/// ```
#[derive(Clone)]
pub struct Token {
    secret: Secret,
    expires_at: Option<SystemTime>,
    acquired_at: SystemTime,
    origin: Arc<str>,
    aws: Option<Arc<AwsCredentials>>,
    refresh_token: Option<Secret>,
}

impl Token {
    /// A token with no known expiry, acquired now, from `origin` (a source description).
    pub fn new(secret: Secret, origin: impl Into<Arc<str>>) -> Self {
        Token {
            secret,
            expires_at: None,
            acquired_at: SystemTime::now(),
            origin: origin.into(),
            aws: None,
            refresh_token: None,
        }
    }

    /// Sets when the token expires.
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets or clears the expiry.
    #[must_use]
    pub fn with_expiry(mut self, at: Option<SystemTime>) -> Self {
        self.expires_at = at;
        self
    }

    /// Caps the expiry at [`MAX_TOKEN_LIFETIME`] after `now` (see [`cap_expiry`]).
    #[must_use]
    pub fn capped_at(mut self, now: SystemTime) -> Self {
        self.expires_at = self.expires_at.map(|at| cap_expiry(now, at));
        self
    }

    /// Sets when the token was obtained (used to compute its lifetime).
    #[must_use]
    pub fn acquired_at(mut self, at: SystemTime) -> Self {
        self.acquired_at = at;
        self
    }

    /// Attaches AWS credentials.
    #[must_use]
    pub fn with_aws(mut self, aws: AwsCredentials) -> Self {
        self.aws = Some(Arc::new(aws));
        self
    }

    /// Attaches the refresh token the source will use next, when its configured input does not
    /// hold it (a rotated token from a variable, or one whose write-back failed), so the
    /// helper's on-disk cache can keep it for the next process; see
    /// [`Source::resume_refresh_token`](crate::Source::resume_refresh_token).
    #[must_use]
    pub fn with_refresh_token(mut self, refresh: Secret) -> Self {
        self.refresh_token = Some(refresh);
        self
    }

    /// The refresh token attached with [`Token::with_refresh_token`], if any.
    pub fn refresh_token(&self) -> Option<&Secret> {
        self.refresh_token.as_ref()
    }

    /// The secret itself.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// When the token expires, if known.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// When the token was obtained.
    pub fn acquired(&self) -> SystemTime {
        self.acquired_at
    }

    /// Where the token came from (a source description, never secret).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// AWS credentials, for tokens from AWS sources.
    pub fn aws(&self) -> Option<&AwsCredentials> {
        self.aws.as_deref()
    }

    /// Whether the token is expired at `now` (a token without expiry never is).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        matches!(self.expires_at, Some(at) if now >= at)
    }

    /// Time left at `now`, `None` when the expiry is unknown (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        self.expires_at
            .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
    }

    /// Full lifetime from acquisition to expiry, when known.
    pub fn lifetime(&self) -> Option<Duration> {
        self.expires_at.map(|at| {
            at.duration_since(self.acquired_at)
                .unwrap_or(Duration::ZERO)
        })
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("secret", &self.secret)
            .field("expires_at", &self.expires_at.map(crate::clock::rfc3339))
            .field("origin", &self.origin)
            .field("aws", &self.aws.as_ref().map(|a| &a.access_key_id))
            .field("refresh_token", &self.refresh_token)
            .finish()
    }
}
