//! The mock's Anthropic Messages API: the same deterministic answers as the OpenAI side, in
//! Anthropic's shapes (whole message, and the SSE event sequence with `ping`).

use serde_json::{Map, Value, json};

use crate::behaviour::{self, Reply};

/// An OpenAI-shaped view of an Anthropic request, so one set of answer rules serves both APIs.
pub(crate) fn openai_view(req: &Value) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = req.get("system") {
        messages.push(json!({"role": "system", "content": text(system)}));
    }
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = m.get("content").cloned().unwrap_or(Value::Null);
        let results: Vec<&Value> = content
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .collect();
        if role == "user" && !results.is_empty() {
            for r in results {
                let c = r.get("content").map(text).unwrap_or_default();
                messages.push(json!({"role": "tool", "content": c}));
            }
        } else {
            messages.push(json!({"role": role, "content": text(&content)}));
        }
    }
    let mut view = Map::new();
    view.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.get("max_tokens") {
        view.insert("max_tokens".into(), n.clone());
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.get("name"), "parameters": t.get("input_schema")}}))
            .collect();
        view.insert("tools".into(), Value::Array(tools));
    }
    match req.pointer("/tool_choice/type").and_then(Value::as_str) {
        Some("none") => {
            view.insert("tool_choice".into(), json!("none"));
        }
        Some("tool") => {
            let name = req
                .pointer("/tool_choice/name")
                .cloned()
                .unwrap_or(Value::Null);
            view.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": name}}),
            );
        }
        _ => {}
    }
    if req.pointer("/tool_choice/disable_parallel_tool_use") == Some(&Value::Bool(true)) {
        view.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    if let Some(schema) = req.pointer("/output_config/format/schema") {
        view.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}),
        );
    }
    Value::Object(view)
}

/// Text of a string or of the text blocks of a block array.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn output_tokens(reply: &Reply) -> u64 {
    match reply {
        Reply::Text { words, .. } => words.len() as u64,
        Reply::Tools(calls) => calls.iter().map(|(_, _, a)| a.len() as u64 / 4 + 1).sum(),
    }
}

fn stop_reason(reply: &Reply) -> &'static str {
    match reply {
        Reply::Text {
            truncated: true, ..
        } => "max_tokens",
        Reply::Text { .. } => "end_turn",
        Reply::Tools(_) => "tool_use",
    }
}

fn tool_id(i: usize) -> String {
    format!("toolu_mock_{i}")
}

/// A whole Messages API response.
pub(crate) fn message_json(reply: &Reply, model: &str, prompt: u64) -> Value {
    let content: Vec<Value> = match reply {
        Reply::Text { words, .. } => vec![json!({"type": "text", "text": words.concat()})],
        Reply::Tools(calls) => calls
            .iter()
            .enumerate()
            .map(|(i, (_, name, args))| {
                let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                json!({"type": "tool_use", "id": tool_id(i), "name": name, "input": input})
            })
            .collect(),
    };
    json!({
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(reply),
        "stop_sequence": null,
        "usage": {"input_tokens": prompt, "output_tokens": output_tokens(reply),
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    })
}

/// The SSE frames of a streamed answer, in Anthropic's event order.
pub(crate) fn stream_frames(reply: &Reply, model: &str, prompt: u64) -> Vec<String> {
    let frame = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut frames = vec![
        frame(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": prompt, "output_tokens": 1,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
        ),
        frame("ping", json!({"type": "ping"})),
    ];
    match reply {
        Reply::Text { words, .. } => {
            frames.push(frame(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            for w in words {
                frames.push(frame(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}),
                ));
            }
            frames.push(frame(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
        }
        Reply::Tools(calls) => {
            for (i, (_, name, args)) in calls.iter().enumerate() {
                frames.push(frame(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": tool_id(i), "name": name, "input": {}}}),
                ));
                let mid = args
                    .char_indices()
                    .nth(args.chars().count() / 2)
                    .map_or(0, |(b, _)| b);
                for piece in [&args[..mid], &args[mid..]] {
                    frames.push(frame(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": piece}}),
                    ));
                }
                frames.push(frame(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": i}),
                ));
            }
        }
    }
    frames.push(frame(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason(reply), "stop_sequence": null},
               "usage": {"output_tokens": output_tokens(reply)}}),
    ));
    frames.push(frame("message_stop", json!({"type": "message_stop"})));
    frames
}

/// An error body in Anthropic's shape for a status.
pub(crate) fn error_body(status: u16, message: &str) -> String {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
}

/// Prompt tokens and the answer for an Anthropic request.
pub(crate) fn answer(req: &Value) -> (Reply, u64) {
    let view = openai_view(req);
    (behaviour::reply_for(&view), behaviour::prompt_tokens(&view))
}
