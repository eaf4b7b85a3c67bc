//! Against real third-party issuers started by `e2e/idp/run.sh` (ignored by default):
//! `oauth2-mock-server` at `TOKENRELAY_E2E_OAUTH_URL` and `moto_server` at
//! `TOKENRELAY_E2E_STS_URL`. Run with `e2e/idp/run.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_idp;

use std::time::SystemTime;

use fake_idp::build;
use tokenrelay::TokenRequest;

fn url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set; run e2e/idp/run.sh"))
}

#[tokio::test]
#[ignore = "needs oauth2-mock-server; run e2e/idp/run.sh"]
async fn oauth2_mock_server_client_credentials() {
    let base = url("TOKENRELAY_E2E_OAUTH_URL");
    let src = build(
        None,
        &format!(
            "kind = \"oauth2\"\ntoken_url = \"{base}/token\"\nclient_id = \"tokenrelay-e2e\"\nclient_secret_env = \"E2E_SECRET\"\nscope = \"api://llm/.default\""
        ),
        &[("E2E_SECRET", "e2e-secret")],
    )
    .unwrap();
    let t = src.acquire(&TokenRequest::new("e2e")).await.unwrap();
    let jwt = tokenrelay::jwt::decode_unverified(t.secret().expose()).unwrap();
    let issuer = url("TOKENRELAY_E2E_OAUTH_ISSUER");
    assert_eq!(jwt.claim_str("iss"), Some(issuer.as_str()));
    assert_eq!(jwt.claim_str("scope"), Some("api://llm/.default"));
    // expires_in (from the answer) and the JWT's exp agree to the second
    let (a, b) = (t.expiry().unwrap(), jwt.expires_at().unwrap());
    let skew = a
        .duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap();
    assert!(skew.as_secs() <= 2, "{skew:?}");
    let left = t.remaining(SystemTime::now()).unwrap().as_secs();
    assert!(left > 0);
    println!("verified: oauth2 client credentials at {base}/token -> JWT iss={issuer} scope=api://llm/.default, expires in {left}s");
}

#[tokio::test]
#[ignore = "needs oauth2-mock-server; run e2e/idp/run.sh"]
async fn oauth2_mock_server_refresh_token() {
    let base = url("TOKENRELAY_E2E_OAUTH_URL");
    let dir = tempfile::tempdir().unwrap();
    let rt = dir.path().join("refresh-token");
    std::fs::write(&rt, "initial-refresh-token\n").unwrap();
    let src = build(
        None,
        &format!(
            "kind = \"refresh-token\"\ntoken_url = \"{base}/token\"\nclient_id = \"tokenrelay-e2e\"\nclient_secret_env = \"E2E_SECRET\"\nrefresh_token_file = \"{}\"",
            rt.display()
        ),
        &[("E2E_SECRET", "e2e-secret")],
    )
    .unwrap();
    let t = src.acquire(&TokenRequest::new("e2e")).await.unwrap();
    let jwt = tokenrelay::jwt::decode_unverified(t.secret().expose()).unwrap();
    let issuer = url("TOKENRELAY_E2E_OAUTH_ISSUER");
    assert_eq!(jwt.claim_str("iss"), Some(issuer.as_str()));
    let stored = std::fs::read_to_string(&rt).unwrap();
    let rotated = stored.trim() != "initial-refresh-token";
    if rotated {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&rt).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // the rotated token works too
        src.acquire(&TokenRequest::new("e2e")).await.unwrap();
    }
    println!("verified: refresh_token grant at {base}/token -> JWT access token; refresh token rotated and stored 0600: {rotated}");
}

#[tokio::test]
#[ignore = "needs moto_server; run e2e/idp/run.sh"]
async fn moto_sts_assume_role_with_web_identity() {
    let sts = url("TOKENRELAY_E2E_STS_URL");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web-identity-token");
    std::fs::write(&file, fake_idp::github_jwt("sts.amazonaws.com", 1, 300)).unwrap();
    let src = build(
        None,
        "kind = \"aws-web-identity\"",
        &[
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/bedrock-e2e"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", file.to_str().unwrap()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL_STS", &sts),
        ],
    )
    .unwrap();
    let t = src.acquire(&TokenRequest::new("bedrock")).await.unwrap();
    let aws = t.aws().unwrap();
    assert!(!aws.access_key_id.is_empty());
    assert!(aws.session_token.is_some());
    let left = t.remaining(SystemTime::now()).unwrap().as_secs();
    assert!(left > 60, "{left}");
    // and the credentials sign a Bedrock request
    let uri: http::Uri = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/invoke"
        .parse()
        .unwrap();
    let headers = tokenrelay::inject::sign_request(
        &http::Method::POST,
        &uri,
        &http::HeaderMap::new(),
        b"{}",
        aws,
        "us-east-1",
        "bedrock",
        SystemTime::now(),
    )
    .unwrap();
    assert!(headers.iter().any(|(n, _)| n == "x-amz-security-token"));
    println!("verified: STS AssumeRoleWithWebIdentity at {sts} -> access key {}…, session token, expires in {left}s; SigV4 headers computed", &aws.access_key_id[..4.min(aws.access_key_id.len())]);
}
