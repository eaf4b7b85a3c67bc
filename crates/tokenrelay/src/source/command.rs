//! Runs a command and reads the token from its stdout.
//!
//! The command runs in a process group of its own with stdin closed; when it times out or the
//! acquisition is cancelled, the whole group is killed (`SIGKILL`), so a wrapper script's
//! grandchildren die with it. The last line of stderr goes into the error on failure.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::output::{self, OutputFormat};
use super::{Fingerprint, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT, DEFAULT_TTL};
use crate::error::{one_line, Error, ErrorKind, Result};
use crate::token::Token;

/// Most of stdout/stderr we keep (1 MiB each); the rest is drained and dropped.
const MAX_OUTPUT: u64 = 1024 * 1024;

/// After the command exits, how long its pipes may stay open (held by a background
/// grandchild) before the group is killed (500 ms).
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A shell command line, run as `sh -c LINE`.
    Shell(String),
    /// A program and its arguments, run directly (no shell).
    Argv(Vec<String>),
}

impl Program {
    /// The program from a source table's `command` (a shell line) and `args` (a program and
    /// its arguments) keys, of which exactly one must be set. The command and plugin sources
    /// both read their process this way.
    ///
    /// # Errors
    /// A config error at `path` when neither or both are set, or the one set is empty.
    pub fn from_keys(
        path: &str,
        kind: &str,
        command: &Option<String>,
        args: &Option<Vec<String>>,
    ) -> Result<Self> {
        match (command, args) {
            (Some(line), None) if !line.trim().is_empty() => Ok(Program::Shell(line.clone())),
            (None, Some(argv)) if argv.first().is_some_and(|p| !p.is_empty()) => {
                Ok(Program::Argv(argv.clone()))
            }
            _ => Err(Error::config(
                path,
                format!(
                    "a {kind} source takes exactly one of command (a shell line, run with sh -c) \
                     or args (a non-empty list, program first, run without a shell)"
                ),
            )),
        }
    }

    /// The process to start, not yet spawned: `sh -c LINE` or the argv, in a process group of
    /// its own (so that the whole group can be killed), killed when dropped.
    ///
    /// # Errors
    /// A config error naming `origin` for an empty argument list.
    pub(crate) fn process(&self, origin: &str) -> Result<Command> {
        let mut cmd = match self {
            Program::Shell(line) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(line);
                c
            }
            Program::Argv(argv) => {
                let (prog, args) = argv
                    .split_first()
                    .ok_or_else(|| Error::config(origin, "the command's argument list is empty"))?;
                let mut c = Command::new(prog);
                c.args(args);
                c
            }
        };
        cmd.process_group(0).kill_on_drop(true);
        Ok(cmd)
    }

    /// The program as written (a path or a name), past leading `VAR=value` assignments and
    /// wrappers such as `env`; never an argument. For "cannot run" messages.
    pub(crate) fn path(&self) -> String {
        match self {
            Program::Shell(line) => program_word(shell_words(line)),
            Program::Argv(argv) => program_word(argv),
        }
    }

    /// The program's file name, for descriptions in logs and `/status`: a command line may
    /// carry secrets in its assignments and arguments, so only this is shown.
    ///
    /// ```
    /// use tokenrelay::source::Program;
    /// let p = Program::Shell(r#"VAULT_TOKEN="s.x y" /usr/bin/vault read -field=token kv/x"#.into());
    /// assert_eq!(p.label(), "vault");
    /// let p = Program::Argv(vec!["env".into(), "-u".into(), "HOME".into(), "K=v".into(), "az".into()]);
    /// assert_eq!(p.label(), "az");
    /// ```
    pub fn label(&self) -> String {
        let path = self.path();
        match path.rsplit_once('/') {
            Some((_, name)) => name.to_owned(),
            None => path,
        }
    }
}

/// Wrappers that run the next word as the program (their options are skipped too).
const WRAPPERS: &[&str] = &[
    "env", "exec", "command", "builtin", "nohup", "nice", "time", "sudo", "doas",
];

/// Wrapper options that take a value as the next word (`env -u NAME`, `sudo -u USER`).
const WRAPPER_OPTIONS_WITH_VALUE: &[&str] =
    &["-u", "-C", "-S", "-g", "-n", "-p", "--unset", "--chdir"];

/// The first word that is neither an assignment, a wrapper nor a wrapper's option, cut at the
/// first shell operator (`FOO=1 get|jq` gives `get`, `$(cat f)` gives nothing).
fn program_word<S: AsRef<str>>(words: impl IntoIterator<Item = S>) -> String {
    let mut words = words.into_iter();
    let mut wrapped = false;
    while let Some(w) = words.next() {
        let w = w.as_ref();
        if is_assignment(w) {
            continue;
        }
        if WRAPPERS.contains(&w) {
            wrapped = true;
            continue;
        }
        if wrapped && w.starts_with('-') {
            if WRAPPER_OPTIONS_WITH_VALUE.contains(&w) {
                words.next();
            }
            continue;
        }
        return w
            .split(|c: char| "|;&<>()`$".contains(c))
            .next()
            .unwrap_or("")
            .to_owned();
    }
    String::new()
}

/// Splits a shell line into words the way `sh` does for quoting: `'…'` and `"…"` (with `\`
/// escapes) join, a backslash escapes one character, and a `$(…)` or `` `…` `` substitution
/// stays inside its word, so that no part of a quoted or computed value is ever taken for
/// the program. (Expansions are not performed; the words are only for naming the program.)
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut depth = 0usize; // inside `$(…)`
    let mut backtick = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if depth > 0 || backtick {
            cur.push(c);
            match c {
                '(' if depth > 0 => depth += 1,
                ')' if depth > 0 => depth -= 1,
                '`' if backtick => backtick = false,
                _ => {}
            }
            continue;
        }
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        _ => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            '$' if chars.peek() == Some(&'(') => {
                in_word = true;
                cur.push('$');
                depth = 0;
                if let Some(open) = chars.next() {
                    cur.push(open);
                    depth = 1;
                }
            }
            '`' => {
                in_word = true;
                cur.push('`');
                backtick = true;
            }
            _ => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Whether `w` is a shell assignment `NAME=value`.
fn is_assignment(w: &str) -> bool {
    match w.split_once('=') {
        Some((name, _)) => {
            let mut chars = name.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

/// A source that runs a command for each acquisition.
///
/// The command sees `TOKENRELAY_PROVIDER` and `TOKENRELAY_SCOPE` (when the request has a
/// scope) in its environment, besides everything tokenrelay inherited.
#[derive(Debug, Clone)]
pub struct CommandSource {
    program: Program,
    format: OutputFormat,
    timeout: Duration,
    default_ttl: Duration,
}

impl CommandSource {
    /// A source that runs `program`.
    pub fn new(program: Program) -> Self {
        CommandSource {
            program,
            format: OutputFormat::Auto,
            timeout: DEFAULT_SOURCE_TIMEOUT,
            default_ttl: DEFAULT_TTL,
        }
    }

    /// Runs `line` with `sh -c`.
    pub fn shell(line: impl Into<String>) -> Self {
        Self::new(Program::Shell(line.into()))
    }

    /// How to parse stdout (default: auto).
    #[must_use]
    pub fn with_format(mut self, format: OutputFormat) -> Self {
        self.format = format;
        self
    }

    /// How long the command may run (default 30 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Lifetime assumed when the output states none.
    #[must_use]
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    fn err(&self, kind: ErrorKind) -> Error {
        Error::new(self.describe(), kind)
    }

    fn command(&self, req: &TokenRequest) -> Result<Command> {
        let mut cmd = self.program.process(&self.describe())?;
        cmd.env("TOKENRELAY_PROVIDER", req.provider());
        if let Some(scope) = req.scope() {
            cmd.env("TOKENRELAY_SCOPE", scope);
        }
        Ok(cmd)
    }
}

/// Kills a process group when dropped (or at [`kill`](Self::kill), once).
#[derive(Debug)]
pub(crate) struct GroupGuard(Option<Pid>);

impl GroupGuard {
    /// Guards the group led by the child with process id `id` (spawned with
    /// [`Program::process`], which makes it a group leader).
    pub(crate) fn of(id: Option<u32>) -> Self {
        GroupGuard(id.and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw))
    }

    pub(crate) fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH (already gone) is fine.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn read_bounded<R: AsyncRead + Unpin>(mut r: R) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = (&mut r).take(MAX_OUTPUT).read_to_end(&mut buf).await;
    // Drain the rest so the writer never blocks on a full pipe.
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    buf
}

/// What a finished command left: its exit status and (bounded) output.
#[derive(Debug)]
pub(crate) struct Finished {
    /// How it ended.
    pub status: std::process::ExitStatus,
    /// At most 1 MiB of stdout.
    pub stdout: Vec<u8>,
    /// At most 1 MiB of stderr.
    pub stderr: Vec<u8>,
}

/// Runs `cmd` (made by [`Program::process`]: its own process group, killed on drop) with
/// stdin closed and both outputs captured, for at most `timeout`; on timeout, cancellation or
/// once it is done, the whole group is killed. The command and plugin-less sources
/// (`command`, `aws`'s `credential_process`) share it.
///
/// # Errors
/// `origin`: cannot run (naming `path`), or timed out.
pub(crate) async fn run_captured(
    mut cmd: Command,
    origin: &str,
    path: &str,
    timeout: Duration,
) -> Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (is it installed and on PATH?)"
        } else {
            ""
        };
        Error::new(
            origin,
            ErrorKind::CommandFailed(format!("cannot run `{path}`: {e}{hint}")),
        )
    })?;
    let mut guard = GroupGuard::of(child.id());
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_task = tokio::spawn(async move {
        match stdout {
            Some(s) => read_bounded(s).await,
            None => Vec::new(),
        }
    });
    let err_task = tokio::spawn(async move {
        match stderr {
            Some(s) => read_bounded(s).await,
            None => Vec::new(),
        }
    });
    let started = tokio::time::Instant::now();
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            return Err(Error::new(
                origin,
                ErrorKind::CommandFailed(format!("waiting for the command: {e}")),
            ))
        }
        Err(_) => {
            guard.kill();
            tracing::debug!("command timed out; process group killed");
            return Err(Error::new(origin, ErrorKind::Timeout(timeout)));
        }
    };
    // The command is done; a background grandchild may still hold the pipes open.
    let pipes = async { (out_task.await, err_task.await) };
    tokio::pin!(pipes);
    let (out, err) = match tokio::time::timeout(PIPE_GRACE, &mut pipes).await {
        Ok(r) => r,
        Err(_) => {
            guard.kill();
            pipes.await
        }
    };
    guard.kill();
    let stdout = out.unwrap_or_default();
    let stderr = err.unwrap_or_default();
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        status = ?status.code(),
        stdout_bytes = stdout.len(),
        "command finished"
    );
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

/// `exited with status N` / `was killed by a signal`, then `: DETAIL` when `detail` is not empty.
pub(crate) fn exit_message(status: std::process::ExitStatus, detail: &str) -> String {
    let how = match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_owned(),
    };
    if detail.is_empty() {
        how
    } else {
        format!("{how}: {detail}")
    }
}

#[async_trait]
impl Source for CommandSource {
    #[tracing::instrument(skip_all, fields(source = %self.describe()))]
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let done = run_captured(
            self.command(req)?,
            &self.describe(),
            &self.program.path(),
            self.timeout,
        )
        .await?;
        let (status, stdout) = (done.status, done.stdout);
        if !status.success() {
            let stderr_text = String::from_utf8_lossy(&done.stderr);
            let msg = exit_message(status, &one_line(&stderr_text, 200));
            return Err(self.err(ErrorKind::CommandFailed(msg)));
        }
        let text = String::from_utf8(stdout).map_err(|e| {
            self.err(ErrorKind::InvalidResponse(format!(
                "output is not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            )))
        })?;
        let parsed = output::parse(&text, self.format)
            .map_err(|e| self.err(ErrorKind::InvalidResponse(e)))?;
        Ok(parsed.into_token(&self.describe(), SystemTime::now(), Some(self.default_ttl)))
    }

    fn kind(&self) -> &'static str {
        "command"
    }

    fn describe(&self) -> String {
        format!("command source `{}`", self.program.label())
    }

    fn timeout(&self) -> Duration {
        // The command enforces its own limit (and kills the group); the outer one is a backstop.
        self.timeout + Duration::from_secs(1)
    }

    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"command");
        match &self.program {
            Program::Shell(line) => fp.add("sh", line.as_bytes()),
            Program::Argv(argv) => {
                for a in argv {
                    fp.add("arg", a.as_bytes());
                }
            }
        }
        fp.add("format", format!("{:?}", self.format).as_bytes());
        Ok(())
    }
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
