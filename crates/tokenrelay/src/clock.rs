//! Time, injected: expiry decisions read the clock through [`Clock`], and the background
//! refresher sleeps on the same clock, so tests control both.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// A future that ends at a time of a [`Clock`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Longest single sleep of [`SystemClock::sleep_until`] (60 s): a timer runs on the monotonic
/// clock, which stops while the machine is suspended, so a long sleep re-reads the wall clock
/// at least this often and a laptop that slept through a token's refresh time refreshes
/// within a minute of waking.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A source of wall-clock time, and of sleeping until a time of that clock.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// Sleeps until `at`, or less: callers re-read [`now`](Self::now) when it ends. The
    /// default sleeps on tokio's timer for the time left, at most [`MAX_SLEEP`] (tokio's
    /// paused time in tests advances it).
    fn sleep_until(&self, at: SystemTime) -> Sleep {
        let left = at.duration_since(self.now()).unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(left.min(MAX_SLEEP)))
    }
}

/// The real wall clock ([`SystemTime::now`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to; for tests and simulations.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tokenrelay::{Clock, ManualClock};
/// let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000));
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(1_005));
/// ```
/// Its [`sleep_until`](Clock::sleep_until) ends when the clock is moved to or past the time,
/// so the cache's background refresher runs exactly when a test advances the clock.
#[derive(Debug, Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
    moved: Arc<Notify>,
}

impl ManualClock {
    /// A clock that reads `start` until advanced.
    pub fn new(start: SystemTime) -> Self {
        let nanos = start
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        ManualClock {
            nanos: Arc::new(AtomicU64::new(nanos)),
            moved: Arc::new(Notify::new()),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let add = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(add, Ordering::SeqCst);
        self.moved.notify_waiters();
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: SystemTime) {
        let nanos = to
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.nanos.store(nanos, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, at: SystemTime) -> Sleep {
        let clock = self.clone();
        Box::pin(async move {
            loop {
                let moved = clock.moved.notified();
                let mut moved = std::pin::pin!(moved);
                // Registered before the check, so a move in between is not missed.
                moved.as_mut().enable();
                if clock.now() >= at {
                    return;
                }
                moved.await;
            }
        })
    }
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The time `ms` milliseconds after the Unix epoch.
pub(crate) fn from_unix_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Formats a time as RFC 3339 in UTC, seconds precision.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
