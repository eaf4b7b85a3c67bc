//! WebSocket pass-through, in process: raw RFC 6455 handshakes and frames against a loopback
//! WebSocket upstream that checks the token at the handshake like the real services.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use sha1::{Digest, Sha1};
use support::*;
use tokenrelay::proxy::ProxyOptions;
use tokenrelay::Source;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

/// Reads an HTTP head (up to the blank line), byte by byte so that no frame byte is consumed.
async fn read_head(s: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
        assert!(head.len() < 16 * 1024);
    }
    String::from_utf8(head).unwrap()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Reads one frame: (opcode, payload), unmasking it.
async fn read_frame(s: &mut (impl AsyncRead + Unpin)) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.ok()?;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        len = u64::from(s.read_u16().await.ok()?);
    } else if len == 127 {
        len = s.read_u64().await.ok()?;
    }
    let mut mask = [0u8; 4];
    if h[1] & 0x80 != 0 {
        s.read_exact(&mut mask).await.ok()?;
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await.ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Some((h[0] & 0x0f, payload))
}

/// Writes one final frame; masked (as a client must) when `masked`.
async fn write_frame(s: &mut (impl AsyncWrite + Unpin), opcode: u8, payload: &[u8], masked: bool) {
    let mut f = vec![0x80 | opcode];
    let m = if masked { 0x80 } else { 0 };
    if payload.len() < 126 {
        f.push(m | payload.len() as u8);
    } else {
        f.push(m | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    let key = [0x11, 0x22, 0x33, 0x44];
    if masked {
        f.extend_from_slice(&key);
    }
    f.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b }),
    );
    s.write_all(&f).await.unwrap();
}

/// What the WebSocket upstream saw: each handshake's head, and the sockets that ended.
#[derive(Default)]
struct WsSeen {
    heads: Vec<String>,
    ended: usize,
}

/// A WebSocket echo upstream that answers 401 to a handshake without a token `issuer`
/// accepts, picks the `realtime` subprotocol when offered, and echoes every data frame.
async fn ws_upstream(issuer: Arc<Issuer>) -> (String, Arc<Mutex<WsSeen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(WsSeen::default()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let (issuer, seen) = (issuer.clone(), seen2.clone());
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                seen.lock().unwrap().heads.push(head.clone());
                let token = header(&head, "authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .or(header(&head, "api-key"))
                    .unwrap_or("");
                if !issuer.accepts(token) {
                    let body = r#"{"error":{"message":"bad token"}}"#;
                    let _ = s.write_all(format!("HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes()).await;
                    return;
                }
                let key = header(&head, "sec-websocket-key").unwrap_or("");
                let proto = header(&head, "sec-websocket-protocol")
                    .filter(|p| p.split(',').any(|p| p.trim() == "realtime"))
                    .map_or(String::new(), |_| {
                        "sec-websocket-protocol: realtime\r\n".into()
                    });
                s.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n{proto}\r\n", accept_key(key)).as_bytes()).await.unwrap();
                while let Some((op, payload)) = read_frame(&mut s).await {
                    write_frame(&mut s, op, &payload, false).await;
                    if op == 8 {
                        break;
                    }
                }
                seen.lock().unwrap().ended += 1;
            });
        }
    });
    (url, seen)
}

/// Opens a WebSocket through the proxy at `addr` with `extra` header lines; returns the
/// stream and the response head.
async fn open(addr: std::net::SocketAddr, path: &str, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(LIMIT, read_head(&mut s))
        .await
        .unwrap();
    (s, head)
}

async fn echo(s: &mut TcpStream, text: &str) -> String {
    write_frame(s, 1, text.as_bytes(), true).await;
    let (op, payload) = tokio::time::timeout(LIMIT, read_frame(s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(op, 1);
    String::from_utf8(payload).unwrap()
}

async fn status(addr: std::net::SocketAddr, key: Option<&str>) -> Value {
    let mut r = reqwest::Client::new().get(format!("http://{addr}/status"));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().await.unwrap().json().await.unwrap()
}

fn opts(local_key: Option<&str>) -> ProxyOptions {
    let mut o = ProxyOptions::default();
    o.local_key = local_key.map(tokenrelay::Secret::new);
    o.workers = 1;
    o
}

fn src(i: &Arc<Issuer>) -> Vec<Arc<dyn Source>> {
    vec![Arc::new(IssuerSource(i.clone()))]
}

#[tokio::test]
async fn a_socket_is_relayed_with_the_token_injected_and_the_local_key_removed() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let (up, seen) = ws_upstream(issuer.clone()).await;
    let addr = proxy(&provider_toml("a", &up, ""), src(&issuer), opts(Some("lk"))).await;
    let (mut s, head) = open(
        addr,
        "/v1/realtime?model=gpt-realtime",
        "sec-websocket-protocol: realtime, openai-insecure-api-key.lk, openai-beta.realtime-v1\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some(accept_key("dGhlIHNhbXBsZSBub25jZQ==").as_str())
    );
    assert_eq!(header(&head, "sec-websocket-protocol"), Some("realtime"));
    assert_eq!(echo(&mut s, "hello").await, "hello");
    let big = "x".repeat(5000);
    assert_eq!(echo(&mut s, &big).await, big);
    // Ping and pong pass as they are.
    write_frame(&mut s, 9, b"p", true).await;
    assert_eq!(read_frame(&mut s).await.unwrap(), (9, b"p".to_vec()));
    let up_head = seen.lock().unwrap().heads[0].clone();
    assert!(
        up_head.starts_with("GET /v1/realtime?model=gpt-realtime HTTP/1.1"),
        "{up_head}"
    );
    assert_eq!(header(&up_head, "authorization"), Some("Bearer tok-a-1"));
    assert_eq!(
        header(&up_head, "sec-websocket-protocol"),
        Some("realtime, openai-beta.realtime-v1")
    );
    assert!(!up_head.contains("lk"), "{up_head}");
    let st = status(addr, Some("lk")).await;
    assert_eq!(st["providers"][0]["open_sockets"], 1);
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tokenrelay_open_sockets{provider=\"a\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tokenrelay_oldest_socket_age_seconds{provider=\"a\"}"));
    // The client's close goes through, the upstream answers it, and the socket is gone.
    write_frame(&mut s, 8, &1000u16.to_be_bytes(), true).await;
    let (op, payload) = read_frame(&mut s).await.unwrap();
    assert_eq!((op, payload), (8, 1000u16.to_be_bytes().to_vec()));
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    drop(s);
    for _ in 0..100 {
        if status(addr, Some("lk")).await["providers"][0]["open_sockets"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = status(addr, Some("lk")).await;
    assert_eq!(st["providers"][0]["open_sockets"], 0);
    assert!(st["providers"][0]["oldest_socket_age_s"].is_null());
}

#[tokio::test]
async fn a_token_rejected_at_the_handshake_is_replaced_and_the_handshake_retried_once() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let (up, seen) = ws_upstream(issuer.clone()).await;
    let addr = proxy(&provider_toml("a", &up, ""), src(&issuer), opts(None)).await;
    let (mut s, head) = open(addr, "/v1/realtime", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echo(&mut s, "one").await, "one");
    issuer.revoke_all();
    let (mut s2, head) = open(addr, "/v1/realtime", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echo(&mut s2, "two").await, "two");
    // The first socket, opened with the revoked token, stays open: tokens are checked at
    // the handshake only.
    assert_eq!(echo(&mut s, "still").await, "still");
    let heads = seen.lock().unwrap().heads.clone();
    let tokens: Vec<_> = heads
        .iter()
        .map(|h| header(h, "authorization").unwrap().to_owned())
        .collect();
    assert_eq!(
        tokens,
        ["Bearer tok-a-1", "Bearer tok-a-1", "Bearer tok-a-2"]
    );
    assert_eq!(issuer.acquisitions(), 2);
    assert_eq!(status(addr, None).await["providers"][0]["retries"], 1);
}

#[tokio::test]
async fn a_rejection_that_is_not_retried_is_passed_through_and_the_local_key_is_required() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let (up, _) = ws_upstream(issuer.clone()).await;
    let addr = proxy(
        &provider_toml("a", &up, "inject = \"api-key\"\nretry_on = [403]"),
        src(&issuer),
        opts(Some("lk")),
    )
    .await;
    // No key, a wrong key in the subprotocol: refused before any upstream handshake.
    let (_, head) = open(addr, "/openai/realtime", "").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let (_, head) = open(
        addr,
        "/openai/realtime",
        "sec-websocket-protocol: openai-insecure-api-key.nope\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    // The key as a header; the Azure shape (api-key) reaches the upstream.
    let (mut s, head) = open(addr, "/openai/realtime?deployment=d", "api-key: lk\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echo(&mut s, "az").await, "az");
    // A 401 that is not in retry_on is the client's answer, as the upstream sent it.
    issuer.revoke_all();
    let (mut s, head) = open(addr, "/openai/realtime", "api-key: lk\r\n").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let mut body = vec![0u8; 32];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(&body[..], &br#"{"error":{"message":"bad token"}}"#[..32]);
}

#[tokio::test]
async fn a_cross_site_page_cannot_open_a_socket() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let (up, seen) = ws_upstream(issuer.clone()).await;
    let addr = proxy(&provider_toml("a", &up, ""), src(&issuer), opts(None)).await;
    let (_, head) = open(addr, "/v1/realtime", "origin: https://evil.example\r\n").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(seen.lock().unwrap().heads.is_empty());
}

#[tokio::test]
async fn a_vanished_client_closes_the_upstream() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let (up, seen) = ws_upstream(issuer.clone()).await;
    let addr = proxy(&provider_toml("a", &up, ""), src(&issuer), opts(None)).await;
    let (mut s, _) = open(addr, "/v1/realtime", "").await;
    assert_eq!(echo(&mut s, "x").await, "x");
    drop(s);
    for _ in 0..200 {
        if seen.lock().unwrap().ended == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.lock().unwrap().ended, 1);
}

#[tokio::test]
async fn max_socket_lifetime_closes_both_sides_with_1001() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let (up, seen) = ws_upstream(issuer.clone()).await;
    let addr = proxy(
        &provider_toml("a", &up, "max_socket_lifetime = \"300ms\""),
        src(&issuer),
        opts(None),
    )
    .await;
    let (mut s, _) = open(addr, "/v1/realtime", "").await;
    assert_eq!(echo(&mut s, "x").await, "x");
    let (op, payload) = tokio::time::timeout(LIMIT, read_frame(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(op, 8);
    assert_eq!(&payload[..2], &1001u16.to_be_bytes());
    assert!(String::from_utf8_lossy(&payload[2..]).contains("max_socket_lifetime"));
    for _ in 0..200 {
        if seen.lock().unwrap().ended == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        seen.lock().unwrap().ended,
        1,
        "the upstream got its close frame too"
    );
}

#[tokio::test]
async fn shutdown_closes_open_sockets_with_1001_at_the_end_of_the_grace() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let (up, _) = ws_upstream(issuer.clone()).await;
    let mut o = opts(None);
    o.shutdown_grace = Duration::from_millis(300);
    let (addrs, stop, task) =
        proxy_with_shutdown(&provider_toml("a", &up, ""), src(&issuer), o).await;
    let (mut s, _) = open(addrs[0], "/v1/realtime", "").await;
    assert_eq!(echo(&mut s, "x").await, "x");
    let t0 = tokio::time::Instant::now();
    stop.send(()).unwrap();
    // Still relayed during the grace.
    assert_eq!(echo(&mut s, "during grace").await, "during grace");
    let (op, payload) = tokio::time::timeout(LIMIT, read_frame(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((op, &payload[..2]), (8, &1001u16.to_be_bytes()[..]));
    assert!(t0.elapsed() >= Duration::from_millis(250));
    tokio::time::timeout(LIMIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn open_sockets_are_bounded_by_max_connections() {
    let issuer = Issuer::new("a", Duration::from_secs(3600));
    let (up, seen) = ws_upstream(issuer.clone()).await;
    let toml = format!("max_connections = 1\n{}", provider_toml("a", &up, ""));
    let addr = proxy(&toml, src(&issuer), opts(None)).await;
    let (mut s, head) = open(addr, "/v1/realtime", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, head) = open(addr, "/v1/realtime", "").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("application/json"), "{head}");
    assert_eq!(seen.lock().unwrap().heads.len(), 1);
    assert_eq!(echo(&mut s, "first still works").await, "first still works");
}
