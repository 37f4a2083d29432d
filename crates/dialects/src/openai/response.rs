use std::io::Write as _;

use relais_core::{ChatResponse, EmbedResponse, Error, FinishReason, RawChunk, StreamEvent, Usage};
use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
struct OpenAiUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

impl From<&Usage> for OpenAiUsage {
    fn from(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.total_tokens(),
            prompt_tokens_details: PromptDetails {
                cached_tokens: u.cache_read_tokens,
            },
            completion_tokens_details: CompletionDetails {
                reasoning_tokens: u.reasoning_tokens,
            },
        }
    }
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        // OpenAI reports a refusal in `message.refusal` with a normal stop.
        FinishReason::Stop | FinishReason::Refusal | FinishReason::Error | FinishReason::Other => {
            "stop"
        }
    }
}

#[derive(Serialize)]
struct OpenAiToolCallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: OpenAiFunctionOut<'a>,
}

#[derive(Serialize)]
struct OpenAiFunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct OpenAiCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [OpenAiChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenAiUsage>,
}

#[derive(Serialize)]
struct OpenAiChoice<'a> {
    index: u32,
    message: OpenAiMessageOut<'a>,
    finish_reason: &'static str,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct OpenAiMessageOut<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OpenAiToolCallOut<'a>>,
}

/// Render a whole (non-streaming) chat completion. `model` is the route name the client asked for.
pub fn render_chat(resp: &ChatResponse, id: &str, model: &str, created: u64) -> Vec<u8> {
    let tool_calls = resp
        .tool_calls
        .iter()
        .map(|c| OpenAiToolCallOut {
            index: None,
            id: Some(&c.id),
            kind: Some("function"),
            function: OpenAiFunctionOut {
                name: Some(&c.name),
                arguments: &c.arguments,
            },
        })
        .collect::<Vec<_>>();
    let content = if resp.text.is_empty() && (!tool_calls.is_empty() || resp.refusal.is_some()) {
        None
    } else {
        Some(resp.text.as_str())
    };
    let finish = resp.finish.unwrap_or(if tool_calls.is_empty() {
        FinishReason::Stop
    } else {
        FinishReason::ToolCalls
    });
    let body = OpenAiCompletion {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [OpenAiChoice {
            index: 0,
            message: OpenAiMessageOut {
                role: "assistant",
                content,
                refusal: resp.refusal.as_deref(),
                reasoning_content: (!resp.reasoning.is_empty()).then_some(resp.reasoning.as_str()),
                tool_calls,
            },
            finish_reason: finish_str(finish),
            logprobs: None,
        }],
        usage: Some(OpenAiUsage::from(&resp.usage.unwrap_or_default())),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[derive(Serialize)]
struct OpenAiChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<OpenAiChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<OpenAiUsage>>,
}

#[derive(Serialize)]
struct OpenAiChunkChoice<'a> {
    index: u32,
    delta: OpenAiDelta<'a>,
    finish_reason: Option<&'static str>,
    logprobs: Option<()>,
}

#[derive(Serialize, Default)]
struct OpenAiDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[OpenAiToolCallOut<'a>; 1]>,
}

/// Encodes canonical events as OpenAI `chat.completion.chunk` SSE frames.
pub struct ChatStreamEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: bool,
    finished: bool,
    usage: Option<Usage>,
}

impl ChatStreamEncoder {
    pub fn new(id: String, model: String, created: u64, include_usage: bool) -> Self {
        Self {
            id,
            model,
            created,
            include_usage,
            started: false,
            finished: false,
            usage: None,
        }
    }

    fn chunk(&self, out: &mut Vec<u8>, delta: OpenAiDelta<'_>, finish: Option<&'static str>) {
        let chunk = OpenAiChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![OpenAiChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
                logprobs: None,
            }],
            usage: self.include_usage.then_some(None),
        };
        frame(out, &chunk);
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.chunk(
                out,
                OpenAiDelta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..OpenAiDelta::default()
                },
                None,
            );
        }
    }

    /// Append the frames for one event to `out` (possibly none).
    pub fn event(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        match event {
            StreamEvent::Start { .. } => self.ensure_started(out),
            StreamEvent::TextDelta(t) => {
                self.ensure_started(out);
                if !t.is_empty() {
                    self.chunk(
                        out,
                        OpenAiDelta {
                            content: Some(t),
                            ..OpenAiDelta::default()
                        },
                        None,
                    );
                }
            }
            StreamEvent::RefusalDelta(t) => {
                self.ensure_started(out);
                self.chunk(
                    out,
                    OpenAiDelta {
                        refusal: Some(t),
                        ..OpenAiDelta::default()
                    },
                    None,
                );
            }
            StreamEvent::ReasoningDelta { text, .. } => {
                self.ensure_started(out);
                if !text.is_empty() {
                    self.chunk(
                        out,
                        OpenAiDelta {
                            reasoning_content: Some(text),
                            ..OpenAiDelta::default()
                        },
                        None,
                    );
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.ensure_started(out);
                self.chunk(
                    out,
                    OpenAiDelta {
                        tool_calls: Some([OpenAiToolCallOut {
                            index: Some(*index),
                            id: Some(id),
                            kind: Some("function"),
                            function: OpenAiFunctionOut {
                                name: Some(name),
                                arguments: "",
                            },
                        }]),
                        ..OpenAiDelta::default()
                    },
                    None,
                );
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                self.ensure_started(out);
                if !arguments.is_empty() {
                    self.chunk(
                        out,
                        OpenAiDelta {
                            tool_calls: Some([OpenAiToolCallOut {
                                index: Some(*index),
                                id: None,
                                kind: None,
                                function: OpenAiFunctionOut {
                                    name: None,
                                    arguments,
                                },
                            }]),
                            ..OpenAiDelta::default()
                        },
                        None,
                    );
                }
            }
            StreamEvent::Usage(u) => match &mut self.usage {
                Some(existing) => existing.merge(u),
                None => self.usage = Some(*u),
            },
            StreamEvent::Finish(f) => {
                self.ensure_started(out);
                if !self.finished {
                    self.finished = true;
                    self.chunk(out, OpenAiDelta::default(), Some(finish_str(*f)));
                }
            }
            StreamEvent::Raw(raw) => {
                self.ensure_started(out);
                self.raw(raw, out);
            }
            // Only a Responses client's request is answered natively.
            StreamEvent::Native(_) => {}
        }
    }

    /// A chunk in this very format, forwarded with relais's id, time and model in place of the
    /// upstream's: three splices, no JSON parsed or written.
    fn raw(&self, raw: &RawChunk, out: &mut Vec<u8>) {
        let json = raw.json.as_bytes();
        let mut spans = [
            (raw.id.clone(), Field::Id),
            (raw.created.clone(), Field::Created),
            (raw.model.clone(), Field::Model),
        ];
        spans.sort_unstable_by_key(|(r, _)| r.start);
        out.extend_from_slice(b"data: ");
        let mut at = 0;
        for (range, field) in spans {
            let Some(before) = json.get(at..range.start) else {
                continue;
            };
            out.extend_from_slice(before);
            match field {
                Field::Id => json_str_contents(&self.id, out),
                Field::Model => json_str_contents(&self.model, out),
                Field::Created => {
                    let _ = write!(out, "{}", self.created);
                }
            }
            at = range.end;
        }
        out.extend_from_slice(json.get(at..).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
    }

    /// The closing frames of a stream that ended well: the usage chunk if asked, then `[DONE]`.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        self.ensure_started(out);
        if !self.finished {
            self.finished = true;
            self.chunk(out, OpenAiDelta::default(), Some("stop"));
        }
        if self.include_usage {
            let chunk = OpenAiChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: Vec::new(),
                usage: Some(Some(OpenAiUsage::from(&self.usage.unwrap_or_default()))),
            };
            frame(out, &chunk);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    /// An error after the stream started: OpenAI's SDKs raise on a chunk holding `error`.
    pub fn error(&mut self, err: &Error, out: &mut Vec<u8>) {
        super::error::write_stream_error(err, out);
    }
}

#[derive(Clone, Copy)]
enum Field {
    Id,
    Created,
    Model,
}

/// The contents of `s` as a JSON string, without the quotes.
fn json_str_contents(s: &str, out: &mut Vec<u8>) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(s.as_bytes());
    } else if let Ok(quoted) = serde_json::to_string(s) {
        out.extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
    }
}

fn frame<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut *out, value).is_err() {
        // Serialising our own structs cannot fail; keep the stream well-formed regardless.
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

#[derive(Serialize)]
struct OpenAiEmbeddingList<'a> {
    object: &'static str,
    data: Vec<OpenAiEmbedding>,
    model: &'a str,
    usage: OpenAiEmbedUsage,
}

#[derive(Serialize)]
struct OpenAiEmbedding {
    object: &'static str,
    index: usize,
    embedding: Value,
}

#[derive(Serialize)]
struct OpenAiEmbedUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// Render an embeddings list; `base64` encodes each vector as little-endian f32 bytes, which the
/// official SDKs request by default.
pub fn render_embeddings(resp: &EmbedResponse, model: &str, base64: bool) -> Vec<u8> {
    let data = resp
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, v)| OpenAiEmbedding {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64_encode(&bytes))
            } else {
                Value::Array(
                    v.iter()
                        .map(|f| {
                            serde_json::Number::from_f64(f64::from(*f))
                                .map(Value::Number)
                                .unwrap_or(Value::Null)
                        })
                        .collect(),
                )
            },
        })
        .collect();
    let body = OpenAiEmbeddingList {
        object: "list",
        data,
        model,
        usage: OpenAiEmbedUsage {
            prompt_tokens: resp.usage.input_tokens,
            total_tokens: resp.usage.input_tokens,
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One entry of `/v1/models`.
#[derive(Serialize)]
pub struct ModelEntry {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
    #[serde(flatten)]
    pub details: serde_json::Map<String, Value>,
}

pub fn render_models(models: &[ModelEntry]) -> Vec<u8> {
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: &'a [ModelEntry],
    }
    serde_json::to_vec(&List {
        object: "list",
        data: models,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use relais_core::{Collector, ToolCall};

    #[test]
    fn base64_matches_reference() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    /// A forwarded chunk leaves byte for byte as it came except for the id, time and model,
    /// which become the gateway's (escaped where they need it), wherever they sit in the chunk.
    #[test]
    fn forwarded_chunks_carry_the_gateway_id_and_model() {
        let json = r#"{"model":"gpt-x","id":"up-1","choices":[{"index":0,"delta":{"content":"a\"b"},"finish_reason":null}],"created":99,"obfuscation":"Zq"}"#;
        let span = |value: &str| {
            let at = json.find(value).unwrap();
            at..at + value.len()
        };
        let raw = RawChunk {
            json: json.to_owned(),
            id: span("up-1"),
            created: span("99"),
            model: span("gpt-x"),
        };
        let mut enc =
            ChatStreamEncoder::new("chatcmpl-r1".into(), "my \"route\"".into(), 1234, false);
        let mut out = Vec::new();
        enc.event(
            &StreamEvent::Start {
                id: None,
                model: None,
            },
            &mut out,
        );
        let role_frame = out.len();
        enc.event(&StreamEvent::Raw(raw), &mut out);
        let text = std::str::from_utf8(&out[role_frame..]).unwrap();
        assert_eq!(
            text,
            r#"data: {"model":"my \"route\"","id":"chatcmpl-r1","choices":[{"index":0,"delta":{"content":"a\"b"},"finish_reason":null}],"created":1234,"obfuscation":"Zq"}"#.to_owned() + "\n\n"
        );
        let v: Value =
            serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(v["model"], "my \"route\"");
        assert_eq!(v["choices"][0]["delta"]["content"], "a\"b");
        // Forwarding does not start the stream a second time.
        let mut rest = Vec::new();
        enc.end(&mut rest);
        let rest = String::from_utf8(rest).unwrap();
        assert!(!rest.contains("\"role\""));
        assert!(rest.contains("\"finish_reason\":\"stop\""));
    }

    #[test]
    fn stream_frames_fold_like_the_response() {
        let events = vec![
            StreamEvent::Start {
                id: None,
                model: None,
            },
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta("lo".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "c1".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"a\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "1}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input_tokens: 3,
                output_tokens: 4,
                ..Usage::default()
            }),
        ];
        let mut enc = ChatStreamEncoder::new("id1".into(), "m".into(), 1, true);
        let mut out = Vec::new();
        for e in &events {
            enc.event(e, &mut out);
        }
        enc.end(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        let frames: Vec<Value> = text
            .split("\n\n")
            .filter_map(|f| f.strip_prefix("data: "))
            .filter(|f| *f != "[DONE]")
            .map(|f| serde_json::from_str(f).unwrap())
            .collect();
        assert_eq!(frames[0]["choices"][0]["delta"]["role"], "assistant");
        let last = frames.last().unwrap();
        assert_eq!(last["usage"]["total_tokens"], 7);
        assert_eq!(last["choices"].as_array().unwrap().len(), 0);
        let args: String = frames
            .iter()
            .filter_map(|f| {
                f["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, "{\"a\":1}");

        let mut c = Collector::new();
        for e in &events {
            c.push(e).unwrap();
        }
        let body: Value = serde_json::from_slice(&render_chat(&c.finish(), "id1", "m", 1)).unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        let _ = ToolCall {
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
        };
    }
}
