//! Pure refresh decisions: when to refresh, how long to back off, whether a token is fresh
//! enough to start a request with. No clocks, no I/O: every function takes the times it needs.

use std::time::{Duration, SystemTime};

/// The refresh window is at most this long (5 minutes): a token that lives 60 min is
/// refreshed ~5 min before it expires, i.e. after ~55 min.
pub const DEFAULT_MAX_REFRESH_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The refresh window is at most this fraction of the lifetime (a third): a token that lives
/// 9 s is refreshed 3 s before it expires, after ~6 s.
pub const REFRESH_WINDOW_DIVISOR: u32 = 3;

/// Up to this fraction (10%) is added to the window at random, so that many instances
/// started together do not refresh in the same second.
pub const REFRESH_JITTER: f64 = 0.1;

/// First retry delay after a failed refresh (1 s), doubled per consecutive failure…
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// …up to this cap (60 s): the 7th and later consecutive failures wait ~30–60 s.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(60);

/// When to refresh a token acquired at `acquired` that expires at `expires`.
///
/// The window before expiry is `min(DEFAULT_MAX_REFRESH_WINDOW, lifetime / 3)`, widened by
/// `jitter * REFRESH_JITTER` (`jitter` in `[0, 1)`).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tokenrelay::cache::policy::refresh_at;
/// let t0 = UNIX_EPOCH;
/// // 60-minute token: refreshed 5 minutes before expiry.
/// assert_eq!(refresh_at(t0, t0 + Duration::from_secs(3600), 0.0), t0 + Duration::from_secs(3300));
/// // 9-second token: refreshed after 6 s.
/// assert_eq!(refresh_at(t0, t0 + Duration::from_secs(9), 0.0), t0 + Duration::from_secs(6));
/// ```
pub fn refresh_at(acquired: SystemTime, expires: SystemTime, jitter: f64) -> SystemTime {
    let lifetime = expires.duration_since(acquired).unwrap_or(Duration::ZERO);
    let window = DEFAULT_MAX_REFRESH_WINDOW.min(lifetime / REFRESH_WINDOW_DIVISOR);
    let extra = window.mul_f64(REFRESH_JITTER * jitter.clamp(0.0, 1.0));
    expires
        .checked_sub(window + extra)
        .unwrap_or(acquired)
        .max(acquired)
}

/// Delay before retry number `attempt` (0-based) after a failed refresh: exponential from
/// [`DEFAULT_BACKOFF_BASE`] capped at [`DEFAULT_BACKOFF_CAP`], with "equal jitter" (between
/// half and all of it). While the old token is still valid (`remaining` is `Some`), the delay
/// is also kept under half of what remains, so several attempts happen before it expires.
///
/// ```
/// use std::time::Duration;
/// use tokenrelay::cache::policy::backoff;
/// assert_eq!(backoff(0, 1.0, None), Duration::from_secs(1));
/// assert_eq!(backoff(3, 1.0, None), Duration::from_secs(8));
/// assert_eq!(backoff(30, 1.0, None), Duration::from_secs(60));
/// assert_eq!(backoff(10, 1.0, Some(Duration::from_secs(10))), Duration::from_secs(5));
/// ```
pub fn backoff(attempt: u32, jitter: f64, remaining: Option<Duration>) -> Duration {
    let exp = DEFAULT_BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16));
    let capped = exp.min(DEFAULT_BACKOFF_CAP);
    let jittered = capped / 2 + (capped / 2).mul_f64(jitter.clamp(0.0, 1.0));
    match remaining {
        Some(r) => jittered.min(r / 2).max(Duration::from_millis(50)),
        None => jittered,
    }
}

/// The lifetime a request needs left on its token: `min_remaining`, but never more than a
/// third of the token's lifetime (otherwise a short-lived token could never be used).
///
/// ```
/// use std::time::Duration;
/// use tokenrelay::cache::policy::effective_min_remaining;
/// let two_min = Duration::from_secs(120);
/// assert_eq!(effective_min_remaining(two_min, Some(Duration::from_secs(3600))), two_min);
/// assert_eq!(effective_min_remaining(two_min, Some(Duration::from_secs(9))), Duration::from_secs(3));
/// ```
pub fn effective_min_remaining(min_remaining: Duration, lifetime: Option<Duration>) -> Duration {
    match lifetime {
        Some(l) => min_remaining.min(l / REFRESH_WINDOW_DIVISOR),
        None => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn refresh_table() {
        let t0 = UNIX_EPOCH + s(1_000_000);
        // (lifetime, jitter, refresh after)
        let table = [
            (s(3600), 0.0, s(3300)),
            (s(5400), 0.0, s(5100)),
            (s(900), 0.0, s(600)),
            (s(600), 0.0, s(400)),
            (s(3), 0.0, s(2)),
            (s(0), 0.5, s(0)),
            (s(3600), 1.0, s(3270)),
        ];
        for (lifetime, jitter, after) in table {
            assert_eq!(
                refresh_at(t0, t0 + lifetime, jitter),
                t0 + after,
                "lifetime {lifetime:?} jitter {jitter}"
            );
        }
    }

    #[test]
    fn refresh_never_before_acquisition() {
        let t0 = UNIX_EPOCH + s(100);
        // expiry already in the past relative to acquisition
        assert_eq!(refresh_at(t0, t0 - s(10), 0.3), t0);
    }

    #[test]
    fn backoff_table() {
        let table = [
            (0, 0.0, None, Duration::from_millis(500)),
            (0, 1.0, None, s(1)),
            (1, 1.0, None, s(2)),
            (5, 1.0, None, s(32)),
            (6, 1.0, None, s(60)),
            (6, 0.0, None, s(30)),
            (u32::MAX, 1.0, None, s(60)),
            (6, 1.0, Some(s(20)), s(10)),
            (6, 1.0, Some(Duration::ZERO), Duration::from_millis(50)),
        ];
        for (attempt, jitter, remaining, want) in table {
            assert_eq!(
                backoff(attempt, jitter, remaining),
                want,
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn min_remaining_table() {
        assert_eq!(effective_min_remaining(s(120), None), Duration::ZERO);
        assert_eq!(effective_min_remaining(s(120), Some(s(600))), s(120));
        assert_eq!(effective_min_remaining(s(120), Some(s(300))), s(100));
    }
}
