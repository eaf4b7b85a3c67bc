//! The `tokenrelay` command: credential helper, injecting sidecar, and offline demo.
//!
//! Exit codes: 0 ok; 2 usage or configuration error; 1 runtime failure (one line on stderr).

#[cfg(not(unix))]
compile_error!(
    "tokenrelay builds on Unix (Linux, macOS) only; docs/portability.md says what Windows needs"
);

mod args;
mod check;
mod decode;
mod demo;
mod serve;
mod telemetry;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keeps LLM API clients authenticated with short-lived credentials.
#[derive(Debug, Parser)]
#[command(name = "tokenrelay", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a fresh token (credential helper), served from a shared cache.
    Token(token::TokenArgs),
    /// Run the injecting reverse proxy.
    Serve(serve::ServeArgs),
    /// Run a command with a private proxy on an ephemeral port and its base URLs set.
    Run(serve::RunArgs),
    /// Run the whole loop offline: fake identity provider, fake model upstream, proxy.
    Demo(demo::DemoArgs),
    /// Validate a configuration and acquire every provider's token once.
    Check(check::CheckArgs),
    /// Print a JWT's header and claims (never verifies, never prints the signature).
    Decode(decode::DecodeArgs),
}

/// A failure with its exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
    /// Exits with a specific code and no message (the child's code in `run`).
    pub(crate) fn silent(code: u8) -> Self {
        Failure {
            code,
            message: String::new(),
        }
    }
}

impl From<tokenrelay::Error> for Failure {
    fn from(e: tokenrelay::Error) -> Self {
        Failure {
            code: if e.is_config() { 2 } else { 1 },
            message: e.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::runtime(format!("{e:#}"))
    }
}

pub(crate) type CmdResult = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) | Command::Demo(_) => "info",
        _ => "warn",
    };
    telemetry::init(&cli.log, default_level);
    // One thread is enough here: the proxy runs its own worker threads (one per CPU), and the
    // other commands wait on one source at a time.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokenrelay: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Token(a) => token::run(a).await,
            Command::Serve(a) => serve::serve(a).await,
            Command::Run(a) => serve::run(a).await,
            Command::Demo(a) => demo::run(a).await,
            Command::Check(a) => check::run(a).await,
            Command::Decode(a) => decode::run(a),
        }
    });
    // Background refreshers and in-flight helpers must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("tokenrelay: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}
