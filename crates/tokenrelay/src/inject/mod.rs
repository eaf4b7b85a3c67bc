//! Token injection as middleware: what the sidecar does to every request, inside your own
//! HTTP client.
//!
//! An [`InjectLayer`] wraps any tower [`Service`](tower_service::Service) over
//! `http::Request` (hyper-util's pooled client, a reqwest-backed service, a test stub). For
//! each request it
//! 1. removes every credential the caller set (`Authorization`, `api-key`, `x-api-key`, and
//!    the header it injects) and sets the configured extra headers;
//! 2. keeps the body in memory when it fits the replay limit (so it can be sent twice);
//! 3. takes the token from its [`CacheEntry`](crate::CacheEntry), refreshing first when less than
//!    `min_remaining` is left, and injects it in the [`Style`] asked for (or signs the request
//!    with SigV4);
//! 4. sends it; when the answer's status is one of `retry_on` (401 by default), drops exactly
//!    the rejected token generation
//!    ([`CacheEntry::invalidate_at_most_every`](crate::CacheEntry::invalidate_at_most_every)),
//!    takes a fresh
//!    token, and replays the request once (if its body was kept), else passes the answer on.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tokenrelay::inject::{InjectLayer, ReplayBody, Style};
//! use tokenrelay::source::CommandSource;
//! use tokenrelay::{Cache, TokenRequest};
//! use tower::{Layer, ServiceExt};
//!
//! let cache = Cache::new(Arc::new(CommandSource::shell("az account get-access-token --query accessToken -o tsv")));
//! let entry = cache.entry(TokenRequest::new("azure"));
//! let client = Client::builder(TokioExecutor::new())
//!     .build_http::<ReplayBody<Full<bytes::Bytes>>>();
//! let service = InjectLayer::new(entry).style(Style::ApiKey).layer(client);
//! let req = http::Request::post("http://127.0.0.1:8080/openai/v1/chat/completions")
//!     .body(Full::new(bytes::Bytes::from_static(b"{}")))?;
//! let resp = service.oneshot(req).await?;
//! println!("{}", resp.status());
//! # Ok(()) }
//! ```
//!
//! With the `reqwest-middleware` feature, `InjectMiddleware` does the same for a
//! `reqwest_middleware::ClientWithMiddleware`. The proxy ([`crate::proxy`]) is built from the
//! same [`Injector`] logic: one instance per provider and worker thread.

mod core;
mod layer;
#[cfg(feature = "reqwest-middleware")]
mod middleware;
mod sigv4;
mod style;
#[cfg(test)]
mod tests;

pub use self::core::{InjectError, Injector, ReplayBody};
pub use layer::{Inject, InjectLayer};
#[cfg(feature = "reqwest-middleware")]
pub use middleware::InjectMiddleware;
pub use sigv4::sign_request;
pub use style::Style;

pub(crate) use self::core::Transport;
