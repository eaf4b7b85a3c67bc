//! Azure managed identity (IMDS and App Service style) and AWS STS AssumeRoleWithWebIdentity
//! against loopback endpoints speaking their real protocols.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_idp;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fake_idp::{build, github_jwt, FakeIdp, Resp};
use tokenrelay::TokenRequest;

const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

fn imds_handler(r: &fake_idp::Req, n: usize) -> Resp {
    if r.path != "/metadata/identity/oauth2/token" {
        return Resp::text(404, "text/plain", "not found");
    }
    if r.header("metadata") != Some("true") {
        return Resp::json(
            400,
            serde_json::json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}),
        );
    }
    if r.query.get("api-version").map(String::as_str) != Some("2018-02-01") {
        return Resp::json(
            400,
            serde_json::json!({"error": "invalid_request", "error_description": "bad api-version"}),
        );
    }
    let Some(resource) = r.query.get("resource") else {
        return Resp::json(
            400,
            serde_json::json!({"error": "invalid_request", "error_description": "Required audience parameter not specified"}),
        );
    };
    if r.query
        .get("client_id")
        .is_some_and(|c| c != "user-assigned")
    {
        return Resp::json(
            400,
            serde_json::json!({"error": "invalid_request", "error_description": "Identity not found"}),
        );
    }
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3599;
    // IMDS answers numbers as strings
    Resp::json(
        200,
        serde_json::json!({
        "access_token": format!("mi-{n}"), "refresh_token": "", "expires_in": "3599",
        "expires_on": exp.to_string(), "not_before": "0", "resource": resource, "token_type": "Bearer",
        "client_id": "user-assigned"}),
    )
}

#[tokio::test]
async fn imds_with_metadata_header_resource_and_identity_selection() {
    let imds = FakeIdp::start(imds_handler).await;
    let src = build(
        Some(SCOPE),
        &format!(
            "kind = \"managed-identity\"\nendpoint = \"{}\"\nclient_id = \"user-assigned\"",
            imds.url("")
        ),
        &[],
    )
    .unwrap();
    let t = src
        .acquire(&TokenRequest::new("azure").with_scope(Some(SCOPE)))
        .await
        .unwrap();
    assert_eq!(t.secret().expose(), "mi-0");
    let left = t.remaining(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3500) && left < Duration::from_secs(3600));
    let r = &imds.requests()[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.query["resource"], "https://cognitiveservices.azure.com");
    assert_eq!(r.query["client_id"], "user-assigned");

    // an unknown identity: the IMDS error is surfaced
    let src = build(
        None,
        &format!("kind = \"managed-identity\"\nendpoint = \"{}\"\nclient_id = \"other\"\nresource = \"api://x\"", imds.url("")),
        &[],
    )
    .unwrap();
    let err = src
        .acquire(&TokenRequest::new("azure"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("identity provider answered HTTP 400: invalid_request: Identity not found"),
        "{err}"
    );

    // no scope and no resource: a config error, no call
    let before = imds.requests().len();
    let src = build(
        None,
        &format!(
            "kind = \"managed-identity\"\nendpoint = \"{}\"",
            imds.url("")
        ),
        &[],
    )
    .unwrap();
    let err = src.acquire(&TokenRequest::new("azure")).await.unwrap_err();
    assert!(
        err.is_config() && err.to_string().contains("no resource"),
        "{err}"
    );
    assert_eq!(imds.requests().len(), before);
}

#[tokio::test]
async fn app_service_identity_endpoint_and_header() {
    let svc = FakeIdp::start(|r, n| {
        if r.header("x-identity-header") != Some("idh-secret") {
            return Resp::json(401, serde_json::json!({"error": "unauthorized", "error_description": "missing X-IDENTITY-HEADER"}));
        }
        assert_eq!(r.query.get("api-version").map(String::as_str), Some("2019-08-01"));
        assert!(r.header("metadata").is_none());
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
        Resp::json(200, serde_json::json!({"access_token": format!("app-{n}"), "expires_on": exp, "resource": r.query["resource"], "token_type": "Bearer", "client_id": "c"}))
    })
    .await;
    let endpoint = svc.url("/msi/token");
    let src = build(
        Some(SCOPE),
        "kind = \"managed-identity\"",
        &[
            ("IDENTITY_ENDPOINT", &endpoint),
            ("IDENTITY_HEADER", "idh-secret"),
        ],
    )
    .unwrap();
    let t = src
        .acquire(&TokenRequest::new("azure").with_scope(Some(SCOPE)))
        .await
        .unwrap();
    assert_eq!(t.secret().expose(), "app-0");
    assert!(!src.describe().contains("idh-secret"));
}

const STS_OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>repo:octo/app:ref:refs/heads/main</SubjectFromWebIdentityToken>
    <Credentials>
      <SessionToken>SESSION-N</SessionToken>
      <SecretAccessKey>SECRET-N</SecretAccessKey>
      <Expiration>EXPIRATION</Expiration>
      <AccessKeyId>ASIA-N</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>r</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

fn sts_handler(r: &fake_idp::Req, n: usize) -> Resp {
    if r.path == "/gh" {
        let aud = r.query.get("audience").cloned().unwrap_or_default();
        return Resp::json(200, serde_json::json!({"value": github_jwt(&aud, n, 300)}));
    }
    let ok = r.method == "POST"
        && r.form("Action") == Some("AssumeRoleWithWebIdentity")
        && r.form("Version") == Some("2011-06-15")
        && r.form("RoleArn") == Some("arn:aws:iam::123456789012:role/bedrock")
        && r.form("RoleSessionName").is_some();
    let token = r.form("WebIdentityToken").unwrap_or("");
    let aud_ok = tokenrelay::jwt::decode_unverified(token)
        .map(|d| d.claim_str("aud") == Some("sts.amazonaws.com"))
        .unwrap_or(token == "file-token");
    if !ok || !aud_ok {
        return Resp::text(
            400,
            "text/xml",
            r#"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Incorrect token audience</Message></Error><RequestId>x</RequestId></ErrorResponse>"#,
        );
    }
    let exp =
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(900)).to_string();
    Resp::text(
        200,
        "text/xml",
        &STS_OK
            .replace("-N", &format!("-{n}"))
            .replace("EXPIRATION", &exp),
    )
}

#[tokio::test]
async fn aws_web_identity_from_env_file() {
    let sts = FakeIdp::start(sts_handler).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "file-token\n").unwrap();
    let src = build(
        None,
        "kind = \"aws-web-identity\"",
        &[
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/bedrock"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", file.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_STS", &sts.url("/")),
            ("AWS_REGION", "us-east-1"),
        ],
    )
    .unwrap();
    let t = src.acquire(&TokenRequest::new("bedrock")).await.unwrap();
    let aws = t.aws().unwrap();
    assert_eq!(aws.access_key_id, "ASIA-0");
    assert_eq!(aws.secret_access_key.expose(), "SECRET-0");
    assert_eq!(aws.session_token.as_ref().unwrap().expose(), "SESSION-0");
    let left = t.remaining(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(880) && left <= Duration::from_secs(900),
        "{left:?}"
    );
    assert_eq!(
        sts.requests()[0].form("RoleSessionName"),
        Some("tokenrelay")
    );
    assert!(!format!("{t:?}").contains("SECRET-0"));
}

#[tokio::test]
async fn aws_web_identity_from_nested_github_oidc() {
    let sts = FakeIdp::start(sts_handler).await;
    let src = build(
        None,
        &format!(
            "kind = \"aws-web-identity\"\nrole_arn = \"arn:aws:iam::123456789012:role/bedrock\"\nendpoint = \"{}\"\nrole_session_name = \"ci\"\n[provider.source.web_identity]\nkind = \"github-oidc\"",
            sts.url("/")
        ),
        &[
            ("ACTIONS_ID_TOKEN_REQUEST_URL", &sts.url("/gh?api-version=2.0")),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "gh-request-token"),
        ],
    )
    .unwrap();
    let t = src.acquire(&TokenRequest::new("bedrock")).await.unwrap();
    assert_eq!(t.aws().unwrap().access_key_id, "ASIA-1");
    let gh = &sts.requests()[0];
    assert_eq!(
        gh.query.get("audience").map(String::as_str),
        Some("sts.amazonaws.com")
    );

    // an empty token file, a device (never read: it could be endless), and STS's XML error
    // (code and message, nothing else)
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, "file-token").unwrap();
    for (file, want) in [
        (
            token.display().to_string(),
            "aws-web-identity source arn:aws:iam::123456789012:role/other: identity provider answered HTTP 400: InvalidIdentityToken: Incorrect token audience".to_owned(),
        ),
        (
            empty.display().to_string(),
            format!("web identity token from {} is empty", empty.display()),
        ),
        (
            "/dev/null".to_owned(),
            "web identity token file /dev/null: not a regular file (character device)".to_owned(),
        ),
    ] {
        let bad = build(
            None,
            &format!(
                "kind = \"aws-web-identity\"\nrole_arn = \"arn:aws:iam::123456789012:role/other\"\nendpoint = \"{}\"\nweb_identity_token_file = \"{file}\"",
                sts.url("/")
            ),
            &[],
        )
        .unwrap();
        let err = bad
            .acquire(&TokenRequest::new("bedrock"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.ends_with(&want), "{err}");
    }
}
