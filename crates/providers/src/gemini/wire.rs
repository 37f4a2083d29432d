//! Gemini JSON as sent to and received from the API. Private to this folder.
//!
//! AI Studio (`v1beta`) and Vertex AI (`v1`) share the GenerateContent shapes; where they differ
//! (Vertex's partial function-call arguments, AI Studio's call ids) the fields are optional and
//! both are read. Request parts are built as JSON values: a part is one of many shapes, and a
//! `thoughtSignature` may land on any of them after the fact. Responses are read into flat
//! structs with optional fields, so one shape serves every part and chunk, unknown ones included.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiRequest<'a> {
    pub contents: Vec<GeminiContent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<GeminiContent>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<GeminiTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<Value>,
    #[serde(skip_serializing_if = "GeminiGenerationConfig::is_empty")]
    pub generation_config: GeminiGenerationConfig<'a>,
    /// Gemini's own fields a client sent that relais does not model (see `convert.rs`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A turn (`user` or `model`), or the system instruction (no role).
#[derive(Serialize)]
pub(crate) struct GeminiContent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    pub parts: Vec<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiTool<'a> {
    pub function_declarations: Vec<GeminiFunctionDeclaration<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiFunctionDeclaration<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    /// Full JSON Schema (both APIs take it as `parametersJsonSchema`, unlike `parameters`, which
    /// is Google's OpenAPI subset and rejects keywords such as `additionalProperties`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters_json_schema: Option<Cow<'a, Value>>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiGenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_json_schema: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_config: Option<GeminiThinkingConfig>,
}

impl GeminiGenerationConfig<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.max_output_tokens.is_none()
            && self.stop_sequences.is_empty()
            && self.seed.is_none()
            && self.response_mime_type.is_none()
            && self.response_json_schema.is_none()
            && self.thinking_config.is_none()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiThinkingConfig {
    /// Tokens; 0 turns thinking off, -1 lets the model decide.
    pub thinking_budget: i32,
    pub include_thoughts: bool,
}

/// A whole `generateContent` response, or one chunk of `streamGenerateContent`: the same shape.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiResponse {
    #[serde(default)]
    pub candidates: Vec<GeminiCandidate>,
    pub prompt_feedback: Option<GeminiPromptFeedback>,
    pub usage_metadata: Option<GeminiUsage>,
    pub model_version: Option<String>,
    pub response_id: Option<String>,
    /// An error sent inside a 200 stream (or a 200 body from a proxy).
    pub error: Option<GeminiError>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiCandidate {
    pub index: Option<u32>,
    pub content: Option<GeminiContentOut>,
    pub finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct GeminiContentOut {
    #[serde(default)]
    pub parts: Vec<GeminiPartOut>,
}

/// A response part: text (a thought when `thought` is set), a function call, or a kind relais
/// does not model (inline data, executable code, ...), which reads as an empty part.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiPartOut {
    pub text: Option<String>,
    #[serde(default)]
    pub thought: bool,
    pub thought_signature: Option<String>,
    pub function_call: Option<GeminiFunctionCallOut>,
}

/// A function call, whole (`name` and `args`), or streamed in pieces (Vertex's
/// `streamFunctionCallArguments`): `name` with `willContinue`, then `partialArgs` pieces, then an
/// empty call without `willContinue` that ends it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiFunctionCallOut {
    /// AI Studio sets it for some models; Vertex never does.
    pub id: Option<String>,
    pub name: Option<String>,
    pub args: Option<Value>,
    /// `{jsonPath, stringValue | numberValue | boolValue | nullValue, willContinue}` each. Kept as
    /// values because `nullValue` is a JSON null, which an `Option` field could not tell from an
    /// absent one.
    pub partial_args: Option<Vec<Value>>,
    #[serde(default)]
    pub will_continue: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiPromptFeedback {
    pub block_reason: Option<String>,
    /// Vertex only.
    pub block_reason_message: Option<String>,
}

/// Token counts as Gemini reports them: `candidatesTokenCount` leaves out thinking
/// (`thoughtsTokenCount`), and `promptTokenCount` includes the cached part.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiUsage {
    pub prompt_token_count: Option<u64>,
    pub candidates_token_count: Option<u64>,
    pub thoughts_token_count: Option<u64>,
    pub cached_content_token_count: Option<u64>,
    pub tool_use_prompt_token_count: Option<u64>,
}

impl GeminiUsage {
    /// Whether any count is present (early Vertex chunks carry only `trafficType`).
    pub(crate) fn has_counts(&self) -> bool {
        self.prompt_token_count.is_some()
            || self.candidates_token_count.is_some()
            || self.thoughts_token_count.is_some()
            || self.cached_content_token_count.is_some()
            || self.tool_use_prompt_token_count.is_some()
    }
}

/// `{"error": {"code", "message", "status", "details"}}`: Google's error shape, as an HTTP body
/// or a stream chunk.
#[derive(Deserialize, Default)]
pub(crate) struct GeminiErrorResponse {
    pub error: Option<GeminiError>,
}

#[derive(Deserialize, Default)]
pub(crate) struct GeminiError {
    pub code: Option<i64>,
    pub message: Option<String>,
    /// The canonical gRPC code name: `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`, ...
    pub status: Option<String>,
    /// `google.rpc` detail messages, each tagged by `@type` (`RetryInfo`, `ErrorInfo`, ...).
    #[serde(default)]
    pub details: Vec<Value>,
}

/// AI Studio's `batchEmbedContents` answer.
#[derive(Deserialize)]
pub(crate) struct GeminiEmbeddings {
    #[serde(default)]
    pub embeddings: Vec<GeminiEmbedding>,
}

#[derive(Deserialize)]
pub(crate) struct GeminiEmbedding {
    #[serde(default)]
    pub values: Vec<f32>,
}

/// Vertex's `predict` answer for a text-embedding model.
#[derive(Deserialize)]
pub(crate) struct VertexPredictions {
    #[serde(default)]
    pub predictions: Vec<VertexPrediction>,
}

#[derive(Deserialize)]
pub(crate) struct VertexPrediction {
    pub embeddings: VertexEmbedding,
}

#[derive(Deserialize)]
pub(crate) struct VertexEmbedding {
    #[serde(default)]
    pub values: Vec<f32>,
    pub statistics: Option<VertexEmbeddingStatistics>,
}

#[derive(Deserialize)]
pub(crate) struct VertexEmbeddingStatistics {
    /// A JSON number that Vertex has been seen to write as `5` and as `5.0`.
    pub token_count: Option<f64>,
}

/// A service account key file, as the Google Cloud console downloads it. Only the fields the
/// JWT flow needs are read.
#[derive(Deserialize)]
pub(crate) struct ServiceAccountFile {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub project_id: Option<String>,
    pub private_key_id: Option<String>,
    pub private_key: Option<String>,
    pub client_email: Option<String>,
    pub token_uri: Option<String>,
}

/// The OAuth token endpoint's answer.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

/// The OAuth token endpoint's error (RFC 6749 section 5.2).
#[derive(Deserialize, Default)]
pub(crate) struct TokenErrorBody {
    pub error: Option<String>,
    pub error_description: Option<String>,
}
