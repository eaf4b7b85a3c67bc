//! `tokenrelay decode`: a JWT's header and claims, with times as dates.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::{json, Map, Value};

use crate::{CmdResult, Failure};

#[derive(Debug, Args)]
pub(crate) struct DecodeArgs {
    /// The JWT, or `-` to read it from stdin.
    jwt: String,
}

pub(crate) fn run(a: DecodeArgs) -> CmdResult {
    let text = if a.jwt == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::runtime(format!("cannot read stdin: {e}")))?;
        s
    } else {
        a.jwt
    };
    let token = text.trim();
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    let d = tokenrelay::jwt::decode_unverified(token).map_err(Failure::usage)?;
    let now = SystemTime::now();
    let mut times = Map::new();
    for claim in ["exp", "nbf", "iat"] {
        if let Some(t) = tokenrelay::jwt::claim_time(&d.claims, claim) {
            times.insert(claim.into(), Value::String(describe_time(t, now)));
        }
    }
    let out = json!({ "header": d.header, "claims": d.claims, "times": times });
    let pretty = serde_json::to_string_pretty(&out)
        .map_err(|e| Failure::runtime(format!("cannot print: {e}")))?;
    println!("{pretty}");
    Ok(())
}

fn describe_time(t: SystemTime, now: SystemTime) -> String {
    let date = tokenrelay::rfc3339(t);
    let _ = UNIX_EPOCH;
    match t.duration_since(now) {
        Ok(d) => format!("{date} (in {})", humantime::format_duration(round(d))),
        Err(e) => format!(
            "{date} ({} ago)",
            humantime::format_duration(round(e.duration()))
        ),
    }
}

fn round(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs())
}
