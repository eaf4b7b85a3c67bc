//! How a token is put on a request: the inject styles of the config file (`inject = "…"`).

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

/// How a token is attached to upstream requests (`inject = "…"` in the config file).
///
/// ```
/// use tokenrelay::inject::Style;
/// assert_eq!(Style::parse_name("api-key").unwrap(), Style::ApiKey);
/// let custom = Style::parse_name("header:x-goog-api-key").unwrap();
/// assert_eq!(custom.header_name().as_str(), "x-goog-api-key");
/// assert!(Style::parse_name("header:bad name").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "StyleRepr")]
#[non_exhaustive]
pub enum Style {
    /// `Authorization: Bearer <token>`
    #[default]
    Bearer,
    /// `api-key: <token>` (Azure OpenAI)
    ApiKey,
    /// `x-api-key: <token>` (Anthropic)
    XApiKey,
    /// AWS Signature Version 4 with the source's AWS credentials (Bedrock); the request body
    /// must fit the replay buffer, since the signature covers its hash.
    AwsSigV4,
    /// A custom header whose value is `template` with `{token}` replaced.
    Header {
        /// Header name (validated when the style is parsed).
        header: HeaderName,
        /// Value template containing `{token}`.
        template: String,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StyleRepr {
    Named(String),
    Custom {
        header: String,
        #[serde(default)]
        template: Option<String>,
    },
}

impl TryFrom<StyleRepr> for Style {
    type Error = String;
    fn try_from(r: StyleRepr) -> Result<Self, String> {
        match r {
            StyleRepr::Named(n) => Style::parse_name(&n),
            StyleRepr::Custom { header, template } => Style::custom(&header, template),
        }
    }
}

impl Style {
    /// A custom header style: `header` set to `template` (default `{token}`) with `{token}`
    /// replaced.
    ///
    /// # Errors
    /// `header` is not a header name, or `template` has no `{token}` or cannot be a header
    /// value.
    pub fn custom(header: &str, template: Option<String>) -> Result<Self, String> {
        let template = template.unwrap_or_else(|| "{token}".into());
        if !template.contains("{token}") {
            return Err(format!("inject template {template:?} has no {{token}}"));
        }
        if HeaderValue::from_str(&template.replace("{token}", "t")).is_err() {
            return Err(format!(
                "inject template {template:?} cannot be a header value"
            ));
        }
        let header = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| format!("inject header {header:?} is not a valid header name"))?;
        Ok(Style::Header { header, template })
    }

    /// Parses `bearer`, `api-key`, `x-api-key`, `aws-sigv4`, or `header:NAME` (value = token) /
    /// `header:NAME:TEMPLATE`.
    ///
    /// # Errors
    /// The accepted forms.
    pub fn parse_name(s: &str) -> Result<Self, String> {
        match s {
            "bearer" => Ok(Style::Bearer),
            "api-key" => Ok(Style::ApiKey),
            "x-api-key" => Ok(Style::XApiKey),
            "aws-sigv4" => Ok(Style::AwsSigV4),
            other => {
                if let Some(rest) = other.strip_prefix("header:") {
                    let (header, template) = match rest.split_once(':') {
                        Some((h, t)) => (h, Some(t.to_owned())),
                        None => (rest, None),
                    };
                    return Style::custom(header, template);
                }
                Err(format!(
                    "unknown inject style {other:?} (expected bearer, api-key, x-api-key, aws-sigv4 or header:NAME[:TEMPLATE])"
                ))
            }
        }
    }

    /// The header this style sets.
    pub fn header_name(&self) -> HeaderName {
        match self {
            Style::Bearer | Style::AwsSigV4 => http::header::AUTHORIZATION,
            Style::ApiKey => HeaderName::from_static("api-key"),
            Style::XApiKey => HeaderName::from_static("x-api-key"),
            Style::Header { header, .. } => header.clone(),
        }
    }

    /// The header value text for `token`.
    pub fn header_value(&self, token: &str) -> String {
        match self {
            Style::Bearer => format!("Bearer {token}"),
            Style::ApiKey | Style::XApiKey | Style::AwsSigV4 => token.to_owned(),
            Style::Header { template, .. } => template.replace("{token}", token),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_refuses_bad_ones() {
        assert_eq!(Style::parse_name("bearer"), Ok(Style::Bearer));
        assert_eq!(Style::parse_name("x-api-key"), Ok(Style::XApiKey));
        assert_eq!(Style::parse_name("aws-sigv4"), Ok(Style::AwsSigV4));
        let s = Style::parse_name("header:x-auth:Token {token}").unwrap();
        assert_eq!(s.header_value("abc"), "Token abc");
        assert_eq!(s.header_name().as_str(), "x-auth");
        for bad in [
            "nope",
            "header:",
            "header:x:no-placeholder",
            "header:x:a\n{token}",
        ] {
            assert!(Style::parse_name(bad).is_err(), "{bad}");
        }
    }
}
