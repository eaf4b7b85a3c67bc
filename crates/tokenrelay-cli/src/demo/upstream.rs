//! The demo's model provider: OpenAI chat completions and Responses API, Anthropic messages,
//! each streaming (SSE) or not, in their real wire formats. It accepts only unexpired,
//! unrevoked tokens signed by the demo IdP, so the demo proves the point.
//!
//! Test hooks: `GET /__stats` (counters as JSON, with accepted requests per token scope),
//! `POST /__revoke` (reject all tokens issued so far, as if the IdP revoked them).
//!
//! Scripted tool turns, so that one agent process makes several model requests (and lives
//! across several token lifetimes): when the last user message contains `e2e-tool-turns=N`
//! (and optionally `e2e-sleep=S`, seconds, at most 30) and the request offers a `bash` tool,
//! the upstream answers with a `bash` tool call running `sleep S` until the conversation
//! holds N tool results since the user's last message, then answers with text as usual.
//! Tool calls use each API's real shape: chat `tool_calls`, Responses `function_call` items,
//! Anthropic `tool_use` blocks.
//! With `e2e-revoke-at-turn=K` as well, the first request that arrives holding K tool results
//! revokes every token issued so far before it is checked, so exactly one request of the run
//! meets a 401 at a known point (a forced, deterministic credential rejection).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{json, Value};

use super::idp::{Shared, AUDIENCE, ISSUER};
use super::server::{json, Body};
use super::tool_turns::{
    chat_tool_call, messages_tool_call, responses_tool_call, scripted_revocation, tool_turn,
};
use super::wire::{data, event, now_s, sse, Api};

/// Counters the demo and the end-to-end tests read.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub requests: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// Accepted requests per token `scp` claim (end-to-end tests check partitioning).
    pub by_scope: Mutex<BTreeMap<String, u64>>,
    /// Whether the scripted revocation (`e2e-revoke-at-turn=K`) has happened.
    pub scripted_revoked: AtomicBool,
}

fn route(method: &Method, path: &str) -> Option<Api> {
    match (method, path) {
        (&Method::POST, p) if p.ends_with("/chat/completions") => Some(Api::Chat),
        (&Method::POST, p) if p.ends_with("/responses") => Some(Api::Responses),
        (&Method::POST, p) if p.ends_with("/messages") => Some(Api::Messages),
        (&Method::GET, p) if p.ends_with("/models") => Some(Api::Models),
        _ => None,
    }
}

fn credential(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers();
    h.get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
        .or_else(|| h.get("api-key").and_then(|v| v.to_str().ok()))
        .map(str::to_owned)
}

/// Checks signature, issuer, audience, expiry (no leeway) and revocation; returns the
/// token's scope.
fn verify(shared: &Shared, token: &str) -> Result<String, String> {
    let mut v = Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(&shared.key), &v)
        .map_err(|e| format!("invalid token: {e}"))?;
    let serial = data.claims.get("jti").and_then(Value::as_u64).unwrap_or(0);
    if serial < shared.min_serial.load(Ordering::SeqCst) {
        return Err("token has been revoked".into());
    }
    let scope = data.claims.get("scp").and_then(Value::as_str).unwrap_or("");
    Ok(scope.to_owned())
}

fn unauthorized(api: Api, why: &str) -> Response<Body> {
    let body = if api == Api::Messages {
        json!({"type": "error", "error": {"type": "authentication_error", "message": why}})
    } else {
        json!({"error": {"message": why, "type": "invalid_request_error", "code": "invalid_api_key"}})
    };
    json(StatusCode::UNAUTHORIZED, &body)
}

/// The text of a message's content: all its text parts joined, or only the last one.
fn text_of(v: &Value, last_part_only: bool) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let t: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            match (last_part_only, t.last()) {
                (_, None) => None,
                (true, Some(last)) => Some((*last).to_owned()),
                (false, Some(_)) => Some(t.join(" ")),
            }
        }
        _ => None,
    }
}

/// The last user message of a chat, Responses or Messages request: all of its text (where the
/// scripted-turn directives are looked for), or only its last text part (what the answer
/// echoes; clients such as Claude Code put context blocks before the prompt).
fn prompt(api: Api, body: &Value, last_part_only: bool) -> String {
    let from_messages = |msgs: &Value| {
        msgs.as_array().and_then(|m| {
            m.iter()
                .rev()
                .filter(|x| x.get("role").and_then(Value::as_str) == Some("user"))
                .find_map(|x| x.get("content").and_then(|c| text_of(c, last_part_only)))
        })
    };
    let p = match api {
        Api::Chat | Api::Messages => from_messages(&body["messages"]),
        Api::Responses => match &body["input"] {
            Value::String(s) => Some(s.clone()),
            other => from_messages(other),
        },
        Api::Models => None,
    };
    p.unwrap_or_default()
}

fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, w) in text.split(' ').enumerate() {
        out.push(if i == 0 {
            w.to_owned()
        } else {
            format!(" {w}")
        });
    }
    out
}

fn chat(model: &str, text: &str, stream: bool, usage: bool) -> Response<Body> {
    let id = format!("chatcmpl-{}", rand::random::<u32>());
    let created = now_s();
    let n = words(text).len();
    if !stream {
        return json(
            StatusCode::OK,
            &json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
            }),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    };
    let mut ev = vec![data(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ))];
    for w in words(text) {
        ev.push(data(&chunk(json!({"content": w}), Value::Null)));
    }
    ev.push(data(&chunk(json!({}), json!("stop"))));
    if usage {
        ev.push(data(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
        })));
    }
    ev.push("data: [DONE]\n\n".into());
    sse(ev)
}

fn responses(model: &str, text: &str, stream: bool) -> Response<Body> {
    let id = format!("resp_{}", rand::random::<u32>());
    let msg_id = format!("msg_{}", rand::random::<u32>());
    let created = now_s();
    let n = words(text).len();
    let item = json!({"type": "message", "id": msg_id, "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]});
    let full = |status: &str, output: Value| {
        json!({
            "id": id, "object": "response", "created_at": created, "status": status, "model": model,
            "output": output, "usage": {"input_tokens": 1, "output_tokens": n, "total_tokens": n + 1},
        })
    };
    if !stream {
        return json(StatusCode::OK, &full("completed", json!([item])));
    }
    let mut seq = 0u64;
    let mut ev = Vec::new();
    let mut push = |name: &str, mut v: Value| {
        v["type"] = json!(name);
        v["sequence_number"] = json!(seq);
        seq += 1;
        ev.push(event(name, &v));
    };
    push(
        "response.created",
        json!({"response": full("in_progress", json!([]))}),
    );
    push(
        "response.output_item.added",
        json!({"output_index": 0,
        "item": {"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []}}),
    );
    push(
        "response.content_part.added",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": []}}),
    );
    for w in words(text) {
        push(
            "response.output_text.delta",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": w}),
        );
    }
    push(
        "response.output_text.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text}),
    );
    push(
        "response.content_part.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": text, "annotations": []}}),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    );
    push(
        "response.completed",
        json!({"response": full("completed", json!([item]))}),
    );
    sse(ev)
}

fn messages(model: &str, text: &str, stream: bool) -> Response<Body> {
    let id = format!("msg_{}", rand::random::<u32>());
    let n = words(text).len();
    if !stream {
        return json(
            StatusCode::OK,
            &json!({
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 1, "output_tokens": n},
            }),
        );
    }
    let mut ev = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    for w in words(text) {
        ev.push(event("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}})));
    }
    ev.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    ev.push(event("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": n}})));
    ev.push(event("message_stop", &json!({"type": "message_stop"})));
    sse(ev)
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/__stats" {
        return json(
            StatusCode::OK,
            &json!({
                "requests": stats.requests.load(Ordering::SeqCst),
                "accepted": stats.accepted.load(Ordering::SeqCst),
                "rejected": stats.rejected.load(Ordering::SeqCst),
                "tokens_issued": shared.issued.load(Ordering::SeqCst),
                "accepted_by_scope": stats.by_scope.lock().map(|m| json!(*m)).unwrap_or(Value::Null),
            }),
        );
    }
    if path == "/__revoke" && req.method() == Method::POST {
        shared.revoke_all();
        return json(
            StatusCode::OK,
            &json!({"revoked_below": shared.min_serial.load(Ordering::SeqCst)}),
        );
    }
    let Some(api) = route(req.method(), &path) else {
        return json(
            StatusCode::NOT_FOUND,
            &json!({"error": {"message": format!("no route for {path}"), "type": "invalid_request_error"}}),
        );
    };
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let credential = credential(&req);
    let v: Value = if api == Api::Models {
        Value::Null
    } else {
        match Limited::new(req.into_body(), 16 * 1024 * 1024)
            .collect()
            .await
        {
            Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null),
            Err(_) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": {"message": "unreadable body", "type": "invalid_request_error"}}),
                )
            }
        }
    };
    let asked = prompt(api, &v, false);
    if scripted_revocation(api, &v, &asked) && !stats.scripted_revoked.swap(true, Ordering::SeqCst)
    {
        shared.revoke_all();
    }
    let verdict = match credential {
        Some(t) => verify(&shared, &t),
        None => Err("no credential".to_owned()),
    };
    let scope = match verdict {
        Ok(scope) => scope,
        Err(why) => {
            stats.rejected.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(%why, "demo upstream rejected a request");
            return unauthorized(api, &why);
        }
    };
    stats.accepted.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut m) = stats.by_scope.lock() {
        *m.entry(scope).or_default() += 1;
    }
    if api == Api::Models {
        return json(
            StatusCode::OK,
            &json!({"object": "list", "data": [
            {"id": "demo-model", "object": "model", "created": 0, "owned_by": "tokenrelay-demo"}]}),
        );
    }
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("demo-model")
        .to_owned();
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if let Some(call) = tool_turn(api, &v, &asked) {
        return match api {
            Api::Chat => chat_tool_call(&model, &call, stream),
            Api::Responses => responses_tool_call(&model, &call, stream),
            _ => messages_tool_call(&model, &call, stream),
        };
    }
    let echo: String = prompt(api, &v, true).chars().take(200).collect();
    let text = format!("pong: {echo}");
    match api {
        Api::Chat => {
            let usage = v
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            chat(&model, &text, stream, usage)
        }
        Api::Responses => responses(&model, &text, stream),
        _ => messages(&model, &text, stream),
    }
}
