//! The proxy under attack and under faults, in process: web pages (foreign Host, Origin,
//! preflights), methods and paths that must never leave, slow and idle clients, an upstream
//! that never answers, forced-refresh floods, and HTTP/2 requests that a strict server accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tokenrelay::proxy::ProxyOptions;
use tokenrelay::Source;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn src(i: &Arc<Issuer>) -> Arc<dyn Source> {
    Arc::new(IssuerSource(i.clone()))
}

/// An upstream that answers every request 200 with a permissive CORS header of its own.
async fn ok_upstream() -> Upstream {
    Upstream::start(|_| {
        let mut r = full(200, r#"{"ok":true}"#);
        r.headers_mut()
            .insert("access-control-allow-origin", "*".parse().unwrap());
        r.headers_mut()
            .insert("access-control-allow-credentials", "true".parse().unwrap());
        r
    })
    .await
}

/// A proxy with provider "a" in front of `up` and `top` as top-level config lines.
async fn proxy_with(top: &str, up: &Upstream, issuer: &Arc<Issuer>) -> std::net::SocketAddr {
    proxy(
        &format!("{top}\n{}", provider_toml("a", &up.url(), "")),
        vec![src(issuer)],
        ProxyOptions::default(),
    )
    .await
}

/// Sends `head` (a whole HTTP/1.1 request head) on a new connection and reads the answer
/// until the proxy closes it.
async fn raw(addr: std::net::SocketAddr, head: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(head.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn a_foreign_host_is_refused_before_any_token_is_used() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = ok_upstream().await;
    let addr = proxy_with("", &up, &issuer).await;
    for path in ["/v1/chat/completions", "/status", "/metrics"] {
        let answer = raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: rebind.attacker.example:8787\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 421"), "{path}: {answer}");
        assert!(answer.contains("host_not_allowed"), "{answer}");
        assert!(!answer.contains("tok-a"), "{answer}");
    }
    // Loopback names are served, with and without the port.
    for host in ["127.0.0.1", "localhost:1", &addr.to_string(), "[::1]:8787"] {
        let answer = raw(
            addr,
            &format!("GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
    }
    assert_eq!(
        up.seen().len(),
        4,
        "only the loopback requests reached the upstream"
    );
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tokenrelay_requests_refused_total{reason=\"host\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn allowed_hosts_and_a_local_key_let_other_names_in() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = ok_upstream().await;
    let addr = proxy_with("allowed_hosts = [\"proxy.internal\"]", &up, &issuer).await;
    let ok = raw(
        addr,
        "GET /v1 HTTP/1.1\r\nHost: proxy.internal:8787\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let refused = raw(
        addr,
        "GET /v1 HTTP/1.1\r\nHost: other.internal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 421"), "{refused}");

    // With a local key a page cannot spend the token anyway: any Host that brings the key.
    let mut opts = ProxyOptions::default();
    opts.local_key = Some(tokenrelay::Secret::new("lk-123".to_owned()));
    let keyed = proxy(&provider_toml("a", &up.url(), ""), vec![src(&issuer)], opts).await;
    let ok = raw(
        keyed,
        "GET /v1 HTTP/1.1\r\nHost: box.example\r\nAuthorization: Bearer lk-123\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test]
async fn web_pages_are_refused_unless_their_origin_is_allowed() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = ok_upstream().await;
    let addr = proxy_with(
        "allowed_origins = [\"http://localhost:3000\"]",
        &up,
        &issuer,
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    for (k, v) in [
        ("origin", "https://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let r = client
            .post(&url)
            .header(k, v)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{k}: {v}");
        assert!(r.headers().get("access-control-allow-origin").is_none());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "origin_not_allowed");
    }
    assert!(up.seen().is_empty(), "nothing reached the upstream");

    // The allowed origin: served, with CORS for it only, not the upstream's own.
    let r = client
        .post(&url)
        .header("origin", "http://localhost:3000")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    assert!(h.get("access-control-allow-credentials").is_none());
    assert_eq!(up.seen().len(), 1);

    // Its preflight is answered here; a foreign one is refused; neither is forwarded.
    let pre = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, x-stainless-os",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(
        pre.headers()["access-control-allow-headers"],
        "content-type, x-stainless-os"
    );
    let foreign = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let plain = client
        .request(reqwest::Method::OPTIONS, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 204);
    assert_eq!(up.seen().len(), 1, "no OPTIONS reached the upstream");

    // Without an allowed origin, the upstream's CORS headers never reach a browser.
    let r = client.get(&url).send().await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // The same rules guard the admin endpoints.
    let s = client
        .get(format!("http://{addr}/status"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(s.status(), 403);
}

#[tokio::test]
async fn trace_connect_and_climbing_paths_never_leave() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = ok_upstream().await;
    let addr = proxy(
        &provider_toml("a", &format!("{}/openai/v1", up.url()), ""),
        vec![src(&issuer)],
        ProxyOptions::default(),
    )
    .await;
    let client = reqwest::Client::new();
    let r = client
        .request(reqwest::Method::TRACE, format!("http://{addr}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers().get("allow").is_some());
    let connect = raw(
        addr,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    // A CONNECT's Host is its target: refused as a foreign Host or as a method, never tunnelled.
    assert!(
        connect.starts_with("HTTP/1.1 405") || connect.starts_with("HTTP/1.1 421"),
        "{connect}"
    );
    let connect = raw(
        addr,
        "CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    // Also where every provider has a prefix: the method is refused before routing.
    let prefixed = proxy(
        &provider_toml("a", &up.url(), "path_prefix = \"/a\""),
        vec![src(&issuer)],
        ProxyOptions::default(),
    )
    .await;
    let connect = raw(
        prefixed,
        "CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    for path in [
        "/../admin",
        "/%2e%2e/admin",
        "/chat/..%2f..%2f..%2fadmin",
        "/chat/%2E%2E%2F%2E%2E%2Fadmin",
    ] {
        let answer = raw(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("bad_path"), "{answer}");
    }
    assert!(up.seen().is_empty(), "nothing was forwarded");
    // A dot segment that stays inside is forwarded as it is.
    let r = client
        .get(format!("http://{addr}/chat/%2e%2e/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_closed() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = ok_upstream().await;
    let addr = proxy_with("header_read_timeout = \"1s\"", &up, &issuer).await;
    // Half a request head, then nothing (slowloris); and a connection that sends nothing.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    for c in [&mut slow, &mut silent] {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
            .await
            .expect("the proxy closes the connection")
            .unwrap_or(0);
        let _ = n;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    // A keep-alive connection that goes quiet after a request is closed too.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut buf))
        .await
        .expect("an idle keep-alive connection is closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_cleanly_and_counted() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = ok_upstream().await;
    let mut opts = ProxyOptions::default();
    opts.workers = 1;
    let addr = proxy(
        &format!("max_connections = 3\n{}", provider_toml("a", &up.url(), "")),
        vec![src(&issuer)],
        opts,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        // A request on each, so that each is surely accepted before the next.
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    let refused = raw(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("max_connections"), "{refused}");
    drop(held);
    // Closed connections free their places.
    let mut metrics = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let answer = raw(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            metrics = answer;
            break;
        }
    }
    assert!(
        metrics.contains("tokenrelay_connections_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_upstream_that_never_answers_gets_504_after_upstream_timeout() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    // Accepts, reads the request, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let addr = proxy(
        &provider_toml(
            "a",
            &format!("http://{up_addr}"),
            "upstream_timeout = \"1s\"",
        ),
        vec![src(&issuer)],
        ProxyOptions::default(),
    )
    .await;
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .body("{}")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_flood_of_rejections_that_are_not_about_the_token_costs_one_acquisition() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    // A missing permission: every token is answered 403.
    let up = Upstream::start(|_| full(403, r#"{"error":{"message":"no permission"}}"#)).await;
    let addr = proxy(
        &provider_toml("a", &up.url(), "retry_on = [401, 403]"),
        vec![src(&issuer)],
        ProxyOptions::default(),
    )
    .await;
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let r = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "the upstream's answer is passed through");
    }
    // One for the first token, one forced refresh; the rest within min_refresh_interval.
    assert_eq!(issuer.acquisitions(), 2);
    assert_eq!(up.seen().len(), 21, "20 requests and one retry");
}

#[tokio::test]
async fn a_401_storm_still_retries_every_request_with_one_new_token() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = Upstream::start({
        let issuer = issuer.clone();
        move |seen| match bearer(&seen.headers) {
            Some(t) if issuer.accepts(&t) => full(200, "{}"),
            _ => full(401, "{}"),
        }
    })
    .await;
    let addr = proxy(
        &provider_toml("a", &up.url(), ""),
        vec![src(&issuer)],
        ProxyOptions::default(),
    )
    .await;
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("http://{addr}/warm"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    issuer.revoke_all();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url) = (client.clone(), format!("http://{addr}/v1"));
        tasks.push(tokio::spawn(async move {
            client.post(url).body("{}").send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        issuer.acquisitions(),
        2,
        "one re-acquisition for the whole storm"
    );
}

#[tokio::test]
async fn http2_requests_carry_authority_and_no_host_header() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = tls_upstream(|req| {
        // What nginx checks (RFC 9113 §8.3.1): a Host beside :authority is a duplicate.
        let ok = req.version() == http::Version::HTTP_2
            && req.headers().get("host").is_none()
            && req
                .uri()
                .authority()
                .is_some_and(|a| a.host() == "localhost");
        full(
            if ok { 200 } else { 400 },
            format!("{{\"host\":{:?}}}", req.headers().get("host")),
        )
    })
    .await;
    let ca = tls_fixture("ca.pem");
    let addr = proxy(
        &format!(
            "ca_bundle = {:?}\n{}",
            ca.display().to_string(),
            provider_toml("a", &format!("https://localhost:{}", up.port()), "")
        ),
        vec![src(&issuer)],
        ProxyOptions::default(),
    )
    .await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(status, 200, "{}", r.text().await.unwrap());
    }
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_idle_timeout() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = ok_upstream().await;
    let addr = proxy_with("idle_timeout = \"1s\"", &up, &issuer).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let driven = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://127.0.0.1:{}/v1/models", addr.port()))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let started = Instant::now();
    // The proxy sends GOAWAY and closes: the client connection ends on its own.
    tokio::time::timeout(Duration::from_secs(5), driven)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(700), "closed after {took:?}");
}
