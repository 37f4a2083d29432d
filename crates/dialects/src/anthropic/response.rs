use relais_core::{ChatResponse, Error, ErrorKind, FinishReason, StreamEvent, Usage};
use serde::Serialize;
use serde_json::{Map, Value};

/// Anthropic's usage block. Anthropic counts `input_tokens` *without* cache reads and cache
/// writes, while canonical input includes both (see `relais_core::Usage`): the difference is
/// taken here, saturating, so a vendor that reported odd figures cannot make it wrap.
#[derive(Serialize, Clone, Copy)]
struct AnthropicUsage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

impl From<&Usage> for AnthropicUsage {
    fn from(u: &Usage) -> Self {
        Self {
            input_tokens: u
                .input_tokens
                .saturating_sub(u.cache_read_tokens)
                .saturating_sub(u.cache_write_tokens),
            cache_creation_input_tokens: u.cache_write_tokens,
            cache_read_input_tokens: u.cache_read_tokens,
            output_tokens: u.output_tokens,
        }
    }
}

/// Anthropic's `stop_reason`.
///
/// Canonical events cannot say that a stop sequence matched, so `stop_sequence` is never
/// reported. Agent loops built on Anthropic's SDKs run tools only while `stop_reason` is
/// `tool_use`; some upstreams end a turn of tool calls with a plain stop, so a response that
/// holds tool calls and stopped normally is reported as `tool_use`.
fn stop_reason(finish: Option<FinishReason>, has_tool_calls: bool) -> &'static str {
    match finish {
        Some(FinishReason::Length) => "max_tokens",
        Some(FinishReason::ToolCalls) => "tool_use",
        Some(FinishReason::ContentFilter | FinishReason::Refusal) => "refusal",
        Some(FinishReason::Stop | FinishReason::Other) | None if has_tool_calls => "tool_use",
        Some(FinishReason::Stop | FinishReason::Other | FinishReason::Error) | None => "end_turn",
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicBlockOut<'a> {
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
}

#[derive(Serialize)]
struct AnthropicMessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<AnthropicBlockOut<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: AnthropicUsage,
}

/// A tool call's `input`, from the JSON text of its arguments.
///
/// Anthropic's `input` must be an object, and SDKs that validate the response refuse anything
/// else, taking the rest of the message down with it. Empty arguments (a call without any) are
/// `{}`. Arguments that are not a JSON object (an upstream cut off mid-call, or a model that
/// wrote broken JSON) are neither dropped nor passed as a bare string: they are kept whole as
/// `{"_raw": "<text>"}`, so the tool sees a field it does not expect and fails visibly, and a
/// person can still read what the model wrote. Only non-Anthropic upstreams can produce this;
/// a stream passes the same text through `partial_json` unchanged.
fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let mut raw = Map::new();
            raw.insert("_raw".to_owned(), Value::String(arguments.to_owned()));
            Value::Object(raw)
        }
    }
}

/// Render a whole (non-streaming) Message. `model` is the route name the client asked for and
/// `id` a `msg_...` id chosen by the caller.
///
/// Blocks come in Anthropic's order: thinking, text, tool calls. A refusal is text (Anthropic
/// has no separate refusal field), appended to the text as the stream encoder appends it.
pub fn render_message(resp: &ChatResponse, id: &str, model: &str) -> Vec<u8> {
    let text = match &resp.refusal {
        None => std::borrow::Cow::Borrowed(resp.text.as_str()),
        Some(r) => std::borrow::Cow::Owned(format!("{}{r}", resp.text)),
    };
    let mut content = Vec::with_capacity(2 + resp.tool_calls.len());
    if !resp.reasoning.is_empty() || resp.reasoning_signature.is_some() {
        content.push(AnthropicBlockOut::Thinking {
            thinking: &resp.reasoning,
            // Reasoning from a vendor without signatures: an empty one, which an Anthropic
            // upstream would refuse if it came back, but which the response schema requires.
            signature: resp.reasoning_signature.as_deref().unwrap_or(""),
        });
    }
    if !text.is_empty() {
        content.push(AnthropicBlockOut::Text { text: &text });
    }
    for call in &resp.tool_calls {
        content.push(AnthropicBlockOut::ToolUse {
            id: &call.id,
            name: &call.name,
            input: tool_input(&call.arguments),
        });
    }
    let body = AnthropicMessageOut {
        id,
        kind: "message",
        role: "assistant",
        model,
        content,
        stop_reason: Some(stop_reason(resp.finish, !resp.tool_calls.is_empty())),
        stop_sequence: None,
        usage: AnthropicUsage::from(&resp.usage.unwrap_or_default()),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The body of `/v1/messages/count_tokens`.
pub fn render_count_tokens(input_tokens: u64) -> Vec<u8> {
    format!("{{\"input_tokens\":{input_tokens}}}").into_bytes()
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[expect(
    clippy::enum_variant_names,
    reason = "the variant names are Anthropic's delta type names"
)]
enum AnthropicDelta<'a> {
    TextDelta { text: &'a str },
    ThinkingDelta { thinking: &'a str },
    SignatureDelta { signature: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct AnthropicMessageDelta {
    stop_reason: &'static str,
    stop_sequence: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicStreamEvent<'a> {
    MessageStart {
        message: AnthropicMessageOut<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: AnthropicBlockOut<'a>,
    },
    ContentBlockDelta {
        index: u32,
        delta: AnthropicDelta<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: AnthropicMessageDelta,
        usage: AnthropicUsage,
    },
    MessageStop,
}

impl AnthropicStreamEvent<'_> {
    /// The SSE `event:` name, which Anthropic repeats as the data's `type`.
    fn name(&self) -> &'static str {
        match self {
            Self::MessageStart { .. } => "message_start",
            Self::ContentBlockStart { .. } => "content_block_start",
            Self::ContentBlockDelta { .. } => "content_block_delta",
            Self::ContentBlockStop { .. } => "content_block_stop",
            Self::MessageDelta { .. } => "message_delta",
            Self::MessageStop => "message_stop",
        }
    }
}

fn write_event(out: &mut Vec<u8>, event: &AnthropicStreamEvent<'_>) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.name().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    if serde_json::to_writer(&mut *out, event).is_err() {
        // Serialising our own structs cannot fail; keep the stream well-formed regardless.
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

/// What a content block holds; a change of kind closes one block and opens the next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Thinking,
    Text,
    /// A tool call, by its canonical index.
    Tool(u32),
}

#[derive(Clone, Copy)]
struct OpenBlock {
    kind: BlockKind,
    /// Anthropic's block index: dense, in the order blocks were opened.
    index: u32,
}

/// Encodes canonical events as Anthropic Messages SSE:
/// `message_start`, then content blocks (`content_block_start`, deltas, `content_block_stop`),
/// then `message_delta` with the stop reason and usage, then `message_stop`.
///
/// Anthropic's blocks are strictly sequential and the SDKs rely on it, so the encoder holds at
/// most one block open and guarantees, whatever order the events come in: `message_start` at
/// most once and before any block; every block started is stopped exactly once; nothing after
/// `message_stop` or `error`. Usage and finish are only remembered when they arrive and are
/// written in `message_delta` at [`end`](Self::end), so their order does not matter.
pub struct MessagesStreamEncoder {
    id: String,
    model: String,
    started: bool,
    /// `message_stop` or `error` went out: the stream is over.
    done: bool,
    open: Option<OpenBlock>,
    next_index: u32,
    /// The canonical index of the last tool call started, if any.
    last_tool: Option<u32>,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
}

impl MessagesStreamEncoder {
    pub fn new(id: String, model: String) -> Self {
        Self {
            id,
            model,
            started: false,
            done: false,
            open: None,
            next_index: 0,
            last_tool: None,
            usage: None,
            finish: None,
        }
    }

    /// `message_start` is written with the first content (or at the end), not on the
    /// upstream's `Start`: an upstream usually reports the prompt's usage right after it
    /// starts, and waiting for the first content lets `message_start` carry the real
    /// `input_tokens`, as Anthropic's own does, instead of zeros. Zeros when none is known.
    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let usage = AnthropicUsage::from(&self.usage.unwrap_or_default());
        let event = AnthropicStreamEvent::MessageStart {
            message: AnthropicMessageOut {
                id: &self.id,
                kind: "message",
                role: "assistant",
                model: &self.model,
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: None,
                usage,
            },
        };
        write_event(out, &event);
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some(block) = self.open.take() {
            write_event(
                out,
                &AnthropicStreamEvent::ContentBlockStop { index: block.index },
            );
        }
    }

    /// Close the open block (if any) and start a new one; returns its Anthropic index.
    fn open_block(
        &mut self,
        kind: BlockKind,
        start: AnthropicBlockOut<'_>,
        out: &mut Vec<u8>,
    ) -> u32 {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        write_event(
            out,
            &AnthropicStreamEvent::ContentBlockStart {
                index,
                content_block: start,
            },
        );
        self.open = Some(OpenBlock { kind, index });
        index
    }

    /// The index of the open block of `kind`, opening one with `start` if another is open.
    fn ensure_block(
        &mut self,
        kind: BlockKind,
        start: AnthropicBlockOut<'_>,
        out: &mut Vec<u8>,
    ) -> u32 {
        let current = self.open;
        match current {
            Some(block) if block.kind == kind => block.index,
            _ => self.open_block(kind, start, out),
        }
    }

    /// Append the frames for one event to `out` (possibly none).
    pub fn event(&mut self, event: &StreamEvent, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match event {
            // The client sees the id and model relais chose, not the upstream's.
            StreamEvent::Start { .. } => {}
            StreamEvent::Usage(u) => match &mut self.usage {
                Some(existing) => existing.merge(u),
                None => self.usage = Some(*u),
            },
            StreamEvent::Finish(f) => self.finish = Some(*f),
            // Forwarded chunks are OpenAI's wire format and only requests from OpenAI clients
            // ask for them (`ChatRequest::passthrough`); an Anthropic client never gets one.
            // Only a Responses client's request is answered natively.
            StreamEvent::Raw(_) | StreamEvent::Native(_) => {}
            // A refusal is text in Anthropic's format; next to other text it joins its block.
            StreamEvent::TextDelta(text) | StreamEvent::RefusalDelta(text) => {
                if text.is_empty() {
                    return;
                }
                self.ensure_started(out);
                let index =
                    self.ensure_block(BlockKind::Text, AnthropicBlockOut::Text { text: "" }, out);
                write_event(
                    out,
                    &AnthropicStreamEvent::ContentBlockDelta {
                        index,
                        delta: AnthropicDelta::TextDelta { text },
                    },
                );
            }
            StreamEvent::ReasoningDelta { text, signature } => {
                if text.is_empty() && signature.is_none() {
                    return;
                }
                self.ensure_started(out);
                let index = self.ensure_block(
                    BlockKind::Thinking,
                    AnthropicBlockOut::Thinking {
                        thinking: "",
                        signature: "",
                    },
                    out,
                );
                if !text.is_empty() {
                    write_event(
                        out,
                        &AnthropicStreamEvent::ContentBlockDelta {
                            index,
                            delta: AnthropicDelta::ThinkingDelta { thinking: text },
                        },
                    );
                }
                if let Some(signature) = signature {
                    write_event(
                        out,
                        &AnthropicStreamEvent::ContentBlockDelta {
                            index,
                            delta: AnthropicDelta::SignatureDelta { signature },
                        },
                    );
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                let current = self.open;
                if matches!(current, Some(OpenBlock { kind: BlockKind::Tool(t), .. }) if t == *index)
                {
                    // The call in progress announced again: nothing new to say.
                    return;
                }
                if self.last_tool.is_some_and(|last| *index <= last) {
                    let err = Error::upstream(
                        ErrorKind::Protocol,
                        format!("the upstream started tool call {index} twice"),
                    );
                    self.error(&err, out);
                    return;
                }
                self.ensure_started(out);
                self.last_tool = Some(*index);
                self.open_block(
                    BlockKind::Tool(*index),
                    AnthropicBlockOut::ToolUse {
                        id,
                        name,
                        input: Value::Object(Map::new()),
                    },
                    out,
                );
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if arguments.is_empty() {
                    return;
                }
                let current = self.open;
                match current {
                    Some(OpenBlock {
                        kind: BlockKind::Tool(t),
                        index: block,
                    }) if t == *index => write_event(
                        out,
                        &AnthropicStreamEvent::ContentBlockDelta {
                            index: block,
                            delta: AnthropicDelta::InputJsonDelta {
                                partial_json: arguments,
                            },
                        },
                    ),
                    // Arguments for a call whose block is already closed (an upstream that
                    // interleaves calls) or was never opened. Anthropic's format cannot carry
                    // them, and dropping them would hand the client a call with silently
                    // wrong arguments, which it might execute: end the stream with an error.
                    _ => {
                        let err = Error::upstream(
                            ErrorKind::Protocol,
                            format!(
                                "the upstream sent arguments for tool call {index} outside \
                                 its turn, which the Anthropic stream format cannot carry"
                            ),
                        );
                        self.error(&err, out);
                    }
                }
            }
        }
    }

    /// The closing frames of a stream that ended well: the open block's stop, `message_delta`
    /// with the stop reason and the merged usage, then `message_stop`.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.ensure_started(out);
        self.close_block(out);
        self.done = true;
        write_event(
            out,
            &AnthropicStreamEvent::MessageDelta {
                delta: AnthropicMessageDelta {
                    stop_reason: stop_reason(self.finish, self.last_tool.is_some()),
                    stop_sequence: None,
                },
                usage: AnthropicUsage::from(&self.usage.unwrap_or_default()),
            },
        );
        write_event(out, &AnthropicStreamEvent::MessageStop);
    }

    /// An error after the stream started: the open block is stopped, then `event: error`
    /// ends the stream (no `message_delta` or `message_stop` follows, as with Anthropic).
    ///
    /// No `message_start` is invented for an error that comes before any content: the SDKs
    /// raise on `event: error` wherever it appears, and a `message_start` would only make
    /// their accumulators build an empty message that never existed.
    pub fn error(&mut self, err: &Error, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.close_block(out);
        self.done = true;
        super::error::write_stream_error(err, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relais_core::{Collector, ToolCall};
    use std::path::PathBuf;

    /// Split SSE output into (event name, data) pairs, checking the framing on the way.
    fn frames(out: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
        text.split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (event, data) = f
                    .strip_prefix("event: ")
                    .and_then(|f| f.split_once("\ndata: "))
                    .unwrap_or_else(|| panic!("bad frame {f:?}"));
                let data: Value = serde_json::from_str(data).unwrap();
                assert_eq!(data["type"], event, "event name and data type differ");
                (event.to_owned(), data)
            })
            .collect()
    }

    fn encode(events: &[StreamEvent]) -> Vec<(String, Value)> {
        let mut enc = MessagesStreamEncoder::new("msg_1".into(), "route".into());
        let mut out = Vec::new();
        for e in events {
            enc.event(e, &mut out);
        }
        enc.end(&mut out);
        frames(&out)
    }

    fn names(frames: &[(String, Value)]) -> Vec<&str> {
        frames.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Check the block discipline of an encoded stream: one `message_start` first, blocks
    /// dense and strictly sequential, each stopped exactly once, deltas only inside their block.
    fn assert_well_formed(frames: &[(String, Value)]) {
        let mut open: Option<u64> = None;
        let mut next = 0;
        for (i, (name, data)) in frames.iter().enumerate() {
            match name.as_str() {
                "message_start" => assert_eq!(i, 0, "message_start must come first, once"),
                "content_block_start" => {
                    assert!(open.is_none(), "block opened while another is open");
                    assert_eq!(data["index"], next);
                    open = Some(next);
                    next += 1;
                }
                "content_block_delta" => {
                    assert_eq!(Some(data["index"].as_u64().unwrap()), open);
                }
                "content_block_stop" => {
                    assert_eq!(Some(data["index"].as_u64().unwrap()), open);
                    open = None;
                }
                "message_delta" | "message_stop" | "error" => {
                    assert!(open.is_none(), "{name} with a block still open");
                }
                other => panic!("unexpected event {other}"),
            }
        }
    }

    /// What an Anthropic SDK would accumulate from the frames.
    #[derive(Default, Debug, PartialEq)]
    struct Folded {
        text: String,
        thinking: String,
        signature: Option<String>,
        /// (id, name, concatenated partial_json)
        tools: Vec<(String, String, String)>,
        stop_reason: Option<String>,
        usage: Option<Value>,
    }

    fn fold(frames: &[(String, Value)]) -> Folded {
        let mut f = Folded::default();
        let mut kinds: Vec<String> = Vec::new();
        for (name, data) in frames {
            match name.as_str() {
                "content_block_start" => {
                    let block = &data["content_block"];
                    let kind = block["type"].as_str().unwrap().to_owned();
                    if kind == "tool_use" {
                        f.tools.push((
                            block["id"].as_str().unwrap().to_owned(),
                            block["name"].as_str().unwrap().to_owned(),
                            String::new(),
                        ));
                    }
                    kinds.push(kind);
                }
                "content_block_delta" => {
                    let d = &data["delta"];
                    match d["type"].as_str().unwrap() {
                        "text_delta" => f.text.push_str(d["text"].as_str().unwrap()),
                        "thinking_delta" => f.thinking.push_str(d["thinking"].as_str().unwrap()),
                        "signature_delta" => {
                            f.signature = Some(d["signature"].as_str().unwrap().to_owned());
                        }
                        "input_json_delta" => {
                            let args = &mut f.tools.last_mut().unwrap().2;
                            args.push_str(d["partial_json"].as_str().unwrap());
                        }
                        other => panic!("unexpected delta {other}"),
                    }
                }
                "message_delta" => {
                    f.stop_reason = data["delta"]["stop_reason"].as_str().map(str::to_owned);
                    f.usage = Some(data["usage"].clone());
                }
                _ => {}
            }
        }
        f
    }

    #[test]
    fn text_stream_exact_sequence() {
        let frames = encode(&[
            StreamEvent::Start {
                id: Some("up_1".into()),
                model: Some("up-model".into()),
            },
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta(String::new()),
            StreamEvent::TextDelta("lo".into()),
            StreamEvent::Finish(FinishReason::Stop),
            StreamEvent::Usage(Usage {
                input_tokens: 10,
                output_tokens: 2,
                cache_read_tokens: 4,
                cache_write_tokens: 1,
                reasoning_tokens: 0,
            }),
        ]);
        assert_eq!(
            names(&frames),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_well_formed(&frames);
        assert_eq!(
            frames[0].1,
            serde_json::json!({
                "type": "message_start",
                "message": {
                    "id": "msg_1", "type": "message", "role": "assistant", "model": "route",
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 0}
                }
            })
        );
        assert_eq!(
            frames[1].1,
            serde_json::json!({"type": "content_block_start", "index": 0,
                               "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(
            frames[2].1,
            serde_json::json!({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": "Hel"}})
        );
        assert_eq!(
            frames[4].1,
            serde_json::json!({"type": "content_block_stop", "index": 0})
        );
        assert_eq!(
            frames[5].1,
            serde_json::json!({
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"input_tokens": 5, "cache_creation_input_tokens": 1,
                          "cache_read_input_tokens": 4, "output_tokens": 2}
            })
        );
        assert_eq!(frames[6].1, serde_json::json!({"type": "message_stop"}));
    }

    #[test]
    fn reasoning_then_text_then_two_tools() {
        let events = vec![
            StreamEvent::Start {
                id: None,
                model: None,
            },
            StreamEvent::ReasoningDelta {
                text: "Think".into(),
                signature: None,
            },
            StreamEvent::ReasoningDelta {
                text: "ing.".into(),
                signature: None,
            },
            StreamEvent::ReasoningDelta {
                text: String::new(),
                signature: Some("sig-1".into()),
            },
            StreamEvent::TextDelta("Calling.".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "toolu_a".into(),
                name: "alpha".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"x\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "1}".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "toolu_b".into(),
                name: "beta".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: String::new(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{}".into(),
            },
            StreamEvent::Usage(Usage {
                input_tokens: 30,
                output_tokens: 12,
                ..Usage::default()
            }),
            StreamEvent::Finish(FinishReason::ToolCalls),
        ];
        let frames = encode(&events);
        assert_eq!(
            names(&frames),
            [
                "message_start",
                "content_block_start", // 0 thinking
                "content_block_delta",
                "content_block_delta",
                "content_block_delta", // signature
                "content_block_stop",
                "content_block_start", // 1 text
                "content_block_delta",
                "content_block_stop",
                "content_block_start", // 2 tool_use alpha
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start", // 3 tool_use beta
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_well_formed(&frames);
        assert_eq!(
            frames[1].1["content_block"],
            serde_json::json!({"type": "thinking", "thinking": "", "signature": ""})
        );
        assert_eq!(
            frames[4].1["delta"],
            serde_json::json!({"type": "signature_delta", "signature": "sig-1"})
        );
        assert_eq!(
            frames[9].1,
            serde_json::json!({"type": "content_block_start", "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_a", "name": "alpha", "input": {}}})
        );
        assert_eq!(
            frames[10].1["delta"],
            serde_json::json!({"type": "input_json_delta", "partial_json": "{\"x\":"})
        );

        // Folding the frames back gives what the canonical events fold to.
        let folded = fold(&frames);
        let mut c = Collector::new();
        for e in &events {
            c.push(e).unwrap();
        }
        let resp = c.finish();
        assert_eq!(folded.text, resp.text);
        assert_eq!(folded.thinking, resp.reasoning);
        assert_eq!(folded.signature, resp.reasoning_signature);
        let calls: Vec<(String, String, String)> = resp
            .tool_calls
            .iter()
            .map(|c| (c.id.clone(), c.name.clone(), c.arguments.clone()))
            .collect();
        assert_eq!(folded.tools, calls);
        assert_eq!(folded.stop_reason.as_deref(), Some("tool_use"));
        assert_eq!(folded.usage.unwrap()["output_tokens"], 12);
    }

    #[test]
    fn error_mid_stream_stops_the_block_then_ends() {
        let mut enc = MessagesStreamEncoder::new("msg_1".into(), "route".into());
        let mut out = Vec::new();
        enc.event(&StreamEvent::TextDelta("partial".into()), &mut out);
        enc.error(
            &Error::upstream(ErrorKind::Overloaded, "Overloaded"),
            &mut out,
        );
        // Nothing may follow the error, whatever the caller does next.
        enc.event(&StreamEvent::TextDelta("late".into()), &mut out);
        enc.end(&mut out);
        enc.error(&Error::internal("again"), &mut out);
        let frames = frames(&out);
        assert_eq!(
            names(&frames),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "error",
            ]
        );
        assert_well_formed(&frames);
        assert_eq!(
            frames[4].1,
            serde_json::json!({"type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
    }

    #[test]
    fn error_before_anything_is_only_the_error() {
        let mut enc = MessagesStreamEncoder::new("msg_1".into(), "route".into());
        let mut out = Vec::new();
        enc.event(
            &StreamEvent::Start {
                id: None,
                model: None,
            },
            &mut out,
        );
        enc.error(&Error::upstream(ErrorKind::Timeout, "too slow"), &mut out);
        enc.end(&mut out);
        assert_eq!(names(&frames(&out)), ["error"]);
    }

    #[test]
    fn usage_first_and_finish_first_orders() {
        let frames = encode(&[
            StreamEvent::Usage(Usage {
                input_tokens: 20,
                cache_read_tokens: 15,
                output_tokens: 1,
                ..Usage::default()
            }),
            StreamEvent::Finish(FinishReason::Length),
            StreamEvent::TextDelta("cut".into()),
            StreamEvent::Usage(Usage {
                input_tokens: 20,
                cache_read_tokens: 15,
                output_tokens: 9,
                ..Usage::default()
            }),
        ]);
        assert_well_formed(&frames);
        // The usage known before the first content rides on message_start.
        assert_eq!(frames[0].1["message"]["usage"]["input_tokens"], 5);
        assert_eq!(
            frames[0].1["message"]["usage"]["cache_read_input_tokens"],
            15
        );
        let folded = fold(&frames);
        assert_eq!(folded.stop_reason.as_deref(), Some("max_tokens"));
        assert_eq!(folded.usage.unwrap()["output_tokens"], 9);
    }

    #[test]
    fn empty_stream_is_a_valid_empty_message() {
        let frames = encode(&[]);
        assert_eq!(
            names(&frames),
            ["message_start", "message_delta", "message_stop"]
        );
        assert_eq!(frames[1].1["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn tool_calls_with_a_plain_stop_report_tool_use() {
        let frames = encode(&[
            StreamEvent::ToolCallStart {
                index: 0,
                id: "c".into(),
                name: "f".into(),
            },
            StreamEvent::Finish(FinishReason::Stop),
        ]);
        assert_well_formed(&frames);
        assert_eq!(fold(&frames).stop_reason.as_deref(), Some("tool_use"));
    }

    #[test]
    fn refusal_is_text_and_joins_the_text_block() {
        let frames = encode(&[
            StreamEvent::TextDelta("I ".into()),
            StreamEvent::RefusalDelta("can't help with that.".into()),
            StreamEvent::Finish(FinishReason::Refusal),
        ]);
        assert_eq!(
            names(&frames),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let folded = fold(&frames);
        assert_eq!(folded.text, "I can't help with that.");
        assert_eq!(folded.stop_reason.as_deref(), Some("refusal"));
    }

    #[test]
    fn interleaved_tool_arguments_end_with_an_error_not_wrong_arguments() {
        let mut enc = MessagesStreamEncoder::new("msg_1".into(), "route".into());
        let mut out = Vec::new();
        for e in [
            StreamEvent::ToolCallStart {
                index: 0,
                id: "a".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "b".into(),
                name: "g".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{}".into(),
            },
        ] {
            enc.event(&e, &mut out);
        }
        enc.end(&mut out);
        let frames = frames(&out);
        assert_well_formed(&frames);
        assert_eq!(frames.last().unwrap().0, "error");
        assert_eq!(frames.last().unwrap().1["error"]["type"], "api_error");
        assert!(!names(&frames).contains(&"message_stop"));
    }

    #[test]
    fn repeated_tool_start_is_ignored() {
        let frames = encode(&[
            StreamEvent::ToolCallStart {
                index: 0,
                id: "a".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "a".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"k\":2}".into(),
            },
        ]);
        assert_well_formed(&frames);
        let folded = fold(&frames);
        let want = vec![("a".to_owned(), "f".to_owned(), "{\"k\":2}".to_owned())];
        assert_eq!(folded.tools, want);
    }

    #[test]
    fn render_message_blocks_and_usage() {
        let resp = ChatResponse {
            id: Some("upstream".into()),
            model: Some("upstream-model".into()),
            text: "Here you go.".into(),
            refusal: None,
            reasoning: "The user wants weather.".into(),
            reasoning_signature: Some("sig-xyz".into()),
            tool_calls: vec![
                ToolCall {
                    id: "toolu_1".into(),
                    name: "weather".into(),
                    arguments: "{\"city\":\"Paris\"}".into(),
                },
                ToolCall {
                    id: "toolu_2".into(),
                    name: "time".into(),
                    arguments: String::new(),
                },
                ToolCall {
                    id: "toolu_3".into(),
                    name: "broken".into(),
                    arguments: "{\"city\":\"Par".into(),
                },
            ],
            usage: Some(Usage {
                input_tokens: 1000,
                output_tokens: 50,
                cache_read_tokens: 700,
                cache_write_tokens: 200,
                reasoning_tokens: 20,
            }),
            finish: Some(FinishReason::ToolCalls),
            native_items: Vec::new(),
        };
        let body: Value =
            serde_json::from_slice(&render_message(&resp, "msg_abc", "route")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "id": "msg_abc",
                "type": "message",
                "role": "assistant",
                "model": "route",
                "content": [
                    {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig-xyz"},
                    {"type": "text", "text": "Here you go."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}},
                    {"type": "tool_use", "id": "toolu_3", "name": "broken", "input": {"_raw": "{\"city\":\"Par"}}
                ],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": {
                    "input_tokens": 100,
                    "cache_creation_input_tokens": 200,
                    "cache_read_input_tokens": 700,
                    "output_tokens": 50
                }
            })
        );
    }

    #[test]
    fn render_message_stop_reasons_and_edge_cases() {
        let render = |resp: &ChatResponse| -> Value {
            serde_json::from_slice(&render_message(resp, "msg_1", "m")).unwrap()
        };
        let mut resp = ChatResponse {
            text: "hi".into(),
            ..ChatResponse::default()
        };
        assert_eq!(render(&resp)["stop_reason"], "end_turn");
        // No usage at all renders zeros rather than omitting the required object.
        assert_eq!(render(&resp)["usage"]["input_tokens"], 0);
        for (finish, want) in [
            (FinishReason::Stop, "end_turn"),
            (FinishReason::Length, "max_tokens"),
            (FinishReason::ToolCalls, "tool_use"),
            (FinishReason::ContentFilter, "refusal"),
            (FinishReason::Refusal, "refusal"),
            (FinishReason::Error, "end_turn"),
            (FinishReason::Other, "end_turn"),
        ] {
            resp.finish = Some(finish);
            assert_eq!(render(&resp)["stop_reason"], want, "{finish:?}");
        }
        // A refusal is text; cache figures larger than input cannot wrap.
        let resp = ChatResponse {
            refusal: Some("No.".into()),
            usage: Some(Usage {
                input_tokens: 3,
                cache_read_tokens: 5,
                ..Usage::default()
            }),
            finish: Some(FinishReason::Refusal),
            ..ChatResponse::default()
        };
        let body = render(&resp);
        assert_eq!(
            body["content"],
            serde_json::json!([{"type": "text", "text": "No."}])
        );
        assert_eq!(body["usage"]["input_tokens"], 0);
        // Nothing at all: an empty content array, as Anthropic sends for a bare refusal.
        assert_eq!(
            render(&ChatResponse::default())["content"],
            serde_json::json!([])
        );
        // Arguments that are valid JSON but not an object are kept, wrapped.
        assert_eq!(tool_input("[1,2]"), serde_json::json!({"_raw": "[1,2]"}));
        assert_eq!(tool_input("  "), serde_json::json!({}));
    }

    #[test]
    fn count_tokens_body() {
        let v: Value = serde_json::from_slice(&render_count_tokens(1234)).unwrap();
        assert_eq!(v, serde_json::json!({"input_tokens": 1234}));
    }

    // Conformance with Anthropic's own recordings in `shared/fixtures/anthropic`.

    /// Path of a recording. The corpus lives beside the repository (`../shared/fixtures`); a
    /// missing corpus fails the test loudly instead of skipping it.
    fn fixture(rel: &str) -> String {
        let root = std::env::var_os("RELAIS_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
            });
        let path = root.join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "fixture {} is unreadable ({e}): set RELAIS_FIXTURES or check out shared/ beside the repo",
                path.display()
            )
        })
    }

    /// Anthropic usage to canonical: canonical input includes cache reads and writes.
    fn canonical_usage(u: &Value) -> Usage {
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        Usage {
            input_tokens: n("input_tokens")
                + n("cache_read_input_tokens")
                + n("cache_creation_input_tokens"),
            output_tokens: n("output_tokens"),
            cache_read_tokens: n("cache_read_input_tokens"),
            cache_write_tokens: n("cache_creation_input_tokens"),
            reasoning_tokens: 0,
        }
    }

    fn canonical_finish(stop_reason: &str) -> FinishReason {
        match stop_reason {
            "end_turn" | "stop_sequence" => FinishReason::Stop,
            "max_tokens" => FinishReason::Length,
            "tool_use" => FinishReason::ToolCalls,
            "refusal" => FinishReason::Refusal,
            _ => FinishReason::Other,
        }
    }

    /// A minimal decoder of recorded chunks into canonical events, standing in for the
    /// Anthropic provider so that this crate's tests need no other crate.
    fn decode_chunks(lines: &str) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        let mut tools = 0u32;
        for line in lines.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            match v["type"].as_str().unwrap() {
                "message_start" => {
                    events.push(StreamEvent::Start {
                        id: v["message"]["id"].as_str().map(str::to_owned),
                        model: v["message"]["model"].as_str().map(str::to_owned),
                    });
                    events.push(StreamEvent::Usage(canonical_usage(&v["message"]["usage"])));
                }
                "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                    events.push(StreamEvent::ToolCallStart {
                        index: tools,
                        id: v["content_block"]["id"].as_str().unwrap().to_owned(),
                        name: v["content_block"]["name"].as_str().unwrap().to_owned(),
                    });
                    tools += 1;
                }
                "content_block_delta" => {
                    let d = &v["delta"];
                    let s = |k: &str| d[k].as_str().unwrap().to_owned();
                    events.push(match d["type"].as_str().unwrap() {
                        "text_delta" => StreamEvent::TextDelta(s("text")),
                        "thinking_delta" => StreamEvent::ReasoningDelta {
                            text: s("thinking"),
                            signature: None,
                        },
                        "signature_delta" => StreamEvent::ReasoningDelta {
                            text: String::new(),
                            signature: Some(s("signature")),
                        },
                        "input_json_delta" => StreamEvent::ToolCallDelta {
                            index: tools - 1,
                            arguments: s("partial_json"),
                        },
                        other => panic!("unexpected delta {other}"),
                    });
                }
                "message_delta" => {
                    events.push(StreamEvent::Usage(canonical_usage(&v["usage"])));
                    let reason = v["delta"]["stop_reason"].as_str().unwrap();
                    events.push(StreamEvent::Finish(canonical_finish(reason)));
                }
                _ => {}
            }
        }
        events
    }

    /// Re-encoding a recorded stream's events gives back the recorded frames: identical
    /// content blocks, and the same stop reason and token counts. Pings and empty deltas, which
    /// carry nothing, are left out of the comparison.
    #[test]
    fn reencodes_recorded_streams() {
        for name in [
            "anthropic-text",
            "anthropic-json-tool.1",
            "anthropic-tool-no-args",
            "anthropic-message-delta-input-tokens",
            "anthropic-refusal",
        ] {
            let recorded = fixture(&format!("anthropic/{name}.chunks.txt"));
            let want: Vec<Value> = recorded
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|v| v["type"] != "ping")
                .filter(|v| {
                    (v["delta"]["partial_json"] != "" && v["delta"]["text"] != "")
                        || v["type"] != "content_block_delta"
                })
                .collect();
            let start = &want[0]["message"];
            let mut enc = MessagesStreamEncoder::new(
                start["id"].as_str().unwrap().to_owned(),
                start["model"].as_str().unwrap().to_owned(),
            );
            let mut out = Vec::new();
            for e in decode_chunks(&recorded) {
                enc.event(&e, &mut out);
            }
            enc.end(&mut out);
            let got = frames(&out);
            assert_well_formed(&got);
            let got: Vec<Value> = got.into_iter().map(|(_, v)| v).collect();
            assert_eq!(got.len(), want.len(), "{name}: {got:#?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g["type"], w["type"], "{name}");
                match w["type"].as_str().unwrap() {
                    "message_start" => {
                        let (g, w) = (&g["message"], &w["message"]);
                        for k in ["id", "type", "role", "model", "content", "stop_reason"] {
                            assert_eq!(g[k], w[k], "{name}: message_start.{k}");
                        }
                        assert_eq!(
                            g["usage"]["input_tokens"], w["usage"]["input_tokens"],
                            "{name}"
                        );
                    }
                    "message_delta" => {
                        assert_eq!(g["delta"]["stop_reason"], w["delta"]["stop_reason"]);
                        for k in ["input_tokens", "output_tokens"] {
                            assert_eq!(g["usage"][k], w["usage"][k], "{name}: usage.{k}");
                        }
                    }
                    _ => assert_eq!(g, w, "{name}"),
                }
            }
        }
    }

    /// Rendering a recorded whole response's content gives back the recorded content, stop
    /// reason and token counts.
    #[test]
    fn rerenders_recorded_messages() {
        for name in [
            "anthropic-text",
            "anthropic-json-tool.1",
            "anthropic-tool-no-args",
            "anthropic-refusal",
        ] {
            let want: Value =
                serde_json::from_str(&fixture(&format!("anthropic/{name}.json"))).unwrap();
            let mut resp = ChatResponse::default();
            for block in want["content"].as_array().unwrap() {
                match block["type"].as_str().unwrap() {
                    "text" => resp.text.push_str(block["text"].as_str().unwrap()),
                    "tool_use" => resp.tool_calls.push(ToolCall {
                        id: block["id"].as_str().unwrap().to_owned(),
                        name: block["name"].as_str().unwrap().to_owned(),
                        arguments: block["input"].to_string(),
                    }),
                    other => panic!("{name}: unexpected block {other}"),
                }
            }
            resp.usage = Some(canonical_usage(&want["usage"]));
            resp.finish = Some(canonical_finish(want["stop_reason"].as_str().unwrap()));
            let id = want["id"].as_str().unwrap();
            let model = want["model"].as_str().unwrap();
            let got: Value = serde_json::from_slice(&render_message(&resp, id, model)).unwrap();
            for k in ["id", "type", "role", "model", "content", "stop_reason"] {
                assert_eq!(got[k], want[k], "{name}: {k}");
            }
            for k in [
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
            ] {
                assert_eq!(got["usage"][k], want["usage"][k], "{name}: usage.{k}");
            }
        }
    }
}
