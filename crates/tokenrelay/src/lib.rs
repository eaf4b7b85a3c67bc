//! # tokenrelay
//!
//! Keeps LLM API clients authenticated with short-lived credentials for as long as they run.
//!
//! ## In your own HTTP client: [`inject::InjectLayer`]
//!
//! Wrap the client you already have. Every request then carries a fresh token from a
//! [`Source`]: the caller's credentials are stripped, the token is injected (bearer, `api-key`,
//! `x-api-key`, a custom header, or a SigV4 signature), it is refreshed before it has less than
//! `min_remaining` left, and a request the upstream rejects (401) is replayed once with a new
//! token, dropping exactly the generation that was rejected.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tokenrelay::inject::{InjectLayer, ReplayBody, Style};
//! use tokenrelay::source::CommandSource;
//! use tokenrelay::{Cache, TokenRequest};
//! use tower::{Layer, ServiceExt};
//!
//! // Any tower service over http::Request: hyper-util's client in real use
//! // (examples/inject_hyper.rs); a stub that echoes the injected header here.
//! let client = tower::service_fn(|req: http::Request<ReplayBody<Full<Bytes>>>| async move {
//!     let key = req.headers()["api-key"].clone();
//!     Ok::<_, std::convert::Infallible>(http::Response::new(key))
//! });
//! let entry = Cache::new(Arc::new(CommandSource::shell("echo sk-from-command")))
//!     .entry(TokenRequest::new("azure"));
//! let service = InjectLayer::new(entry).style(Style::ApiKey).layer(client);
//! let req = http::Request::post("https://my-resource.openai.azure.com/openai/v1/chat/completions")
//!     .header("api-key", "whatever-the-caller-had")
//!     .body(Full::new(Bytes::from_static(b"{}")))
//!     .unwrap();
//! let resp = service.oneshot(req).await.unwrap();
//! assert_eq!(resp.body(), "sk-from-command");
//! # });
//! ```
//!
//! With reqwest, the `reqwest-middleware` feature gives [`inject`]`::InjectMiddleware`
//! (examples/inject_reqwest.rs).
//!
//! ## The token itself: [`Cache`]
//!
//! A [`Source`] obtains a [`Token`] (run a command, read a file or variable, call an identity
//! provider); a [`Cache`] holds it, refreshes it in the background before it expires, shares one
//! acquisition among concurrent callers, and drops exactly the token an upstream rejected
//! ([`CacheEntry::invalidate`]). Tokens carry their secret in a [`Secret`], which never prints.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use tokenrelay::source::CommandSource;
//! use tokenrelay::{Cache, TokenRequest};
//!
//! let cache = Cache::new(Arc::new(CommandSource::shell("echo sk-from-command")));
//! let azure = cache.entry(TokenRequest::new("azure").with_scope(Some("api://x/.default")));
//! let token = azure.get().await?;              // runs the command once…
//! assert_eq!(token.token().secret().expose(), "sk-from-command");
//! let again = azure.get().await?;              // …and answers from memory after that
//! assert_eq!(again.generation(), token.generation());
//! # Ok::<(), tokenrelay::Error>(())
//! # }).unwrap();
//! ```
//!
//! ## The sidecar: [`proxy`]
//!
//! The same injection in front of any client that takes a base URL: [`proxy::Proxy::builder`]
//! takes [`proxy::ProviderSpec`]s (an upstream, an `Arc<dyn Source>`, the injection settings),
//! or a config file converts into it ([`proxy::ProxyBuilder::from_config`]). The `tokenrelay`
//! command builds three faces on this crate: a credential helper (`tokenrelay token`) with a
//! cross-process cache ([`persist`]), the proxy (`tokenrelay serve`, `tokenrelay run`), and an
//! offline demo.
//!
//! ## Where things are
//! - [`inject`]: injection as middleware ([`inject::InjectLayer`], `InjectMiddleware`), the
//!   inject [`inject::Style`]s and SigV4 signing ([`inject::sign_request`]).
//! - [`source`]: the [`Source`] trait and built-in sources; [`source::output`] parses what
//!   commands and files print (raw, JWT, JSON shapes, ExecCredential, AWS credential_process).
//! - [`cache`]: the refreshing cache and its pure refresh [`cache::policy`].
//! - [`proxy`]: the sidecar, its builder and validated model.
//! - [`config`]: the TOML configuration file.
//! - [`persist`]: the helper's shared, file-locked, 0600 cache.
//! - [`jwt`]: reading (never verifying) JWT claims.

#![warn(missing_docs)]

// The command source's process groups, the shared cache's POSIX modes and no-follow opens,
// and the FIFO-safe file reads are Unix code (Linux and macOS); docs/portability.md lists what
// Windows would need. Fail the build there with that pointer instead of a wall of errors.
#[cfg(not(unix))]
compile_error!(
    "tokenrelay builds on Unix (Linux, macOS) only; docs/portability.md says what Windows needs"
);

pub mod cache;
mod clock;
pub mod config;
mod error;
pub mod inject;
pub mod jwt;
pub mod persist;
pub mod proxy;
mod secret;
pub mod source;
mod token;

pub use cache::{Cache, CacheEntry, CacheOptions, CachedToken, EntryStatus, Invalidation};
pub use clock::{rfc3339, Clock, ManualClock, Sleep, SystemClock, MAX_SLEEP};
pub use error::{Error, ErrorKind, Result};
pub use secret::Secret;
pub use source::{Source, TokenRequest};
pub use token::{cap_expiry, expiry_after, AwsCredentials, Token, MAX_TOKEN_LIFETIME};
