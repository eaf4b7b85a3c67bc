//! What a request must be before it is served at all: from a client on this machine rather
//! than a web page the user happens to have open, with a method and path that are safe to
//! forward.
//!
//! A loopback listener is reachable by every web page the user opens: a page can `fetch`
//! `http://127.0.0.1:8787/…` (cross-site, with an `Origin`), or rebind its own DNS name to
//! 127.0.0.1 and send same-origin requests whose `Host` is its own name. Without a local key
//! the proxy would spend the user's token on either and hand the answer back. So, before any
//! token is taken:
//!
//! - without a local key, only a loopback `Host` (`localhost`, `127.0.0.1`, `[::1]`, any port)
//!   or one listed in `allowed_hosts` is served; others get 421;
//! - a request with an `Origin` not in `allowed_origins`, or with `Sec-Fetch-Site:
//!   cross-site` / `same-site` and no allowed origin, gets 403, with or without a local key;
//! - an allowed origin's CORS preflight is answered here, and its responses carry
//!   `Access-Control-Allow-Origin` for that origin only; an upstream's own
//!   `Access-Control-*` headers never reach a browser.

use std::net::{Ipv4Addr, Ipv6Addr};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::ProxyBody;
use crate::error::{Error, Result};

/// Why a request was refused (a `/metrics` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A `Host` that is neither loopback nor allowed (DNS rebinding): 421.
    Host,
    /// An `Origin` (or `Sec-Fetch-Site`) that is not allowed: 403.
    Origin,
    /// TRACE or CONNECT: 405.
    Method,
    /// A path that climbs above the provider's base path: 400.
    Path,
}

impl Refusal {
    /// Every reason, in the order of [`Refusal::index`].
    pub(crate) const ALL: [Refusal; 4] = [
        Refusal::Host,
        Refusal::Origin,
        Refusal::Method,
        Refusal::Path,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Host => "host",
            Refusal::Origin => "origin",
            Refusal::Method => "method",
            Refusal::Path => "path",
        }
    }

    /// Status, error code and message of the answer.
    pub(crate) fn answer(self) -> (u16, &'static str, &'static str) {
        match self {
            Refusal::Host => (
                421,
                "host_not_allowed",
                "this Host is not served: send requests to 127.0.0.1, localhost or [::1], or list the name in allowed_hosts (--allow-host)",
            ),
            Refusal::Origin => (
                403,
                "origin_not_allowed",
                "requests from web pages are refused: list the page's origin in allowed_origins (--allow-origin) to let it use this proxy",
            ),
            Refusal::Method => (
                405,
                "method_not_allowed",
                "TRACE and CONNECT are not forwarded",
            ),
            Refusal::Path => (
                400,
                "bad_path",
                "the path climbs above the provider's base path ('..', '%2e%2e' or an encoded '/')",
            ),
        }
    }
}

/// A `Host` allowed besides the loopback names.
#[derive(Debug, Clone)]
struct HostRule {
    /// Lower-case, without brackets.
    name: String,
    /// `None`: any port.
    port: Option<u16>,
}

/// The browser-origin rules of one proxy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Guard {
    /// Whether `Host` is checked (no local key is set).
    check_host: bool,
    any_host: bool,
    hosts: Vec<HostRule>,
    /// Allowed origins, normalised (`scheme://host[:port]`, lower case).
    origins: Vec<HeaderValue>,
}

/// Splits `host[:port]` (`[v6]:port` too) into a name without brackets or a trailing dot and
/// a port, without copying (this runs on every request). `None` when it is not a host.
fn split_host(authority: &str) -> Option<(&str, Option<u16>)> {
    let bracketed = authority.starts_with('[');
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        (inside, port)
    } else {
        match authority.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') => (n, Some(p.parse().ok()?)),
            Some(_) => return None, // a bare IPv6 address must be bracketed
            None => (authority, None),
        }
    };
    let valid = if bracketed {
        name.parse::<Ipv6Addr>().is_ok()
    } else {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    valid.then(|| (name.strip_suffix('.').unwrap_or(name), port))
}

/// Whether `name` (from [`split_host`], any case) always means this machine.
fn is_loopback_name(name: &str) -> bool {
    const SUFFIX: &str = ".localhost";
    let b = name.as_bytes();
    name.eq_ignore_ascii_case("localhost")
        || (b.len() > SUFFIX.len()
            && b[b.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX.as_bytes()))
        || name.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
        || name.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback())
}

/// Normalises an origin (`scheme://host[:port]`): lower case, no trailing `/`, default ports
/// kept as given. `at` names the setting in errors.
pub(crate) fn normalise_origin(at: &str, origin: &str) -> Result<HeaderValue> {
    let bad = |why: &str| Error::config(at.to_owned(), format!("{origin:?} {why}"));
    let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = o.split_once("://").ok_or_else(|| {
        bad("is not an origin (scheme://host[:port], e.g. http://localhost:3000)")
    })?;
    if !matches!(scheme, "http" | "https") {
        return Err(bad("must be http:// or https://"));
    }
    if rest.contains(['/', '?', '#', '@']) || split_host(rest).is_none() {
        return Err(bad(
            "must be only scheme://host[:port], without a path, query or user",
        ));
    }
    HeaderValue::from_str(&o).map_err(|_| bad("is not a valid header value"))
}

impl Guard {
    /// The rules for a proxy with (or without) a local key, from `allowed_hosts` and
    /// `allowed_origins`.
    ///
    /// # Errors
    /// A config error naming the bad entry.
    pub(crate) fn new(has_local_key: bool, hosts: &[String], origins: &[String]) -> Result<Self> {
        let mut g = Guard {
            check_host: !has_local_key,
            ..Guard::default()
        };
        for h in hosts {
            let h = h.trim();
            if h == "*" {
                g.any_host = true;
                continue;
            }
            let (name, port) = split_host(h).ok_or_else(|| {
                Error::config(
                    "allowed_hosts",
                    format!("{h:?} is not a host name, host:port or \"*\""),
                )
            })?;
            g.hosts.push(HostRule {
                name: name.to_ascii_lowercase(),
                port,
            });
        }
        for o in origins {
            g.origins.push(normalise_origin("allowed_origins", o)?);
        }
        Ok(g)
    }

    /// Checks `req`. `Ok(Some(origin))` for a request from an allowed browser origin (its
    /// response gets CORS headers for it), `Ok(None)` for a non-browser request.
    pub(crate) fn check<B>(
        &self,
        req: &Request<B>,
    ) -> std::result::Result<Option<HeaderValue>, Refusal> {
        // One walk over the few headers a request has, rather than a hashed lookup per name.
        let (mut host, mut origin, mut fetch_site) = (None, None, None);
        for (name, value) in req.headers() {
            if name == header::HOST {
                host = Some(value);
            } else if name == header::ORIGIN {
                origin = Some(value);
            } else if name.as_str() == "sec-fetch-site" {
                fetch_site = Some(value);
            }
        }
        if self.check_host && !self.any_host {
            let authority = match host {
                Some(v) => v.to_str().ok(),
                // HTTP/2 carries `:authority` in the URI.
                None => req.uri().authority().map(http::uri::Authority::as_str),
            };
            if !authority.is_some_and(|a| self.host_allowed(a)) {
                return Err(Refusal::Host);
            }
        }
        if let Some(origin) = origin {
            return match self.allowed_origin(origin) {
                Some(o) => Ok(Some(o.clone())),
                None => Err(Refusal::Origin),
            };
        }
        // Without an Origin, a browser still says where a request comes from (navigations,
        // `<img>`, `no-cors` fetches). Another site, even on another port of this machine,
        // is refused.
        match fetch_site.map(HeaderValue::as_bytes) {
            Some(b"cross-site" | b"same-site") => Err(Refusal::Origin),
            _ => Ok(None),
        }
    }

    fn host_allowed(&self, authority: &str) -> bool {
        // What local clients send nearly always: `127.0.0.1:<port>` or `localhost:<port>`.
        for common in ["127.0.0.1", "localhost"] {
            if let Some(rest) = authority.strip_prefix(common) {
                if rest.is_empty()
                    || rest.strip_prefix(':').is_some_and(|p| {
                        !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
                    })
                {
                    return true;
                }
            }
        }
        let Some((name, port)) = split_host(authority) else {
            return false;
        };
        is_loopback_name(name)
            || self
                .hosts
                .iter()
                .any(|r| r.name.eq_ignore_ascii_case(name) && (r.port.is_none() || r.port == port))
    }

    fn allowed_origin(&self, origin: &HeaderValue) -> Option<&HeaderValue> {
        let o = origin.as_bytes();
        self.origins.iter().find(|a| {
            let a = a.as_bytes();
            a.eq_ignore_ascii_case(o)
                || (o.last() == Some(&b'/') && a.eq_ignore_ascii_case(&o[..o.len() - 1]))
        })
    }
}

/// Whether `method` is never forwarded (answered 405 here).
pub(crate) fn refused_method(method: &Method) -> bool {
    method == Method::TRACE || method == Method::CONNECT
}

/// Whether `path` (the part after the routing prefix) would climb above its root when a
/// gateway decodes `%2e` and `%2f` (and `%5c`, `\`) and then resolves dot segments: such a
/// request could reach another API than the provider's base path. `/a/../b` stays inside
/// and is not refused.
pub(crate) fn climbs_above_root(path: &str) -> bool {
    let b = path.as_bytes();
    if !b.iter().any(|c| matches!(c, b'.' | b'%' | b'\\')) {
        return false; // the common case: nothing that could be a dot segment
    }
    // Decode only what matters for segments: `%2e` → `.`, `%2f`/`%5c`/`\` → separator.
    let mut depth: i64 = 0;
    let mut seg = Vec::with_capacity(8);
    let mut i = 0;
    while i <= b.len() {
        let (c, step) = match b.get(i) {
            None => (b'/', 1),
            Some(b'%') if i + 2 < b.len() => {
                match (b[i + 1].to_ascii_lowercase(), b[i + 2].to_ascii_lowercase()) {
                    (b'2', b'e') => (b'.', 3),
                    (b'2', b'f') | (b'5', b'c') => (b'/', 3),
                    _ => (b'%', 1),
                }
            }
            Some(b'\\') => (b'/', 1),
            Some(&c) => (c, 1),
        };
        if c == b'/' {
            match seg.as_slice() {
                b".." => depth -= 1,
                b"." | b"" => {}
                _ => depth += 1,
            }
            seg.clear();
            if depth < 0 {
                return true;
            }
        } else {
            seg.push(c);
        }
        i += step;
    }
    false
}

/// CORS headers on a response to a request from the allowed `origin`.
pub(crate) fn add_cors(h: &mut HeaderMap, origin: HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("*"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The answer to an `OPTIONS` request, never forwarded: a CORS preflight of an allowed
/// origin gets the permissions it asks for (that origin only); any other gets `204` with
/// `Allow`.
#[cold]
#[inline(never)]
pub(crate) fn options_response<B>(
    req: &Request<B>,
    origin: Option<HeaderValue>,
) -> Response<ProxyBody> {
    let mut resp = Response::new(super::forward::empty_body());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE"),
        );
        if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, extra: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/v1/chat/completions");
        if let Some(h) = host {
            b = b.header("host", h);
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn loopback_hosts_pass_and_foreign_ones_do_not() {
        let g = Guard::new(false, &[], &[]).unwrap();
        for h in [
            "127.0.0.1:8787",
            "127.0.0.1",
            "127.1.2.3:1",
            "localhost",
            "LOCALHOST:8787",
            "localhost.:8787",
            "[::1]:8787",
            "[::1]",
            "app.localhost:3000",
        ] {
            assert_eq!(g.check(&req(Some(h), &[])), Ok(None), "{h}");
        }
        for h in [
            "rebind.attacker.example:8787",
            "rebind.attacker.example",
            "10.0.0.1:8787",
            "localhost.attacker.example",
            "127.0.0.1.attacker.example",
            "[::2]:1",
            "::1",
            "",
            "127.0.0.1:notaport",
        ] {
            assert_eq!(g.check(&req(Some(h), &[])), Err(Refusal::Host), "{h}");
        }
        assert_eq!(g.check(&req(None, &[])), Err(Refusal::Host));
        // HTTP/2: :authority in the URI.
        let h2 = Request::builder()
            .uri("https://127.0.0.1:8787/v1")
            .body(())
            .unwrap();
        assert_eq!(g.check(&h2), Ok(None));
    }

    #[test]
    fn allowed_hosts_with_and_without_port_and_the_local_key() {
        let g = Guard::new(false, &["proxy.internal".into(), "box:9000".into()], &[]).unwrap();
        assert!(g.check(&req(Some("proxy.internal:1234"), &[])).is_ok());
        assert!(g.check(&req(Some("Proxy.Internal"), &[])).is_ok());
        assert!(g.check(&req(Some("box:9000"), &[])).is_ok());
        assert_eq!(g.check(&req(Some("box:9001"), &[])), Err(Refusal::Host));
        let any = Guard::new(false, &["*".into()], &[]).unwrap();
        assert!(any.check(&req(Some("whatever.example"), &[])).is_ok());
        // With a local key a page cannot use the proxy anyway: Host is not checked.
        let keyed = Guard::new(true, &[], &[]).unwrap();
        assert!(keyed
            .check(&req(Some("rebind.attacker.example"), &[]))
            .is_ok());
        assert!(Guard::new(false, &["a b".into()], &[]).is_err());
    }

    #[test]
    fn origins_are_refused_unless_allowed() {
        let g = Guard::new(false, &[], &["http://localhost:3000/".into()]).unwrap();
        let host = Some("127.0.0.1:8787");
        assert_eq!(
            g.check(&req(host, &[("origin", "https://evil.example")])),
            Err(Refusal::Origin)
        );
        assert_eq!(
            g.check(&req(host, &[("origin", "null")])),
            Err(Refusal::Origin)
        );
        assert_eq!(
            g.check(&req(host, &[("origin", "http://localhost:3001")])),
            Err(Refusal::Origin)
        );
        let ok = g
            .check(&req(host, &[("origin", "http://LOCALHOST:3000")]))
            .unwrap();
        assert_eq!(ok.unwrap(), "http://localhost:3000");
        for site in ["cross-site", "same-site"] {
            assert_eq!(
                g.check(&req(host, &[("sec-fetch-site", site)])),
                Err(Refusal::Origin),
                "{site}"
            );
        }
        for site in ["same-origin", "none"] {
            assert_eq!(g.check(&req(host, &[("sec-fetch-site", site)])), Ok(None));
        }
        // The origin rule holds with a local key too.
        let keyed = Guard::new(true, &[], &[]).unwrap();
        assert_eq!(
            keyed.check(&req(host, &[("origin", "https://evil.example")])),
            Err(Refusal::Origin)
        );
    }

    #[test]
    fn origin_settings_are_validated() {
        for bad in [
            "localhost:3000",
            "ftp://x",
            "http://x/path",
            "http://u@x",
            "http://",
        ] {
            assert!(normalise_origin("allowed_origins", bad).is_err(), "{bad}");
        }
        assert_eq!(
            normalise_origin("o", "HTTPS://App.Example:8443/").unwrap(),
            "https://app.example:8443"
        );
    }

    #[test]
    fn dot_segments_that_climb_are_found_in_every_encoding() {
        for p in [
            "/..",
            "/../admin",
            "/v1/../../admin",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/.%2e/admin",
            "/v1/..%2f..%2fadmin",
            "/v1%2f..%2f..%2fadmin",
            "/v1/..\\..\\admin",
            "/v1/..%5c..%5cadmin",
            "/a/./../../b",
        ] {
            assert!(climbs_above_root(p), "{p}");
        }
        for p in [
            "/v1/chat/completions",
            "/v1/../v2/models",
            "/a/b/../../c",
            "/v1/files/report..pdf",
            "/v1/...",
            "/v1/%2e",
            "/v1/50%25",
            "/v1/%",
            "/v1/%2",
            "/",
            "",
        ] {
            assert!(!climbs_above_root(p), "{p}");
        }
    }

    #[test]
    fn trace_and_connect_are_refused() {
        assert!(refused_method(&Method::TRACE));
        assert!(refused_method(&Method::CONNECT));
        assert!(!refused_method(&Method::POST));
        assert!(!refused_method(&Method::OPTIONS));
    }
}
