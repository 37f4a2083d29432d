use serde::{Deserialize, Serialize};

use crate::{Error, Usage};

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Refusal,
    Error,
    Other,
}

/// A tool call made by the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text of the arguments, as the model produced it.
    pub arguments: String,
}

impl ToolCall {
    /// The arguments as the JSON object vendors that take structured input require (Anthropic's
    /// and Bedrock's `input`, Gemini's `args`). Empty text, which some clients send for a call
    /// without arguments, is `{}`; anything but a JSON object is a client error naming the call.
    pub fn arguments_object(&self) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
        if self.arguments.trim().is_empty() {
            return Ok(serde_json::Map::new());
        }
        match serde_json::from_str::<serde_json::Value>(&self.arguments) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(_) => Err(Error::bad_request(format!(
                "the arguments of tool call '{}' ({}) are not a JSON object",
                self.id, self.name
            ))),
            Err(e) => Err(Error::bad_request(format!(
                "the arguments of tool call '{}' ({}) are not valid JSON: {e}",
                self.id, self.name
            ))),
        }
    }
}

/// One step of a response. Streams are sequences of these; a non-streaming response is the fold
/// of the same sequence (see [`Collector`]), so both encodings share one code path.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The upstream accepted the request; its response id and model, when it said them.
    Start {
        id: Option<String>,
        model: Option<String>,
    },
    TextDelta(String),
    RefusalDelta(String),
    ReasoningDelta {
        text: String,
        signature: Option<String>,
    },
    /// A new tool call at `index` (0-based, dense, in the order the model made them).
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    ToolCallDelta {
        index: u32,
        arguments: String,
    },
    Usage(Usage),
    Finish(FinishReason),
    /// An upstream chunk forwarded in the client's own wire format instead of being decoded
    /// and encoded again: the same-dialect fast path (see [`crate::ChatRequest::passthrough`]).
    /// It only ever holds content the decoder could have turned into the events above; usage,
    /// finish reasons, tool calls and errors always arrive decoded.
    Raw(RawChunk),
    /// A Responses API event (its JSON text) from an upstream that speaks the client's
    /// Responses API natively, forwarded as it came (see
    /// [`crate::ChatRequest::responses_body`]); usage, finish and errors still arrive decoded.
    Native(String),
}

/// One OpenAI `chat.completion.chunk` as the upstream sent it (its JSON text), with the byte
/// ranges of its `id` value, `created` value and `model` value, which the client-side encoder
/// replaces with the gateway's own so the client sees one response id and the model it asked
/// for, whichever upstream answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChunk {
    pub json: String,
    /// Ranges into `json` of the `id` string's contents, the `created` number and the `model`
    /// string's contents, in that order of fields (not necessarily of position).
    pub id: std::ops::Range<usize>,
    pub created: std::ops::Range<usize>,
    pub model: std::ops::Range<usize>,
}

/// A whole response, folded from events (and kept whole by the response cache, which is why it
/// serializes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub id: Option<String>,
    pub model: Option<String>,
    pub text: String,
    pub refusal: Option<String>,
    pub reasoning: String,
    pub reasoning_signature: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Option<Usage>,
    pub finish: Option<FinishReason>,
    /// The output items of a natively answered Responses API request, as the upstream sent
    /// them (from its `response.output_item.done` events).
    pub native_items: Vec<serde_json::Value>,
}

impl ChatResponse {
    /// The events that fold back into this response (natively answered Responses API items
    /// excepted), text in pieces of about `piece` bytes, so a replay streams like an answer.
    pub fn replay(&self, piece: usize) -> Vec<StreamEvent> {
        let mut out = vec![StreamEvent::Start {
            id: self.id.clone(),
            model: self.model.clone(),
        }];
        if !self.reasoning.is_empty() || self.reasoning_signature.is_some() {
            out.push(StreamEvent::ReasoningDelta {
                text: self.reasoning.clone(),
                signature: self.reasoning_signature.clone(),
            });
        }
        for p in pieces(&self.text, piece.max(1)) {
            out.push(StreamEvent::TextDelta(p.to_owned()));
        }
        if let Some(r) = &self.refusal {
            out.push(StreamEvent::RefusalDelta(r.clone()));
        }
        for (i, c) in self.tool_calls.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            out.push(StreamEvent::ToolCallStart {
                index,
                id: c.id.clone(),
                name: c.name.clone(),
            });
            out.push(StreamEvent::ToolCallDelta {
                index,
                arguments: c.arguments.clone(),
            });
        }
        if let Some(u) = self.usage {
            out.push(StreamEvent::Usage(u));
        }
        if let Some(f) = self.finish {
            out.push(StreamEvent::Finish(f));
        }
        out
    }
}

/// `text` cut into pieces of about `size` bytes, each ending on a character boundary.
fn pieces(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

/// Folds events into a [`ChatResponse`]. Used for non-streaming answers, for the ledger of a
/// stream, and by tests that check a decoder against a recording.
#[derive(Debug, Default)]
pub struct Collector {
    response: ChatResponse,
}

impl Collector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, event: &StreamEvent) -> Result<(), Error> {
        let r = &mut self.response;
        match event {
            StreamEvent::Start { id, model } => {
                if r.id.is_none() {
                    r.id.clone_from(id);
                }
                if r.model.is_none() {
                    r.model.clone_from(model);
                }
            }
            StreamEvent::TextDelta(t) => r.text.push_str(t),
            StreamEvent::RefusalDelta(t) => r.refusal.get_or_insert_with(String::new).push_str(t),
            StreamEvent::ReasoningDelta { text, signature } => {
                r.reasoning.push_str(text);
                if signature.is_some() {
                    r.reasoning_signature.clone_from(signature);
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                let index = *index as usize;
                if index != r.tool_calls.len() {
                    return Err(Error::upstream(
                        crate::ErrorKind::Protocol,
                        format!("tool call {index} started out of order"),
                    ));
                }
                r.tool_calls.push(ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                });
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                match r.tool_calls.get_mut(*index as usize) {
                    Some(call) => call.arguments.push_str(arguments),
                    None => {
                        return Err(Error::upstream(
                            crate::ErrorKind::Protocol,
                            format!("arguments for unknown tool call {index}"),
                        ));
                    }
                }
            }
            StreamEvent::Usage(u) => match &mut r.usage {
                Some(existing) => existing.merge(u),
                None => r.usage = Some(*u),
            },
            StreamEvent::Finish(f) => r.finish = Some(*f),
            StreamEvent::Native(json) => {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(json) {
                    if v.get("type").and_then(serde_json::Value::as_str)
                        == Some("response.output_item.done")
                    {
                        if let Some(item) = v.get("item") {
                            r.native_items.push(item.clone());
                        }
                    }
                }
            }
            StreamEvent::Raw(_) => {
                // Only streams to an OpenAI client carry these, and those are never folded.
                return Err(Error::internal(
                    "a forwarded chunk reached a response being folded",
                ));
            }
        }
        Ok(())
    }

    pub fn response(&self) -> &ChatResponse {
        &self.response
    }

    pub fn finish(self) -> ChatResponse {
        self.response
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// A replayed response folds back into itself, its text cut on character boundaries.
    #[test]
    fn a_replay_folds_back_into_the_response() {
        let r = ChatResponse {
            id: Some("chatcmpl-1".into()),
            model: Some("m".into()),
            text: "héllo wörld, ça va? ".repeat(7),
            reasoning: "think".into(),
            reasoning_signature: Some("sig".into()),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "get".into(),
                arguments: "{\"a\":1}".into(),
            }],
            usage: Some(Usage {
                input_tokens: 3,
                output_tokens: 9,
                ..Usage::default()
            }),
            finish: Some(FinishReason::ToolCalls),
            ..ChatResponse::default()
        };
        let events = r.replay(5);
        assert!(events.len() > 20, "text in pieces");
        let mut c = Collector::new();
        for e in &events {
            c.push(e).unwrap();
        }
        assert_eq!(c.finish(), r);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ChatResponse>(&json).unwrap(), r);
    }
}
