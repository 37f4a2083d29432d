//! Anthropic Messages JSON as sent to and received from the API. Private to this folder.
//!
//! Request content blocks are built as JSON values: a cache breakpoint can land on any of them
//! after the fact, and `anthropic` opaque parts are forwarded verbatim beside them. Responses are
//! read into flat structs with optional fields rather than tagged enums, so that one shape serves
//! every event and block type (unknown ones included) without serde buffering each event twice.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Serialize)]
pub(crate) struct AnthropicRequest<'a> {
    pub model: &'a str,
    pub max_tokens: u32,
    /// Text blocks; absent when the request has no system or developer message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<Value>,
    pub messages: Vec<AnthropicMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<AnthropicTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop_sequences: &'a [String],
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<AnthropicMetadata<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<AnthropicThinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_config: Option<AnthropicOutputConfig<'a>>,
    /// Anthropic's own fields a client sent that relais does not model (see `convert.rs`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Serialize)]
pub(crate) struct AnthropicMessage {
    /// `user` or `assistant`.
    pub role: &'static str,
    pub content: Vec<Value>,
}

#[derive(Serialize)]
pub(crate) struct AnthropicTool<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    /// Borrowed from the request unless it had to be completed (see `convert::input_schema`).
    pub input_schema: Cow<'a, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
}

#[derive(Serialize)]
pub(crate) struct AnthropicMetadata<'a> {
    pub user_id: &'a str,
}

#[derive(Serialize)]
pub(crate) struct AnthropicThinking {
    /// Always `enabled`: a request without thinking leaves the field out.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub budget_tokens: u32,
}

#[derive(Serialize)]
pub(crate) struct AnthropicOutputConfig<'a> {
    pub format: AnthropicOutputFormat<'a>,
}

#[derive(Serialize)]
pub(crate) struct AnthropicOutputFormat<'a> {
    /// Always `json_schema`, the only format Anthropic offers.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema: &'a Value,
}

/// One SSE event's data: `message_start`, `content_block_start`, `content_block_delta`,
/// `content_block_stop`, `message_delta`, `message_stop`, `ping` or `error`.
#[derive(Deserialize, Default)]
pub(crate) struct AnthropicEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: Option<AnthropicMessageOut>,
    pub index: Option<u32>,
    pub content_block: Option<AnthropicBlockOut>,
    /// A block delta (`content_block_delta`) or the message's stop reason (`message_delta`).
    pub delta: Option<AnthropicDelta>,
    pub usage: Option<AnthropicUsage>,
    pub error: Option<AnthropicError>,
}

/// A whole (non-streaming) response, or the message of `message_start` (with empty content).
#[derive(Deserialize, Default)]
pub(crate) struct AnthropicMessageOut {
    /// `message`; `error` if a proxy answered 200 with an error body.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub id: Option<String>,
    pub model: Option<String>,
    #[serde(default)]
    pub content: Vec<AnthropicBlockOut>,
    pub stop_reason: Option<String>,
    pub stop_details: Option<AnthropicStopDetails>,
    pub usage: Option<AnthropicUsage>,
    pub error: Option<AnthropicError>,
}

/// A response content block: `text`, `thinking`, `redacted_thinking`, `tool_use`, or a server
/// tool's block (ignored).
#[derive(Deserialize, Default)]
pub(crate) struct AnthropicBlockOut {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    pub thinking: Option<String>,
    pub signature: Option<String>,
    pub id: Option<String>,
    pub name: Option<String>,
    /// The tool's arguments as an object: complete in a whole response, `{}` at a stream's
    /// `content_block_start` (the arguments then follow as `input_json_delta`s).
    pub input: Option<Value>,
}

#[derive(Deserialize, Default)]
pub(crate) struct AnthropicDelta {
    /// `text_delta`, `thinking_delta`, `signature_delta`, `input_json_delta`, `citations_delta`;
    /// absent in `message_delta`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub text: Option<String>,
    pub thinking: Option<String>,
    pub signature: Option<String>,
    pub partial_json: Option<String>,
    pub stop_reason: Option<String>,
    pub stop_details: Option<AnthropicStopDetails>,
}

/// Token counts as Anthropic reports them: `input_tokens` excludes cache reads and writes.
#[derive(Deserialize, Default)]
pub(crate) struct AnthropicUsage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
}

/// Why a response stopped, beyond the reason: for `refusal`, the policy explanation.
#[derive(Deserialize, Default)]
pub(crate) struct AnthropicStopDetails {
    pub explanation: Option<String>,
}

/// `{"type": "error", "error": {"type": ..., "message": ...}}`, as an HTTP body or SSE event.
#[derive(Deserialize, Default)]
pub(crate) struct AnthropicErrorResponse {
    pub error: Option<AnthropicError>,
}

#[derive(Deserialize, Default)]
pub(crate) struct AnthropicError {
    /// `invalid_request_error`, `overloaded_error`, ...
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub message: Option<String>,
}
