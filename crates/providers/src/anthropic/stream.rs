//! Anthropic's event sequence → canonical events. A stream is `message_start`, then for each
//! content block `content_block_start`, deltas and `content_block_stop`, then `message_delta`
//! (stop reason, final usage) and `message_stop`, with `ping`s anywhere. A whole response is fed
//! through the same handlers in that order (see [`EventDecoder::decode_message`]), so both
//! encodings share one code path.

use relais_core::{Error, FinishReason, StreamEvent, Usage};
use serde_json::Value;

use super::error;
use super::wire::{
    AnthropicBlockOut, AnthropicDelta, AnthropicEvent, AnthropicMessageOut, AnthropicUsage,
};

pub(crate) fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        // `pause_turn`: a long server-tool turn paused; the client continues it by sending the
        // response back, as after any finished turn.
        "end_turn" | "stop_sequence" | "pause_turn" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::Refusal,
        _ => FinishReason::Other,
    }
}

/// Token counts as Anthropic reports them, kept until the end so they are normalised once.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

impl Counts {
    /// Anthropic reports running totals: `message_delta` repeats `message_start`'s counts and
    /// may raise them (input tokens included, see the `message-delta-input-tokens` recording). So
    /// the larger figure is the current one, and a proxy's 0 for a field it does not track cannot
    /// erase a real count.
    fn update(&mut self, u: &AnthropicUsage) {
        fn raise(slot: &mut u64, reported: Option<u64>) {
            if let Some(v) = reported {
                *slot = (*slot).max(v);
            }
        }
        raise(&mut self.input, u.input_tokens);
        raise(&mut self.output, u.output_tokens);
        raise(&mut self.cache_read, u.cache_read_input_tokens);
        raise(&mut self.cache_write, u.cache_creation_input_tokens);
    }

    /// The canonical convention counts cached tokens inside the input; Anthropic's
    /// `input_tokens` counts only the tokens after the last cache breakpoint.
    fn canonical(self) -> Usage {
        Usage {
            input_tokens: self
                .input
                .saturating_add(self.cache_read)
                .saturating_add(self.cache_write),
            output_tokens: self.output,
            cache_read_tokens: self.cache_read,
            cache_write_tokens: self.cache_write,
            // Thinking is billed as output, but Anthropic does not count it separately.
            reasoning_tokens: 0,
        }
    }
}

/// A `tool_use` block in progress.
struct OpenTool {
    /// Canonical index: dense over tool calls only, while Anthropic's block index also counts
    /// text and thinking blocks.
    index: u32,
    /// The arguments carried by the start block itself (a whole response), as JSON text.
    input: Option<String>,
    /// Whether any argument text arrived as `input_json_delta`.
    streamed: bool,
}

/// A content block between its start and its stop.
struct OpenBlock {
    index: u32,
    /// `None` for blocks whose deltas need no state (text, thinking, server tools).
    tool: Option<OpenTool>,
}

/// Decoding state of one response.
#[derive(Default)]
pub(crate) struct EventDecoder {
    started: bool,
    open: Vec<OpenBlock>,
    tool_calls: u32,
    counts: Option<Counts>,
    finished: bool,
    stopped: bool,
}

impl EventDecoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A stop reason (and with it the final usage) has been decoded.
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    /// `message_stop` has been decoded: nothing more belongs to this response.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    pub(crate) fn decode(
        &mut self,
        event: AnthropicEvent,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        match event.kind.as_str() {
            "message_start" => {
                let message = event
                    .message
                    .ok_or_else(|| error::protocol("message_start without a message"))?;
                self.message_start(message.id, message.model, message.usage.as_ref(), out);
            }
            "content_block_start" => match (event.index, event.content_block) {
                (Some(index), Some(block)) => self.block_start(index, block, out)?,
                _ => {
                    return Err(error::protocol(
                        "content_block_start without an index or a block",
                    ));
                }
            },
            "content_block_delta" => match (event.index, event.delta) {
                (Some(index), Some(delta)) => self.block_delta(index, delta, out)?,
                _ => {
                    return Err(error::protocol(
                        "content_block_delta without an index or a delta",
                    ));
                }
            },
            "content_block_stop" => {
                let index = event
                    .index
                    .ok_or_else(|| error::protocol("content_block_stop without an index"))?;
                self.block_stop(index, out);
            }
            "message_delta" => self.message_delta(event.delta, event.usage.as_ref(), out),
            "message_stop" => self.message_stop(out),
            "error" => return Err(error::in_stream(event.error.as_ref())),
            // `ping` keeps the connection alive. Anthropic may add event types at any time (its
            // versioning policy says so); none of them can carry anything relais models yet.
            _ => {}
        }
        Ok(())
    }

    /// Decode a whole (non-streaming) response as the event sequence that would have streamed it.
    pub(crate) fn decode_message(
        &mut self,
        message: AnthropicMessageOut,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        if message.kind.as_deref() == Some("error") {
            return Err(error::in_stream(message.error.as_ref()));
        }
        self.message_start(message.id, message.model, message.usage.as_ref(), out);
        for (i, block) in message.content.into_iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            self.block_start(index, block, out)?;
            self.block_stop(index, out);
        }
        let delta = AnthropicDelta {
            stop_reason: message.stop_reason,
            stop_details: message.stop_details,
            ..AnthropicDelta::default()
        };
        // The usage was complete in the message itself.
        self.message_delta(Some(delta), None, out);
        self.message_stop(out);
        Ok(())
    }

    fn ensure_started(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: None,
                model: None,
            });
        }
    }

    fn message_start(
        &mut self,
        id: Option<String>,
        model: Option<String>,
        usage: Option<&AnthropicUsage>,
        out: &mut Vec<StreamEvent>,
    ) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: id.filter(|s| !s.is_empty()),
                model: model.filter(|s| !s.is_empty()),
            });
        }
        if let Some(u) = usage {
            let counts = self.counts.get_or_insert_with(Counts::default);
            counts.update(u);
            // The prompt's count is known now: passed on at once, so a client's own
            // `message_start` can carry it (usage events are running totals; the final one
            // comes with `message_delta`).
            out.push(StreamEvent::Usage(counts.canonical()));
        }
    }

    fn block_start(
        &mut self,
        index: u32,
        block: AnthropicBlockOut,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        self.ensure_started(out);
        let mut tool = None;
        match block.kind.as_str() {
            // A stream starts text and thinking blocks empty; a whole response has them full.
            "text" => {
                if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::TextDelta(text));
                }
            }
            "thinking" => {
                let text = block.thinking.unwrap_or_default();
                let signature = block.signature.filter(|s| !s.is_empty());
                if !text.is_empty() || signature.is_some() {
                    out.push(StreamEvent::ReasoningDelta { text, signature });
                }
            }
            "tool_use" => {
                let id = block
                    .id
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| error::protocol("tool_use block without an id"))?;
                let name = block
                    .name
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| error::protocol("tool_use block without a name"))?;
                let call = self.tool_calls;
                self.tool_calls = self.tool_calls.saturating_add(1);
                out.push(StreamEvent::ToolCallStart {
                    index: call,
                    id,
                    name,
                });
                let input = match block.input {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(map)) if map.is_empty() => None,
                    Some(input) => Some(input.to_string()),
                };
                tool = Some(OpenTool {
                    index: call,
                    input,
                    streamed: false,
                });
            }
            // `redacted_thinking` is encrypted reasoning: nothing a client could read, and the
            // canonical reasoning has no slot for an opaque blob, so it shows nothing. Server-tool
            // blocks (web search, code execution) belong to tools relais never offers.
            _ => {}
        }
        self.open.push(OpenBlock { index, tool });
        Ok(())
    }

    fn block_delta(
        &mut self,
        index: u32,
        delta: AnthropicDelta,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        self.ensure_started(out);
        match delta.kind.as_deref() {
            Some("text_delta") => {
                if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::TextDelta(text));
                }
            }
            Some("thinking_delta") => {
                if let Some(text) = delta.thinking.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::ReasoningDelta {
                        text,
                        signature: None,
                    });
                }
            }
            // The signature arrives whole, just before the thinking block stops.
            Some("signature_delta") => {
                if let Some(signature) = delta.signature.filter(|s| !s.is_empty()) {
                    out.push(StreamEvent::ReasoningDelta {
                        text: String::new(),
                        signature: Some(signature),
                    });
                }
            }
            Some("input_json_delta") => {
                let Some(block) = self.open.iter_mut().rev().find(|b| b.index == index) else {
                    return Err(error::protocol(format!(
                        "tool input for content block {index}, which never started"
                    )));
                };
                // A server tool's input has no canonical call to belong to.
                if let Some(tool) = &mut block.tool {
                    if let Some(json) = delta.partial_json.filter(|j| !j.is_empty()) {
                        tool.streamed = true;
                        out.push(StreamEvent::ToolCallDelta {
                            index: tool.index,
                            arguments: json,
                        });
                    }
                }
            }
            // `citations_delta` and delta types added later carry nothing canonical.
            _ => {}
        }
        Ok(())
    }

    fn block_stop(&mut self, index: u32, out: &mut Vec<StreamEvent>) {
        if let Some(pos) = self.open.iter().rposition(|b| b.index == index) {
            close(self.open.remove(pos), out);
        }
    }

    fn message_delta(
        &mut self,
        delta: Option<AnthropicDelta>,
        usage: Option<&AnthropicUsage>,
        out: &mut Vec<StreamEvent>,
    ) {
        self.ensure_started(out);
        for block in self.open.drain(..) {
            close(block, out);
        }
        if let Some(u) = usage {
            self.counts.get_or_insert_with(Counts::default).update(u);
        }
        let (stop_reason, details) = match delta {
            Some(d) => (d.stop_reason, d.stop_details),
            None => (None, None),
        };
        let finish = stop_reason.as_deref().map(finish_reason);
        // A refusal may come with no content at all; its explanation is the refusal's text.
        if finish == Some(FinishReason::Refusal) {
            if let Some(explanation) = details
                .and_then(|d| d.explanation)
                .filter(|e| !e.is_empty())
            {
                out.push(StreamEvent::RefusalDelta(explanation));
            }
        }
        if let Some(counts) = self.counts {
            out.push(StreamEvent::Usage(counts.canonical()));
        }
        if let Some(finish) = finish {
            if !self.finished {
                self.finished = true;
                out.push(StreamEvent::Finish(finish));
            }
        }
    }

    fn message_stop(&mut self, out: &mut Vec<StreamEvent>) {
        for block in self.open.drain(..) {
            close(block, out);
        }
        // A message that stopped without saying why (not something Anthropic sends) still
        // reports its usage and ends.
        if !self.finished {
            self.finished = true;
            if let Some(counts) = self.counts {
                out.push(StreamEvent::Usage(counts.canonical()));
            }
            out.push(StreamEvent::Finish(FinishReason::Other));
        }
        self.stopped = true;
    }
}

/// End a block. A tool call's arguments are always JSON text: a call without arguments streams
/// none (or one empty fragment) and becomes `{}`; a whole response carries them in the start
/// block's `input` instead of in deltas.
fn close(block: OpenBlock, out: &mut Vec<StreamEvent>) {
    if let Some(tool) = block.tool {
        if !tool.streamed {
            out.push(StreamEvent::ToolCallDelta {
                index: tool.index,
                arguments: tool.input.unwrap_or_else(|| "{}".to_owned()),
            });
        }
    }
}
