//! Embedding the cache as an SDK host's per-request token callback.
//!
//! An app host such as the Copilot SDK asks `bearerTokenProvider({providerName})` before
//! *every* request and does no caching of its own. Backing that callback with one
//! [`tokenrelay::Cache`] per provider makes it cheap (a memory read when the token is valid),
//! keeps providers partitioned, and refreshes in the background before expiry.
//!
//! Run it: `cargo run -p tokenrelay --example sdk_callback`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokenrelay::source::CommandSource;
use tokenrelay::{Cache, CacheEntry, TokenRequest};

/// What the host's callback receives and answers: `{token, expiresOnTimestamp}`.
#[derive(Debug)]
struct ProviderToken {
    token: String,
    expires_on_timestamp: Option<u128>,
}

/// One cache entry per named provider; `acquire` is the callback body.
struct TokenBroker {
    entries: HashMap<String, CacheEntry>,
}

impl TokenBroker {
    fn new(providers: &[(&str, &str, Option<&str>)]) -> Self {
        let entries = providers
            .iter()
            .map(|(name, command, scope)| {
                let cache = Cache::new(Arc::new(CommandSource::shell(*command)));
                let entry = cache.entry(TokenRequest::new(*name).with_scope(*scope));
                (name.to_string(), entry)
            })
            .collect();
        TokenBroker { entries }
    }

    /// The callback: cheap when the token is valid, one shared acquisition when it is not.
    async fn acquire(&self, provider_name: &str) -> Result<ProviderToken, String> {
        let entry = self
            .entries
            .get(provider_name)
            .ok_or_else(|| format!("unknown provider {provider_name:?}"))?;
        let t = entry.get().await.map_err(|e| e.to_string())?;
        Ok(ProviderToken {
            token: t.token().secret().expose().to_owned(),
            expires_on_timestamp: t
                .token()
                .expiry()
                .and_then(|e| e.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis()),
        })
    }
}

#[tokio::main]
async fn main() {
    // Two providers whose "identity commands" print different tokens; in real use these are
    // `az account get-access-token …` or any other source.
    let broker = TokenBroker::new(&[
        (
            "azure",
            "echo token-for-$TOKENRELAY_PROVIDER-$TOKENRELAY_SCOPE",
            Some("api://azure/.default"),
        ),
        ("anthropic", "echo token-for-$TOKENRELAY_PROVIDER", None),
    ]);
    let a = broker.acquire("azure").await.unwrap();
    let b = broker.acquire("anthropic").await.unwrap();
    println!(
        "azure     → {} (expires {:?})",
        a.token, a.expires_on_timestamp
    );
    println!(
        "anthropic → {} (expires {:?})",
        b.token, b.expires_on_timestamp
    );
    assert_ne!(a.token, b.token, "providers stay partitioned");

    // The host calls the callback before every request: measure what that costs now.
    let calls = 100_000;
    let started = Instant::now();
    for _ in 0..calls {
        broker.acquire("azure").await.unwrap();
    }
    let per_call = started.elapsed() / calls;
    println!("{calls} callback invocations: {per_call:?} each (the command ran once)");
}
