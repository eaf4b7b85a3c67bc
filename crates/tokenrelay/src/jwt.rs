//! Reading JWTs without verifying them: for expiry discovery and `tokenrelay decode`.
//!
//! Nothing here trusts the token: tokenrelay only reads `exp` to know when to refresh.
//! Decoding is done by `jsonwebtoken` with signature validation disabled.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;

/// A JWT's header and claims, decoded without verification.
#[derive(Debug, Clone)]
pub struct UnverifiedJwt {
    /// The JOSE header as JSON (alg, kid, typ, …).
    pub header: Value,
    /// The claims as JSON.
    pub claims: Value,
}

impl UnverifiedJwt {
    /// The `exp` claim as a time.
    pub fn expires_at(&self) -> Option<SystemTime> {
        claim_time(&self.claims, "exp")
    }

    /// The `iat` claim as a time.
    pub fn issued_at(&self) -> Option<SystemTime> {
        claim_time(&self.claims, "iat")
    }

    /// A string claim (`sub`, `iss`, `tid`, …).
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

/// Reads a NumericDate claim (seconds since the epoch, integer or float).
pub fn claim_time(claims: &Value, name: &str) -> Option<SystemTime> {
    let v = claims.get(name)?;
    if !v.is_number() {
        return None;
    }
    let secs = crate::source::output::seconds(v)?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Whether `s` has the shape of a compact JWS (three base64url segments, the first two non-empty).
pub fn looks_like_jwt(s: &str) -> bool {
    let mut parts = s.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let b64url = |x: &str| {
        x.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !h.is_empty() && !p.is_empty() && b64url(h) && b64url(p) && b64url(sig) && h.starts_with("ey")
}

/// Decodes a JWT's header and claims without verifying its signature or any claim.
///
/// # Errors
/// A message naming what is malformed (never the token itself).
///
/// ```
/// // header {"alg":"HS256","typ":"JWT"}, claims {"sub":"me","exp":2000000000}
/// let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtZSIsImV4cCI6MjAwMDAwMDAwMH0.c2ln";
/// let d = tokenrelay::jwt::decode_unverified(jwt).unwrap();
/// assert_eq!(d.claim_str("sub"), Some("me"));
/// assert!(d.expires_at().is_some());
/// ```
pub fn decode_unverified(token: &str) -> Result<UnverifiedJwt, String> {
    if !looks_like_jwt(token) {
        return Err("not a JWT (expected three base64url segments separated by '.')".into());
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| format!("malformed JWT header: {e}"))?;
    let mut validation = Validation::new(header.alg);
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(&[]), &validation)
        .map_err(|e| format!("malformed JWT claims: {e}"))?;
    if !data.claims.is_object() {
        return Err("malformed JWT claims: not a JSON object".into());
    }
    let header = serde_json::to_value(&header).map_err(|e| format!("malformed JWT header: {e}"))?;
    Ok(UnverifiedJwt {
        header,
        claims: data.claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(claims: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            e.encode(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#),
            e.encode(claims),
            e.encode("sig")
        )
    }

    #[test]
    fn reads_exp_iat_and_header() {
        let d =
            decode_unverified(&jwt(r#"{"exp":1700000000,"iat":1699990000,"aud":"x"}"#)).unwrap();
        assert_eq!(
            d.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            d.issued_at(),
            Some(UNIX_EPOCH + Duration::from_secs(1_699_990_000))
        );
        assert_eq!(d.header["kid"], "k1");
    }

    #[test]
    fn rejects_malformed() {
        assert!(decode_unverified("abc").is_err());
        assert!(decode_unverified("eyJ.eyJ.x.y").is_err());
        let bad_claims = format!("{}.bm90LWpzb24.c2ln", &jwt("{}")[..36]);
        assert!(decode_unverified(&bad_claims).is_err());
        assert!(decode_unverified(&jwt("[1,2]")).is_err());
    }

    #[test]
    fn shape_check() {
        assert!(looks_like_jwt(&jwt("{}")));
        assert!(!looks_like_jwt("sk-abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("ey.ey.!"));
    }
}
