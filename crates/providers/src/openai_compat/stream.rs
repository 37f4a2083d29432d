//! OpenAI responses and stream chunks → canonical events. One decoder serves both: a whole
//! response is decoded as if it were a single chunk holding everything.

use relais_core::{Error, ErrorKind, FinishReason, StreamEvent, Usage};
use serde_json::Value;

use super::wire::{OpenAiOutMessage, OpenAiResponse, OpenAiUsage};

pub(crate) fn finish_reason(s: &str) -> FinishReason {
    match s {
        "stop" | "end_turn" | "eos" => FinishReason::Stop,
        "length" | "max_tokens" | "model_length" => FinishReason::Length,
        "tool_calls" | "function_call" | "tool_use" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        "refusal" => FinishReason::Refusal,
        "error" => FinishReason::Error,
        _ => FinishReason::Other,
    }
}

/// Normalise an OpenAI-style usage object (see [`Usage`] for the conventions).
pub(crate) fn usage(u: &OpenAiUsage) -> Usage {
    let reasoning = u
        .completion_tokens_details
        .as_ref()
        .and_then(|d| d.reasoning_tokens)
        .unwrap_or(0);
    let mut output = u.completion_tokens;
    // Some servers (xAI) count reasoning outside completion_tokens; their total gives it away.
    if let Some(total) = u.total_tokens {
        if reasoning > 0
            && total == u.prompt_tokens + u.completion_tokens + reasoning
            && total != u.prompt_tokens + u.completion_tokens
        {
            output += reasoning;
        }
    }
    Usage {
        input_tokens: u.prompt_tokens,
        output_tokens: output,
        cache_read_tokens: u
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0),
        cache_write_tokens: 0,
        reasoning_tokens: reasoning,
    }
}

/// State carried across chunks: which upstream tool-call slots map to which canonical index.
#[derive(Default)]
pub(crate) struct ChunkDecoder {
    /// Content chunks may be forwarded as they came (see [`forwardable`]).
    pub(crate) passthrough: bool,
    pub(crate) started: bool,
    /// (upstream index if it sent one, call id) per canonical index.
    tools: Vec<(Option<u32>, Option<String>)>,
    pub(crate) finished: bool,
}

impl ChunkDecoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn forwarding(passthrough: bool) -> Self {
        Self {
            passthrough,
            ..Self::default()
        }
    }

    pub(crate) fn decode(
        &mut self,
        resp: OpenAiResponse<'_>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        if let Some(err) = resp.error {
            return Err(super::error::in_stream_error(&err));
        }
        if !self.started && (!resp.choices.is_empty() || resp.usage.is_some()) {
            self.started = true;
            out.push(StreamEvent::Start {
                id: resp.id.filter(|s| !s.is_empty()).map(|s| s.into_owned()),
                model: resp.model.filter(|s| !s.is_empty()).map(|s| s.into_owned()),
            });
        }
        for choice in resp.choices {
            // We ask for one choice; a server that sends more is answering someone else's request.
            if choice.index != 0 {
                continue;
            }
            if let Some(text) = choice.text {
                if !text.is_empty() {
                    out.push(StreamEvent::TextDelta(text));
                }
            }
            if let Some(msg) = choice.message.or(choice.delta) {
                self.message(msg, out)?;
            }
            if let Some(f) = choice.finish_reason.as_deref() {
                if !self.finished {
                    self.finished = true;
                    out.push(StreamEvent::Finish(finish_reason(f)));
                }
            }
        }
        if let Some(u) = &resp.usage {
            out.push(StreamEvent::Usage(usage(u)));
        }
        Ok(())
    }

    fn message(&mut self, msg: OpenAiOutMessage, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        for r in [msg.reasoning_content, msg.reasoning].into_iter().flatten() {
            if !r.is_empty() {
                out.push(StreamEvent::ReasoningDelta {
                    text: r,
                    signature: None,
                });
            }
        }
        match msg.content {
            Some(Value::String(s)) if !s.is_empty() => out.push(StreamEvent::TextDelta(s)),
            Some(Value::Array(parts)) => content_parts(&parts, out),
            _ => {}
        }
        if let Some(r) = msg.refusal {
            if !r.is_empty() {
                out.push(StreamEvent::RefusalDelta(r));
            }
        }
        for call in msg.tool_calls.unwrap_or_default() {
            let slot = self.slot(call.index, call.id.as_deref());
            let (name, args) = match call.function {
                Some(f) => (
                    f.name.filter(|n| !n.is_empty()),
                    match f.arguments {
                        Some(Value::String(s)) => s,
                        Some(Value::Null) | None => String::new(),
                        Some(other) => other.to_string(),
                    },
                ),
                None => (None, String::new()),
            };
            let index = match slot {
                Some(i) => i,
                None => {
                    let index = u32::try_from(self.tools.len()).unwrap_or(u32::MAX);
                    let id = call
                        .id
                        .clone()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| format!("call_{index}"));
                    let name = name.ok_or_else(|| {
                        Error::upstream(ErrorKind::Protocol, "tool call started without a name")
                    })?;
                    self.tools.push((call.index, Some(id.clone())));
                    out.push(StreamEvent::ToolCallStart { index, id, name });
                    index
                }
            };
            if !args.is_empty() {
                out.push(StreamEvent::ToolCallDelta {
                    index,
                    arguments: args,
                });
            }
        }
        Ok(())
    }

    /// The canonical index of an existing call this fragment continues, if any.
    fn slot(&self, upstream_index: Option<u32>, id: Option<&str>) -> Option<u32> {
        let id = id.filter(|s| !s.is_empty());
        let pos = match upstream_index {
            Some(ui) => self.tools.iter().position(|(i, _)| *i == Some(ui)),
            // Without an index (Mistral), a fragment with a new id is a new call and a fragment
            // without an id continues the last one.
            None => match id {
                Some(id) => self
                    .tools
                    .iter()
                    .position(|(_, cid)| cid.as_deref() == Some(id)),
                None => self.tools.len().checked_sub(1),
            },
        };
        pos.and_then(|p| u32::try_from(p).ok())
    }
}

/// Mistral sends content as typed parts; `thinking` parts hold nested text parts.
fn content_parts(parts: &[Value], out: &mut Vec<StreamEvent>) {
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = p
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    out.push(StreamEvent::TextDelta(t.to_owned()));
                }
            }
            Some("thinking") => {
                let text: String = match p.get("thinking") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => inner
                        .iter()
                        .filter_map(|i| i.get("text").and_then(Value::as_str))
                        .collect(),
                    _ => String::new(),
                };
                if !text.is_empty() {
                    out.push(StreamEvent::ReasoningDelta {
                        text,
                        signature: None,
                    });
                }
            }
            _ => {}
        }
    }
}

/// Where a chunk's `id`, `created` and `model` values lie, when the chunk may be forwarded to an
/// OpenAI client as it came.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Spans {
    pub id: std::ops::Range<usize>,
    pub created: std::ops::Range<usize>,
    pub model: std::ops::Range<usize>,
}

/// Whether the chunk `data` holds only what an OpenAI client can take as it is, and where its
/// id, time and model are. It must be compact JSON of one choice at index 0 with no usage, no
/// finish reason, no error, no tool calls (their ids and indices are mapped), no reasoning (its
/// field name varies by server) and no content parts (Mistral's typed content is flattened).
///
/// A plain text search decides this, not a parse: a key cannot appear unescaped inside a JSON
/// string, so finding `"usage":` means a usage key. Every test is of the form "this key is
/// absent, or present in exactly this harmless spelling"; any other spelling (spaces after the
/// colon, a non-null value) sends the chunk down the decoding path, which handles everything.
/// Wrong answers can therefore only cost speed, never correctness.
pub(crate) fn forwardable(data: &str) -> Option<Spans> {
    if !data.starts_with('{') || !data.ends_with('}') {
        return None;
    }
    for key in [
        "\"tool_calls\"",
        "\"error\"",
        "\"reasoning",
        "\"function_call\"",
        "\"content\":[",
        "\"audio\"",
    ] {
        if data.contains(key) {
            return None;
        }
    }
    // At least one choice, and every index (only choices have one, tool calls being excluded)
    // is 0: a server answering with n > 1 goes through the decoder, which keeps choice 0.
    if !data.contains("\"choices\":[{")
        || !each_followed_by(data, "\"index\":", |rest| {
            rest.starts_with('0')
                && !rest[1..].starts_with(|c: char| c.is_ascii_digit() || c == '.')
        })
        || !each_followed_by(data, "\"usage\":", |rest| rest.starts_with("null"))
        || !each_followed_by(data, "\"finish_reason\":", |rest| rest.starts_with("null"))
    {
        return None;
    }
    Some(Spans {
        id: string_value(data, "\"id\":\"")?,
        created: number_value(data, "\"created\":")?,
        model: string_value(data, "\"model\":\"")?,
    })
}

/// Whether every occurrence of `key` in `data` is followed by text `ok` accepts.
fn each_followed_by(data: &str, key: &str, ok: impl Fn(&str) -> bool) -> bool {
    data.match_indices(key)
        .all(|(at, _)| ok(&data[at + key.len()..]))
}

/// The contents of the one string value after `key` (which ends with the opening quote), if
/// the key occurs once and the value has no escapes.
fn string_value(data: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let mut found = data.match_indices(key);
    let (at, _) = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let start = at + key.len();
    let len = data[start..].find(['"', '\\'])?;
    (data.as_bytes().get(start + len) == Some(&b'"')).then_some(start..start + len)
}

/// The digits of the one number value after `key`.
fn number_value(data: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let mut found = data.match_indices(key);
    let (at, _) = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let start = at + key.len();
    let len = data[start..]
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(data.len() - start);
    (len > 0).then_some(start..start + len)
}
