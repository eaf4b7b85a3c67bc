//! Scripted tool turns of the demo upstream: a prompt containing `e2e-tool-turns=N` (and
//! optionally `e2e-sleep=S`) makes the upstream answer with a `bash` tool call until the
//! conversation holds N tool results since the user's last message, so that one agent run
//! makes N + 1 model requests and can outlive several token lifetimes. Each API's real
//! tool-call wire shape is used.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::server::{json, Body};
use super::wire::{data, event, now_s, sse, Api};

/// Longest sleep a scripted tool call may ask for.
const MAX_SLEEP_S: u64 = 30;

/// A tool call the upstream decided to make.
pub(super) struct ToolCall {
    id: String,
    name: String,
    arguments: Value,
}

/// The number after `key=` in `text`, if any.
fn directive(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The name of the offered tool called `name`, compared without case (Copilot's shell tool is
/// `bash`, Claude Code's is `Bash`).
fn offered_tool(api: Api, body: &Value, name: &str) -> Option<String> {
    body["tools"].as_array()?.iter().find_map(|t| {
        let n = match api {
            Api::Chat => t.pointer("/function/name"),
            _ => t.get("name"),
        };
        n.and_then(Value::as_str)
            .filter(|n| n.eq_ignore_ascii_case(name))
            .map(str::to_owned)
    })
}

/// Whether a conversation item is a message the user typed (not a tool result).
fn is_user_text(api: Api, m: &Value) -> bool {
    if m.get("role").and_then(Value::as_str) != Some("user") {
        return false;
    }
    match &m["content"] {
        Value::String(_) => true,
        Value::Array(blocks) => blocks.iter().any(|b| {
            matches!(
                b.get("type").and_then(Value::as_str),
                Some("text" | "input_text")
            )
        }),
        _ => api != Api::Messages,
    }
}

/// How many tool results the conversation holds since the user's last message.
fn tool_results(api: Api, body: &Value) -> usize {
    let items = match api {
        Api::Responses => &body["input"],
        _ => &body["messages"],
    };
    let Some(items) = items.as_array() else {
        return 0;
    };
    items
        .iter()
        .rev()
        .take_while(|m| !is_user_text(api, m))
        .map(|m| match api {
            Api::Chat => usize::from(m.get("role").and_then(Value::as_str) == Some("tool")),
            Api::Responses => {
                usize::from(m.get("type").and_then(Value::as_str) == Some("function_call_output"))
            }
            _ => m["content"].as_array().map_or(0, |blocks| {
                blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                    .count()
            }),
        })
        .sum()
}

/// Whether this request is the one at which the prompt scripts a revocation
/// (`e2e-revoke-at-turn=K`: the request that holds K tool results).
pub(super) fn scripted_revocation(api: Api, body: &Value, prompt: &str) -> bool {
    directive(prompt, "e2e-revoke-at-turn=").is_some_and(|k| k == tool_results(api, body) as u64)
}

/// The tool call to answer with, when the prompt scripts one and turns remain.
pub(super) fn tool_turn(api: Api, body: &Value, prompt: &str) -> Option<ToolCall> {
    let turns = directive(prompt, "e2e-tool-turns=")?;
    let done = tool_results(api, body) as u64;
    if done >= turns {
        return None;
    }
    let tool = offered_tool(api, body, "bash")?;
    let sleep = directive(prompt, "e2e-sleep=")
        .unwrap_or(1)
        .min(MAX_SLEEP_S);
    let n = done + 1;
    Some(ToolCall {
        id: format!("call_{}", rand::random::<u32>()),
        name: tool,
        arguments: json!({
            "command": format!("sleep {sleep} && echo e2e-turn-{n}"),
            "description": format!("e2e scripted turn {n} of {turns}"),
        }),
    })
}

pub(super) fn chat_tool_call(model: &str, call: &ToolCall, stream: bool) -> Response<Body> {
    let id = format!("chatcmpl-{}", rand::random::<u32>());
    let created = now_s();
    let args = call.arguments.to_string();
    if !stream {
        return json(
            StatusCode::OK,
            &json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"id": call.id, "type": "function",
                        "function": {"name": call.name, "arguments": args}}]},
                    "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        data(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    };
    sse(vec![
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": call.id,
                "type": "function", "function": {"name": call.name, "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": args}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        "data: [DONE]\n\n".into(),
    ])
}

pub(super) fn responses_tool_call(model: &str, call: &ToolCall, stream: bool) -> Response<Body> {
    let id = format!("resp_{}", rand::random::<u32>());
    let item_id = format!("fc_{}", rand::random::<u32>());
    let created = now_s();
    let args = call.arguments.to_string();
    let item = |status: &str, arguments: &str| {
        json!({"type": "function_call", "id": item_id, "call_id": call.id, "name": call.name,
            "arguments": arguments, "status": status})
    };
    let full = |status: &str, output: Value| {
        json!({"id": id, "object": "response", "created_at": created, "status": status,
            "model": model, "output": output,
            "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}})
    };
    if !stream {
        return json(
            StatusCode::OK,
            &full("completed", json!([item("completed", &args)])),
        );
    }
    let mut ev = Vec::new();
    let mut seq = 0u64;
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
        json!({"output_index": 0, "item": item("in_progress", "")}),
    );
    push(
        "response.function_call_arguments.delta",
        json!({"item_id": item_id, "output_index": 0, "delta": args}),
    );
    push(
        "response.function_call_arguments.done",
        json!({"item_id": item_id, "output_index": 0, "arguments": args}),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": item("completed", &args)}),
    );
    push(
        "response.completed",
        json!({"response": full("completed", json!([item("completed", &args)]))}),
    );
    sse(ev)
}

pub(super) fn messages_tool_call(model: &str, call: &ToolCall, stream: bool) -> Response<Body> {
    let id = format!("msg_{}", rand::random::<u32>());
    let tool_id = format!("toolu_{}", rand::random::<u32>());
    if !stream {
        return json(
            StatusCode::OK,
            &json!({
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "tool_use", "id": tool_id, "name": call.name, "input": call.arguments}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 1, "output_tokens": 1},
            }),
        );
    }
    sse(vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": {"id": id, "type": "message",
                "role": "assistant", "model": model, "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block":
                {"type": "tool_use", "id": tool_id, "name": call.name, "input": {}}}),
        ),
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta":
                {"type": "input_json_delta", "partial_json": call.arguments.to_string()}}),
        ),
        event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use",
                "stop_sequence": null}, "usage": {"output_tokens": 1}}),
        ),
        event("message_stop", &json!({"type": "message_stop"})),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directive_reads_the_number_after_the_key() {
        assert_eq!(
            directive("x e2e-tool-turns=3 e2e-sleep=2", "e2e-tool-turns="),
            Some(3)
        );
        assert_eq!(directive("x e2e-sleep=", "e2e-sleep="), None);
        assert_eq!(directive("nothing", "e2e-tool-turns="), None);
    }

    #[test]
    fn counts_tool_results_in_each_api() {
        let chat = json!({"messages": [{"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": []}, {"role": "tool", "content": "ok"}]});
        assert_eq!(tool_results(Api::Chat, &chat), 1);
        // Only results since the user's last message count.
        let later = json!({"messages": [{"role": "user", "content": "hi"},
            {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "done"},
            {"role": "user", "content": [{"type": "text", "text": "again"}]}]});
        assert_eq!(tool_results(Api::Chat, &later), 0);
        let resp = json!({"input": [{"role": "user", "content": "hi"},
            {"type": "function_call"}, {"type": "function_call_output"},
            {"type": "function_call"}, {"type": "function_call_output"}]});
        assert_eq!(tool_results(Api::Responses, &resp), 2);
        let msgs = json!({"messages": [{"role": "user", "content": "hi"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]});
        assert_eq!(tool_results(Api::Messages, &msgs), 1);
    }

    #[test]
    fn stops_after_the_scripted_turns_or_without_a_bash_tool() {
        let tools = json!([{"type": "function", "function": {"name": "bash"}}]);
        let body = json!({"tools": tools, "messages": [{"role": "tool"}, {"role": "tool"}]});
        assert!(tool_turn(Api::Chat, &body, "e2e-tool-turns=3").is_some());
        assert!(tool_turn(Api::Chat, &body, "e2e-tool-turns=2").is_none());
        assert!(scripted_revocation(
            Api::Chat,
            &body,
            "e2e-revoke-at-turn=2"
        ));
        assert!(!scripted_revocation(
            Api::Chat,
            &body,
            "e2e-revoke-at-turn=1"
        ));
        let claude = json!({"tools": [{"name": "Bash"}], "messages": []});
        let call = tool_turn(Api::Messages, &claude, "e2e-tool-turns=1");
        assert_eq!(call.map(|c| c.name).as_deref(), Some("Bash"));
        let no_bash = json!({"tools": [{"name": "view"}], "messages": []});
        assert!(tool_turn(Api::Messages, &no_bash, "e2e-tool-turns=2").is_none());
    }
}
