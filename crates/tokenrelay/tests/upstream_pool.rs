//! The proxy's upstream connection pool (one per provider and worker; HTTP/1.1 connections
//! driven inline by the request and then by its response body), pinned down against loopback
//! hyper upstreams that count the TCP connections they accept. Every proxy here has one
//! worker, so every request lands on the same pool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::*;
use tokenrelay::proxy::ProxyOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Bound on every client call.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the counting upstream does with a connection after a response.
#[derive(Clone, Copy)]
enum Close {
    /// Keep-alive (HTTP/1.1, or HTTP/2 with prior knowledge): serve until the client closes.
    Never,
    /// Answer with `Connection: close` and close (hyper's `keep_alive(false)`).
    Announced,
    /// Serve one request with keep-alive, then close the idle connection shortly after,
    /// without telling the client.
    Silently,
    /// Serve one request with keep-alive, and shut the socket down right behind the response
    /// (in the same flush), without telling the client.
    AfterResponse,
    /// HTTP/2 with prior knowledge: serve one request, then a graceful GOAWAY.
    H2GoAway,
    /// HTTP/2 with prior knowledge: serve one request, then drop the connection shortly after
    /// (no GOAWAY).
    H2Drop,
}

/// A loopback hyper upstream that counts the TCP connections it accepts.
struct Counting {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Counting {
    async fn start<F, Fut>(close: Close, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let served = Arc::new(Notify::new());
                let (h, s) = (handler.clone(), served.clone());
                let svc = service_fn(move |req| {
                    let (h, s) = (h.clone(), s.clone());
                    async move {
                        let resp = h(req).await;
                        s.notify_one();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let io = TokioIo::new(stream);
                tokio::spawn(async move {
                    match close {
                        Close::Never => {
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await;
                        }
                        Close::Announced => {
                            let _ = http1::Builder::new()
                                .keep_alive(false)
                                .serve_connection(io, svc)
                                .await;
                        }
                        Close::AfterResponse => {
                            let io = CloseAfterResponse {
                                io,
                                answered: served,
                                shut: false,
                            };
                            let _ = http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(io, svc)
                                .await;
                        }
                        Close::H2GoAway | Close::H2Drop => {
                            let mut conn = std::pin::pin!(
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                    .serve_connection(io, svc)
                            );
                            tokio::select! {
                                _ = conn.as_mut() => return,
                                () = served.notified() => {}
                            }
                            if matches!(close, Close::H2GoAway) {
                                conn.as_mut().graceful_shutdown();
                                let _ = tokio::time::timeout(TIMEOUT, conn).await;
                            } else {
                                let _ = tokio::time::timeout(Duration::from_millis(50), conn).await;
                            }
                        }
                        Close::Silently => {
                            let mut conn = std::pin::pin!(http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(io, svc));
                            tokio::select! {
                                _ = conn.as_mut() => return,
                                () = served.notified() => {}
                            }
                            // Let the response go out, then drop the idle connection: the
                            // socket is closed with no `Connection: close` ever sent.
                            let _ = tokio::time::timeout(Duration::from_millis(50), conn).await;
                        }
                    }
                });
            }
        });
        Counting { addr, accepted }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A server connection that shuts its socket down once the first response has been flushed
/// (the FIN follows the response at once), then reads end-of-file.
struct CloseAfterResponse {
    io: TokioIo<TcpStream>,
    /// Notified by the handler when it has produced the response.
    answered: Arc<Notify>,
    shut: bool,
}

impl hyper::rt::Read for CloseAfterResponse {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.shut {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for CloseAfterResponse {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        if !this.shut {
            // The handler's notification is a stored permit once it has answered.
            let answered = std::pin::pin!(this.answered.notified());
            if answered
                .poll(&mut Context::from_waker(std::task::Waker::noop()))
                .is_ready()
            {
                std::task::ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
                this.shut = true;
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.shut {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Answers `<path>:<request body>`.
async fn echo(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    full(200, format!("{path}:{}", String::from_utf8_lossy(&body)))
}

/// A proxy with one worker and one provider in front of `upstream`; `tweak` adjusts options.
async fn proxy_for(upstream: &str, tweak: impl FnOnce(&mut ProxyOptions)) -> SocketAddr {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let mut opts = ProxyOptions::default();
    opts.workers = 1;
    tweak(&mut opts);
    proxy(
        &provider_toml("a", upstream, ""),
        vec![Arc::new(IssuerSource(issuer))],
        opts,
    )
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// POSTs `body` to `path` on the proxy: status and body text.
async fn post(c: &reqwest::Client, addr: SocketAddr, path: &str, body: String) -> (u16, String) {
    tokio::time::timeout(TIMEOUT, async {
        let r = c
            .post(format!("http://{addr}{path}"))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    })
    .await
    .expect("request timed out")
}

/// A streamed (chunked) body of `chunks` pieces, sent as fast as the connection takes them.
fn chunked(chunks: Vec<Bytes>) -> Body {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, Infallible>(Frame::data(c)));
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

/// Sets a flag when dropped: tells when the upstream's response stream went away.
struct OnDrop(Arc<AtomicBool>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Waits (bounded) until `flag` is set.
async fn wait_for(flag: &AtomicBool, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    // Three kinds of response end: a sized body (released with its last frame), a chunked one
    // (released at the end of the stream) and an empty one (released with the head).
    let up = Counting::start(Close::Never, |req| async move {
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let text = format!("{path}:{}", String::from_utf8_lossy(&body));
        match path.as_bytes().last() {
            Some(b'1') | Some(b'4') | Some(b'7') => {
                let (a, b) = text.split_at(text.len() / 2);
                Response::new(chunked(vec![
                    Bytes::from(a.to_owned()),
                    Bytes::from(b.to_owned()),
                ]))
            }
            Some(b'2') | Some(b'5') | Some(b'8') => full(200, ""),
            _ => full(200, text),
        }
    })
    .await;
    let addr = proxy_for(&up.url(), |_| {}).await;
    let c = client();
    for i in 0..20 {
        let path = format!("/r{i}");
        let (status, body) = post(&c, addr, &path, format!("body {i}")).await;
        assert_eq!(status, 200, "request {i}");
        let want = if matches!(i % 10, 2 | 5 | 8) {
            String::new()
        } else {
            format!("{path}:body {i}")
        };
        assert_eq!(body, want, "request {i}");
    }
    // A HEAD response has no body at all: the connection is released with the head.
    for i in 0..3 {
        let r = tokio::time::timeout(TIMEOUT, c.head(format!("http://{addr}/h{i}")).send())
            .await
            .expect("HEAD timed out")
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (status, body) = post(&c, addr, "/last", "x".into()).await;
    assert_eq!((status, body.as_str()), (200, "/last:x"));
    assert_eq!(
        up.accepted(),
        1,
        "24 sequential requests share one connection"
    );
}

#[tokio::test]
async fn connection_close_from_the_upstream_is_no_client_visible_error() {
    let up = Counting::start(Close::Announced, echo).await;
    let addr = proxy_for(&up.url(), |_| {}).await;
    let c = client();
    for i in 0..10 {
        let (status, body) = post(&c, addr, &format!("/c{i}"), format!("{i}")).await;
        assert_eq!((status, body), (200, format!("/c{i}:{i}")), "request {i}");
    }
    assert_eq!(up.accepted(), 10, "a new connection for every request");
}

#[tokio::test]
async fn an_idle_connection_closed_by_the_upstream_is_not_used_again() {
    let up = Counting::start(Close::Silently, echo).await;
    let addr = proxy_for(&up.url(), |_| {}).await;
    let c = client();
    for i in 0..5 {
        let (status, body) = post(&c, addr, &format!("/s{i}"), format!("{i}")).await;
        assert_eq!((status, body), (200, format!("/s{i}:{i}")), "request {i}");
        // The upstream closes the idle connection 50 ms after its response.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        up.accepted(),
        5,
        "each request after a close opens a new connection"
    );
}

#[tokio::test]
async fn a_close_right_behind_each_response_is_no_client_visible_error() {
    let up = Counting::start(Close::AfterResponse, echo).await;
    let addr = proxy_for(&up.url(), |_| {}).await;
    let c = client();
    for i in 0..20 {
        let (status, body) = post(&c, addr, &format!("/f{i}"), format!("{i}")).await;
        assert_eq!((status, body), (200, format!("/f{i}:{i}")), "request {i}");
    }
    assert_eq!(up.accepted(), 20, "a new connection for every request");
}

#[tokio::test]
async fn a_response_dropped_early_closes_its_connection() {
    response_dropped_early(false).await;
}

/// Over HTTP/2 the abandoned stream is reset and the shared connection stays.
#[tokio::test]
async fn a_response_dropped_early_over_h2c_resets_its_stream() {
    response_dropped_early(true).await;
}

async fn response_dropped_early(h2c: bool) {
    let stream_dropped = Arc::new(AtomicBool::new(false));
    let flag = stream_dropped.clone();
    let up = Counting::start(Close::Never, move |req| {
        let flag = flag.clone();
        async move {
            if req.uri().path() != "/big" {
                return echo(req).await;
            }
            // 32 MiB of 'L', chunked, far more than any socket buffer holds.
            let guard = OnDrop(flag);
            let stream = futures_util::stream::unfold((0u32, guard), |(i, g)| async move {
                if i == 2048 {
                    return None;
                }
                if i % 16 == 15 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let chunk = Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'L'; 16 * 1024])));
                Some((chunk, (i + 1, g)))
            });
            Response::new(StreamBody::new(stream).boxed_unsync())
        }
    })
    .await;
    let addr = proxy_for(&up.url(), |o| o.upstream_h2c = h2c).await;
    let c = client();
    let (status, _) = post(&c, addr, "/warm", String::new()).await;
    assert_eq!(status, 200);
    assert_eq!(up.accepted(), 1);

    // Read the head and a little of the body of /big (on the pooled connection), then go away.
    tokio::time::timeout(TIMEOUT, async {
        let mut r = client()
            .get(format!("http://{addr}/big"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let first = r.chunk().await.unwrap().unwrap();
        assert!(first.iter().all(|b| *b == b'L'));
    })
    .await
    .expect("/big timed out");
    assert_eq!(up.accepted(), 1, "/big reused the warm connection");
    wait_for(&stream_dropped, "the upstream to see /big abandoned").await;

    // The half-read connection is gone: the next request gets a new one and a clean body.
    for i in 0..3 {
        let (status, body) = post(&c, addr, "/small", format!("{i}")).await;
        assert_eq!(status, 200);
        assert_eq!(body, format!("/small:{i}"), "no byte of /big leaks");
    }
    assert_eq!(
        up.accepted(),
        if h2c { 1 } else { 2 },
        "HTTP/1.1: one new connection after the dropped response, then reused; \
         HTTP/2: the shared connection throughout"
    );
}

#[tokio::test]
async fn a_rejected_response_dropped_unread_is_not_reused_for_the_retry() {
    // The first answer is a 401 with a large body that the proxy drops unread before retrying.
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let up = Counting::start(Close::Never, move |req| {
        let first = n.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                let _ = req.into_body().collect().await;
                return Response::builder()
                    .status(401)
                    .body(chunked(vec![Bytes::from(vec![b'L'; 256 * 1024])]))
                    .unwrap();
            }
            echo(req).await
        }
    })
    .await;
    let addr = proxy_for(&up.url(), |_| {}).await;
    let c = client();
    let (status, body) = post(&c, addr, "/x", "hello".into()).await;
    assert_eq!((status, body.as_str()), (200, "/x:hello"));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one rejection, one retry");
    assert_eq!(up.accepted(), 2, "the retry went out on a new connection");
    let (status, body) = post(&c, addr, "/y", "again".into()).await;
    assert_eq!((status, body.as_str()), (200, "/y:again"));
    assert_eq!(up.accepted(), 2, "the retry's connection is reused");
}

#[tokio::test]
async fn concurrent_requests_open_at_most_one_connection_each_and_are_reused() {
    let up = Counting::start(Close::Never, |req| async move {
        // Long enough for all the requests to overlap.
        tokio::time::sleep(Duration::from_millis(100)).await;
        echo(req).await
    })
    .await;
    let addr = proxy_for(&up.url(), |_| {}).await;
    let c = &client();
    let results = futures_util::future::join_all(
        (0..16).map(|i| async move { (i, post(c, addr, "/p", format!("{i}")).await) }),
    )
    .await;
    for (i, (status, body)) in results {
        assert_eq!((status, body), (200, format!("/p:{i}")), "request {i}");
    }
    let opened = up.accepted();
    assert!(
        (1..=16).contains(&opened),
        "16 concurrent requests opened {opened} connections"
    );
    for i in 0..16 {
        let (status, body) = post(c, addr, "/q", format!("{i}")).await;
        assert_eq!((status, body), (200, format!("/q:{i}")), "request {i}");
    }
    assert_eq!(
        up.accepted(),
        opened,
        "sequential requests after a burst reuse the pooled connections"
    );
}

#[tokio::test]
async fn a_streamed_upload_beyond_the_replay_limit_arrives_whole() {
    streamed_upload_arrives_whole(false).await;
}

/// Over HTTP/2 the streamed body goes through the pipe task, within the stream's capacity.
#[tokio::test]
async fn a_streamed_upload_over_h2c_arrives_whole() {
    streamed_upload_arrives_whole(true).await;
}

async fn streamed_upload_arrives_whole(h2c: bool) {
    const CHUNK: usize = 4 * 1024;
    const CHUNKS: usize = 64;
    const LEN: usize = CHUNK * CHUNKS;
    let up = Counting::start(Close::Never, |req| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let intact = body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8);
        full(200, format!("{} {intact}", body.len()))
    })
    .await;
    let addr = proxy_for(&up.url(), |o| {
        o.replay_limit = 1024;
        o.upstream_h2c = h2c;
    })
    .await;
    let c = client();
    let upload = || {
        let stream = futures_util::stream::unfold(0usize, |i| async move {
            if i == CHUNKS {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let chunk: Vec<u8> = (i * CHUNK..(i + 1) * CHUNK)
                .map(|n| (n % 251) as u8)
                .collect();
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), i + 1))
        });
        reqwest::Body::wrap_stream(stream)
    };
    // Chunked, then with a declared length above the limit (on the reused connection).
    for declared in [false, true] {
        let r = tokio::time::timeout(TIMEOUT, async {
            let mut req = c.post(format!("http://{addr}/upload")).body(upload());
            if declared {
                req = req.header("content-length", LEN.to_string());
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
        .await
        .expect("upload timed out");
        assert_eq!(
            r,
            (200, format!("{LEN} true")),
            "declared length: {declared}"
        );
    }
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn sse_events_with_gaps_are_forwarded_as_they_arrive() {
    let (up, sent_at) = timed_sse_upstream(5, Duration::ZERO, Duration::from_millis(150)).await;
    let addr = proxy_for(&up.url(), |_| {}).await;
    let received = tokio::time::timeout(TIMEOUT, async {
        let mut resp = client()
            .get(format!("http://{addr}/sse"))
            .send()
            .await
            .unwrap();
        let (received, text) = receive_events(&mut resp).await;
        assert_eq!(
            text,
            (0..5).map(|i| format!("data: {i}\n\n")).collect::<String>()
        );
        received
    })
    .await
    .expect("the stream timed out");
    let sent = sent_at.lock().unwrap().clone();
    assert_eq!(received.len(), 5);
    assert_eq!(sent.len(), 5);
    for i in 0..5 {
        let delay = received[i].duration_since(sent[i]);
        println!("event {i}: forwarded after {delay:?}");
        // Tolerant on a loaded machine: each event arrives before the next one is sent.
        let next = sent
            .get(i + 1)
            .copied()
            .unwrap_or(sent[i] + Duration::from_millis(150));
        assert!(
            received[i] < next,
            "event {i} was held back {delay:?}, until the next event was sent"
        );
    }
}

#[tokio::test]
async fn h2c_requests_share_one_connection() {
    let up = Counting::start(Close::Never, |req| async move {
        let version = req.version();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        full(
            200,
            format!("{version:?}:{}", String::from_utf8_lossy(&body)),
        )
    })
    .await;
    let addr = proxy_for(&up.url(), |o| o.upstream_h2c = true).await;
    let c = &client();
    for i in 0..5 {
        let (status, body) = post(c, addr, "/h", format!("{i}")).await;
        assert_eq!((status, body), (200, format!("HTTP/2.0:{i}")));
    }
    let results = futures_util::future::join_all(
        (0..8).map(|i| async move { (i, post(c, addr, "/h", format!("{i}")).await) }),
    )
    .await;
    for (i, (status, body)) in results {
        assert_eq!((status, body), (200, format!("HTTP/2.0:{i}")));
    }
    assert_eq!(up.accepted(), 1, "one shared HTTP/2 connection");
}

/// An HTTP/2 connection the upstream ends after each response, with a GOAWAY or by dropping
/// it: every request still gets its answer, each on a new connection.
#[tokio::test]
async fn h2c_connections_ended_by_the_upstream_are_replaced() {
    for close in [Close::H2GoAway, Close::H2Drop] {
        let up = Counting::start(close, echo).await;
        let addr = proxy_for(&up.url(), |o| o.upstream_h2c = true).await;
        let c = client();
        for i in 0..4 {
            assert_eq!(
                post(&c, addr, "/h", format!("{i}")).await,
                (200, format!("/h:{i}"))
            );
            // Time for the upstream to end the connection and for the proxy to see it.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(up.accepted(), 4, "one connection per request");
    }
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_closes_the_connection_and_nothing_stalls() {
    answer_before_the_upload_ends(false).await;
}

/// Over HTTP/2 the stream ends (hyper's server resets it) and the shared connection carries on.
#[tokio::test]
async fn an_answer_before_the_upload_ends_over_h2c_stalls_nothing() {
    answer_before_the_upload_ends(true).await;
}

async fn answer_before_the_upload_ends(h2c: bool) {
    let up = Counting::start(Close::Never, |req| async move {
        if req.uri().path() == "/upload" {
            // Answer at once, without reading the (slow, streamed) body.
            return full(413, "too large");
        }
        echo(req).await
    })
    .await;
    let addr = proxy_for(&up.url(), |o| {
        o.replay_limit = 1024;
        o.upstream_h2c = h2c;
    })
    .await;
    let c = client();
    let slow = futures_util::stream::unfold(0usize, |i| async move {
        if i == 200 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 4096])),
            i + 1,
        ))
    });
    let status = tokio::time::timeout(TIMEOUT, async {
        c.post(format!("http://{addr}/upload"))
            .body(reqwest::Body::wrap_stream(slow))
            .send()
            .await
            .map(|r| r.status().as_u16())
    })
    .await
    .expect("the early answer was not forwarded");
    // The client may see the 413, or a reset of the upload it was still sending.
    if let Ok(s) = status {
        assert_eq!(s, 413);
    }
    // The half-sent connection is not pooled: the next requests go out at once and succeed.
    for i in 0..3 {
        assert_eq!(
            post(&c, addr, "/next", format!("n{i}")).await,
            (200, format!("/next:n{i}"))
        );
    }
    if h2c {
        assert_eq!(up.accepted(), 1, "the shared HTTP/2 connection carried on");
    } else {
        assert!(up.accepted() >= 2, "the half-sent connection was reused");
    }
}

/// An upstream that answers a request before reading its body, then keeps its end of the
/// connection open and drains whatever arrives: unlike hyper's server, it never closes a
/// connection itself, so only the proxy can. Tells (through the returned flag) whether the
/// proxy closed the connection.
async fn early_answer_upstream() -> (String, Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request head did not arrive");
            seen.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large")
            .await
            .unwrap();
        // Drain the upload for as long as the proxy keeps the connection.
        while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        flag.store(true, Ordering::SeqCst);
    });
    (url, closed)
}

#[tokio::test]
async fn a_connection_answered_before_its_upload_ended_is_closed_not_pooled() {
    let (url, closed) = early_answer_upstream().await;
    let addr = proxy_for(&url, |o| o.replay_limit = 1024).await;
    // An upload that never ends on its own: only closing the connection stops it.
    let endless = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 4096])), ()))
    });
    let status = tokio::time::timeout(
        TIMEOUT,
        client()
            .post(format!("http://{addr}/upload"))
            .body(reqwest::Body::wrap_stream(endless))
            .send(),
    )
    .await
    .expect("the early answer was not forwarded");
    if let Ok(r) = status {
        assert_eq!(r.status(), 413);
    }
    wait_for(
        &closed,
        "the proxy to close the half-sent upstream connection",
    )
    .await;
}
