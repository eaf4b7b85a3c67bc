//! The upstream client's HTTP/2 side, on the `h2` crate directly rather than hyper's HTTP/2
//! client.
//!
//! hyper's client hands a request with a body to h2 in two steps: the HEADERS frame when the
//! request is sent, and the body from a pipe task once h2 has given the stream send capacity,
//! which h2 does only after its connection task has opened the stream, that is after it has
//! written the HEADERS. So every small JSON request cost two writes to the upstream, and the
//! upstream woke twice for it; hyper also spawned a second task per request to hand the
//! response over. Here a body held in memory (every body under the replay limit) goes to h2
//! with the request, before the connection task runs: h2 keeps it on the stream and writes
//! HEADERS and DATA in one flush (`tests/tls.rs` counts the TLS records). The response head
//! and body are read by the request's own task. A streamed body goes through a pipe task, as
//! in hyper, sending no more than the stream's capacity at a time.
//!
//! The connection's settings are hyper's client defaults (its `http2::Builder`), so the
//! upstream sees the same connection as before.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

#[cfg(doc)]
use super::upstream::UpgradeIo;
use super::upstream::UpstreamBody;

/// hyper's HTTP/2 client defaults (`hyper::proto::h2::client::Config`).
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// A shared HTTP/2 connection: h2's sender, and whether the connection's task has ended.
#[derive(Clone)]
pub(crate) struct H2Conn {
    tx: SendRequest<Bytes>,
    ended: Arc<AtomicBool>,
}

impl H2Conn {
    /// The HTTP/2 handshake on `io` (an [`UpgradeIo`] in the proxy); the connection's task is
    /// spawned on the current runtime.
    pub(crate) async fn handshake<T>(io: T) -> Result<Self, h2::Error>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (tx, conn) = h2::client::Builder::new()
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .enable_push(false)
            .handshake::<_, Bytes>(TokioIo::new(io))
            .await?;
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        // Boxed for the reason `BoxingExecutor` gives: the connection future is large.
        tokio::spawn(Box::pin(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
            flag.store(true, Ordering::Release);
        }));
        Ok(H2Conn { tx, ended })
    }

    /// Whether the connection has ended (closed by either side, or failed).
    pub(crate) fn is_closed(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// A sender for one request; `None` when the connection is closing (a GOAWAY came) or has
    /// ended, so the request goes to another connection. Each request has its own clone, so
    /// none waits for another's stream to open: requests beyond the upstream's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` wait in h2's queue of streams to open, within the
    /// request's `upstream_timeout`.
    pub(crate) async fn ready(&self) -> Option<SendRequest<Bytes>> {
        if self.is_closed() {
            return None;
        }
        self.tx.clone().ready().await.ok()
    }
}

/// Sends `req` (absolute URI, no `Host`) on `tx`, which [`H2Conn::ready`] gave, and waits for
/// the response head.
pub(crate) async fn send(
    tx: &mut SendRequest<Bytes>,
    req: Request<UpstreamBody>,
) -> Result<Response<H2Body>, h2::Error> {
    let (pending, pipe) = start(tx, req)?;
    // Dropped before the response head (the client went away, or `upstream_timeout`): the
    // streamed body's pipe resets the stream, as hyper's does.
    let mut cancel = CancelPipe(pipe);
    let resp = pending.await?;
    cancel.disarm();
    Ok(H2Body::response(resp))
}

/// Tells a streamed body's pipe, when dropped armed, to reset its stream.
struct CancelPipe(Option<tokio::sync::oneshot::Sender<()>>);

impl CancelPipe {
    /// The response head is in: the pipe goes on with the body.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelPipe {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Opens the stream: HEADERS, and a body in memory with them; a streamed body gets a pipe
/// task, and the sender that cancels it.
fn start(
    tx: &mut SendRequest<Bytes>,
    req: Request<UpstreamBody>,
) -> Result<(ResponseFuture, Option<tokio::sync::oneshot::Sender<()>>), h2::Error> {
    let (mut parts, body) = req.into_parts();
    super::headers::strip_for_h2(&mut parts.headers);
    let head = Request::from_parts(parts, ());
    match body {
        Either::Left(full) => match take_full(full) {
            None => Ok((tx.send_request(head, true)?.0, None)),
            Some(data) => {
                let (pending, mut stream) = tx.send_request(head, false)?;
                // Without capacity yet (the stream opens when the connection task next runs),
                // h2 keeps the data on the stream and sends it right after the HEADERS.
                stream.send_data(data, true)?;
                Ok((pending, None))
            }
        },
        Either::Right(streamed) => {
            if streamed.is_end_stream() {
                return Ok((tx.send_request(head, true)?.0, None));
            }
            let (pending, stream) = tx.send_request(head, false)?;
            let (cancel, cancelled) = tokio::sync::oneshot::channel();
            tokio::spawn(Box::pin(pipe(streamed, stream, cancelled)));
            Ok((pending, Some(cancel)))
        }
    }
}

/// The bytes of a body held in memory, `None` when it is empty.
fn take_full(full: http_body_util::Full<Bytes>) -> Option<Bytes> {
    let mut full = std::pin::pin!(full);
    // A `Full` body is always ready: it yields its one data frame, or nothing.
    let cx = &mut Context::from_waker(std::task::Waker::noop());
    match full.as_mut().poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().ok().filter(|d| !d.is_empty()),
        _ => None,
    }
}

/// Copies a streamed request body onto `stream` (see [`copy`]), or resets the stream when
/// `cancelled` fires: the request was dropped before its response head came.
async fn pipe(
    mut body: Incoming,
    mut stream: SendStream<Bytes>,
    cancelled: tokio::sync::oneshot::Receiver<()>,
) {
    let cancelled = async {
        match cancelled.await {
            Ok(()) => {}
            // Disarmed: the response came, the copy goes on.
            Err(_) => std::future::pending().await,
        }
    };
    let reset = tokio::select! {
        () = copy(&mut body, &mut stream) => false,
        () = cancelled => true,
    };
    if reset {
        stream.send_reset(Reason::CANCEL);
    }
}

/// Copies a streamed request body onto `stream`, within the stream's send capacity (so a
/// slow upstream holds the client's upload back), then its trailers or the end of stream.
/// A failed client body resets the stream; a reset from the upstream ends the copy.
async fn copy(body: &mut Incoming, stream: &mut SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body failed; resetting the upstream stream");
                stream.send_reset(Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let last = body.is_end_stream();
                    if data.is_empty() {
                        if last {
                            let _ = stream.send_data(data, true);
                            return;
                        }
                        continue;
                    }
                    while !data.is_empty() {
                        stream.reserve_capacity(data.len());
                        let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                            Some(Ok(n)) => n,
                            // The stream was reset or closed meanwhile.
                            Some(Err(_)) | None => return,
                        };
                        if granted == 0 {
                            continue;
                        }
                        let chunk = data.split_to(granted.min(data.len()));
                        if stream.send_data(chunk, last && data.is_empty()).is_err() {
                            return;
                        }
                    }
                    if last {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        stream.reserve_capacity(0);
                        let _ = stream.send_trailers(trailers);
                        return;
                    }
                }
            },
        }
    }
}

/// A response body read from its HTTP/2 stream by the task that polls it. The flow-control
/// window is given back as each chunk is taken, as hyper does.
pub(crate) struct H2Body {
    recv: RecvStream,
    data_done: bool,
    hint: SizeHint,
}

impl H2Body {
    /// The response with its body, whose exact size is the `Content-Length` if it has one (as
    /// hyper reports it).
    fn response(resp: Response<RecvStream>) -> Response<H2Body> {
        let len = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        resp.map(|recv| H2Body {
            recv,
            data_done: false,
            hint: len.map_or_else(SizeHint::default, SizeHint::with_exact),
        })
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(ended_or(e)),
                None => this.data_done = true,
            }
        }
        Poll::Ready(match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => ended_or(e),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// A reset with `NO_ERROR` ends the body cleanly (RFC 9113 §8.1: an upstream that has sent
/// its whole response may reset the stream to stop the request body); any other is an error.
fn ended_or(e: h2::Error) -> Option<Result<Frame<Bytes>, h2::Error>> {
    if e.reason() == Some(Reason::NO_ERROR) && !e.is_io() {
        None
    } else {
        Some(Err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioExecutor;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

    /// The client's end of an in-memory connection, counting the writes that reach it.
    struct Counted {
        io: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let polled = Pin::new(&mut self.io).poll_write(cx, buf);
            if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            polled
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// Against hyper's HTTP/2 server: a request with a body in memory leaves in one write
    /// (HEADERS and DATA in one flush). Through hyper's client it took two; should an h2
    /// upgrade change when a new stream gets capacity, this fails.
    #[tokio::test]
    async fn a_request_and_its_body_leave_in_one_write() {
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(Response::new(Full::new(body)))
            });
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), svc)
                .await
        });
        let writes = Arc::new(AtomicUsize::new(0));
        let io = Counted {
            io: client,
            writes: writes.clone(),
        };
        let conn = H2Conn::handshake(TokioIo::new(io)).await.unwrap();
        for round in 0..4 {
            let mut tx = conn.ready().await.unwrap();
            let body = format!("{{\"model\":\"m\",\"round\":{round}}}");
            let req = Request::post("http://upstream.test/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Either::Left(Full::new(Bytes::from(body.clone()))))
                .unwrap();
            let before = writes.load(Ordering::SeqCst);
            let resp = send(&mut tx, req).await.unwrap();
            let sent = writes.load(Ordering::SeqCst) - before;
            assert_eq!(resp.body().size_hint().exact(), Some(body.len() as u64));
            let echoed = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(echoed, body.as_bytes());
            // The first round also acknowledges the server's SETTINGS.
            if round > 0 {
                assert_eq!(sent, 1, "round {round}: the request took {sent} writes");
            }
        }
        // A request without a body ends its stream with the HEADERS.
        let mut tx = conn.ready().await.unwrap();
        let req = Request::get("http://upstream.test/")
            .body(Either::Left(Full::new(Bytes::new())))
            .unwrap();
        let resp = send(&mut tx, req).await.unwrap();
        assert!(resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
        assert!(!conn.is_closed());
    }
}
