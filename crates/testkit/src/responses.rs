//! The mock's OpenAI Responses API (`/v1/responses`, Azure's `/openai/v1/responses`): the
//! request is read into the Chat Completions view the shared behaviour decides on, and answered
//! as a response object or the typed event stream. A request that asks for reasoning gets a
//! reasoning item with encrypted content first, so tests can check it comes back next turn.

use serde_json::{Value, json};

use crate::behaviour::{self, Reply, text_of};

/// The encrypted content of the mock's reasoning item.
pub const MOCK_ENCRYPTED_REASONING: &str = "gAAAAmock-encrypted-reasoning";

/// The request as the Chat Completions view the behaviour reads.
fn openai_view(req: &Value) -> Value {
    let mut messages = Vec::new();
    if let Some(i) = req.get("instructions").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": i}));
    }
    let items = match req.get("input") {
        Some(Value::String(s)) => vec![json!({"role": "user", "content": s})],
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    for item in &items {
        match item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
        {
            "message" => messages.push(json!({
                "role": item.get("role").cloned().unwrap_or_else(|| json!("user")),
                "content": text_of(item.get("content")),
            })),
            "function_call" => messages.push(json!({"role": "assistant", "tool_calls": [{
                "id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]}}]})),
            "function_call_output" => messages.push(json!({
                "role": "tool", "tool_call_id": item["call_id"],
                "content": item.get("output").map(|o| text_of(Some(o))).unwrap_or_default()})),
            _ => {}
        }
    }
    let tools: Vec<Value> = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
        .map(|t| json!({"type": "function", "function": {"name": t["name"], "parameters": t["parameters"]}}))
        .collect();
    let mut view = json!({"messages": messages});
    if !tools.is_empty() {
        view["tools"] = Value::Array(tools);
    }
    match req.get("tool_choice") {
        Some(Value::Object(c)) => {
            view["tool_choice"] = json!({"type": "function", "function": {"name": c.get("name")}});
        }
        Some(v) => view["tool_choice"] = v.clone(),
        None => {}
    }
    if let Some(p) = req.get("parallel_tool_calls") {
        view["parallel_tool_calls"] = p.clone();
    }
    if let Some(n) = req.get("max_output_tokens") {
        view["max_tokens"] = n.clone();
    }
    match req.pointer("/text/format/type").and_then(Value::as_str) {
        Some("json_schema") => {
            view["response_format"] = json!({"type": "json_schema",
                "json_schema": {"schema": req.pointer("/text/format/schema")}});
        }
        Some("json_object") => view["response_format"] = json!({"type": "json_object"}),
        _ => {}
    }
    view
}

/// What a Responses request gets besides the shared behaviour's reply: a reasoning item first
/// when it asked for reasoning, a web search (a `web_search_call` item, and a citation on the
/// text) when it offered the hosted `web_search` tool.
#[derive(Clone, Copy, Default)]
pub(crate) struct Extras {
    pub reasoning: bool,
    pub web_search: bool,
}

/// The reply to a Responses request, its prompt size, and its extras.
pub(crate) fn answer(req: &Value) -> (Reply, u64, Extras) {
    let view = openai_view(req);
    let web_search = req.get("tools").and_then(Value::as_array).is_some_and(|t| {
        t.iter()
            .any(|t| t.get("type").and_then(Value::as_str) == Some("web_search"))
    });
    let extras = Extras {
        reasoning: req.get("reasoning").is_some_and(|r| !r.is_null()),
        web_search,
    };
    (
        behaviour::reply_for(&view),
        behaviour::prompt_tokens(&view),
        extras,
    )
}

fn web_search_item() -> Value {
    json!({"id": "ws_mock_0", "type": "web_search_call", "status": "completed",
           "action": {"type": "search", "query": "mock search"}})
}

/// The citation a web-searched answer carries.
pub const MOCK_CITATION_URL: &str = "https://example.com/mock-source";

fn annotations(web_search: bool) -> Value {
    if web_search {
        json!([{"type": "url_citation", "url": MOCK_CITATION_URL, "title": "Mock source",
                "start_index": 0, "end_index": 5}])
    } else {
        json!([])
    }
}

fn usage(prompt: u64, completion: u64, reasoning: bool) -> Value {
    let thought = if reasoning { 5 } else { 0 };
    json!({"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
           "output_tokens": completion + thought, "output_tokens_details": {"reasoning_tokens": thought},
           "total_tokens": prompt + completion + thought})
}

fn reasoning_item() -> Value {
    json!({"id": "rs_mock_0", "type": "reasoning",
           "summary": [{"type": "summary_text", "text": "Mock reasoning."}],
           "encrypted_content": MOCK_ENCRYPTED_REASONING})
}

fn output(reply: &Reply, web_search: bool) -> Vec<Value> {
    match reply {
        Reply::Text { words, .. } => vec![
            json!({"id": "msg_mock_1", "type": "message", "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": words.concat(),
            "annotations": annotations(web_search)}]}),
        ],
        Reply::Tools(calls) => calls
            .iter()
            .enumerate()
            .map(|(i, (id, name, args))| {
                json!({"id": format!("fc_mock_{i}"), "type": "function_call",
                "status": "completed", "call_id": id, "name": name, "arguments": args})
            })
            .collect(),
    }
}

fn object(reply: &Reply, model: &str, prompt: u64, extras: Extras, done: bool) -> Value {
    let reasoning = extras.reasoning;
    let truncated = matches!(
        reply,
        Reply::Text {
            truncated: true,
            ..
        }
    );
    let mut out = Vec::new();
    if done {
        if reasoning {
            out.push(reasoning_item());
        }
        if extras.web_search {
            out.push(web_search_item());
        }
        out.extend(output(reply, extras.web_search));
    }
    json!({
        "id": "resp_mock", "object": "response", "created_at": 1_700_000_000,
        "status": if !done { "in_progress" } else if truncated { "incomplete" } else { "completed" },
        "incomplete_details": if done && truncated { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "error": null, "model": model, "output": out,
        "usage": if done { usage(prompt, behaviour::completion_tokens(reply), reasoning) } else { Value::Null },
    })
}

/// A whole response object.
pub(crate) fn response_json(reply: &Reply, model: &str, prompt: u64, extras: Extras) -> Value {
    object(reply, model, prompt, extras, true)
}

/// The typed event stream, one SSE frame per event.
pub(crate) fn stream_frames(
    reply: &Reply,
    model: &str,
    prompt: u64,
    extras: Extras,
) -> Vec<String> {
    let reasoning = extras.reasoning;
    let mut frames = Vec::new();
    let mut seq = 0u64;
    let mut emit = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        frames.push(format!("event: {kind}\ndata: {data}\n\n"));
    };
    let start = object(reply, model, prompt, extras, false);
    emit("response.created", json!({"response": start.clone()}));
    emit("response.in_progress", json!({"response": start}));
    let mut index = 0;
    if reasoning {
        emit(
            "response.output_item.added",
            json!({"output_index": 0,
            "item": {"id": "rs_mock_0", "type": "reasoning", "summary": []}}),
        );
        emit(
            "response.reasoning_summary_text.delta",
            json!({"item_id": "rs_mock_0",
            "output_index": 0, "summary_index": 0, "delta": "Mock reasoning."}),
        );
        emit(
            "response.output_item.done",
            json!({"output_index": 0, "item": reasoning_item()}),
        );
        index = 1;
    }
    if extras.web_search {
        let mut added = web_search_item();
        added["status"] = json!("in_progress");
        emit(
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        );
        emit(
            "response.web_search_call.completed",
            json!({"output_index": index, "item_id": "ws_mock_0"}),
        );
        emit(
            "response.output_item.done",
            json!({"output_index": index, "item": web_search_item()}),
        );
        index += 1;
    }
    match reply {
        Reply::Text { words, .. } => {
            let item = json!({"id": "msg_mock_1", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []});
            emit(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            emit(
                "response.content_part.added",
                json!({"item_id": "msg_mock_1", "output_index": index, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            for w in words {
                emit(
                    "response.output_text.delta",
                    json!({"item_id": "msg_mock_1",
                    "output_index": index, "content_index": 0, "delta": w}),
                );
            }
            emit(
                "response.output_text.done",
                json!({"item_id": "msg_mock_1",
                "output_index": index, "content_index": 0, "text": words.concat()}),
            );
            emit(
                "response.content_part.done",
                json!({"item_id": "msg_mock_1", "output_index": index, "content_index": 0,
                       "part": output(reply, extras.web_search)[0]["content"][0]}),
            );
            if extras.web_search {
                emit(
                    "response.output_text.annotation.added",
                    json!({"item_id": "msg_mock_1", "output_index": index, "content_index": 0,
                           "annotation_index": 0, "annotation": annotations(true)[0]}),
                );
            }
            emit(
                "response.output_item.done",
                json!({"output_index": index,
                "item": output(reply, extras.web_search)[0]}),
            );
        }
        Reply::Tools(_) => {
            for (i, item) in output(reply, false).into_iter().enumerate() {
                let at = index + i;
                let id = item["id"].clone();
                let args = item["arguments"].as_str().unwrap_or_default().to_owned();
                let mut added = item.clone();
                added["arguments"] = json!("");
                added["status"] = json!("in_progress");
                emit(
                    "response.output_item.added",
                    json!({"output_index": at, "item": added}),
                );
                let mid = args
                    .char_indices()
                    .nth(args.chars().count() / 2)
                    .map_or(0, |(b, _)| b);
                for piece in [&args[..mid], &args[mid..]] {
                    emit(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id,
                        "output_index": at, "delta": piece}),
                    );
                }
                emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": id,
                    "output_index": at, "arguments": args}),
                );
                emit(
                    "response.output_item.done",
                    json!({"output_index": at, "item": item}),
                );
            }
        }
    }
    let done = object(reply, model, prompt, extras, true);
    let kind = if done["status"] == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    emit(kind, json!({"response": done}));
    frames
}
