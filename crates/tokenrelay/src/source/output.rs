//! Turning what a command, file or plugin printed into a [`Token`].
//!
//! [`OutputFormat::Auto`] picks the parser from the text: a JSON object is matched against the
//! known shapes (listed on [`OutputFormat`]), a compact JWT is read for `exp`, anything else
//! is a raw token. Whatever the shape, a token that is empty, spans lines or holds whitespace,
//! control or non-ASCII characters is rejected: such output is an error message, not a key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;

use crate::jwt;
use crate::secret::Secret;
use crate::token::{cap_expiry, expiry_after, AwsCredentials, Token};

/// The longest token we accept (64 KiB); longer output is a mistake, not a credential.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// How to read a source's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum OutputFormat {
    /// Choose from the text: JSON → the shapes below, JWT → `exp`, else raw.
    #[default]
    Auto,
    /// The whole output (trimmed) is the token; no expiry unless it is a JWT.
    Raw,
    /// A compact JWT; its `exp` claim is the expiry (must be present).
    Jwt,
    /// A JSON object in one of these shapes:
    /// `{token, expiresOnTimestamp}` (Copilot SDK, milliseconds),
    /// `{access_token, expires_in | expires_on}` (OAuth2, Azure IMDS),
    /// `{accessToken, expires_on | expiresOn}` (`az account get-access-token -o json`),
    /// a kubectl `ExecCredential` (`status.token`, `status.expirationTimestamp`),
    /// an AWS `credential_process` document (`AccessKeyId`, `SecretAccessKey`, `SessionToken`, `Expiration`).
    Json,
    /// A kubectl `client.authentication.k8s.io` ExecCredential.
    ExecCredential,
}

impl OutputFormat {
    /// Parses `"auto"`, `"raw"`, `"jwt"`, `"json"`, `"exec-credential"`.
    ///
    /// # Errors
    /// The list of accepted names.
    pub fn parse_name(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "raw" => Ok(Self::Raw),
            "jwt" => Ok(Self::Jwt),
            "json" => Ok(Self::Json),
            "exec-credential" => Ok(Self::ExecCredential),
            other => Err(format!(
                "unknown format {other:?} (expected auto, raw, jwt, json or exec-credential)"
            )),
        }
    }
}

/// What was read from the output, before the default lifetime is applied.
#[derive(Debug)]
pub struct Parsed {
    /// The token.
    pub secret: Secret,
    /// The expiry the output stated (or the JWT's `exp`).
    pub expires_at: Option<SystemTime>,
    /// AWS credentials, when the output was a `credential_process` document.
    pub aws: Option<AwsCredentials>,
    /// Which parser matched (for logs and `--output json`).
    pub shape: &'static str,
}

impl Parsed {
    /// Builds the token: the stated expiry, else `now + default_ttl` when given, else none;
    /// either way no later than [`MAX_TOKEN_LIFETIME`](crate::MAX_TOKEN_LIFETIME) after `now`.
    pub fn into_token(self, origin: &str, now: SystemTime, default_ttl: Option<Duration>) -> Token {
        let expiry = self
            .expires_at
            .or_else(|| default_ttl.map(|ttl| expiry_after(now, ttl)))
            .map(|at| cap_expiry(now, at));
        let token = Token::new(self.secret, origin)
            .acquired_at(now)
            .with_expiry(expiry);
        match self.aws {
            Some(aws) => token.with_aws(aws),
            None => token,
        }
    }
}

/// Parses `text` with `format`.
///
/// # Errors
/// A lower-case cause that never quotes the output (it may hold a secret).
///
/// ```
/// use tokenrelay::source::output::{parse, OutputFormat};
/// let p = parse(r#"{"token":"abc","expiresOnTimestamp":1700000000000}"#, OutputFormat::Auto).unwrap();
/// assert_eq!(p.secret.expose(), "abc");
/// assert!(p.expires_at.is_some());
/// assert!(parse("ERROR: run az login", OutputFormat::Auto).is_err());
/// ```
pub fn parse(text: &str, format: OutputFormat) -> Result<Parsed, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("output is empty".into());
    }
    match format {
        OutputFormat::Auto if trimmed.starts_with('{') => parse_json(trimmed),
        OutputFormat::Auto => parse_raw(trimmed),
        OutputFormat::Raw => parse_raw(trimmed),
        OutputFormat::Jwt => {
            check_token_text(trimmed)?;
            let d = jwt::decode_unverified(trimmed)?;
            let exp = d.expires_at().ok_or("JWT has no exp claim")?;
            Ok(Parsed {
                secret: Secret::new(trimmed),
                expires_at: Some(exp),
                aws: None,
                shape: "jwt",
            })
        }
        OutputFormat::Json | OutputFormat::ExecCredential => parse_json(trimmed),
    }
}

fn parse_raw(text: &str) -> Result<Parsed, String> {
    check_token_text(text)?;
    let (expires_at, shape) = if jwt::looks_like_jwt(text) {
        (
            jwt::decode_unverified(text)
                .ok()
                .and_then(|d| d.expires_at()),
            "jwt",
        )
    } else {
        (None, "raw")
    };
    Ok(Parsed {
        secret: Secret::new(text),
        expires_at,
        aws: None,
        shape,
    })
}

/// Checks that `text` can be sent as a header value token: non-empty, bounded, one line,
/// visible ASCII only.
///
/// # Errors
/// The first problem, with its byte offset (never the text).
pub fn check_token_text(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("token is empty".into());
    }
    if text.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "token is {} bytes, more than the {MAX_TOKEN_LEN} accepted",
            text.len()
        ));
    }
    for (i, b) in text.bytes().enumerate() {
        match b {
            b'\r' | b'\n' => {
                return Err(format!(
                    "output spans several lines (line break at byte {i}); expected one token"
                ))
            }
            b' ' | b'\t' => {
                return Err(format!(
                    "output is not a token: whitespace at byte {i} (is it an error message?)"
                ))
            }
            0..=0x1f | 0x7f => return Err(format!("token has a control character at byte {i}")),
            0x80..=0xff => return Err(format!("token has a non-ASCII byte at byte {i}")),
            _ => {}
        }
    }
    Ok(())
}

fn parse_json(text: &str) -> Result<Parsed, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        // serde_json's messages carry positions, not content.
        format!("output is not valid JSON: {e}")
    })?;
    let Value::Object(obj) = &v else {
        return Err("JSON output is not an object".into());
    };
    let str_field = |name: &str| obj.get(name).and_then(Value::as_str);

    // kubectl ExecCredential
    if str_field("kind") == Some("ExecCredential") {
        let status = obj.get("status").ok_or("ExecCredential has no status")?;
        let token = status
            .get("token")
            .and_then(Value::as_str)
            .ok_or("ExecCredential status has no token")?;
        let exp = match status.get("expirationTimestamp").and_then(Value::as_str) {
            Some(ts) => Some(rfc3339(ts, "expirationTimestamp")?),
            None => None,
        };
        return token_with_expiry(token, exp, "exec-credential");
    }
    // AWS credential_process
    if let (Some(akid), Some(sak)) = (str_field("AccessKeyId"), str_field("SecretAccessKey")) {
        check_token_text(akid).map_err(|e| format!("AccessKeyId: {e}"))?;
        check_token_text(sak).map_err(|e| format!("SecretAccessKey: {e}"))?;
        let session = str_field("SessionToken");
        if let Some(s) = session {
            check_token_text(s).map_err(|e| format!("SessionToken: {e}"))?;
        }
        let exp = match str_field("Expiration") {
            Some(ts) => Some(rfc3339(ts, "Expiration")?),
            None => None,
        };
        return Ok(Parsed {
            secret: Secret::new(session.unwrap_or(sak)),
            expires_at: exp,
            aws: Some(AwsCredentials {
                access_key_id: akid.to_owned(),
                secret_access_key: Secret::new(sak),
                session_token: session.map(Secret::new),
            }),
            shape: "aws-credential-process",
        });
    }
    // Copilot SDK / tokenrelay --output json
    if let Some(token) = str_field("token") {
        let exp = match obj.get("expiresOnTimestamp") {
            Some(v) => Some(epoch(v, 1_000, "expiresOnTimestamp")?),
            None => None,
        };
        return token_with_expiry(token, exp, "json-token");
    }
    // OAuth2 token response / IMDS
    if let Some(token) = str_field("access_token") {
        let now = SystemTime::now();
        let exp = if let Some(v) = obj.get("expires_on") {
            Some(epoch(v, 1, "expires_on")?)
        } else if let Some(v) = obj.get("expires_in") {
            Some(expiry_after(
                now,
                Duration::from_secs(number(v, "expires_in")?),
            ))
        } else {
            None
        };
        return token_with_expiry(token, exp, "oauth2");
    }
    // az account get-access-token -o json
    if let Some(token) = str_field("accessToken") {
        // `expiresOn` is local time without an offset; prefer `expires_on` (epoch seconds,
        // az ≥ 2.54) and otherwise the JWT's own `exp`.
        let exp = match obj.get("expires_on") {
            Some(v) => Some(epoch(v, 1, "expires_on")?),
            None => None,
        };
        return token_with_expiry(token, exp, "azure-cli");
    }
    Err("JSON output has no known token field (token, access_token, accessToken, status.token, AccessKeyId)".into())
}

fn token_with_expiry(
    token: &str,
    stated: Option<SystemTime>,
    shape: &'static str,
) -> Result<Parsed, String> {
    check_token_text(token)?;
    let expires_at = stated.or_else(|| {
        jwt::looks_like_jwt(token)
            .then(|| jwt::decode_unverified(token).ok())
            .flatten()
            .and_then(|d| d.expires_at())
    });
    Ok(Parsed {
        secret: Secret::new(token),
        expires_at,
        aws: None,
        shape,
    })
}

fn number(v: &Value, field: &str) -> Result<u64, String> {
    seconds(v).ok_or_else(|| format!("{field} is not a non-negative number"))
}

/// A non-negative count read from a JSON answer: an integer, a float (truncated; huge values
/// saturate at `u64::MAX`) or a string holding either. `None` for negative, NaN, infinite or
/// non-numeric values. Callers turn it into a time with checked arithmetic.
///
/// ```
/// use serde_json::json;
/// use tokenrelay::source::output::seconds;
/// assert_eq!(seconds(&json!(3599)), Some(3599));
/// assert_eq!(seconds(&json!("3599.9")), Some(3599));
/// assert_eq!(seconds(&json!(1e308)), Some(u64::MAX));
/// assert_eq!(seconds(&json!(-1)), None);
/// assert_eq!(seconds(&json!("NaN")), None);
/// ```
pub fn seconds(v: &Value) -> Option<u64> {
    let f = match v {
        Value::Number(n) => match n.as_u64() {
            Some(u) => return Some(u),
            None => n.as_f64()?,
        },
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<u64>() {
                Ok(u) => return Some(u),
                Err(_) => s.parse::<f64>().ok()?,
            }
        }
        _ => return None,
    };
    // `as` saturates: 1e308 becomes u64::MAX.
    (f.is_finite() && f >= 0.0).then_some(f as u64)
}

fn epoch(v: &Value, per_second: u64, field: &str) -> Result<SystemTime, String> {
    let n = number(v, field)?;
    let d = if per_second == 1 {
        Duration::from_secs(n)
    } else {
        Duration::from_millis(n)
    };
    UNIX_EPOCH
        .checked_add(d)
        .ok_or_else(|| format!("{field} is out of range"))
}

fn rfc3339(s: &str, field: &str) -> Result<SystemTime, String> {
    // kubectl and AWS write UTC ("…Z"); "+00:00" is the same instant.
    let utc = s.strip_suffix("+00:00").unwrap_or(s);
    humantime::parse_rfc3339_weak(utc)
        .map_err(|e| format!("{field} is not an RFC 3339 UTC time: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt_with_exp(exp: u64) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            e.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            e.encode(format!(r#"{{"exp":{exp}}}"#)),
            e.encode("sig")
        )
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn raw_token_is_trimmed() {
        let p = parse("  sk-abc123\n", OutputFormat::Auto).unwrap();
        assert_eq!(p.secret.expose(), "sk-abc123");
        assert_eq!(p.expires_at, None);
        assert_eq!(p.shape, "raw");
    }

    #[test]
    fn raw_jwt_gets_exp() {
        let j = jwt_with_exp(1_800_000_000);
        let p = parse(&format!("{j}\n"), OutputFormat::Auto).unwrap();
        assert_eq!(p.expires_at, Some(at(1_800_000_000)));
        assert_eq!(p.shape, "jwt");
    }

    #[test]
    fn garbage_is_rejected_without_echoing_it() {
        for (text, want) in [
            ("", "empty"),
            ("   \n", "empty"),
            ("ERROR: Please run 'az login'", "whitespace"),
            ("qzq\nzq", "several lines"),
            ("qzq\rzq", "several lines"),
            ("qzq\x07zq", "control character"),
            ("qzqé", "non-ASCII"),
        ] {
            let err = parse(text, OutputFormat::Auto).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains("login") && !err.contains("qz"), "{err}");
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(parse(&long, OutputFormat::Raw)
            .unwrap_err()
            .contains("more than"));
    }

    #[test]
    fn jwt_format_requires_exp() {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let no_exp = format!("{}.{}.c2ln", e.encode(r#"{"alg":"HS256"}"#), e.encode("{}"));
        assert!(parse(&no_exp, OutputFormat::Jwt)
            .unwrap_err()
            .contains("no exp"));
        assert!(parse("opaque", OutputFormat::Jwt)
            .unwrap_err()
            .contains("not a JWT"));
        let ok = parse(&jwt_with_exp(5), OutputFormat::Jwt).unwrap();
        assert_eq!(ok.expires_at, Some(at(5)));
    }

    #[test]
    fn copilot_sdk_shape() {
        let p = parse(
            r#"{"token":"t1","expiresOnTimestamp":1700000000123}"#,
            OutputFormat::Auto,
        )
        .unwrap();
        assert_eq!(p.secret.expose(), "t1");
        assert_eq!(
            p.expires_at,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(p.shape, "json-token");
    }

    #[test]
    fn oauth_shapes() {
        let before = SystemTime::now();
        let p = parse(
            r#"{"access_token":"a","expires_in":3600,"token_type":"Bearer"}"#,
            OutputFormat::Json,
        )
        .unwrap();
        let exp = p.expires_at.unwrap();
        assert!(
            exp >= before + Duration::from_secs(3600)
                && exp <= SystemTime::now() + Duration::from_secs(3600)
        );
        // IMDS answers with strings
        let p = parse(
            r#"{"access_token":"a","expires_in":"3599","expires_on":"1700000000"}"#,
            OutputFormat::Auto,
        )
        .unwrap();
        assert_eq!(p.expires_at, Some(at(1_700_000_000)));
        // no expiry stated: the JWT's exp is used
        let j = jwt_with_exp(1_900_000_000);
        let p = parse(&format!(r#"{{"access_token":"{j}"}}"#), OutputFormat::Auto).unwrap();
        assert_eq!(p.expires_at, Some(at(1_900_000_000)));
    }

    #[test]
    fn out_of_range_numbers_are_capped_or_rejected_never_a_panic() {
        let now = SystemTime::now();
        let cap = now + crate::MAX_TOKEN_LIFETIME;
        // Relative lifetimes of any size end at most MAX_TOKEN_LIFETIME away.
        for n in [
            "10000000000000000000",
            "1e308",
            "\"99999999999999999999999\"",
            "3e9",
        ] {
            let p = parse(
                &format!(r#"{{"access_token":"a","expires_in":{n}}}"#),
                OutputFormat::Auto,
            )
            .unwrap();
            let exp = p.expires_at.unwrap();
            assert!(exp >= now && exp <= cap + Duration::from_secs(5), "{n}");
        }
        // Fractions are truncated; zero is an already expired token.
        let p = parse(
            r#"{"access_token":"a","expires_in":59.9}"#,
            OutputFormat::Auto,
        )
        .unwrap();
        assert!(p.expires_at.unwrap() <= SystemTime::now() + Duration::from_secs(59));
        let p = parse(r#"{"access_token":"a","expires_in":0}"#, OutputFormat::Auto).unwrap();
        assert!(p.expires_at.unwrap() <= SystemTime::now());
        // Negative, NaN and non-numbers are errors naming the field.
        for n in ["-1", "-1e308", "\"NaN\"", "\"inf\"", "\"-5\"", "[]", "null"] {
            let err = parse(
                &format!(r#"{{"access_token":"a","expires_in":{n}}}"#),
                OutputFormat::Auto,
            )
            .unwrap_err();
            assert!(
                err.contains("expires_in is not a non-negative number"),
                "{n}: {err}"
            );
        }
        // Absolute times past what SystemTime holds are errors; far but representable ones
        // are capped when the token is built.
        let err = parse(
            r#"{"access_token":"a","expires_on":18446744073709551615}"#,
            OutputFormat::Auto,
        )
        .unwrap_err();
        assert!(err.contains("expires_on is out of range"), "{err}");
        for text in [
            r#"{"token":"a","expiresOnTimestamp":1e308}"#.to_owned(),
            r#"{"access_token":"a","expires_on":"99999999999"}"#.to_owned(),
            r#"{"kind":"ExecCredential","status":{"token":"a","expirationTimestamp":"9999-12-31T23:59:59Z"}}"#.to_owned(),
            r#"{"AccessKeyId":"A","SecretAccessKey":"s","Expiration":"9999-12-31T23:59:59Z"}"#.to_owned(),
            jwt_with_exp(u64::MAX),
            jwt_with_exp(99_999_999_999),
        ] {
            let t = parse(&text, OutputFormat::Auto)
                .unwrap()
                .into_token("x", now, None);
            assert!(t.expiry().is_none_or(|e| e <= cap), "{text}");
        }
        let t = parse("abc", OutputFormat::Auto)
            .unwrap()
            .into_token("x", now, Some(Duration::MAX));
        assert_eq!(t.expiry(), Some(cap));
    }

    #[test]
    fn azure_cli_shape() {
        let p = parse(
            r#"{"accessToken":"x","expiresOn":"2023-11-14 22:13:20.000000","expires_on":1700000000,"subscription":"s","tenant":"t","tokenType":"Bearer"}"#,
            OutputFormat::Auto,
        )
        .unwrap();
        assert_eq!(p.expires_at, Some(at(1_700_000_000)));
        assert_eq!(p.shape, "azure-cli");
        let j = jwt_with_exp(1_750_000_000);
        let p = parse(
            &format!(r#"{{"accessToken":"{j}","expiresOn":"2023-11-14 22:13:20.000000"}}"#),
            OutputFormat::Auto,
        )
        .unwrap();
        assert_eq!(p.expires_at, Some(at(1_750_000_000)));
    }

    #[test]
    fn exec_credential_shape() {
        let p = parse(
            r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"k8s","expirationTimestamp":"2023-11-14T22:13:20Z"}}"#,
            OutputFormat::ExecCredential,
        )
        .unwrap();
        assert_eq!(p.secret.expose(), "k8s");
        assert_eq!(p.expires_at, Some(at(1_700_000_000)));
        let err = parse(
            r#"{"kind":"ExecCredential","status":{}}"#,
            OutputFormat::Auto,
        )
        .unwrap_err();
        assert!(err.contains("no token"), "{err}");
    }

    #[test]
    fn aws_credential_process_shape() {
        let p = parse(
            r#"{"Version":1,"AccessKeyId":"AKIA1","SecretAccessKey":"s3cr3t","SessionToken":"sess","Expiration":"2023-11-14T22:13:20Z"}"#,
            OutputFormat::Auto,
        )
        .unwrap();
        let aws = p.aws.unwrap();
        assert_eq!(aws.access_key_id, "AKIA1");
        assert_eq!(aws.secret_access_key.expose(), "s3cr3t");
        assert_eq!(p.secret.expose(), "sess");
        assert_eq!(p.expires_at, Some(at(1_700_000_000)));
    }

    #[test]
    fn json_errors() {
        assert!(parse("{not json", OutputFormat::Auto)
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(parse("[1]", OutputFormat::Json)
            .unwrap_err()
            .contains("not an object"));
        assert!(parse(r#"{"foo":1}"#, OutputFormat::Auto)
            .unwrap_err()
            .contains("no known token field"));
        assert!(parse(r#"{"token":"a b"}"#, OutputFormat::Auto)
            .unwrap_err()
            .contains("whitespace"));
        assert!(parse(
            r#"{"token":"a","expiresOnTimestamp":"soon"}"#,
            OutputFormat::Auto
        )
        .unwrap_err()
        .contains("expiresOnTimestamp"));
        assert!(parse(
            r#"{"kind":"ExecCredential","status":{"token":"a","expirationTimestamp":"tomorrow"}}"#,
            OutputFormat::Auto
        )
        .unwrap_err()
        .contains("RFC 3339"));
    }

    #[test]
    fn default_ttl_applies_only_without_stated_expiry() {
        let now = at(1_000);
        let t = parse("abc", OutputFormat::Auto).unwrap().into_token(
            "x",
            now,
            Some(Duration::from_millis(1_500)),
        );
        assert_eq!(t.expiry(), Some(now + Duration::from_millis(1_500)));
        let ttl = Some(Duration::from_secs(60));
        let t = parse("abc", OutputFormat::Auto)
            .unwrap()
            .into_token("x", now, ttl);
        assert_eq!(t.expiry(), Some(at(1_060)));
        let t = parse(&jwt_with_exp(2_000), OutputFormat::Auto)
            .unwrap()
            .into_token("x", now, ttl);
        assert_eq!(t.expiry(), Some(at(2_000)));
        let t = parse("abc", OutputFormat::Auto)
            .unwrap()
            .into_token("x", now, None);
        assert_eq!(t.expiry(), None);
    }

    #[test]
    fn arbitrary_input_never_panics_and_never_echoes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "token",
            "access_token",
            "accessToken",
            "expires_in",
            "expires_on",
            "expiresOnTimestamp",
            "ExecCredential",
            "kind",
            "status",
            "AccessKeyId",
            "SecretAccessKey",
            "Expiration",
            "eyJ",
            ".",
            "-1",
            "1e400",
            "null",
            "true",
            "\n",
            " ",
            "\u{0}",
            "é",
            "qzmark",
        ];
        for _ in 0..20_000 {
            let n = rng.gen_range(0..24);
            let text: String = (0..n)
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            for f in [
                OutputFormat::Auto,
                OutputFormat::Raw,
                OutputFormat::Jwt,
                OutputFormat::Json,
            ] {
                if let Err(e) = parse(&text, f) {
                    assert!(!e.contains("qzmark"), "{e}");
                }
            }
        }
    }
}
