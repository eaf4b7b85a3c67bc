//! AWS Signature Version 4 for upstream requests (Amazon Bedrock and other AWS services),
//! computed by the maintained `aws-sigv4` crate.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::error::{Error, ErrorKind, Result};
use crate::token::AwsCredentials;

/// Computes the SigV4 headers for one request and returns them, for the caller to add to the
/// request it forwards (replacing any header of the same name).
///
/// - `method`, `uri` (absolute, e.g. `https://bedrock-runtime.us-east-1.amazonaws.com/model/…/invoke`,
///   path and query exactly as they will be sent), `headers` (the request's headers as sent;
///   `host` is taken from `uri` when absent) and `body` (the exact bytes sent) are what is
///   signed. Hop-by-hop headers and anything a proxy may still change should be left out of
///   `headers`: every header passed in is signed.
/// - `creds` come from a token's [`Token::aws`](crate::Token::aws) (an `aws-web-identity` source);
///   `region` is e.g. `us-east-1`; `service` is the signing name (`bedrock` for Bedrock
///   runtime); `now` is the signing time (tests pass a fixed one).
///
/// Returned: `authorization`, `x-amz-date`, `x-amz-security-token` (with temporary
/// credentials), and `x-amz-content-sha256` for `s3`. The `authorization` and security token
/// values are marked sensitive.
///
/// # Errors
/// [`ErrorKind::Config`] when the URI or a header cannot be signed (not absolute, not valid).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tokenrelay::{AwsCredentials, Secret};
/// use tokenrelay::inject::sign_request;
/// let creds = AwsCredentials {
///     access_key_id: "AKIDEXAMPLE".into(),
///     secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
///     session_token: None,
/// };
/// let uri: http::Uri = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/invoke".parse().unwrap();
/// let mut headers = http::HeaderMap::new();
/// headers.insert("content-type", "application/json".parse().unwrap());
/// let added = sign_request(&http::Method::POST, &uri, &headers, b"{}", &creds,
///     "us-east-1", "bedrock", UNIX_EPOCH + Duration::from_secs(1_700_000_000)).unwrap();
/// let auth = added.iter().find(|(n, _)| n == "authorization").unwrap();
/// assert!(auth.1.to_str().unwrap().starts_with(
///     "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request"));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn sign_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    creds: &AwsCredentials,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Result<Vec<(HeaderName, HeaderValue)>> {
    let origin = "sigv4 signing";
    let fail = |m: String| Error::new(origin, ErrorKind::Config(m));
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err(fail("the URI to sign must be absolute".into()));
    }
    let identity = Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose().to_owned(),
        creds.session_token.as_ref().map(|s| s.expose().to_owned()),
        None,
        "tokenrelay",
    )
    .into();
    let mut settings = SigningSettings::default();
    if service == "s3" {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| fail(e.to_string()))?
        .into();
    let mut pairs = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let v = value
            .to_str()
            .map_err(|_| fail(format!("header {name} is not visible ASCII")))?;
        pairs.push((name.as_str(), v));
    }
    let uri_text = uri.to_string();
    let signable = SignableRequest::new(
        method.as_str(),
        uri_text.as_str(),
        pairs.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| fail(format!("cannot sign: {e}")))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| fail(format!("cannot sign: {e}")))?
        .into_parts();
    let (signed_headers, _params) = instructions.into_parts();
    let mut out = Vec::with_capacity(signed_headers.len());
    for h in signed_headers {
        let name = HeaderName::from_static(h.name());
        let mut value = HeaderValue::from_str(h.value())
            .map_err(|_| fail(format!("signer produced an invalid {} header", h.name())))?;
        value.set_sensitive(h.sensitive() || name == http::header::AUTHORIZATION);
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::time::{Duration, UNIX_EPOCH};

    fn creds(session: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: session.map(Secret::new),
        }
    }

    /// The `get-vanilla` case of the AWS SigV4 test suite.
    #[test]
    fn matches_the_aws_test_suite_vanilla_get() {
        let uri: Uri = "https://example.amazonaws.com/".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().unwrap());
        // 20150830T123600Z
        let now = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let out = sign_request(
            &Method::GET,
            &uri,
            &headers,
            b"",
            &creds(None),
            "us-east-1",
            "service",
            now,
        )
        .unwrap();
        let get = |n: &str| {
            out.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(get("x-amz-date").as_deref(), Some("20150830T123600Z"));
        assert_eq!(
            get("authorization").as_deref(),
            Some("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        );
        assert!(get("x-amz-security-token").is_none());
        assert!(out
            .iter()
            .any(|(n, v)| n == "authorization" && v.is_sensitive()));
    }

    #[test]
    fn session_token_and_s3_checksum() {
        let uri: Uri = "https://bucket.s3.us-east-1.amazonaws.com/k"
            .parse()
            .unwrap();
        let out = sign_request(
            &Method::PUT,
            &uri,
            &HeaderMap::new(),
            b"body",
            &creds(Some("sess")),
            "us-east-1",
            "s3",
            SystemTime::now(),
        )
        .unwrap();
        let names: Vec<_> = out.iter().map(|(n, _)| n.as_str().to_owned()).collect();
        assert!(
            names.contains(&"x-amz-security-token".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"x-amz-content-sha256".to_owned()),
            "{names:?}"
        );
        let rel: Uri = "/k".parse().unwrap();
        assert!(sign_request(
            &Method::GET,
            &rel,
            &HeaderMap::new(),
            b"",
            &creds(None),
            "us-east-1",
            "s3",
            SystemTime::now()
        )
        .is_err());
    }
}
