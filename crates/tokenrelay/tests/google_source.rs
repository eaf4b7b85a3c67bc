//! `kind = "google"` against a loopback fake: an `external_account` file (subject token file →
//! STS → `generateAccessToken`), the table's `workload_identity_provider` with a nested subject,
//! the metadata server, and the refusals (STS audience, IAM 403) as one line naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_idp;

use fake_idp::{build, FakeIdp, Req, Resp};
use tokenrelay::TokenRequest;

const WIP: &str = "projects/1/locations/global/workloadIdentityPools/p/providers/gh";

fn google(r: &Req, _n: usize) -> Resp {
    match r.path.as_str() {
        "/sts" => {
            if r.form("grant_type") != Some("urn:ietf:params:oauth:grant-type:token-exchange")
                || r.form("requested_token_type")
                    != Some("urn:ietf:params:oauth:token-type:access_token")
                || r.form("subject_token") != Some("subject-jwt")
            {
                return Resp::oauth_error(400, "invalid_request", "bad exchange");
            }
            if r.form("audience") != Some(format!("//iam.googleapis.com/{WIP}").as_str()) {
                return Resp::oauth_error(400, "invalid_target", "audience");
            }
            Resp::json(
                200,
                serde_json::json!({"access_token": "sts-token", "expires_in": 3600, "token_type": "Bearer",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}),
            )
        }
        p if p.starts_with("/iam/v1/projects/-/serviceAccounts/") => {
            if r.header("authorization") != Some("Bearer sts-token") {
                return Resp::json(
                    401,
                    serde_json::json!({"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "no"}}),
                );
            }
            if !p.contains("/sa@p.iam.gserviceaccount.com:generateAccessToken") {
                return Resp::json(
                    403,
                    serde_json::json!({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "denied"}}),
                );
            }
            Resp::json(
                200,
                serde_json::json!({"accessToken": "ya29.impersonated", "expireTime": "2099-01-01T00:00:00.5Z"}),
            )
        }
        "/computeMetadata/v1/instance/service-accounts/default/token" => {
            if r.header("metadata-flavor") != Some("Google") {
                return Resp::json(403, serde_json::json!({"error": "flavor"}));
            }
            let scopes = r.query.get("scopes").cloned().unwrap_or_default();
            Resp::json(
                200,
                serde_json::json!({"access_token": format!("meta:{scopes}"), "expires_in": 600, "token_type": "Bearer"}),
            )
        }
        _ => Resp::json(404, serde_json::json!({})),
    }
}

fn external_file(dir: &std::path::Path, idp: &FakeIdp, audience: &str, sa: &str) -> String {
    let subject = dir.join("subject.json");
    std::fs::write(&subject, r#"{"value":"subject-jwt"}"#).unwrap();
    let file = dir.join(format!("ext-{sa}.json"));
    let body = serde_json::json!({
        "type": "external_account", "audience": audience,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_url": idp.url("/sts"),
        "service_account_impersonation_url": idp.url(&format!("/iam/v1/projects/-/serviceAccounts/{sa}:generateAccessToken")),
        "credential_source": {"file": subject, "format": {"type": "json", "subject_token_field_name": "value"}}
    });
    std::fs::write(&file, body.to_string()).unwrap();
    file.display().to_string()
}

#[tokio::test]
async fn external_account_file_sts_then_impersonation() {
    let idp = FakeIdp::start(google).await;
    let dir = tempfile::tempdir().unwrap();
    let aud = format!("//iam.googleapis.com/{WIP}");
    let f = external_file(dir.path(), &idp, &aud, "sa@p.iam.gserviceaccount.com");
    let src = build(
        None,
        &format!("kind = \"google\"\ncredentials_file = \"{f}\""),
        &[],
    )
    .unwrap();
    let t = src.acquire(&TokenRequest::new("p")).await.unwrap();
    assert_eq!(t.secret().expose(), "ya29.impersonated");
    let sts = &idp.requests()[0];
    assert_eq!(
        sts.form("scope"),
        Some("https://www.googleapis.com/auth/cloud-platform")
    );

    let f = external_file(dir.path(), &idp, &aud, "other@p.iam.gserviceaccount.com");
    let src = build(
        None,
        &format!("kind = \"google\"\ncredentials_file = \"{f}\""),
        &[],
    )
    .unwrap();
    let e = src
        .acquire(&TokenRequest::new("p"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("service_account_impersonation_url: identity provider answered HTTP 403: PERMISSION_DENIED: denied"), "{e}");
    assert_eq!(e.lines().count(), 1);

    let f = external_file(
        dir.path(),
        &idp,
        "//iam.googleapis.com/projects/2/x",
        "sa@p.iam.gserviceaccount.com",
    );
    let src = build(
        None,
        &format!("kind = \"google\"\ncredentials_file = \"{f}\""),
        &[],
    )
    .unwrap();
    let e = src
        .acquire(&TokenRequest::new("p"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("(audience //iam.googleapis.com/projects/2/x): identity provider answered HTTP 400: invalid_target"), "{e}");
}

#[tokio::test]
async fn workload_identity_provider_table_with_nested_subject() {
    let idp = FakeIdp::start(google).await;
    let src = build(
        Some("https://www.googleapis.com/auth/a https://www.googleapis.com/auth/b"),
        &format!(
            "kind = \"google\"\nworkload_identity_provider = \"{WIP}\"\nservice_account = \"sa@p.iam.gserviceaccount.com\"\ntoken_url = \"{}\"\niam_credentials_url = \"{}\"\n[provider.source.subject]\nkind = \"env\"\nname = \"SUBJECT\"",
            idp.url("/sts"),
            idp.url("/iam")
        ),
        &[("SUBJECT", "subject-jwt")],
    )
    .unwrap();
    let req = TokenRequest::new("p").with_scope(Some("https://www.googleapis.com/auth/a"));
    let t = src.acquire(&req).await.unwrap();
    assert_eq!(t.secret().expose(), "ya29.impersonated");
}

#[tokio::test]
async fn metadata_server_with_scopes_and_flavor() {
    let idp = FakeIdp::start(google).await;
    let host = idp.addr.to_string();
    let src = build(
        Some("https://www.googleapis.com/auth/a https://www.googleapis.com/auth/b"),
        "kind = \"google\"",
        &[("GCE_METADATA_HOST", &host)],
    )
    .unwrap();
    let req = TokenRequest::new("p").with_scope(Some(
        "https://www.googleapis.com/auth/a https://www.googleapis.com/auth/b",
    ));
    let t = src.acquire(&req).await.unwrap();
    assert_eq!(
        t.secret().expose(),
        "meta:https://www.googleapis.com/auth/a,https://www.googleapis.com/auth/b"
    );
}
