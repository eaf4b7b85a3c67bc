//! The tower face of injection: [`InjectLayer`] and the [`Inject`] service it makes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::core::{InjectError, Injector, ReplayBody, Transport};
use super::Style;
use crate::cache::CacheEntry;
use crate::error::{Error, Result};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tower [`Layer`](tower_layer::Layer) that injects a [`CacheEntry`]'s token into every
/// request of the service it wraps (see the [module docs](super) for the rules).
///
/// The inner service takes `Request<ReplayBody<B>>`: the kept body, or the caller's streamed
/// one. hyper-util's client, built for that body type, is one.
///
/// ```
/// # use std::sync::Arc;
/// use tokenrelay::inject::{InjectLayer, Style};
/// use tokenrelay::source::StaticSource;
/// use tokenrelay::{Cache, TokenRequest};
/// let entry = Cache::new(Arc::new(StaticSource::new("sk-test".into())))
///     .entry(TokenRequest::new("openai"));
/// let layer = InjectLayer::new(entry)
///     .style(Style::ApiKey)
///     .retry_on([http::StatusCode::UNAUTHORIZED, http::StatusCode::FORBIDDEN])
///     .header("api-version", "2024-10-21")
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct InjectLayer {
    injector: Injector,
}

impl InjectLayer {
    /// Bearer injection of `entry`'s token, `retry_on = [401]`, the default
    /// `min_remaining`, `min_refresh_interval` and a 1 MiB replay limit.
    pub fn new(entry: CacheEntry) -> Self {
        InjectLayer {
            injector: Injector::new(entry),
        }
    }

    /// How the token is put on the request.
    #[must_use]
    pub fn style(mut self, style: Style) -> Self {
        self.injector.set_style(style);
        self
    }

    /// Adds a static header set on every request (replacing the caller's).
    ///
    /// # Errors
    /// A config error when `name` or `value` is not valid in a header.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| Error::config(format!("headers.{name}"), e.to_string()))?;
        let v = HeaderValue::from_str(value)
            .map_err(|e| Error::config(format!("headers.{name}"), e.to_string()))?;
        let mut all = self.injector_headers();
        all.push((n, v));
        self.injector.set_extra_headers(all);
        Ok(self)
    }

    fn injector_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.injector.extra_headers().to_vec()
    }

    /// The statuses that mean "credential rejected" (default 401).
    #[must_use]
    pub fn retry_on(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.injector.set_retry_on(statuses.into_iter().collect());
        self
    }

    /// Lifetime a token needs left before a request is sent with it; a token with less is
    /// refreshed first (see [`DEFAULT_MIN_REMAINING`](crate::config::DEFAULT_MIN_REMAINING)).
    #[must_use]
    pub fn min_remaining(mut self, d: Duration) -> Self {
        self.injector.set_min_remaining(d);
        self
    }

    /// Forced refreshes after a rejection happen at most this often (see
    /// [`DEFAULT_MIN_REFRESH_INTERVAL`](crate::config::DEFAULT_MIN_REFRESH_INTERVAL)).
    #[must_use]
    pub fn min_refresh_interval(mut self, d: Duration) -> Self {
        self.injector.set_min_refresh_interval(d);
        self
    }

    /// Largest body kept for a replay (and for SigV4 signing); larger ones are streamed and a
    /// rejection of them is passed on.
    #[must_use]
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.injector.set_replay_limit(bytes);
        self
    }

    /// Signs requests with SigV4 for `region` and `service` (e.g. `bedrock`) with the token's
    /// AWS credentials, instead of injecting a header.
    #[must_use]
    pub fn sigv4(mut self, region: impl Into<String>, service: impl Into<String>) -> Self {
        self.injector.set_style(Style::AwsSigV4);
        self.injector.set_sigv4(region.into(), service.into());
        self
    }

    /// The injector this layer gives each service it makes.
    pub fn injector(&self) -> &Injector {
        &self.injector
    }
}

impl<S> tower_layer::Layer<S> for InjectLayer {
    type Service = Inject<S>;
    fn layer(&self, inner: S) -> Inject<S> {
        Inject {
            inner,
            injector: Arc::new(self.injector.clone()),
        }
    }
}

/// A service that injects tokens into the requests of `S` (made by [`InjectLayer`]).
#[derive(Debug, Clone)]
pub struct Inject<S> {
    inner: S,
    injector: Arc<Injector>,
}

/// One attempt through a tower service: wait until it is ready, then call it.
struct Tower<'a, S>(&'a mut S);

impl<S, B, RB> Transport<B> for Tower<'_, S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
{
    type Body = RB;
    type Error = S::Error;
    async fn send(&mut self, req: Request<ReplayBody<B>>) -> Result<Response<RB>, S::Error> {
        std::future::poll_fn(|cx| self.0.poll_ready(cx)).await?;
        self.0.call(req).await
    }
}

impl<S, B, RB> Service<Request<B>> for Inject<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Send,
{
    type Response = Response<RB>;
    type Error = InjectError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, InjectError<S::Error>>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(InjectError::Service)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The service that was made ready goes with the request (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let injector = self.injector.clone();
        Box::pin(async move {
            let sent = injector.send(&mut Tower(&mut inner), req).await?;
            Ok(sent.response)
        })
    }
}
