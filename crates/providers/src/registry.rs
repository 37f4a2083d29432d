//! The one list of provider types. Adding a vendor is one variant and one match arm here.

use std::sync::Arc;

use relais_core::Provider;
use serde::Deserialize;

use crate::{anthropic, azure, bedrock, gemini, openai_compat};

/// A `[providers.NAME]` table; `type` picks the variant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProviderConfig {
    OpenaiCompat(openai_compat::OpenAiCompatConfig),
    Azure(azure::AzureConfig),
    Anthropic(anthropic::AnthropicConfig),
    /// Amazon Bedrock's Converse API.
    Bedrock(bedrock::BedrockConfig),
    /// Google's Gemini API (AI Studio).
    Gemini(gemini::GeminiConfig),
    /// Gemini on Google Cloud's Vertex AI.
    Vertex(gemini::VertexConfig),
    #[cfg(feature = "local")]
    Local(relais_local::LocalConfig),
}

impl ProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OpenaiCompat(_) => "openai_compat",
            Self::Azure(_) => "azure",
            Self::Anthropic(_) => "anthropic",
            Self::Bedrock(_) => "bedrock",
            Self::Gemini(_) => "gemini",
            Self::Vertex(_) => "vertex",
            #[cfg(feature = "local")]
            Self::Local(_) => "local",
        }
    }
}

/// Build the runtime provider for a validated config.
pub fn build_provider(
    cfg: &ProviderConfig,
    http: reqwest::Client,
) -> Result<Arc<dyn Provider>, String> {
    match cfg {
        ProviderConfig::OpenaiCompat(c) => openai_compat::build(c, http),
        ProviderConfig::Azure(c) => azure::build(c, http),
        ProviderConfig::Anthropic(c) => anthropic::build(c, http),
        ProviderConfig::Bedrock(c) => bedrock::build(c, http),
        ProviderConfig::Gemini(c) => gemini::build(c, http),
        ProviderConfig::Vertex(c) => gemini::build_vertex(c, http),
        #[cfg(feature = "local")]
        ProviderConfig::Local(c) => relais_local::build(c),
    }
}

impl ProviderConfig {
    /// One line describing the provider for `relais check`, secrets masked.
    pub fn summary(&self) -> String {
        match self {
            Self::OpenaiCompat(c) => {
                let base = c
                    .base_url
                    .as_ref()
                    .map(|b| b.0.clone())
                    .or_else(|| c.preset.map(|p| p.default_base_url().to_owned()))
                    .unwrap_or_default();
                let mut s = format!("base_url={base}");
                if let Some(p) = c.preset {
                    s.push_str(&format!(" preset={p:?}").to_lowercase());
                }
                if let Some(k) = &c.api_key {
                    s.push_str(&format!(" api_key={}", k.masked()));
                }
                for (h, v) in &c.headers {
                    s.push_str(&format!(" header[{h}]={}", v.masked()));
                }
                s
            }
            Self::Azure(c) => format!(
                "endpoint={} api_style={:?} api_version={} api_key={}",
                c.endpoint.0,
                c.api_style,
                c.api_version.as_ref().map_or("(default)", |v| v.0.as_str()),
                c.api_key.masked()
            ),
            Self::Anthropic(c) => {
                let mut s = format!(
                    "base_url={} version={} api_key={}",
                    c.base_url
                        .as_ref()
                        .map_or(anthropic::DEFAULT_BASE_URL, |b| b.0.as_str()),
                    c.version
                        .as_ref()
                        .map_or(anthropic::DEFAULT_VERSION, |v| v.0.as_str()),
                    c.api_key.masked()
                );
                for (h, v) in &c.headers {
                    s.push_str(&format!(" header[{h}]={}", v.masked()));
                }
                s
            }
            Self::Bedrock(c) => format!(
                "base_url={} region={} access_key_id={} secret_access_key={} session_token={}",
                c.base_url
                    .as_ref()
                    .map_or_else(|| bedrock::default_base_url(&c.region.0), |b| b.0.clone()),
                c.region.0,
                c.access_key_id.masked(),
                c.secret_access_key.masked(),
                c.session_token
                    .as_ref()
                    .filter(|t| !t.is_empty())
                    .map_or_else(|| "(none)".to_owned(), |t| t.masked())
            ),
            Self::Gemini(c) => {
                let mut s = format!(
                    "base_url={} api_key={}",
                    c.base_url
                        .as_ref()
                        .map_or(gemini::DEFAULT_BASE_URL, |b| b.0.as_str()),
                    c.api_key.masked()
                );
                for (h, v) in &c.headers {
                    s.push_str(&format!(" header[{h}]={}", v.masked()));
                }
                s
            }
            Self::Vertex(c) => {
                let base = c
                    .base_url
                    .as_ref()
                    .map_or_else(|| gemini::vertex_base_url(&c.location.0), |b| b.0.clone());
                let credentials = match (&c.credentials_file, &c.credentials) {
                    (Some(path), _) => format!("credentials_file={}", path.0),
                    (None, Some(_)) => "credentials=(inline)".to_owned(),
                    (None, None) => "credentials=(none)".to_owned(),
                };
                let mut s = format!(
                    "base_url={base} project={} location={} {credentials}",
                    c.project
                        .as_ref()
                        .map_or("(from the key)", |p| p.0.as_str()),
                    c.location.0
                );
                for (h, v) in &c.headers {
                    s.push_str(&format!(" header[{h}]={}", v.masked()));
                }
                s
            }
            #[cfg(feature = "local")]
            Self::Local(c) => format!(
                "model_path={} parallel={} context_tokens={} queue_depth={}",
                c.model_path.0, c.parallel, c.context_tokens, c.queue_depth
            ),
        }
    }
}
