//! The injection rules, once: strip, inject, send, and on a rejected credential drop that
//! generation and replay once. Used by [`super::Inject`], [`super::InjectMiddleware`] and the
//! proxy.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};

use super::Style;
use crate::cache::{CacheEntry, Invalidation};
use crate::config::{DEFAULT_MIN_REFRESH_INTERVAL, DEFAULT_MIN_REMAINING};
use crate::error::{Error, ErrorKind};
use crate::token::Token;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body an injected request is sent with: the kept copy (`Left`, replayable) or the
/// caller's body streamed as it is (`Right`, larger than the replay limit).
pub type ReplayBody<B> = Either<Full<Bytes>, B>;

/// Largest request body kept for a replay by default (1 MiB), as the proxy's
/// [`DEFAULT_REPLAY_LIMIT`](crate::proxy::DEFAULT_REPLAY_LIMIT).
const DEFAULT_REPLAY_LIMIT: usize = 1024 * 1024;

/// Credentials a caller may have set; removed so that only the injected one is sent.
static INBOUND_CREDENTIALS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-api-key"),
];

/// Why an injected request got no answer from the inner service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InjectError<E> {
    /// No token could be had, or it cannot be sent (not a valid header value, no AWS
    /// credentials for SigV4, a request SigV4 cannot sign). Its
    /// [`http_status`](Error::http_status) is the status a proxy answers with.
    #[error(transparent)]
    Token(Error),
    /// The request body could not be read into memory for a replay.
    #[error("cannot read the request body: {0}")]
    Body(BoxError),
    /// SigV4 signs the body's hash, so the body must be kept; this one is larger than the
    /// replay limit.
    #[error("a body larger than the replay limit ({limit} bytes) cannot be SigV4-signed")]
    TooLargeToSign {
        /// The replay limit in bytes.
        limit: usize,
    },
    /// The inner service failed.
    #[error(transparent)]
    Service(E),
}

/// How one upstream attempt is sent: a tower service, or the proxy's own client.
pub(crate) trait Transport<B> {
    type Body;
    type Error;
    fn send(
        &mut self,
        req: Request<ReplayBody<B>>,
    ) -> impl Future<Output = Result<Response<Self::Body>, Self::Error>>;
}

/// What [`Injector::send`] did besides answering.
pub(crate) struct Sent<RB> {
    pub response: Response<RB>,
    /// The status that made it replay the request with a fresh token, if it did.
    pub retried: Option<StatusCode>,
}

/// A provider's injection settings and the state they need: the token's cache entry, the
/// style, the extra headers, `retry_on`, `min_remaining`, `min_refresh_interval`, the replay
/// limit and SigV4 signing. Build one with [`InjectLayer`](super::InjectLayer); the proxy
/// holds one per provider and worker thread.
pub struct Injector {
    entry: CacheEntry,
    name: Arc<str>,
    style: Style,
    header: HeaderName,
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    retry_on: Vec<StatusCode>,
    min_remaining: Duration,
    min_refresh_interval: Duration,
    replay_limit: usize,
    sigv4: Option<(String, String)>,
    /// Where origin-form requests go (the proxy's), for what SigV4 signs.
    origin: Option<(Scheme, Authority)>,
    /// The header value of the latest token generation this injector sent.
    header_value: Mutex<Option<(u64, HeaderValue)>>,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("provider", &self.name)
            .field("style", &self.style)
            .field("retry_on", &self.retry_on)
            .field("min_remaining", &self.min_remaining)
            .finish_non_exhaustive()
    }
}

impl Clone for Injector {
    fn clone(&self) -> Self {
        Injector {
            entry: self.entry.clone(),
            name: self.name.clone(),
            style: self.style.clone(),
            header: self.header.clone(),
            extra_headers: self.extra_headers.clone(),
            retry_on: self.retry_on.clone(),
            min_remaining: self.min_remaining,
            min_refresh_interval: self.min_refresh_interval,
            replay_limit: self.replay_limit,
            sigv4: self.sigv4.clone(),
            origin: self.origin.clone(),
            header_value: Mutex::new(None),
        }
    }
}

impl Injector {
    /// Bearer injection of `entry`'s token with the defaults: `retry_on = [401]`,
    /// [`DEFAULT_MIN_REMAINING`], [`DEFAULT_MIN_REFRESH_INTERVAL`], a 1 MiB replay limit.
    pub fn new(entry: CacheEntry) -> Self {
        let name = entry.request().provider().into();
        Injector {
            entry,
            name,
            style: Style::Bearer,
            header: header::AUTHORIZATION,
            extra_headers: Vec::new(),
            retry_on: vec![StatusCode::UNAUTHORIZED],
            min_remaining: DEFAULT_MIN_REMAINING,
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            sigv4: None,
            origin: None,
            header_value: Mutex::new(None),
        }
    }

    pub(crate) fn set_style(&mut self, style: Style) {
        self.header = style.header_name();
        self.style = style;
    }
    pub(crate) fn set_extra_headers(&mut self, h: Vec<(HeaderName, HeaderValue)>) {
        self.extra_headers = h;
    }
    pub(crate) fn set_retry_on(&mut self, s: Vec<StatusCode>) {
        self.retry_on = s;
    }
    pub(crate) fn set_min_remaining(&mut self, d: Duration) {
        self.min_remaining = d;
    }
    pub(crate) fn set_min_refresh_interval(&mut self, d: Duration) {
        self.min_refresh_interval = d;
    }
    pub(crate) fn set_replay_limit(&mut self, n: usize) {
        self.replay_limit = n;
    }
    pub(crate) fn set_sigv4(&mut self, region: String, service: String) {
        self.sigv4 = Some((region, service));
    }
    pub(crate) fn set_origin(&mut self, scheme: Scheme, authority: Authority) {
        self.origin = Some((scheme, authority));
    }

    /// The cache entry the tokens come from.
    pub fn entry(&self) -> &CacheEntry {
        &self.entry
    }

    /// The extra headers set on every request.
    pub(crate) fn extra_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.extra_headers
    }

    /// See [`InjectLayer::min_remaining`](super::InjectLayer::min_remaining).
    #[cfg_attr(not(feature = "reqwest-middleware"), allow(dead_code))]
    pub(crate) fn min_remaining(&self) -> Duration {
        self.min_remaining
    }

    /// See [`InjectLayer::replay_limit`](super::InjectLayer::replay_limit).
    #[cfg_attr(not(feature = "reqwest-middleware"), allow(dead_code))]
    pub(crate) fn replay_limit(&self) -> usize {
        self.replay_limit
    }

    /// The provider name in log lines and errors.
    #[cfg_attr(not(feature = "reqwest-middleware"), allow(dead_code))]
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Removes the caller's credentials and sets the extra headers.
    pub(crate) fn prepare(&self, h: &mut HeaderMap) {
        // Walks the names the request has (a handful): cheaper than a lookup per name.
        while let Some(n) = h
            .keys()
            .find(|n| INBOUND_CREDENTIALS.contains(n) || **n == self.header)
            .cloned()
        {
            h.remove(n);
        }
        for (k, v) in &self.extra_headers {
            h.insert(k.clone(), v.clone());
        }
    }

    /// Whether `status` means the credential was rejected.
    pub(crate) fn rejects(&self, status: StatusCode) -> bool {
        self.retry_on.contains(&status)
    }

    /// Adds the credential for `token` of `generation` to a request whose other headers are
    /// final: the injected header (its value built once per generation), or the SigV4
    /// signature over `method`, `uri`, the headers and `body`.
    pub(crate) fn authorize(
        &self,
        (token, generation): (&Token, u64),
        method: &http::Method,
        uri: &http::Uri,
        headers: &mut HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<(), InjectError<std::convert::Infallible>> {
        if let Some((region, service)) = &self.sigv4 {
            let added = self.sign(token, (region, service), method, uri, headers, body)?;
            for (k, v) in added {
                headers.insert(k, v);
            }
            return Ok(());
        }
        let mut slot = self
            .header_value
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let value = match slot.as_ref() {
            Some((g, v)) if *g == generation => v.clone(),
            _ => {
                let v = self.new_header_value(token).map_err(InjectError::Token)?;
                *slot = Some((generation, v.clone()));
                v
            }
        };
        drop(slot);
        headers.insert(self.header.clone(), value);
        Ok(())
    }

    /// Builds the header value for a token generation not sent yet.
    #[cold]
    #[inline(never)]
    fn new_header_value(&self, token: &Token) -> Result<HeaderValue, Error> {
        let text = self.style.header_value(token.secret().expose());
        let mut v = HeaderValue::from_str(&text).map_err(|_| {
            Error::new(
                format!("provider {}", self.name),
                ErrorKind::InvalidResponse("the token cannot be sent as a header value".into()),
            )
        })?;
        v.set_sensitive(true);
        Ok(v)
    }

    #[inline(never)]
    fn sign(
        &self,
        token: &Token,
        (region, service): (&str, &str),
        method: &http::Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, InjectError<std::convert::Infallible>> {
        let Some(body) = body else {
            return Err(InjectError::TooLargeToSign {
                limit: self.replay_limit,
            });
        };
        let Some(creds) = token.aws() else {
            return Err(InjectError::Token(Error::new(
                format!("provider {}", self.name),
                ErrorKind::Config("inject = \"aws-sigv4\" needs a source that gives AWS credentials (aws-web-identity, or a command printing credential_process JSON)".into()),
            )));
        };
        // The signature covers the absolute URI the upstream sees.
        let absolute;
        let uri = match (&self.origin, uri.authority()) {
            (Some((scheme, authority)), None) => {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(scheme.clone());
                parts.authority = Some(authority.clone());
                parts.path_and_query = uri.path_and_query().cloned();
                absolute = http::Uri::from_parts(parts).map_err(|e| {
                    InjectError::Token(Error::config(
                        format!("provider {}", self.name),
                        format!("the request path cannot be signed: {e}"),
                    ))
                })?;
                &absolute
            }
            _ => uri,
        };
        super::sign_request(
            method,
            uri,
            headers,
            body,
            creds,
            region,
            service,
            std::time::SystemTime::now(),
        )
        .map_err(InjectError::Token)
    }

    /// Drops the rejected `generation` (at most once per `min_refresh_interval`) and says
    /// whether a replay may take a fresh token.
    pub(crate) fn rejected(&self, generation: u64, status: StatusCode) -> bool {
        let forced = self
            .entry
            .invalidate_at_most_every(generation, self.min_refresh_interval);
        if forced == Invalidation::RateLimited {
            log_rate_limited(&self.name, status, self.min_refresh_interval);
            return false;
        }
        true
    }

    /// A token with at least `min_remaining` left and its credential on the request, lent
    /// from memory when the cache can answer at once.
    async fn authorize_fresh<E>(
        &self,
        parts: &mut http::request::Parts,
        body: Option<&[u8]>,
    ) -> Result<u64, InjectError<E>> {
        let headers = &mut parts.headers;
        let lent = self.entry.lend_with_min_remaining(self.min_remaining, |t| {
            let generation = t.generation();
            let done = self.authorize(
                (t.token(), generation),
                &parts.method,
                &parts.uri,
                headers,
                body,
            );
            (generation, done)
        });
        let (generation, done) = match lent {
            Some(x) => x,
            // Boxed: waiting for an acquisition is rare, and its future is large.
            None => {
                let held = Box::pin(self.entry.get_with_min_remaining(self.min_remaining)).await;
                let held = held.map_err(InjectError::Token)?;
                let generation = held.generation();
                let done = self.authorize(
                    (held.token(), generation),
                    &parts.method,
                    &parts.uri,
                    &mut parts.headers,
                    body,
                );
                (generation, done)
            }
        };
        done.map_err(widen)?;
        Ok(generation)
    }

    /// Sends `req` through `transport` with the rules of the module docs.
    pub(crate) async fn send<B, T>(
        &self,
        transport: &mut T,
        req: Request<B>,
    ) -> Result<Sent<T::Body>, InjectError<T::Error>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
        T: Transport<B>,
    {
        let (mut parts, body) = req.into_parts();
        self.prepare(&mut parts.headers);
        let declared = body.size_hint().exact();
        let (first, kept) = if body.is_end_stream() {
            (Either::Left(Full::new(Bytes::new())), Some(Bytes::new()))
        } else if declared.is_some_and(|n| n <= self.replay_limit as u64) {
            let b = read_whole(body, self.replay_limit)
                .await
                .map_err(InjectError::Body)?;
            (Either::Left(Full::new(b.clone())), Some(b))
        } else {
            (Either::Right(body), None)
        };
        // The head of a second attempt, before this one's credential is on it.
        let again = kept.as_ref().map(|_| clone_parts(&parts));
        let generation = self.authorize_fresh(&mut parts, kept.as_deref()).await?;
        let resp = transport
            .send(Request::from_parts(parts, first))
            .await
            .map_err(InjectError::Service)?;
        let status = resp.status();
        if !self.rejects(status) || !self.rejected(generation, status) {
            return Ok(Sent {
                response: resp,
                retried: None,
            });
        }
        let (Some(body), Some(mut parts)) = (kept, again) else {
            log_not_replayed(&self.name, status);
            return Ok(Sent {
                response: resp,
                retried: None,
            });
        };
        drop(resp);
        // Boxed: a second send in this future's state would double its size.
        Box::pin(async move {
            let fresh = self.entry.get().await.map_err(InjectError::Token)?;
            log_retrying(&self.name, status, generation, fresh.generation());
            self.authorize(
                (fresh.token(), fresh.generation()),
                &parts.method,
                &parts.uri,
                &mut parts.headers,
                Some(&body),
            )
            .map_err(widen)?;
            let resp = transport
                .send(Request::from_parts(parts, Either::Left(Full::new(body))))
                .await
                .map_err(InjectError::Service)?;
            Ok(Sent {
                response: resp,
                retried: Some(status),
            })
        })
        .await
    }
}

/// An error of [`Injector::authorize`] in any transport's error type.
pub(crate) fn widen<E>(e: InjectError<std::convert::Infallible>) -> InjectError<E> {
    match e {
        InjectError::Token(e) => InjectError::Token(e),
        InjectError::Body(e) => InjectError::Body(e),
        InjectError::TooLargeToSign { limit } => InjectError::TooLargeToSign { limit },
        InjectError::Service(never) => match never {},
    }
}

/// A copy of a request head for a second attempt (`Parts` is not `Clone`: extensions are not
/// copied).
fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

/// Reads a body of at most `limit` bytes whole. A body that came in one frame (a small JSON
/// request usually does) is kept as it is, without a copy. Trailers are dropped.
async fn read_whole<B>(mut body: B, limit: usize) -> Result<Bytes, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut only: Option<Bytes> = None; // the one frame so far
    let mut joined = BytesMut::new(); // every frame, once there are two
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Into::into)?.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(format!("it is larger than {limit} bytes").into());
        }
        match only.take() {
            None if joined.is_empty() => only = Some(data),
            None => joined.extend_from_slice(&data),
            Some(first) => {
                joined.reserve(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(only.unwrap_or_else(|| joined.freeze()))
}

// The log lines live out of line: a `tracing` event expands to a few hundred bytes of code,
// which would sit in the middle of the hot path even while disabled.

#[cold]
#[inline(never)]
pub(crate) fn log_retrying(name: &str, status: StatusCode, old: u64, new: u64) {
    tracing::info!(
        provider = name,
        status = status.as_u16(),
        old_generation = old,
        new_generation = new,
        "upstream rejected the token; retrying once with a fresh one"
    );
}

#[cold]
#[inline(never)]
pub(crate) fn log_not_replayed(name: &str, status: StatusCode) {
    tracing::info!(
        provider = name,
        status = status.as_u16(),
        "upstream rejected the token; body was streamed so the status is passed through (the next request gets a fresh token)"
    );
}

#[cold]
#[inline(never)]
fn log_rate_limited(name: &str, status: StatusCode, every: Duration) {
    tracing::info!(
        provider = name,
        status = status.as_u16(),
        min_refresh_interval_s = every.as_secs(),
        "upstream rejected the token, and the last forced refresh was less than min_refresh_interval ago; passing the status through without another acquisition"
    );
}
