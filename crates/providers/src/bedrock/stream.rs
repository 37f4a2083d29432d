//! ConverseStream events → canonical events. A stream is `messageStart`, then per content block
//! an optional `contentBlockStart` (tool calls only), deltas and `contentBlockStop`, then
//! `messageStop` (the stop reason) and `metadata` (usage), in either order. A whole Converse
//! response goes through the same handlers in that order (see [`EventDecoder::decode_response`]),
//! so both encodings share one code path.
//!
//! `Start` is held back until the first event that carries something: Bedrock answers 200 and
//! `messageStart` before it knows whether the model will run, and a throttling exception right
//! after them must reach the router as the first item of the stream, while failing over to
//! another deployment is still possible.

use relais_core::{Error, FinishReason, StreamEvent, Usage};
use serde_json::Value;

use super::error;
use super::wire::{
    BedrockBlockStart, BedrockDelta, BedrockResponse, BedrockStreamEvent, BedrockUsage,
};

pub(crate) fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        // The model produced output Bedrock could not parse (bad tool-call JSON, ...).
        "malformed_model_output" | "malformed_tool_use" => FinishReason::Error,
        _ => FinishReason::Other,
    }
}

/// Bedrock's counts → canonical ones, the one place they are normalised. Bedrock's `inputTokens`
/// counts only the tokens that were neither read from nor written to the prompt cache; the
/// canonical input counts them all.
pub(crate) fn usage(u: &BedrockUsage) -> Usage {
    let cache_read = u
        .cache_read_input_tokens
        .or(u.cache_read_input_token_count)
        .unwrap_or(0);
    let cache_write = u
        .cache_write_input_tokens
        .or(u.cache_write_input_token_count)
        .unwrap_or(0);
    Usage {
        input_tokens: u
            .input_tokens
            .unwrap_or(0)
            .saturating_add(cache_read)
            .saturating_add(cache_write),
        output_tokens: u.output_tokens.unwrap_or(0),
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        // Reasoning is billed as output, but Bedrock does not count it separately.
        reasoning_tokens: 0,
    }
}

/// A `toolUse` block between its start and its stop.
struct OpenTool {
    /// Bedrock's `contentBlockIndex`, which also counts text and reasoning blocks.
    block: u32,
    /// Canonical index: dense over tool calls only.
    index: u32,
    /// Whether any argument text arrived.
    streamed: bool,
}

/// Decoding state of one response.
#[derive(Default)]
pub(crate) struct EventDecoder {
    started: bool,
    open: Vec<OpenTool>,
    tool_calls: u32,
    /// `messageStop` decoded: the stop reason is known.
    finished: bool,
    /// `metadata` decoded: the usage is known.
    metered: bool,
}

impl EventDecoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The stop reason has been decoded: a stream may end cleanly from here on.
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    /// Stop reason and usage both decoded: nothing more belongs to this response.
    pub(crate) fn complete(&self) -> bool {
        self.finished && self.metered
    }

    /// One stream event, named by its `:event-type` header.
    pub(crate) fn decode(
        &mut self,
        event_type: &str,
        event: BedrockStreamEvent,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        match event_type {
            // The role is always `assistant`; see the module doc for why Start waits.
            "messageStart" => {}
            "contentBlockStart" => {
                let index = block_index(&event, event_type)?;
                self.block_start(index, event.start.unwrap_or_default(), out)?;
            }
            "contentBlockDelta" => {
                let index = block_index(&event, event_type)?;
                let delta = event
                    .delta
                    .ok_or_else(|| error::protocol("contentBlockDelta without a delta"))?;
                self.block_delta(index, delta, out)?;
            }
            "contentBlockStop" => {
                let index = block_index(&event, event_type)?;
                self.block_stop(index, out);
            }
            "messageStop" => self.message_stop(event.stop_reason.as_deref(), out),
            "metadata" => self.metadata(event.usage.as_ref(), out),
            // Event types added later carry nothing relais models yet.
            _ => {}
        }
        Ok(())
    }

    /// Decode a whole Converse response as the event sequence that would have streamed it.
    pub(crate) fn decode_response(
        &mut self,
        response: BedrockResponse,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        let message = response
            .output
            .and_then(|o| o.message)
            .ok_or_else(|| error::protocol("upstream sent a Converse response without output"))?;
        self.ensure_started(out);
        for block in message.content {
            if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                out.push(StreamEvent::TextDelta(text));
            }
            if let Some(cited) = block.citations_content {
                for part in cited.content {
                    if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                        out.push(StreamEvent::TextDelta(text));
                    }
                }
            }
            if let Some(reasoning) = block.reasoning_content.and_then(|r| r.reasoning_text) {
                let text = reasoning.text.unwrap_or_default();
                let signature = reasoning.signature.filter(|s| !s.is_empty());
                if !text.is_empty() || signature.is_some() {
                    out.push(StreamEvent::ReasoningDelta { text, signature });
                }
            }
            if let Some(call) = block.tool_use {
                let index = self.start_tool(call.tool_use_id, call.name, out)?;
                let arguments = match call.input {
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(Value::Object(map)) if map.is_empty() => "{}".to_owned(),
                    Some(input) => input.to_string(),
                };
                out.push(StreamEvent::ToolCallDelta { index, arguments });
            }
        }
        self.metadata(response.usage.as_ref(), out);
        self.message_stop(response.stop_reason.as_deref(), out);
        Ok(())
    }

    fn ensure_started(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            // Bedrock names neither a response id nor the model in its answers.
            out.push(StreamEvent::Start {
                id: None,
                model: None,
            });
        }
    }

    /// A new tool call: its canonical index.
    fn start_tool(
        &mut self,
        id: Option<String>,
        name: Option<String>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<u32, Error> {
        let id = id
            .filter(|s| !s.is_empty())
            .ok_or_else(|| error::protocol("toolUse block without a toolUseId"))?;
        let name = name
            .filter(|s| !s.is_empty())
            .ok_or_else(|| error::protocol("toolUse block without a name"))?;
        let index = self.tool_calls;
        self.tool_calls = self.tool_calls.saturating_add(1);
        out.push(StreamEvent::ToolCallStart { index, id, name });
        Ok(index)
    }

    fn block_start(
        &mut self,
        block: u32,
        start: BedrockBlockStart,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        self.ensure_started(out);
        // Text and reasoning blocks start empty (`"start": {}`), or without a start event at all.
        if let Some(tool) = start.tool_use {
            if self.open.iter().any(|t| t.block == block) {
                return Err(error::protocol(format!(
                    "content block {block} started twice"
                )));
            }
            let index = self.start_tool(tool.tool_use_id, tool.name, out)?;
            self.open.push(OpenTool {
                block,
                index,
                streamed: false,
            });
        }
        Ok(())
    }

    fn block_delta(
        &mut self,
        block: u32,
        delta: BedrockDelta,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        self.ensure_started(out);
        if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
            out.push(StreamEvent::TextDelta(text));
        }
        if let Some(reasoning) = delta.reasoning_content {
            if let Some(text) = reasoning.text.filter(|t| !t.is_empty()) {
                out.push(StreamEvent::ReasoningDelta {
                    text,
                    signature: None,
                });
            }
            if let Some(signature) = reasoning.signature.filter(|s| !s.is_empty()) {
                out.push(StreamEvent::ReasoningDelta {
                    text: String::new(),
                    signature: Some(signature),
                });
            }
        }
        if let Some(tool_delta) = delta.tool_use {
            let Some(tool) = self.open.iter_mut().find(|t| t.block == block) else {
                return Err(error::protocol(format!(
                    "tool input for content block {block}, which never started"
                )));
            };
            if let Some(input) = tool_delta.input.filter(|i| !i.is_empty()) {
                tool.streamed = true;
                out.push(StreamEvent::ToolCallDelta {
                    index: tool.index,
                    arguments: input,
                });
            }
        }
        // `citation`, `toolResult` and `image` deltas carry nothing canonical.
        Ok(())
    }

    fn block_stop(&mut self, block: u32, out: &mut Vec<StreamEvent>) {
        if let Some(pos) = self.open.iter().position(|t| t.block == block) {
            close(self.open.remove(pos), out);
        }
    }

    fn message_stop(&mut self, stop_reason: Option<&str>, out: &mut Vec<StreamEvent>) {
        self.ensure_started(out);
        for tool in self.open.drain(..) {
            close(tool, out);
        }
        if !self.finished {
            self.finished = true;
            out.push(StreamEvent::Finish(
                stop_reason.map_or(FinishReason::Other, finish_reason),
            ));
        }
    }

    fn metadata(&mut self, u: Option<&BedrockUsage>, out: &mut Vec<StreamEvent>) {
        self.ensure_started(out);
        self.metered = true;
        if let Some(u) = u {
            out.push(StreamEvent::Usage(usage(u)));
        }
    }
}

fn block_index(event: &BedrockStreamEvent, event_type: &str) -> Result<u32, Error> {
    event
        .content_block_index
        .ok_or_else(|| error::protocol(format!("{event_type} without a contentBlockIndex")))
}

/// End a tool block. A call whose arguments never came (none, or one empty fragment) gets `{}`,
/// so a client never sees a call with no arguments at all.
fn close(tool: OpenTool, out: &mut Vec<StreamEvent>) {
    if !tool.streamed {
        out.push(StreamEvent::ToolCallDelta {
            index: tool.index,
            arguments: "{}".to_owned(),
        });
    }
}
