//! The JSON-RPC plugin source against the example helper in `examples/token_plugin.py`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenrelay::source::{acquire_with_timeout, PluginSource};
use tokenrelay::{Cache, ErrorKind, Source, TokenRequest};

fn plugin(mode: &str) -> PluginSource {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/token_plugin.py");
    PluginSource::new(vec!["python3".into(), script.into(), mode.into()])
        .with_timeout(Duration::from_secs(2))
}

fn req(provider: &str, scope: Option<&str>) -> TokenRequest {
    TokenRequest::new(provider).with_scope(scope)
}

fn pid_of(token: &str) -> String {
    token.split('-').nth(1).unwrap().to_owned()
}

#[tokio::test]
async fn one_long_lived_helper_answers_with_expiry() {
    let src = plugin("");
    let a = src.acquire(&req("azure", Some("s1"))).await.unwrap();
    let b = src.acquire(&req("openai", None)).await.unwrap();
    assert!(
        a.secret().expose().ends_with("-azure-1"),
        "{:?}",
        a.secret().expose()
    );
    assert!(b.secret().expose().ends_with("-openai-2"));
    assert_eq!(
        pid_of(a.secret().expose()),
        pid_of(b.secret().expose()),
        "same process"
    );
    let left = a.remaining(std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3500));
}

#[tokio::test]
async fn concurrent_calls_are_matched_by_id() {
    let src = Arc::new(plugin(""));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = src.clone();
        tasks.push(tokio::spawn(async move {
            let t = s.acquire(&req(&format!("p{i}"), None)).await.unwrap();
            (i, t.secret().expose().to_owned())
        }));
    }
    for t in tasks {
        let (i, tok) = t.await.unwrap();
        assert!(tok.contains(&format!("-p{i}-")), "{tok}");
    }
}

#[tokio::test]
async fn bare_string_means_ask_every_time() {
    let cache = Cache::new(Arc::new(plugin("bare")));
    let entry = cache.entry(req("azure", None));
    let a = entry.get().await.unwrap();
    assert_eq!(a.token().expiry(), None);
    let b = entry.get().await.unwrap();
    assert_ne!(a.token().secret().expose(), b.token().secret().expose());
}

#[tokio::test]
async fn helper_is_restarted_when_it_dies() {
    let src = plugin("die");
    let a = src.acquire(&req("p", None)).await.unwrap();
    // give the helper time to exit and the reader to notice
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = src.acquire(&req("p", None)).await.unwrap();
    assert_ne!(pid_of(a.secret().expose()), pid_of(b.secret().expose()));
}

#[tokio::test]
async fn hung_call_times_out_and_the_next_call_works() {
    let src = plugin("hang");
    let started = Instant::now();
    let err = acquire_with_timeout(&src, &req("p", Some("hang")))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "plugin source `python3`: timed out after 2s"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(src.acquire(&req("p", None)).await.is_ok());
}

#[tokio::test]
async fn errors_are_one_line() {
    let err = plugin("")
        .acquire(&req("p", Some("fail")))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin source `python3`: plugin answered error -32000: DefaultAzureCredential failed to retrieve a token"
    );
    let missing = PluginSource::new(vec!["/nonexistent/plugin".into()]);
    let err = missing
        .acquire(&req("p", None))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot start `/nonexistent/plugin`"), "{err}");
}

#[tokio::test]
async fn command_is_a_shell_line_like_a_command_source() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/token_plugin.py");
    let toml = format!(
        "[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"plugin\"\ncommand = \"PLUGIN_KEY=s3cr3t python3 {script}\"\n"
    );
    let cfg = tokenrelay::config::Config::from_toml(&toml, "t.toml").unwrap();
    let env: tokenrelay::source::SharedEnv = Arc::new(tokenrelay::source::MapEnv::default());
    let src = cfg.providers[0]
        .source
        .build("provider.a.source", &env)
        .unwrap();
    assert_eq!(src.describe(), "plugin source `python3`");
    let t = src.acquire(&req("azure", None)).await.unwrap();
    assert!(t.secret().expose().ends_with("-azure-1"), "{t:?}");
}
