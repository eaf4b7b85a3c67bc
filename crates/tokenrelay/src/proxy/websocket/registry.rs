//! Open WebSockets: counted per provider with their age (`/status`, `/metrics`), closed at
//! `max_socket_lifetime`, and told to close at the end of the shutdown grace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long relays get, once told to close at the end of the shutdown grace, to write their
/// close frames before the worker stops (1 s).
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What every provider's sockets share: how many are open (at most `max`), and the signal to
/// close them.
#[derive(Debug)]
pub(crate) struct Shutdown {
    /// Open sockets of all providers (a socket leaves the listener's connection count once
    /// upgraded, so it is bounded here: by `max_connections`).
    live: watch::Sender<usize>,
    max: usize,
    /// Set once the shutdown grace is over: every relay writes its close frames and ends.
    closing: watch::Sender<bool>,
}

impl Shutdown {
    /// No socket open yet; at most `max` at once.
    pub(crate) fn new(max: usize) -> Self {
        Shutdown {
            live: watch::Sender::new(0),
            max,
            closing: watch::Sender::new(false),
        }
    }

    /// Lets open sockets run on until `deadline` (the end of the shutdown grace), then tells
    /// them to close (1001) and waits for them, at most [`CLOSE_LINGER`].
    pub(crate) async fn close_all_at(&self, deadline: Instant) {
        let mut live = self.live.subscribe();
        if tokio::time::timeout_at(deadline, live.wait_for(|n| *n == 0))
            .await
            .is_ok()
        {
            return;
        }
        tracing::info!(
            open_sockets = *live.borrow(),
            "shutdown grace over: closing open WebSockets (1001)"
        );
        self.closing.send_replace(true);
        let _ = tokio::time::timeout(CLOSE_LINGER, live.wait_for(|n| *n == 0)).await;
    }

    /// Whether the relays have been told to close.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}

/// One provider's open sockets.
#[derive(Debug)]
pub(crate) struct Sockets {
    /// See `max_socket_lifetime` in the provider config (`None`: no limit).
    pub max_lifetime: Option<Duration>,
    shutdown: Arc<Shutdown>,
    next_id: AtomicU64,
    /// When each open socket was opened.
    open: Mutex<HashMap<u64, Instant>>,
}

impl Sockets {
    /// No open socket yet.
    pub(crate) fn new(max_lifetime: Option<Duration>, shutdown: Arc<Shutdown>) -> Arc<Self> {
        Arc::new(Sockets {
            max_lifetime,
            shutdown,
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a socket that opens now; it counts until the ticket is dropped. `None` when
    /// the proxy already holds its maximum of open sockets.
    pub(crate) fn open(self: &Arc<Self>) -> Option<Ticket> {
        let max = self.shutdown.max;
        if !self.shutdown.live.send_if_modified(|n| {
            let room = *n < max;
            *n += usize::from(room);
            room
        }) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Instant::now());
        Some(Ticket {
            sockets: self.clone(),
            id,
        })
    }

    /// Open sockets and the age of the oldest.
    pub(crate) fn snapshot(&self) -> (usize, Option<Duration>) {
        let open = self.lock();
        let oldest = open.values().min().map(Instant::elapsed);
        (open.len(), oldest)
    }
}

/// One open socket's place in its provider's [`Sockets`].
#[derive(Debug)]
pub(crate) struct Ticket {
    sockets: Arc<Sockets>,
    id: u64,
}

impl Ticket {
    /// Set when the shutdown grace is over.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.sockets.shutdown.closing()
    }

    /// The provider's `max_socket_lifetime`.
    pub(crate) fn max_lifetime(&self) -> Option<Duration> {
        self.sockets.max_lifetime
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.sockets.lock().remove(&self.id);
        self.sockets.shutdown.live.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn sockets_are_counted_with_their_age_and_closed_at_the_deadline() {
        let shutdown = Arc::new(Shutdown::new(3));
        let a = Sockets::new(None, shutdown.clone());
        let b = Sockets::new(Some(Duration::from_secs(5)), shutdown.clone());
        assert_eq!(a.snapshot(), (0, None));
        let first = a.open().unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let second = a.open().unwrap();
        let other = b.open().unwrap();
        // The maximum holds across providers.
        assert!(a.open().is_none() && b.open().is_none());
        let (n, oldest) = a.snapshot();
        assert_eq!(n, 2);
        assert!(oldest.unwrap() >= Duration::from_millis(30));
        drop(first);
        let (n, oldest) = a.snapshot();
        assert_eq!(n, 1);
        assert!(oldest.unwrap() < Duration::from_millis(30));
        // Open sockets are told to close at the deadline, not before.
        let mut closing = shutdown.closing();
        let deadline = Instant::now() + Duration::from_millis(50);
        let sd = shutdown.clone();
        let finished = tokio::spawn(async move { sd.close_all_at(deadline).await });
        closing.wait_for(|c| *c).await.unwrap();
        assert!(Instant::now() >= deadline);
        drop((second, other));
        finished.await.unwrap();
        assert_eq!(b.snapshot(), (0, None));
    }

    #[tokio::test]
    async fn shutdown_without_sockets_returns_at_once() {
        let shutdown = Shutdown::new(1);
        let start = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(5),
            shutdown.close_all_at(start + Duration::from_secs(30)),
        )
        .await
        .unwrap();
        assert!(!*shutdown.closing().borrow());
    }
}
