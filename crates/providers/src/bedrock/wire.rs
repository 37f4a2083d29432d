//! Bedrock Converse JSON as sent to and received from the API. Private to this folder.
//!
//! Content blocks of a request are JSON values: a `cachePoint` block is inserted among them
//! after the fact (see `convert.rs`). Responses and stream events are read into flat structs of
//! optional fields, one shape for every block and event type, unknown ones included (Bedrock pads
//! stream payloads with a `p` field, and adds members over time).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The body of `POST /model/{modelId}/converse` and `/converse-stream` (the model is in the URL).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockRequest<'a> {
    pub messages: Vec<BedrockMessage>,
    /// `{text}` and `{cachePoint}` blocks; absent without a system or developer message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inference_config: Option<BedrockInferenceConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<BedrockToolConfig<'a>>,
    /// Model-specific fields Converse has no member for (`top_k`, `thinking` for Claude).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub additional_model_request_fields: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_config: Option<Value>,
    /// Bedrock's own request members a client sent that relais does not model (see
    /// `convert.rs`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Serialize)]
pub(crate) struct BedrockMessage {
    /// `user` or `assistant`.
    pub role: &'static str,
    pub content: Vec<Value>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockInferenceConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop_sequences: &'a [String],
}

impl BedrockInferenceConfig<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.max_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.stop_sequences.is_empty()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockToolConfig<'a> {
    pub tools: Vec<BedrockTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
}

/// One member of `toolConfig.tools`, a union: `{"toolSpec": ...}` or `{"cachePoint": ...}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum BedrockTool<'a> {
    ToolSpec(BedrockToolSpec<'a>),
    CachePoint(Value),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockToolSpec<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    pub input_schema: BedrockInputSchema<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Serialize)]
pub(crate) struct BedrockInputSchema<'a> {
    /// Borrowed from the request unless it had to be completed (see `convert::input_schema`).
    pub json: Cow<'a, Value>,
}

/// A whole Converse response.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockResponse {
    pub output: Option<BedrockOutput>,
    pub stop_reason: Option<String>,
    pub usage: Option<BedrockUsage>,
}

#[derive(Deserialize, Default)]
pub(crate) struct BedrockOutput {
    pub message: Option<BedrockMessageOut>,
}

#[derive(Deserialize, Default)]
pub(crate) struct BedrockMessageOut {
    #[serde(default)]
    pub content: Vec<BedrockBlockOut>,
}

/// A response content block, a union: `text`, `toolUse`, `reasoningContent`,
/// `citationsContent`, or one relais does not read.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockBlockOut {
    pub text: Option<String>,
    pub tool_use: Option<BedrockToolUseOut>,
    pub reasoning_content: Option<BedrockReasoningOut>,
    pub citations_content: Option<BedrockCitationsOut>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockToolUseOut {
    pub tool_use_id: Option<String>,
    pub name: Option<String>,
    /// The arguments as a JSON value (an object).
    pub input: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockReasoningOut {
    pub reasoning_text: Option<BedrockReasoningText>,
    // `redactedContent` (encrypted reasoning) has no canonical slot and is not read.
}

#[derive(Deserialize, Default)]
pub(crate) struct BedrockReasoningText {
    pub text: Option<String>,
    pub signature: Option<String>,
}

/// Generated text with citations: the text is part of the answer.
#[derive(Deserialize, Default)]
pub(crate) struct BedrockCitationsOut {
    #[serde(default)]
    pub content: Vec<BedrockCitationText>,
}

#[derive(Deserialize, Default)]
pub(crate) struct BedrockCitationText {
    pub text: Option<String>,
}

/// Token counts as Bedrock reports them. `inputTokens` leaves out cache reads and writes (AWS's
/// prompt-caching guide; the same rule as Anthropic's API); `totalTokens` is not read.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockUsage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    pub cache_write_input_tokens: Option<u64>,
    /// Older spellings still sent beside the ones above (see the recordings).
    pub cache_read_input_token_count: Option<u64>,
    pub cache_write_input_token_count: Option<u64>,
}

/// The payload of one ConverseStream event, whatever its `:event-type`: `messageStart`,
/// `contentBlockStart`, `contentBlockDelta`, `contentBlockStop`, `messageStop` or `metadata`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockStreamEvent {
    pub content_block_index: Option<u32>,
    pub start: Option<BedrockBlockStart>,
    pub delta: Option<BedrockDelta>,
    pub stop_reason: Option<String>,
    pub usage: Option<BedrockUsage>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockBlockStart {
    /// Absent for text and reasoning blocks (`"start": {}`).
    pub tool_use: Option<BedrockToolUseStart>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockToolUseStart {
    pub tool_use_id: Option<String>,
    pub name: Option<String>,
}

/// A block delta, a union: `text`, `toolUse`, `reasoningContent`, `citation`, ...
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BedrockDelta {
    pub text: Option<String>,
    pub tool_use: Option<BedrockToolUseDelta>,
    pub reasoning_content: Option<BedrockReasoningDelta>,
}

#[derive(Deserialize, Default)]
pub(crate) struct BedrockToolUseDelta {
    /// A fragment of the arguments' JSON text.
    pub input: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct BedrockReasoningDelta {
    pub text: Option<String>,
    /// Arrives whole, once, at the end of the reasoning block.
    pub signature: Option<String>,
}
