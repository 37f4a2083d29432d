//! Writing Gemini answers: `GenerateContentResponse` objects (whole, and as stream chunks over
//! SSE or as a streamed JSON array) and errors in Google's shape.

use relais_core::{ChatResponse, Error, FinishReason, StreamEvent, ToolCall, Usage};
use serde_json::{Map, Value, json};

/// HTTP status of an error (the same classes as the other dialects).
pub fn error_status(err: &Error) -> u16 {
    crate::openai::error_status(err)
}

/// Google's status name for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        402 | 429 => "RESOURCE_EXHAUSTED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        408 | 504 => "DEADLINE_EXCEEDED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

fn error_value(err: &Error) -> Value {
    let code = error_status(err);
    json!({"error": {"code": code, "message": err.message, "status": status_name(code)}})
}

/// `{"error": {"code", "message", "status"}}`.
pub fn error_body(err: &Error) -> Vec<u8> {
    error_value(err).to_string().into_bytes()
}

fn finish_reason(f: Option<FinishReason>) -> &'static str {
    match f {
        Some(FinishReason::Length) => "MAX_TOKENS",
        Some(FinishReason::ContentFilter | FinishReason::Refusal) => "SAFETY",
        Some(FinishReason::Error | FinishReason::Other) => "OTHER",
        Some(FinishReason::Stop | FinishReason::ToolCalls) | None => "STOP",
    }
}

fn usage_metadata(u: &Usage) -> Value {
    let mut m = json!({
        "promptTokenCount": u.input_tokens,
        "candidatesTokenCount": u.output_tokens.saturating_sub(u.reasoning_tokens),
        "totalTokenCount": u.total_tokens(),
    });
    if u.reasoning_tokens > 0 {
        m["thoughtsTokenCount"] = u.reasoning_tokens.into();
    }
    if u.cache_read_tokens > 0 {
        m["cachedContentTokenCount"] = u.cache_read_tokens.into();
    }
    m
}

fn function_call_part(call: &ToolCall) -> Value {
    let args = call
        .arguments_object()
        .map_or_else(|_| Value::String(call.arguments.clone()), Value::Object);
    json!({"functionCall": {"id": call.id, "name": call.name, "args": args}})
}

fn sign(part: &mut Value, signature: Option<String>) {
    if let (Some(s), Value::Object(m)) = (signature, part) {
        m.insert("thoughtSignature".into(), Value::String(s));
    }
}

fn chunk(
    parts: Vec<Value>,
    finish: Option<&str>,
    usage: Option<&Usage>,
    model: &str,
    id: &str,
) -> Value {
    let mut candidate = Map::new();
    candidate.insert("content".into(), json!({"role": "model", "parts": parts}));
    if let Some(f) = finish {
        candidate.insert("finishReason".into(), f.into());
    }
    candidate.insert("index".into(), 0.into());
    let mut out =
        json!({"candidates": [Value::Object(candidate)], "modelVersion": model, "responseId": id});
    if let Some(u) = usage {
        out["usageMetadata"] = usage_metadata(u);
    }
    out
}

/// A whole answer as one `GenerateContentResponse`.
pub fn render_generate(r: &ChatResponse, model: &str, id: &str) -> Vec<u8> {
    let mut parts = Vec::new();
    if !r.reasoning.is_empty() {
        parts.push(json!({"text": r.reasoning, "thought": true}));
    }
    if !r.text.is_empty() {
        parts.push(json!({"text": r.text}));
    }
    if let Some(refusal) = &r.refusal {
        parts.push(json!({"text": refusal}));
    }
    let first_call = parts.len();
    parts.extend(r.tool_calls.iter().map(function_call_part));
    if parts.is_empty() {
        parts.push(json!({"text": ""}));
    }
    // The signature goes back on the first call (Gemini 3 needs it there), else on the text.
    let at = if r.tool_calls.is_empty() {
        parts.len() - 1
    } else {
        first_call
    };
    sign(&mut parts[at], r.reasoning_signature.clone());
    chunk(
        parts,
        Some(finish_reason(r.finish)),
        r.usage.as_ref(),
        model,
        id,
    )
    .to_string()
    .into_bytes()
}

/// Writes canonical events as Gemini stream chunks: over SSE (`alt=sse`, what the SDKs and
/// Gemini CLI ask for) or as the elements of one streamed JSON array (the REST default). Text
/// goes out as it comes; a function call goes out whole once its arguments are complete.
pub struct GeminiStreamEncoder {
    model: String,
    id: String,
    /// What follows a text part in every content chunk (`}]},"index":0}],"modelVersion":...`),
    /// written once: a text delta is the hot path of a stream.
    tail: String,
    sse: bool,
    written: usize,
    signature: Option<String>,
    calls: Vec<ToolCall>,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
    ended: bool,
}

impl GeminiStreamEncoder {
    pub fn new(model: String, id: String, sse: bool) -> Self {
        let tail = format!(
            "}}]}},\"index\":0}}],\"modelVersion\":{},\"responseId\":{}}}",
            Value::String(model.clone()),
            Value::String(id.clone())
        );
        Self {
            tail,
            model,
            id,
            sse,
            written: 0,
            signature: None,
            calls: Vec::new(),
            usage: None,
            finish: None,
            ended: false,
        }
    }

    fn write(&mut self, value: &Value, out: &mut Vec<u8>) {
        if self.sse {
            out.extend_from_slice(b"data: ");
        } else {
            out.extend_from_slice(if self.written == 0 { b"[" } else { b",\r\n" });
        }
        // Writing a Value to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
        if self.sse {
            out.extend_from_slice(b"\r\n\r\n");
        }
        self.written += 1;
    }

    /// A text chunk, written straight out.
    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        if self.sse {
            out.extend_from_slice(b"data: ");
        } else {
            out.extend_from_slice(if self.written == 0 { b"[" } else { b",\r\n" });
        }
        out.extend_from_slice(br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"#);
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
        if let Some(sig) = self.signature.take() {
            out.extend_from_slice(br#","thoughtSignature":"#);
            let _ = serde_json::to_writer(&mut *out, &sig);
        }
        out.extend_from_slice(self.tail.as_bytes());
        if self.sse {
            out.extend_from_slice(b"\r\n\r\n");
        }
        self.written += 1;
    }

    pub fn event(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        match ev {
            StreamEvent::Start { .. } | StreamEvent::Raw(_) | StreamEvent::Native(_) => {}
            StreamEvent::TextDelta(t) | StreamEvent::RefusalDelta(t) => {
                if !t.is_empty() {
                    self.text(t, out);
                }
            }
            StreamEvent::ReasoningDelta { text, signature } => {
                if !text.is_empty() {
                    let c = chunk(
                        vec![json!({"text": text, "thought": true})],
                        None,
                        None,
                        &self.model,
                        &self.id,
                    );
                    self.write(&c, out);
                }
                if signature.is_some() {
                    self.signature.clone_from(signature);
                }
            }
            StreamEvent::ToolCallStart { id, name, .. } => self.calls.push(ToolCall {
                id: id.clone(),
                name: name.clone(),
                arguments: String::new(),
            }),
            StreamEvent::ToolCallDelta { index, arguments } => {
                if let Some(c) = self.calls.get_mut(*index as usize) {
                    c.arguments.push_str(arguments);
                }
            }
            StreamEvent::Usage(u) => match &mut self.usage {
                Some(existing) => existing.merge(u),
                None => self.usage = Some(*u),
            },
            StreamEvent::Finish(f) => self.finish = Some(*f),
        }
    }

    /// The last chunk: the calls, the finish reason and the usage.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let mut parts: Vec<Value> = self.calls.iter().map(function_call_part).collect();
        if parts.is_empty() {
            parts.push(json!({"text": ""}));
        }
        sign(&mut parts[0], self.signature.take());
        let c = chunk(
            parts,
            Some(finish_reason(self.finish)),
            self.usage.as_ref(),
            &self.model,
            &self.id,
        );
        self.write(&c, out);
        if !self.sse {
            out.push(b']');
        }
    }

    /// A failure after the stream started: an error object where the next chunk would be.
    pub fn error(&mut self, err: &Error, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.write(&error_value(err), out);
        if !self.sse {
            out.push(b']');
        }
    }
}

/// `countTokens`'s answer.
pub fn render_count_tokens(n: u64) -> Vec<u8> {
    json!({ "totalTokens": n }).to_string().into_bytes()
}

/// One route as a Gemini model entry.
pub fn model_entry(route: &str, context_length: Option<u64>) -> Value {
    let mut m = json!({
        "name": format!("models/{route}"),
        "version": "relais",
        "displayName": route,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    });
    if let Some(n) = context_length {
        m["inputTokenLimit"] = n.into();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_sends_text_at_once_and_calls_whole_at_the_end() {
        for sse in [true, false] {
            let mut e = GeminiStreamEncoder::new("m".into(), "r1".into(), sse);
            let mut out = Vec::new();
            for ev in [
                StreamEvent::TextDelta("Hi".into()),
                StreamEvent::ReasoningDelta {
                    text: String::new(),
                    signature: Some("sig".into()),
                },
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "c1".into(),
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
                    input_tokens: 5,
                    output_tokens: 3,
                    ..Usage::default()
                }),
                StreamEvent::Finish(FinishReason::ToolCalls),
            ] {
                e.event(&ev, &mut out);
            }
            e.end(&mut out);
            let text = String::from_utf8(out).unwrap();
            let chunks: Vec<Value> = if sse {
                text.split("\r\n\r\n")
                    .filter(|f| !f.is_empty())
                    .map(|f| serde_json::from_str(f.strip_prefix("data: ").unwrap()).unwrap())
                    .collect()
            } else {
                serde_json::from_str::<Vec<Value>>(&text).unwrap()
            };
            assert_eq!(chunks.len(), 2);
            assert_eq!(
                chunks[0]["candidates"][0]["content"]["parts"][0]["text"],
                "Hi"
            );
            let last = &chunks[1]["candidates"][0];
            assert_eq!(last["finishReason"], "STOP");
            assert_eq!(last["content"]["parts"][0]["functionCall"]["args"]["a"], 1);
            assert_eq!(last["content"]["parts"][0]["thoughtSignature"], "sig");
            assert_eq!(chunks[1]["usageMetadata"]["totalTokenCount"], 8);
        }
    }

    #[test]
    fn errors_have_google_shape() {
        let e = Error::bad_request("nope");
        let v: Value = serde_json::from_slice(&error_body(&e)).unwrap();
        assert_eq!(v["error"]["code"], 400);
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    }
}
