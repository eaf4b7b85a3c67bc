//! A long-lived helper process spoken to over JSON-RPC 2.0 on its stdin/stdout.
//!
//! **Framing: newline-delimited JSON.** Each message is one JSON object on one line, ended by
//! `\n` (no `Content-Length` headers); JSON escapes newlines inside strings, so any JSON
//! library's compact output qualifies. Lines over 1 MiB are a protocol error.
//!
//! tokenrelay sends requests
//! `{"jsonrpc":"2.0","id":7,"method":"providerToken.acquire","params":{"providerName":"azure","scope":"…"}}`
//! (`scope` is `null` when the provider has none) and expects, with the same `id`, either
//! `{"jsonrpc":"2.0","id":7,"result":{"token":"…","expiresOnTimestamp":1700000000000}}`
//! (milliseconds since the epoch), or `"result":"…"`, a bare token with no known expiry, which
//! the cache never keeps (so the helper is asked again for every request), or
//! `"error":{"code":…,"message":"…"}`. Calls may be answered out of order. The helper's stderr
//! is logged at debug level, line by line (each cut at 8 KiB, [`MAX_STDERR_LINE`]), and not kept.
//!
//! The helper is started like a command source's command: `command` is a shell line (`sh -c`),
//! `args` a program and its arguments (no shell), in a process group of its own that is
//! killed with it.
//!
//! The helper is started at the first acquisition and kept running; if it exits it is started
//! again at the next one. A call that is not answered within the timeout fails, and the helper
//! is killed (a hung helper would otherwise hang every later call).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::oneshot;

use super::command::GroupGuard;
use super::output::{self, check_token_text, OutputFormat};
use super::{Fingerprint, Program, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT};
use crate::error::{one_line, Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::token::Token;

/// The JSON-RPC method called for each acquisition.
pub const PLUGIN_METHOD: &str = "providerToken.acquire";

const MAX_LINE: u64 = 1024 * 1024;

/// The most of one stderr line of the helper that is kept (8 KiB) to be logged; the rest of a
/// longer line is read and dropped, so a helper printing an endless line costs no memory.
pub const MAX_STDERR_LINE: usize = 8 * 1024;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<std::result::Result<Value, String>>>>>;

/// One running helper.
#[derive(Debug)]
struct Helper {
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    child: Mutex<Child>,
    /// Kills the helper's whole process group (a `sh -c` line's children too) when dropped.
    group: Mutex<GroupGuard>,
}

impl Helper {
    fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        if let Ok(mut c) = self.child.lock() {
            let _ = c.start_kill();
        }
        if let Ok(mut g) = self.group.lock() {
            g.kill();
        }
    }
}

/// Asks a helper process for tokens over JSON-RPC (see the module docs for the protocol).
#[derive(Debug)]
pub struct PluginSource {
    program: Program,
    timeout: Duration,
    next_id: AtomicU64,
    helper: tokio::sync::Mutex<Option<Arc<Helper>>>,
}

impl PluginSource {
    /// A plugin started as `argv` (program and arguments, no shell).
    pub fn new(argv: Vec<String>) -> Self {
        Self::from_program(Program::Argv(argv))
    }

    /// A plugin started with `sh -c LINE`.
    pub fn shell(line: impl Into<String>) -> Self {
        Self::from_program(Program::Shell(line.into()))
    }

    /// A plugin started as `program`.
    pub fn from_program(program: Program) -> Self {
        PluginSource {
            program,
            timeout: DEFAULT_SOURCE_TIMEOUT,
            next_id: AtomicU64::new(1),
            helper: tokio::sync::Mutex::new(None),
        }
    }

    /// How long one call may take (default 30 s).
    #[must_use]
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    fn err(&self, kind: ErrorKind) -> Error {
        Error::new(self.describe(), kind)
    }

    async fn helper(&self) -> Result<Arc<Helper>> {
        let mut slot = self.helper.lock().await;
        if let Some(h) = slot.as_ref() {
            if h.alive.load(Ordering::SeqCst) {
                return Ok(h.clone());
            }
            tracing::info!(plugin = %self.describe(), "plugin exited; starting it again");
        }
        let h = Arc::new(self.spawn()?);
        *slot = Some(h.clone());
        Ok(h)
    }

    fn spawn(&self) -> Result<Helper> {
        let mut child: Child = self
            .program
            .process(&self.describe())?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                self.err(ErrorKind::CommandFailed(format!(
                    "cannot start `{}`: {e}",
                    self.program.path()
                )))
            })?;
        let group = GroupGuard::of(child.id());
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(self.err(ErrorKind::CommandFailed("plugin pipes unavailable".into())));
        };
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (p, a) = (pending.clone(), alive.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            let why = loop {
                let mut line = Vec::new();
                match (&mut reader)
                    .take(MAX_LINE)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) => break "the plugin exited".to_owned(),
                    Err(e) => break format!("reading from the plugin: {e}"),
                    Ok(_) if !line.ends_with(b"\n") && line.len() as u64 >= MAX_LINE => {
                        break "the plugin sent a line over 1 MiB".to_owned()
                    }
                    Ok(_) => dispatch(&line, &p),
                }
            };
            a.store(false, Ordering::SeqCst);
            let waiting: Vec<_> = p
                .lock()
                .map(|mut m| m.drain().collect())
                .unwrap_or_default();
            for (_, tx) in waiting {
                let _ = tx.send(Err(why.clone()));
            }
        });
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while let Ok(true) = read_line_capped(&mut reader, &mut line, MAX_STDERR_LINE).await {
                let text = String::from_utf8_lossy(&line);
                tracing::debug!(target: "tokenrelay::plugin", "{}", one_line(&text, 500));
            }
        });
        Ok(Helper {
            stdin: tokio::sync::Mutex::new(stdin),
            pending,
            alive,
            child: Mutex::new(child),
            group: Mutex::new(group),
        })
    }

    async fn call(&self, helper: &Helper, params: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = helper.pending.lock() {
            m.insert(id, tx);
        }
        let mut msg =
            json!({"jsonrpc": "2.0", "id": id, "method": PLUGIN_METHOD, "params": params})
                .to_string();
        msg.push('\n');
        let write = async {
            let mut stdin = helper.stdin.lock().await;
            stdin.write_all(msg.as_bytes()).await?;
            stdin.flush().await
        };
        if let Err(e) = write.await {
            helper.kill();
            return Err(self.err(ErrorKind::CommandFailed(format!(
                "cannot write to the plugin: {e}"
            ))));
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(msg))) => Err(self.err(ErrorKind::CommandFailed(msg))),
            Ok(Err(_)) => Err(self.err(ErrorKind::CommandFailed("the plugin exited".into()))),
            Err(_) => {
                if let Ok(mut m) = helper.pending.lock() {
                    m.remove(&id);
                }
                tracing::warn!(plugin = %self.describe(), "plugin call timed out; stopping the plugin");
                helper.kill();
                Err(self.err(ErrorKind::Timeout(self.timeout)))
            }
        }
    }
}

/// Reads one line (up to and including `\n`) into `line`, keeping at most `cap` bytes of it
/// and consuming the rest unkept. `Ok(false)` at end of input with nothing read.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<bool> {
    line.clear();
    let mut read_any = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(read_any);
        }
        read_any = true;
        let (len, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = cap.saturating_sub(line.len());
        line.extend_from_slice(&buf[..len.min(room)]);
        r.consume(len);
        if done {
            return Ok(true);
        }
    }
}

/// Routes one line from the helper to the call waiting for its id.
fn dispatch(line: &[u8], pending: &Pending) {
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        tracing::debug!("plugin wrote a line that is not JSON; ignored");
        return;
    };
    let Some(id) = v.get("id").and_then(Value::as_u64) else {
        tracing::debug!("plugin message without a numeric id; ignored");
        return;
    };
    let Some(tx) = pending.lock().ok().and_then(|mut m| m.remove(&id)) else {
        return;
    };
    let answer = if let Some(e) = v.get("error") {
        let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        Err(format!(
            "plugin answered error {code}: {}",
            one_line(message, 200)
        ))
    } else if let Some(r) = v.get("result") {
        Ok(r.clone())
    } else {
        Err("plugin answer has neither result nor error".to_owned())
    };
    let _ = tx.send(answer);
}

#[async_trait]
impl Source for PluginSource {
    #[tracing::instrument(skip_all, fields(source = %self.describe()))]
    async fn acquire(&self, req: &TokenRequest) -> Result<Token> {
        let helper = self.helper().await?;
        let result = self
            .call(
                &helper,
                json!({"providerName": req.provider(), "scope": req.scope()}),
            )
            .await?;
        let now = SystemTime::now();
        match result {
            // A bare string: no known expiry, asked again at every use.
            Value::String(s) => {
                check_token_text(&s).map_err(|e| self.err(ErrorKind::InvalidResponse(e)))?;
                Ok(Token::new(Secret::new(s), self.describe()).acquired_at(now))
            }
            obj @ Value::Object(_) => {
                let parsed = output::parse(&obj.to_string(), OutputFormat::Json)
                    .map_err(|e| self.err(ErrorKind::InvalidResponse(e)))?;
                Ok(parsed.into_token(&self.describe(), now, None))
            }
            _ => Err(self.err(ErrorKind::InvalidResponse(
                "plugin result is neither a string nor {token, expiresOnTimestamp}".into(),
            ))),
        }
    }
    fn kind(&self) -> &'static str {
        "plugin"
    }
    fn describe(&self) -> String {
        format!("plugin source `{}`", self.program.label())
    }
    fn timeout(&self) -> Duration {
        self.timeout + Duration::from_secs(1)
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"plugin");
        match &self.program {
            Program::Shell(line) => fp.add("sh", line.as_bytes()),
            Program::Argv(argv) => {
                for a in argv {
                    fp.add("arg", a.as_bytes());
                }
            }
        }
        Ok(())
    }
}

/// `kind = "plugin"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PluginConfig {
    /// A shell command line that starts the helper (`sh -c`), as for a command source.
    #[serde(default)]
    pub command: Option<String>,
    /// Or the program and its arguments, run without a shell (`["node", "plugin.js"]`).
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Time limit for one call (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl PluginConfig {
    /// Builds the source (the helper starts at the first acquisition).
    ///
    /// # Errors
    /// A config error unless exactly one of `command` and `args` is set and not empty.
    pub fn build(&self, path: &str, _env: &SharedEnv) -> Result<Arc<dyn Source>> {
        let program = Program::from_keys(path, "plugin", &self.command, &self.args)?;
        Ok(Arc::new(PluginSource::from_program(program).with_timeout(
            self.timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_endless_stderr_line_is_kept_to_the_cap() {
        // 4 MiB without a line break, then a short line.
        let endless = tokio::io::repeat(b'x').take(4 * 1024 * 1024);
        let mut r = BufReader::new(endless.chain(&b"\nnext\n"[..]));
        let mut line = Vec::new();
        assert!(read_line_capped(&mut r, &mut line, MAX_STDERR_LINE)
            .await
            .unwrap());
        assert_eq!(line.len(), MAX_STDERR_LINE);
        assert!(line.capacity() < 2 * MAX_STDERR_LINE);
        assert!(read_line_capped(&mut r, &mut line, MAX_STDERR_LINE)
            .await
            .unwrap());
        assert_eq!(line, b"next\n");
        assert!(!read_line_capped(&mut r, &mut line, MAX_STDERR_LINE)
            .await
            .unwrap());
    }

    #[test]
    fn command_and_args_mean_what_they_mean_for_a_command_source() {
        let env: SharedEnv = Arc::new(crate::source::MapEnv::default());
        let cfg = |command: Option<&str>, args: Option<Vec<&str>>| PluginConfig {
            command: command.map(str::to_owned),
            args: args.map(|a| a.into_iter().map(str::to_owned).collect()),
            timeout: None,
        };
        let src = cfg(Some("TOKEN=s3cr3t python3 plugin.py --key s3cr3t"), None)
            .build("provider.a.source", &env)
            .unwrap();
        assert_eq!(src.describe(), "plugin source `python3`");
        let src = cfg(None, Some(vec!["/usr/bin/node", "plugin.js"]))
            .build("provider.a.source", &env)
            .unwrap();
        assert_eq!(src.describe(), "plugin source `node`");
        for bad in [
            cfg(Some("node"), Some(vec!["plugin.js"])),
            cfg(None, None),
            cfg(Some("  "), None),
            cfg(None, Some(vec![])),
        ] {
            let err = bad
                .build("provider.a.source", &env)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("provider.a.source") && err.contains("exactly one of command"),
                "{err}"
            );
        }
    }
}
