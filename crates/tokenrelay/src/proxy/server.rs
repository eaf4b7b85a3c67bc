//! Listening and serving: one worker thread per CPU, each with a single-threaded runtime, its
//! own `SO_REUSEPORT` socket on every listener and its own upstream connection pool, so a
//! request is accepted, forwarded and answered on one thread (nginx's worker model). Graceful
//! shutdown stops accepting and lets in-flight requests finish for the grace period.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch, Notify};

use super::{handle, Proxy, Router, State};
use crate::error::{Error, ErrorKind, Result};

/// Pending connections the kernel queues per socket.
const LISTEN_BACKLOG: u32 = 1024;

/// HTTP/2 keep-alive: a PING after this long without a frame from the client (30 s)…
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// …and the connection is closed when its answer takes longer than this (20 s): a client that
/// vanished without a FIN (a sleeping laptop, a dropped NAT entry) does not hold its streams.
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest pause between accept attempts after an error such as `EMFILE` (1 s): the loop backs
/// off from 5 ms, doubling, instead of spinning on a socket it cannot accept from.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How long a connection refused past `max_connections` may take to read its 503 (500 ms).
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Connection limits and timeouts, the same for every listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// See [`crate::config::DEFAULT_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`crate::config::DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`crate::config::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
}

fn bind_err(addr: SocketAddr, e: std::io::Error) -> Error {
    Error::new(
        "proxy",
        ErrorKind::Unavailable(format!("cannot listen on {addr}: {e}")),
    )
}

/// Binds `n` sockets to `addr` with `SO_REUSEPORT` (the kernel spreads connections over them).
/// Port 0 is resolved by the first socket and reused by the others.
fn bind_group(addr: SocketAddr, n: usize) -> Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let mut out = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n {
        let socket = if bound.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| bind_err(addr, e))?;
        socket.set_reuseaddr(true).map_err(|e| bind_err(addr, e))?;
        socket.set_reuseport(true).map_err(|e| bind_err(addr, e))?;
        socket.bind(bound).map_err(|e| bind_err(addr, e))?;
        let listener = socket
            .listen(LISTEN_BACKLOG)
            .map_err(|e| bind_err(addr, e))?;
        bound = listener.local_addr().map_err(|e| bind_err(addr, e))?;
        out.push(listener.into_std().map_err(|e| bind_err(addr, e))?);
    }
    Ok((bound, out))
}

impl Proxy {
    /// Binds every listener (one socket per worker on each address).
    ///
    /// # Errors
    /// When an address cannot be bound.
    pub async fn bind(self) -> Result<BoundProxy> {
        let mut routers = vec![(self.listen, self.main_router()?)];
        if let Some(a) = self.admin_listen {
            routers.push((
                a,
                Router {
                    root: None,
                    prefixed: Vec::new(),
                    admin: true,
                },
            ));
        }
        for (a, i) in &self.own_listeners {
            routers.push((
                *a,
                Router {
                    root: Some(*i),
                    prefixed: Vec::new(),
                    admin: false,
                },
            ));
        }
        let mut addrs = Vec::new();
        let mut listeners = Vec::new();
        for (addr, router) in routers {
            let (bound, sockets) = bind_group(addr, self.workers)?;
            addrs.push(bound);
            listeners.push((sockets, router, Arc::new(AtomicUsize::new(0))));
        }
        Ok(BoundProxy {
            state: self.state,
            listeners,
            addrs,
            shutdown_grace: self.shutdown_grace,
            workers: self.workers,
        })
    }
}

/// A proxy with its listeners bound.
pub struct BoundProxy {
    state: Arc<State>,
    /// Each listener's sockets (one per worker), router, and count of open connections.
    listeners: Vec<(Vec<std::net::TcpListener>, Router, Arc<AtomicUsize>)>,
    addrs: Vec<SocketAddr>,
    shutdown_grace: Duration,
    workers: usize,
}

impl std::fmt::Debug for BoundProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundProxy")
            .field("addrs", &self.addrs)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl BoundProxy {
    /// Address of the main listener (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Addresses of all listeners: main, then admin (if any), then per-provider ones.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
    /// finish for up to the shutdown grace. Also starts acquiring every provider's token.
    ///
    /// # Errors
    /// When a worker thread cannot be started.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        for p in &self.state.providers {
            let p = p.clone();
            tokio::spawn(async move {
                if let Err(e) = p.entry.get().await {
                    tracing::warn!(provider = %p.name, error = %e, "initial token acquisition failed; will retry");
                }
            });
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        // Deal one socket of every listener to each worker.
        let mut per_worker: Vec<Vec<WorkerListener>> =
            (0..self.workers).map(|_| Vec::new()).collect();
        for (sockets, router, open) in self.listeners {
            for (w, socket) in sockets.into_iter().enumerate() {
                per_worker[w % self.workers].push((socket, router.clone(), open.clone()));
            }
        }
        let mut done = Vec::new();
        for (w, listeners) in per_worker.into_iter().enumerate() {
            let (done_tx, done_rx) = oneshot::channel::<()>();
            done.push(done_rx);
            let state = self.state.clone();
            let stop = stop_rx.clone();
            let grace = self.shutdown_grace;
            std::thread::Builder::new()
                .name(format!("tokenrelay-w{w}"))
                .spawn(move || {
                    worker(w, listeners, state, stop, grace);
                    let _ = done_tx.send(());
                })
                .map_err(|e| {
                    Error::new(
                        "proxy",
                        ErrorKind::Unavailable(format!("cannot start worker thread: {e}")),
                    )
                })?;
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections; letting in-flight requests finish");
        let _ = stop_tx.send(true);
        for d in done {
            let _ = d.await;
        }
        Ok(())
    }
}

/// One worker's socket of a listener, the listener's router and its open-connection count.
type WorkerListener = (std::net::TcpListener, Router, Arc<AtomicUsize>);

/// One worker thread: a current-thread runtime serving its sockets until told to stop.
fn worker(
    w: usize,
    listeners: Vec<WorkerListener>,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = w, error = %e, "cannot start a worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        let mut loops = Vec::new();
        for (socket, router, open) in listeners {
            match TcpListener::from_std(socket) {
                Ok(l) => loops.push(tokio::spawn(accept_loop(
                    l,
                    (router, open),
                    state.clone(),
                    w,
                    stop.clone(),
                    grace,
                ))),
                Err(e) => tracing::error!(worker = w, error = %e, "cannot register a listener"),
            }
        }
        for l in loops {
            let _ = l.await;
        }
    });
}

/// What every request of one accept loop (one worker, one listener) shares. Owned by the
/// worker: cloning its `Arc` per request touches a reference count no other thread writes,
/// where cloning the global [`State`] would bounce one cache line between the workers.
pub(super) struct Ctx {
    pub state: Arc<State>,
    pub router: Router,
    pub worker: usize,
}

async fn accept_loop(
    listener: TcpListener,
    (router, open): (Router, Arc<AtomicUsize>),
    state: Arc<State>,
    worker: usize,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let drain = Arc::new(Drain::default());
    let limits = state.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // One flat write buffer per response instead of a queue of head and body buffers written
    // with writev: fewer instructions per small response (bench/instructions) at the price of
    // copying body bytes into the buffer, which stays bounded (backpressure at its limit).
    builder
        .http1()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    let ctx = Arc::new(Ctx {
        state,
        router,
        worker,
    });
    let sweeper = tokio::spawn(sweep(drain.clone(), limits));
    let mut backoff = Duration::ZERO;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(x) => {
                        backoff = Duration::ZERO;
                        x
                    }
                    Err(e) => {
                        backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                        accept_failed(&e, backoff);
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                };
                let metrics = &ctx.state.listener_metrics;
                if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
                    open.fetch_sub(1, Ordering::AcqRel);
                    metrics.conns_refused.fetch_add(1, Ordering::Relaxed);
                    refuse_connection(stream, limits.max_connections);
                    continue;
                }
                metrics.open.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                let clock = Arc::new(ConnClock::default());
                let svc = {
                    let (ctx, clock) = (ctx.clone(), clock.clone());
                    service_fn(move |req| {
                        clock.requests.fetch_add(1, Ordering::Relaxed);
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
                    })
                };
                // With upgrades: a WebSocket handshake hands the connection to its relay.
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .into_owned();
                let conn = Drained::new(conn, drain.clone(), Slot {
                    open: open.clone(),
                    state: ctx.state.clone(),
                    clock,
                });
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    sweeper.abort();
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, drain.drain())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = grace.as_secs(),
            "in-flight requests still running after the grace period; closing them"
        );
    }
    ctx.state.sockets.close_all_at(deadline).await;
}

/// Every `tick`, marks the connections of `drain` that went without a new request for their
/// idle time (see [`Drain::sweep`]). One timer per accept loop, not one per connection or per
/// request.
async fn sweep(drain: Arc<Drain>, limits: Limits) {
    let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        drain.sweep(
            tokio::time::Instant::now(),
            limits.header_read_timeout,
            limits.idle_timeout,
        );
    }
}

/// Logs a failed accept: at warn when the pause grows (a handful of lines per streak of
/// errors), at debug once it is at its longest.
#[cold]
#[inline(never)]
fn accept_failed(e: &std::io::Error, backoff: Duration) {
    if backoff < MAX_ACCEPT_BACKOFF {
        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed (out of file descriptors?); backing off");
    } else {
        tracing::debug!(error = %e, "accept failed; backing off");
    }
}

/// Answers a connection past `max_connections` with a 503 and closes it. The close lingers
/// for at most [`REFUSAL_LINGER`], reading (and dropping) what the client sent, so that the
/// kernel ends the connection with a FIN after the answer rather than a reset that could
/// destroy it.
#[cold]
#[inline(never)]
fn refuse_connection(stream: TcpStream, max: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tracing::warn!(
        max_connections = max,
        "connection refused: too many open connections"
    );
    let body = format!(
        "{{\"error\":{{\"message\":\"tokenrelay: too many open connections (max_connections = {max})\",\"type\":\"tokenrelay_error\",\"code\":\"too_many_connections\"}}}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut left = 64 * 1024;
            while left > 0 {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => left -= n.min(left),
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// The connections of one accept loop, told to finish gracefully when shutdown begins, or one
/// by one when the sweeper finds them idle ([`Drain::sweep`]).
///
/// Each connection registers its task's waker once; on shutdown every one is woken and finds
/// the flag set. hyper-util's `GracefulShutdown` cannot take its place: it has one signal for
/// all connections, and the sealed trait its `watch` takes leaves no room for a second one
/// (docs/design.md, "The proxy's own machinery, judged on the TLS path").
#[derive(Default)]
struct Drain {
    begun: AtomicBool,
    conns: Mutex<Conns>,
    /// Signalled when the last connection ends after shutdown began.
    idle: Notify,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    wakers: HashMap<u64, Watched>,
    live: usize,
}

/// What a connection shares with its accept loop: how many requests it has received, and
/// whether it has been found idle.
#[derive(Default)]
struct ConnClock {
    /// Requests received, counted by the connection's service.
    requests: AtomicU64,
    /// Set when the connection went without a new request for its idle time: it finishes what
    /// it is serving and closes.
    idle: AtomicBool,
}

/// A registered connection, as the sweeper sees it.
struct Watched {
    waker: Waker,
    clock: Arc<ConnClock>,
    /// The request count at the last sweep, and since when it has not changed.
    seen: u64,
    since: tokio::time::Instant,
}

impl Drain {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new connection's id.
    fn join(&self) -> u64 {
        let mut c = self.lock();
        c.live += 1;
        c.next_id += 1;
        c.next_id
    }

    /// Registers connection `id`'s waker and clock; false when shutdown has already begun.
    fn register(&self, id: u64, waker: &Waker, clock: &Arc<ConnClock>) -> bool {
        let mut c = self.lock();
        if self.begun.load(Ordering::Acquire) {
            return false;
        }
        c.wakers.insert(
            id,
            Watched {
                waker: waker.clone(),
                clock: clock.clone(),
                seen: 0,
                since: tokio::time::Instant::now(),
            },
        );
        true
    }

    /// Marks and wakes every connection whose request count has not changed for its idle
    /// time: `first` before its first request (the header read timeout: this also bounds a
    /// client that connects and sends nothing, before hyper knows the HTTP version and starts
    /// its own timer), `idle` after that. A marked connection shuts down gracefully, so a
    /// response it is still sending (a long stream) finishes first.
    fn sweep(&self, now: tokio::time::Instant, first: Duration, idle: Duration) {
        let mut c = self.lock();
        for w in c.wakers.values_mut() {
            let n = w.clock.requests.load(Ordering::Relaxed);
            if n != w.seen {
                w.seen = n;
                w.since = now;
                continue;
            }
            let limit = if n == 0 { first } else { idle };
            if now.duration_since(w.since) >= limit && !w.clock.idle.swap(true, Ordering::Relaxed) {
                w.waker.wake_by_ref();
            }
        }
    }

    fn leave(&self, id: u64) {
        let mut c = self.lock();
        c.wakers.remove(&id);
        c.live -= 1;
        if c.live == 0 && self.begun.load(Ordering::Acquire) {
            self.idle.notify_one();
        }
    }

    /// Tells every connection to finish (answer what it is serving, then close) and waits
    /// until all have ended.
    async fn drain(&self) {
        {
            let mut c = self.lock();
            self.begun.store(true, Ordering::Release);
            for (_, w) in c.wakers.drain() {
                w.waker.wake();
            }
            if c.live == 0 {
                return;
            }
        }
        // `notify_one` keeps a permit when nobody waits yet, so the last `leave` is not missed.
        self.idle.notified().await;
    }
}

/// What a connection holds of its listener: its place under `max_connections`, and its
/// clock.
struct Slot {
    open: Arc<AtomicUsize>,
    state: Arc<State>,
    clock: Arc<ConnClock>,
}

/// A connection that shuts down gracefully once its [`Drain`] begins, or once the sweeper
/// found it idle (streams still running finish first). Boxed once per connection, so that
/// this wrapper is `Unpin`.
struct Drained<C> {
    conn: Pin<Box<C>>,
    drain: Arc<Drain>,
    id: u64,
    registered: bool,
    told: bool,
    slot: Slot,
}

impl<C> Drop for Drained<C> {
    fn drop(&mut self) {
        self.drain.leave(self.id);
        self.slot.open.fetch_sub(1, Ordering::AcqRel);
        self.slot
            .state
            .listener_metrics
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl<C> Drained<C> {
    fn new(conn: C, drain: Arc<Drain>, slot: Slot) -> Self {
        let id = drain.join();
        Drained {
            conn: Box::pin(conn),
            drain,
            id,
            registered: false,
            told: false,
            slot,
        }
    }
}

impl<C: GracefulConnection> Future for Drained<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.told {
            let begun = this.drain.begun.load(Ordering::Acquire)
                || (!this.registered
                    && !this.drain.register(this.id, cx.waker(), &this.slot.clock));
            this.registered = true;
            let idle = this.slot.clock.idle.load(Ordering::Relaxed);
            if begun || idle {
                this.told = true;
                if idle {
                    tracing::debug!("closing an idle connection");
                }
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.as_mut().poll(cx)
    }
}
