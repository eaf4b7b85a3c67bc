//! Header rules: what the proxy removes before forwarding and before answering.

use http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy `Keep-Alive` and `Proxy-Connection`)
/// that never cross a proxy. Names are constants, so removing them parses nothing.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// What HTTP/2 forbids in a message (RFC 9113 §8.2.2; `TE` other than `trailers` aside), which
/// h2 would refuse a request for.
static CONNECTION_SPECIFIC: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Prepares an upstream response's headers for the client: hop-by-hop headers removed, and
/// the upstream's own CORS answer (`Access-Control-*`): whether a web page may read the
/// answer is the proxy's decision ([`super::guard`]), not the upstream's.
pub(crate) fn strip_response(h: &mut HeaderMap) {
    strip(h, &HOP_BY_HOP, |n| {
        n.as_str().starts_with("access-control-")
    });
}

/// Prepares a client request's headers for upstream: hop-by-hop and `Host` removed. The
/// client's credentials are the injector's to remove ([`crate::inject`]).
pub(crate) fn strip_request(h: &mut HeaderMap) {
    strip(h, &HOP_BY_HOP, |n| n == header::HOST);
}

/// Prepares a request's headers for an HTTP/2 connection: the connection-specific headers
/// removed, with those `Connection` names, and `TE` unless it is `trailers`. On the proxy's
/// path [`strip_request`] has removed them already (this then finds nothing); provider
/// headers from the config are not checked against them.
pub(crate) fn strip_for_h2(h: &mut HeaderMap) {
    let te_trailers = h.get(header::TE).is_some_and(|te| te == "trailers");
    strip(h, &CONNECTION_SPECIFIC, |n| n == header::TE && !te_trailers);
}

/// Removes the headers `listed`, the headers `Connection` names (when it is listed) and those
/// `also` picks.
///
/// It walks the names the message has (a handful) instead of looking up every name it might
/// have: a lookup hashes the name, and most messages carry none or one of the ~15 names.
fn strip(h: &mut HeaderMap, listed: &[HeaderName], also: impl Fn(&HeaderName) -> bool) {
    // Each removal changes the map, so the walk starts over; both lists are short.
    while let Some(n) = h.keys().find(|n| listed.contains(n) || also(n)).cloned() {
        if n == header::CONNECTION {
            let named: Vec<HeaderName> = h
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .collect();
            for named in named {
                h.remove(named);
            }
        }
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::HeaderValue;

    #[test]
    fn strips_hop_by_hop_and_host() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client"),
            ("api-key", "k"),
            ("x-api-key", "k"),
            ("x-custom-auth", "k"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("host", "localhost"),
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_request(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "accept",
                "api-key",
                "authorization",
                "content-type",
                "x-api-key",
                "x-custom-auth"
            ]
        );
    }

    #[test]
    fn strips_what_connection_names_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "text/event-stream"),
            ("connection", "close"),
            ("connection", "X-Trace-Hop , ,bad header"),
            ("x-trace-hop", "1"),
            ("x-request-id", "r"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_response(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-request-id"]);
        h.append("access-control-allow-origin", HeaderValue::from_static("*"));
        h.append(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
        h.append("connection", HeaderValue::from_static("close"));
        strip_response(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-request-id"]);
        // Nothing to strip: the map is left as it is.
        let before = h.clone();
        strip_response(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn strips_what_http2_forbids_and_keeps_te_trailers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("host", "kept.example"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_for_h2(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "host", "te"]);
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_for_h2(&mut h);
        assert!(h.get("te").is_none());
    }
}
