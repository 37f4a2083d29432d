//! OpenAI Chat Completions JSON as sent to and received from an upstream. Private to this family.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Serialize)]
pub(crate) struct OpenAiRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    pub messages: Vec<OpenAiMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<OpenAiTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a Map<String, Value>>,
    /// The client's own OpenAI fields, never one of the above (see `convert::passed_through`).
    #[serde(flatten)]
    pub extra: Cow<'a, Map<String, Value>>,
}

#[derive(Serialize)]
pub(crate) struct OpenAiMessage<'a> {
    pub role: &'static str,
    /// A string, an array of parts, or null (assistant turns with only tool calls).
    pub content: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Serialize)]
pub(crate) struct OpenAiTool<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: OpenAiFunction<'a>,
}

#[derive(Serialize)]
pub(crate) struct OpenAiFunction<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Deserialize, Default)]
pub(crate) struct OpenAiUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    pub total_tokens: Option<u64>,
    pub prompt_tokens_details: Option<OpenAiPromptDetails>,
    pub completion_tokens_details: Option<OpenAiCompletionDetails>,
}

#[derive(Deserialize, Default)]
pub(crate) struct OpenAiPromptDetails {
    pub cached_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(crate) struct OpenAiCompletionDetails {
    pub reasoning_tokens: Option<u64>,
}

/// A whole completion, or one stream chunk: the same shape with `message` or `delta`.
/// `id` and `model` borrow from the input: every chunk repeats them and only the first is kept.
#[derive(Deserialize)]
pub(crate) struct OpenAiResponse<'a> {
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub choices: Vec<OpenAiChoice>,
    pub usage: Option<OpenAiUsage>,
    /// Some servers send an error object inside a 200 stream.
    pub error: Option<Value>,
}

#[derive(Deserialize)]
pub(crate) struct OpenAiChoice {
    #[serde(default)]
    pub index: u32,
    pub message: Option<OpenAiOutMessage>,
    pub delta: Option<OpenAiOutMessage>,
    /// Legacy text completions carry the text here.
    pub text: Option<String>,
    pub finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct OpenAiOutMessage {
    /// A string, or (Mistral) an array of typed parts including `thinking`.
    pub content: Option<Value>,
    pub refusal: Option<String>,
    /// DeepSeek, xAI and vLLM name it `reasoning_content`; OpenRouter and Ollama `reasoning`.
    pub reasoning_content: Option<String>,
    pub reasoning: Option<String>,
    pub tool_calls: Option<Vec<OpenAiOutToolCall>>,
}

#[derive(Deserialize)]
pub(crate) struct OpenAiOutToolCall {
    pub index: Option<u32>,
    pub id: Option<String>,
    pub function: Option<OpenAiOutFunction>,
}

#[derive(Deserialize)]
pub(crate) struct OpenAiOutFunction {
    pub name: Option<String>,
    /// A string per the spec; some servers send an object.
    pub arguments: Option<Value>,
}

#[derive(Deserialize)]
pub(crate) struct OpenAiEmbeddingList {
    pub model: Option<String>,
    pub data: Vec<OpenAiEmbedding>,
    pub usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
pub(crate) struct OpenAiEmbedding {
    #[serde(default)]
    pub index: usize,
    pub embedding: Vec<f32>,
}
