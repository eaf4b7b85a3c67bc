//! The refreshing token cache: one entry per (provider, scope), a lock-free hot path,
//! single-flight acquisition, proactive background refresh, and generation-checked invalidation.
//!
//! ```text
//! get ──► token valid, before refresh_at ─────────────────────► return it (no lock, no I/O)
//!     ├─► token valid, inside refresh window ─► spawn refresh ─► return it
//!     └─► no token / expired ─► join the one in-flight acquisition ─► return its result
//! ```
//!
//! A failed refresh keeps the still-valid token and retries with capped exponential backoff
//! ([`policy::backoff`]); an expired token is never returned.

pub mod policy;

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Notify;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, ErrorKind, Result};
use crate::source::{acquire_with_timeout, Source, TokenRequest};
use crate::token::Token;

/// After a failed acquisition with no valid token to fall back on, callers within this
/// window (1 s) get the same error instead of starting another acquisition, so a burst of
/// requests against a broken source costs one attempt per second, not one per request.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(1);

/// Options for a [`Cache`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheOptions {
    /// Refresh in a background task before expiry (default true). Off, the cache is purely
    /// lazy: a token inside its refresh window is refreshed by the next `get`.
    pub background_refresh: bool,
    /// See [`DEFAULT_NEGATIVE_TTL`].
    pub negative_ttl: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            background_refresh: true,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
        }
    }
}

/// A token handed out by the cache, with the generation to pass to
/// [`CacheEntry::invalidate`] if the upstream rejects it.
#[derive(Clone)]
pub struct CachedToken {
    inner: Arc<Cached>,
}

struct Cached {
    token: Token,
    generation: u64,
    refresh_at: SystemTime,
}

impl CachedToken {
    /// The token.
    pub fn token(&self) -> &Token {
        &self.inner.token
    }

    /// Which acquisition this token came from (increases with each one).
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// When the cache plans to refresh it.
    pub fn refresh_at(&self) -> SystemTime {
        self.inner.refresh_at
    }
}

/// A token lent by [`CacheEntry::lend_with_min_remaining`] for the length of a call.
#[derive(Clone, Copy)]
pub(crate) struct TokenRef<'a> {
    inner: &'a Arc<Cached>,
}

impl TokenRef<'_> {
    /// The token.
    pub(crate) fn token(&self) -> &Token {
        &self.inner.token
    }

    /// Which acquisition this token came from (see [`CachedToken::generation`]).
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// A [`CachedToken`] of it, to keep beyond the call.
    pub(crate) fn to_cached(self) -> CachedToken {
        CachedToken {
            inner: self.inner.clone(),
        }
    }
}

impl fmt::Debug for TokenRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRef")
            .field("token", &self.inner.token)
            .field("generation", &self.inner.generation)
            .finish()
    }
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &self.inner.token)
            .field("generation", &self.inner.generation)
            .finish()
    }
}

/// A point-in-time view of one cache entry, for `/status` and metrics. Holds no secret.
#[derive(Debug, Clone)]
pub struct EntryStatus {
    /// Provider name.
    pub provider: String,
    /// Requested scope.
    pub scope: Option<String>,
    /// Source kind (`command`, `oauth2`, …).
    pub source_kind: &'static str,
    /// Source description.
    pub source: String,
    /// Expiry of the held token, if any.
    pub expires_at: Option<SystemTime>,
    /// When it will be refreshed.
    pub refresh_at: Option<SystemTime>,
    /// Generation of the held token.
    pub generation: Option<u64>,
    /// Whether a valid token is held (or the source's tokens need no caching and the last
    /// acquisition succeeded).
    pub valid: bool,
    /// Successful acquisitions so far.
    pub acquisitions: u64,
    /// Failed acquisitions so far.
    pub failures: u64,
    /// The last failure, when, and its message.
    pub last_error: Option<(SystemTime, String)>,
}

/// What [`CacheEntry::invalidate_at_most_every`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// The token of that generation was dropped: the next `get` acquires a new one.
    Dropped,
    /// That token is no longer held (another caller invalidated or replaced it): the next
    /// `get` answers with its successor, acquiring nothing more for this caller.
    AlreadyReplaced,
    /// That token is still held and was acquired by a forced refresh less than the interval
    /// ago: it is kept, and the caller should pass the rejection on.
    RateLimited,
}

type Flight = Shared<BoxFuture<'static, Result<CachedToken>>>;

struct Entry {
    req: TokenRequest,
    source: Arc<dyn Source>,
    clock: Arc<dyn Clock>,
    options: CacheOptions,
    current: ArcSwapOption<Cached>,
    next_generation: AtomicU64,
    /// The acquisition in flight, with its number (so that only it clears the slot).
    flight: Mutex<Option<(u64, Flight)>>,
    next_flight: AtomicU64,
    acquisitions: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Unix millis before which a background refresh should not start (backoff).
    not_before_ms: AtomicU64,
    last_error: Mutex<Option<(SystemTime, Error)>>,
    last_ok_uncached: AtomicBool,
    refresher_started: AtomicBool,
    wake: Arc<Notify>,
    /// The last invalidation by [`CacheEntry::invalidate_at_most_every`].
    last_forced: Mutex<ForcedRefresh>,
}

/// When the last forced refresh was, and which token it dropped.
#[derive(Debug, Default, Clone, Copy)]
struct ForcedRefresh {
    /// Unix millis; 0: never.
    at_ms: u64,
    generation: u64,
}

/// The token cache for one source. Cheap to clone; clones share entries.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use tokenrelay::source::{CommandSource};
/// use tokenrelay::{Cache, TokenRequest};
///
/// let cache = Cache::new(Arc::new(CommandSource::shell("echo sk-demo")));
/// let entry = cache.entry(TokenRequest::new("openai"));
/// let t = entry.get().await.unwrap();
/// assert_eq!(t.token().secret().expose(), "sk-demo");
/// // the second call is served from memory
/// assert_eq!(entry.get().await.unwrap().generation(), t.generation());
/// # });
/// ```
#[derive(Clone)]
pub struct Cache {
    source: Arc<dyn Source>,
    clock: Arc<dyn Clock>,
    options: CacheOptions,
    entries: Arc<Mutex<HashMap<TokenRequest, CacheEntry>>>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("source", &self.source.describe())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache over `source` with the system clock and default options.
    pub fn new(source: Arc<dyn Source>) -> Self {
        Cache {
            source,
            clock: Arc::new(SystemClock),
            options: CacheOptions::default(),
            entries: Arc::default(),
        }
    }

    /// Uses `clock` for expiry decisions (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the options.
    #[must_use]
    pub fn with_options(mut self, options: CacheOptions) -> Self {
        self.options = options;
        self
    }

    /// The source behind this cache.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    /// The entry for `req`, created on first use. Hold on to it: its `get` takes no lock.
    pub fn entry(&self, req: TokenRequest) -> CacheEntry {
        let mut entries = match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries
            .entry(req.clone())
            .or_insert_with(|| {
                CacheEntry(Arc::new(Entry {
                    req,
                    source: self.source.clone(),
                    clock: self.clock.clone(),
                    options: self.options.clone(),
                    current: ArcSwapOption::empty(),
                    next_generation: AtomicU64::new(1),
                    flight: Mutex::new(None),
                    next_flight: AtomicU64::new(0),
                    acquisitions: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    not_before_ms: AtomicU64::new(0),
                    last_error: Mutex::new(None),
                    last_ok_uncached: AtomicBool::new(false),
                    refresher_started: AtomicBool::new(false),
                    wake: Arc::new(Notify::new()),
                    last_forced: Mutex::new(ForcedRefresh::default()),
                }))
            })
            .clone()
    }

    /// A valid token for `req` (see [`CacheEntry::get`]).
    ///
    /// # Errors
    /// The source's error when no valid token is held and acquiring one failed.
    pub async fn get(&self, req: &TokenRequest) -> Result<CachedToken> {
        self.entry(req.clone()).get().await
    }

    /// Drops the token of `generation` for `req` (see [`CacheEntry::invalidate`]).
    pub fn invalidate(&self, req: &TokenRequest, generation: u64) -> bool {
        self.entry(req.clone()).invalidate(generation)
    }

    /// Status of every entry.
    pub fn status(&self) -> Vec<EntryStatus> {
        let entries = match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries.values().map(CacheEntry::status).collect()
    }
}

/// One (provider, scope) slot of a [`Cache`].
#[derive(Clone)]
pub struct CacheEntry(Arc<Entry>);

impl fmt::Debug for CacheEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheEntry")
            .field("provider", &self.0.req.provider())
            .field("scope", &self.0.req.scope())
            .finish_non_exhaustive()
    }
}

impl CacheEntry {
    /// The held token if it is valid and not due for refresh: no lock, no I/O, no await.
    /// Inside the refresh window it still answers and starts a background refresh.
    pub fn try_get(&self) -> Option<CachedToken> {
        self.try_get_at(self.0.clock.now())
    }

    fn try_get_at(&self, now: SystemTime) -> Option<CachedToken> {
        self.lend_at(now, |c| CachedToken { inner: c.clone() })
    }

    /// Lends the held token to `f` if it is valid and not due for refresh (inside the
    /// refresh window it still lends it and starts a background refresh); `None` otherwise.
    fn lend_at<R>(&self, now: SystemTime, f: impl FnOnce(&Arc<Cached>) -> R) -> Option<R> {
        let guard = self.0.current.load();
        let cached = guard.as_ref()?;
        if now < cached.refresh_at {
            return Some(f(cached));
        }
        if cached.token.is_expired(now) {
            return None;
        }
        let out = f(cached);
        drop(guard);
        self.0.kick_refresh(now);
        Some(out)
    }

    /// A valid token: from memory when one is held, else from the source (one acquisition
    /// shared by all concurrent callers).
    ///
    /// # Errors
    /// When no valid token is held and the acquisition failed.
    pub async fn get(&self) -> Result<CachedToken> {
        if let Some(t) = self.try_get() {
            return Ok(t);
        }
        self.0.clone().acquire_shared(true).await
    }

    /// Like [`get`](Self::get), but a token with less than `min_remaining` left (capped at a
    /// third of its lifetime, [`policy::effective_min_remaining`]) is refreshed first; if that
    /// refresh fails the still-valid token is returned.
    ///
    /// # Errors
    /// When no valid token can be had.
    pub async fn get_with_min_remaining(&self, min_remaining: Duration) -> Result<CachedToken> {
        let now = self.0.clock.now();
        if let Some(t) = self.try_get_at(now) {
            if !self.needs_refresh_first(t.token(), min_remaining, now) {
                return Ok(t);
            }
            return match self.0.clone().acquire_shared(false).await {
                Ok(fresh) => Ok(fresh),
                Err(e) if !t.token().is_expired(self.0.clock.now()) => {
                    tracing::debug!(error = %e, "refresh before a long request failed; using the valid token");
                    Ok(t)
                }
                Err(e) => Err(e),
            };
        }
        self.0.clone().acquire_shared(true).await
    }

    /// What [`get_with_min_remaining`](Self::get_with_min_remaining) answers when it can
    /// answer from memory at once (no acquisition to wait for); `None` otherwise. For callers
    /// that keep the await, and its future, off their fast path.
    pub fn try_get_with_min_remaining(&self, min_remaining: Duration) -> Option<CachedToken> {
        self.lend_with_min_remaining(min_remaining, |t| t.to_cached())
    }

    /// Like [`try_get_with_min_remaining`](Self::try_get_with_min_remaining), but lends the
    /// token to `f` instead of handing out a [`CachedToken`]. No reference count is touched:
    /// callers on several threads (the proxy's workers, on every request) then do not move
    /// the count's cache line between their CPUs.
    pub(crate) fn lend_with_min_remaining<R>(
        &self,
        min_remaining: Duration,
        f: impl FnOnce(TokenRef<'_>) -> R,
    ) -> Option<R> {
        let now = self.0.clock.now();
        self.lend_at(now, |c| {
            (!self.needs_refresh_first(&c.token, min_remaining, now))
                .then(|| f(TokenRef { inner: c }))
        })?
    }

    /// Whether `t` has less than the (capped) minimum remaining lifetime left and a refresh
    /// should be tried before using it.
    fn needs_refresh_first(&self, t: &Token, min_remaining: Duration, now: SystemTime) -> bool {
        let need = policy::effective_min_remaining(min_remaining, t.lifetime());
        // Backing off after a failed refresh: do not hammer the source per request.
        matches!(t.remaining(now), Some(left) if left < need && !self.0.in_backoff(now))
    }

    /// Drops the held token if it is still the one of `generation` (what a 401 answered to),
    /// so that the next `get` acquires a new one. A token another request already replaced is
    /// left alone: a storm of 401s for one token causes one re-acquisition. Returns whether a
    /// token was dropped.
    pub fn invalidate(&self, generation: u64) -> bool {
        let guard = self.0.current.load();
        match guard.as_ref() {
            Some(c) if c.generation == generation => {
                let prev = self.0.current.compare_and_swap(&*guard, None);
                let dropped = matches!(&*prev, Some(p) if p.generation == generation);
                if dropped {
                    tracing::info!(
                        provider = self.0.req.provider(),
                        generation,
                        "token rejected upstream; invalidated"
                    );
                }
                dropped
            }
            _ => false,
        }
    }

    /// Like [`invalidate`](Self::invalidate), but at most once per `min_interval`: an upstream
    /// that rejects every token for a reason that is not the credential (a 403 for a missing
    /// permission) then costs one acquisition per interval, not one per request. A token
    /// already replaced is [`Invalidation::AlreadyReplaced`] whatever the interval, so the
    /// callers caught in a 401 storm all retry with its successor.
    pub fn invalidate_at_most_every(
        &self,
        generation: u64,
        min_interval: Duration,
    ) -> Invalidation {
        // Rare (only on a `retry_on` answer): a lock keeps the decision simple and exact.
        let mut last = self
            .0
            .last_forced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The rejection another caller already acted on: the same event, not a new one. Drop
        // the token here too, in case that caller has not yet, so this one never retries with
        // the rejected token.
        if last.generation == generation {
            drop(last);
            self.invalidate(generation);
            return Invalidation::AlreadyReplaced;
        }
        let held = self.0.current.load();
        if !matches!(held.as_ref(), Some(c) if c.generation == generation) {
            return Invalidation::AlreadyReplaced;
        }
        drop(held);
        let now = crate::clock::unix_millis(self.0.clock.now());
        let interval = u64::try_from(min_interval.as_millis()).unwrap_or(u64::MAX);
        if last.at_ms != 0 && now.saturating_sub(last.at_ms) < interval {
            return Invalidation::RateLimited;
        }
        *last = ForcedRefresh {
            at_ms: now.max(1),
            generation,
        };
        // Dropped under the lock: a concurrent caller of the same rejection then finds it
        // dropped, and exactly one caller reports `Dropped`.
        let dropped = self.invalidate(generation);
        drop(last);
        if dropped {
            Invalidation::Dropped
        } else {
            Invalidation::AlreadyReplaced
        }
    }

    /// Acquires a new token now, whatever is held (single flight).
    ///
    /// # Errors
    /// The source's error.
    pub async fn refresh(&self) -> Result<CachedToken> {
        self.0.clone().acquire_shared(false).await
    }

    /// The request this entry serves.
    pub fn request(&self) -> &TokenRequest {
        &self.0.req
    }

    /// A snapshot for `/status`.
    pub fn status(&self) -> EntryStatus {
        let e = &self.0;
        let now = e.clock.now();
        let cur = e.current.load_full();
        let last_error = e
            .last_error
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|(t, err)| (*t, err.to_string())));
        let valid = match &cur {
            Some(c) => !c.token.is_expired(now),
            None => e.last_ok_uncached.load(Ordering::Relaxed),
        };
        EntryStatus {
            provider: e.req.provider().to_owned(),
            scope: e.req.scope().map(str::to_owned),
            source_kind: e.source.kind(),
            source: e.source.describe(),
            expires_at: cur.as_ref().and_then(|c| c.token.expiry()),
            refresh_at: cur.as_ref().map(|c| c.refresh_at),
            generation: cur.as_ref().map(|c| c.generation),
            valid,
            acquisitions: e.acquisitions.load(Ordering::Relaxed),
            failures: e.failures.load(Ordering::Relaxed),
            last_error,
        }
    }
}

impl Entry {
    fn lock_flight(&self) -> std::sync::MutexGuard<'_, Option<(u64, Flight)>> {
        match self.flight.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Joins the in-flight acquisition or starts one. With `use_negative`, a recent failure
    /// (and no valid token) is answered from memory.
    async fn acquire_shared(self: Arc<Self>, use_negative: bool) -> Result<CachedToken> {
        let flight = {
            let mut slot = self.lock_flight();
            if let Some((_, f)) = slot.as_ref() {
                f.clone()
            } else {
                // Re-check under the lock: another caller may have just stored a token.
                let now = self.clock.now();
                if use_negative {
                    if let Some(c) = self.current.load_full() {
                        if !c.token.is_expired(now) {
                            return Ok(CachedToken { inner: c });
                        }
                    }
                    if let Ok(last) = self.last_error.lock() {
                        if let Some((at, err)) = last.as_ref() {
                            let fresh = now.duration_since(*at).unwrap_or(Duration::ZERO)
                                < self.options.negative_ttl;
                            if fresh && self.consecutive_failures.load(Ordering::Relaxed) > 0 {
                                return Err(err.clone());
                            }
                        }
                    }
                }
                let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                let me = self.clone();
                let task = tokio::spawn(async move { me.acquire_once(id).await });
                let me = self.clone();
                let fut: BoxFuture<'static, Result<CachedToken>> = async move {
                    task.await.unwrap_or_else(|e| {
                        // Cancelled before its first poll (its runtime shut down), the task
                        // never cleared the slot: do it here, or no `get` would try again.
                        me.clear_flight(id);
                        Err(Error::new(
                            "cache",
                            ErrorKind::Unavailable(format!("token acquisition task failed: {e}")),
                        ))
                    })
                }
                .boxed();
                let shared = fut.shared();
                *slot = Some((id, shared.clone()));
                shared
            }
        };
        flight.await
    }

    /// One acquisition: runs the source, stores the result, clears the in-flight slot.
    ///
    /// A source that panics counts as a failed acquisition ("token acquisition panicked"): it
    /// is recorded and backed off like any other, and the slot is cleared whatever happens
    /// (a guard does it on unwind too), so the next `get` asks the source again.
    async fn acquire_once(self: Arc<Self>, id: u64) -> Result<CachedToken> {
        let _clear = ClearFlight(&self, id);
        let result = AssertUnwindSafe(acquire_with_timeout(self.source.as_ref(), &self.req))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    self.source.describe(),
                    ErrorKind::Unavailable("token acquisition panicked".into()),
                ))
            });
        let now = self.clock.now();
        match result {
            Ok(token) => {
                let token = token.capped_at(now);
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                let refresh_at = match token.expiry() {
                    Some(exp) => {
                        let planned = policy::refresh_at(token.acquired(), exp, rand::random());
                        match self.source.recheck_interval() {
                            Some(every) => planned.min(now + every),
                            None => planned,
                        }
                    }
                    None => now,
                };
                let cached = Arc::new(Cached {
                    token,
                    generation,
                    refresh_at,
                });
                self.acquisitions.fetch_add(1, Ordering::Relaxed);
                self.consecutive_failures.store(0, Ordering::Relaxed);
                self.not_before_ms.store(0, Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = None;
                }
                if cached.token.expiry().is_some() {
                    self.current.store(Some(cached.clone()));
                    self.last_ok_uncached.store(false, Ordering::Relaxed);
                    self.ensure_refresher();
                    self.wake.notify_one();
                } else {
                    self.last_ok_uncached.store(true, Ordering::Relaxed);
                }
                // Once per token lifetime: worth an info line (a source whose tokens have no
                // expiry is asked on every use, so that stays at debug).
                if let Some(left) = cached.token.remaining(now) {
                    tracing::info!(
                        provider = self.req.provider(),
                        source = self.source.kind(),
                        generation,
                        expires_in_s = left.as_secs(),
                        refresh_in_s = cached
                            .refresh_at
                            .duration_since(now)
                            .map(|d| d.as_secs())
                            .unwrap_or(0),
                        "token acquired"
                    );
                }
                tracing::debug!(
                    provider = self.req.provider(),
                    source = self.source.kind(),
                    generation,
                    cached = cached.token.expiry().is_some(),
                    "token acquired"
                );
                Ok(CachedToken { inner: cached })
            }
            Err(err) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let attempt = self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                let remaining = self
                    .current
                    .load()
                    .as_ref()
                    .and_then(|c| c.token.remaining(now))
                    .filter(|r| !r.is_zero());
                let delay = policy::backoff(attempt, rand::random(), remaining);
                self.not_before_ms
                    .store(crate::clock::unix_millis(now + delay), Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some((now, err.clone()));
                }
                tracing::warn!(
                    provider = self.req.provider(),
                    error = %err,
                    retry_in_ms = delay.as_millis() as u64,
                    still_valid = remaining.is_some(),
                    "token acquisition failed"
                );
                self.wake.notify_one();
                Err(err)
            }
        }
    }

    /// Empties the in-flight slot if it still holds acquisition `id`.
    fn clear_flight(&self, id: u64) {
        let mut slot = self.lock_flight();
        if slot.as_ref().is_some_and(|(held, _)| *held == id) {
            *slot = None;
        }
    }

    /// Whether a failed acquisition's backoff is still running at `now`.
    fn in_backoff(&self, now: SystemTime) -> bool {
        crate::clock::unix_millis(now) < self.not_before_ms.load(Ordering::Relaxed)
    }

    /// Starts a refresh in the background if none is running and we are not backing off.
    fn kick_refresh(self: &Arc<Self>, now: SystemTime) {
        if self.in_backoff(now) {
            return;
        }
        if self.lock_flight().is_some() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.acquire_shared(false).await;
        });
    }

    /// Starts the background refresher for this entry (once).
    fn ensure_refresher(self: &Arc<Self>) {
        if !self.options.background_refresh
            || self.refresher_started.swap(true, Ordering::AcqRel)
            || tokio::runtime::Handle::try_current().is_err()
        {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(refresher(weak, self.wake.clone()));
    }

    /// When the refresher should next wake: the refresh time, or the end of the backoff.
    fn next_wake(&self) -> Option<SystemTime> {
        let backoff = crate::clock::from_unix_millis(self.not_before_ms.load(Ordering::Relaxed));
        let cur = self.current.load();
        match cur.as_ref() {
            Some(c) => Some(c.refresh_at.max(backoff)),
            // Nothing held (invalidated, or expired and dropped): retry after the backoff.
            None if self.consecutive_failures.load(Ordering::Relaxed) > 0 => Some(backoff),
            None => None,
        }
    }
}

/// Empties an entry's in-flight slot of acquisition number `.1` when dropped: at the end of
/// the acquisition, and also if it unwinds or its task is cancelled, so that a later `get`
/// starts a new one.
struct ClearFlight<'a>(&'a Entry, u64);

impl Drop for ClearFlight<'_> {
    fn drop(&mut self) {
        self.0.clear_flight(self.1);
    }
}

/// The background loop: sleeps until the held token's refresh time, refreshes, and after a
/// failure retries on the backoff schedule. Holds the entry only weakly; ends when it is dropped.
async fn refresher(weak: Weak<Entry>, wake: Arc<Notify>) {
    loop {
        let sleep = {
            let Some(entry) = weak.upgrade() else { return };
            entry.next_wake().map(|at| entry.clock.sleep_until(at))
        };
        let notified = wake.notified();
        match sleep {
            Some(sleep) => {
                tokio::select! {
                    () = sleep => {}
                    _ = notified => continue,
                }
            }
            None => {
                notified.await;
                continue;
            }
        }
        let Some(entry) = weak.upgrade() else { return };
        let due = entry.next_wake().is_some_and(|at| entry.clock.now() >= at);
        if due {
            let _ = entry.acquire_shared(false).await;
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Lets the refresher notice that the entry is gone.
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests;
