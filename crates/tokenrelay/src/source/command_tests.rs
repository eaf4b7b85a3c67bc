//! Tests of the command source and its runner (beside `command.rs`, kept apart for its length).

use super::*;

fn req() -> TokenRequest {
    TokenRequest::new("p").with_scope(Some("s1"))
}

#[tokio::test]
async fn reads_stdout_and_sees_request() {
    let src =
        CommandSource::shell(r#"printf 'tok-%s-%s\n' "$TOKENRELAY_PROVIDER" "$TOKENRELAY_SCOPE""#);
    let t = src.acquire(&req()).await.unwrap();
    assert_eq!(t.secret().expose(), "tok-p-s1");
    assert_eq!(t.lifetime(), Some(DEFAULT_TTL));
}

#[tokio::test]
async fn argv_runs_without_shell() {
    let src = CommandSource::new(Program::Argv(vec!["echo".into(), "argv-token".into()]));
    assert_eq!(
        src.acquire(&req()).await.unwrap().secret().expose(),
        "argv-token"
    );
}

#[tokio::test]
async fn failure_reports_status_and_stderr() {
    let src = CommandSource::shell("echo 'ERROR: Please run az login' >&2; exit 3");
    let err = src.acquire(&req()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "command source `echo`: exited with status 3: ERROR: Please run az login"
    );
}

#[tokio::test]
async fn missing_program_is_clear() {
    let src = CommandSource::new(Program::Argv(vec!["/nonexistent/az".into()]));
    let err = src.acquire(&req()).await.unwrap_err().to_string();
    assert!(err.contains("cannot run `/nonexistent/az`"), "{err}");
    assert!(err.contains("installed and on PATH"), "{err}");
}

#[tokio::test]
async fn garbage_output_is_rejected() {
    let src = CommandSource::shell("echo 'Please login first'");
    let err = src.acquire(&req()).await.unwrap_err().to_string();
    assert!(err.contains("not a token"), "{err}");
    assert!(!err.contains("login"), "{err}");
}

#[test]
fn descriptions_name_only_the_program() {
    for (line, want) in [
        ("VAULT_TOKEN=s.x vault read -field=token kv/x", "vault"),
        ("A=1 B=2 /opt/bin/get-token --secret s3cr3t", "get-token"),
        (
            "env -i HOME=/x KEY=s3cr3t az account get-access-token",
            "az",
        ),
        ("env -u SECRET_A KEY=s3cr3t ./helper.sh", "helper.sh"),
        ("exec nohup 'my-tool' --password=s3cr3t", "my-tool"),
        ("sudo -u svc TOKEN=s3cr3t fetch", "fetch"),
        ("TOKEN=s3cr3t get|jq -r .token", "get"),
        ("X=s3cr3t", ""),
        (r#"TOKEN="s3 cr3t" vault read"#, "vault"),
        ("TOKEN='s3 cr3t' vault", "vault"),
        (r"TOKEN=s3\ cr3t vault", "vault"),
        ("TOKEN=$(echo s3 cr3t) vault", "vault"),
        ("TOKEN=`echo s3 cr3t` vault", "vault"),
        ("$(cat /run/s3cr3t) --flag", ""),
        (r#"'/opt/my tools/get token' --key s3cr3t"#, "get token"),
    ] {
        let src = CommandSource::shell(line);
        assert_eq!(src.describe(), format!("command source `{want}`"), "{line}");
    }
    let argv = CommandSource::new(Program::Argv(vec![
        "env".into(),
        "TOKEN=s3cr3t".into(),
        "/usr/local/bin/vault".into(),
        "s3cr3t".into(),
    ]));
    assert_eq!(argv.describe(), "command source `vault`");
}

#[tokio::test]
async fn errors_name_the_program_not_the_assignments() {
    let src = CommandSource::shell("VAULT_TOKEN=s.s3cr3t sh -c 'echo oops >&2; exit 2'");
    let err = src.acquire(&req()).await.unwrap_err().to_string();
    assert_eq!(err, "command source `sh`: exited with status 2: oops");
}

#[tokio::test]
async fn stdin_is_closed() {
    // `cat` with a closed stdin prints nothing and exits at once.
    let src = CommandSource::shell("cat; echo ok");
    assert_eq!(src.acquire(&req()).await.unwrap().secret().expose(), "ok");
}

#[tokio::test]
async fn background_grandchild_holding_stdout_does_not_hang() {
    let src = CommandSource::shell("sleep 30 & echo quick").with_timeout(Duration::from_secs(10));
    let started = std::time::SystemTime::now();
    assert_eq!(
        src.acquire(&req()).await.unwrap().secret().expose(),
        "quick"
    );
    assert!(started.elapsed().unwrap() < Duration::from_secs(5));
}
