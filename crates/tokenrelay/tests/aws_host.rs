//! `kind = "aws"` against loopback fakes: the ECS / EKS Pod Identity container endpoint (the
//! `Authorization` token from `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`) and EC2 IMDSv2 (a
//! session token PUT first, then the role's credentials with it), giving SigV4 credentials.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_idp;

use fake_idp::{build, FakeIdp, Resp};
use tokenrelay::TokenRequest;

fn creds(n: usize) -> Resp {
    Resp::json(
        200,
        serde_json::json!({"AccessKeyId": format!("ASIA{n}"), "SecretAccessKey": "secret", "Token": format!("session-{n}"),
            "Expiration": "2099-01-01T00:00:00Z", "Code": "Success", "Type": "AWS-HMAC"}),
    )
}

#[tokio::test]
async fn container_credentials_with_the_token_file() {
    let fake = FakeIdp::start(|r, n| {
        if r.path != "/v1/credentials" {
            return Resp::json(404, serde_json::json!({}));
        }
        if r.header("authorization") != Some("pod-identity-token") {
            return Resp::json(401, serde_json::json!({"Message": "bad token"}));
        }
        creds(n)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "pod-identity-token\n").unwrap();
    let full = fake.url("/v1/credentials");
    let token = token.display().to_string();
    let src = build(
        None,
        "kind = \"aws\"",
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token),
        ],
    )
    .unwrap();
    let t = src.acquire(&TokenRequest::new("p")).await.unwrap();
    let aws = t.aws().unwrap();
    assert_eq!(aws.access_key_id, "ASIA0");
    assert_eq!(aws.session_token.as_ref().unwrap().expose(), "session-0");

    std::fs::write(dir.path().join("token"), "wrong").unwrap();
    let e = src
        .acquire(&TokenRequest::new("p"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("aws source (container credentials http://127.0.0.1:"),
        "{e}"
    );
    assert!(e.contains("HTTP 401"), "{e}");
}

#[tokio::test]
async fn imdsv2_token_then_role_credentials() {
    let fake = FakeIdp::start(|r, n| match (r.method.as_str(), r.path.as_str()) {
        ("PUT", "/latest/api/token")
            if r.header("x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
        {
            Resp::text(200, "text/plain", "imds-session")
        }
        (_, p)
            if p.starts_with("/latest/meta-data/")
                && r.header("x-aws-ec2-metadata-token") != Some("imds-session") =>
        {
            Resp::text(401, "text/plain", "")
        }
        ("GET", "/latest/meta-data/iam/security-credentials/") => {
            Resp::text(200, "text/plain", "bedrock-role\n")
        }
        ("GET", "/latest/meta-data/iam/security-credentials/bedrock-role") => creds(n),
        _ => Resp::text(404, "text/plain", ""),
    })
    .await;
    let base = fake.url("");
    let src = build(
        None,
        "kind = \"aws\"",
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &base)],
    )
    .unwrap();
    let t = src.acquire(&TokenRequest::new("p")).await.unwrap();
    assert!(t.aws().unwrap().access_key_id.starts_with("ASIA"));
    let methods: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        methods,
        [
            "PUT /latest/api/token",
            "GET /latest/meta-data/iam/security-credentials/",
            "GET /latest/meta-data/iam/security-credentials/bedrock-role"
        ]
    );
}
