//! # tokenrelay
//!
//! Keeps LLM API clients authenticated with short-lived credentials for as long as they run.
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
//! The `tokenrelay` command builds three faces on this crate: a credential helper
//! (`tokenrelay token`) with a cross-process cache ([`persist`]), a local reverse proxy that
//! injects the token into every request ([`proxy`]), and an offline demo.
//!
//! ## Where things are
//! - [`source`]: the [`Source`] trait and built-in sources; [`source::output`] parses what
//!   commands and files print (raw, JWT, JSON shapes, ExecCredential, AWS credential_process).
//! - [`cache`]: the refreshing cache and its pure refresh [`cache::policy`].
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
pub mod jwt;
pub mod persist;
pub mod proxy;
mod secret;
pub mod source;
mod token;

pub use cache::{
    Cache, CacheEntry, CacheOptions, CachedToken, EntryStatus, Invalidation, TokenRef,
};
pub use clock::{rfc3339, Clock, ManualClock, SystemClock};
pub use error::{Error, ErrorKind, Result};
pub use secret::Secret;
pub use source::{Source, TokenRequest};
pub use token::{cap_expiry, expiry_after, AwsCredentials, Token, MAX_TOKEN_LIFETIME};
