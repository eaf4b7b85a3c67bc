//! `tokenrelay check`: validate the configuration and acquire each provider's token once (or
//! only the one `--provider` names).

use std::time::SystemTime;

use clap::Args;
use serde_json::{json, Value};
use tokenrelay::cache::policy;
use tokenrelay::source::acquire_with_timeout;

use crate::args::{process_env, ProviderArgs};
use crate::{CmdResult, Failure};

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    provider: ProviderArgs,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(a: CheckArgs) -> CmdResult {
    let cfg = a.provider.load()?;
    // `--provider NAME` with a config checks that one provider, as `token` uses that one; an
    // unknown name is a configuration error listing the configured ones.
    let chosen = match a.provider.chosen() {
        Some(name) => vec![cfg.provider(Some(name))?],
        None => cfg.providers.iter().collect(),
    };
    let env = process_env();
    let mut report = Vec::new();
    let mut failed = 0;
    for p in chosen {
        let at = format!("provider {}.source", p.name);
        let source = p.source.build(&at, &env)?;
        let mut entry = json!({
            "provider": p.name,
            "kind": source.kind(),
            "source": source.describe(),
            "upstream": p.upstream,
        });
        match acquire_with_timeout(source.as_ref(), &p.request()).await {
            Ok(t) => {
                let now = SystemTime::now();
                entry["ok"] = json!(true);
                if let Some(exp) = t.expiry() {
                    entry["expires_at"] = json!(tokenrelay::rfc3339(exp));
                    entry["expires_in_s"] = json!(t.remaining(now).map(|d| d.as_secs()));
                    let refresh = policy::refresh_at(t.acquired(), exp, 0.0);
                    entry["refresh_in_s"] = json!(refresh
                        .duration_since(now)
                        .map(|d| d.as_secs())
                        .unwrap_or(0));
                }
                if let Ok(jwt) = tokenrelay::jwt::decode_unverified(t.secret().expose()) {
                    for claim in ["sub", "aud", "iss", "appid", "oid"] {
                        if let Some(v) = jwt.claims.get(claim) {
                            entry[claim] = v.clone();
                        }
                    }
                }
            }
            Err(e) => {
                failed += 1;
                entry["ok"] = json!(false);
                entry["error"] = json!(e.to_string());
            }
        }
        report.push(entry);
    }
    if a.json {
        println!("{}", json!({ "providers": report }));
    } else {
        for e in &report {
            print_text(e);
        }
    }
    if failed > 0 {
        return Err(Failure::runtime(format!(
            "{failed} of {} providers failed",
            report.len()
        )));
    }
    Ok(())
}

fn print_text(e: &Value) {
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    if e["ok"] == json!(true) {
        let mut line = format!("ok    {}  {}", s("provider"), s("source"));
        if let Some(exp) = e.get("expires_at").and_then(Value::as_str) {
            line.push_str(&format!(
                "  expires {exp} (in {}s, refresh in {}s)",
                e["expires_in_s"], e["refresh_in_s"]
            ));
        }
        for claim in ["sub", "aud"] {
            if let Some(v) = e.get(claim) {
                line.push_str(&format!("  {claim}={v}"));
            }
        }
        println!("{line}");
    } else {
        println!("FAIL  {}  {}", s("provider"), s("error"));
    }
}
