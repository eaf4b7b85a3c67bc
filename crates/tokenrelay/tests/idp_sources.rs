//! OAuth 2.0 sources against a loopback IdP that checks what a real one checks: client
//! credentials (secret basic/post, private-key JWT), refresh token rotation, retries and the
//! failure paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_idp;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_idp::{basic_auth, build, verify_assertion, FakeIdp, Resp};
use jsonwebtoken::Algorithm;
use tokenrelay::source::acquire_with_timeout;
use tokenrelay::{ErrorKind, TokenRequest};

const SECRET: &str = "s3cr3t-client-value";

fn req(scope: Option<&str>) -> TokenRequest {
    TokenRequest::new("p").with_scope(scope)
}

#[tokio::test]
async fn client_secret_basic_and_post() {
    let idp = FakeIdp::start(|r, n| {
        if r.method != "POST"
            || r.path != "/token"
            || r.form("grant_type") != Some("client_credentials")
        {
            return Resp::oauth_error(400, "unsupported_grant_type", "bad request");
        }
        let creds = basic_auth(r).or_else(|| {
            Some((
                r.form("client_id")?.to_owned(),
                r.form("client_secret")?.to_owned(),
            ))
        });
        match creds {
            Some((id, secret)) if id == "app id" && secret == SECRET => Resp::token(
                &format!(
                    "tok-{n}-{}",
                    r.form("scope").unwrap_or("none").replace(' ', "+")
                ),
                3600,
            ),
            _ => Resp::oauth_error(401, "invalid_client", "bad client"),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("cs");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let basic = build(
        None,
        &format!(
            "kind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"app id\"\nclient_secret_file = \"{}\"\nscopes = [\"api://a/.default\", \"offline_access\"]",
            idp.url("/token"),
            secret_file.display()
        ),
        &[],
    )
    .unwrap();
    // the configured scopes when the request has none, joined verbatim
    let t = basic.acquire(&req(None)).await.unwrap();
    assert_eq!(t.secret().expose(), "tok-0-api://a/.default+offline_access");
    let left = t.remaining(std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
    // the request's scope overrides
    let t = basic
        .acquire(&req(Some("https://x/.default")))
        .await
        .unwrap();
    assert_eq!(t.secret().expose(), "tok-1-https://x/.default");
    assert!(idp.requests()[1].form("client_secret").is_none());

    let post = build(
        None,
        &format!(
            "kind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"app id\"\nclient_secret_env = \"CS\"\nauth_method = \"post\"",
            idp.url("/token"),
        ),
        &[("CS", SECRET)],
    )
    .unwrap();
    let t = post.acquire(&req(None)).await.unwrap();
    assert_eq!(t.secret().expose(), "tok-2-none");
    assert!(idp.requests()[2].header("authorization").is_none());
}

#[tokio::test]
async fn private_key_jwt_assertion_is_verified_by_the_idp() {
    let idp = Arc::new(std::sync::OnceLock::<String>::new());
    let url = idp.clone();
    let jtis = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_jtis = jtis.clone();
    let server = FakeIdp::start(move |r, _| {
        let token_url = url.get().unwrap();
        if r.form("client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Resp::oauth_error(
                400,
                "invalid_request",
                "AADSTS900144: client_assertion_type",
            );
        }
        let jwt = r.form("client_assertion").unwrap_or("");
        let header = jsonwebtoken::decode_header(jwt).unwrap();
        let (public, alg) = if header.alg == Algorithm::ES256 {
            ("test-ec-pub.pem", Algorithm::ES256)
        } else {
            ("test-rsa-pub.pem", header.alg)
        };
        match verify_assertion(jwt, public, alg, token_url, "cert-app", "cert-app") {
            Ok(claims) => {
                let exp = claims["exp"].as_u64().unwrap();
                let iat = claims["iat"].as_u64().unwrap();
                assert!(exp > iat && exp - iat <= 600, "short-lived assertion");
                seen_jtis
                    .lock()
                    .unwrap()
                    .push(claims["jti"].as_str().unwrap().to_owned());
                if alg == Algorithm::RS256 && header.x5t_s256.is_none() {
                    return Resp::oauth_error(401, "invalid_client", "AADSTS700027: no thumbprint");
                }
                Resp::token(&format!("cert-tok-{alg:?}"), 3600)
            }
            Err(e) => Resp::oauth_error(401, "invalid_client", &format!("AADSTS700027: {e}")),
        }
    })
    .await;
    idp.set(server.url("/tenant/oauth2/v2.0/token")).unwrap();
    let rsa = build(
        Some("api://x/.default"),
        &format!(
            "kind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"cert-app\"\nprivate_key_file = \"{}\"\ncertificate_file = \"{}\"",
            idp.get().unwrap(),
            fake_idp::fixture("test-rsa-key.pem").display(),
            fake_idp::fixture("test-rsa-cert.pem").display()
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        rsa.acquire(&req(None)).await.unwrap().secret().expose(),
        "cert-tok-RS256"
    );
    assert_eq!(
        rsa.acquire(&req(None)).await.unwrap().secret().expose(),
        "cert-tok-RS256"
    );
    let ec = build(
        None,
        &format!(
            "kind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"cert-app\"\nprivate_key_file = \"{}\"",
            idp.get().unwrap(),
            fake_idp::fixture("test-ec-key.pem").display(),
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        ec.acquire(&req(None)).await.unwrap().secret().expose(),
        "cert-tok-ES256"
    );
    let jtis = jtis.lock().unwrap();
    assert_eq!(jtis.len(), 3);
    assert_ne!(jtis[0], jtis[1], "a new assertion for every request");
}

fn secret_source(idp: &FakeIdp, extra: &str) -> Arc<dyn tokenrelay::Source> {
    build(
        None,
        &format!(
            "kind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"c\"\nclient_secret_env = \"CS\"\n{extra}",
            idp.url("/token")
        ),
        &[("CS", SECRET)],
    )
    .unwrap()
}

#[tokio::test]
async fn invalid_client_names_the_aadsts_code_not_the_secret() {
    let idp = FakeIdp::start(|_, _| {
        Resp::oauth_error(
            400,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.\r\nTrace ID: 0a1b\r\nCorrelation ID: 2c3d\r\nTimestamp: 2024-01-01 00:00:00Z",
        )
    })
    .await;
    let err = secret_source(&idp, "")
        .acquire(&req(None))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("oauth2 source {}: identity provider answered HTTP 400: invalid_client: AADSTS7000215: Invalid client secret provided.", idp.url("/token"))), "{msg}");
    assert!(!msg.contains(SECRET) && !msg.contains('\n'), "{msg}");
    assert!(!err.is_retryable());
    assert_eq!(idp.requests().len(), 1, "a 400 is not retried");
}

#[tokio::test]
async fn retry_after_is_honoured_then_success() {
    let idp = FakeIdp::start(|_, n| match n {
        0 => Resp::oauth_error(429, "temporarily_unavailable", "slow down")
            .header("retry-after", "1"),
        _ => Resp::token("after-429", 60),
    })
    .await;
    let started = Instant::now();
    let t = secret_source(&idp, "").acquire(&req(None)).await.unwrap();
    assert_eq!(t.secret().expose(), "after-429");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited for Retry-After"
    );
    assert_eq!(idp.requests().len(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let idp =
        FakeIdp::start(|_, _| Resp::text(500, "text/html", "<html>internal s3cr3t</html>")).await;
    let err = secret_source(&idp, "")
        .acquire(&req(None))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "oauth2 source {}: identity provider answered HTTP 500",
            idp.url("/token")
        )
    );
    assert!(err.is_retryable());
    assert_eq!(idp.requests().len(), 3, "bounded retry: 3 attempts");
}

#[tokio::test]
async fn hung_idp_times_out() {
    let idp = FakeIdp::start(|_, _| Resp::token("late", 60).delayed(Duration::from_secs(30))).await;
    let src = secret_source(&idp, "timeout = \"1s\"");
    let started = Instant::now();
    let err = acquire_with_timeout(src.as_ref(), &req(None))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("oauth2 source {}: timed out after 1s", idp.url("/token"))
    );
    assert!(matches!(err.kind(), ErrorKind::Timeout(_)));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn non_json_success_body_is_not_quoted() {
    let idp =
        FakeIdp::start(|_, _| Resp::text(200, "text/html", "<html>login page s3cr3t</html>")).await;
    let err = secret_source(&idp, "")
        .acquire(&req(None))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "oauth2 source {}: identity provider answered HTTP 200 with a body that is not JSON",
            idp.url("/token")
        )
    );
}

#[tokio::test]
async fn unreachable_idp_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let src = build(
        None,
        &format!("kind = \"oauth2\"\ntoken_url = \"http://{addr}/token\"\nclient_id = \"c\"\nclient_secret_env = \"CS\""),
        &[("CS", SECRET)],
    )
    .unwrap();
    let err = src.acquire(&req(None)).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Transport(_)), "{err}");
    assert!(
        err.to_string()
            .contains("cannot reach the identity provider"),
        "{err}"
    );
}

/// An IdP that rotates refresh tokens (`rt-1` → `rt-2` → …, access tokens `at-2`, `at-3`, …
/// living `expires_in` seconds) and, as Entra and Okta do, rejects a used one with 400
/// invalid_grant. The handle sets the refresh token it accepts next.
async fn rotating_idp(expires_in: u64) -> (FakeIdp, Arc<std::sync::Mutex<String>>) {
    let current = Arc::new(std::sync::Mutex::new("rt-1".to_owned()));
    let cur = current.clone();
    let counter = Arc::new(AtomicUsize::new(0));
    let idp = FakeIdp::start(move |r, _| {
        if r.form("grant_type") != Some("refresh_token") {
            return Resp::oauth_error(400, "unsupported_grant_type", "");
        }
        let mut cur = cur.lock().unwrap();
        if r.form("refresh_token") != Some(cur.as_str()) || r.form("client_id") != Some("public-app") {
            return Resp::oauth_error(400, "invalid_grant", "AADSTS70000: refresh token revoked");
        }
        let n = counter.fetch_add(1, Ordering::SeqCst) + 2;
        *cur = format!("rt-{n}");
        Resp::json(200, serde_json::json!({"access_token": format!("at-{n}"), "expires_in": expires_in, "refresh_token": *cur, "token_type": "Bearer"}))
    })
    .await;
    (idp, current)
}

fn refresh_source(idp: &FakeIdp, input: &str, env: &[(&str, &str)]) -> Arc<dyn tokenrelay::Source> {
    build(
        None,
        &format!(
            "kind = \"refresh-token\"\ntoken_url = \"{}\"\nclient_id = \"public-app\"\n{input}",
            idp.url("/token")
        ),
        env,
    )
    .unwrap()
}

fn refresh_file_source(idp: &FakeIdp, rt: &Path) -> Arc<dyn tokenrelay::Source> {
    refresh_source(
        idp,
        &format!("refresh_token_file = \"{}\"", rt.display()),
        &[],
    )
}

/// A refresh token file holding `rt-1`, mode 0600.
fn refresh_file(dir: &Path, name: &str) -> PathBuf {
    let rt = dir.join(name);
    std::fs::write(&rt, "rt-1\n").unwrap();
    std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(0o600)).unwrap();
    rt
}

#[tokio::test]
async fn refresh_token_rotation_is_written_back_0600() {
    let (idp, current) = rotating_idp(60).await;
    let dir = tempfile::tempdir().unwrap();
    let rt = refresh_file(dir.path(), "refresh");
    let src = refresh_file_source(&idp, &rt);
    assert_eq!(
        src.acquire(&req(None)).await.unwrap().secret().expose(),
        "at-2"
    );
    assert_eq!(std::fs::read_to_string(&rt).unwrap().trim(), "rt-2");
    assert_eq!(
        std::fs::metadata(&rt).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        src.acquire(&req(None)).await.unwrap().secret().expose(),
        "at-3"
    );
    assert_eq!(std::fs::read_to_string(&rt).unwrap().trim(), "rt-3");
    // a revoked refresh token is a clear, non-retryable error
    *current.lock().unwrap() = "other".into();
    let err = src.acquire(&req(None)).await.unwrap_err();
    assert!(
        err.to_string().contains("invalid_grant: AADSTS70000"),
        "{err}"
    );
    assert!(!err.to_string().contains("rt-3"), "{err}");
}

#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Captures this thread's log lines while the guard lives.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish(),
        )
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn stale_temp_file_of_a_crashed_process_does_not_block_the_write_back() {
    let (idp, _) = rotating_idp(60).await;
    let dir = tempfile::tempdir().unwrap();
    let rt = refresh_file(dir.path(), "refresh");
    // What a process with our pid (pid 1 in a container) left behind when it crashed
    // mid-write: the temporary name it used was derived from the pid alone.
    let stale = dir
        .path()
        .join(format!(".refresh.tokenrelay-{}", std::process::id()));
    std::fs::write(&stale, "half-written").unwrap();
    let src = refresh_file_source(&idp, &rt);
    let t = src.acquire(&req(None)).await.unwrap();
    assert_eq!(t.secret().expose(), "at-2");
    assert_eq!(std::fs::read_to_string(&rt).unwrap().trim(), "rt-2");
    assert!(t.refresh_token().is_none(), "the file holds it");
}

#[tokio::test]
async fn failed_write_back_keeps_the_rotated_token_and_the_access_token() {
    let (idp, _) = rotating_idp(60).await;
    let dir = tempfile::tempdir().unwrap();
    // A write-back that fails for root as well (a read-only mode does not stop root, and a
    // read-only bind mount needs privileges): the name leaves no room, within the 255-byte
    // NAME_MAX, for the temporary file written beside it (`.<name>.tokenrelay-<random>`), so
    // creating that file fails with ENAMETOOLONG, deterministically, for every user. It
    // reads fine.
    let rt = refresh_file(dir.path(), &"r".repeat(240));
    let logs = Capture::default();
    let t = {
        let _g = logs.install();
        let src = refresh_file_source(&idp, &rt);
        let t = src.acquire(&req(None)).await.unwrap();
        // the same process goes on with the rotated token it kept in memory
        let t2 = src.acquire(&req(None)).await.unwrap();
        assert_eq!(t2.secret().expose(), "at-3");
        t
    };
    assert_eq!(t.secret().expose(), "at-2");
    assert_eq!(
        t.refresh_token().map(|r| r.expose().to_owned()),
        Some("rt-2".into()),
        "the token carries the refresh token the file could not take"
    );
    assert_eq!(std::fs::read_to_string(&rt).unwrap().trim(), "rt-1");
    let text = logs.text();
    let errors: Vec<_> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 2, "one error per failed write-back:\n{text}");
    assert!(
        errors[0].contains("cannot write the rotated refresh token back"),
        "{text}"
    );
    assert!(!text.contains("rt-2") && !text.contains("rt-3"), "{text}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp file left"
    );
}

/// Two helper processes in a row (two sources, one on-disk cache) with the refresh token in
/// a variable: the second, after the first's token expired, must use the rotated token the
/// first was given, since the IdP rejects the configured one once used.
#[tokio::test]
async fn helper_keeps_a_rotated_refresh_token_across_processes() {
    use tokenrelay::persist::{Lookup, Served, SharedCache};
    let (idp, current) = rotating_idp(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = SharedCache::open(&dir.path().join("cache")).unwrap();
    let process_with = |rt: &str| refresh_source(&idp, "refresh_token_env = \"RT\"", &[("RT", rt)]);
    let process = || process_with("rt-1");
    let run = |src: Arc<dyn tokenrelay::Source>, lookup| {
        let cache = cache.clone();
        async move { cache.get(src.as_ref(), &req(None), lookup).await }
    };
    let (t, served) = run(process(), Lookup::default()).await.unwrap();
    assert_eq!((t.secret().expose(), served), ("at-2", Served::Acquired));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (t, served) = run(process(), Lookup::default()).await.unwrap();
    assert_eq!((t.secret().expose(), served), ("at-3", Served::Acquired));
    // after a 401 (invalidation) too: the dropped token's entry keeps the refresh token
    let lookup = Lookup {
        invalidate_before: Some(std::time::SystemTime::now()),
    };
    let (t, _) = run(process(), lookup).await.unwrap();
    assert_eq!(t.secret().expose(), "at-4");
    // the entry file holds it, 0600
    for e in std::fs::read_dir(cache.dir()).unwrap().flatten() {
        assert_eq!(e.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }
    // the user signs in again: the kept token is now rejected, the new configured one is used
    *current.lock().unwrap() = "rt-fresh".into();
    let lookup = Lookup {
        invalidate_before: Some(std::time::SystemTime::now()),
    };
    let (t, _) = run(process_with("rt-fresh"), lookup).await.unwrap();
    assert_eq!(t.secret().expose(), "at-5");
}

/// A failed write-back in one helper process is not lost for the next one either.
#[tokio::test]
async fn helper_keeps_a_refresh_token_its_file_could_not_take() {
    use tokenrelay::persist::{Lookup, SharedCache};
    let (idp, _) = rotating_idp(1).await;
    let dir = tempfile::tempdir().unwrap();
    let rt = refresh_file(dir.path(), &"r".repeat(240)); // see the test above
    let cache = SharedCache::open(&dir.path().join("cache")).unwrap();
    let src = refresh_file_source(&idp, &rt);
    let (t, _) = cache
        .get(src.as_ref(), &req(None), Lookup::default())
        .await
        .unwrap();
    assert_eq!(t.secret().expose(), "at-2");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let src = refresh_file_source(&idp, &rt);
    let (t, _) = cache
        .get(src.as_ref(), &req(None), Lookup::default())
        .await
        .unwrap();
    assert_eq!(t.secret().expose(), "at-3");
}

#[test]
fn plain_http_to_an_identity_provider_is_a_config_error_naming_the_key() {
    let cases = [
        ("kind = \"oauth2\"\ntoken_url = \"http://idp.example.com/token\"\nclient_id = \"c\"\nclient_secret_env = \"CS\"", "token_url"),
        ("kind = \"refresh-token\"\ntoken_url = \"http://idp.example.com/token\"\nclient_id = \"c\"\nrefresh_token_env = \"RT\"", "token_url"),
        ("kind = \"entra-federated\"\ntenant_id = \"t\"\nclient_id = \"c\"\nfederated_token_file = \"/x\"\nauthority_host = \"http://login.example.com\"", "authority_host"),
        ("kind = \"aws-web-identity\"\nrole_arn = \"arn:aws:iam::1:role/r\"\nweb_identity_token_file = \"/x\"\nendpoint = \"http://sts.example.com\"", "endpoint"),
        ("kind = \"managed-identity\"\nendpoint = \"http://10.0.0.1:8080\"", "endpoint"),
        ("kind = \"token-exchange\"\ntoken_url = \"http://idp.example.com/token\"\n[provider.source.subject]\nkind = \"static\"\nvalue_env = \"S\"", "token_url"),
    ];
    for (source, key) in cases {
        let err = match build(None, source, &[("CS", "s"), ("RT", "r"), ("S", "x")]) {
            Ok(_) => panic!("{source}: accepted"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            err,
            format!("provider[0] (p).source.{key}: invalid configuration: http:// is only allowed for loopback and link-local hosts; use https://"),
            "{source}"
        );
    }
    // loopback and link-local hosts keep working over plain HTTP
    for source in [
        "kind = \"oauth2\"\ntoken_url = \"http://localhost:9/token\"\nclient_id = \"c\"\nclient_secret_env = \"CS\"",
        "kind = \"managed-identity\"\nendpoint = \"http://169.254.169.254\"",
        "kind = \"managed-identity\"\nendpoint = \"http://[::1]:9\"",
    ] {
        assert!(build(None, source, &[("CS", "s")]).is_ok(), "{source}");
    }
}
