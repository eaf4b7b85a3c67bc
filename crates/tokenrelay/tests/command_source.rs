//! The command source under failure: hung commands and their grandchildren are killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokenrelay::source::CommandSource;
use tokenrelay::{ErrorKind, Source, TokenRequest};

fn alive(pid: i32) -> bool {
    // /proc/<pid> exists and is not a zombie
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    // A wrapper that starts a grandchild (which also hangs) and then hangs itself.
    let line = format!(
        "sh -c 'echo $$ > {p}; exec sleep 60' & sleep 60",
        p = pidfile.display()
    );
    let src = CommandSource::shell(line).with_timeout(Duration::from_millis(700));
    let started = std::time::Instant::now();
    let err = src.acquire(&TokenRequest::new("p")).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "command source `sh`: timed out after 700ms"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for _ in 0..50 {
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("grandchild {pid} survived the timeout");
}

#[tokio::test]
async fn cancelled_acquisition_kills_the_group_too() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let src = CommandSource::shell(format!("echo $$ > {}; exec sleep 60", pidfile.display()));
    let req = TokenRequest::new("p");
    let fut = src.acquire(&req);
    let _ = tokio::time::timeout(Duration::from_millis(500), fut).await;
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for _ in 0..50 {
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("child {pid} survived the cancelled acquisition");
}

#[tokio::test]
async fn huge_output_is_bounded_and_rejected() {
    // 2 MiB of 'a' on one line: read up to the bound, drained, rejected as too long.
    let src = CommandSource::shell("head -c 2097152 /dev/zero | tr '\\0' a");
    let err = src.acquire(&TokenRequest::new("p")).await.unwrap_err();
    assert!(err.to_string().contains("more than the"), "{err}");
}
