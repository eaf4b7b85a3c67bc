//! `tokenrelay demo`: the whole loop offline. A fake OAuth2 identity provider issues tokens
//! that live a few seconds; a fake OpenAI/Anthropic-compatible upstream accepts only valid,
//! unexpired, unrevoked ones; tokenrelay sits between a client and the upstream.

mod idp;
mod server;
mod tool_turns;
mod upstream;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use tokenrelay::config::Config;
use tokenrelay::proxy::{Proxy, ProxyOptions};
use tokenrelay::source::{MapEnv, SharedEnv};

use crate::{CmdResult, Failure};

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Drive a scripted conversation across several token lifetimes, print a summary, exit 0 on success.
    #[arg(long)]
    once: bool,
    /// Where the proxy listens (default 127.0.0.1:8787; an ephemeral port with --once).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Lifetime of the demo IdP's tokens.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "6s", value_name = "DURATION")]
    token_lifetime: Duration,
    /// Number of requests in the --once script.
    #[arg(long, default_value_t = 12)]
    requests: u32,
    /// Only start the fake IdP and upstream, print their addresses as JSON, and serve until killed
    /// (for end-to-end tests of real clients).
    #[arg(long, hide = true)]
    serve_fakes: bool,
}

struct Fakes {
    shared: Arc<idp::Shared>,
    stats: Arc<upstream::Stats>,
    idp: SocketAddr,
    upstream: SocketAddr,
}

async fn start_fakes(lifetime: Duration) -> Result<Fakes, Failure> {
    let shared = idp::Shared::new(lifetime);
    let stats = Arc::new(upstream::Stats::default());
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let s = shared.clone();
    let idp = server::spawn(loopback, move |req| idp::handle(s.clone(), req))
        .await
        .map_err(|e| Failure::runtime(format!("demo: cannot start the fake IdP: {e}")))?;
    let (s, st) = (shared.clone(), stats.clone());
    let upstream = server::spawn(loopback, move |req| {
        upstream::handle(s.clone(), st.clone(), req)
    })
    .await
    .map_err(|e| Failure::runtime(format!("demo: cannot start the fake upstream: {e}")))?;
    Ok(Fakes {
        shared,
        stats,
        idp,
        upstream,
    })
}

pub(crate) async fn run(a: DemoArgs) -> CmdResult {
    if a.token_lifetime < Duration::from_secs(2) {
        return Err(Failure::usage("--token-lifetime must be at least 2s"));
    }
    let fakes = start_fakes(a.token_lifetime).await?;
    let token_url = format!("http://{}/oauth2/token", fakes.idp);
    if a.serve_fakes {
        println!(
            "{}",
            json!({
                "token_url": token_url,
                "client_id": idp::CLIENT_ID,
                "client_secret": idp::CLIENT_SECRET,
                "upstream": format!("http://{}", fakes.upstream),
            })
        );
        crate::serve::shutdown_signal().await;
        return Ok(());
    }
    // The demo runs the real `oauth2` source from a real config file, with the client secret
    // read from a variable (an in-memory environment, so nothing leaks into the process env).
    let toml = format!(
        r#"[[provider]]
name = "demo"
upstream = "http://{upstream}"
inject = "bearer"
scope = "demo.read"
[provider.source]
kind = "oauth2"
token_url = "{token_url}"
client_id = "{client_id}"
client_secret_env = "TOKENRELAY_DEMO_CLIENT_SECRET"
"#,
        upstream = fakes.upstream,
        client_id = idp::CLIENT_ID,
    );
    let cfg = Config::from_toml(&toml, "demo config")?;
    let env: SharedEnv = Arc::new(MapEnv::from_pairs([(
        "TOKENRELAY_DEMO_CLIENT_SECRET",
        idp::CLIENT_SECRET,
    )]));
    let mut opts = ProxyOptions::default();
    opts.listen = Some(a.listen.unwrap_or(if a.once {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        SocketAddr::from(([127, 0, 0, 1], 8787))
    }));
    opts.shutdown_grace = Duration::from_secs(2);
    let proxy = Proxy::new(&cfg, &env, opts)?;
    let bound = proxy.bind().await?;
    let addr = bound.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run(async {
        let _ = stop_rx.await;
    }));

    let result = if a.once {
        script(addr, &fakes, a.token_lifetime, a.requests).await
    } else {
        interactive(addr, &fakes, a.token_lifetime).await
    };
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    result
}

async fn interactive(addr: SocketAddr, fakes: &Fakes, lifetime: Duration) -> CmdResult {
    println!(
        "tokenrelay demo: proxy on http://{addr}  (fake IdP http://{}, fake upstream http://{})
tokens live {}; tokenrelay refreshes them in the background, and in 20 s the upstream revokes the
current one to show the 401 → re-acquire → retry path. Try:

  curl -s http://{addr}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{\"model\":\"demo\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'
  curl -sN http://{addr}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{\"model\":\"demo\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"stream me\"}}]}}'
  OPENAI_BASE_URL=http://{addr}/v1 OPENAI_API_KEY=unused python -c 'import openai; print(openai.OpenAI().chat.completions.create(model=\"demo\", messages=[{{\"role\":\"user\",\"content\":\"hi\"}}]).choices[0].message.content)'
  COPILOT_OFFLINE=true COPILOT_PROVIDER_TYPE=openai COPILOT_PROVIDER_BASE_URL=http://{addr}/v1 COPILOT_PROVIDER_API_KEY=unused copilot -p hello
  curl -s http://{addr}/status

Ctrl-C to stop.",
        fakes.idp,
        fakes.upstream,
        humantime::format_duration(lifetime)
    );
    let shared = fakes.shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        shared.revoke_all();
        tracing::info!(
            "demo: the upstream now rejects every token issued so far (simulated revocation)"
        );
    });
    crate::serve::shutdown_signal().await;
    Ok(())
}

/// One scripted request: which API, streaming or not.
const SCRIPT: [(&str, bool); 4] = [
    ("/v1/chat/completions", false),
    ("/v1/chat/completions", true),
    ("/v1/messages", true),
    ("/v1/responses", false),
];

fn request_body(path: &str, stream: bool, n: u32) -> Value {
    let content = format!("message {n}");
    match path {
        "/v1/responses" => json!({"model": "demo", "input": content, "stream": stream}),
        "/v1/messages" => json!({"model": "demo", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": content}]}),
        _ => {
            json!({"model": "demo", "stream": stream, "messages": [{"role": "user", "content": content}]})
        }
    }
}

async fn script(addr: SocketAddr, fakes: &Fakes, lifetime: Duration, requests: u32) -> CmdResult {
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let gap = lifetime / 5;
    let started = tokio::time::Instant::now();
    let mut failures = Vec::new();
    println!("tokenrelay demo --once: {requests} requests through http://{addr}, one every {} ms, tokens live {}",
        gap.as_millis(), humantime::format_duration(lifetime));
    for n in 1..=requests {
        if n == requests / 2 {
            fakes.shared.revoke_all();
            println!(
                "[{:5.1}s] upstream revokes every token issued so far",
                started.elapsed().as_secs_f64()
            );
        }
        let (path, stream) = SCRIPT[(n as usize - 1) % SCRIPT.len()];
        let resp = client
            .post(format!("{base}{path}"))
            .json(&request_body(path, stream, n))
            .send()
            .await;
        let (status, body) = match resp {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        };
        let want = format!("message {n}");
        let answered = if stream {
            // every streamed word arrives as its own event; the words spell the answer
            body.contains(&want.replace(' ', ""))
                || body.contains("message") && body.contains(&n.to_string())
        } else {
            body.contains(&format!("pong: {want}"))
        };
        println!(
            "[{:5.1}s] #{n:<2} {:<22} {:<6} → {status}{}",
            started.elapsed().as_secs_f64(),
            path,
            if stream { "stream" } else { "json" },
            if answered { "" } else { "  (unexpected body)" }
        );
        if status != 200 || !answered {
            failures.push(format!("request {n} ({path}) got {status}"));
        }
        tokio::time::sleep(gap).await;
    }
    let status: Value = client
        .get(format!("{base}/status"))
        .send()
        .await
        .map_err(|e| Failure::runtime(format!("demo: /status: {e}")))?
        .json()
        .await
        .map_err(|e| Failure::runtime(format!("demo: /status: {e}")))?;
    let p = &status["providers"][0];
    let acquisitions = p["acquisitions"].as_u64().unwrap_or(0);
    let retries = p["retries"].as_u64().unwrap_or(0);
    let rejected = fakes.stats.rejected.load(Ordering::SeqCst);
    let accepted = fakes.stats.accepted.load(Ordering::SeqCst);
    println!(
        "summary: {requests} requests, {} failed as seen by the client; {acquisitions} tokens acquired over {:.1}s; upstream accepted {accepted}, rejected {rejected}; proxy retried {retries}",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    let lifetimes = (started.elapsed().as_secs_f64() / lifetime.as_secs_f64()).floor() as u64;
    if acquisitions < lifetimes.max(2) {
        failures.push(format!(
            "only {acquisitions} acquisitions over {lifetimes} token lifetimes"
        ));
    }
    if retries < 1 || rejected < 1 {
        failures.push("the forced 401 did not happen or was not retried".into());
    }
    if failures.is_empty() {
        println!("demo ok: no client saw an expired or rejected token");
        Ok(())
    } else {
        Err(Failure::runtime(format!(
            "demo failed: {}",
            failures.join("; ")
        )))
    }
}
