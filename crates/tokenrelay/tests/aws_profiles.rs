//! `kind = "aws"` with `~/.aws` profiles against a loopback STS: static keys, a
//! `credential_process` (rotating, failing, hung, garbage), `role_arn` + `source_profile`
//! (a SigV4-signed `AssumeRole` with the source profile's keys), files re-read at each
//! acquisition, errors that name the profile and file and never a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_idp;

use std::time::{Duration, Instant};

use fake_idp::{build, FakeIdp, Resp};
use tokenrelay::TokenRequest;

const ASSUMED: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn><AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser><Credentials><AccessKeyId>ASIAROLE</AccessKeyId><SecretAccessKey>rolesecret</SecretAccessKey><SessionToken>rolesession</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>"#;

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new(config: &str, credentials: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let h = Home { dir };
        h.write(config, credentials);
        h
    }
    fn write(&self, config: &str, credentials: &str) {
        std::fs::write(self.dir.path().join("config"), config).unwrap();
        std::fs::write(self.dir.path().join("credentials"), credentials).unwrap();
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
    fn config(&self) -> String {
        self.path("config")
    }
    fn script(&self, name: &str, body: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    }
}

fn source(
    home: &Home,
    table: &str,
    extra: &[(&str, &str)],
) -> std::sync::Arc<dyn tokenrelay::Source> {
    let config = home.config();
    let creds = home.path("credentials");
    let mut env: Vec<(&str, &str)> = vec![
        ("AWS_CONFIG_FILE", &config),
        ("AWS_SHARED_CREDENTIALS_FILE", &creds),
        // IMDS would be the fall-through: make it fail fast and visibly
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9"),
    ];
    env.extend_from_slice(extra);
    build(
        None,
        &format!("kind = \"aws\"\ntimeout = \"3s\"\n{table}"),
        &env,
    )
    .unwrap()
}

async fn acquire(s: &dyn tokenrelay::Source) -> Result<tokenrelay::Token, String> {
    s.acquire(&TokenRequest::new("p"))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn static_keys_are_read_again_at_each_acquisition() {
    let home = Home::new(
        "[profile ci]\nregion = us-east-1\n",
        "[ci]\naws_access_key_id = AKIAFIRST\naws_secret_access_key = s1\n",
    );
    let s = source(&home, "profile = \"ci\"", &[]);
    let t = acquire(s.as_ref()).await.unwrap();
    assert_eq!(t.aws().unwrap().access_key_id, "AKIAFIRST");
    assert!(t.aws().unwrap().session_token.is_none());
    home.write(
        "[profile ci]\n",
        "[ci]\naws_access_key_id = AKIASECOND\naws_secret_access_key = s2\n",
    );
    let t = acquire(s.as_ref()).await.unwrap();
    assert_eq!(t.aws().unwrap().access_key_id, "AKIASECOND");
    assert!(s
        .describe()
        .starts_with("aws source (profile ci, then IMDSv2"));
}

#[tokio::test]
async fn credential_process_rotates_and_fails_clearly() {
    let home = Home::new("", "");
    let counter = home.path("count");
    let script = home.script(
        "creds.sh",
        &format!(
            "n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n\
             exp=$(date -u -d @$(( $(date +%s) + 3600 )) +%Y-%m-%dT%H:%M:%SZ)\n\
             printf '{{\"Version\":1,\"AccessKeyId\":\"ASIA%s\",\"SecretAccessKey\":\"sk\",\"SessionToken\":\"st\",\"Expiration\":\"%s\"}}' $n $exp"
        ),
    );
    home.write(
        &format!("[profile p]\ncredential_process = {script} --flag\n"),
        "",
    );
    let s = source(&home, "profile = \"p\"", &[]);
    let t = acquire(s.as_ref()).await.unwrap();
    assert_eq!(t.aws().unwrap().access_key_id, "ASIA1");
    let left = t.remaining(std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3500), "{left:?}");
    assert_eq!(
        acquire(s.as_ref())
            .await
            .unwrap()
            .aws()
            .unwrap()
            .access_key_id,
        "ASIA2"
    );

    let cfg = home.config();
    let cases: &[(&str, String)] = &[
        (
            "echo 'AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY is expired' >&2; exit 1",
            format!("aws source (profile p in {cfg}): credential_process: exited with status 1: [redacted] [redacted] is expired"),
        ),
        (
            "echo 'Please login first'",
            format!("aws source (profile p in {cfg}): credential_process: output is not a JSON object with string fields"),
        ),
        (
            r#"echo '{"Version":2,"AccessKeyId":"A","SecretAccessKey":"wJalrXUtnFEMI"}'"#,
            format!("aws source (profile p in {cfg}): credential_process: unsupported Version (expected 1)"),
        ),
    ];
    for (body, want) in cases {
        let script = home.script("bad.sh", body);
        home.write(&format!("[profile p]\ncredential_process = {script}\n"), "");
        let e = acquire(s.as_ref()).await.unwrap_err();
        assert_eq!(&e, want);
        assert!(!e.contains("wJalr"), "{e}");
    }
    // a hung process is killed at the timeout, with its children
    let pidfile = home.path("child.pid");
    let script = home.script("hang.sh", &format!("sleep 60 & echo $! > {pidfile}; wait"));
    home.write(&format!("[profile p]\ncredential_process = {script}\n"), "");
    let started = Instant::now();
    let e = acquire(s.as_ref()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        e,
        format!("aws source (profile p in {cfg}): credential_process: timed out after 3s")
    );
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    // gone, or a zombie waiting for its new parent to reap it
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    };
    for _ in 0..20 {
        if !alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive(), "the process group was not killed");
}

#[tokio::test]
async fn missing_profile_and_files() {
    let home = Home::new("[profile other]\n", "");
    let s = source(&home, "profile = \"ci\"", &[]);
    let e = acquire(s.as_ref()).await.unwrap_err();
    assert_eq!(
        e,
        format!(
            "aws source (profile ci): invalid configuration: no such profile in {} or {}",
            home.config(),
            home.path("credentials")
        )
    );
    // AWS_PROFILE names it explicitly too
    let s = source(&home, "", &[("AWS_PROFILE", "ci")]);
    assert!(acquire(s.as_ref())
        .await
        .unwrap_err()
        .contains("no such profile"));
    // a broken file is named with its line
    home.write("[profile ci]\njunk\n", "");
    let e = acquire(s.as_ref()).await.unwrap_err();
    assert_eq!(
        e,
        format!(
            "aws source: invalid configuration: {} line 2: expected `key = value`",
            home.config()
        )
    );
    // nothing configured: on to IMDS (here unreachable)
    let empty = Home::new("", "");
    let s = source(&empty, "", &[]);
    let e = acquire(s.as_ref()).await.unwrap_err();
    assert!(
        e.starts_with("aws source (IMDSv2 http://127.0.0.1:9)"),
        "{e}"
    );
}

#[tokio::test]
async fn assume_role_is_signed_with_the_source_profile() {
    let sts = FakeIdp::start(|r, _| {
        let auth = r.header("authorization").unwrap_or_default().to_owned();
        let ok = r.method == "POST"
            && r.form("Action") == Some("AssumeRole")
            && r.form("RoleArn") == Some("arn:aws:iam::123456789012:role/bedrock")
            && r.form("RoleSessionName") == Some("ci-session")
            && r.form("ExternalId") == Some("ext-1")
            && r.form("DurationSeconds") == Some("900")
            && auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIASOURCE/")
            && auth.contains("/eu-west-1/sts/aws4_request")
            && r.header("x-amz-date").is_some();
        if ok {
            Resp::text(200, "text/xml", ASSUMED)
        } else {
            Resp::text(403, "text/xml", "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error></ErrorResponse>")
        }
    })
    .await;
    let home = Home::new(
        &format!(
            "[profile bedrock]\nrole_arn = arn:aws:iam::123456789012:role/bedrock\nsource_profile = base\nrole_session_name = ci-session\nexternal_id = ext-1\nduration_seconds = 900\nregion = eu-west-1\nendpoint_url = {}\n",
            sts.url("/")
        ),
        "[base]\naws_access_key_id = AKIASOURCE\naws_secret_access_key = basesecret\n",
    );
    let s = source(&home, "profile = \"bedrock\"", &[]);
    let t = acquire(s.as_ref()).await.unwrap();
    let aws = t.aws().unwrap();
    assert_eq!(aws.access_key_id, "ASIAROLE");
    assert_eq!(aws.session_token.as_ref().unwrap().expose(), "rolesession");
    // STS's refusal is one line naming the role's profile
    home.write(
        &format!(
            "[profile bedrock]\nrole_arn = arn:aws:iam::123456789012:role/other\nsource_profile = base\nendpoint_url = {}\n",
            sts.url("/")
        ),
        "[base]\naws_access_key_id = AKIASOURCE\naws_secret_access_key = basesecret\n",
    );
    let e = acquire(s.as_ref()).await.unwrap_err();
    assert_eq!(
        e,
        format!(
            "aws source (profile bedrock in {}): identity provider answered HTTP 403: SignatureDoesNotMatch: no",
            home.config()
        )
    );
    assert!(!e.contains("basesecret"));
}

#[tokio::test]
async fn the_fingerprint_follows_the_files() {
    use tokenrelay::source::Fingerprint;
    let home = Home::new(
        "[profile ci]\n",
        "[ci]\naws_access_key_id = AKIAFIRST\naws_secret_access_key = s1\n",
    );
    let s = source(&home, "profile = \"ci\"", &[]);
    let fp = |s: &dyn tokenrelay::Source| {
        let mut f = Fingerprint::new(b"k");
        s.fingerprint(&mut f).unwrap();
        f.finish()
    };
    let first = fp(s.as_ref());
    assert_eq!(first, fp(s.as_ref()));
    // a rotated key in the credentials file is a new cache entry for the helper
    home.write(
        "[profile ci]\n",
        "[ci]\naws_access_key_id = AKIAFIRST\naws_secret_access_key = s2\n",
    );
    assert_ne!(first, fp(s.as_ref()));
    // and so is another profile
    let other = source(&home, "profile = \"other\"", &[]);
    assert_ne!(fp(s.as_ref()), fp(other.as_ref()));
}

#[tokio::test]
async fn credential_source_ecs_container_signs_the_assume_role() {
    let fake = FakeIdp::start(|r, _| match r.path.as_str() {
        "/creds" if r.header("authorization") == Some("ecs-token") => Resp::json(
            200,
            serde_json::json!({"AccessKeyId": "ASIACONTAINER", "SecretAccessKey": "cs", "Token": "ct",
                "Expiration": "2099-01-01T00:00:00Z"}),
        ),
        "/sts/"
            if r.header("authorization").is_some_and(|a| {
                a.starts_with("AWS4-HMAC-SHA256 Credential=ASIACONTAINER/")
                    && a.contains("/us-east-1/sts/aws4_request")
            }) && r.header("x-amz-security-token") == Some("ct") =>
        {
            Resp::text(200, "text/xml", ASSUMED)
        }
        _ => Resp::text(403, "text/plain", ""),
    })
    .await;
    let home = Home::new(
        "[profile ecs]\nrole_arn = arn:aws:iam::123456789012:role/bedrock\ncredential_source = EcsContainer\n",
        "",
    );
    let full = fake.url("/creds");
    let sts = fake.url("/sts/");
    let s = source(
        &home,
        "profile = \"ecs\"",
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-token"),
            ("AWS_ENDPOINT_URL_STS", &sts),
        ],
    );
    let t = acquire(s.as_ref()).await.unwrap();
    assert_eq!(t.aws().unwrap().access_key_id, "ASIAROLE");
    let paths: Vec<String> = fake.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/creds", "/sts/"]);
}
