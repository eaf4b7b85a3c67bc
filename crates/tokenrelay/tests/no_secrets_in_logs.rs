//! Runs the cache, sources and proxy with trace-level logging captured, through success and
//! failure paths, and proves no token byte reaches a log line, an error or a Debug print.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_idp;
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokenrelay::proxy::ProxyOptions;
use tokenrelay::source::{CommandSource, EnvSource, MapEnv, PluginSource};
use tokenrelay::{Cache, Secret, Source, TokenRequest};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const MARK: &str = "SECRETzq7Xy";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_never_contain_token_bytes() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let mut debug_prints = String::new();
    // command source: success, then a failure whose stderr does not echo the token
    let cmd = CommandSource::shell(format!("echo {MARK}-cmd"));
    let t = Cache::new(Arc::new(cmd))
        .get(&TokenRequest::new("p"))
        .await
        .unwrap();
    debug_prints.push_str(&format!("{t:?} {:?} {}", t.token(), t.token().secret()));
    // garbage output that contains the marker
    let bad = CommandSource::shell(format!("echo '{MARK} is not a token'"));
    let e = bad.acquire(&TokenRequest::new("p")).await.unwrap_err();
    debug_prints.push_str(&format!("{e} {e:?}"));
    let multi = CommandSource::shell(format!("printf '{MARK}\\r\\nx'"));
    let e = multi.acquire(&TokenRequest::new("p")).await.unwrap_err();
    debug_prints.push_str(&format!("{e} {e:?}"));
    // env source with CR/LF
    let env = Arc::new(MapEnv::from_pairs([("T", "SECRETzq7Xy\nmore")]));
    let e = EnvSource::new("T")
        .with_env(env)
        .acquire(&TokenRequest::new("p"))
        .await
        .unwrap_err();
    debug_prints.push_str(&format!("{e} {e:?}"));
    debug_prints.push_str(&format!("{:?}", Secret::new(MARK)));
    // command lines carrying a secret in an assignment or an argument: described, logged
    // and shown in /status by the program name only
    let cache = Cache::new(Arc::new(CommandSource::shell(format!(
        "VAULT_TOKEN={MARK}-vault env KEY={MARK} sh -c 'exit 3' --password={MARK}"
    ))));
    let e = cache.get(&TokenRequest::new("p")).await.unwrap_err();
    assert_eq!(e.to_string(), "command source `sh`: exited with status 3");
    let status = cache.status();
    debug_prints.push_str(&format!("{e:?} {cache:?} {status:?}"));
    let plugin = PluginSource::shell(format!("TOKEN={MARK}-plugin sh -c 'exit 1' {MARK}"));
    let e = plugin.acquire(&TokenRequest::new("p")).await.unwrap_err();
    assert!(e.to_string().starts_with("plugin source `sh`: "), "{e}");
    debug_prints.push_str(&format!("{e} {e:?} {}", plugin.describe()));

    // identity sources: a client secret, an issued token, a federated assertion, a failure
    let idp = fake_idp::FakeIdp::start(|r, _| {
        if r.form("client_assertion").is_some() || r.header("authorization").is_some() {
            fake_idp::Resp::token("SECRETzq7Xy-issued", 3600)
        } else {
            fake_idp::Resp::oauth_error(
                401,
                "invalid_client",
                "AADSTS7000215: Invalid client secret",
            )
        }
    })
    .await;
    let oauth = fake_idp::build(
        Some("api://x/.default"),
        &format!(
            "kind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"c\"\nclient_secret_env = \"CS\"",
            idp.url("/token")
        ),
        &[("CS", "SECRETzq7Xy-client-secret")],
    )
    .unwrap();
    let t = Cache::new(oauth)
        .get(&TokenRequest::new("p"))
        .await
        .unwrap();
    debug_prints.push_str(&format!("{t:?}"));
    let failing = fake_idp::build(
        None,
        &format!(
            "kind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"c\"\nclient_secret_env = \"CS\"\nauth_method = \"post\"",
            idp.url("/token")
        ),
        &[("CS", "SECRETzq7Xy-client-secret")],
    )
    .unwrap();
    let e = failing.acquire(&TokenRequest::new("p")).await.unwrap_err();
    assert!(e.to_string().contains("invalid_client"), "{e}");
    debug_prints.push_str(&format!("{e} {e:?} {failing:?}"));
    let dir = tempfile::tempdir().unwrap();
    let fed = dir.path().join("federated-token");
    std::fs::write(&fed, "SECRETzq7Xy-federated-assertion").unwrap();
    let entra = fake_idp::build(
        Some("api://x/.default"),
        &format!(
            "kind = \"entra-federated\"\ntenant_id = \"t\"\nclient_id = \"c\"\nauthority_host = \"{}\"\nfederated_token_file = \"{}\"",
            idp.url(""),
            fed.display()
        ),
        &[],
    )
    .unwrap();
    let t = entra.acquire(&TokenRequest::new("p")).await.unwrap();
    debug_prints.push_str(&format!("{t:?} {entra:?}"));

    // the proxy: success, a 401 retry, and a failing upstream
    let issuer = Issuer::new(MARK, Duration::from_secs(3600));
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
        vec![Arc::new(IssuerSource(issuer.clone())) as Arc<dyn Source>],
        ProxyOptions::default(),
    )
    .await;
    let client = reqwest::Client::new();
    client
        .post(format!("http://{addr}/x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    issuer.revoke_all();
    client
        .post(format!("http://{addr}/x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    for path in ["/status", "/metrics"] {
        let body = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!body.contains(MARK), "{path}");
    }

    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging was captured"
    );
    assert!(
        logs.contains("token acquired"),
        "the cache logged its acquisitions"
    );
    assert!(logs.contains("retrying once"), "the proxy logged the retry");
    assert!(!logs.contains(MARK), "a token reached the logs:\n{logs}");
    assert!(
        !debug_prints.contains(MARK),
        "a token reached an error or Debug output: {debug_prints}"
    );
}
