//! TLS to the upstream: a loopback HTTPS server with a test CA. Trusted through `ca_bundle`,
//! the proxy negotiates HTTP/2 by ALPN; without it, the certificate is refused and the client
//! gets a JSON 502 naming the provider.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokenrelay::proxy::ProxyOptions;
use tokenrelay::Source;

/// What the upstream saw: the HTTP version and the bearer of each request.
type Seen = Arc<Mutex<Vec<(http::Version, Option<String>)>>>;

/// An HTTPS upstream (h2 and http/1.1 by ALPN) that records the version and bearer it saw.
async fn recording_tls_upstream() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let addr = tls_upstream(move |req| {
        record
            .lock()
            .unwrap()
            .push((req.version(), bearer(req.headers())));
        full(200, r#"{"tls":true}"#)
    })
    .await;
    (addr, seen)
}

fn config(addr: SocketAddr, ca: Option<&str>) -> String {
    let ca_line = ca
        .map(|p| format!("ca_bundle = \"{p}\"\n"))
        .unwrap_or_default();
    format!(
        "{ca_line}{}",
        provider_toml("secure", &format!("https://localhost:{}", addr.port()), "")
    )
}

#[tokio::test]
async fn a_ca_bundle_is_trusted_and_h2_is_negotiated() {
    let (up, seen) = recording_tls_upstream().await;
    let issuer = Issuer::new("tls", Duration::from_secs(3600));
    let ca = tls_fixture("ca.pem");
    let addr = proxy(
        &config(up, Some(ca.to_str().unwrap())),
        vec![Arc::new(IssuerSource(issuer)) as Arc<dyn Source>],
        ProxyOptions::default(),
    )
    .await;
    let r = reqwest::get(format!("http://{addr}/v1/models"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"tls":true}"#);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, http::Version::HTTP_2, "ALPN picked h2");
    assert_eq!(seen[0].1.as_deref(), Some("tok-tls-1"));
}

#[tokio::test]
async fn upstream_http1_offers_only_http1_by_alpn() {
    let (up, seen) = recording_tls_upstream().await;
    let issuer = Issuer::new("tls", Duration::from_secs(3600));
    let ca = tls_fixture("ca.pem");
    let mut opts = ProxyOptions::default();
    opts.upstream_http1 = true;
    let addr = proxy(
        &config(up, Some(ca.to_str().unwrap())),
        vec![Arc::new(IssuerSource(issuer)) as Arc<dyn Source>],
        opts,
    )
    .await;
    for _ in 0..3 {
        let r = reqwest::get(format!("http://{addr}/v1/models"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.0 == http::Version::HTTP_11),
        "{seen:?}"
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_json_502() {
    let (up, seen) = recording_tls_upstream().await;
    let issuer = Issuer::new("tls", Duration::from_secs(3600));
    let addr = proxy(
        &config(up, None),
        vec![Arc::new(IssuerSource(issuer)) as Arc<dyn Source>],
        ProxyOptions::default(),
    )
    .await;
    let r = reqwest::get(format!("http://{addr}/v1/models"))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("provider secure"), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    assert!(!msg.contains("tok-tls"), "{msg}");
    assert!(seen.lock().unwrap().is_empty());
}

/// Concurrent first requests to an HTTPS upstream: with h2 negotiated they share the one
/// connection the first of them made (one per worker); with http/1.1 only, each opens its own.
#[tokio::test]
async fn a_cold_burst_opens_one_h2_connection_per_worker() {
    for (alpn, expect_one) in [
        (&[&b"h2"[..], b"http/1.1"][..], true),
        (&[&b"http/1.1"[..]][..], false),
    ] {
        let (up, accepted) =
            tls_upstream_with(alpn, |req| full(200, format!("{:?}", req.version()))).await;
        let issuer = Issuer::new("tls", Duration::from_secs(3600));
        let ca = tls_fixture("ca.pem");
        let mut opts = ProxyOptions::default();
        opts.workers = 1;
        let addr = proxy(
            &config(up, Some(ca.to_str().unwrap())),
            vec![Arc::new(IssuerSource(issuer)) as Arc<dyn Source>],
            opts,
        )
        .await;
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let answers = futures_util::future::join_all((0..8).map(|_| {
            let c = c.clone();
            async move {
                let r = c
                    .get(format!("http://{addr}/v1/models"))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        }))
        .await;
        let version = if expect_one { "HTTP/2.0" } else { "HTTP/1.1" };
        for a in &answers {
            assert_eq!((a.0, a.1.as_str()), (200, version));
        }
        let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
        if expect_one {
            assert_eq!(n, 1, "8 cold requests shared one HTTP/2 connection");
        } else {
            assert!(
                (1..=8).contains(&n),
                "one HTTP/1.1 connection per request at most"
            );
        }
    }
}
