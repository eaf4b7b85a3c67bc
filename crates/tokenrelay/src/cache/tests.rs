use super::*;
use crate::clock::ManualClock;
use crate::secret::Secret;
use async_trait::async_trait;
use std::sync::atomic::AtomicUsize;
use std::time::UNIX_EPOCH;

/// A source whose tokens live `lifetime` on the given clock, counting acquisitions, and that
/// can be told to fail.
#[derive(Debug)]
struct Counting {
    clock: ManualClock,
    lifetime: Duration,
    calls: AtomicUsize,
    fail: AtomicBool,
    delay: Duration,
}

impl Counting {
    fn new(clock: &ManualClock, lifetime: Duration) -> Arc<Self> {
        Arc::new(Counting {
            clock: clock.clone(),
            lifetime,
            calls: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            delay: Duration::from_millis(20),
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Source for Counting {
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.delay).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::new(
                "counting",
                ErrorKind::Unavailable("told to fail".into()),
            ));
        }
        let now = self.clock.now();
        Ok(Token::new(Secret::new(format!("tok-{n}")), "counting")
            .acquired_at(now)
            .expires_at(now + self.lifetime))
    }
    fn kind(&self) -> &'static str {
        "counting"
    }
    fn describe(&self) -> String {
        "counting".into()
    }
}

fn lazy() -> CacheOptions {
    CacheOptions {
        background_refresh: false,
        negative_ttl: Duration::ZERO,
    }
}

fn setup(lifetime: Duration) -> (ManualClock, Arc<Counting>, CacheEntry) {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let src = Counting::new(&clock, lifetime);
    let cache = Cache::new(src.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_options(lazy());
    let entry = cache.entry(TokenRequest::new("p"));
    (clock, src, entry)
}

/// Waits (at most 5 s of real time, for a loaded CI machine) until a background refresh has
/// done what `done` checks.
async fn settle(done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn secret(t: &CachedToken) -> String {
    t.token().secret().expose().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_at_expiry() {
    let (clock, src, entry) = setup(Duration::from_secs(60));
    entry.get().await.unwrap();
    assert_eq!(src.calls(), 1);
    clock.advance(Duration::from_secs(61));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let e = entry.clone();
        tasks.push(tokio::spawn(
            async move { e.get().await.map(|t| secret(&t)) },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "tok-2");
    }
    assert_eq!(
        src.calls(),
        2,
        "1000 concurrent gets at expiry → exactly one acquisition"
    );
}

#[tokio::test]
async fn hot_path_does_not_acquire() {
    let (clock, src, entry) = setup(Duration::from_secs(3600));
    let first = entry.get().await.unwrap();
    for _ in 0..100 {
        clock.advance(Duration::from_secs(1));
        assert_eq!(entry.try_get().unwrap().generation(), first.generation());
    }
    assert_eq!(src.calls(), 1);
}

#[tokio::test]
async fn refresh_window_triggers_background_refresh_and_serves_old_token() {
    let (clock, src, entry) = setup(Duration::from_secs(9));
    let first = entry.get().await.unwrap();
    assert_eq!(secret(&first), "tok-1");
    // 9 s lifetime → refresh window 3 s (+≤10% jitter): at 6.5 s we are inside it.
    clock.advance(Duration::from_millis(6_500));
    let t = entry.get().await.unwrap();
    assert_eq!(
        secret(&t),
        "tok-1",
        "the valid token is served while refreshing"
    );
    settle(|| src.calls() == 2 && entry.try_get().is_some_and(|t| secret(&t) == "tok-2")).await;
    assert_eq!(src.calls(), 2);
    assert_eq!(secret(&entry.get().await.unwrap()), "tok-2");
}

#[tokio::test]
async fn failed_refresh_keeps_serving_valid_token() {
    let (clock, src, entry) = setup(Duration::from_secs(9));
    entry.get().await.unwrap();
    src.fail.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_millis(6_500));
    assert_eq!(secret(&entry.get().await.unwrap()), "tok-1");
    settle(|| entry.status().failures == 1).await;
    assert_eq!(src.calls(), 2);
    // Still valid: still served, even though the refresh failed.
    assert_eq!(secret(&entry.get().await.unwrap()), "tok-1");
    let st = entry.status();
    assert_eq!(st.failures, 1);
    assert!(st.valid);
    assert!(st.last_error.unwrap().1.contains("told to fail"));
    // An explicit refresh before a long request falls back to the valid token too.
    let t = entry
        .get_with_min_remaining(Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(secret(&t), "tok-1");
}

#[tokio::test]
async fn failure_while_expired_is_an_error_never_a_stale_token() {
    let (clock, src, entry) = setup(Duration::from_secs(9));
    entry.get().await.unwrap();
    src.fail.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(10));
    assert!(entry.try_get().is_none());
    let err = entry.get().await.unwrap_err();
    assert!(err.to_string().contains("told to fail"), "{err}");
    assert!(!entry.status().valid);
    // Recovery once the source works again.
    src.fail.store(false, Ordering::SeqCst);
    assert_eq!(secret(&entry.get().await.unwrap()), "tok-3");
}

#[tokio::test]
async fn negative_ttl_answers_bursts_from_memory() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let src = Counting::new(&clock, Duration::from_secs(60));
    src.fail.store(true, Ordering::SeqCst);
    let cache = Cache::new(src.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_options(CacheOptions {
            background_refresh: false,
            negative_ttl: Duration::from_secs(1),
        });
    let entry = cache.entry(TokenRequest::new("p"));
    for _ in 0..10 {
        assert!(entry.get().await.is_err());
    }
    assert_eq!(src.calls(), 1);
    clock.advance(Duration::from_secs(2));
    assert!(entry.get().await.is_err());
    assert_eq!(src.calls(), 2);
}

#[tokio::test]
async fn invalidate_by_generation() {
    let (_clock, src, entry) = setup(Duration::from_secs(3600));
    let g1 = entry.get().await.unwrap().generation();
    assert!(entry.invalidate(g1));
    let t2 = entry.get().await.unwrap();
    assert_eq!(secret(&t2), "tok-2");
    // A late 401 for the old generation does not drop the new token.
    assert!(!entry.invalidate(g1));
    assert_eq!(entry.get().await.unwrap().generation(), t2.generation());
    assert_eq!(src.calls(), 2);
}

#[tokio::test]
async fn forced_invalidations_are_rate_limited_but_replaced_tokens_are_not() {
    let (clock, src, entry) = setup(Duration::from_secs(3600));
    let every = Duration::from_secs(5);
    let g1 = entry.get().await.unwrap().generation();
    assert_eq!(
        entry.invalidate_at_most_every(g1, every),
        Invalidation::Dropped
    );
    // A late rejection of the dropped token: its successor is used, whatever the interval.
    assert_eq!(
        entry.invalidate_at_most_every(g1, every),
        Invalidation::AlreadyReplaced
    );
    let g2 = entry.get().await.unwrap().generation();
    // The successor rejected within the interval: kept, no acquisition.
    clock.advance(Duration::from_secs(4));
    assert_eq!(
        entry.invalidate_at_most_every(g2, every),
        Invalidation::RateLimited
    );
    assert_eq!(entry.get().await.unwrap().generation(), g2);
    assert_eq!(src.calls(), 2);
    // After the interval it may be dropped again.
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        entry.invalidate_at_most_every(g2, every),
        Invalidation::Dropped
    );
    assert_ne!(entry.get().await.unwrap().generation(), g2);
    assert_eq!(src.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rejections_of_one_token_are_one_forced_refresh_never_rate_limited() {
    // The soak found this: two requests rejected with the same token at the same moment; the
    // second saw the first's timestamp and was rate limited (its 401 reached the client).
    for _ in 0..20 {
        let (clock, _src, entry) = setup(Duration::from_secs(3600));
        let every = Duration::from_secs(5);
        let g1 = entry.get().await.unwrap().generation();
        assert_eq!(
            entry.invalidate_at_most_every(g1, every),
            Invalidation::Dropped
        );
        clock.advance(Duration::from_secs(6));
        let g2 = entry.get().await.unwrap().generation();
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (e, b) = (entry.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                b.wait().await;
                e.invalidate_at_most_every(g2, every)
            }));
        }
        let mut dropped = 0;
        for t in tasks {
            match t.await.unwrap() {
                Invalidation::Dropped => dropped += 1,
                Invalidation::AlreadyReplaced => {}
                Invalidation::RateLimited => {
                    panic!("a caller of the same rejection was rate limited")
                }
            }
        }
        assert_eq!(dropped, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_401s_causes_one_reacquisition() {
    let (_clock, src, entry) = setup(Duration::from_secs(3600));
    let g1 = entry.get().await.unwrap().generation();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let e = entry.clone();
        tasks.push(tokio::spawn(async move {
            e.invalidate(g1);
            e.get().await.map(|t| t.generation())
        }));
    }
    for t in tasks {
        assert_ne!(t.await.unwrap().unwrap(), g1);
    }
    assert_eq!(src.calls(), 2);
}

#[tokio::test]
async fn min_remaining_refreshes_first() {
    let (clock, src, entry) = setup(Duration::from_secs(600));
    entry.get().await.unwrap();
    // 600 s lifetime: refresh window 200 s is capped to… min(300, 200) = 200 s; min_remaining
    // 120 s. At 500 s, 100 s remain < 120 s → refresh before answering.
    clock.advance(Duration::from_secs(500));
    let t = entry
        .get_with_min_remaining(Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(secret(&t), "tok-2");
    assert_eq!(src.calls(), 2);
}

#[tokio::test]
async fn the_sync_fast_path_answers_only_what_needs_no_acquisition() {
    let (clock, src, entry) = setup(Duration::from_secs(600));
    let min = Duration::from_secs(120);
    assert!(
        entry.try_get_with_min_remaining(min).is_none(),
        "nothing held"
    );
    entry.get().await.unwrap();
    let t = entry.try_get_with_min_remaining(min).unwrap();
    assert_eq!(secret(&t), "tok-1");
    // 100 s left < 120 s: the caller must wait for a refresh, so no answer from memory.
    clock.advance(Duration::from_secs(500));
    assert!(entry.try_get_with_min_remaining(min).is_none());
    assert_eq!(src.calls(), 1, "the fast path runs no acquisition itself");
}

#[tokio::test]
async fn lending_answers_like_the_fast_path_without_taking_a_reference() {
    let (clock, src, entry) = setup(Duration::from_secs(600));
    let min = Duration::from_secs(120);
    assert!(entry.lend_with_min_remaining(min, |_| ()).is_none());
    let held = entry.get().await.unwrap();
    let before = Arc::strong_count(&held.inner);
    let (text, generation, during) = entry
        .lend_with_min_remaining(min, |t| {
            (
                t.token().secret().expose().to_owned(),
                t.generation(),
                Arc::strong_count(t.inner),
            )
        })
        .unwrap();
    assert_eq!(text, "tok-1");
    assert_eq!(generation, held.generation());
    assert_eq!(during, before, "lending clones no Arc");
    assert_eq!(Arc::strong_count(&held.inner), before);
    // 100 s left < 120 s: nothing is lent, as the fast path answers nothing.
    clock.advance(Duration::from_secs(500));
    assert!(entry.lend_with_min_remaining(min, |_| ()).is_none());
    assert_eq!(src.calls(), 1);
}

#[tokio::test]
async fn tokens_without_expiry_are_not_cached() {
    #[derive(Debug)]
    struct Bare(AtomicUsize);
    #[async_trait]
    impl Source for Bare {
        async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Token::new(Secret::new(format!("bare-{n}")), "bare"))
        }
        fn kind(&self) -> &'static str {
            "bare"
        }
        fn describe(&self) -> String {
            "bare".into()
        }
    }
    let src = Arc::new(Bare(AtomicUsize::new(0)));
    let entry = Cache::new(src.clone()).entry(TokenRequest::new("p"));
    assert_eq!(secret(&entry.get().await.unwrap()), "bare-0");
    assert_eq!(secret(&entry.get().await.unwrap()), "bare-1");
    assert!(entry.status().valid);
}

#[tokio::test]
async fn entries_are_partitioned_by_provider_and_scope() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let src = Counting::new(&clock, Duration::from_secs(3600));
    let cache = Cache::new(src.clone())
        .with_clock(Arc::new(clock))
        .with_options(lazy());
    let a = cache.entry(TokenRequest::new("a").with_scope(Some("s1")));
    let b = cache.entry(TokenRequest::new("a").with_scope(Some("s2")));
    let c = cache.entry(TokenRequest::new("c"));
    let ga = a.get().await.unwrap().generation();
    b.get().await.unwrap();
    c.get().await.unwrap();
    assert_eq!(src.calls(), 3);
    // invalidating one never touches another
    assert!(a.invalidate(ga));
    assert!(b.try_get().is_some());
    assert!(c.try_get().is_some());
    assert_eq!(cache.status().len(), 3);
}

#[tokio::test]
async fn background_refresher_renews_without_traffic() {
    // Real time: a 1.5 s token is refreshed by the background task after ~1 s.
    let src = Counting::new(&ManualClock::new(UNIX_EPOCH), Duration::from_secs(0));
    drop(src);
    #[derive(Debug)]
    struct Short(AtomicUsize);
    #[async_trait]
    impl Source for Short {
        async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            let now = SystemTime::now();
            Ok(Token::new(Secret::new(format!("s-{n}")), "short")
                .acquired_at(now)
                .expires_at(now + Duration::from_millis(1500)))
        }
        fn kind(&self) -> &'static str {
            "short"
        }
        fn describe(&self) -> String {
            "short".into()
        }
    }
    let src = Arc::new(Short(AtomicUsize::new(0)));
    let entry = Cache::new(src.clone()).entry(TokenRequest::new("p"));
    entry.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    let n = src.0.load(Ordering::SeqCst);
    assert!(
        (3..=5).contains(&n),
        "expected ~3 background refreshes in 3.3 s, got {n}"
    );
    assert!(
        entry.try_get().is_some(),
        "a valid token is held without any traffic"
    );
}

#[tokio::test]
async fn min_remaining_respects_backoff_after_a_failed_refresh() {
    let (clock, src, entry) = setup(Duration::from_secs(600));
    entry.get().await.unwrap();
    src.fail.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(500));
    // first request tries to refresh, fails, falls back to the valid token
    let t = entry
        .get_with_min_remaining(Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(secret(&t), "tok-1");
    let calls = src.calls();
    // the next requests within the backoff do not hit the source again
    for _ in 0..20 {
        let t = entry
            .get_with_min_remaining(Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(secret(&t), "tok-1");
    }
    assert_eq!(
        src.calls(),
        calls,
        "no acquisition per request while backing off"
    );
}

/// Panics on its first acquisition, answers `tok-2` on the second.
#[derive(Debug, Default)]
struct PanicsFirst {
    calls: AtomicUsize,
}

#[async_trait]
impl Source for PanicsFirst {
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 1 {
            panic!("source bug");
        }
        let now = SystemTime::now();
        Ok(Token::new(Secret::new(format!("tok-{n}")), "panics-first")
            .acquired_at(now)
            .expires_at(now + Duration::from_secs(600)))
    }
    fn kind(&self) -> &'static str {
        "panics-first"
    }
    fn describe(&self) -> String {
        "panics-first source".into()
    }
}

#[tokio::test]
async fn a_panicking_source_is_a_recorded_failure_and_is_asked_again() {
    let src = Arc::new(PanicsFirst::default());
    let entry = Cache::new(src.clone())
        .with_options(lazy())
        .entry(TokenRequest::new("p"));
    let err = entry.get().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "panics-first source: token acquisition panicked"
    );
    let st = entry.status();
    assert_eq!(st.failures, 1);
    let (_, last) = st.last_error.unwrap();
    assert!(last.contains("token acquisition panicked"), "{last}");
    assert!(entry.0.in_backoff(SystemTime::now()));
    // The in-flight slot was cleared: the source is called again and its token served.
    assert_eq!(secret(&entry.get().await.unwrap()), "tok-2");
    assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    assert!(entry.status().last_error.is_none());
}

/// Answers with an expiry at the far end of what `SystemTime` holds.
#[derive(Debug)]
struct FarFuture(ManualClock);

#[async_trait]
impl Source for FarFuture {
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        Ok(Token::new(Secret::new("far"), "far")
            .acquired_at(self.0.now())
            .expires_at(UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2)))
    }
    fn kind(&self) -> &'static str {
        "far"
    }
    fn describe(&self) -> String {
        "far source".into()
    }
}

#[tokio::test]
async fn stated_expiry_is_capped_at_the_maximum_lifetime() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let t0 = clock.now();
    let entry = Cache::new(Arc::new(FarFuture(clock.clone())))
        .with_clock(Arc::new(clock.clone()))
        .with_options(lazy())
        .entry(TokenRequest::new("p"));
    let t = entry.get().await.unwrap();
    assert_eq!(t.token().expiry(), Some(t0 + crate::MAX_TOKEN_LIFETIME));
    assert!(t.refresh_at() < t0 + crate::MAX_TOKEN_LIFETIME);
    clock.advance(crate::MAX_TOKEN_LIFETIME);
    assert!(entry.try_get().is_none());
}

#[test]
fn an_acquisition_whose_runtime_went_away_does_not_wedge_the_entry() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let src = Counting::new(&clock, Duration::from_secs(600));
    let entry = Cache::new(src.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_options(lazy())
        .entry(TokenRequest::new("p"));
    // Start an acquisition on a runtime that shuts down before its task ever runs.
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        let mut get = Box::pin(entry.get());
        assert!((&mut get).now_or_never().is_none());
    });
    drop(first);
    assert_eq!(src.calls(), 0);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        // The abandoned flight answers once with its failure, then the source is asked again.
        let _ = entry.get().await;
        assert_eq!(secret(&entry.get().await.unwrap()), "tok-1");
    });
}

/// The background refresher sleeps on the cache's clock: advancing a manual clock past the
/// refresh time runs it, with no request and no real or tokio time passing.
#[tokio::test]
async fn background_refresh_runs_on_the_injected_clock() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000_000));
    let src = Counting::new(&clock, Duration::from_secs(3600));
    let cache = Cache::new(src.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_options(CacheOptions {
            background_refresh: true,
            negative_ttl: Duration::ZERO,
        });
    let entry = cache.entry(TokenRequest::new("p"));
    assert_eq!(secret(&entry.get().await.unwrap()), "tok-1");
    // Far from the refresh time: the refresher stays asleep.
    clock.advance(Duration::from_secs(60));
    tokio::task::yield_now().await;
    assert_eq!(src.calls(), 1);
    // Past it (an hour-long token refreshes 5-5.5 min before expiry): the refresher wakes
    // and refreshes.
    clock.advance(Duration::from_secs(54 * 60));
    for _ in 0..200 {
        if src.calls() == 2 && entry.try_get().is_some_and(|t| secret(&t) == "tok-2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(src.calls(), 2);
    assert_eq!(secret(&entry.try_get().unwrap()), "tok-2");
}
