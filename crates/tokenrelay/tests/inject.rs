//! The injection middleware over loopback: hyper-util's client with `InjectLayer`,
//! reqwest-middleware with `InjectMiddleware` (with the feature), and the proxy built with
//! `Proxy::builder()` from values, no config file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{bearer, full, Issuer, IssuerSource, Upstream};
use tokenrelay::inject::{InjectLayer, ReplayBody};
use tokenrelay::proxy::{ProviderSpec, Proxy};
use tokenrelay::{Cache, TokenRequest};
use tower::{Layer, ServiceExt};

/// An upstream that answers 200 to a valid token of `issuer`, 401 otherwise.
async fn checking(issuer: &Arc<Issuer>) -> Upstream {
    let issuer = issuer.clone();
    Upstream::start(move |seen| {
        let ok = bearer(&seen.headers).is_some_and(|t| issuer.accepts(&t));
        full(if ok { 200 } else { 401 }, seen.body)
    })
    .await
}

#[tokio::test]
async fn hyper_util_client_with_the_layer_survives_a_revocation() {
    let issuer = Issuer::new("h", Duration::from_secs(3600));
    let up = checking(&issuer).await;
    let entry = Cache::new(Arc::new(IssuerSource(issuer.clone()))).entry(TokenRequest::new("h"));
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let svc = InjectLayer::new(entry)
        .min_refresh_interval(Duration::ZERO)
        .layer(client);
    for i in 0..6 {
        if i == 3 {
            issuer.revoke_all();
        }
        let req = http::Request::post(format!("{}/v1/chat/completions", up.url()))
            .header("authorization", "Bearer from-the-caller")
            .body(Full::new(Bytes::from(format!("{{\"i\":{i}}}"))))
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!(issuer.acquisitions(), 2);
    let seen = up.seen();
    assert_eq!(seen.len(), 7, "six requests and one replay");
    assert!(seen
        .iter()
        .all(|s| bearer(&s.headers).as_deref() != Some("from-the-caller")));
    assert_eq!(
        seen[3].body, seen[4].body,
        "the replay carries the same body"
    );
}

#[tokio::test]
async fn a_proxy_built_from_values_forwards_and_retries() {
    let issuer = Issuer::new("b", Duration::from_secs(3600));
    let up = checking(&issuer).await;
    let spec = ProviderSpec::new(
        "built",
        up.url().parse().unwrap(),
        Arc::new(IssuerSource(issuer.clone())),
    )
    .unwrap()
    .min_refresh_interval(Duration::ZERO)
    .path_prefix("/built")
    .unwrap();
    let bound = Proxy::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .provider(spec)
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addr();
    tokio::spawn(bound.run(std::future::pending()));
    let http = reqwest::Client::new();
    for i in 0..4 {
        if i == 2 {
            issuer.revoke_all();
        }
        let resp = http
            .post(format!("http://{addr}/built/v1/chat/completions"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!(issuer.acquisitions(), 2);
    assert_eq!(up.seen()[0].path_and_query, "/v1/chat/completions");
}

#[tokio::test]
async fn builder_refusals_name_the_key() {
    let src = || Arc::new(IssuerSource(Issuer::new("x", Duration::from_secs(60))));
    assert!("ftp://x".parse::<tokenrelay::proxy::Upstream>().is_err());
    let e =
        ProviderSpec::new("bad name", "http://127.0.0.1:1".parse().unwrap(), src()).unwrap_err();
    assert!(e.to_string().contains("provider.name"), "{e}");
    let spec =
        |n: &str| ProviderSpec::new(n, "http://127.0.0.1:1".parse().unwrap(), src()).unwrap();
    let e = Proxy::builder()
        .provider(spec("a"))
        .provider(spec("a"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("duplicate provider name"), "{e}");
    let e = Proxy::builder()
        .listen("0.0.0.0:0".parse().unwrap())
        .provider(spec("a"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("local key"), "{e}");
    let e = Proxy::builder()
        .provider(spec("a"))
        .provider(spec("b"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("path_prefix"), "{e}");
    assert!(Proxy::builder().build().is_err());
}

#[cfg(feature = "reqwest-middleware")]
#[tokio::test]
async fn reqwest_middleware_survives_a_revocation() {
    use tokenrelay::inject::InjectMiddleware;
    let issuer = Issuer::new("r", Duration::from_secs(3600));
    let up = checking(&issuer).await;
    let entry = Cache::new(Arc::new(IssuerSource(issuer.clone()))).entry(TokenRequest::new("r"));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(InjectMiddleware::new(
            InjectLayer::new(entry).min_refresh_interval(Duration::ZERO),
        ))
        .build();
    for i in 0..4 {
        if i == 2 {
            issuer.revoke_all();
        }
        let resp = client
            .post(format!("{}/v1/x", up.url()))
            .bearer_auth("from-the-caller")
            .body(format!("{{\"i\":{i}}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!(issuer.acquisitions(), 2);
    assert_eq!(up.seen().len(), 5);
}
