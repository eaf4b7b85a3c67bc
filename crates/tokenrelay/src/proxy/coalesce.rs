//! A response body that forwards in as few writes as the upstream allows.
//!
//! hyper's client hands a response body over one chunk at a time, and its connection task has
//! to run between chunks. Forwarding each chunk as it comes costs one write per SSE event, even
//! when the upstream sent twenty events in one packet. [`Coalesce`] keeps gathering chunks
//! while the upstream connection can produce them without waiting on the network: when the
//! next chunk is not ready it yields to the scheduler once (a deferred wake, so every other
//! ready task — the upstream connection among them — runs first) and forwards what it has only
//! if that turn brought nothing new. It never waits for data that has not arrived: a lone
//! event goes out after one scheduler turn, so streams stay live.
//!
//! An HTTP/1.1 upstream body drives its own connection (see `upstream::UpstreamClient`), so
//! there `Pending` already means "nothing more has arrived" and the gathered chunks go out at
//! once, without the extra turn.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// Forward at the latest when this much is gathered (64 KiB).
const MAX_GATHER: usize = 64 * 1024;

/// A chunk at least this large (16 KiB) goes out as it is, without copying.
const PASS_THROUGH: usize = 16 * 1024;

/// Set when the scheduler has come back to the task after a yield.
struct TurnDone {
    done: AtomicBool,
    task: Waker,
}

impl Wake for TurnDone {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.done.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

pub(crate) struct Coalesce<B: Body> {
    inner: B,
    buf: BytesMut,
    /// A trailers frame or an error that arrived while data was gathered; sent next.
    held: Option<Result<Frame<Bytes>, B::Error>>,
    /// The scheduler turn we are waiting for, if any.
    turn: Option<Arc<TurnDone>>,
    /// Whether data may still be on its way from another task (see [`Coalesce::new`]).
    wait_a_turn: bool,
}

impl<B: Body> Coalesce<B> {
    /// Wraps `inner`. `wait_a_turn`: the body is fed by another task (a spawned connection),
    /// so `Pending` may only mean that task has not run yet, and one scheduler turn is given
    /// before forwarding. Without it, `Pending` means nothing more has arrived, and what was
    /// gathered goes out at once (a body that drives its own connection).
    pub(crate) fn new(inner: B, wait_a_turn: bool) -> Self {
        Coalesce {
            inner,
            buf: BytesMut::new(),
            held: None,
            turn: None,
            wait_a_turn,
        }
    }
}

/// Asks the runtime to wake `task` only after the other ready tasks have run.
fn defer_wake(task: &Waker) -> Arc<TurnDone> {
    let turn = Arc::new(TurnDone {
        done: AtomicBool::new(false),
        task: task.clone(),
    });
    let waker = Waker::from(turn.clone());
    let mut cx = Context::from_waker(&waker);
    let mut y = std::pin::pin!(tokio::task::yield_now());
    if y.as_mut().poll(&mut cx).is_ready() {
        turn.done.store(true, Ordering::Release);
    }
    turn
}

impl<B> Body for Coalesce<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(held) = this.held.take() {
            return Poll::Ready(Some(held));
        }
        loop {
            if this.buf.len() >= MAX_GATHER {
                return flush(this);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.turn = None;
                        let last = this.inner.is_end_stream();
                        if this.buf.is_empty() && (last || data.len() >= PASS_THROUGH) {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        this.buf.extend_from_slice(&data);
                        if last {
                            return flush(this);
                        }
                    }
                    Err(other) => {
                        if this.buf.is_empty() {
                            return Poll::Ready(Some(Ok(other)));
                        }
                        this.held = Some(Ok(other));
                        return flush(this);
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    if this.buf.is_empty() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    this.held = Some(Err(e));
                    return flush(this);
                }
                Poll::Ready(None) => {
                    if this.buf.is_empty() {
                        return Poll::Ready(None);
                    }
                    return flush(this);
                }
                Poll::Pending => {
                    if this.buf.is_empty() {
                        return Poll::Pending;
                    }
                    if !this.wait_a_turn {
                        return flush(this);
                    }
                    return match &this.turn {
                        // Nothing new yet: give the upstream connection one scheduler turn.
                        None => {
                            this.turn = Some(defer_wake(cx.waker()));
                            Poll::Pending
                        }
                        Some(t) if !t.done.load(Ordering::Acquire) => Poll::Pending,
                        // A whole turn brought nothing: the upstream is waiting on the network.
                        Some(_) => flush(this),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.buf.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.buf.is_empty() && self.held.is_none() {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

fn flush<B: Body>(this: &mut Coalesce<B>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
    this.turn = None;
    Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn gathers_ready_chunks_and_keeps_content() {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..20)
            .map(|i| Ok(Frame::data(Bytes::from(format!("data: {i}\n\n")))))
            .collect();
        let body = Coalesce::new(StreamBody::new(futures_util::stream::iter(chunks)), true);
        let mut frames = 0;
        let mut all = Vec::new();
        let mut body = std::pin::pin!(body);
        while let Some(f) = body.frame().await {
            frames += 1;
            all.extend_from_slice(&f.unwrap().into_data().unwrap());
        }
        let want: String = (0..20).map(|i| format!("data: {i}\n\n")).collect();
        assert_eq!(String::from_utf8(all).unwrap(), want);
        assert!(
            frames < 5,
            "20 ready chunks should go out in a few frames, got {frames}"
        );
    }

    #[tokio::test]
    async fn a_lone_chunk_is_not_held_back() {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|x| (x, rx))
        }));
        let mut body = std::pin::pin!(Coalesce::new(StreamBody::new(stream), true));
        tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
            .await
            .unwrap();
        // the sender stays open: the chunk must still come out on its own
        let f = tokio::time::timeout(std::time::Duration::from_secs(1), body.frame())
            .await
            .expect("a lone chunk was held back");
        assert_eq!(
            f.unwrap().unwrap().into_data().unwrap(),
            Bytes::from_static(b"one")
        );
    }

    #[tokio::test]
    async fn keeps_trailers_after_data() {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::trailers(http::HeaderMap::new())),
        ];
        let body = Coalesce::new(StreamBody::new(futures_util::stream::iter(frames)), true);
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_some());
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"a"));
    }
}
