use std::collections::BTreeMap;

use relais_core::{EnvString, Secret};
use serde::Deserialize;

/// Known OpenAI-compatible servers: each sets a default base URL and the quirks below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Openai,
    Mistral,
    Groq,
    Deepseek,
    Together,
    Vllm,
    Ollama,
    Llamacpp,
}

/// Which field carries the output token cap upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    MaxTokens,
    MaxCompletionTokens,
}

/// How tool-call ids in conversation history are sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCallIds {
    /// As the client sent them.
    AsIs,
    /// Exactly nine ASCII letters or digits, which Mistral's API (and vLLM serving Mistral
    /// models) requires: other ids (`call_...` from OpenAI, `toolu_...` from Anthropic) are
    /// replaced by a stable nine-character digest, the same for a call and its result.
    Mistral,
}

/// Which OpenAI API chat requests are sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WireApi {
    /// `/chat/completions`.
    #[default]
    Chat,
    /// `/responses`: the Responses API (models served only there; reasoning carried across
    /// turns as encrypted reasoning items).
    Responses,
}

/// `type = "openai_compat"`: OpenAI and every server that speaks its Chat Completions API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiCompatConfig {
    pub preset: Option<Preset>,
    /// Base URL up to and including the version segment, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<EnvString>,
    /// Sent as `Authorization: Bearer`. Local servers usually need none.
    pub api_key: Option<Secret>,
    /// Extra headers on every request (`OpenAI-Organization`, ...). Values are secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    pub max_tokens_field: Option<MaxTokensField>,
    /// Tool-call id format in history; `mistral` by default with the mistral preset.
    pub tool_call_ids: Option<ToolCallIds>,
    /// Ask for `stream_options.include_usage` upstream so streams are metered.
    pub stream_usage: Option<bool>,
    /// Total time one attempt may take, in seconds.
    pub timeout_secs: Option<u64>,
    /// `chat` (default) or `responses`.
    #[serde(default)]
    pub wire_api: WireApi,
}

/// What a preset implies; explicit config fields override it.
pub(crate) struct PresetDefaults {
    pub base_url: &'static str,
    pub max_tokens_field: MaxTokensField,
    pub stream_usage: bool,
    pub tool_call_ids: ToolCallIds,
}

impl Preset {
    pub fn default_base_url(self) -> &'static str {
        self.defaults().base_url
    }

    pub(crate) fn defaults(self) -> PresetDefaults {
        let (base_url, max_tokens_field, stream_usage) = match self {
            Self::Openai => (
                "https://api.openai.com/v1",
                MaxTokensField::MaxCompletionTokens,
                true,
            ),
            // Mistral always reports usage in its last chunk and rejects unknown stream options.
            Self::Mistral => (
                "https://api.mistral.ai/v1",
                MaxTokensField::MaxTokens,
                false,
            ),
            Self::Groq => (
                "https://api.groq.com/openai/v1",
                MaxTokensField::MaxTokens,
                true,
            ),
            Self::Deepseek => (
                "https://api.deepseek.com/v1",
                MaxTokensField::MaxTokens,
                true,
            ),
            Self::Together => (
                "https://api.together.xyz/v1",
                MaxTokensField::MaxTokens,
                true,
            ),
            Self::Vllm => ("http://127.0.0.1:8000/v1", MaxTokensField::MaxTokens, true),
            Self::Ollama => ("http://127.0.0.1:11434/v1", MaxTokensField::MaxTokens, true),
            Self::Llamacpp => ("http://127.0.0.1:8080/v1", MaxTokensField::MaxTokens, true),
        };
        let tool_call_ids = match self {
            Self::Mistral => ToolCallIds::Mistral,
            _ => ToolCallIds::AsIs,
        };
        PresetDefaults {
            base_url,
            max_tokens_field,
            stream_usage,
            tool_call_ids,
        }
    }
}
