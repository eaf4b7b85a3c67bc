//! Federated sources against a loopback Entra + GitHub Actions OIDC endpoint: the assertion is
//! re-read or re-minted for every token, proactive refresh with lifetimes of seconds, token
//! exchange with a nested subject source, and the configuration/file failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_idp;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_idp::{build, github_jwt, verify_assertion, FakeIdp, Resp, GITHUB_ISSUER, GITHUB_SUBJECT};
use jsonwebtoken::Algorithm;
use tokenrelay::{Cache, TokenRequest};

const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// An Entra token endpoint for tenant `t1` / client `c1` that accepts GitHub-shaped assertions
/// signed with the test key (aud `api://AzureADTokenExchange`), or, at `/gh`, a GitHub OIDC
/// token service. Tokens live `lifetime` seconds.
async fn entra_and_github(lifetime: u64, assertions: Arc<Mutex<Vec<String>>>) -> FakeIdp {
    FakeIdp::start(move |r, n| {
        if r.path == "/gh" {
            if r.header("authorization") != Some("Bearer gh-request-token") {
                return Resp::json(401, serde_json::json!({"message": "Bad credentials"}));
            }
            let aud = r.query.get("audience").cloned().unwrap_or_default();
            assert_eq!(r.query.get("api-version").map(String::as_str), Some("2.0"));
            return Resp::json(
                200,
                serde_json::json!({"count": 1, "value": github_jwt(&aud, n, 300)}),
            );
        }
        if r.path != "/t1/oauth2/v2.0/token" {
            return Resp::oauth_error(404, "invalid_tenant", "AADSTS90002: Tenant not found");
        }
        if r.form("grant_type") != Some("client_credentials")
            || r.form("client_assertion_type")
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            || r.form("client_id") != Some("c1")
            || r.form("scope") != Some(SCOPE)
        {
            return Resp::oauth_error(400, "invalid_request", "AADSTS900144: bad request");
        }
        let jwt = r.form("client_assertion").unwrap();
        if let Err(e) = verify_assertion(
            jwt,
            "test-rsa-pub.pem",
            Algorithm::RS256,
            "api://AzureADTokenExchange",
            GITHUB_ISSUER,
            GITHUB_SUBJECT,
        ) {
            return Resp::oauth_error(400, "invalid_client", &format!("AADSTS700211: {e}"));
        }
        assertions.lock().unwrap().push(jwt.to_owned());
        Resp::token(&format!("entra-{n}"), lifetime)
    })
    .await
}

#[tokio::test]
async fn entra_federated_rereads_the_token_file_and_refreshes_proactively() {
    let assertions = Arc::new(Mutex::new(Vec::new()));
    let idp = entra_and_github(3, assertions.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, github_jwt("api://AzureADTokenExchange", 100, 300)).unwrap();
    // config is just the kind: the standard variables fill the rest
    let src = build(
        Some(SCOPE),
        "kind = \"entra-federated\"",
        &[
            ("AZURE_TENANT_ID", "t1"),
            ("AZURE_CLIENT_ID", "c1"),
            ("AZURE_FEDERATED_TOKEN_FILE", file.to_str().unwrap()),
            ("AZURE_AUTHORITY_HOST", &idp.url("/")),
        ],
    )
    .unwrap();
    assert_eq!(src.kind(), "entra-federated");
    let cache = Cache::new(src);
    let entry = cache.entry(TokenRequest::new("azure").with_scope(Some(SCOPE)));
    let first = entry.get().await.unwrap();
    // the kubelet rotates the projected token
    std::fs::write(&file, github_jwt("api://AzureADTokenExchange", 101, 300)).unwrap();
    // a 3 s token is refreshed in the background before it expires
    tokio::time::sleep(Duration::from_millis(2_700)).await;
    let second = entry.get().await.unwrap();
    assert_ne!(
        first.token().secret().expose(),
        second.token().secret().expose()
    );
    assert!(!second.token().is_expired(std::time::SystemTime::now()));
    let seen = assertions.lock().unwrap();
    assert!(seen.len() >= 2, "{}", seen.len());
    assert_ne!(seen[0], seen[1], "the rotated file was read again");
}

#[tokio::test]
async fn github_oidc_entra_mints_a_new_github_token_for_every_entra_token() {
    let assertions = Arc::new(Mutex::new(Vec::new()));
    let idp = entra_and_github(3, assertions.clone()).await;
    let env = [
        ("AZURE_TENANT_ID", "t1"),
        ("AZURE_CLIENT_ID", "c1"),
        ("AZURE_AUTHORITY_HOST", &*idp.url("")),
        (
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            &*idp.url("/gh?api-version=2.0"),
        ),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "gh-request-token"),
    ];
    let src = build(Some(SCOPE), "kind = \"github-oidc-entra\"", &env).unwrap();
    let cache = Cache::new(src);
    let entry = cache.entry(TokenRequest::new("azure").with_scope(Some(SCOPE)));
    let first = entry.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_700)).await;
    let second = entry.get().await.unwrap();
    assert_ne!(
        first.token().secret().expose(),
        second.token().secret().expose()
    );
    let gh_calls: Vec<_> = idp
        .requests()
        .into_iter()
        .filter(|r| r.path == "/gh")
        .collect();
    assert!(gh_calls.len() >= 2);
    assert!(
        gh_calls
            .iter()
            .all(|r| r.query.get("audience").map(String::as_str)
                == Some("api://AzureADTokenExchange"))
    );
    {
        let seen = assertions.lock().unwrap();
        assert_ne!(seen[0], seen[1], "a new GitHub token each time");
    }

    // a wrong request token: GitHub's 401 is reported, the bearer is not
    let mut bad = env;
    bad[4] = ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "wrong-bearer");
    let src = build(Some(SCOPE), "kind = \"github-oidc-entra\"", &bad).unwrap();
    let err = src
        .acquire(&TokenRequest::new("azure"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("github-oidc source (audience api://AzureADTokenExchange)"),
        "{err}"
    );
    assert!(
        err.contains("HTTP 401") && !err.contains("wrong-bearer"),
        "{err}"
    );
}

#[tokio::test]
async fn raw_github_oidc_token_with_its_expiry() {
    let idp = entra_and_github(60, Arc::default()).await;
    let src = build(
        None,
        "kind = \"github-oidc\"\naudience = \"https://company.example\"",
        &[
            (
                "ACTIONS_ID_TOKEN_REQUEST_URL",
                &idp.url("/gh?api-version=2.0"),
            ),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "gh-request-token"),
        ],
    )
    .unwrap();
    let t = src.acquire(&TokenRequest::new("p")).await.unwrap();
    let d = tokenrelay::jwt::decode_unverified(t.secret().expose()).unwrap();
    assert_eq!(d.claim_str("aud"), Some("https://company.example"));
    assert_eq!(t.expiry(), d.expires_at());
}

#[tokio::test]
async fn token_exchange_with_a_nested_github_subject() {
    let idp = FakeIdp::start(|r, n| {
        if r.path == "/gh" {
            let aud = r.query.get("audience").cloned().unwrap_or_default();
            return Resp::json(200, serde_json::json!({"value": github_jwt(&aud, n, 300)}));
        }
        if r.form("grant_type") != Some("urn:ietf:params:oauth:grant-type:token-exchange")
            || r.form("subject_token_type") != Some("urn:ietf:params:oauth:token-type:jwt")
            || r.form("audience") != Some("llm-gateway")
        {
            return Resp::oauth_error(400, "invalid_request", "bad exchange");
        }
        if let Err(e) = verify_assertion(
            r.form("subject_token").unwrap(),
            "test-rsa-pub.pem",
            Algorithm::RS256,
            "https://idp.company.example",
            GITHUB_ISSUER,
            GITHUB_SUBJECT,
        ) {
            return Resp::oauth_error(400, "invalid_grant", &e);
        }
        Resp::json(
            200,
            serde_json::json!({
            "access_token": format!("exchanged-{n}"),
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer", "expires_in": 600}),
        )
    })
    .await;
    let src = build(
        None,
        &format!(
            "kind = \"token-exchange\"\ntoken_url = \"{}\"\naudience = \"llm-gateway\"\n[provider.source.subject]\nkind = \"github-oidc\"\naudience = \"https://idp.company.example\"",
            idp.url("/exchange")
        ),
        &[
            ("ACTIONS_ID_TOKEN_REQUEST_URL", &idp.url("/gh?api-version=2.0")),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "gh-request-token"),
        ],
    )
    .unwrap();
    let t = src.acquire(&TokenRequest::new("p")).await.unwrap();
    assert_eq!(t.secret().expose(), "exchanged-1");
    assert!(t.lifetime().unwrap() <= Duration::from_secs(601));
}

#[tokio::test]
async fn federation_failures_are_clear() {
    // missing variable: a config error naming the key and the variable
    let err = build(
        Some(SCOPE),
        "kind = \"entra-federated\"\ntenant_id = \"t1\"\nclient_id = \"c1\"",
        &[],
    )
    .unwrap_err();
    assert!(err.is_config());
    assert_eq!(
        err.to_string(),
        "provider[0] (p).source.federated_token_file: invalid configuration: not set (set federated_token_file or the AZURE_FEDERATED_TOKEN_FILE environment variable)"
    );
    // unreadable token file: a runtime error naming the file, no IdP call
    let idp = entra_and_github(60, Arc::default()).await;
    let src = build(
        Some(SCOPE),
        &format!(
            "kind = \"entra-federated\"\ntenant_id = \"t1\"\nclient_id = \"c1\"\nfederated_token_file = \"/nonexistent/token\"\nauthority_host = \"{}\"",
            idp.url("")
        ),
        &[],
    )
    .unwrap();
    let scoped = TokenRequest::new("p").with_scope(Some(SCOPE));
    let err = src.acquire(&scoped).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "entra-federated source {}: federated token file /nonexistent/token: cannot read: No such file or directory (os error 2)",
            idp.url("/t1/oauth2/v2.0/token")
        )
    );
    assert!(idp.requests().is_empty());
    // an assertion the IdP rejects: the AADSTS code surfaces, the assertion does not
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tok");
    let wrong = github_jwt("api://wrong", 1, 300);
    std::fs::write(&file, &wrong).unwrap();
    let src = build(
        Some(SCOPE),
        &format!(
            "kind = \"entra-federated\"\ntenant_id = \"t1\"\nclient_id = \"c1\"\nfederated_token_file = \"{}\"\nauthority_host = \"{}\"",
            file.display(),
            idp.url("")
        ),
        &[],
    )
    .unwrap();
    let err = src.acquire(&scoped).await.unwrap_err().to_string();
    assert!(
        err.contains("HTTP 400: invalid_client: AADSTS700211"),
        "{err}"
    );
    assert!(!err.contains(&wrong), "{err}");
}
