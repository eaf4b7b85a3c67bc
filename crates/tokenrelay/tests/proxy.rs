//! The sidecar end to end, in-process: real hyper listener, real reqwest egress, loopback upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use support::*;
use tokenrelay::proxy::ProxyOptions;
use tokenrelay::Source;

fn src(i: &Arc<Issuer>) -> Arc<dyn Source> {
    Arc::new(IssuerSource(i.clone()))
}

/// A proxy with one provider "a" in front of `up`, its tokens from `issuer`.
async fn one_provider(up: &Upstream, issuer: &Arc<Issuer>) -> std::net::SocketAddr {
    proxy(
        &provider_toml("a", &up.url(), ""),
        vec![src(issuer)],
        ProxyOptions::default(),
    )
    .await
}

/// An upstream that accepts only valid tokens from `issuer`, like a real provider.
async fn checking_upstream(issuer: Arc<Issuer>, reject_status: u16) -> Upstream {
    Upstream::start(move |seen| match bearer(&seen.headers) {
        Some(t) if issuer.accepts(&t) => full(
            200,
            format!(
                r#"{{"ok":true,"token_ok":true,"path":"{}"}}"#,
                seen.path_and_query
            ),
        ),
        _ => full(
            reject_status,
            r#"{"error":{"message":"bad token","code":"invalid_api_key"}}"#,
        ),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_across_lifetimes_has_no_client_visible_401() {
    let issuer = Issuer::new("a", Duration::from_millis(1500));
    let up = checking_upstream(issuer.clone(), 401).await;
    let addr = one_provider(&up, &issuer).await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..45 {
        let r = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .body("{}")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let n = issuer.acquisitions();
    assert!(
        n >= 3,
        "~4.5 s of 1.5 s tokens must take several acquisitions, got {n}"
    );
    // every upstream request carried a valid token (no 401 at the upstream either)
    assert_eq!(up.seen().len(), 45);
}

#[tokio::test]
async fn rejected_token_is_invalidated_and_request_retried_once() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = checking_upstream(issuer.clone(), 401).await;
    let addr = one_provider(&up, &issuer).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{addr}/x"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    issuer.revoke_all();
    let r = client
        .post(format!("http://{addr}/x"))
        .body("hello again")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 3, "first ok, then rejected, then retried");
    assert_eq!(bearer(&seen[1].headers).unwrap(), "tok-a-1");
    assert_eq!(bearer(&seen[2].headers).unwrap(), "tok-a-2");
    assert_eq!(
        seen[2].body,
        Bytes::from("hello again"),
        "the retry replays the same body"
    );
    assert_eq!(issuer.acquisitions(), 2);
    let status: Value = client
        .get(format!("http://{addr}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["providers"][0]["retries"], 1);
}

#[tokio::test]
async fn a_body_that_arrives_in_pieces_is_kept_whole_for_the_retry() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = checking_upstream(issuer.clone(), 401).await;
    let addr = one_provider(&up, &issuer).await;
    reqwest::get(format!("http://{addr}/warm")).await.unwrap();
    issuer.revoke_all();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.set_nodelay(true).unwrap();
    conn.write_all(
        b"POST /x HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 15\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for piece in ["hello", " multi", "part"] {
        // Apart in time, so that the proxy reads them as separate body frames.
        tokio::time::sleep(Duration::from_millis(30)).await;
        conn.write_all(piece.as_bytes()).await.unwrap();
    }
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.seen();
    assert_eq!(seen.len(), 3, "warm-up, rejected, retried");
    assert_eq!(seen[1].body, Bytes::from("hello multipart"));
    assert_eq!(
        seen[2].body,
        Bytes::from("hello multipart"),
        "the retry replays it whole"
    );
}

#[tokio::test]
async fn a_second_rejection_is_passed_through_never_looped() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = Upstream::start(|_| full(401, r#"{"error":{"message":"nope"}}"#)).await;
    let addr = one_provider(&up, &issuer).await;
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/x"))
        .body("b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(up.seen().len(), 2, "one try and one retry, no loop");
}

#[tokio::test]
async fn gateway_403_counts_as_rejection_when_configured() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = checking_upstream(issuer.clone(), 403).await;
    let toml = provider_toml("a", &up.url(), "retry_on = [401, 403]");
    let addr = proxy(&toml, vec![src(&issuer)], ProxyOptions::default()).await;
    let client = reqwest::Client::new();
    client.get(format!("http://{addr}/x")).send().await.unwrap();
    issuer.revoke_all();
    let r = client.get(format!("http://{addr}/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(issuer.acquisitions(), 2);
}

#[tokio::test]
async fn non_replayable_body_passes_401_through_and_next_request_recovers() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = checking_upstream(issuer.clone(), 401).await;
    let mut opts = ProxyOptions::default();
    opts.replay_limit = 16;
    let addr = proxy(&provider_toml("a", &up.url(), ""), vec![src(&issuer)], opts).await;
    let client = reqwest::Client::new();
    client
        .get(format!("http://{addr}/warm"))
        .send()
        .await
        .unwrap();
    issuer.revoke_all();
    let big = vec![b'x'; 1024];
    let r = client
        .post(format!("http://{addr}/x"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a body larger than the replay buffer cannot be retried"
    );
    let r = client
        .post(format!("http://{addr}/x"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the rejected token was invalidated, the next request has a fresh one"
    );
    let seen = up.seen();
    assert_eq!(
        seen[2].body.len(),
        1024,
        "large bodies are streamed through intact"
    );
}

#[tokio::test]
async fn sse_events_arrive_as_they_are_sent() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let gap = Duration::from_millis(200);
    let (up, sent_at) = timed_sse_upstream(5, gap, gap).await;
    let addr = one_provider(&up, &issuer).await;
    let mut resp = reqwest::Client::new()
        .get(format!("http://{addr}/sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (received, _) = receive_events(&mut resp).await;
    let sent = sent_at.lock().unwrap().clone();
    assert_eq!(received.len(), 5);
    for (i, (s, r)) in sent.iter().zip(&received).enumerate() {
        let delay = r.duration_since(*s);
        println!("event {i}: forwarded after {delay:?}");
        assert!(
            delay < Duration::from_millis(100),
            "event {i} was held back {delay:?}"
        );
    }
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    struct OnDrop(Arc<AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let up = Upstream::start_raw(move |_req, _seen| {
        let guard = OnDrop(d.clone());
        async move {
            let stream = futures_util::stream::unfold((0u32, guard), |(i, g)| async move {
                if i == 200 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from("data: x\n\n"))),
                    (i + 1, g),
                ))
            });
            http::Response::new(StreamBody::new(stream).boxed_unsync())
        }
    })
    .await;
    let addr = one_provider(&up, &issuer).await;
    let mut resp = reqwest::Client::new()
        .get(format!("http://{addr}/sse"))
        .send()
        .await
        .unwrap();
    resp.chunk().await.unwrap();
    resp.chunk().await.unwrap();
    drop(resp);
    for _ in 0..40 {
        if dropped.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the upstream stream was still running 2 s after the client went away");
}

#[tokio::test]
async fn providers_are_isolated() {
    let a = Issuer::new("a", Duration::from_secs(3600));
    let b = Issuer::new("b", Duration::from_secs(3600));
    let up_a = checking_upstream(a.clone(), 401).await;
    let up_b = checking_upstream(b.clone(), 401).await;
    let toml = format!(
        "{}{}",
        provider_toml("a", &up_a.url(), "path_prefix = \"/a\""),
        provider_toml(
            "b",
            &up_b.url(),
            "path_prefix = \"/b\"\ninject = \"x-api-key\""
        )
    );
    let addr = proxy(&toml, vec![src(&a), src(&b)], ProxyOptions::default()).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("http://{addr}/a/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = client
        .get(format!("http://{addr}/b/v1/models"))
        .send()
        .await
        .unwrap();
    // b injects x-api-key, which the checking upstream does not read as a bearer → 401 after one retry
    assert_eq!(r.status(), 401);
    assert_eq!(up_b.seen()[0].headers["x-api-key"], "tok-b-1");
    assert_eq!(
        up_a.seen()[0].path_and_query,
        "/v1/models",
        "prefix is stripped"
    );
    a.revoke_all();
    assert_eq!(
        client
            .get(format!("http://{addr}/a/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(a.acquisitions(), 2);
    assert_eq!(
        b.acquisitions(),
        2,
        "b's own two rejections; a's 401 never touched b"
    );
    let r = client
        .get(format!("http://{addr}/c/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn paths_and_queries_reach_the_upstream_rewritten_only_as_configured() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let plain = checking_upstream(issuer.clone(), 401).await;
    let based = checking_upstream(issuer.clone(), 401).await;
    let toml = format!(
        "{}{}",
        provider_toml("root", &plain.url(), ""),
        provider_toml(
            "based",
            &format!("{}/openai/", based.url()),
            "path_prefix = \"/azure\""
        )
    );
    let addr = proxy(
        &toml,
        vec![src(&issuer), src(&issuer)],
        ProxyOptions::default(),
    )
    .await;
    let client = reqwest::Client::new();
    for path in [
        "/v1/chat/completions?api-version=2024-10-21&x=%2F",
        "/azure/deployments/gpt/chat/completions?api-version=1",
        "/azure",
        "/azure?q=1",
    ] {
        let r = client
            .post(format!("http://{addr}{path}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let seen = |up: &Upstream| -> Vec<String> {
        up.seen().iter().map(|s| s.path_and_query.clone()).collect()
    };
    assert_eq!(
        seen(&plain),
        ["/v1/chat/completions?api-version=2024-10-21&x=%2F"],
        "no base path, no prefix: sent as it came"
    );
    assert_eq!(
        seen(&based),
        [
            "/openai/deployments/gpt/chat/completions?api-version=1",
            "/openai/",
            "/openai/?q=1",
        ],
        "prefix stripped, base path prepended, query kept"
    );
}

#[tokio::test]
async fn head_responses_keep_the_upstreams_content_length() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = Upstream::start(|_| full(200, "hello world")).await;
    let addr = one_provider(&up, &issuer).await;
    let direct = reqwest::Client::new()
        .head(format!("{}/file", up.url()))
        .send()
        .await
        .unwrap();
    let proxied = reqwest::Client::new()
        .head(format!("http://{addr}/file"))
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
    assert_eq!(direct.headers()["content-length"], "11");
    assert_eq!(
        proxied.headers().get("content-length"),
        direct.headers().get("content-length"),
        "what the upstream said about the body a GET would get"
    );
}

#[tokio::test]
async fn inbound_credentials_are_stripped_and_ours_injected() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = Upstream::start(|_| full(200, "{}")).await;
    let toml = provider_toml(
        "a",
        &up.url(),
        "inject = \"api-key\"\nheaders = { \"x-extra\" = \"1\" }",
    );
    let addr = proxy(&toml, vec![src(&issuer)], ProxyOptions::default()).await;
    reqwest::Client::new()
        .get(format!(
            "http://{addr}/openai/deployments/d/chat/completions?api-version=2024-10-21"
        ))
        .header("authorization", "Bearer client-secret")
        .header("api-key", "client-key")
        .header("x-api-key", "client-x")
        .header("x-keep", "yes")
        .send()
        .await
        .unwrap();
    let seen = &up.seen()[0];
    assert_eq!(
        seen.path_and_query,
        "/openai/deployments/d/chat/completions?api-version=2024-10-21"
    );
    assert!(seen.headers.get("authorization").is_none());
    assert!(seen.headers.get("x-api-key").is_none());
    assert_eq!(seen.headers.get_all("api-key").iter().count(), 1);
    assert_eq!(seen.headers["api-key"], "tok-a-1");
    assert_eq!(seen.headers["x-extra"], "1");
    assert_eq!(seen.headers["x-keep"], "yes");
}

#[tokio::test]
async fn local_key_is_enforced_and_never_forwarded() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = Upstream::start(|_| full(200, "{}")).await;
    let mut opts = ProxyOptions::default();
    opts.local_key = Some(tokenrelay::Secret::new("trl-local"));
    let addr = proxy(&provider_toml("a", &up.url(), ""), vec![src(&issuer)], opts).await;
    let client = reqwest::Client::new();
    let r = client.get(format!("http://{addr}/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "local_key_invalid");
    let r = client
        .get(format!("http://{addr}/x"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for (h, v) in [
        ("authorization", "Bearer trl-local"),
        ("x-api-key", "trl-local"),
        ("api-key", "trl-local"),
    ] {
        let r = client
            .get(format!("http://{addr}/x"))
            .header(h, v)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{h}");
    }
    for s in up.seen() {
        for (_, v) in s.headers.iter() {
            assert!(
                !v.to_str().unwrap_or("").contains("trl-local"),
                "local key leaked upstream"
            );
        }
    }
    // rejections are counted apart from upstream answers
    let metrics = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tokenrelay_local_key_rejections_total{provider=\"a\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("status=\"401\""), "{metrics}");
    // /healthz stays open for probes; /status needs the key
    assert_eq!(
        client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("http://{addr}/status"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn non_loopback_listen_requires_a_local_key() {
    let cfg = tokenrelay::config::Config::from_toml(
        &format!(
            "listen = \"0.0.0.0:0\"\n{}",
            provider_toml("a", "http://127.0.0.1:9", "")
        ),
        "t",
    )
    .unwrap();
    let env: tokenrelay::source::SharedEnv = Arc::new(tokenrelay::source::MapEnv::default());
    let err = tokenrelay::proxy::Proxy::new(&cfg, &env, ProxyOptions::default()).unwrap_err();
    assert!(err.to_string().contains("requires a local key"), "{err}");
}

#[tokio::test]
async fn http2_clients_are_served() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = Upstream::start(|_| full(200, "{}")).await;
    let addr = one_provider(&up, &issuer).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client.get(format!("http://{addr}/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2);
}

#[tokio::test]
async fn http2_to_upstream_with_prior_knowledge() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = Upstream::start(|_| full(200, "{}")).await;
    let mut opts = ProxyOptions::default();
    opts.upstream_h2c = true;
    let addr = proxy(&provider_toml("a", &up.url(), ""), vec![src(&issuer)], opts).await;
    let r = reqwest::get(format!("http://{addr}/x")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen()[0].version, http::Version::HTTP_2);
}

#[tokio::test]
async fn unreachable_upstream_is_a_json_502_naming_the_provider() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    // bind and drop to get a port nobody listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = proxy(
        &provider_toml("azure", &format!("http://127.0.0.1:{port}"), ""),
        vec![src(&issuer)],
        ProxyOptions::default(),
    )
    .await;
    let r = reqwest::get(format!("http://{addr}/x")).await.unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("provider azure") && msg.contains("unreachable"),
        "{msg}"
    );
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    assert!(!msg.contains("tok-a"), "{msg}");
}

#[tokio::test]
async fn failing_source_is_a_json_503_in_the_provider_shape() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    issuer.fail.store(true, Ordering::SeqCst);
    let up = Upstream::start(|_| full(200, "{}")).await;
    let toml = provider_toml("claude", &up.url(), "inject = \"x-api-key\"");
    let addr = proxy(&toml, vec![src(&issuer)], ProxyOptions::default()).await;
    let r = reqwest::get(format!("http://{addr}/v1/messages"))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["type"], "error",
        "anthropic shape for an x-api-key provider"
    );
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("provider claude") && msg.contains("issuer is down"),
        "{msg}"
    );
    assert!(up.seen().is_empty());
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn admin_endpoints_never_show_token_bytes() {
    let issuer = Issuer::new("secretive", Duration::from_secs(3600));
    let up = Upstream::start(|_| full(200, "{}")).await;
    let addr = one_provider(&up, &issuer).await;
    reqwest::get(format!("http://{addr}/x")).await.unwrap();
    for path in ["/status", "/metrics", "/readyz", "/healthz"] {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("tok-secretive"),
            "{path} shows the token: {text}"
        );
        if path == "/metrics" {
            assert!(
                text.contains("tokenrelay_requests_total{provider=\"a\"} 1"),
                "{text}"
            );
            assert!(
                text.contains("tokenrelay_token_acquisitions_total{provider=\"a\"} 1"),
                "{text}"
            );
            assert!(
                text.contains("tokenrelay_upstream_latency_seconds_count{provider=\"a\"} 1"),
                "{text}"
            );
        }
        if path == "/status" {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["providers"][0]["source_kind"], "issuer");
            assert!(v["providers"][0]["expires_in_s"].as_f64().unwrap() > 3500.0);
        }
    }
}

#[tokio::test]
async fn graceful_shutdown_lets_an_inflight_stream_finish() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let tick = Duration::from_millis(100);
    let (up, _) = timed_sse_upstream(10, tick, tick).await;
    let (addrs, stop, task) = proxy_with_shutdown(
        &provider_toml("a", &up.url(), ""),
        vec![src(&issuer)],
        ProxyOptions::default(),
    )
    .await;
    // A keep-alive connection that is idle when shutdown begins: it is closed at once, not
    // left to the end of the grace period (30 s).
    let idle_client = reqwest::Client::new();
    let idle = idle_client
        .get(format!("http://{}/sse", addrs[0]))
        .send()
        .await
        .unwrap();
    idle.bytes().await.unwrap();
    let mut resp = reqwest::get(format!("http://{}/sse", addrs[0]))
        .await
        .unwrap();
    resp.chunk().await.unwrap();
    stop.send(()).unwrap();
    let mut rest = String::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(
        rest.contains("data: 9"),
        "the stream ran to its end after shutdown began: {rest}"
    );
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        reqwest::get(format!("http://{}/x", addrs[0]))
            .await
            .is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn a_provider_can_have_its_own_listener() {
    let a = Issuer::new("a", Duration::from_secs(3600));
    let b = Issuer::new("b", Duration::from_secs(3600));
    let up = Upstream::start(|s| full(200, bearer(&s.headers).unwrap_or_default())).await;
    let toml = format!(
        "{}{}",
        provider_toml("a", &up.url(), ""),
        provider_toml("b", &up.url(), "listen = \"127.0.0.1:0\"")
    );
    let (addrs, _stop, _task) =
        proxy_with_shutdown(&toml, vec![src(&a), src(&b)], ProxyOptions::default()).await;
    assert_eq!(addrs.len(), 2);
    assert_eq!(
        reqwest::get(format!("http://{}/x", addrs[0]))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "tok-a-1"
    );
    assert_eq!(
        reqwest::get(format!("http://{}/x", addrs[1]))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "tok-b-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_stream_in_flat_memory() {
    const CHUNK: usize = 1024 * 1024;
    const CHUNKS: usize = 256; // 256 MiB through the proxy
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = Upstream::start_raw(|_req, _seen| async move {
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        let stream = futures_util::stream::iter(
            (0..CHUNKS).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
        );
        http::Response::new(StreamBody::new(stream).boxed_unsync())
    })
    .await;
    let addr = one_provider(&up, &issuer).await;
    let before = rss_kib();
    let mut resp = reqwest::get(format!("http://{addr}/big")).await.unwrap();
    let mut total = 0usize;
    let mut peak = before;
    while let Some(c) = resp.chunk().await.unwrap() {
        total += c.len();
        peak = peak.max(rss_kib());
    }
    assert_eq!(total, CHUNK * CHUNKS);
    let grew_mib = (peak.saturating_sub(before)) / 1024;
    println!("RSS before {before} KiB, peak {peak} KiB while 256 MiB passed through");
    assert!(
        grew_mib < 64,
        "memory grew {grew_mib} MiB for a 256 MiB response: it is being buffered"
    );
}

#[tokio::test]
async fn aws_sigv4_signs_requests_with_the_sources_credentials() {
    let up = Upstream::start(|_| full(200, "{}")).await;
    let toml = format!(
        "[[provider]]\nname = \"bedrock\"\nupstream = \"{}\"\ninject = \"aws-sigv4\"\naws_region = \"us-east-1\"\n[provider.source]\nkind = \"command\"\ncommand = \"echo '{{\\\"Version\\\":1,\\\"AccessKeyId\\\":\\\"AKIDTEST\\\",\\\"SecretAccessKey\\\":\\\"sk\\\",\\\"SessionToken\\\":\\\"sess-tok\\\",\\\"Expiration\\\":\\\"2099-01-01T00:00:00Z\\\"}}'\"\n",
        up.url()
    );
    let cfg = tokenrelay::config::Config::from_toml(&toml, "t").unwrap();
    let env: tokenrelay::source::SharedEnv = Arc::new(tokenrelay::source::MapEnv::default());
    let mut opts = ProxyOptions::default();
    opts.listen = Some("127.0.0.1:0".parse().unwrap());
    opts.replay_limit = 64;
    let bound = tokenrelay::proxy::Proxy::new(&cfg, &env, opts)
        .unwrap()
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addr();
    tokio::spawn(bound.run(std::future::pending()));
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{addr}/model/m/invoke"))
        .header("authorization", "Bearer client-junk")
        .header("content-type", "application/json")
        .body(r#"{"prompt":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = &up.seen()[0];
    let auth = seen.headers["authorization"].to_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
    assert!(
        auth.contains("SignedHeaders=") && auth.contains("Signature="),
        "{auth}"
    );
    assert!(seen.headers.contains_key("x-amz-date"));
    assert_eq!(seen.headers["x-amz-security-token"], "sess-tok");
    // a body over the replay limit cannot be signed
    let r = client
        .post(format!("http://{addr}/model/m/invoke"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}
