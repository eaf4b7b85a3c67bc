//! The reqwest face of injection: [`InjectMiddleware`] for `reqwest-middleware`.

use bytes::Bytes;
use http::Extensions;
use reqwest_middleware::{Middleware, Next};

use super::core::{widen, InjectError, Injector};
use super::layer::InjectLayer;

/// A `reqwest_middleware::Middleware` with the rules of [`InjectLayer`]: strip, inject,
/// refresh before `min_remaining`, and on a `retry_on` answer drop that generation and send
/// the request once more (when reqwest can clone it: its body is not a stream and fits the
/// replay limit).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use tokenrelay::inject::{InjectLayer, InjectMiddleware};
/// use tokenrelay::source::CommandSource;
/// use tokenrelay::{Cache, TokenRequest};
///
/// let entry = Cache::new(Arc::new(CommandSource::shell("gh auth token")))
///     .entry(TokenRequest::new("models"));
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(InjectMiddleware::new(InjectLayer::new(entry)))
///     .build();
/// let resp = client.get("https://models.github.ai/catalog/models").send().await?;
/// println!("{}", resp.status());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct InjectMiddleware {
    injector: Injector,
}

impl InjectMiddleware {
    /// The middleware with `layer`'s settings.
    pub fn new(layer: InjectLayer) -> Self {
        InjectMiddleware {
            injector: layer.injector().clone(),
        }
    }
}

fn fail(e: InjectError<std::convert::Infallible>) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(e)
}

impl InjectMiddleware {
    /// Puts a credential with at least `min_remaining` left on `req`; returns its generation.
    async fn authorize(
        &self,
        req: &mut reqwest::Request,
        body: Option<&[u8]>,
        fresh: bool,
    ) -> reqwest_middleware::Result<u64> {
        let i = &self.injector;
        let held = if fresh {
            i.entry().get().await
        } else {
            i.entry().get_with_min_remaining(i.min_remaining()).await
        }
        .map_err(|e| fail(InjectError::Token(e)))?;
        let uri: http::Uri = req
            .url()
            .as_str()
            .parse()
            .map_err(reqwest_middleware::Error::middleware)?;
        let method = req.method().clone();
        i.authorize(
            (held.token(), held.generation()),
            &method,
            &uri,
            req.headers_mut(),
            body,
        )
        .map_err(|e| fail(widen(e)))?;
        Ok(held.generation())
    }
}

#[async_trait::async_trait]
impl Middleware for InjectMiddleware {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let i = &self.injector;
        i.prepare(req.headers_mut());
        let body: Option<Bytes> = match req.body() {
            None => Some(Bytes::new()),
            Some(b) => b
                .as_bytes()
                .filter(|b| b.len() <= i.replay_limit())
                .map(Bytes::copy_from_slice),
        };
        let again = body.as_ref().and_then(|_| req.try_clone());
        let generation = self.authorize(&mut req, body.as_deref(), false).await?;
        let resp = next.clone().run(req, extensions).await?;
        let status = resp.status();
        if !i.rejects(status) || !i.rejected(generation, status) {
            return Ok(resp);
        }
        let Some(mut again) = again else {
            super::core::log_not_replayed(i.name(), status);
            return Ok(resp);
        };
        drop(resp);
        let fresh = self.authorize(&mut again, body.as_deref(), true).await?;
        super::core::log_retrying(i.name(), status, generation, fresh);
        next.run(again, extensions).await
    }
}
