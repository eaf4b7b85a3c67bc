//! Token injection for reqwest: [`tokenrelay::inject::InjectMiddleware`] in a
//! `reqwest_middleware::ClientWithMiddleware`.
//!
//! The example starts a loopback upstream that checks `Authorization: Bearer tok-N` and
//! revokes the first token after one request, then sends three requests: the second is
//! rejected once and replayed with a fresh token, invisibly to the caller.
//!
//! Run it: `cargo run -p tokenrelay --features reqwest-middleware --example inject_reqwest`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokenrelay::inject::{InjectLayer, InjectMiddleware};
use tokenrelay::source::CommandSource;
use tokenrelay::{Cache, TokenRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.1 upstream (one request per connection) accepting `Bearer tok-1` for one
/// request, then only `Bearer tok-2`.
async fn upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let served = served.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let want = if served.load(Ordering::SeqCst) == 0 {
                    "tok-1"
                } else {
                    "tok-2"
                };
                let ok = head.contains(&format!("authorization: bearer {want}\r\n"));
                if ok {
                    served.fetch_add(1, Ordering::SeqCst);
                }
                let status = if ok { "200 OK" } else { "401 Unauthorized" };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
                );
                let _ = tcp.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::main]
async fn main() {
    let addr = upstream().await;
    // A command source: `tok-1` the first time, `tok-2` after that.
    let dir = std::env::temp_dir().join(format!("tokenrelay-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let counter = dir.join("n");
    let cmd = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo tok-$n",
        c = counter.display()
    );
    let entry = Cache::new(Arc::new(CommandSource::shell(&cmd))).entry(TokenRequest::new("models"));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(InjectMiddleware::new(
            InjectLayer::new(entry).min_refresh_interval(Duration::ZERO),
        ))
        .build();
    for i in 1..=3 {
        let resp = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth("whatever-the-caller-had")
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .unwrap();
        println!("request {i}: {}", resp.status());
        assert_eq!(resp.status(), 200);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
