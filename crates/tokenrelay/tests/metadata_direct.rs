//! Managed identity talks to its metadata endpoint directly, never through `HTTPS_PROXY` /
//! `HTTP_PROXY` / `ALL_PROXY` (the token must not pass through a third party, and IMDS answers
//! only to the machine itself), while other identity sources keep honouring them.
//!
//! reqwest reads the proxy variables from the process environment, which tests must not
//! mutate; so the test runs this same binary again as a child with the variables set (on
//! `std::process::Command`, not `set_var`), and the child acquires one token from each kind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_idp;

use std::sync::{Arc, Mutex};

use fake_idp::{build, FakeIdp, Resp};
use tokenrelay::TokenRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The fake IMDS's base URL, for the child.
const IMDS_VAR: &str = "TOKENRELAY_TEST_IMDS_URL";
/// A fake OAuth token URL, for the child.
const IDP_VAR: &str = "TOKENRELAY_TEST_IDP_URL";

/// A forward proxy that records each request line and answers every request itself with a
/// token, so that a request that went through it is recognisable by its token.
async fn recording_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf);
                record
                    .lock()
                    .unwrap()
                    .push(text.lines().next().unwrap_or("").to_owned());
                let body = r#"{"access_token":"via-proxy","expires_in":600,"token_type":"Bearer"}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn managed_identity_never_uses_the_proxy_variables() {
    let imds = FakeIdp::start(|_, n| {
        Resp::json(
            200,
            serde_json::json!({"access_token": format!("mi-{n}"), "expires_in": "3599", "token_type": "Bearer"}),
        )
    })
    .await;
    let idp = FakeIdp::start(|_, _| Resp::token("direct-oauth", 600)).await;
    let (proxy, seen) = recording_proxy().await;
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_acquires_with_proxy_variables_set",
            "--ignored",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env("HTTPS_PROXY", &proxy)
        .env("HTTP_PROXY", &proxy)
        .env("ALL_PROXY", &proxy)
        .env("http_proxy", &proxy)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env(IMDS_VAR, imds.url(""))
        .env(IDP_VAR, idp.url("/token"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child test ran"
    );
    // The IMDS request reached the fake IMDS directly; only the OAuth one went via the proxy.
    assert_eq!(imds.requests().len(), 1);
    assert!(idp.requests().is_empty());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains("/token"), "{seen:?}");
}

/// Run by the test above, in a child process whose proxy variables point at the recording
/// proxy; does nothing when run on its own.
#[tokio::test]
#[ignore = "run as a child process by managed_identity_never_uses_the_proxy_variables"]
async fn child_acquires_with_proxy_variables_set() {
    let (Ok(imds), Ok(idp)) = (std::env::var(IMDS_VAR), std::env::var(IDP_VAR)) else {
        return;
    };
    let req = TokenRequest::new("azure").with_scope(Some("api://x/.default"));
    let mi = build(
        None,
        &format!("kind = \"managed-identity\"\nendpoint = \"{imds}\"\nresource = \"api://x\""),
        &[],
    )
    .unwrap();
    assert_eq!(mi.acquire(&req).await.unwrap().secret().expose(), "mi-0");
    // The control: an ordinary identity source in the same process does use the proxy.
    let oauth = build(
        None,
        &format!(
            "kind = \"oauth2\"\ntoken_url = \"{idp}\"\nclient_id = \"c\"\nclient_secret_env = \"CS\""
        ),
        &[("CS", "s")],
    )
    .unwrap();
    assert_eq!(
        oauth.acquire(&req).await.unwrap().secret().expose(),
        "via-proxy"
    );
}
