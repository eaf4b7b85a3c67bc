//! TLS to the upstream: a loopback HTTPS server with a test CA. Trusted through `ca_bundle`,
//! the proxy negotiates HTTP/2 by ALPN; without it, the certificate is refused and the client
//! gets a JSON 502 naming the provider.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use support::*;
use tokenrelay::proxy::ProxyOptions;
use tokenrelay::Source;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// What the upstream saw: the HTTP version and the bearer of each request.
type Seen = Arc<Mutex<Vec<(http::Version, Option<String>)>>>;

/// An HTTPS upstream (h2 and http/1.1 by ALPN) that records the version and bearer it saw.
async fn tls_upstream() -> (SocketAddr, Seen) {
    let certs = CertificateDer::pem_file_iter(fixture("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server-key.pem")).unwrap();
    let mut cfg = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.lock()
                            .unwrap()
                            .push((req.version(), bearer(req.headers())));
                        Ok::<_, Infallible>(full(200, r#"{"tls":true}"#))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
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
    let (up, seen) = tls_upstream().await;
    let issuer = Issuer::new("tls", Duration::from_secs(3600));
    let ca = fixture("ca.pem");
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
async fn an_untrusted_certificate_is_a_json_502() {
    let (up, seen) = tls_upstream().await;
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
