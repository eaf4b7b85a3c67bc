//! Talking to identity providers over HTTP: one [`IdpClient`] (reqwest with rustls, timeouts,
//! `HTTPS_PROXY`/`NO_PROXY`, an optional extra CA bundle), a bounded retry on 429/5xx that
//! honours `Retry-After`, and the parsing of OAuth 2.0 token and error responses.
//!
//! Nothing here puts a request or response body into an error: an IdP error becomes
//! [`ErrorKind::IdpRejected`] carrying only the OAuth `error` / `error_description` fields.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;

use super::output::{check_token_text, seconds};
use crate::error::{one_line, Error, ErrorKind, Result};
use crate::jwt;
use crate::secret::Secret;

/// How many times one IdP call is attempted (3): a 429 or 5xx answer, a refused connection or
/// a timed-out attempt is tried again, so an IdP that fails twice and then answers costs
/// ~1.5 s of backoff (0.5 s + 1 s) instead of an error.
pub const DEFAULT_IDP_ATTEMPTS: u32 = 3;

/// Pause before the second attempt (500 ms), doubled before each further one: attempts start
/// at 0 s, 0.5 s and 1.5 s. A `Retry-After` header replaces the pause (capped, see
/// [`MAX_RETRY_AFTER`]).
pub const DEFAULT_IDP_BACKOFF: Duration = Duration::from_millis(500);

/// Longest `Retry-After` honoured (10 s): an IdP asking for 120 s is retried after 10 s, and if
/// it still refuses the acquisition fails and the cache's own backoff takes over.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Time allowed to open a TCP+TLS connection to an IdP (5 s).
pub const DEFAULT_IDP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed for one attempt, from sending to the last body byte (10 s): with 3 attempts a
/// hung IdP costs at most ~31.5 s, just over the default 30 s source timeout, which wins.
pub const DEFAULT_IDP_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest IdP answer read (1 MiB).
const MAX_BODY: usize = 1024 * 1024;

/// An HTTP client for identity providers, cheap to clone.
///
/// ```
/// let client = tokenrelay::source::IdpClient::new().unwrap();
/// # let _ = client;
/// ```
#[derive(Debug, Clone)]
pub struct IdpClient {
    client: reqwest::Client,
    attempts: u32,
    backoff: Duration,
    attempt_timeout: Duration,
}

/// An IdP's final answer (after retries): status and body, never logged.
#[derive(Debug)]
pub struct IdpResponse {
    /// HTTP status.
    pub status: u16,
    /// The body (at most 1 MiB).
    pub body: Bytes,
}

impl IdpClient {
    /// A client with the default timeouts and retry, trusting the system roots.
    ///
    /// # Errors
    /// When the TLS stack cannot be initialised.
    pub fn new() -> Result<Self> {
        Self::with_ca_bundle("identity provider client", None)
    }

    /// A client that also trusts the certificates in the PEM file `ca_bundle`.
    ///
    /// # Errors
    /// A config error at `origin` (the config key, e.g. `provider[0] (a).source.ca_bundle`)
    /// when the bundle cannot be read or holds no certificate.
    pub fn with_ca_bundle(origin: &str, ca_bundle: Option<&Path>) -> Result<Self> {
        Self::build(origin, ca_bundle, true)
    }

    /// Like [`with_ca_bundle`](Self::with_ca_bundle), but never through a proxy, whatever
    /// `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` say: for metadata endpoints (Azure IMDS, App
    /// Service's local identity endpoint), which answer only to the machine itself and whose
    /// tokens must not pass through a third party.
    ///
    /// # Errors
    /// As for [`with_ca_bundle`](Self::with_ca_bundle).
    pub fn direct(origin: &str, ca_bundle: Option<&Path>) -> Result<Self> {
        Self::build(origin, ca_bundle, false)
    }

    fn build(origin: &str, ca_bundle: Option<&Path>, use_proxy: bool) -> Result<Self> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(DEFAULT_IDP_CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokenrelay/", env!("CARGO_PKG_VERSION")));
        if !use_proxy {
            b = b.no_proxy();
        }
        if let Some(path) = ca_bundle {
            let pem = super::inputs::read_config_file(origin, path)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::config(origin, format!("{}: {}", path.display(), e.without_url()))
            })?;
            if certs.is_empty() {
                return Err(Error::config(
                    origin,
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b
            .build()
            .map_err(|e| Error::config(origin, format!("cannot build: {}", cause_chain(&e))))?;
        Ok(IdpClient {
            client,
            attempts: DEFAULT_IDP_ATTEMPTS,
            backoff: DEFAULT_IDP_BACKOFF,
            attempt_timeout: DEFAULT_IDP_ATTEMPT_TIMEOUT,
        })
    }

    /// Changes the retry (attempts ≥ 1) and the pause before the second attempt.
    #[must_use]
    pub fn with_retry(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// Changes the time allowed for one attempt.
    #[must_use]
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The underlying reqwest client, for building requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the request `build` makes (called again for each attempt), retrying transport
    /// failures, timeouts, 429 and 5xx. Returns the last answer whatever its status.
    ///
    /// # Errors
    /// A transport failure or timeout on the last attempt, named with `origin`.
    pub async fn send<F>(&self, origin: &str, build: F) -> Result<IdpResponse>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let mut pause = self.backoff;
        let mut attempt = 1;
        loop {
            let last = attempt >= self.attempts;
            let wait = match self.attempt(origin, &build).await {
                Ok(resp) if !last && (resp.0.status == 429 || resp.0.status >= 500) => {
                    tracing::debug!(
                        status = resp.0.status,
                        attempt,
                        "identity provider asked to retry"
                    );
                    resp.1.map(|d| d.min(MAX_RETRY_AFTER)).unwrap_or(pause)
                }
                Ok(resp) => return Ok(resp.0),
                Err(e) if !last && e.is_retryable() => {
                    tracing::debug!(attempt, error = %e, "identity provider call failed; retrying");
                    pause
                }
                Err(e) => return Err(e),
            };
            tokio::time::sleep(wait).await;
            pause = pause.saturating_mul(2);
            attempt += 1;
        }
    }

    async fn attempt<F>(&self, origin: &str, build: &F) -> Result<(IdpResponse, Option<Duration>)>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                Error::new(origin, ErrorKind::Timeout(self.attempt_timeout))
            } else {
                Error::new(
                    origin,
                    ErrorKind::Transport(format!(
                        "cannot reach the identity provider: {}",
                        cause_chain(&e)
                    )),
                )
            }
        };
        let work = async {
            let mut resp = build(&self.client).send().await.map_err(transport)?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(transport)? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(Error::new(
                        origin,
                        ErrorKind::InvalidResponse(format!(
                            "identity provider answered HTTP {status} with a body over {MAX_BODY} bytes"
                        )),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((
                IdpResponse {
                    status,
                    body: body.into(),
                },
                retry_after,
            ))
        };
        match tokio::time::timeout(self.attempt_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(origin, ErrorKind::Timeout(self.attempt_timeout))),
        }
    }

    /// POSTs the form `params` to an OAuth 2.0 token endpoint (with HTTP Basic client
    /// authentication when `basic` is given) and parses the answer.
    ///
    /// # Errors
    /// [`ErrorKind::IdpRejected`] with the OAuth error fields, [`ErrorKind::InvalidResponse`]
    /// for a body that is not a token response, or a transport error / timeout.
    pub async fn token_request(
        &self,
        origin: &str,
        token_url: &str,
        params: &[(&str, &str)],
        basic: Option<(&str, &Secret)>,
    ) -> Result<TokenResponse> {
        let resp = self
            .send(origin, |c| {
                let mut rb = c
                    .post(token_url)
                    .header(http::header::ACCEPT, "application/json")
                    .form(params);
                if let Some((id, secret)) = basic {
                    // RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
                    rb = rb.basic_auth(form_encode(id), Some(form_encode(secret.expose())));
                }
                rb
            })
            .await?;
        parse_token_response(&resp, SystemTime::now()).map_err(|k| Error::new(origin, k))
    }
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `text` on one line (control characters and runs of whitespace become one space), bounded
/// to `max` characters: Entra's `error_description` spans lines (`AADSTS…` first, then trace
/// and correlation ids), and the code must survive.
pub(crate) fn squash(text: &str, max: usize) -> String {
    let joined = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if joined.chars().count() > max {
        let cut: String = joined.chars().take(max).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// Checks a URL that a secret or credential is sent to: absolute, and `https://` unless its
/// host is loopback (`127.0.0.0/8`, `::1`, `localhost`) or link-local (`169.254.0.0/16`,
/// `fe80::/10`: metadata endpoints such as Azure IMDS), where plain HTTP never leaves the
/// machine or its link.
///
/// # Errors
/// The cause, without the URL's query (it may carry a secret).
///
/// ```
/// use tokenrelay::source::http::check_idp_url;
/// assert!(check_idp_url("https://login.microsoftonline.com/t/oauth2/v2.0/token").is_ok());
/// assert!(check_idp_url("http://127.0.0.1:8080/token").is_ok());
/// assert!(check_idp_url("http://169.254.169.254/metadata/identity/oauth2/token").is_ok());
/// assert!(check_idp_url("http://idp.example.com/token").is_err());
/// ```
pub fn check_idp_url(url: &str) -> std::result::Result<(), String> {
    let u = match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => u,
        _ => {
            let shown = url.split(['?', '#']).next().unwrap_or("");
            return Err(format!("{shown:?} is not an absolute http(s) URL"));
        }
    };
    if u.scheme() == "http" && !u.host_str().is_some_and(is_local_host) {
        return Err(
            "http:// is only allowed for loopback and link-local hosts; use https://".into(),
        );
    }
    Ok(())
}

/// Whether `host` (as [`reqwest::Url::host_str`] gives it) is loopback or link-local (see
/// [`check_idp_url`]).
fn is_local_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xffc0) == 0xfe80,
        Err(_) => false,
    }
}

/// A reqwest error and its causes on one line, without the URL.
pub(crate) fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    one_line(&parts.join(": "), 300)
}

/// `Retry-After` (RFC 9110 §10.2.3) as a pause: delay-seconds, or an HTTP-date, which gives the
/// time from now until then (zero for a date already past). Anything else is treated as absent.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    parse_retry_after_at(v, SystemTime::now())
}

fn parse_retry_after_at(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A successful OAuth 2.0 token response (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Debug)]
pub struct TokenResponse {
    /// `access_token`.
    pub access_token: Secret,
    /// From `expires_on` (epoch seconds, number or string), else `expires_in`, else the JWT's `exp`.
    pub expires_at: Option<SystemTime>,
    /// `refresh_token`, when the server issued (or rotated) one.
    pub refresh_token: Option<Secret>,
    /// `token_type` (`Bearer`, `N_A` for token exchange).
    pub token_type: Option<String>,
    /// `issued_token_type` (token exchange).
    pub issued_token_type: Option<String>,
}

impl TokenResponse {
    /// The access token as a [`Token`](crate::Token) acquired at `now`, expiring when the answer
    /// says, else `default_ttl` after `now`.
    pub fn into_token(
        self,
        origin: String,
        now: SystemTime,
        default_ttl: Duration,
    ) -> crate::Token {
        let expiry = match self.expires_at {
            Some(at) => crate::token::cap_expiry(now, at),
            None => crate::token::expiry_after(now, default_ttl),
        };
        crate::Token::new(self.access_token, origin)
            .acquired_at(now)
            .expires_at(expiry)
    }
}

/// Interprets an IdP answer as an OAuth 2.0 token response.
///
/// # Errors
/// Non-2xx → [`ErrorKind::IdpRejected`] with `error`/`error_description` if the body is an
/// OAuth error; a 2xx that is not JSON or has no usable `access_token` →
/// [`ErrorKind::InvalidResponse`]. Never quotes the body.
pub fn parse_token_response(
    resp: &IdpResponse,
    now: SystemTime,
) -> std::result::Result<TokenResponse, ErrorKind> {
    if !(200..300).contains(&resp.status) {
        return Err(rejected(resp));
    }
    let v: Value = serde_json::from_slice(&resp.body).map_err(|_| {
        ErrorKind::InvalidResponse(format!(
            "identity provider answered HTTP {} with a body that is not JSON",
            resp.status
        ))
    })?;
    let str_field = |n: &str| v.get(n).and_then(Value::as_str);
    let token = str_field("access_token").ok_or_else(|| {
        ErrorKind::InvalidResponse(format!(
            "identity provider answered HTTP {} without an access_token",
            resp.status
        ))
    })?;
    check_token_text(token)
        .map_err(|e| ErrorKind::InvalidResponse(format!("access_token: {e}")))?;
    let expires_at = v
        .get("expires_on")
        .and_then(seconds)
        .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        .or_else(|| {
            v.get("expires_in")
                .and_then(seconds)
                .map(|s| crate::token::expiry_after(now, Duration::from_secs(s)))
        })
        .or_else(|| {
            jwt::looks_like_jwt(token)
                .then(|| jwt::decode_unverified(token).ok())
                .flatten()
                .and_then(|d| d.expires_at())
        });
    let refresh_token = match str_field("refresh_token") {
        Some(r) if !r.is_empty() => {
            check_token_text(r)
                .map_err(|e| ErrorKind::InvalidResponse(format!("refresh_token: {e}")))?;
            Some(Secret::new(r))
        }
        _ => None,
    };
    Ok(TokenResponse {
        access_token: Secret::new(token),
        expires_at,
        refresh_token,
        token_type: str_field("token_type").map(str::to_owned),
        issued_token_type: str_field("issued_token_type").map(str::to_owned),
    })
}

/// The error for a non-2xx answer from an API whose errors are an object under `error`
/// (Google's `{"error": {"status", "message"}}`, Anthropic's `{"error": {"type", "message"}}`):
/// its `code` field and `message` (bounded, one line); else as [`rejected`].
pub(crate) fn rejected_with_error_object(resp: &IdpResponse, code: &str) -> ErrorKind {
    let v: Option<Value> = serde_json::from_slice(&resp.body).ok();
    if let Some(err) = v
        .as_ref()
        .and_then(|v| v.get("error"))
        .filter(|e| e.is_object())
    {
        let field = |n: &str| {
            err.get(n)
                .and_then(Value::as_str)
                .map(|s| squash(s, 400))
                .filter(|s| !s.is_empty())
        };
        return ErrorKind::IdpRejected {
            status: resp.status,
            error: field(code),
            description: field("message"),
        };
    }
    rejected(resp)
}

/// The error for a non-2xx answer: the OAuth `error` and `error_description` when the body is
/// an OAuth error object (bounded, one line), nothing from any other body.
pub fn rejected(resp: &IdpResponse) -> ErrorKind {
    let v: Option<Value> = serde_json::from_slice(&resp.body).ok();
    let field = |n: &str| {
        v.as_ref()
            .and_then(|v| v.get(n))
            .and_then(Value::as_str)
            .map(|s| squash(s, 400))
            .filter(|s| !s.is_empty())
    };
    ErrorKind::IdpRejected {
        status: resp.status,
        error: field("error"),
        description: field("error_description"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> IdpResponse {
        IdpResponse {
            status,
            body: Bytes::from(body.to_owned()),
        }
    }

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn token_response_shapes() {
        let now = at(1_000);
        let t = parse_token_response(
            &resp(200, r#"{"access_token":"a","expires_in":3600,"token_type":"Bearer","refresh_token":"r2"}"#),
            now,
        )
        .unwrap();
        assert_eq!(t.access_token.expose(), "a");
        assert_eq!(t.expires_at, Some(at(4_600)));
        assert_eq!(t.refresh_token.unwrap().expose(), "r2");
        assert_eq!(t.token_type.as_deref(), Some("Bearer"));
        // IMDS / App Service: strings, expires_on wins
        let t = parse_token_response(
            &resp(
                200,
                r#"{"access_token":"a","expires_in":"3599","expires_on":"1700000000"}"#,
            ),
            now,
        )
        .unwrap();
        assert_eq!(t.expires_at, Some(at(1_700_000_000)));
        // an unparseable expires_on (old App Service date string) falls back to expires_in
        let t = parse_token_response(
            &resp(
                200,
                r#"{"access_token":"a","expires_in":"60","expires_on":"09/14/2017 00:00:00 PM +00:00"}"#,
            ),
            now,
        )
        .unwrap();
        assert_eq!(t.expires_at, Some(at(1_060)));
        let t = parse_token_response(&resp(200, r#"{"access_token":"a"}"#), now).unwrap();
        assert_eq!(t.expires_at, None);
    }

    #[test]
    fn plain_http_only_to_loopback_and_link_local_hosts() {
        for ok in [
            "https://login.microsoftonline.com/t/oauth2/v2.0/token",
            "https://10.0.0.1/token",
            "http://127.0.0.1:8080/token",
            "http://127.9.9.9/token",
            "http://localhost:40342/metadata/identity/oauth2/token",
            "http://LOCALHOST/x",
            "http://[::1]:8080/token",
            "http://169.254.169.254/metadata/identity/oauth2/token",
            "http://[fe80::1]/token",
            "http://[febf::1]/token",
        ] {
            assert_eq!(check_idp_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://idp.example.com/token",
            "http://10.0.0.1/token",
            "http://192.168.1.1/token",
            "http://[fec0::1]/token",
            "http://[::ffff:8.8.8.8]/token",
            "http://localhost.evil.example/token",
            "http://127.0.0.1.nip.io/token",
        ] {
            assert_eq!(
                check_idp_url(bad),
                Err(
                    "http:// is only allowed for loopback and link-local hosts; use https://"
                        .into()
                ),
                "{bad}"
            );
        }
        let e = check_idp_url("ftp://x/y?secret=s3cr3t").unwrap_err();
        assert!(
            e.contains("not an absolute http(s) URL") && !e.contains("s3cr3t"),
            "{e}"
        );
    }

    #[test]
    fn huge_or_odd_lifetimes_never_overflow() {
        let now = at(1_000);
        let cap = now + crate::MAX_TOKEN_LIFETIME;
        for body in [
            r#"{"access_token":"a","expires_in":10000000000000000000}"#,
            r#"{"access_token":"a","expires_in":1e308}"#,
            r#"{"access_token":"a","expires_in":"1e300"}"#,
        ] {
            let t = parse_token_response(&resp(200, body), now).unwrap();
            assert_eq!(t.expires_at, Some(cap), "{body}");
        }
        // negative or NaN: ignored, as an absent expires_in is
        for body in [
            r#"{"access_token":"a","expires_in":-5}"#,
            r#"{"access_token":"a","expires_in":"NaN"}"#,
        ] {
            let t = parse_token_response(&resp(200, body), now).unwrap();
            assert_eq!(t.expires_at, None, "{body}");
        }
        let t = parse_token_response(
            &resp(200, r#"{"access_token":"a","expires_on":99999999999}"#),
            now,
        )
        .unwrap();
        let tok = t.into_token("o".into(), now, Duration::from_secs(60));
        assert_eq!(tok.expiry(), Some(cap));
    }

    #[test]
    fn bad_success_bodies() {
        let e = parse_token_response(&resp(200, "<html>secret-page</html>"), at(0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "identity provider answered HTTP 200 with a body that is not JSON"
        );
        let e = parse_token_response(&resp(200, r#"{"token":"x"}"#), at(0)).unwrap_err();
        assert!(e.to_string().contains("without an access_token"), "{e}");
        let e = parse_token_response(&resp(200, r#"{"access_token":"a b"}"#), at(0)).unwrap_err();
        assert!(e.to_string().contains("whitespace"), "{e}");
    }

    #[test]
    fn error_bodies() {
        let e = parse_token_response(
            &resp(
                401,
                r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1","error_codes":[7000215]}"#,
            ),
            at(0),
        )
        .unwrap_err();
        assert_eq!(
            e,
            ErrorKind::IdpRejected {
                status: 401,
                error: Some("invalid_client".into()),
                description: Some(
                    "AADSTS7000215: Invalid client secret provided. Trace ID: 1".into()
                ),
            }
        );
        let e =
            parse_token_response(&resp(502, "<html>bad gateway s3cr3t</html>"), at(0)).unwrap_err();
        assert_eq!(e.to_string(), "identity provider answered HTTP 502");
    }

    #[test]
    fn retry_after_seconds_or_http_date() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_475); // 07:27:55
        assert_eq!(
            parse_retry_after_at("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after_at("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a date already past: retry at once"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn basic_auth_parts_are_form_encoded() {
        assert_eq!(form_encode("a b:c/d"), "a+b%3Ac%2Fd");
        assert_eq!(form_encode("plain"), "plain");
    }
}
