//! The helper cache's behaviour: sharing, keys, refresh failures, rotated refresh tokens,
//! waiting, and the directory's hardening.

use super::*;
use crate::source::{CommandSource, MapEnv};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
    let cache = SharedCache::open(&dir.path().join("c")).unwrap();
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
    let again = SharedCache::open(&dir.path().join("c")).unwrap();
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
    let cache = SharedCache::open(&dir.path().join("c")).unwrap();
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

/// Stores, for `src`, a token valid for another minute that is already inside its refresh
/// window (as if acquired 50 s ago).
fn seed_due_token(cache: &SharedCache, src: &dyn Source, req: &TokenRequest) -> PathBuf {
    let now = SystemTime::now();
    let token = Token::new(Secret::new("cached-tok"), "seed")
        .acquired_at(now - Duration::from_secs(50))
        .expires_at(now + Duration::from_secs(60));
    let mut stored = to_stored(&token).unwrap();
    stored.refresh_at_ms = unix_millis(now - Duration::from_secs(1));
    let data = cache
        .dir()
        .join(format!("{}.json", cache.key_for(src, req).unwrap()));
    cache.save(&data, &stored);
    data
}

fn runs(counter: &Path) -> usize {
    fs::read_to_string(counter).map_or(0, |s| s.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nobody_waits_on_a_slow_failing_refresh_while_a_valid_token_exists() {
    let dir = tempfile::tempdir().unwrap();
    let cache = SharedCache::open(&dir.path().join("c")).unwrap();
    let counter = dir.path().join("runs");
    let src = Arc::new(CommandSource::shell(format!(
        "echo run >> {}; sleep 2; echo idp down >&2; exit 1",
        counter.display()
    )));
    let req = TokenRequest::new("p");
    seed_due_token(&cache, src.as_ref(), &req);

    // Six concurrent lookups: one runs the source (2 s, then fails), the others answer from
    // the cache at once instead of queueing on the entry's lock.
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let (cache, src, req) = (cache.clone(), src.clone(), req.clone());
            tokio::spawn(async move {
                let t0 = std::time::Instant::now();
                let (tok, served) = cache
                    .get(src.as_ref(), &req, Lookup::default())
                    .await
                    .unwrap();
                (tok.secret().expose().to_owned(), served, t0.elapsed())
            })
        })
        .collect();
    let mut slow = 0;
    for c in calls {
        let (tok, served, took) = c.await.unwrap();
        assert_eq!(tok, "cached-tok");
        if took >= Duration::from_millis(1_900) {
            slow += 1;
            assert_eq!(served, Served::StaleOnRefreshFailure);
        } else {
            assert!(
                took < Duration::from_millis(100),
                "{served:?} took {took:?}"
            );
        }
    }
    assert_eq!(slow, 1, "exactly one caller runs the source");
    assert_eq!(runs(&counter), 1);

    // Within the failure's backoff (at least 0.5 s) callers answer at once, source not run.
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let (tok, served) = cache
            .get(src.as_ref(), &req, Lookup::default())
            .await
            .unwrap();
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(
            (tok.secret().expose(), served),
            ("cached-tok", Served::StaleOnRefreshFailure)
        );
    }
    assert_eq!(runs(&counter), 1);
}

#[test]
fn a_failure_is_recorded_with_growing_backoff_bounded_by_the_token() {
    let now = SystemTime::now();
    let token = Token::new(Secret::new("t"), "o")
        .acquired_at(now)
        .expires_at(now + Duration::from_secs(3600));
    let mut s = to_stored(&token).unwrap();
    s.record_failure(now);
    let first = from_unix_millis(s.retry_at_ms).duration_since(now).unwrap();
    assert!((Duration::from_millis(499)..=Duration::from_secs(1)).contains(&first));
    for _ in 0..10 {
        s.record_failure(now);
    }
    let later = from_unix_millis(s.retry_at_ms).duration_since(now).unwrap();
    assert_eq!(s.failures, 11);
    assert!(later >= Duration::from_secs(29) && later <= Duration::from_secs(60));
    // a token with 4 s left is retried within 2 s
    s.expires_at_ms = unix_millis(now + Duration::from_secs(4));
    s.record_failure(now);
    assert!(from_unix_millis(s.retry_at_ms) <= now + Duration::from_secs(2));
}

#[test]
fn refuses_a_symlinked_dir_and_a_dir_open_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = SharedCache::open(&link).unwrap_err().to_string();
    assert!(
        err.contains(&link.display().to_string()) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(&real).unwrap().count(),
        0,
        "nothing written behind the link"
    );

    let open = dir.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let err = SharedCache::open(&open).unwrap_err().to_string();
    assert!(
        err.contains(&open.display().to_string())
            && err.contains("mode 777")
            && err.contains("chmod 700"),
        "{err}"
    );
    // never re-moded behind the user's back
    assert_eq!(fs::metadata(&open).unwrap().mode() & 0o777, 0o777);

    // one it creates itself is private
    let fresh = dir.path().join("a/b");
    SharedCache::open(&fresh).unwrap();
    assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn refuses_a_dir_of_another_user() {
    if !nix::unistd::geteuid().is_root() {
        return; // only root can give a directory away
    }
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(12345), None).unwrap();
    let err = SharedCache::open(&theirs).unwrap_err().to_string();
    assert!(err.contains("belongs to another user"), "{err}");
}

#[tokio::test]
async fn never_follows_a_symlinked_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cache = SharedCache::open(&dir.path().join("c")).unwrap();
    let src = CommandSource::shell("echo fresh");
    let req = TokenRequest::new("p");
    let key = cache.key_for(&src, &req).unwrap();
    // an entry planted as a link to a file elsewhere: neither read nor written through
    let elsewhere = dir.path().join("elsewhere.json");
    fs::write(&elsewhere, "not yours").unwrap();
    let entry = cache.dir().join(format!("{key}.json"));
    std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
    let err = cache
        .get(&src, &req, Lookup::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&entry.display().to_string()) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "not yours");
    // nor its lock file
    fs::remove_file(&entry).unwrap();
    let lock = cache.dir().join(format!("{key}.lock"));
    fs::remove_file(&lock).ok();
    std::os::unix::fs::symlink(&elsewhere, &lock).unwrap();
    let err = cache
        .get(&src, &req, Lookup::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "not yours");
}

#[tokio::test]
async fn writing_an_entry_prunes_long_expired_ones_but_keeps_refresh_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let cache = SharedCache::open(&dir.path().join("c")).unwrap();
    let now = SystemTime::now();
    let entry = |name: &str, expired_ago: Duration, refresh: Option<&str>| {
        let t = Token::new(Secret::new("old"), "o")
            .acquired_at(now - expired_ago - Duration::from_secs(60))
            .expires_at(now - expired_ago);
        let t = match refresh {
            Some(r) => t.with_refresh_token(Secret::new(r)),
            None => t,
        };
        let p = cache.dir().join(format!("{name}.json"));
        cache.save(&p, &to_stored(&t).unwrap());
        p
    };
    let ancient = entry("ancient", PRUNE_AFTER + Duration::from_secs(60), None);
    let ancient_lock = ancient.with_extension("lock");
    fs::write(&ancient_lock, "").unwrap();
    let recent = entry("recent", Duration::from_secs(60), None);
    let keeps_rt = entry("rt", PRUNE_AFTER * 2, Some("rt-9"));
    let stale_tmp = cache.dir().join(format!("{}leftover", files::TMP_PREFIX));
    fs::write(&stale_tmp, "tok").unwrap();
    let old = fs::FileTimes::new().set_modified(now - Duration::from_secs(3600));
    fs::File::options()
        .write(true)
        .open(&stale_tmp)
        .unwrap()
        .set_times(old)
        .unwrap();

    cache
        .get(
            &CommandSource::shell("echo new"),
            &TokenRequest::new("p"),
            Lookup::default(),
        )
        .await
        .unwrap();
    assert!(!ancient.exists(), "expired more than PRUNE_AFTER ago");
    assert!(!ancient_lock.exists(), "with its lock file");
    assert!(!stale_tmp.exists(), "a crashed write's leftover");
    assert!(recent.exists(), "expired only a minute ago");
    assert!(keeps_rt.exists(), "holds a refresh token");
}
