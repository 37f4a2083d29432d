//! Gemini responses and stream chunks → canonical events. A stream is a sequence of whole
//! `GenerateContentResponse`s, each holding the next parts, running usage totals and, in the
//! last one, the finish reason; a whole response is the same thing once. One decoder serves both.
//!
//! Where Gemini differs from the canonical events:
//! - A `thoughtSignature` rides on an ordinary part (a function call, a text, or an empty text
//!   at the end of a stream). It becomes a `ReasoningDelta` with the signature and no text, just
//!   before the part it came on, so a client's history holds it as a signed reasoning part right
//!   before that part; `convert.rs` puts it back on the part that follows (see there).
//! - Function calls carry no id on Vertex and mostly none on AI Studio: calls without one get
//!   `call_{n}`, n being the call's index in the response. Tool results find their call by id
//!   in the history sent back, nearest first, so ids repeated across turns stay unambiguous.
//! - Vertex may stream a call's arguments as JSON-path pieces (`partialArgs`). They are
//!   assembled into the arguments object and sent as one `ToolCallDelta` when the call ends.
//! - Gemini answers `STOP` after function calls; canonically that is `ToolCalls`.

use relais_core::{Error, FinishReason, StreamEvent, Usage};
use serde_json::{Map, Value};

use super::error;
use super::wire::{GeminiFunctionCallOut, GeminiPartOut, GeminiResponse, GeminiUsage};

/// Deepest JSON path accepted in a partial argument: far beyond any real tool schema, and low
/// enough that a hostile stream cannot build a value too deep to serialise or drop safely.
const MAX_PATH_DEPTH: usize = 64;

pub(crate) fn finish_reason(reason: &str, made_calls: bool) -> FinishReason {
    match reason {
        "STOP" if made_calls => FinishReason::ToolCalls,
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "MODEL_ARMOR" => FinishReason::ContentFilter,
        // The model produced a call that does not parse or was not offered.
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS" => {
            FinishReason::Error
        }
        _ => FinishReason::Other,
    }
}

/// Token counts as Gemini reports them, kept until the end so they are normalised once.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    prompt: u64,
    candidates: u64,
    thoughts: u64,
    cached: u64,
    tool_prompt: u64,
}

impl Counts {
    /// Every chunk of a stream repeats the totals so far, so the larger figure is the current one
    /// (and a chunk that leaves a count out cannot erase it).
    fn update(&mut self, u: &GeminiUsage) {
        fn raise(slot: &mut u64, reported: Option<u64>) {
            if let Some(v) = reported {
                *slot = (*slot).max(v);
            }
        }
        raise(&mut self.prompt, u.prompt_token_count);
        raise(&mut self.candidates, u.candidates_token_count);
        raise(&mut self.thoughts, u.thoughts_token_count);
        raise(&mut self.cached, u.cached_content_token_count);
        raise(&mut self.tool_prompt, u.tool_use_prompt_token_count);
    }

    /// The canonical convention counts thinking inside the output; Gemini's
    /// `candidatesTokenCount` leaves it out (every recording's `totalTokenCount` is prompt +
    /// candidates + thoughts). Tokens of built-in tool results (`toolUsePromptTokenCount`) are
    /// billed as input, so they count there.
    fn canonical(self) -> Usage {
        Usage {
            input_tokens: self.prompt.saturating_add(self.tool_prompt),
            output_tokens: self.candidates.saturating_add(self.thoughts),
            cache_read_tokens: self.cached,
            // Gemini caches on its own and does not bill cache writes per request.
            cache_write_tokens: 0,
            reasoning_tokens: self.thoughts,
        }
    }
}

/// A call whose arguments are still streaming.
struct OpenCall {
    index: u32,
    args: Value,
}

/// Decoding state of one response.
#[derive(Default)]
pub(crate) struct ChunkDecoder {
    started: bool,
    tool_calls: u32,
    open: Option<OpenCall>,
    counts: Option<Counts>,
    finished: bool,
}

impl ChunkDecoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A finish reason (and with it the usage so far) has been decoded.
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    pub(crate) fn decode(
        &mut self,
        chunk: GeminiResponse,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        if let Some(err) = &chunk.error {
            return Err(error::in_stream(err));
        }
        if let Some(feedback) = &chunk.prompt_feedback {
            if let Some(reason) = feedback
                .block_reason
                .as_deref()
                .filter(|r| !r.is_empty() && *r != "BLOCK_REASON_UNSPECIFIED")
            {
                return Err(error::prompt_blocked(
                    reason,
                    feedback.block_reason_message.as_deref(),
                ));
            }
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.response_id.filter(|s| !s.is_empty()),
                model: chunk.model_version.filter(|s| !s.is_empty()),
            });
        }
        let mut counted = false;
        if let Some(u) = &chunk.usage_metadata {
            if u.has_counts() {
                self.counts.get_or_insert_with(Counts::default).update(u);
                counted = true;
            }
        }
        let mut finish = None;
        for candidate in chunk.candidates {
            // We ask for one candidate; any other belongs to no one.
            if candidate.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(content) = candidate.content {
                for part in content.parts {
                    self.part(part, out)?;
                }
            }
            if let Some(reason) = candidate.finish_reason.filter(|r| !r.is_empty()) {
                finish = Some(reason);
            }
        }
        match finish {
            Some(reason) if !self.finished => self.finish(&reason, out),
            // A chunk after the finish (not something Gemini sends) may still raise the totals.
            _ if self.finished && counted => self.push_usage(out),
            _ => {}
        }
        Ok(())
    }

    /// The end of a whole (non-streaming) response: one that named no finish reason still
    /// closes its calls, reports its usage and ends.
    pub(crate) fn end_whole(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.finished {
            self.finish("", out);
        }
    }

    fn finish(&mut self, reason: &str, out: &mut Vec<StreamEvent>) {
        self.close_open(out);
        self.finished = true;
        self.push_usage(out);
        out.push(StreamEvent::Finish(finish_reason(
            reason,
            self.tool_calls > 0,
        )));
    }

    fn push_usage(&self, out: &mut Vec<StreamEvent>) {
        if let Some(counts) = self.counts {
            out.push(StreamEvent::Usage(counts.canonical()));
        }
    }

    fn part(&mut self, part: GeminiPartOut, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        let signature = part.thought_signature.filter(|s| !s.is_empty());
        if let Some(call) = part.function_call {
            return self.function_call(call, signature, out);
        }
        // Any other part ends a call whose arguments were streaming.
        self.close_open(out);
        match part.text {
            Some(text) if part.thought => {
                if !text.is_empty() || signature.is_some() {
                    out.push(StreamEvent::ReasoningDelta { text, signature });
                }
            }
            text => {
                push_signature(signature, out);
                if let Some(text) = text.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::TextDelta(text));
                }
            }
        }
        Ok(())
    }

    fn function_call(
        &mut self,
        call: GeminiFunctionCallOut,
        signature: Option<String>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), Error> {
        let GeminiFunctionCallOut {
            id,
            name,
            args,
            partial_args,
            will_continue,
        } = call;
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            // A new call: whatever was streaming before it is complete.
            self.close_open(out);
            push_signature(signature, out);
            let index = self.tool_calls;
            self.tool_calls = self.tool_calls.saturating_add(1);
            let id = id
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("call_{index}"));
            out.push(StreamEvent::ToolCallStart { index, id, name });
            let mut arguments = match args {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(args @ Value::Object(_)) => args,
                Some(_) => {
                    return Err(error::protocol(format!(
                        "the arguments of function call {index} are not a JSON object"
                    )));
                }
            };
            for piece in partial_args.iter().flatten() {
                apply_partial(&mut arguments, piece)?;
            }
            if will_continue {
                self.open = Some(OpenCall {
                    index,
                    args: arguments,
                });
            } else {
                out.push(StreamEvent::ToolCallDelta {
                    index,
                    arguments: arguments.to_string(),
                });
            }
            return Ok(());
        }
        // No name: a continuation of the call in progress, or its end.
        push_signature(signature, out);
        let Some(open) = self.open.as_mut() else {
            if partial_args.as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(error::protocol(
                    "function call arguments arrived for no call in progress",
                ));
            }
            // An empty `functionCall` with nothing open ends nothing.
            return Ok(());
        };
        if let Some(Value::Object(more)) = args {
            if let Value::Object(existing) = &mut open.args {
                existing.extend(more);
            }
        }
        for piece in partial_args.iter().flatten() {
            apply_partial(&mut open.args, piece)?;
        }
        if !will_continue {
            self.close_open(out);
        }
        Ok(())
    }

    /// Send the arguments of a call that was streaming, as one JSON text.
    fn close_open(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some(open) = self.open.take() {
            out.push(StreamEvent::ToolCallDelta {
                index: open.index,
                arguments: open.args.to_string(),
            });
        }
    }
}

fn push_signature(signature: Option<String>, out: &mut Vec<StreamEvent>) {
    if let Some(signature) = signature {
        out.push(StreamEvent::ReasoningDelta {
            text: String::new(),
            signature: Some(signature),
        });
    }
}

/// One step of a JSON path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// Parse the RFC 9535 paths Gemini uses for partial arguments: `$`, then `.name`, `['name']`,
/// `["name"]` or `[0]` steps. Wildcards, filters and slices never name one value: `None`.
pub(crate) fn parse_json_path(path: &str) -> Option<Vec<Segment>> {
    let mut rest = path.strip_prefix('$')?;
    let mut segments = Vec::new();
    while !rest.is_empty() {
        if segments.len() >= MAX_PATH_DEPTH {
            return None;
        }
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let key = after.get(..end)?;
            if key.is_empty() {
                return None;
            }
            segments.push(Segment::Key(key.to_owned()));
            rest = after.get(end..)?;
        } else if let Some(after) = rest.strip_prefix('[') {
            let quote = after.chars().next()?;
            if quote == '\'' || quote == '"' {
                let inner = after.get(1..)?;
                let close = inner.find(quote)?;
                segments.push(Segment::Key(inner.get(..close)?.to_owned()));
                rest = inner.get(close + 1..)?.strip_prefix(']')?;
            } else {
                let close = after.find(']')?;
                let digits = after.get(..close)?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                segments.push(Segment::Index(digits.parse().ok()?));
                rest = after.get(close + 1..)?;
            }
        } else {
            return None;
        }
    }
    Some(segments)
}

/// Apply one `partialArgs` piece to the arguments being assembled. A string piece appends to the
/// string already at its path (a long value arrives in several pieces); any other value sets it.
fn apply_partial(args: &mut Value, piece: &Value) -> Result<(), Error> {
    let Some(piece) = piece.as_object() else {
        return Err(error::protocol(
            "a partial function argument is not an object",
        ));
    };
    let path = piece
        .get("jsonPath")
        .and_then(Value::as_str)
        .ok_or_else(|| error::protocol("a partial function argument has no jsonPath"))?;
    let segments = parse_json_path(path)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| error::protocol("a partial function argument has an unusable jsonPath"))?;
    let mut slot = args;
    for segment in &segments {
        slot = child(slot, segment)?;
    }
    if let Some(value) = piece.get("stringValue") {
        let Some(text) = value.as_str() else {
            return Err(error::protocol("a partial stringValue is not a string"));
        };
        match slot {
            Value::String(existing) => existing.push_str(text),
            other => *other = Value::String(text.to_owned()),
        }
    } else if let Some(value) = piece.get("numberValue") {
        if !value.is_number() {
            return Err(error::protocol("a partial numberValue is not a number"));
        }
        *slot = value.clone();
    } else if let Some(value) = piece.get("boolValue") {
        if !value.is_boolean() {
            return Err(error::protocol("a partial boolValue is not a boolean"));
        }
        *slot = value.clone();
    } else if piece.contains_key("nullValue") {
        *slot = Value::Null;
    }
    // A piece without a value only announces its path.
    Ok(())
}

/// The value at one step below `slot`, created (as null) when missing. Array elements arrive in
/// order, so an index may name an existing element or the next one, never a gap.
fn child<'v>(slot: &'v mut Value, segment: &Segment) -> Result<&'v mut Value, Error> {
    match segment {
        Segment::Key(key) => {
            if slot.is_null() {
                *slot = Value::Object(Map::new());
            }
            match slot {
                Value::Object(map) => Ok(map.entry(key.as_str()).or_insert(Value::Null)),
                _ => Err(error::protocol(
                    "a partial function argument names a field of a value that has none",
                )),
            }
        }
        Segment::Index(i) => {
            if slot.is_null() {
                *slot = Value::Array(Vec::new());
            }
            match slot {
                Value::Array(items) => {
                    if *i == items.len() {
                        items.push(Value::Null);
                    }
                    items.get_mut(*i).ok_or_else(|| {
                        error::protocol("a partial function argument skips array elements")
                    })
                }
                _ => Err(error::protocol(
                    "a partial function argument indexes a value that is not an array",
                )),
            }
        }
    }
}
