//! The credential helper's cache, shared by every `tokenrelay token` process of a user.
//!
//! Clients such as Copilot CLI run their key command before *every* request; this cache makes
//! that cheap. Each entry is a file `<key>.json` in a private directory (mode 0700, files 0600),
//! where `<key>` is an HMAC-SHA-256, under a per-user random key, of everything that shapes the
//! token: the source definition, the scope, and the secret inputs themselves (hashed, never
//! stored), so a rotated secret is never answered with a token minted under the old one.
//!
//! Concurrent processes coordinate with a file lock per entry: readers take a shared lock;
//! the one that must acquire takes an exclusive lock and re-checks, so ten parallel calls run
//! the source once.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::cache::policy;
use crate::clock::{from_unix_millis, unix_millis};
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::source::{acquire_with_timeout, Env, Fingerprint, Source, TokenRequest};
use crate::token::{AwsCredentials, Token};

const ORIGIN: &str = "token cache";

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
pub enum Served {
    /// A valid cached token, not due for refresh.
    Cache,
    /// Freshly acquired from the source.
    Acquired,
    /// A still-valid cached token because the refresh attempt failed.
    StaleOnRefreshFailure,
}

/// The on-disk cache.
#[derive(Debug, Clone)]
pub struct SharedCache {
    dir: PathBuf,
    key: Arc<[u8]>,
}

#[derive(Serialize, Deserialize)]
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
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::new(ORIGIN, ErrorKind::Unavailable(format!("{what}: {e}")))
}

impl SharedCache {
    /// Opens (creating if needed) the cache in `dir`: the directory must be private to the
    /// current user (created 0700; an existing one readable by others is refused).
    ///
    /// # Errors
    /// When the directory or its key cannot be created or is not private.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)
            .map_err(|e| io_err(format!("cannot create {}", dir.display()), e))?;
        let meta =
            fs::metadata(dir).map_err(|e| io_err(format!("cannot stat {}", dir.display()), e))?;
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(Error::new(
                ORIGIN,
                ErrorKind::Unavailable(format!(
                    "{} belongs to another user; refusing to keep tokens there",
                    dir.display()
                )),
            ));
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
                io_err(
                    format!("cannot make {} private (chmod 700)", dir.display()),
                    e,
                )
            })?;
        }
        let key = load_or_create_key(&dir.join("key"))?;
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
    /// refresh; otherwise acquired (once across processes) and stored. Inside the refresh
    /// window a failed refresh still answers with the valid cached token; an expired token is
    /// never answered.
    ///
    /// # Errors
    /// The source's error when no valid token is cached and acquisition failed.
    pub async fn get(
        &self,
        source: &dyn Source,
        req: &TokenRequest,
        lookup: Lookup,
    ) -> Result<(Token, Served)> {
        let key = self.key_for(source, req)?;
        let data = self.dir.join(format!("{key}.json"));
        let lock_path = self.dir.join(format!("{key}.lock"));

        if lookup.invalidate_before.is_none() {
            let (d, l) = (data.clone(), lock_path.clone());
            let seen = blocking(move || {
                let lock = open_lock(&l)?;
                lock.lock_shared()
                    .map_err(|e| io_err("cannot lock the cache", e))?;
                Ok(read_entry(&d))
            })
            .await?;
            if let Some(s) = seen {
                let now = SystemTime::now();
                if now < from_unix_millis(s.refresh_at_ms) {
                    return Ok((to_token(s), Served::Cache));
                }
            }
        }

        let l = lock_path.clone();
        let lock = blocking(move || {
            let lock = open_lock(&l)?;
            lock.lock()
                .map_err(|e| io_err("cannot lock the cache", e))?;
            Ok(lock)
        })
        .await?;
        // Re-check under the exclusive lock: another process may have just refreshed.
        let mut cached = read_entry(&data);
        if let (Some(before), Some(s)) = (lookup.invalidate_before, &cached) {
            if from_unix_millis(s.acquired_at_ms) < before {
                cached = None;
                let _ = fs::remove_file(&data);
            }
        }
        let now = SystemTime::now();
        let still_valid = cached
            .as_ref()
            .is_some_and(|s| now < from_unix_millis(s.expires_at_ms));
        if let Some(s) = &cached {
            if now < from_unix_millis(s.refresh_at_ms) {
                let t = to_token(clone_stored(s));
                drop(lock);
                return Ok((t, Served::Cache));
            }
        }
        let result = acquire_with_timeout(source, req).await;
        let out = match result {
            Ok(token) => {
                if let Some(exp) = token.expiry() {
                    let refresh = policy::refresh_at(token.acquired(), exp, rand::random());
                    write_entry(&self.dir, &data, &token, refresh)?;
                }
                Ok((token, Served::Acquired))
            }
            Err(e) => match cached {
                Some(s) if still_valid => {
                    tracing::warn!(error = %e, "refresh failed; answering with the still-valid cached token");
                    Ok((to_token(s), Served::StaleOnRefreshFailure))
                }
                _ => Err(e),
            },
        };
        drop(lock);
        out
    }

    /// Removes every cached entry whose token has expired. Returns how many were removed.
    pub fn prune(&self) -> usize {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut n = 0;
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Some(s) = read_entry(&p) {
                    if now >= from_unix_millis(s.expires_at_ms) && fs::remove_file(&p).is_ok() {
                        n += 1;
                    }
                }
            }
        }
        n
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Error::new(
            ORIGIN,
            ErrorKind::Unavailable(format!("cache task failed: {e}")),
        )
    })?
}

fn open_lock(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(format!("cannot open {}", path.display()), e))
}

fn load_or_create_key(path: &Path) -> Result<Vec<u8>> {
    if let Ok(mut f) = File::open(path) {
        let mut k = Vec::new();
        f.read_to_end(&mut k)
            .map_err(|e| io_err(format!("cannot read {}", path.display()), e))?;
        if k.len() >= 32 {
            return Ok(k);
        }
    }
    let key: [u8; 32] = rand::random();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(format!("cannot create {}", tmp.display()), e))?;
        f.write_all(&key)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err(format!("cannot write {}", tmp.display()), e))?;
    }
    // link() fails if another process won the race: then use theirs.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key.to_vec()),
        Err(_) => {
            let mut k = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut k))
                .map_err(|e| io_err(format!("cannot read {}", path.display()), e))?;
            Ok(k)
        }
    }
}

fn read_entry(path: &Path) -> Option<Stored> {
    let text = fs::read_to_string(path).ok()?;
    let s: Stored = serde_json::from_str(&text).ok()?;
    (s.v == 1).then_some(s)
}

fn clone_stored(s: &Stored) -> Stored {
    Stored {
        v: s.v,
        token: s.token.clone(),
        origin: s.origin.clone(),
        acquired_at_ms: s.acquired_at_ms,
        expires_at_ms: s.expires_at_ms,
        refresh_at_ms: s.refresh_at_ms,
        aws_access_key_id: s.aws_access_key_id.clone(),
        aws_secret_access_key: s.aws_secret_access_key.clone(),
        aws_session_token: s.aws_session_token.clone(),
    }
}

fn to_token(s: Stored) -> Token {
    let t = Token::new(Secret::new(s.token), s.origin)
        .acquired_at(from_unix_millis(s.acquired_at_ms))
        .expires_at(from_unix_millis(s.expires_at_ms));
    match (s.aws_access_key_id, s.aws_secret_access_key) {
        (Some(id), Some(key)) => t.with_aws(AwsCredentials {
            access_key_id: id,
            secret_access_key: Secret::new(key),
            session_token: s.aws_session_token.map(Secret::new),
        }),
        _ => t,
    }
}

fn write_entry(dir: &Path, path: &Path, token: &Token, refresh: SystemTime) -> Result<()> {
    let Some(exp) = token.expiry() else {
        return Ok(());
    };
    let aws = token.aws();
    let stored = Stored {
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
    };
    let json = serde_json::to_vec(&stored).map_err(|e| {
        Error::new(
            ORIGIN,
            ErrorKind::Unavailable(format!("cannot encode entry: {e}")),
        )
    })?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(format!("cannot write {}", path.display()), e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{CommandSource, MapEnv};
    use std::time::Duration;

    #[test]
    fn default_dir_order() {
        let env = MapEnv::from_pairs([("HOME", "/h"), ("XDG_RUNTIME_DIR", "/run/user/1")]);
        assert_eq!(
            default_dir(&env),
            Some(PathBuf::from("/run/user/1/tokenrelay"))
        );
        let env = MapEnv::from_pairs([("HOME", "/h")]);
        assert_eq!(
            default_dir(&env),
            Some(PathBuf::from("/h/.cache/tokenrelay"))
        );
        let env = MapEnv::from_pairs([("HOME", "/h"), ("TOKENRELAY_CACHE_DIR", "/c")]);
        assert_eq!(default_dir(&env), Some(PathBuf::from("/c")));
        assert_eq!(default_dir(&MapEnv::default()), None);
    }

    #[tokio::test]
    async fn files_are_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("c");
        let cache = SharedCache::open(&cache_dir).unwrap();
        let count = dir.path().join("count");
        let src = CommandSource::shell(format!(
            "echo x >> {}; echo tok-$(wc -l < {})",
            count.display(),
            count.display()
        ));
        let req = TokenRequest::new("p");
        let (t1, s1) = cache.get(&src, &req, Lookup::default()).await.unwrap();
        let (t2, s2) = cache.get(&src, &req, Lookup::default()).await.unwrap();
        assert_eq!((s1, s2), (Served::Acquired, Served::Cache));
        assert_eq!(t1.secret().expose(), t2.secret().expose());
        assert_eq!(fs::metadata(&cache_dir).unwrap().mode() & 0o777, 0o700);
        for e in fs::read_dir(&cache_dir).unwrap().flatten() {
            assert_eq!(
                e.metadata().unwrap().mode() & 0o777,
                0o600,
                "{:?}",
                e.path()
            );
        }
        // invalidation drops a token acquired before the given instant
        let (t3, s3) = cache
            .get(
                &src,
                &req,
                Lookup {
                    invalidate_before: Some(SystemTime::now()),
                },
            )
            .await
            .unwrap();
        assert_eq!(s3, Served::Acquired);
        assert_ne!(t3.secret().expose(), t1.secret().expose());
    }

    #[tokio::test]
    async fn different_definitions_get_different_keys() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SharedCache::open(dir.path()).unwrap();
        let req = TokenRequest::new("p");
        let a = cache
            .key_for(&CommandSource::shell("echo a"), &req)
            .unwrap();
        let b = cache
            .key_for(&CommandSource::shell("echo b"), &req)
            .unwrap();
        let a2 = cache
            .key_for(
                &CommandSource::shell("echo a"),
                &req.clone().with_scope(Some("s")),
            )
            .unwrap();
        assert_ne!(a, b);
        assert_ne!(a, a2);
        // the same cache dir (same key) gives stable keys
        let again = SharedCache::open(dir.path()).unwrap();
        assert_eq!(
            again
                .key_for(&CommandSource::shell("echo a"), &req)
                .unwrap(),
            a
        );
    }

    #[tokio::test]
    async fn refresh_failure_serves_valid_cached_token_but_never_expired() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SharedCache::open(dir.path()).unwrap();
        let flag = dir.path().join("fail");
        // a 3 s token: refresh window is 1 s
        let src = CommandSource::shell(format!(
            "if [ -e {} ]; then echo broken >&2; exit 1; fi; echo tok",
            flag.display()
        ))
        .with_default_ttl(Duration::from_secs(3));
        let req = TokenRequest::new("p");
        cache.get(&src, &req, Lookup::default()).await.unwrap();
        fs::write(&flag, "").unwrap();
        tokio::time::sleep(Duration::from_millis(2_200)).await;
        let (t, served) = cache.get(&src, &req, Lookup::default()).await.unwrap();
        assert_eq!(served, Served::StaleOnRefreshFailure);
        assert_eq!(t.secret().expose(), "tok");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let err = cache.get(&src, &req, Lookup::default()).await.unwrap_err();
        assert!(err.to_string().contains("broken"), "{err}");
    }
}
