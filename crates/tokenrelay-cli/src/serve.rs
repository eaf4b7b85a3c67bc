//! `tokenrelay serve` and `tokenrelay run -- CMD`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tokenrelay::inject::Style;
use tokenrelay::proxy::{Proxy, ProxyOptions, DEFAULT_REPLAY_LIMIT, DEFAULT_SHUTDOWN_GRACE};
use tokenrelay::Secret;

use crate::args::{process_env, ProviderArgs};
use crate::{CmdResult, Failure};

/// Listener and proxy behaviour shared by `serve` and `run`.
#[derive(Debug, Args, Clone)]
pub(crate) struct ProxyArgs {
    /// Address to listen on (default 127.0.0.1:8787 for serve, an ephemeral loopback port for run).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Serve /healthz, /readyz, /metrics and /status on this address instead of the main listener.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Environment variable holding the key clients must present (required off loopback).
    #[arg(long, value_name = "VAR")]
    local_key_env: Option<String>,
    /// Largest request body kept for a retry after a rejected credential, in bytes.
    #[arg(long, default_value_t = DEFAULT_REPLAY_LIMIT, value_name = "BYTES")]
    replay_limit: usize,
    /// How long in-flight requests may finish after SIGINT/SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s", value_name = "DURATION")]
    shutdown_grace: Duration,
    /// Speak HTTP/2 with prior knowledge to plain-http upstreams.
    #[arg(long, conflicts_with = "upstream_http1")]
    upstream_h2c: bool,
    /// Offer only HTTP/1.1 to https upstreams (default: h2 and HTTP/1.1 by ALPN).
    #[arg(long)]
    upstream_http1: bool,
    /// Worker threads, each serving its connections start to finish (default: one per CPU).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Also serve requests whose Host is HOST (any port) or HOST:PORT, besides 127.0.0.1,
    /// localhost and [::1] ("*": any Host). Repeatable; adds to allowed_hosts.
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_hosts: Vec<String>,
    /// Serve requests from web pages of ORIGIN (scheme://host[:port]) and answer their CORS
    /// preflights. Repeatable; adds to allowed_origins.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origins: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    provider: ProviderArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    provider: ProviderArgs,
    #[command(flatten)]
    proxy: ProxyArgs,
    /// Pass this variable to the command although tokenrelay reads a credential from it
    /// (repeatable). By default the command gets none of them.
    #[arg(long, value_name = "VAR")]
    keep_env: Vec<String>,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// The variables kept from `run`'s child: what the configured sources and the local key are
/// read from (the child gets the base URLs and a key of its own instead), minus `keep`.
fn withheld_env(cfg: &tokenrelay::config::Config, p: &ProxyArgs, keep: &[String]) -> Vec<String> {
    let mut vars = cfg.credential_env_vars();
    vars.extend(p.local_key_env.iter().cloned());
    vars.retain(|v| !keep.contains(v));
    vars.sort_unstable();
    vars.dedup();
    vars
}

fn options(p: &ProxyArgs) -> Result<ProxyOptions, Failure> {
    let mut o = ProxyOptions::default();
    o.listen = p.listen;
    o.admin_listen = p.admin_listen;
    o.replay_limit = p.replay_limit;
    o.shutdown_grace = if p.shutdown_grace.is_zero() {
        DEFAULT_SHUTDOWN_GRACE
    } else {
        p.shutdown_grace
    };
    o.upstream_h2c = p.upstream_h2c;
    o.upstream_http1 = p.upstream_http1;
    o.allowed_hosts.clone_from(&p.allow_hosts);
    o.allowed_origins.clone_from(&p.allow_origins);
    if let Some(n) = p.workers {
        if n == 0 {
            return Err(Failure::usage("--workers must be at least 1"));
        }
        o.workers = n;
    }
    if let Some(var) = &p.local_key_env {
        let key = std::env::var(var)
            .map_err(|_| Failure::usage(format!("--local-key-env: {var} is not set")))?;
        o.local_key = Some(Secret::new(key));
    }
    Ok(o)
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Raises the soft open-file limit to the hard one, as Go's runtime does for every program
/// and nginx's `worker_rlimit_nofile` for its workers: each client and upstream connection is
/// a descriptor, and the usual soft limit (1024) is below the default `max_connections`.
/// Only `serve` does this; `run` leaves its child the limits it was given.
fn raise_fd_limit() {
    /// macOS's per-process open-file ceiling (`OPEN_MAX` in <sys/syslimits.h>).
    const OPEN_MAX: u64 = 10240;
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                // macOS refuses a soft limit above OPEN_MAX (10240) when the hard one is
                // unlimited, as Go's runtime found; try that before giving up.
                let capped = hard.min(OPEN_MAX);
                if capped <= soft || setrlimit(Resource::RLIMIT_NOFILE, capped, hard).is_err() {
                    tracing::debug!(error = %e, soft, hard, "cannot raise the open-file limit");
                }
            }
        }
    }
}

pub(crate) async fn serve(a: ServeArgs) -> CmdResult {
    raise_fd_limit();
    let cfg = a.provider.load()?;
    let opts = options(&a.proxy)?;
    let proxy = Proxy::new(&cfg, &process_env(), opts)?;
    let bound = proxy.bind().await?;
    for p in &cfg.providers {
        tracing::info!(
            provider = %p.name,
            upstream = p.upstream.as_deref().unwrap_or("-"),
            prefix = p.path_prefix.as_deref().unwrap_or("/"),
            source = p.source.kind(),
            "provider configured"
        );
    }
    tracing::info!(addrs = ?bound.addrs(), "tokenrelay listening");
    bound.run(shutdown_signal()).await?;
    Ok(())
}

/// `COPILOT_PROVIDER_TYPE` matching a provider's injection style.
fn copilot_type(inject: &Style) -> &'static str {
    match inject {
        Style::ApiKey => "azure",
        Style::XApiKey | Style::AnthropicOAuth => "anthropic",
        _ => "openai",
    }
}

pub(crate) async fn run(a: RunArgs) -> CmdResult {
    let cfg = a.provider.load()?;
    let mut opts = options(&a.proxy)?;
    let key = format!("trl-{}", hex_random());
    opts.local_key = Some(Secret::new(key.clone()));
    if opts.listen.is_none() {
        opts.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    let proxy = Proxy::new(&cfg, &process_env(), opts)?;
    let bound = proxy.bind().await?;
    let base = format!("http://{}", bound.local_addr());
    let root = cfg
        .providers
        .iter()
        .find(|p| p.path_prefix.is_none() && p.listen.is_none())
        .or(cfg.providers.first());

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run(async {
        let _ = stop_rx.await;
    }));

    let (prog, args) = a
        .command
        .split_first()
        .ok_or_else(|| Failure::usage("run: no command given after --"))?;
    let mut cmd = tokio::process::Command::new(prog);
    let withheld: Vec<String> = withheld_env(&cfg, &a.proxy, &a.keep_env)
        .into_iter()
        .filter(|v| std::env::var_os(v).is_some())
        .collect();
    if !withheld.is_empty() {
        tracing::info!(
            variables = %withheld.join(" "),
            "not passing the credential variables tokenrelay uses to the command (--keep-env VAR passes one)"
        );
    }
    for v in &withheld {
        cmd.env_remove(v);
    }
    cmd.args(args)
        .env("TOKENRELAY_URL", &base)
        .env("TOKENRELAY_LOCAL_KEY", &key)
        .env("OPENAI_BASE_URL", &base)
        .env("OPENAI_API_KEY", &key)
        .env("ANTHROPIC_BASE_URL", &base)
        .env("ANTHROPIC_API_KEY", &key)
        .env("COPILOT_PROVIDER_BASE_URL", &base)
        .env("COPILOT_PROVIDER_API_KEY", &key);
    if let Some(p) = root {
        cmd.env("COPILOT_PROVIDER_TYPE", copilot_type(&p.inject));
    }
    for p in &cfg.providers {
        let var = format!(
            "TOKENRELAY_URL_{}",
            p.name.to_ascii_uppercase().replace('-', "_")
        );
        cmd.env(
            var,
            format!("{base}{}", p.path_prefix.as_deref().unwrap_or("")),
        );
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::runtime(format!("cannot run {prog:?}: {e}")))?;
    let code = wait_forwarding_signals(&mut child).await?;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    if code == 0 {
        Ok(())
    } else {
        Err(Failure::silent(code))
    }
}

/// Waits for the child, passing SIGINT/SIGTERM/SIGHUP on to it. Returns its exit code
/// (128 + signal number when it was killed by a signal, as shells do).
async fn wait_forwarding_signals(child: &mut tokio::process::Child) -> Result<u8, Failure> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::os::unix::process::ExitStatusExt;
    use tokio::signal::unix::{signal, SignalKind};

    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    let mut sigs = Vec::new();
    for (kind, sig) in [
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::hangup(), Signal::SIGHUP),
    ] {
        if let Ok(s) = signal(kind) {
            sigs.push((s, sig));
        }
    }
    loop {
        let forwarded = async {
            let futs = sigs
                .iter_mut()
                .map(|(s, sig)| Box::pin(async move { s.recv().await.map(|_| *sig) }));
            futures_select(futs).await
        };
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| Failure::runtime(format!("waiting for the command: {e}")))?;
                return Ok(match (status.code(), status.signal()) {
                    (Some(c), _) => u8::try_from(c).unwrap_or(1),
                    (None, Some(s)) => u8::try_from(128 + s).unwrap_or(1),
                    _ => 1,
                });
            }
            Some(sig) = forwarded => {
                if let Some(pid) = pid {
                    let _ = kill(pid, sig);
                }
            }
        }
    }
}

async fn futures_select<F>(futs: impl Iterator<Item = F>) -> Option<nix::sys::signal::Signal>
where
    F: std::future::Future<Output = Option<nix::sys::signal::Signal>> + Unpin,
{
    let v: Vec<F> = futs.collect();
    if v.is_empty() {
        std::future::pending::<()>().await;
    }
    futures_util::future::select_all(v).await.0
}

fn hex_random() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
