//! Writing a custom [`tokenrelay::Source`] and putting it behind the proxy.
//!
//! The source here mints a token locally with a 30-second lifetime; the cache refreshes it
//! ~10 s before expiry without any request waiting. Swap `acquire` for a call to your own
//! identity system.
//!
//! Run it: `cargo run -p tokenrelay --example custom_source`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokenrelay::{Cache, Result, Secret, Source, Token, TokenRequest};

#[derive(Debug, Default)]
struct Minter {
    serial: AtomicU32,
}

#[async_trait]
impl Source for Minter {
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let n = self.serial.fetch_add(1, Ordering::SeqCst);
        let now = SystemTime::now();
        Ok(Token::new(
            Secret::new(format!("minted-{}-{n}", req.provider())),
            self.describe(),
        )
        .acquired_at(now)
        .expires_at(now + Duration::from_secs(30)))
    }
    fn kind(&self) -> &'static str {
        "minter"
    }
    fn describe(&self) -> String {
        "minter source".into()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cache = Cache::new(Arc::new(Minter::default()));
    let entry = cache.entry(TokenRequest::new("my-provider"));
    let t = entry.get().await?;
    println!(
        "generation {} expires in {:?}; Debug never shows the secret: {:?}",
        t.generation(),
        t.token().remaining(SystemTime::now()),
        t.token()
    );
    // After a 401 from the upstream, drop exactly that token:
    entry.invalidate(t.generation());
    let fresh = entry.get().await?;
    println!("after invalidate: generation {}", fresh.generation());
    Ok(())
}
