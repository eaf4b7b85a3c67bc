//! Egress through a forward proxy: `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY`, read
//! from the `Env` given to the proxy. A fake forward proxy (hyper, on loopback) answers `CONNECT`
//! by splicing the upgraded connection to the target and absolute-form requests by forwarding
//! them, and records what it saw. Nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::PROXY_AUTHORIZATION;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::*;
use tokenrelay::config::Config;
use tokenrelay::proxy::{Proxy, ProxyOptions};
use tokenrelay::source::{MapEnv, SharedEnv};
use tokenrelay::Source;
use tokio::net::{TcpListener, TcpStream};

/// Bound on every request a test sends.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the fake forward proxy saw of one request.
#[derive(Debug, Clone)]
struct ProxySeen {
    method: Method,
    /// `host:port` for `CONNECT`, the absolute URI otherwise.
    target: String,
    proxy_auth: Option<String>,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A forward proxy on loopback that records each request and relays it.
struct FakeProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<ProxySeen>>>,
}

impl FakeProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                let svc = service_fn(move |req| relay_one(req, seen.clone()));
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeProxy { addr, seen }
    }

    /// The proxy's URL, with `userinfo@` when given.
    fn url(&self, userinfo: &str) -> String {
        if userinfo.is_empty() {
            format!("http://{}", self.addr)
        } else {
            format!("http://{userinfo}@{}", self.addr)
        }
    }

    fn seen(&self) -> Vec<ProxySeen> {
        self.seen.lock().unwrap().clone()
    }
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

/// One request to the fake proxy: a `CONNECT` tunnel or an absolute-form request, relayed as a
/// real forward proxy does (its `Proxy-Authorization` consumed, not passed on).
async fn relay_one(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<ProxySeen>>>,
) -> Result<Response<ProxyBody>, Infallible> {
    // Every value, so that a duplicated header would show.
    let values: Vec<&str> = req
        .headers()
        .get_all(PROXY_AUTHORIZATION)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let proxy_auth = (!values.is_empty()).then(|| values.join(", "));
    req.headers_mut().remove(PROXY_AUTHORIZATION);
    req.headers_mut().remove("proxy-connection");
    let connect = req.method() == Method::CONNECT;
    let target = if connect {
        req.uri()
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default()
    } else {
        req.uri().to_string()
    };
    seen.lock().unwrap().push(ProxySeen {
        method: req.method().clone(),
        target: target.clone(),
        proxy_auth,
    });

    if connect {
        let Ok(mut upstream) = TcpStream::connect(target.as_str()).await else {
            return Ok(empty(StatusCode::BAD_GATEWAY));
        };
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(upgraded), &mut upstream).await;
            }
        });
        return Ok(empty(StatusCode::OK));
    }

    // Absolute form: forward in origin form to the host the URI names, stream the answer back.
    if req.uri().scheme() != Some(&http::uri::Scheme::HTTP) {
        return Ok(empty(StatusCode::BAD_REQUEST));
    }
    let Some(authority) = req.uri().authority().cloned() else {
        return Ok(empty(StatusCode::BAD_REQUEST));
    };
    let Ok(tcp) = TcpStream::connect(authority.as_str()).await else {
        return Ok(empty(StatusCode::BAD_GATEWAY));
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
    else {
        return Ok(empty(StatusCode::BAD_GATEWAY));
    };
    tokio::spawn(conn);
    let origin_form = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .unwrap();
    *req.uri_mut() = origin_form;
    match sender.send_request(req).await {
        Ok(resp) => Ok(resp.map(BodyExt::boxed)),
        Err(_) => Ok(empty(StatusCode::BAD_GATEWAY)),
    }
}

/// The bearer of each request an upstream saw.
type Bearers = Arc<Mutex<Vec<Option<String>>>>;

/// An HTTPS upstream (the test CA's `localhost` certificate) that records each bearer and, like
/// a real provider, answers 401 unless `issuer` issued it.
async fn checking_tls_upstream(issuer: Arc<Issuer>) -> (SocketAddr, Bearers) {
    let seen: Bearers = Arc::default();
    let record = seen.clone();
    let addr = tls_upstream(move |req| {
        let token = bearer(req.headers());
        record.lock().unwrap().push(token.clone());
        match token {
            Some(t) if issuer.accepts(&t) => full(200, r#"{"tls":true}"#),
            _ => full(401, r#"{"error":{"message":"bad token"}}"#),
        }
    })
    .await;
    (addr, seen)
}

/// A plain-HTTP upstream that answers 401 unless the bearer was issued by `issuer`.
async fn checking_upstream(issuer: Arc<Issuer>) -> Upstream {
    Upstream::start(move |seen| match bearer(&seen.headers) {
        Some(t) if issuer.accepts(&t) => full(200, r#"{"ok":true}"#),
        _ => full(401, r#"{"error":{"message":"bad token"}}"#),
    })
    .await
}

/// Starts tokenrelay for `toml` (one provider, tokens from `issuer`) with `vars` as its
/// environment, on an ephemeral loopback port.
async fn relay(toml: &str, issuer: &Arc<Issuer>, vars: &[(&str, &str)]) -> SocketAddr {
    let cfg = Config::from_toml(toml, "test.toml").unwrap();
    let env: SharedEnv = Arc::new(MapEnv::from_pairs(vars.iter().copied()));
    let mut opts = ProxyOptions::default();
    opts.listen = Some("127.0.0.1:0".parse().unwrap());
    opts.workers = 1;
    let sources = vec![Arc::new(IssuerSource(issuer.clone())) as Arc<dyn Source>];
    let bound = Proxy::with_sources(&cfg, sources, &env, opts)
        .unwrap()
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addr();
    tokio::spawn(bound.run(std::future::pending()));
    addr
}

/// A client to tokenrelay that ignores the test process's own proxy variables.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .unwrap()
}

fn basic(user_pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The config for one provider "secure" in front of the TLS upstream, trusting the test CA.
fn tls_toml(up: SocketAddr) -> String {
    format!(
        "ca_bundle = \"{}\"\n{}",
        tls_fixture("ca.pem").display(),
        provider_toml("secure", &format!("https://localhost:{}", up.port()), "")
    )
}

/// The error message of a JSON 502, after checking its status.
async fn message_of_502(r: reqwest::Response) -> (String, Value) {
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-tokenrelay-error"], "1");
    let body: Value = r.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap().to_owned();
    (msg, body)
}

#[tokio::test]
async fn https_upstream_goes_through_one_connect_tunnel_with_proxy_credentials() {
    let issuer = Issuer::new("tls", Duration::from_secs(3600));
    let (up, bearers) = checking_tls_upstream(issuer.clone()).await;
    let fp = FakeProxy::start().await;
    // `%73` is `s`: credentials in the URL are percent-decoded before they are encoded.
    let proxy_url = fp.url("user:pa%73s");
    let addr = relay(&tls_toml(up), &issuer, &[("HTTPS_PROXY", &proxy_url)]).await;

    let r = client()
        .get(format!("http://{addr}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"tls":true}"#);

    let seen = fp.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, Method::CONNECT);
    assert_eq!(seen[0].target, format!("localhost:{}", up.port()));
    assert_eq!(
        seen[0].proxy_auth.as_deref(),
        Some(basic("user:pass").as_str())
    );
    // The token went inside the tunnel, and the upstream accepted it.
    assert_eq!(*bearers.lock().unwrap(), [Some("tok-tls-1".to_owned())]);
}

#[tokio::test]
async fn http_upstream_goes_to_the_proxy_in_absolute_form_and_proxy_credentials_stop_there() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = checking_upstream(issuer.clone()).await;
    let fp = FakeProxy::start().await;
    let proxy_url = fp.url("user:pass");
    let addr = relay(
        &provider_toml("a", &up.url(), ""),
        &issuer,
        &[("HTTP_PROXY", &proxy_url)],
    )
    .await;

    let c = client();
    for _ in 0..2 {
        let r = c
            .post(format!("http://{addr}/v1/x?y=1"))
            // A client's own proxy credentials are hop-by-hop: tokenrelay must not pass them on.
            .header("proxy-authorization", basic("client:secret"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), r#"{"ok":true}"#);
    }

    let seen = fp.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.target, format!("{}/v1/x?y=1", up.url()));
        // Every request (the second on a pooled connection) carries the configured
        // credentials, never the client's.
        assert_eq!(s.proxy_auth.as_deref(), Some(basic("user:pass").as_str()));
    }
    let up_seen = up.seen();
    assert_eq!(up_seen.len(), 2);
    for s in &up_seen {
        assert_eq!(s.path_and_query, "/v1/x?y=1");
        assert!(s.headers.get(PROXY_AUTHORIZATION).is_none(), "{s:?}");
        assert_eq!(bearer(&s.headers).as_deref(), Some("tok-a-1"));
        assert_eq!(s.body, "{}");
    }
}

#[tokio::test]
async fn no_proxy_sends_matching_hosts_direct_without_proxy_credentials() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = checking_upstream(issuer.clone()).await;
    let fp = FakeProxy::start().await;
    let proxy_url = fp.url("user:pass");
    let addr = relay(
        &provider_toml("a", &up.url(), ""),
        &issuer,
        &[
            ("HTTP_PROXY", &proxy_url),
            ("HTTPS_PROXY", &proxy_url),
            ("NO_PROXY", "127.0.0.1"),
        ],
    )
    .await;

    let r = client()
        .get(format!("http://{addr}/v1/x"))
        // Direct, nothing in between strips it: tokenrelay itself must not pass it on.
        .header("proxy-authorization", basic("client:secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(fp.seen().is_empty(), "{:?}", fp.seen());
    let up_seen = up.seen();
    assert_eq!(up_seen.len(), 1);
    assert!(up_seen[0].headers.get(PROXY_AUTHORIZATION).is_none());
    assert_eq!(bearer(&up_seen[0].headers).as_deref(), Some("tok-a-1"));
}

#[tokio::test]
async fn upper_case_first_a_bare_host_port_is_http_and_request_method_disables_all() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = checking_upstream(issuer.clone()).await;
    let fp = FakeProxy::start().await;
    let proxy_url = fp.url("");
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let toml = provider_toml("a", &up.url(), "");

    // HTTP_PROXY is read before http_proxy.
    let addr = relay(
        &toml,
        &issuer,
        &[("HTTP_PROXY", &proxy_url), ("http_proxy", &dead)],
    )
    .await;
    let r = client()
        .get(format!("http://{addr}/v1/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(fp.seen().len(), 1);

    // A proxy given as bare host:port is an http:// proxy.
    let bare = fp.addr.to_string();
    let addr = relay(&toml, &issuer, &[("http_proxy", &bare)]).await;
    let r = client()
        .get(format!("http://{addr}/v1/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(fp.seen().len(), 2);

    // In a CGI environment (REQUEST_METHOD set) the variables are ignored: direct.
    let addr = relay(
        &toml,
        &issuer,
        &[("HTTP_PROXY", &proxy_url), ("REQUEST_METHOD", "GET")],
    )
    .await;
    let r = client()
        .get(format!("http://{addr}/v1/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(fp.seen().len(), 2, "the proxy saw nothing more");
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn a_proxy_that_is_down_is_a_json_502_naming_the_provider_and_the_proxy() {
    let issuer = Issuer::new("tls", Duration::from_secs(3600));
    let (up, bearers) = checking_tls_upstream(issuer.clone()).await;
    let port = closed_port();
    let proxy_url = format!("http://user:pass@127.0.0.1:{port}");
    let addr = relay(&tls_toml(up), &issuer, &[("HTTPS_PROXY", &proxy_url)]).await;

    let r = client()
        .get(format!("http://{addr}/v1/models"))
        .send()
        .await
        .unwrap();
    let (msg, body) = message_of_502(r).await;
    assert_eq!(body["error"]["code"], "upstream_unreachable", "{body}");
    assert!(msg.contains("provider secure"), "{msg}");
    assert!(msg.contains(&format!("proxy 127.0.0.1:{port}")), "{msg}");
    assert!(!msg.contains("pass") && !msg.contains("tok-tls"), "{msg}");
    assert!(bearers.lock().unwrap().is_empty(), "never went direct");
}

#[tokio::test]
async fn socks_and_https_proxies_are_refused_with_a_json_502() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let up = checking_upstream(issuer.clone()).await;
    let toml = provider_toml("a", &up.url(), "");
    for (var, url, scheme) in [
        ("ALL_PROXY", "socks5://127.0.0.1:1", "socks5"),
        ("HTTP_PROXY", "https://127.0.0.1:1", "https"),
    ] {
        let addr = relay(&toml, &issuer, &[(var, url)]).await;
        let r = client()
            .get(format!("http://{addr}/v1/x"))
            .send()
            .await
            .unwrap();
        let (msg, _) = message_of_502(r).await;
        assert!(msg.contains("provider a"), "{msg}");
        assert!(
            msg.contains(&format!("{scheme}:// proxies are not supported")),
            "{msg}"
        );
        assert!(msg.contains("only http:// proxies are supported"), "{msg}");
    }
    assert!(up.seen().is_empty(), "never went direct");
}
