//! The OpenAI Responses API upstream: `wire_api = "responses"` on an `openai_compat` or `azure`
//! provider sends chat requests to `/responses` instead of `/chat/completions`, so models served
//! only there are usable, and decodes its answers (whole, or the typed event stream) into
//! canonical events.
//!
//! relais keeps conversation state itself, so every request is stateless upstream
//! (`store: false`) and asks for `reasoning.encrypted_content`: the reasoning of one turn goes
//! back on the next as a reasoning item. Its id and encrypted content travel in the canonical
//! reasoning signature as `{id}:{encrypted_content}`; a signature of another form (another
//! vendor's) is not OpenAI's to read, and is left out with a debug log line.
//!
//! What the Responses API has no field for (`stop`, `seed`, `top_k`) is refused by name.

use std::collections::HashMap;

use relais_core::{
    ChatRequest, ContentPart, Error, ErrorKind, FinishReason, ImageSource, ResponseFormat, Role,
    StreamEvent, ToolChoice, Usage,
};
use serde_json::{Map, Value, json};

use crate::sse::{SseDecode, SseEvent};

/// Chat Completions fields a Responses upstream takes under the same name.
const FORWARDED_EXTRAS: [&str; 3] = ["prompt_cache_key", "service_tier", "prompt_cache_retention"];

/// A reasoning item's id and encrypted content as one canonical signature.
pub(crate) fn signature(id: &str, encrypted: &str) -> String {
    format!("{id}:{encrypted}")
}

/// The reasoning item a canonical signature stands for, if it is one of ours.
fn reasoning_item(text: &str, signature: &str) -> Option<Value> {
    let (id, encrypted) = signature.split_once(':')?;
    if !id.starts_with("rs_") || encrypted.is_empty() {
        return None;
    }
    let summary = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    };
    Some(json!({"type": "reasoning", "id": id, "summary": summary, "encrypted_content": encrypted}))
}

fn unsupported(what: &str) -> Error {
    Error::unsupported(format!(
        "{what} is not supported by the Responses API upstream"
    ))
}

fn image_url(source: &ImageSource) -> String {
    match source {
        ImageSource::Url(u) => u.clone(),
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
    }
}

/// A user, system or developer message's parts as `input_*` content.
fn input_content(parts: &[ContentPart], items: &mut Vec<Value>) -> Result<Vec<Value>, Error> {
    let mut content = Vec::new();
    for p in parts {
        match p {
            ContentPart::Text(t) => content.push(json!({"type": "input_text", "text": t})),
            ContentPart::Image { source, detail } => {
                let mut v = json!({"type": "input_image", "image_url": image_url(source)});
                if let Some(d) = detail {
                    v["detail"] = Value::String(d.clone());
                }
                content.push(v);
            }
            ContentPart::Document {
                data,
                file_id,
                filename,
            } => {
                let mut v = json!({"type": "input_file"});
                if let Some(d) = data {
                    v["file_data"] = Value::String(d.clone());
                }
                if let Some(f) = file_id {
                    v["file_id"] = Value::String(f.clone());
                }
                if let Some(n) = filename {
                    v["filename"] = Value::String(n.clone());
                }
                content.push(v);
            }
            // Anthropic-style results inside a user turn: an item of their own.
            ContentPart::ToolResult {
                call_id,
                content: c,
                ..
            } => {
                items.push(json!({"type": "function_call_output", "call_id": call_id, "output": c}))
            }
            ContentPart::CacheBreakpoint(_) | ContentPart::Reasoning { .. } => {}
            ContentPart::ToolCall(c) => {
                return Err(Error::bad_request(format!(
                    "tool call '{}' is in a user message; calls belong to assistant messages",
                    c.id
                )));
            }
            ContentPart::Opaque { family, .. } => {
                return Err(unsupported(&format!("a {family} content part")));
            }
        }
    }
    Ok(content)
}

/// An assistant message as output items, in order: reasoning, text, refusals, calls.
fn assistant_items(parts: &[ContentPart], items: &mut Vec<Value>) {
    let mut text: Vec<Value> = Vec::new();
    let flush = |text: &mut Vec<Value>, items: &mut Vec<Value>| {
        if !text.is_empty() {
            items.push(
                json!({"type": "message", "role": "assistant", "content": std::mem::take(text)}),
            );
        }
    };
    for p in parts {
        match p {
            ContentPart::Text(t) if !t.is_empty() => {
                text.push(json!({"type": "output_text", "text": t, "annotations": []}));
            }
            ContentPart::ToolCall(c) => {
                flush(&mut text, items);
                items.push(json!({"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments}));
            }
            ContentPart::Reasoning {
                text: t,
                signature: Some(s),
            } => match reasoning_item(t, s) {
                Some(item) => {
                    flush(&mut text, items);
                    items.push(item);
                }
                None => tracing::debug!(
                    "reasoning left out: its signature is another vendor's, not a Responses reasoning item"
                ),
            },
            _ => {}
        }
    }
    flush(&mut text, items);
}

/// The canonical request as a Responses API body for `model`.
pub(crate) fn encode(req: &ChatRequest, model: &str) -> Result<Value, Error> {
    if !req.stop.is_empty() {
        return Err(unsupported("'stop'").with_param("stop"));
    }
    if req.seed.is_some() {
        return Err(unsupported("'seed'").with_param("seed"));
    }
    if req.top_k.is_some() {
        return Err(unsupported("'top_k'").with_param("top_k"));
    }
    crate::drop_vendor_beta(req, "openai_responses");
    let mut items = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        match m.role {
            Role::System | Role::Developer | Role::User => {
                let content = input_content(&m.content, &mut items)?;
                if !content.is_empty() {
                    items.push(
                        json!({"type": "message", "role": m.role.as_str(), "content": content}),
                    );
                }
            }
            Role::Assistant => assistant_items(&m.content, &mut items),
            Role::Tool => {
                for p in &m.content {
                    if let ContentPart::ToolResult {
                        call_id, content, ..
                    } = p
                    {
                        items.push(json!({"type": "function_call_output", "call_id": call_id, "output": content}));
                    }
                }
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("input".into(), Value::Array(items));
    body.insert("stream".into(), req.stream.into());
    body.insert("store".into(), false.into());
    body.insert("include".into(), json!(["reasoning.encrypted_content"]));
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut v = json!({"type": "function", "name": t.name,
                    "parameters": t.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
                if let Some(d) = &t.description {
                    v["description"] = Value::String(d.clone());
                }
                v["strict"] = t.strict.unwrap_or(false).into();
                v
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = &req.tool_choice {
        let v = match choice {
            ToolChoice::None => json!("none"),
            ToolChoice::Auto => json!("auto"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "name": name}),
        };
        body.insert("tool_choice".into(), v);
    }
    if let Some(p) = req.parallel_tool_calls {
        body.insert("parallel_tool_calls".into(), p.into());
    }
    match &req.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            body.insert("text".into(), json!({"format": {"type": "json_object"}}));
        }
        Some(ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
            description,
        }) => {
            let mut f = json!({"type": "json_schema", "name": name,
                "schema": schema.clone().unwrap_or_else(|| json!({"type": "object"}))});
            if let Some(s) = strict {
                f["strict"] = (*s).into();
            }
            if let Some(d) = description {
                f["description"] = Value::String(d.clone());
            }
            body.insert("text".into(), json!({ "format": f }));
        }
    }
    if let Some(r) = &req.reasoning {
        let effort = match (&r.effort, r.budget_tokens) {
            (Some(e), _) => Some(e.clone()),
            // A budget has no field here: the nearest effort.
            (None, Some(b)) if b <= 2_048 => Some("low".to_owned()),
            (None, Some(b)) if b <= 16_384 => Some("medium".to_owned()),
            (None, Some(_)) => Some("high".to_owned()),
            (None, None) => None,
        };
        if let Some(e) = effort {
            body.insert("reasoning".into(), json!({"effort": e, "summary": "auto"}));
        }
    }
    if let Some(n) = req.max_output_tokens {
        body.insert("max_output_tokens".into(), n.into());
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), t.into());
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), p.into());
    }
    if let Some(u) = &req.user {
        body.insert("safety_identifier".into(), Value::String(u.clone()));
    }
    if req.extra_family == Some("openai") {
        for key in FORWARDED_EXTRAS {
            if let Some(v) = req.extra.get(key) {
                body.insert(key.to_owned(), v.clone());
            }
        }
    }
    Ok(Value::Object(body))
}

/// A Responses client's own request, for this upstream: whole (hosted tools, annotations,
/// every field it sent), with the model this deployment names, stateless like every request
/// here (`store: false`, encrypted reasoning asked for), and streaming as the client asked.
pub(crate) fn native(body: &Map<String, Value>, req: &ChatRequest, model: &str) -> Value {
    let mut body = body.clone();
    body.insert("model".into(), model.into());
    body.insert("stream".into(), req.stream.into());
    body.insert("store".into(), false.into());
    let include = body
        .entry("include")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = include {
        if !list.iter().any(|v| v == "reasoning.encrypted_content") {
            list.push("reasoning.encrypted_content".into());
        }
    }
    Value::Object(body)
}

fn usage(u: &Value) -> Usage {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n("/input_tokens"),
        output_tokens: n("/output_tokens"),
        cache_read_tokens: n("/input_tokens_details/cached_tokens"),
        cache_write_tokens: n("/input_tokens_details/cache_write_tokens"),
        reasoning_tokens: n("/output_tokens_details/reasoning_tokens"),
    }
}

fn protocol(what: impl Into<String>) -> Error {
    Error::protocol(what)
}

/// The error of a failed response (`response.failed`'s `response.error`, or an `error` event).
fn failure(err: Option<&Value>) -> Error {
    match err {
        Some(e) if !e.is_null() => super::error::in_stream_error(e),
        _ => Error::upstream(ErrorKind::Server, "the upstream response failed"),
    }
}

/// A tool call being streamed.
struct OpenCall {
    index: u32,
    /// A custom tool's input so far (`None` for a function).
    input: Option<String>,
    /// Some of a function's arguments were streamed as deltas.
    streamed: bool,
    /// OpenAI's parallel-call wrapper (`multi_tool_use.parallel`): its arguments, held until
    /// the item is done and unwrapped into the calls it names.
    wrapper: Option<(String, String)>,
}

/// Whether a call may be OpenAI's parallel-call wrapper (confirmed by its arguments' shape).
fn may_wrap(name: &str) -> bool {
    matches!(name, "multi_tool_use.parallel" | "parallel")
}

/// The calls a parallel-call wrapper names: `{"tool_uses": [{"recipient_name":
/// "functions.NAME", "parameters": {...}}]}`; `None` when the arguments are not that.
fn unwrap_parallel(arguments: &str) -> Option<Vec<(String, String)>> {
    let v: Value = serde_json::from_str(arguments).ok()?;
    let uses = v.get("tool_uses")?.as_array()?;
    uses.iter()
        .map(|u| {
            let name = u
                .get("recipient_name")?
                .as_str()?
                .strip_prefix("functions.")?;
            let params = u.get("parameters").cloned().unwrap_or_else(|| json!({}));
            Some((name.to_owned(), params.to_string()))
        })
        .collect()
}

/// Decodes a Responses API answer, streamed or whole, into canonical events.
#[derive(Default)]
pub(crate) struct ResponsesDecoder {
    /// Forward the answer's events as they came ([`StreamEvent::Native`]), decoding only the
    /// start, usage, finish and errors: the client speaks this API too.
    native: bool,
    started: bool,
    finished: bool,
    /// Tool calls by item id, until their item is done.
    calls: HashMap<String, OpenCall>,
    next_call: u32,
}

impl ResponsesDecoder {
    pub(crate) fn forwarding(native: bool) -> Self {
        Self {
            native,
            ..Self::default()
        }
    }

    /// A natively answered event: the lifecycle decoded, the rest forwarded.
    fn forward(
        &mut self,
        ev: &Value,
        data: String,
        out: &mut Vec<StreamEvent>,
    ) -> Result<bool, Error> {
        match ev.get("type").and_then(Value::as_str).unwrap_or_default() {
            "response.created" | "response.in_progress" => self.start(ev.get("response"), out),
            "response.completed" | "response.incomplete" => {
                let response = ev.get("response").unwrap_or(&Value::Null);
                self.start(Some(response), out);
                self.end(response, out)?;
                return Ok(true);
            }
            "response.failed" => return Err(failure(ev.pointer("/response/error"))),
            "error" => return Err(failure(ev.get("error").or(Some(ev)))),
            kind => {
                self.start(None, out);
                if kind == "response.output_item.added" && is_call(ev.get("item")) {
                    // Counted for the finish reason only.
                    self.next_call += 1;
                }
                out.push(StreamEvent::Native(data));
            }
        }
        Ok(false)
    }

    fn start(&mut self, response: Option<&Value>, out: &mut Vec<StreamEvent>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let s = |k: &str| {
            response
                .and_then(|r| r.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        out.push(StreamEvent::Start {
            id: s("id"),
            model: s("model"),
        });
    }

    fn call_start(&mut self, item: &Value, out: &mut Vec<StreamEvent>) {
        let custom = item.get("type").and_then(Value::as_str) == Some("custom_tool_call");
        let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
        let call_id = item
            .get("call_id")
            .and_then(Value::as_str)
            .unwrap_or(id)
            .to_owned();
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if !custom && may_wrap(&name) {
            // Held: what it calls is known only from its whole arguments.
            self.calls.insert(
                id.to_owned(),
                OpenCall {
                    index: 0,
                    input: None,
                    streamed: false,
                    wrapper: Some((call_id, name)),
                },
            );
            return;
        }
        let index = self.next_call;
        self.next_call += 1;
        self.calls.insert(
            id.to_owned(),
            OpenCall {
                index,
                input: custom.then(String::new),
                streamed: false,
                wrapper: None,
            },
        );
        out.push(StreamEvent::ToolCallStart {
            index,
            id: call_id,
            name,
        });
    }

    /// A parallel-call wrapper, done: the calls it names, or itself when it names none.
    fn unwrap(
        &mut self,
        call_id: String,
        name: String,
        arguments: &str,
        out: &mut Vec<StreamEvent>,
    ) {
        let calls = unwrap_parallel(arguments)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| vec![(name, arguments.to_owned())]);
        let many = calls.len() > 1;
        for (n, (name, arguments)) in calls.into_iter().enumerate() {
            let index = self.next_call;
            self.next_call += 1;
            let id = if many {
                format!("{call_id}_{n}")
            } else {
                call_id.clone()
            };
            out.push(StreamEvent::ToolCallStart { index, id, name });
            out.push(StreamEvent::ToolCallDelta { index, arguments });
        }
    }

    /// A whole output item (from a whole response): its events.
    fn item(&mut self, item: &Value, out: &mut Vec<StreamEvent>) {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                for part in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match part.get("type").and_then(Value::as_str) {
                        Some("output_text") => {
                            let t = part.get("text").and_then(Value::as_str).unwrap_or_default();
                            out.push(StreamEvent::TextDelta(t.to_owned()));
                        }
                        Some("refusal") => {
                            let t = part
                                .get("refusal")
                                .and_then(Value::as_str)
                                .unwrap_or_default();
                            out.push(StreamEvent::RefusalDelta(t.to_owned()));
                        }
                        _ => {}
                    }
                }
            }
            Some("function_call" | "custom_tool_call") => {
                self.call_start(item, out);
                self.call_done(item, out);
            }
            Some("reasoning") => {
                let text = reasoning_text(item);
                if !text.is_empty() {
                    out.push(StreamEvent::ReasoningDelta {
                        text,
                        signature: None,
                    });
                }
                self.reasoning_done(item, out);
            }
            // Hosted tools' items (web search, ...) have no canonical form; relais never asks
            // for those tools through this provider.
            _ => {}
        }
    }

    fn reasoning_done(&self, item: &Value, out: &mut Vec<StreamEvent>) {
        let id = item.get("id").and_then(Value::as_str);
        let enc = item.get("encrypted_content").and_then(Value::as_str);
        if let (Some(id), Some(enc)) = (id, enc) {
            out.push(StreamEvent::ReasoningDelta {
                text: String::new(),
                signature: Some(signature(id, enc)),
            });
        }
    }

    /// A call's arguments once it is done: a function's when none were streamed, a custom
    /// tool's input as the `input` argument.
    fn call_done(&mut self, item: &Value, out: &mut Vec<StreamEvent>) {
        let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
        let Some(call) = self.calls.remove(id) else {
            return;
        };
        if let Some((call_id, name)) = call.wrapper {
            let arguments = item
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or_default();
            self.unwrap(call_id, name, arguments, out);
            return;
        }
        let arguments = match call.input {
            Some(streamed) => {
                let input = item
                    .get("input")
                    .and_then(Value::as_str)
                    .map_or(streamed, str::to_owned);
                json!({ "input": input }).to_string()
            }
            None if call.streamed => return,
            None => item
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        };
        if !arguments.is_empty() {
            out.push(StreamEvent::ToolCallDelta {
                index: call.index,
                arguments,
            });
        }
    }

    fn end(&mut self, response: &Value, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        if let Some(u) = response.get("usage").filter(|u| !u.is_null()) {
            out.push(StreamEvent::Usage(usage(u)));
        }
        let finish = match response.get("status").and_then(Value::as_str) {
            Some("incomplete") => match response
                .pointer("/incomplete_details/reason")
                .and_then(Value::as_str)
            {
                Some("max_output_tokens") => FinishReason::Length,
                Some("content_filter") => FinishReason::ContentFilter,
                _ => FinishReason::Other,
            },
            Some("failed") => return Err(failure(response.get("error"))),
            _ if self.next_call > 0 => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        };
        out.push(StreamEvent::Finish(finish));
        self.finished = true;
        Ok(())
    }

    /// One streamed event; `true` once the response ended.
    pub(crate) fn decode(&mut self, ev: &Value, out: &mut Vec<StreamEvent>) -> Result<bool, Error> {
        let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default();
        let s = |k: &str| ev.get(k).and_then(Value::as_str).unwrap_or_default();
        match kind {
            "response.created" | "response.in_progress" => self.start(ev.get("response"), out),
            "response.output_text.delta" => {
                self.start(None, out);
                out.push(StreamEvent::TextDelta(s("delta").to_owned()));
            }
            "response.refusal.delta" => {
                self.start(None, out);
                out.push(StreamEvent::RefusalDelta(s("delta").to_owned()));
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                self.start(None, out);
                out.push(StreamEvent::ReasoningDelta {
                    text: s("delta").to_owned(),
                    signature: None,
                });
            }
            "response.reasoning_summary_part.done"
                if ev.get("summary_index").and_then(Value::as_u64) > Some(0) => {}
            "response.reasoning_summary_part.added"
                if ev.get("summary_index").and_then(Value::as_u64) > Some(0) =>
            {
                // Summaries after the first read as paragraphs of one text.
                out.push(StreamEvent::ReasoningDelta {
                    text: "\n\n".to_owned(),
                    signature: None,
                });
            }
            "response.output_item.added" => {
                self.start(None, out);
                let item = ev.get("item").unwrap_or(&Value::Null);
                if matches!(
                    item.get("type").and_then(Value::as_str),
                    Some("function_call" | "custom_tool_call")
                ) {
                    self.call_start(item, out);
                }
            }
            "response.function_call_arguments.delta" => {
                if let Some(call) = self.calls.get_mut(s("item_id")) {
                    if call.input.is_none() && call.wrapper.is_none() {
                        call.streamed = true;
                        out.push(StreamEvent::ToolCallDelta {
                            index: call.index,
                            arguments: s("delta").to_owned(),
                        });
                    }
                }
            }
            "response.custom_tool_call_input.delta" => {
                if let Some(input) = self
                    .calls
                    .get_mut(s("item_id"))
                    .and_then(|c| c.input.as_mut())
                {
                    input.push_str(s("delta"));
                }
            }
            "response.output_item.done" => {
                let item = ev.get("item").unwrap_or(&Value::Null);
                match item.get("type").and_then(Value::as_str) {
                    Some("reasoning") => self.reasoning_done(item, out),
                    // Arguments or input not streamed come whole with the item.
                    Some("function_call" | "custom_tool_call") => self.call_done(item, out),
                    _ => {}
                }
            }
            "response.completed" | "response.incomplete" => {
                let response = ev.get("response").unwrap_or(&Value::Null);
                self.start(Some(response), out);
                self.end(response, out)?;
                return Ok(true);
            }
            "response.failed" => return Err(failure(ev.pointer("/response/error"))),
            "error" => return Err(failure(ev.get("error").or(Some(ev)))),
            _ => {}
        }
        Ok(false)
    }
}

fn reasoning_text(item: &Value) -> String {
    let texts = |key: &str| -> Vec<&str> {
        item.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default()
    };
    let summary = texts("summary");
    if summary.is_empty() {
        texts("content").join("\n\n")
    } else {
        summary.join("\n\n")
    }
}

impl SseDecode for ResponsesDecoder {
    fn event(&mut self, ev: &mut SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, Error> {
        if ev.data.trim().is_empty() || ev.data == "[DONE]" {
            return Ok(false);
        }
        match parse_event(&ev.data) {
            Ok(v) if self.native => {
                let data = std::mem::take(&mut ev.data);
                self.forward(&v, data, out)
            }
            Ok(v) => self.decode(&v, out),
            Err(e) => Err(protocol(format!(
                "upstream sent an invalid Responses event: {e}"
            ))),
        }
    }

    fn complete(&self) -> bool {
        self.finished
    }
}

/// An event's JSON. An event whose text ends before its last closing braces (seen in
/// recordings) is read with them put back: nothing of it is lost. Any other fault is an error.
fn parse_event(data: &str) -> Result<Value, serde_json::Error> {
    let first = match serde_json::from_str::<Value>(data) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if first.classify() != serde_json::error::Category::Eof {
        return Err(first);
    }
    let mut repaired = data.trim_end().to_owned();
    for _ in 0..3 {
        repaired.push('}');
        if let Ok(v) = serde_json::from_str::<Value>(&repaired) {
            return Ok(v);
        }
    }
    Err(first)
}

fn is_call(item: Option<&Value>) -> bool {
    matches!(
        item.and_then(|i| i.get("type")).and_then(Value::as_str),
        Some("function_call" | "custom_tool_call")
    )
}

/// A whole (non-streaming) response object as events; `native`: its output items forwarded
/// as they came (as `response.output_item.done` events).
pub(crate) fn decode_whole(body: &[u8], native: bool) -> Result<Vec<StreamEvent>, Error> {
    let response: Value = serde_json::from_slice(body)
        .map_err(|e| protocol(format!("upstream sent an invalid Responses body: {e}")))?;
    if response.get("output").is_none() {
        return Err(match response.get("error").filter(|e| !e.is_null()) {
            Some(e) => failure(Some(e)),
            None => protocol("upstream sent a Responses body without output"),
        });
    }
    let mut d = ResponsesDecoder::default();
    let mut out = Vec::new();
    d.start(Some(&response), &mut out);
    let output = response.get("output").and_then(Value::as_array);
    for (i, item) in output.into_iter().flatten().enumerate() {
        if !native {
            d.item(item, &mut out);
            continue;
        }
        if is_call(Some(item)) {
            d.next_call += 1;
        }
        let ev = json!({"type": "response.output_item.done", "output_index": i, "item": item});
        out.push(StreamEvent::Native(ev.to_string()));
    }
    d.end(&response, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relais_core::{Collector, Message, Reasoning, Tool, ToolCall};

    fn fold(events: &[StreamEvent]) -> relais_core::ChatResponse {
        let mut c = Collector::new();
        for e in events {
            c.push(e).unwrap();
        }
        c.finish()
    }

    /// The responses of a recording (some hold several streams back to back), each decoded as
    /// a live stream is, through the SSE decoder.
    fn streams(rel: &str) -> Result<Vec<Vec<StreamEvent>>, Error> {
        let text = std::fs::read_to_string(super::super::tests::fixture(rel)).unwrap();
        let mut all = Vec::new();
        let mut d = ResponsesDecoder::default();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut ev = SseEvent {
                event: None,
                data: line.to_owned(),
            };
            if d.event(&mut ev, &mut out)? {
                all.push(std::mem::take(&mut out));
                d = ResponsesDecoder::default();
            }
        }
        if !out.is_empty() {
            all.push(out);
        }
        Ok(all)
    }

    /// The last response of a recording.
    fn chunks(rel: &str) -> Result<Vec<StreamEvent>, Error> {
        Ok(streams(rel)?.pop().unwrap_or_default())
    }

    fn whole(rel: &str) -> Result<Vec<StreamEvent>, Error> {
        decode_whole(
            &std::fs::read(super::super::tests::fixture(rel)).unwrap(),
            false,
        )
    }

    /// Every recording of the Responses API decodes: the streams to the same answer as their
    /// whole counterparts where both exist, errors to errors.
    #[test]
    fn every_responses_recording_decodes() {
        let dir = super::super::tests::fixture("openai-responses");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let rel = format!("openai-responses/{name}");
            let failed = name.contains("error") || name.contains("failed");
            let result = if name.ends_with(".chunks.txt") {
                streams(&rel)
            } else {
                whole(&rel).map(|w| vec![w])
            };
            match result {
                Ok(responses) => {
                    assert!(!failed, "{name} decoded without its error");
                    for events in &responses {
                        let r = fold(events);
                        assert!(r.finish.is_some(), "{name}: no finish");
                        assert!(r.usage.is_some(), "{name}: no usage");
                        assert!(
                            !r.text.is_empty() || !r.tool_calls.is_empty(),
                            "{name}: nothing decoded"
                        );
                    }
                }
                Err(e) => assert!(failed, "{name}: {}", e.message),
            }
            seen += 1;
        }
        assert!(seen >= 19, "only {seen} recordings");
    }

    #[test]
    fn streams_and_whole_answers_agree() {
        for stem in [
            "azure-tool-call.1",
            "openai-custom-tool.1",
            "parallel-tool-call-wrapper.1",
            "issue-20047-openai-responses",
        ] {
            let s = fold(&chunks(&format!("openai-responses/{stem}.chunks.txt")).unwrap());
            let w = fold(&whole(&format!("openai-responses/{stem}.json")).unwrap());
            assert_eq!(s.text, w.text, "{stem}");
            // Some pairs are separate recordings: their call ids differ.
            let calls = |r: &relais_core::ChatResponse| -> Vec<(String, String)> {
                r.tool_calls
                    .iter()
                    .map(|c| (c.name.clone(), c.arguments.clone()))
                    .collect()
            };
            assert_eq!(calls(&s), calls(&w), "{stem}");
            assert_eq!(s.finish, w.finish, "{stem}");
            assert_eq!(s.reasoning_signature, w.reasoning_signature, "{stem}");
        }
        let streamed =
            streams("openai-responses/openai-reasoning-encrypted-content.1.chunks.txt").unwrap();
        assert_eq!(streamed.len(), 4);
        let first = fold(&streamed[0]);
        assert!(
            first
                .reasoning_signature
                .is_some_and(|s| s.starts_with("rs_"))
        );
        assert!(!first.reasoning.is_empty() && first.finish == Some(FinishReason::ToolCalls));
        let parallel = fold(&whole("openai-responses/parallel-tool-call-wrapper.1.json").unwrap());
        let names: Vec<&str> = parallel
            .tool_calls
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["weather", "cityAttractions"]);
        let r = fold(&whole("openai-responses/openai-reasoning-encrypted-content.1.json").unwrap());
        let sig = r.reasoning_signature.unwrap();
        assert!(sig.starts_with("rs_") && sig.contains(":gAAAA"), "{sig}");
        assert_eq!(r.usage.unwrap().reasoning_tokens, 128);
        let custom = fold(&whole("openai-responses/openai-custom-tool.1.json").unwrap());
        let args: Value = serde_json::from_str(&custom.tool_calls[0].arguments).unwrap();
        assert!(args["input"].is_string());
    }

    /// A Responses client's request answered by a Responses upstream: every event forwarded
    /// as it came (hosted tools' items and citations included), with usage and the finish
    /// still decoded for the ledger.
    #[test]
    fn a_native_answer_is_forwarded_whole() {
        let text = std::fs::read_to_string(super::super::tests::fixture(
            "openai-responses/openai-web-search-tool.1.chunks.txt",
        ))
        .unwrap();
        let mut d = ResponsesDecoder::forwarding(true);
        let mut out = Vec::new();
        let mut forwarded = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut ev = SseEvent {
                event: None,
                data: line.to_owned(),
            };
            let kind: Value = serde_json::from_str(line).unwrap();
            if !matches!(
                kind["type"].as_str(),
                Some("response.created" | "response.in_progress" | "response.completed")
            ) {
                forwarded += 1;
            }
            if d.event(&mut ev, &mut out).unwrap() {
                break;
            }
        }
        let natives: Vec<&String> = out
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Native(j) => Some(j),
                _ => None,
            })
            .collect();
        assert_eq!(natives.len(), forwarded);
        assert!(natives.iter().any(|j| j.contains("web_search_call")));
        assert!(natives.iter().any(|j| j.contains("url_citation")));
        let r = fold(&out);
        assert_eq!(r.finish, Some(FinishReason::Stop));
        assert!(r.usage.is_some());
        assert!(
            r.native_items
                .iter()
                .any(|i| i["type"] == "web_search_call")
        );
        let whole = decode_whole(
            &std::fs::read(super::super::tests::fixture(
                "openai-responses/openai-web-search-tool.1.json",
            ))
            .unwrap(),
            true,
        )
        .unwrap();
        let w = fold(&whole);
        let kinds: Vec<&str> = w
            .native_items
            .iter()
            .filter_map(|i| i["type"].as_str())
            .collect();
        assert_eq!(kinds, ["web_search_call", "web_search_call", "message"]);
    }

    #[test]
    fn a_round_trip_request_is_stateless_and_carries_the_reasoning_back() {
        let req = ChatRequest {
            model: "route".into(),
            messages: vec![
                Message::text(Role::System, "sys"),
                Message::text(Role::User, "hi"),
                Message {
                    role: Role::Assistant,
                    content: vec![
                        ContentPart::Reasoning {
                            text: "thought".into(),
                            signature: Some(signature("rs_1", "gAAAenc")),
                        },
                        ContentPart::Reasoning {
                            text: "theirs".into(),
                            signature: Some("anthropic-signature".into()),
                        },
                        ContentPart::Text("calling".into()),
                        ContentPart::ToolCall(ToolCall {
                            id: "call_1".into(),
                            name: "get".into(),
                            arguments: "{}".into(),
                        }),
                    ],
                    name: None,
                },
                Message {
                    role: Role::Tool,
                    content: vec![ContentPart::ToolResult {
                        call_id: "call_1".into(),
                        content: "sunny".into(),
                        is_error: false,
                    }],
                    name: None,
                },
            ],
            tools: vec![Tool {
                name: "get".into(),
                description: None,
                parameters: Some(json!({"type": "object"})),
                strict: None,
                cache: None,
            }],
            reasoning: Some(Reasoning {
                effort: Some("high".into()),
                budget_tokens: None,
            }),
            max_output_tokens: Some(50),
            ..ChatRequest::default()
        };
        let body = encode(&req, "gpt-5").unwrap();
        assert_eq!(body["store"], false);
        assert_eq!(body["include"][0], "reasoning.encrypted_content");
        let kinds: Vec<&str> = body["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "message",
                "message",
                "reasoning",
                "message",
                "function_call",
                "function_call_output"
            ]
        );
        assert_eq!(body["input"][2]["id"], "rs_1");
        assert_eq!(body["input"][2]["encrypted_content"], "gAAAenc");
        assert_eq!(body["reasoning"]["effort"], "high");
        assert_eq!(body["max_output_tokens"], 50);
        let stop = ChatRequest {
            stop: vec!["x".into()],
            ..req
        };
        assert_eq!(
            encode(&stop, "m").unwrap_err().param.as_deref(),
            Some("stop")
        );
    }
}
