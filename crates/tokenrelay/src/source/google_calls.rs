//! The HTTP exchanges of Google credentials, each as google-auth makes it: the refresh grant
//! and the RFC 7523 JWT grant at the OAuth token endpoint, the RFC 8693 exchange at the
//! Security Token Service, `generateAccessToken` at IAM Credentials, the metadata server, and
//! the subject token of an `external_account` (`credential_source` file or URL).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use super::exchange::{TOKEN_EXCHANGE_GRANT, TOKEN_TYPE_ACCESS_TOKEN};
use super::google_files::CredentialSource;
use super::http::{parse_token_response, IdpClient, IdpResponse, TokenResponse};
use super::inputs::SecretInput;
use super::output::check_token_text;
use crate::error::{Error, ErrorKind, Result};
use crate::secret::Secret;

/// The `grant_type` of the RFC 7523 JWT bearer grant.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Lifetime of a service account's signed grant (1 h, what Google allows at most).
const JWT_GRANT_LIFETIME: u64 = 3600;

/// A token and when it expires.
pub(crate) struct Minted {
    pub token: Secret,
    pub expires_at: Option<SystemTime>,
}

impl From<TokenResponse> for Minted {
    fn from(t: TokenResponse) -> Self {
        Minted {
            token: t.access_token,
            expires_at: t.expires_at,
        }
    }
}

/// The refresh grant of an `authorized_user` (client id and secret in the form, as
/// google-auth sends them).
pub(crate) async fn refresh_grant(
    http: &IdpClient,
    origin: &str,
    token_uri: &str,
    client_id: &str,
    client_secret: &Secret,
    refresh_token: &Secret,
    scope: Option<&str>,
) -> Result<Minted> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", client_id),
        ("client_secret", client_secret.expose()),
        ("refresh_token", refresh_token.expose()),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    Ok(http
        .token_request(origin, token_uri, &form, None)
        .await?
        .into())
}

/// The service account JWT grant: `iss` = the account, `scope`, `aud` =
/// `https://oauth2.googleapis.com/token` (what Google documents and google-auth sends, whatever
/// the file's `token_uri`), 1 h, signed RS256 with the file's key (`kid` = `private_key_id`);
/// posted to `token_uri`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn jwt_grant(
    http: &IdpClient,
    origin: &str,
    token_uri: &str,
    client_email: &str,
    key_id: Option<&str>,
    key: &EncodingKey,
    scope: &str,
) -> Result<Minted> {
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "iss": client_email,
        "scope": scope,
        "aud": super::google_files::GOOGLE_TOKEN_URI,
        "iat": iat,
        "exp": iat + JWT_GRANT_LIFETIME,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".into());
    header.kid = key_id.map(str::to_owned);
    let assertion = jsonwebtoken::encode(&header, &claims, key).map_err(|_| {
        Error::new(
            origin,
            ErrorKind::InvalidResponse("service_account private_key cannot sign".into()),
        )
    })?;
    let form = [("grant_type", JWT_BEARER_GRANT), ("assertion", &assertion)];
    Ok(http
        .token_request(origin, token_uri, &form, None)
        .await?
        .into())
}

/// What an STS exchange sends besides the subject token.
pub(crate) struct StsRequest<'a> {
    pub token_url: &'a str,
    pub audience: &'a str,
    pub subject_token_type: &'a str,
    pub scope: &'a str,
    pub client: Option<&'a (String, Secret)>,
    pub user_project: Option<&'a str>,
}

/// RFC 8693 at Google STS: `audience` = the pool provider, `requested_token_type` = access
/// token, the subject token and its type, the scope.
pub(crate) async fn sts_exchange(
    http: &IdpClient,
    origin: &str,
    req: &StsRequest<'_>,
    subject: &Secret,
) -> Result<Minted> {
    let options = req
        .user_project
        .map(|p| serde_json::json!({ "userProject": p }).to_string());
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("audience", req.audience),
        ("requested_token_type", TOKEN_TYPE_ACCESS_TOKEN),
        ("subject_token", subject.expose()),
        ("subject_token_type", req.subject_token_type),
        ("scope", req.scope),
    ];
    if let Some(o) = &options {
        form.push(("options", o));
    }
    let basic = req.client.map(|(id, s)| (id.as_str(), s));
    Ok(http
        .token_request(origin, req.token_url, &form, basic)
        .await?
        .into())
}

/// `generateAccessToken` with `bearer` as the caller's credential.
pub(crate) async fn generate_access_token(
    http: &IdpClient,
    origin: &str,
    url: &str,
    bearer: &Secret,
    scopes: &[&str],
    delegates: &[String],
    lifetime: Duration,
) -> Result<Minted> {
    let mut body = serde_json::json!({
        "scope": scopes,
        "lifetime": format!("{}s", lifetime.as_secs()),
    });
    if !delegates.is_empty() {
        body["delegates"] = serde_json::json!(delegates);
    }
    let resp = http
        .send(origin, |c| {
            c.post(url).bearer_auth(bearer.expose()).json(&body)
        })
        .await?;
    if !(200..300).contains(&resp.status) {
        return Err(Error::new(origin, google_rejected(&resp)));
    }
    let v: Value = serde_json::from_slice(&resp.body).map_err(|_| invalid(origin, "not JSON"))?;
    let token = v
        .get("accessToken")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(origin, "without accessToken"))?;
    check_token_text(token).map_err(|e| {
        Error::new(
            origin,
            ErrorKind::InvalidResponse(format!("accessToken: {e}")),
        )
    })?;
    let expires_at = v
        .get("expireTime")
        .and_then(Value::as_str)
        .map(|t| humantime::parse_rfc3339_weak(t.trim().trim_end_matches('Z')))
        .transpose()
        .map_err(|_| invalid(origin, "with an expireTime that is not RFC 3339"))?;
    Ok(Minted {
        token: Secret::new(token),
        expires_at,
    })
}

fn invalid(origin: &str, what: &str) -> Error {
    Error::new(
        origin,
        ErrorKind::InvalidResponse(format!("the answer is {what}")),
    )
}

/// A Google API error (`{"error": {"code", "message", "status"}}`) or an OAuth one, as
/// [`ErrorKind::IdpRejected`] with the status name and message only.
pub(crate) fn google_rejected(resp: &IdpResponse) -> ErrorKind {
    super::http::rejected_with_error_object(resp, "status")
}

/// The metadata server's token for the default service account.
pub(crate) async fn metadata_token(
    http: &IdpClient,
    origin: &str,
    host: &str,
    scopes: &[&str],
) -> Result<Minted> {
    let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token");
    let joined = scopes.join(",");
    let resp = http
        .send(origin, |c| {
            c.get(&url)
                .query(&[("scopes", joined.as_str())])
                .header("Metadata-Flavor", "Google")
        })
        .await?;
    let t = parse_token_response(&resp, SystemTime::now()).map_err(|k| Error::new(origin, k))?;
    Ok(t.into())
}

/// The subject token of an `external_account`, from its file or URL.
pub(crate) async fn subject_token(
    http: &IdpClient,
    origin: &str,
    source: &CredentialSource,
) -> Result<Secret> {
    let (text, json_field, field) = match source {
        CredentialSource::File { path, json_field } => {
            let at = format!("{origin}: credential_source.file");
            let s = SecretInput::File(path.clone())
                .read(&at, "subject token")
                .await?;
            (s, json_field, "credential_source.file")
        }
        CredentialSource::Url {
            url,
            headers,
            json_field,
        } => {
            let at = format!("{origin}: credential_source.url");
            let resp = http
                .send(&at, |c| {
                    headers
                        .iter()
                        .fold(c.get(url), |rb, (k, v)| rb.header(k, v.expose()))
                })
                .await?;
            if !(200..300).contains(&resp.status) {
                return Err(Error::new(at, google_rejected(&resp)));
            }
            let text = std::str::from_utf8(&resp.body)
                .map_err(|_| {
                    Error::new(
                        &*at,
                        ErrorKind::InvalidResponse("the answer is not UTF-8".into()),
                    )
                })?
                .trim()
                .to_owned();
            (Secret::new(text), json_field, "credential_source.url")
        }
        CredentialSource::Configured => {
            return Err(Error::config(origin, "no [subject] source is configured"))
        }
    };
    let at = format!("{origin}: {field}");
    let token = match json_field {
        None => text,
        Some(name) => {
            let v: Value = serde_json::from_str(text.expose()).map_err(|_| {
                Error::new(
                    &*at,
                    ErrorKind::InvalidResponse("is not JSON (format.type is json)".into()),
                )
            })?;
            let t = v.get(name).and_then(Value::as_str).ok_or_else(|| {
                Error::new(
                    &*at,
                    ErrorKind::InvalidResponse(format!(
                        "has no string field {name:?} (format.subject_token_field_name)"
                    )),
                )
            })?;
            Secret::new(t.trim())
        }
    };
    check_token_text(token.expose()).map_err(|e| {
        Error::new(
            at,
            ErrorKind::InvalidResponse(format!("subject token: {e}")),
        )
    })?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_errors_keep_status_and_message_only() {
        let resp = IdpResponse {
            status: 403,
            body: bytes::Bytes::from_static(
                br#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).","status":"PERMISSION_DENIED"}}"#,
            ),
        };
        assert_eq!(
            google_rejected(&resp).to_string(),
            "identity provider answered HTTP 403: PERMISSION_DENIED: Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist)."
        );
        let resp = IdpResponse {
            status: 400,
            body: bytes::Bytes::from_static(
                br#"{"error":"invalid_grant","error_description":"The audience in ID Token does not match."}"#,
            ),
        };
        assert_eq!(
            google_rejected(&resp).to_string(),
            "identity provider answered HTTP 400: invalid_grant: The audience in ID Token does not match."
        );
    }
}
