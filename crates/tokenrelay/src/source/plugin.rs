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
//! is logged at debug level, line by line, and not kept.
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
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use super::output::{self, check_token_text, OutputFormat};
use super::{Fingerprint, SharedEnv, Source, TokenRequest, DEFAULT_SOURCE_TIMEOUT};
use crate::error::{one_line, Error, ErrorKind, Result};
use crate::secret::Secret;
use crate::token::Token;

/// The JSON-RPC method called for each acquisition.
pub const PLUGIN_METHOD: &str = "providerToken.acquire";

const MAX_LINE: u64 = 1024 * 1024;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<std::result::Result<Value, String>>>>>;

/// One running helper.
#[derive(Debug)]
struct Helper {
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    child: Mutex<Child>,
}

impl Helper {
    fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        if let Ok(mut c) = self.child.lock() {
            let _ = c.start_kill();
        }
    }
}

/// Asks a helper process for tokens over JSON-RPC (see the module docs for the protocol).
#[derive(Debug)]
pub struct PluginSource {
    argv: Vec<String>,
    timeout: Duration,
    next_id: AtomicU64,
    helper: tokio::sync::Mutex<Option<Arc<Helper>>>,
}

impl PluginSource {
    /// A plugin started as `argv` (program and arguments, no shell).
    pub fn new(argv: Vec<String>) -> Self {
        PluginSource {
            argv,
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
        let (prog, args) = self
            .argv
            .split_first()
            .ok_or_else(|| Error::config(self.describe(), "the plugin command is empty"))?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                self.err(ErrorKind::CommandFailed(format!(
                    "cannot start `{prog}`: {e}"
                )))
            })?;
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
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "tokenrelay::plugin", "{}", one_line(&line, 500));
            }
        });
        Ok(Helper {
            stdin: tokio::sync::Mutex::new(stdin),
            pending,
            alive,
            child: Mutex::new(child),
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
        format!(
            "plugin source `{}`",
            self.argv.first().map(String::as_str).unwrap_or("")
        )
    }
    fn timeout(&self) -> Duration {
        self.timeout + Duration::from_secs(1)
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("kind", b"plugin");
        for a in &self.argv {
            fp.add("arg", a.as_bytes());
        }
        Ok(())
    }
}

/// `kind = "plugin"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The program to start.
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Time limit for one call (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl PluginConfig {
    /// Builds the source (the helper starts at the first acquisition).
    ///
    /// # Errors
    /// A config error for an empty command.
    pub fn build(&self, path: &str, _env: &SharedEnv) -> Result<Arc<dyn Source>> {
        if self.command.trim().is_empty() {
            return Err(Error::config(format!("{path}.command"), "is empty"));
        }
        let mut argv = vec![self.command.clone()];
        argv.extend(self.args.iter().cloned());
        Ok(Arc::new(PluginSource::new(argv).with_timeout(
            self.timeout.unwrap_or(DEFAULT_SOURCE_TIMEOUT),
        )))
    }
}
