//! The injection rules in process: `tower::ServiceExt::oneshot` against a stub service.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{Layer, ServiceExt};

use super::{InjectError, InjectLayer, ReplayBody, Style};
use crate::cache::Cache;
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::source::{Source, TokenRequest};
use crate::token::Token;

/// Tokens `tok-1`, `tok-2`, … living `lifetime`; fails when told to.
#[derive(Debug)]
struct Numbered {
    calls: AtomicUsize,
    lifetime: Duration,
    fail: std::sync::atomic::AtomicBool,
}

impl Numbered {
    fn new(lifetime: Duration) -> Arc<Self> {
        Arc::new(Numbered {
            calls: AtomicUsize::new(0),
            lifetime,
            fail: false.into(),
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Source for Numbered {
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::new(
                "numbered",
                ErrorKind::Unavailable("down".into()),
            ));
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let now = SystemTime::now();
        Ok(Token::new(Secret::new(format!("tok-{n}")), "numbered")
            .acquired_at(now)
            .expires_at(now + self.lifetime))
    }
    fn kind(&self) -> &'static str {
        "numbered"
    }
    fn describe(&self) -> String {
        "numbered".into()
    }
}

/// What the stub upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    headers: http::HeaderMap,
    body: Bytes,
}

/// An upstream that accepts only the token in `accept` (as `Bearer …` or bare) and answers
/// 200, else 401; records every request.
#[derive(Clone, Default)]
struct Stub {
    accept: Arc<Mutex<String>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    fn accepting(token: &str) -> Self {
        let s = Stub::default();
        *s.accept.lock().unwrap() = token.into();
        s
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn service<B>(
        &self,
        header: &'static str,
    ) -> impl tower_service::Service<
        Request<ReplayBody<B>>,
        Response = Response<Full<Bytes>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let me = self.clone();
        tower::service_fn(move |req: Request<ReplayBody<B>>| {
            let me = me.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                me.seen.lock().unwrap().push(Seen {
                    headers: parts.headers.clone(),
                    body,
                });
                let got = parts
                    .headers
                    .get(header)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim_start_matches("Bearer ").to_owned());
                let ok = got.as_deref() == Some(me.accept.lock().unwrap().as_str());
                let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                if !ok {
                    *resp.status_mut() = StatusCode::UNAUTHORIZED;
                }
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    }
}

fn post(body: &'static str) -> Request<Full<Bytes>> {
    Request::post("http://upstream.test/v1/chat")
        .header("authorization", "Bearer client-sent")
        .header("api-key", "client-sent")
        .header("x-api-key", "client-sent")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn layer(src: &Arc<Numbered>) -> InjectLayer {
    InjectLayer::new(Cache::new(src.clone()).entry(TokenRequest::new("t")))
        .min_refresh_interval(Duration::ZERO)
}

#[tokio::test]
async fn strips_the_callers_credentials_and_injects_in_the_style() {
    let src = Numbered::new(Duration::from_secs(3600));
    let stub = Stub::accepting("tok-1");
    let svc = layer(&src)
        .style(Style::ApiKey)
        .header("api-version", "2024-10-21")
        .unwrap()
        .layer(stub.service("api-key"));
    let resp = svc.oneshot(post("{}")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = stub.seen();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    assert_eq!(h["api-key"], "tok-1");
    assert!(h["api-key"].is_sensitive());
    assert!(h.get("authorization").is_none() && h.get("x-api-key").is_none());
    assert_eq!(h["api-version"], "2024-10-21");
    assert_eq!(h["content-type"], "application/json");
}

#[tokio::test]
async fn a_rejected_token_is_dropped_and_the_request_replayed_once_with_the_same_body() {
    let src = Numbered::new(Duration::from_secs(3600));
    let stub = Stub::accepting("tok-1");
    let svc = layer(&src).layer(stub.service("authorization"));
    assert_eq!(
        svc.clone().oneshot(post("{}")).await.unwrap().status(),
        StatusCode::OK
    );
    // The upstream revokes tok-1: the next request is rejected once, then replayed with tok-2.
    *stub.accept.lock().unwrap() = "tok-2".into();
    let resp = svc.clone().oneshot(post("{\"n\":2}")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(src.calls(), 2);
    let seen = stub.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].headers["authorization"], "Bearer tok-1");
    assert_eq!(seen[2].headers["authorization"], "Bearer tok-2");
    assert_eq!(seen[1].body, seen[2].body);
    assert_eq!(seen[2].body, Bytes::from_static(b"{\"n\":2}"));
}

#[tokio::test]
async fn a_second_rejection_is_passed_on_without_another_replay() {
    let src = Numbered::new(Duration::from_secs(3600));
    let stub = Stub::accepting("never");
    let svc = layer(&src).layer(stub.service("authorization"));
    let resp = svc.oneshot(post("{}")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(stub.seen().len(), 2, "one attempt and one replay");
    assert_eq!(src.calls(), 2);
}

#[tokio::test]
async fn a_streamed_body_past_the_replay_limit_is_not_replayed_but_its_token_is_dropped() {
    let src = Numbered::new(Duration::from_secs(3600));
    let stub = Stub::accepting("tok-2");
    let svc = layer(&src)
        .replay_limit(4)
        .layer(stub.service("authorization"));
    let stream = |chunks: &[&'static str]| {
        let frames: Vec<_> = chunks
            .iter()
            .map(|c| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(
                    c.as_bytes(),
                )))
            })
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    };
    let req = Request::post("http://upstream.test/upload")
        .body(stream(&["0123", "4567"]))
        .unwrap();
    let resp = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(stub.seen().len(), 1);
    assert_eq!(stub.seen()[0].body, Bytes::from_static(b"01234567"));
    // The next request takes a fresh token.
    let small = Request::post("http://upstream.test/upload")
        .body(stream(&["ok"]))
        .unwrap();
    assert_eq!(svc.oneshot(small).await.unwrap().status(), StatusCode::OK);
    assert_eq!(src.calls(), 2);
}

#[tokio::test]
async fn other_statuses_pass_through_and_keep_the_token() {
    let src = Numbered::new(Duration::from_secs(3600));
    let stub = Stub::accepting("never");
    let svc = layer(&src)
        .retry_on([StatusCode::FORBIDDEN])
        .layer(stub.service("authorization"));
    assert_eq!(
        svc.clone().oneshot(post("{}")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        svc.oneshot(post("{}")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(src.calls(), 1, "a 401 is not in retry_on here");
    assert_eq!(stub.seen().len(), 2);
}

#[tokio::test]
async fn forced_refreshes_are_rate_limited_by_min_refresh_interval() {
    let src = Numbered::new(Duration::from_secs(3600));
    let stub = Stub::accepting("never");
    let svc = layer(&src)
        .min_refresh_interval(Duration::from_secs(60))
        .layer(stub.service("authorization"));
    let _ = svc.clone().oneshot(post("{}")).await.unwrap();
    assert_eq!(src.calls(), 2, "the first rejection forces one refresh");
    let resp = svc.oneshot(post("{}")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(src.calls(), 2, "the second, within a minute, does not");
    assert_eq!(stub.seen().len(), 3);
}

#[tokio::test]
async fn a_token_with_less_than_min_remaining_left_is_refreshed_first() {
    // Tokens live 3 s; a request needs 1 s left (a third of the lifetime at most).
    let src = Numbered::new(Duration::from_secs(3));
    let stub = Stub::accepting("tok-1");
    let svc = layer(&src)
        .min_remaining(Duration::from_secs(1))
        .layer(stub.service("authorization"));
    assert_eq!(
        svc.clone().oneshot(post("{}")).await.unwrap().status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    *stub.accept.lock().unwrap() = "tok-2".into();
    assert_eq!(
        svc.oneshot(post("{}")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(src.calls(), 2);
    assert_eq!(
        stub.seen().len(),
        2,
        "refreshed before sending, not after a 401"
    );
}

#[tokio::test]
async fn no_token_is_a_token_error_and_nothing_is_sent() {
    let src = Numbered::new(Duration::from_secs(3600));
    src.fail.store(true, Ordering::SeqCst);
    let stub = Stub::accepting("tok-1");
    let svc = layer(&src).layer(stub.service("authorization"));
    match svc.oneshot(post("{}")).await {
        Err(InjectError::Token(e)) => assert!(e.to_string().contains("down"), "{e}"),
        other => panic!("{:?}", other.map(|r| r.status())),
    }
    assert!(stub.seen().is_empty());
}

#[tokio::test]
async fn sigv4_needs_aws_credentials() {
    let src = Numbered::new(Duration::from_secs(3600));
    let stub = Stub::accepting("tok-1");
    let svc = layer(&src)
        .sigv4("us-east-1", "bedrock")
        .layer(stub.service("authorization"));
    match svc.oneshot(post("{}")).await {
        Err(InjectError::Token(e)) => assert!(e.to_string().contains("AWS credentials"), "{e}"),
        other => panic!("{:?}", other.map(|r| r.status())),
    }
}
