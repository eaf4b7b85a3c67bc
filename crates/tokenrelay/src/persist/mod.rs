//! The credential helper's cache, shared by every `tokenrelay token` process of a user.
//!
//! Clients such as Copilot CLI run their key command before *every* request; this cache makes
//! that cheap. Each entry is a file `<key>.json` in a private directory (mode 0700, files 0600),
//! where `<key>` is an HMAC-SHA-256, under a per-user random key, of everything that shapes the
//! token: the source definition, the scope, and the secret inputs themselves (hashed, never
//! stored), so a rotated secret is never answered with a token minted under the old one.
//!
//! The directory must be the user's own and closed to others (an existing one that is not is
//! refused, never re-moded); no file in it is reached through a symbolic link. Entries whose
//! token expired long ago are pruned whenever an entry is written.
//!
//! Concurrent processes coordinate with a file lock per entry: the one that must acquire takes
//! the exclusive lock and re-checks, so ten parallel calls run the source once. Nobody waits
//! while a valid token exists: a caller that finds the lock taken by a refresh answers with the
//! cached token, and a failed refresh is recorded with its backoff
//! ([`policy::backoff`]) so that later callers answer at once instead of running the source
//! again. An entry also keeps a rotated refresh token its source could not keep itself
//! ([`Token::refresh_token`]), handed back to the source by the next process.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cache::policy;
use crate::clock::{from_unix_millis, unix_millis};
use crate::error::Result;
use crate::secret::Secret;
use crate::source::{acquire_with_timeout, Env, Fingerprint, Source, TokenRequest};
use crate::token::{AwsCredentials, Token};

mod files;
#[cfg(test)]
mod tests;

use files::{io_err, unavailable};

const ORIGIN: &str = "token cache";

/// An entry whose token expired this long ago (6 hours) is removed when another entry is
/// written: a token that expired at 09:00 is gone after the first acquisition after 15:00.
pub const PRUNE_AFTER: Duration = Duration::from_secs(6 * 3600);

/// An entry holding a rotated refresh token is kept this long (90 days) after its last
/// acquisition, the usual inactivity lifetime of a refresh token, since it may be the only copy.
pub const PRUNE_REFRESH_AFTER: Duration = Duration::from_secs(90 * 24 * 3600);

/// A temporary file older than this (10 minutes) is a leftover of a crashed write: pruned.
const STALE_TMP: Duration = Duration::from_secs(600);

/// Where the cache lives when not told: `$TOKENRELAY_CACHE_DIR`, else
/// `$XDG_RUNTIME_DIR/tokenrelay` (tmpfs, per user, gone at logout), else
/// `$XDG_CACHE_HOME/tokenrelay`, else `$HOME/.cache/tokenrelay`.
pub fn default_dir(env: &dyn Env) -> Option<PathBuf> {
    if let Some(d) = env.var("TOKENRELAY_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = env.var("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Some(Path::new(&d).join("tokenrelay"));
    }
    if let Some(d) = env.var("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(Path::new(&d).join("tokenrelay"));
    }
    env.var("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| Path::new(&h).join(".cache").join("tokenrelay"))
}

/// What the caller wants besides a valid token.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lookup {
    /// Drop a token acquired before `not_before` (what a client does after a 401), then acquire.
    pub invalidate_before: Option<SystemTime>,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Served {
    /// A valid cached token, not due for refresh.
    Cache,
    /// Freshly acquired from the source.
    Acquired,
    /// A still-valid cached token because the refresh attempt failed (now, or recently
    /// enough that its backoff has not passed).
    StaleOnRefreshFailure,
    /// A still-valid cached token, due for refresh, while another caller refreshes it.
    RefreshInProgress,
}

/// The on-disk cache.
#[derive(Debug, Clone)]
pub struct SharedCache {
    dir: PathBuf,
    key: Arc<[u8]>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    v: u32,
    token: String,
    origin: String,
    acquired_at_ms: u64,
    expires_at_ms: u64,
    refresh_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aws_access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aws_secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aws_session_token: Option<String>,
    /// A rotated refresh token the source's own input does not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// Consecutive failed refreshes of this token.
    #[serde(default, skip_serializing_if = "is_zero")]
    failures: u32,
    /// While the token is valid, no refresh is tried before this (backoff after a failure).
    #[serde(default, skip_serializing_if = "is_zero")]
    retry_at_ms: u64,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Stored {
    fn valid(&self, now: SystemTime) -> bool {
        now < from_unix_millis(self.expires_at_ms)
    }

    /// How to answer from this entry without running the source, if it can be.
    fn answer(&self, now: SystemTime) -> Option<Served> {
        if !self.valid(now) {
            None
        } else if now < from_unix_millis(self.refresh_at_ms) {
            Some(Served::Cache)
        } else if now < from_unix_millis(self.retry_at_ms) {
            Some(Served::StaleOnRefreshFailure)
        } else {
            None
        }
    }

    /// Whether pruning removes it.
    fn prunable(&self, now: SystemTime) -> bool {
        let (since, keep) = match self.refresh_token {
            Some(_) => (self.acquired_at_ms, PRUNE_REFRESH_AFTER),
            None => (self.expires_at_ms, PRUNE_AFTER),
        };
        now.duration_since(from_unix_millis(since))
            .is_ok_and(|d| d > keep)
    }

    /// Records a failed refresh: no further attempt before the backoff for this failure.
    fn record_failure(&mut self, now: SystemTime) {
        self.failures = self.failures.saturating_add(1);
        let remaining = from_unix_millis(self.expires_at_ms)
            .duration_since(now)
            .unwrap_or(Duration::ZERO);
        let wait = policy::backoff(self.failures - 1, rand::random(), Some(remaining));
        self.retry_at_ms = unix_millis(now + wait);
    }
}

impl SharedCache {
    /// Opens (creating if needed) the cache in `dir`: the directory must be private to the
    /// current user. A missing one is created 0700; an existing one that is a symbolic link,
    /// belongs to another user, or is open to group or others is refused.
    ///
    /// # Errors
    /// When the directory or its key cannot be created or is not private; the message names
    /// the path and the fix.
    pub fn open(dir: &Path) -> Result<Self> {
        files::ensure_private_dir(dir)?;
        let key = load_or_create_key(dir, &dir.join("key"))?;
        Ok(SharedCache {
            dir: dir.to_owned(),
            key: key.into(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry key for `source` and `req`.
    ///
    /// # Errors
    /// When a secret input of the source cannot be read.
    pub fn key_for(&self, source: &dyn Source, req: &TokenRequest) -> Result<String> {
        let mut fp = Fingerprint::new(&self.key);
        fp.add("v", b"1");
        fp.add("provider", req.provider().as_bytes());
        fp.add("scope", req.scope().unwrap_or("").as_bytes());
        source.fingerprint(&mut fp)?;
        Ok(fp.finish())
    }

    /// A valid token for `req` from `source`: from the file when one is valid and not due for
    /// refresh; otherwise acquired (once across processes) and stored. While a valid token is
    /// cached nobody waits on another caller's refresh or on a recently failed source: they
    /// answer with the cached token. An expired token is never answered.
    ///
    /// # Errors
    /// The source's error when no valid token is cached and acquisition failed; a cache error
    /// when an entry or its lock cannot be used safely (a symbolic link, another owner).
    pub async fn get(
        &self,
        source: &dyn Source,
        req: &TokenRequest,
        lookup: Lookup,
    ) -> Result<(Token, Served)> {
        let key = self.key_for(source, req)?;
        let data = self.dir.join(format!("{key}.json"));
        let lock_path = self.dir.join(format!("{key}.lock"));

        // Entries are replaced by rename, so reading needs no lock.
        let mut valid = None;
        if lookup.invalidate_before.is_none() {
            if let Some(s) = read_entry(&data)? {
                let now = SystemTime::now();
                if let Some(served) = s.answer(now) {
                    return Ok((to_token(s), served));
                }
                valid = s.valid(now).then_some(s);
            }
        }

        // With a valid token in hand, do not queue behind a refresh that is under way.
        let lock = match valid {
            None => blocking(move || files::lock_wait(&lock_path)).await?,
            Some(s) => match blocking(move || files::lock_try(&lock_path)).await? {
                Some(lock) => lock,
                None => return Ok((to_token(s), Served::RefreshInProgress)),
            },
        };

        // Re-check under the exclusive lock: another process may have just refreshed.
        let mut cached = read_entry(&data)?;
        if let Some(r) = cached.as_ref().and_then(|s| s.refresh_token.as_deref()) {
            source.resume_refresh_token(Secret::new(r));
        }
        if let (Some(before), Some(s)) = (lookup.invalidate_before, &mut cached) {
            if from_unix_millis(s.acquired_at_ms) < before {
                self.invalidate(&data, s);
            }
        }
        let now = SystemTime::now();
        if let Some(s) = &cached {
            if let Some(served) = s.answer(now) {
                return Ok((to_token(s.clone()), served));
            }
        }
        let result = acquire_with_timeout(source, req).await;
        // The acquisition may have taken up to the source's timeout.
        let now = SystemTime::now();
        let out = match result {
            Ok(token) => {
                if let Some(stored) = to_stored(&token) {
                    self.save(&data, &stored);
                    self.prune();
                }
                Ok((token, Served::Acquired))
            }
            Err(e) => match cached {
                Some(mut s) if s.valid(now) => {
                    s.record_failure(now);
                    tracing::warn!(
                        error = %e,
                        failures = s.failures,
                        "refresh failed; answering with the still-valid cached token until the next attempt"
                    );
                    self.save(&data, &s);
                    Ok((to_token(s), Served::StaleOnRefreshFailure))
                }
                _ => Err(e),
            },
        };
        drop(lock);
        out
    }

    /// Drops an entry's token (after a 401): the file goes, unless it holds a refresh token,
    /// which stays (with the token marked expired) for the next acquisition.
    fn invalidate(&self, data: &Path, s: &mut Stored) {
        s.expires_at_ms = 0;
        s.refresh_at_ms = 0;
        if s.refresh_token.is_some() {
            self.save(data, s);
        } else {
            let _ = fs::remove_file(data);
        }
    }

    /// Writes an entry; a failure is logged (the caller still answers with the token).
    fn save(&self, data: &Path, s: &Stored) {
        let written = serde_json::to_vec(s)
            .map_err(|e| unavailable(format!("cannot encode entry: {e}")))
            .and_then(|json| files::write_atomic(&self.dir, data, &json));
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot store the token in the helper's cache");
        }
    }

    /// Removes entries whose token expired more than [`PRUNE_AFTER`] ago (entries holding a
    /// refresh token: last acquired more than [`PRUNE_REFRESH_AFTER`] ago) with their lock
    /// files, and temporary files left by crashed writes. Returns how many files were removed.
    /// Runs whenever an entry is written.
    pub fn prune(&self) -> usize {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut n = 0;
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            let remove = if name.to_string_lossy().starts_with(files::TMP_PREFIX) {
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > STALE_TMP))
            } else if p.extension().is_some_and(|x| x == "json") {
                read_entry(&p)
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.prunable(now))
            } else {
                false
            };
            if remove && fs::remove_file(&p).is_ok() {
                n += 1;
                // Its lock too, or locks pile up. Should a process be opening it right now,
                // the worst case is one extra acquisition (entries with a refresh token,
                // where that would matter, are kept far longer).
                if p.extension().is_some_and(|x| x == "json")
                    && fs::remove_file(p.with_extension("lock")).is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| unavailable(format!("cache task failed: {e}")))?
}

fn load_or_create_key(dir: &Path, path: &Path) -> Result<Vec<u8>> {
    if let Some(k) = files::read_private(path)? {
        if k.len() >= 32 {
            return Ok(k);
        }
    }
    let key: [u8; 32] = rand::random();
    let tmp = files::write_tmp(dir, &key)
        .map_err(|e| io_err(format!("cannot create a key in {}", dir.display()), e))?;
    // link() fails if another process won the race: then use theirs.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key.to_vec()),
        Err(_) => files::read_private(path)?
            .ok_or_else(|| unavailable(format!("{} vanished", path.display()))),
    }
}

/// The entry at `path`: `None` when missing or unreadable as an entry (it is then replaced);
/// an error when it cannot be used safely (a symbolic link, another owner).
fn read_entry(path: &Path) -> Result<Option<Stored>> {
    let Some(bytes) = files::read_private(path)? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice::<Stored>(&bytes)
        .ok()
        .filter(|s| s.v == 1))
}

fn to_token(s: Stored) -> Token {
    let t = Token::new(Secret::new(s.token), s.origin)
        .acquired_at(from_unix_millis(s.acquired_at_ms))
        .expires_at(from_unix_millis(s.expires_at_ms));
    let t = match s.refresh_token {
        Some(r) => t.with_refresh_token(Secret::new(r)),
        None => t,
    };
    match (s.aws_access_key_id, s.aws_secret_access_key) {
        (Some(id), Some(key)) => t.with_aws(AwsCredentials {
            access_key_id: id,
            secret_access_key: Secret::new(key),
            session_token: s.aws_session_token.map(Secret::new),
        }),
        _ => t,
    }
}

/// The entry for a freshly acquired token; `None` for a token without expiry (never cached).
fn to_stored(token: &Token) -> Option<Stored> {
    let exp = token.expiry()?;
    let refresh = policy::refresh_at(token.acquired(), exp, rand::random());
    let aws = token.aws();
    Some(Stored {
        v: 1,
        token: token.secret().expose().to_owned(),
        origin: token.origin().to_owned(),
        acquired_at_ms: unix_millis(token.acquired()),
        expires_at_ms: unix_millis(exp),
        refresh_at_ms: unix_millis(refresh),
        aws_access_key_id: aws.map(|a| a.access_key_id.clone()),
        aws_secret_access_key: aws.map(|a| a.secret_access_key.expose().to_owned()),
        aws_session_token: aws
            .and_then(|a| a.session_token.as_ref().map(|s| s.expose().to_owned())),
        refresh_token: token.refresh_token().map(|r| r.expose().to_owned()),
        failures: 0,
        retry_at_ms: 0,
    })
}
