//! The demo's wire helpers, shared by its upstream and its scripted tool turns: which API a
//! request speaks, SSE responses and event framing.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

use super::server::Body;

/// Pause between SSE events, so streaming is visible.
const EVENT_GAP: Duration = Duration::from_millis(25);

/// The API a request speaks.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Api {
    Chat,
    Responses,
    Messages,
    Models,
}

pub(super) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub(super) fn sse(events: Vec<String>) -> Response<Body> {
    let stream =
        futures_util::stream::unfold(events.into_iter().enumerate(), |mut it| async move {
            let (i, e) = it.next()?;
            if i > 0 {
                tokio::time::sleep(EVENT_GAP).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(e))), it))
        });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

pub(super) fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

pub(super) fn event(name: &str, v: &Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}
