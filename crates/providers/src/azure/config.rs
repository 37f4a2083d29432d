use std::collections::BTreeMap;

use relais_core::{EnvString, Secret};
use serde::Deserialize;

use crate::openai_compat::{MaxTokensField, WireApi};

/// How requests are addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ApiStyle {
    /// `/openai/deployments/{deployment}/chat/completions?api-version=...` with `api-key`.
    #[default]
    Deployments,
    /// `/openai/v1/chat/completions` with the model in the body and a bearer token.
    V1,
}

/// `type = "azure"`: Azure OpenAI. A deployment's `model` is the Azure deployment name
/// (`deployments` style) or the model name (`v1` style).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// `https://{resource}.openai.azure.com`
    pub endpoint: EnvString,
    pub api_key: Secret,
    #[serde(default)]
    pub api_style: ApiStyle,
    /// Used by the `deployments` style.
    pub api_version: Option<EnvString>,
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    pub max_tokens_field: Option<MaxTokensField>,
    pub stream_usage: Option<bool>,
    pub timeout_secs: Option<u64>,
    /// `chat` (default) or `responses` (`/openai/v1/responses`, the deployment name as the
    /// model).
    #[serde(default)]
    pub wire_api: WireApi,
}
