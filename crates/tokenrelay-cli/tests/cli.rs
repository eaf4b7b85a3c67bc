//! The `tokenrelay` binary: exit codes, the helper's shared cache across processes, `run`, `serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokenrelay"));
    c.env_remove("RUST_LOG").env_remove("TOKENRELAY_CONFIG");
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn token_prints_and_caches() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let cmd = format!("echo run >> {}; echo sk-test-123", count.display());
    for _ in 0..3 {
        let (code, out, err) = run(bin()
            .args(["token", "--command", &cmd, "--cache-dir"])
            .arg(dir.path().join("c")));
        assert_eq!((code, out.as_str()), (0, "sk-test-123\n"), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);
    let (code, out, _) = run(bin()
        .args([
            "token",
            "--command",
            &cmd,
            "-o",
            "json",
            "--invalidate",
            "--cache-dir",
        ])
        .arg(dir.path().join("c")));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["token"], "sk-test-123");
    assert_eq!(v["source"], "command");
    let exp = v["expiresOnTimestamp"].as_u64().unwrap();
    let refresh = v["refreshAfterTimestamp"].as_u64().unwrap();
    assert!(exp > 1_700_000_000_000);
    assert!(refresh < exp, "refresh {refresh} before expiry {exp}");
    assert_eq!(
        std::fs::read_to_string(&count).unwrap().lines().count(),
        2,
        "--invalidate re-ran the source"
    );
}

#[test]
fn parallel_helpers_run_the_source_once() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let cmd = format!(
        "echo run >> {}; sleep 0.5; echo sk-parallel",
        count.display()
    );
    let children: Vec<_> = (0..10)
        .map(|_| {
            bin()
                .args(["token", "--command", &cmd, "--cache-dir"])
                .arg(dir.path().join("c"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "sk-parallel\n");
    }
    assert_eq!(
        std::fs::read_to_string(&count).unwrap().lines().count(),
        1,
        "ten parallel calls, one command run"
    );
}

#[test]
fn exit_codes_and_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    // runtime failure: 1, one line naming the source and cause
    let (code, out, err) = run(bin().args([
        "token",
        "--no-cache",
        "--command",
        "echo 'az: please run az login' >&2; exit 1",
    ]));
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("command source `echo`: exited with status 1: az: please run az login"),
        "{err}"
    );
    // garbage output
    let (code, _, err) = run(bin().args(["token", "--no-cache", "--command", "echo not a token"]));
    assert_eq!(code, 1);
    assert!(err.contains("not a token"), "{err}");
    // missing file, unset env
    let (code, _, err) = run(bin().args(["token", "--file", "/nonexistent/tok"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("file source /nonexistent/tok: cannot read"),
        "{err}"
    );
    let (code, _, err) = run(bin()
        .args(["token", "--env", "TOKENRELAY_TEST_UNSET"])
        .env_remove("TOKENRELAY_TEST_UNSET"));
    assert_eq!(code, 1);
    assert!(err.contains("TOKENRELAY_TEST_UNSET is not set"), "{err}");
    // timeout
    let (code, _, err) = run(bin().args([
        "token",
        "--no-cache",
        "--timeout",
        "300ms",
        "--command",
        "sleep 5",
    ]));
    assert_eq!(code, 1);
    assert!(err.contains("timed out after 300ms"), "{err}");
    // a cache directory open to others: refused, naming it and the fix, not re-moded
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (code, out, err) = run(bin()
        .args(["token", "--command", "echo t", "--cache-dir"])
        .arg(&open));
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("chmod 700 {}", open.display())),
        "{err}"
    );
    // usage errors: 2
    let (code, _, _) = run(bin().args(["token"]));
    assert_eq!(code, 2);
    let (code, _, _) = run(bin().args(["token", "--bogus"]));
    assert_eq!(code, 2);
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[[provider]]\nname = \"a\"\n[provider.source]\nkind = \"command\"\ncomand = \"x\"\n",
    )
    .unwrap();
    let (code, _, err) = run(bin().args(["token", "--config"]).arg(&cfg));
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.toml") && err.contains("line ") && err.contains("comand"),
        "{err}"
    );
}

#[test]
fn token_from_config_with_provider() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "[[provider]]\nname = \"a\"\nscope = \"s-a\"\n[provider.source]\nkind = \"command\"\ncommand = \"echo tok-$TOKENRELAY_PROVIDER-$TOKENRELAY_SCOPE\"\n\
         [[provider]]\nname = \"b\"\n[provider.source]\nkind = \"env\"\nname = \"B_TOKEN\"\n",
    )
    .unwrap();
    let (code, out, err) = run(bin()
        .args(["token", "--no-cache", "--provider", "a", "--config"])
        .arg(&cfg));
    assert_eq!((code, out.as_str()), (0, "tok-a-s-a\n"), "{err}");
    let (code, out, _) = run(bin()
        .args(["token", "--provider", "b", "--config"])
        .arg(&cfg)
        .env("B_TOKEN", "bee"));
    assert_eq!((code, out.as_str()), (0, "bee\n"));
    let (code, _, err) = run(bin().args(["token", "--config"]).arg(&cfg));
    assert_eq!(code, 2);
    assert!(err.contains("--provider"), "{err}");
    // Flags that --config would ignore are usage errors naming them.
    let (code, _, err) = run(bin()
        .args([
            "token",
            "--provider",
            "a",
            "--upstream",
            "https://x",
            "--header",
            "a: b",
            "--config",
        ])
        .arg(&cfg));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--upstream, --header") && err.contains("ignored"),
        "{err}"
    );
    let only_static = dir.path().join("static.toml");
    std::fs::write(
        &only_static,
        "[[provider]]\nname = \"s\"\n[provider.source]\nkind = \"static\"\nvalue_env = \"S_TOKEN\"\n",
    )
    .unwrap();
    let (code, _, err) = run(bin()
        .args(["token", "--timeout", "5s", "--config"])
        .arg(&only_static));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--timeout"), "{err}");
    let (code, out, _) = run(bin()
        .args(["check", "--json", "--config"])
        .arg(&cfg)
        .env("B_TOKEN", "bee"));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["providers"][0]["ok"], true);
    assert!(
        !out.contains("tok-a"),
        "check never prints the token: {out}"
    );
    // `check --provider a` checks only a: b's variable is unset and would fail.
    let (code, out, err) = run(bin()
        .args(["check", "--json", "--provider", "a", "--config"])
        .arg(&cfg)
        .env_remove("B_TOKEN"));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let checked: Vec<_> = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["provider"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(checked, ["a"]);
    let (code, _, err) = run(bin()
        .args(["check", "--provider", "c", "--config"])
        .arg(&cfg));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no provider named \"c\" (configured: a, b)"),
        "{err}"
    );
}

#[test]
fn exec_credential_and_decode() {
    let jwt =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtZSIsImV4cCI6MjAwMDAwMDAwMH0.c2lnbmF0dXJl";
    // a token that expires in an hour (one expiring in 2033 would be trusted for at most
    // MAX_TOKEN_LIFETIME, 24 h)
    use base64::Engine as _;
    let exp = std::time::SystemTime::now() + Duration::from_secs(3600);
    let exp_secs = exp.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!(r#"{{"sub":"me","exp":{exp_secs}}}"#));
    let hour_jwt = format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{payload}.c2lnbmF0dXJl");
    let (code, out, _) = run(bin().args([
        "token",
        "--no-cache",
        "-o",
        "exec-credential",
        "--command",
        &format!("echo {hour_jwt}"),
    ]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "ExecCredential");
    let want =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(exp_secs));
    assert_eq!(v["status"]["expirationTimestamp"], want.to_string());
    let (code, out, _) = run(bin().args(["decode", jwt]));
    assert_eq!(code, 0);
    assert!(
        out.contains("\"sub\": \"me\"") && out.contains("2033-05-18T03:33:20Z"),
        "{out}"
    );
    assert!(
        !out.contains("c2lnbmF0dXJl"),
        "decode never prints the signature"
    );
    let (code, _, err) = run(bin().args(["decode", "not-a-jwt"]));
    assert_eq!(code, 2);
    assert!(err.contains("not a JWT"), "{err}");
}

#[test]
fn run_sets_the_childs_environment_and_passes_its_exit_code() {
    let script = r#"test -n "$OPENAI_BASE_URL" && test "$OPENAI_API_KEY" = "$TOKENRELAY_LOCAL_KEY" && test "$COPILOT_PROVIDER_TYPE" = azure && echo "$ANTHROPIC_BASE_URL"; exit 7"#;
    let (code, out, err) = run(bin().args([
        "run",
        "--upstream",
        "http://127.0.0.1:9",
        "--inject",
        "api-key",
        "--token-command",
        "echo t",
        "--",
        "sh",
        "-c",
        script,
    ]));
    assert_eq!(code, 7, "{err}");
    assert!(out.starts_with("http://127.0.0.1:"), "{out}");
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = bin()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            "http://127.0.0.1:9",
            "--token-command",
            "echo t",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            ok = r.starts_with("HTTP/1.1 200");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "serve answered /healthz");
    nix_kill(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

fn nix_kill(pid: u32) {
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
}

/// `run` keeps from its child the variables tokenrelay mints tokens with (here a GitHub
/// Actions OIDC request token and an OAuth client secret named by `client_secret_env`),
/// unless `--keep-env` passes one on purpose; other variables pass through.
#[test]
fn run_keeps_credential_variables_from_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    std::fs::write(
        &cfg,
        r#"
[[provider]]
name = "entra"
upstream = "http://127.0.0.1:9"
[provider.source]
kind = "github-oidc-entra"
tenant_id = "t"
client_id = "c"

[[provider]]
name = "other"
upstream = "http://127.0.0.1:9"
path_prefix = "/other"
[provider.source]
kind = "oauth2"
token_url = "http://127.0.0.1:9/token"
client_id = "c"
client_secret_env = "MY_SECRET"
"#,
    )
    .unwrap();
    let child_env = |keep: &[&str]| {
        let mut c = bin();
        c.args(["--log-level", "info", "run", "--config"]).arg(&cfg);
        for k in keep {
            c.args(["--keep-env", k]);
        }
        c.args(["--", "sh", "-c", "env"])
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "gh-request-token-x")
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", "http://127.0.0.1:9/oidc")
            .env("MY_SECRET", "client-secret-y")
            .env("UNRELATED", "z");
        let (code, out, err) = run(&mut c);
        assert_eq!(code, 0, "{err}");
        (out, err)
    };
    let (env, log) = child_env(&[]);
    for gone in [
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN=",
        "ACTIONS_ID_TOKEN_REQUEST_URL=",
        "MY_SECRET=",
    ] {
        assert!(
            !env.lines().any(|l| l.starts_with(gone)),
            "{gone} in\n{env}"
        );
    }
    assert!(env.lines().any(|l| l == "UNRELATED=z"), "{env}");
    assert!(
        env.lines().any(|l| l.starts_with("OPENAI_BASE_URL=")),
        "{env}"
    );
    // the names are logged, never the values
    assert!(
        log.contains("ACTIONS_ID_TOKEN_REQUEST_TOKEN") && log.contains("MY_SECRET"),
        "{log}"
    );
    assert!(
        !log.contains("gh-request-token-x") && !log.contains("client-secret-y"),
        "{log}"
    );

    let (env, _) = child_env(&["MY_SECRET"]);
    assert!(
        env.lines().any(|l| l == "MY_SECRET=client-secret-y"),
        "{env}"
    );
    assert!(!env.contains("gh-request-token-x"), "{env}");
}
