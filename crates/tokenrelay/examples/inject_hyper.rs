//! Token injection inside your own HTTP client: hyper-util's pooled client wrapped in
//! [`tokenrelay::inject::InjectLayer`].
//!
//! The example starts a loopback upstream that accepts only the newest token and revokes it
//! after the second request, then sends four requests through the injecting client: the third
//! is rejected once, the layer drops that token generation, takes a fresh one and replays the
//! request, and the caller sees four 200s.
//!
//! Run it: `cargo run -p tokenrelay --example inject_hyper`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokenrelay::inject::{InjectLayer, ReplayBody, Style};
use tokenrelay::{Cache, Result, Secret, Source, Token, TokenRequest};
use tower::{Layer, ServiceExt};

/// Mints `tok-1`, `tok-2`, … valid for an hour.
#[derive(Debug, Default)]
struct Minter(AtomicU32);

#[async_trait]
impl Source for Minter {
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let now = SystemTime::now();
        Ok(Token::new(Secret::new(format!("tok-{n}")), "minter")
            .acquired_at(now)
            .expires_at(now + Duration::from_secs(3600)))
    }
    fn kind(&self) -> &'static str {
        "minter"
    }
    fn describe(&self) -> String {
        "minter".into()
    }
}

/// A loopback upstream accepting `api-key: tok-N` for the newest N it has allowed; after its
/// second accepted request it moves on to the next token (a revocation).
async fn upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let accepted = accepted.clone();
                    async move {
                        let n = accepted.load(Ordering::SeqCst);
                        let want = format!("tok-{}", 1 + n / 2);
                        let ok = req
                            .headers()
                            .get("api-key")
                            .is_some_and(|v| v == want.as_str());
                        let status = if ok {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            200
                        } else {
                            401
                        };
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut resp = http::Response::new(Full::new(body));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::main]
async fn main() {
    let addr = upstream().await;
    let entry = Cache::new(Arc::new(Minter::default())).entry(TokenRequest::new("azure"));
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let service = InjectLayer::new(entry.clone())
        .style(Style::ApiKey)
        .min_refresh_interval(Duration::ZERO)
        .layer(client);
    for i in 1..=4 {
        let req = http::Request::post(format!("http://{addr}/openai/v1/chat/completions"))
            .header("api-key", "whatever-the-caller-had")
            .body(Full::new(Bytes::from(format!("{{\"n\":{i}}}"))))
            .unwrap();
        let resp = service.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        println!(
            "request {i}: {status} {} (token generation {})",
            String::from_utf8_lossy(&body),
            entry.try_get().map_or(0, |t| t.generation())
        );
        assert_eq!(status, 200);
    }
}
