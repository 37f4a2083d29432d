//! Writing Responses API answers: the response object (JSON, and inside the stream's
//! `response.created` / `response.completed` events) and the typed SSE event sequence.

use relais_core::{ChatResponse, Error, FinishReason, StreamEvent, Usage};
use serde_json::{Map, Value, json};

use crate::openai::error_object;

/// What the response object says besides its output: identity and the request's settings.
#[derive(Debug, Clone, Default)]
pub struct ResponseMeta {
    /// `resp_...`
    pub id: String,
    /// The route name the client asked for.
    pub model: String,
    pub created_at: u64,
    /// The request's settings, echoed (see `ResponsesRequest::echo`).
    pub echo: Map<String, Value>,
    /// Tools offered as functions that are answered as `custom_tool_call` items.
    pub custom_tools: Vec<String>,
    /// Namespaced tools: (qualified name, namespace, name), see `ResponsesRequest::namespaced`.
    pub namespaced: Vec<(String, String, String)>,
}

impl ResponseMeta {
    /// An item id unique within the response: `msg_<response>_<n>`.
    fn item_id(&self, prefix: &str, n: usize) -> String {
        let base = self.id.strip_prefix("resp_").unwrap_or(&self.id);
        format!("{prefix}_{base}_{n}")
    }

    fn is_custom(&self, name: &str) -> bool {
        self.custom_tools.iter().any(|t| t == name)
    }

    /// The response object in the given state.
    pub fn object(&self, status: &str, output: Vec<Value>, end: &End<'_>) -> Value {
        let mut o = Map::with_capacity(32);
        let mut put = |k: &str, v: Value| {
            o.insert(k.to_owned(), v);
        };
        put("id", Value::String(self.id.clone()));
        put("object", "response".into());
        put("created_at", self.created_at.into());
        put("status", status.into());
        put("background", false.into());
        put(
            "error",
            end.error.map_or(Value::Null, |e| {
                let obj = error_object(e);
                json!({"code": obj["code"], "message": obj["message"]})
            }),
        );
        put(
            "incomplete_details",
            end.incomplete
                .map_or(Value::Null, |r| json!({ "reason": r })),
        );
        put("instructions", Value::Null);
        put("max_output_tokens", Value::Null);
        put("metadata", json!({}));
        put("model", Value::String(self.model.clone()));
        put("output", Value::Array(output));
        put("parallel_tool_calls", true.into());
        put("previous_response_id", Value::Null);
        put("reasoning", json!({"effort": null, "summary": null}));
        put("store", true.into());
        put("temperature", Value::Null);
        put("text", json!({"format": {"type": "text"}}));
        put("tool_choice", "auto".into());
        put("tools", json!([]));
        put("top_p", Value::Null);
        put("truncation", "disabled".into());
        put("usage", end.usage.map_or(Value::Null, usage));
        put("user", Value::Null);
        for (k, v) in &self.echo {
            o.insert(k.clone(), v.clone());
        }
        Value::Object(o)
    }
}

/// How a response ended, for its object.
#[derive(Debug, Default, Clone, Copy)]
pub struct End<'a> {
    pub usage: Option<&'a Usage>,
    pub error: Option<&'a Error>,
    /// `max_output_tokens` or `content_filter`.
    pub incomplete: Option<&'static str>,
}

fn usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens(),
    })
}

/// The status a finish reason gives a response, and the reason it is incomplete.
fn status_of(finish: Option<FinishReason>) -> (&'static str, Option<&'static str>) {
    match finish {
        Some(FinishReason::Length) => ("incomplete", Some("max_output_tokens")),
        Some(FinishReason::ContentFilter) => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

fn reasoning_item(id: String, text: &str, signature: Option<&str>) -> Value {
    let summary = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    };
    let mut item = json!({"id": id, "type": "reasoning", "summary": summary});
    if let Some(sig) = signature {
        item["encrypted_content"] = Value::String(sig.to_owned());
    }
    item
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn refusal_part(text: &str) -> Value {
    json!({"type": "refusal", "refusal": text})
}

fn message_item(id: String, status: &str, content: Vec<Value>) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

/// A tool call's item: `function_call`, or `custom_tool_call` for a custom tool (its input is
/// the `input` argument the model gave the function it was offered).
fn call_item(meta: &ResponseMeta, id: String, call: &Call, status: &str) -> Value {
    let mut item = if meta.is_custom(&call.name) {
        let input = if status == "completed" {
            custom_input(&call.arguments)
        } else {
            String::new()
        };
        json!({"id": id, "type": "custom_tool_call", "status": status, "call_id": call.call_id,
               "name": call.name, "input": input})
    } else {
        json!({"id": id, "type": "function_call", "status": status, "call_id": call.call_id,
               "name": call.name, "arguments": call.arguments})
    };
    if let Some((_, ns, name)) = meta.namespaced.iter().find(|(q, ..)| *q == call.name) {
        item["namespace"] = Value::String(ns.clone());
        item["name"] = Value::String(name.clone());
    }
    item
}

/// A custom tool's input from the arguments of the function it was offered as; arguments that
/// are not that object are passed on as they are.
fn custom_input(arguments: &str) -> String {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(mut m)) => match m.remove("input") {
            Some(Value::String(s)) => s,
            _ => arguments.to_owned(),
        },
        _ => arguments.to_owned(),
    }
}

struct Call {
    call_id: String,
    name: String,
    arguments: String,
}

/// The output items of a whole answer: reasoning, the message, then the tool calls.
pub fn output_items(meta: &ResponseMeta, r: &ChatResponse) -> Vec<Value> {
    let mut out = Vec::new();
    if !r.reasoning.is_empty() || r.reasoning_signature.is_some() {
        out.push(reasoning_item(
            meta.item_id("rs", out.len()),
            &r.reasoning,
            r.reasoning_signature.as_deref(),
        ));
    }
    let mut content = Vec::new();
    if !r.text.is_empty() {
        content.push(text_part(&r.text));
    }
    if let Some(refusal) = &r.refusal {
        content.push(refusal_part(refusal));
    }
    if !content.is_empty() {
        out.push(message_item(
            meta.item_id("msg", out.len()),
            "completed",
            content,
        ));
    }
    for c in &r.tool_calls {
        let call = Call {
            call_id: c.id.clone(),
            name: c.name.clone(),
            arguments: c.arguments.clone(),
        };
        out.push(call_item(
            meta,
            meta.item_id("fc", out.len()),
            &call,
            "completed",
        ));
    }
    out
}

/// The response object of a whole answer.
pub fn render_response(meta: &ResponseMeta, r: &ChatResponse) -> Value {
    let (status, incomplete) = status_of(r.finish);
    let end = End {
        usage: r.usage.as_ref(),
        error: None,
        incomplete,
    };
    // A natively answered request: the upstream's own items, as they came.
    let output = if r.native_items.is_empty() {
        output_items(meta, r)
    } else {
        r.native_items.clone()
    };
    meta.object(status, output, &end)
}

/// The item being streamed that is not a tool call.
enum Open {
    None,
    Reasoning {
        index: usize,
        text: String,
        signature: Option<String>,
    },
    Message {
        index: usize,
        parts: Vec<Value>,
        /// The part being written: text (false) or refusal (true), and its text so far.
        part: Option<(bool, String)>,
    },
}

/// Writes canonical events as the Responses API's typed SSE events, numbering them.
pub struct ResponsesStreamEncoder {
    meta: ResponseMeta,
    /// The response id without `resp_`, the stem of every item id.
    base: String,
    seq: u64,
    started: bool,
    /// Output items by output index, `None` while still open.
    items: Vec<Option<Value>>,
    open: Open,
    /// Tool calls by their canonical index: output index and the call so far. Calls stay open
    /// until the response ends (their deltas may interleave).
    calls: Vec<(usize, Call)>,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
    ended: bool,
}

impl ResponsesStreamEncoder {
    pub fn new(meta: ResponseMeta) -> Self {
        let base = meta.id.strip_prefix("resp_").unwrap_or(&meta.id).to_owned();
        Self {
            base,
            meta,
            seq: 0,
            started: false,
            items: Vec::new(),
            open: Open::None,
            calls: Vec::new(),
            usage: None,
            finish: None,
            ended: false,
        }
    }

    fn emit(&mut self, kind: &str, mut data: Value, out: &mut Vec<u8>) {
        if let Value::Object(m) = &mut data {
            m.insert("type".into(), Value::String(kind.to_owned()));
            m.insert("sequence_number".into(), self.seq.into());
        }
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        // Writing a Value to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &data);
        out.extend_from_slice(b"\n\n");
    }

    /// A delta event, the hot path of a stream: written straight out, no JSON tree built.
    /// `fields` goes between the output index and the delta (`,"content_index":0`), `tail`
    /// after it (`,"logprobs":[]`).
    fn emit_delta(
        &mut self,
        kind: &str,
        (prefix, index): (&str, usize),
        fields: &str,
        delta: &str,
        tail: &str,
        out: &mut Vec<u8>,
    ) {
        use std::io::Write as _;
        let seq = self.seq;
        self.seq += 1;
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":{seq},\"item_id\":\"{prefix}_{}_{index}\",\"output_index\":{index}{fields},\"delta\":",
            self.base
        );
        let _ = serde_json::to_writer(&mut *out, delta);
        out.extend_from_slice(tail.as_bytes());
        out.extend_from_slice(b"}\n\n");
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        // The response object is serialised once for both events.
        let obj = self.meta.object("in_progress", Vec::new(), &End::default());
        let obj = serde_json::to_string(&obj).unwrap_or_default();
        for kind in ["response.created", "response.in_progress"] {
            let seq = self.seq;
            self.seq += 1;
            for piece in [
                "event: ",
                kind,
                "\ndata: {\"type\":\"",
                kind,
                "\",\"sequence_number\":",
                &seq.to_string(),
                ",\"response\":",
                &obj,
                "}\n\n",
            ] {
                out.extend_from_slice(piece.as_bytes());
            }
        }
    }

    /// An event of an upstream that speaks this API too: forwarded as it came, numbered in
    /// this stream; its finished items are kept for the final response object.
    fn native(&mut self, json: &str, out: &mut Vec<u8>) {
        let Ok(v) = serde_json::from_str::<Value>(json) else {
            return;
        };
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let index = v
            .get("output_index")
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok());
        if let Some(i) = index {
            if self.items.len() <= i {
                self.items.resize(i + 1, None);
            }
            if kind == "response.output_item.done" {
                self.items[i] = v.get("item").cloned();
            }
        }
        self.emit(&kind, v, out);
    }

    fn new_item(&mut self) -> usize {
        self.items.push(None);
        self.items.len() - 1
    }

    fn close_part(&mut self, out: &mut Vec<u8>) {
        let Open::Message { index, parts, part } = &mut self.open else {
            return;
        };
        let Some((refusal, text)) = part.take() else {
            return;
        };
        let (index, content_index) = (*index, parts.len());
        let p = if refusal {
            refusal_part(&text)
        } else {
            text_part(&text)
        };
        parts.push(p.clone());
        let item_id = self.meta.item_id("msg", index);
        let (done, key) = if refusal {
            ("response.refusal.done", "refusal")
        } else {
            ("response.output_text.done", "text")
        };
        let mut d =
            json!({"item_id": item_id, "output_index": index, "content_index": content_index});
        d[key] = Value::String(text);
        if !refusal {
            d["logprobs"] = json!([]);
        }
        self.emit(done, d, out);
        self.emit(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": index, "content_index": content_index, "part": p}),
            out,
        );
    }

    /// Finish the open reasoning or message item.
    fn close_open(&mut self, out: &mut Vec<u8>) {
        self.close_part(out);
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Reasoning {
                index,
                text,
                signature,
            } => {
                let id = self.meta.item_id("rs", index);
                if !text.is_empty() {
                    let base = json!({"item_id": id, "output_index": index, "summary_index": 0});
                    let mut d = base.clone();
                    d["text"] = Value::String(text.clone());
                    self.emit("response.reasoning_summary_text.done", d, out);
                    let mut d = base;
                    d["part"] = json!({"type": "summary_text", "text": text});
                    self.emit("response.reasoning_summary_part.done", d, out);
                }
                let item = reasoning_item(id, &text, signature.as_deref());
                self.item_done(index, item, out);
            }
            Open::Message { index, parts, .. } => {
                let item = message_item(self.meta.item_id("msg", index), "completed", parts);
                self.item_done(index, item, out);
            }
        }
    }

    fn item_done(&mut self, index: usize, item: Value, out: &mut Vec<u8>) {
        self.emit(
            "response.output_item.done",
            json!({"output_index": index, "item": item.clone()}),
            out,
        );
        self.items[index] = Some(item);
    }

    fn reasoning(&mut self, text: &str, signature: Option<&String>, out: &mut Vec<u8>) {
        if !matches!(self.open, Open::Reasoning { .. }) {
            self.close_open(out);
            let index = self.new_item();
            let id = self.meta.item_id("rs", index);
            self.emit(
                "response.output_item.added",
                json!({"output_index": index, "item": {"id": id, "type": "reasoning", "summary": []}}),
                out,
            );
            self.open = Open::Reasoning {
                index,
                text: String::new(),
                signature: None,
            };
        }
        let Open::Reasoning {
            index,
            text: so_far,
            signature: sig,
        } = &mut self.open
        else {
            return;
        };
        let index = *index;
        if signature.is_some() {
            sig.clone_from(&signature.cloned());
        }
        if text.is_empty() {
            return;
        }
        let first = so_far.is_empty();
        so_far.push_str(text);
        if first {
            let id = self.meta.item_id("rs", index);
            self.emit(
                "response.reasoning_summary_part.added",
                json!({"item_id": id, "output_index": index, "summary_index": 0,
                       "part": {"type": "summary_text", "text": ""}}),
                out,
            );
        }
        self.emit_delta(
            "response.reasoning_summary_text.delta",
            ("rs", index),
            ",\"summary_index\":0",
            text,
            "",
            out,
        );
    }

    fn content(&mut self, refusal: bool, delta: &str, out: &mut Vec<u8>) {
        if !matches!(self.open, Open::Message { .. }) {
            self.close_open(out);
            let index = self.new_item();
            let item = message_item(self.meta.item_id("msg", index), "in_progress", Vec::new());
            self.emit(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
                out,
            );
            self.open = Open::Message {
                index,
                parts: Vec::new(),
                part: None,
            };
        }
        if matches!(&self.open, Open::Message { part: Some((r, _)), .. } if *r != refusal) {
            self.close_part(out);
        }
        let Open::Message { index, parts, part } = &mut self.open else {
            return;
        };
        let (index, content_index) = (*index, parts.len());
        if part.is_none() {
            *part = Some((refusal, String::new()));
            let item_id = self.meta.item_id("msg", index);
            let p = if refusal {
                refusal_part("")
            } else {
                text_part("")
            };
            self.emit(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": index, "content_index": content_index, "part": p}),
                out,
            );
        }
        if let Open::Message {
            part: Some((_, text)),
            ..
        } = &mut self.open
        {
            text.push_str(delta);
        }
        let fields: std::borrow::Cow<'static, str> = if content_index == 0 {
            ",\"content_index\":0".into()
        } else {
            format!(",\"content_index\":{content_index}").into()
        };
        if refusal {
            self.emit_delta(
                "response.refusal.delta",
                ("msg", index),
                &fields,
                delta,
                "",
                out,
            );
        } else {
            self.emit_delta(
                "response.output_text.delta",
                ("msg", index),
                &fields,
                delta,
                ",\"logprobs\":[]",
                out,
            );
        }
    }

    fn call_start(&mut self, id: &str, name: &str, out: &mut Vec<u8>) {
        self.close_open(out);
        let index = self.new_item();
        let call = Call {
            call_id: id.to_owned(),
            name: name.to_owned(),
            arguments: String::new(),
        };
        let item = call_item(
            &self.meta,
            self.meta.item_id("fc", index),
            &call,
            "in_progress",
        );
        self.emit(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
            out,
        );
        self.calls.push((index, call));
    }

    fn call_delta(&mut self, at: u32, delta: &str, out: &mut Vec<u8>) {
        let Some((index, call)) = self.calls.get_mut(at as usize) else {
            return;
        };
        call.arguments.push_str(delta);
        let index = *index;
        // A custom tool's input is sent whole when the call ends (the model writes it as a
        // JSON string that is only decoded then).
        if self.meta.is_custom(&call.name) {
            return;
        }
        self.emit_delta(
            "response.function_call_arguments.delta",
            ("fc", index),
            "",
            delta,
            "",
            out,
        );
    }

    fn close_calls(&mut self, out: &mut Vec<u8>) {
        for (index, call) in std::mem::take(&mut self.calls) {
            let item_id = self.meta.item_id("fc", index);
            if self.meta.is_custom(&call.name) {
                let input = custom_input(&call.arguments);
                self.emit(
                    "response.custom_tool_call_input.delta",
                    json!({"item_id": item_id, "output_index": index, "delta": input}),
                    out,
                );
                self.emit(
                    "response.custom_tool_call_input.done",
                    json!({"item_id": item_id, "output_index": index, "input": input}),
                    out,
                );
            } else {
                self.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": index, "name": call.name,
                           "arguments": call.arguments}),
                    out,
                );
            }
            let item = call_item(&self.meta, item_id, &call, "completed");
            self.item_done(index, item, out);
        }
    }

    pub fn event(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        self.start(out);
        match ev {
            StreamEvent::Start { .. } | StreamEvent::Raw(_) => {}
            StreamEvent::Native(json) => self.native(json, out),
            StreamEvent::TextDelta(t) => self.content(false, t, out),
            StreamEvent::RefusalDelta(t) => self.content(true, t, out),
            StreamEvent::ReasoningDelta { text, signature } => {
                self.reasoning(text, signature.as_ref(), out);
            }
            StreamEvent::ToolCallStart { id, name, .. } => self.call_start(id, name, out),
            StreamEvent::ToolCallDelta { index, arguments } => {
                self.call_delta(*index, arguments, out);
            }
            StreamEvent::Usage(u) => match &mut self.usage {
                Some(existing) => existing.merge(u),
                None => self.usage = Some(*u),
            },
            StreamEvent::Finish(f) => self.finish = Some(*f),
        }
    }

    /// The stream ended normally: close what is open, then `response.completed` (or
    /// `response.incomplete` when the answer was cut).
    pub fn end(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.start(out);
        self.close_open(out);
        self.close_calls(out);
        let (status, incomplete) = status_of(self.finish);
        let output = self.output();
        let usage = self.usage;
        let end = End {
            usage: usage.as_ref(),
            error: None,
            incomplete,
        };
        let obj = self.meta.object(status, output, &end);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(kind, json!({ "response": obj }), out);
    }

    /// The stream failed after it started: an `error` event and `response.failed`, never a
    /// clean end.
    pub fn error(&mut self, err: &Error, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.start(out);
        self.emit("error", json!({ "error": error_object(err) }), out);
        let output = self.output();
        let usage = self.usage;
        let end = End {
            usage: usage.as_ref(),
            error: Some(err),
            incomplete: None,
        };
        let obj = self.meta.object("failed", output, &end);
        self.emit("response.failed", json!({ "response": obj }), out);
    }

    /// The output items finished so far (all of them once [`Self::end`] ran), for storing.
    pub fn output(&self) -> Vec<Value> {
        self.items.iter().flatten().cloned().collect()
    }

    /// Whether the stream ended with `response.completed` or `response.incomplete`.
    pub fn completed(&self) -> bool {
        self.ended && !self.items.iter().any(Option::is_none)
    }

    /// The final response object, once the stream ended normally.
    pub fn final_object(&self) -> Value {
        let (status, incomplete) = status_of(self.finish);
        let end = End {
            usage: self.usage.as_ref(),
            error: None,
            incomplete,
        };
        self.meta.object(status, self.output(), &end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ResponseMeta {
        ResponseMeta {
            id: "resp_abc".into(),
            model: "m".into(),
            created_at: 7,
            ..ResponseMeta::default()
        }
    }

    fn events(out: &[u8]) -> Vec<Value> {
        std::str::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (head, data) = f.split_once("\ndata: ").unwrap();
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(head.strip_prefix("event: ").unwrap(), v["type"]);
                v
            })
            .collect()
    }

    #[test]
    fn a_text_and_tool_stream_is_the_documented_sequence() {
        let mut e = ResponsesStreamEncoder::new(meta());
        let mut out = Vec::new();
        for ev in [
            StreamEvent::Start {
                id: None,
                model: None,
            },
            StreamEvent::ReasoningDelta {
                text: "hm".into(),
                signature: Some("sig".into()),
            },
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta("lo".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_1".into(),
                name: "get".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"a\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "1}".into(),
            },
            StreamEvent::Usage(Usage {
                input_tokens: 3,
                output_tokens: 4,
                ..Usage::default()
            }),
            StreamEvent::Finish(FinishReason::ToolCalls),
        ] {
            e.event(&ev, &mut out);
        }
        e.end(&mut out);
        let evs = events(&out);
        let kinds: Vec<&str> = evs.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, v) in evs.iter().enumerate() {
            assert_eq!(v["sequence_number"], i as u64);
        }
        let done = &evs.last().unwrap()["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["usage"]["total_tokens"], 7);
        assert_eq!(done["output"][0]["encrypted_content"], "sig");
        assert_eq!(done["output"][1]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][2]["arguments"], "{\"a\":1}");
        assert_eq!(done["output"][2]["call_id"], "call_1");
        assert!(e.completed());
    }

    #[test]
    fn a_failure_is_an_error_event_and_response_failed() {
        let mut e = ResponsesStreamEncoder::new(meta());
        let mut out = Vec::new();
        e.event(&StreamEvent::TextDelta("x".into()), &mut out);
        e.error(
            &Error::upstream(relais_core::ErrorKind::Server, "boom"),
            &mut out,
        );
        let evs = events(&out);
        let n = evs.len();
        assert_eq!(evs[n - 2]["type"], "error");
        assert_eq!(evs[n - 1]["type"], "response.failed");
        assert_eq!(evs[n - 1]["response"]["status"], "failed");
        assert_eq!(evs[n - 1]["response"]["error"]["message"], "boom");
        assert!(!e.completed());
    }

    #[test]
    fn custom_tools_are_answered_as_custom_tool_calls() {
        let mut m = meta();
        m.custom_tools = vec!["apply_patch".into()];
        let r = ChatResponse {
            tool_calls: vec![relais_core::ToolCall {
                id: "c".into(),
                name: "apply_patch".into(),
                arguments: "{\"input\":\"*** Begin Patch\"}".into(),
            }],
            finish: Some(FinishReason::ToolCalls),
            ..ChatResponse::default()
        };
        let v = render_response(&m, &r);
        assert_eq!(v["output"][0]["type"], "custom_tool_call");
        assert_eq!(v["output"][0]["input"], "*** Begin Patch");
        let cut = ChatResponse {
            text: "x".into(),
            finish: Some(FinishReason::Length),
            ..ChatResponse::default()
        };
        let v = render_response(&m, &cut);
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    }
}
