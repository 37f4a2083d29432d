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
    /// Who stands behind a provider of this config when its deployments name no vendor: the
    /// provider's kind, except for `openai_compat`, which fronts many vendors (vLLM, Groq,
    /// DeepSeek...): there, the provider's own name (`name`).
    pub fn default_vendor(&self, name: &str) -> String {
        match self {
            Self::OpenaiCompat(_) => name.to_owned(),
            other => other.kind().to_owned(),
        }
    }

    /// Whether its requests cost nothing whatever the price table says (the built-in model).
    pub fn is_free(&self) -> bool {
        match self {
            #[cfg(feature = "local")]
            Self::Local(_) => true,
            _ => false,
        }
    }

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
    let built = match cfg {
        ProviderConfig::OpenaiCompat(c) => openai_compat::build(c, http),
        ProviderConfig::Azure(c) => azure::build(c, http),
        ProviderConfig::Anthropic(c) => anthropic::build(c, http),
        ProviderConfig::Bedrock(c) => bedrock::build(c, http),
        ProviderConfig::Gemini(c) => gemini::build(c, http),
        ProviderConfig::Vertex(c) => gemini::build_vertex(c, http),
        #[cfg(feature = "local")]
        ProviderConfig::Local(c) => relais_local::build(c),
    }?;
    Ok(crate::redacting::Redacting::wrap(built, cfg.secrets()))
}

impl ProviderConfig {
    /// Every credential this provider is configured with, for redaction: a vendor that echoes
    /// one back in an error never gets it past this crate.
    pub fn secrets(&self) -> Vec<relais_core::Secret> {
        let headers = |h: &std::collections::BTreeMap<String, relais_core::Secret>| {
            h.values().cloned().collect::<Vec<_>>()
        };
        let mut out = match self {
            Self::OpenaiCompat(c) => {
                let mut v = headers(&c.headers);
                v.extend(c.api_key.clone());
                v
            }
            Self::Azure(c) => {
                let mut v = headers(&c.headers);
                v.push(c.api_key.clone());
                v
            }
            Self::Anthropic(c) => {
                let mut v = headers(&c.headers);
                v.push(c.api_key.clone());
                v
            }
            Self::Bedrock(c) => {
                let mut v = vec![c.access_key_id.clone(), c.secret_access_key.clone()];
                v.extend(c.session_token.clone());
                v
            }
            Self::Gemini(c) => {
                let mut v = headers(&c.headers);
                v.push(c.api_key.clone());
                v
            }
            Self::Vertex(c) => {
                let mut v = headers(&c.headers);
                v.extend(c.credentials.clone());
                v
            }
            #[cfg(feature = "local")]
            Self::Local(_) => Vec::new(),
        };
        out.extend(self.base_url_password());
        out
    }

    /// The password of a `base_url` written `scheme://user:password@host/`, if any.
    fn base_url_password(&self) -> Option<relais_core::Secret> {
        let url = match self {
            Self::OpenaiCompat(c) => c.base_url.as_ref().map(|b| b.0.as_str()),
            Self::Azure(c) => Some(c.endpoint.0.as_str()),
            Self::Anthropic(c) => c.base_url.as_ref().map(|b| b.0.as_str()),
            Self::Bedrock(c) => c.base_url.as_ref().map(|b| b.0.as_str()),
            Self::Gemini(c) => c.base_url.as_ref().map(|b| b.0.as_str()),
            Self::Vertex(c) => c.base_url.as_ref().map(|b| b.0.as_str()),
            #[cfg(feature = "local")]
            Self::Local(_) => None,
        }?;
        let (_, password) = url_userinfo(url)?;
        password.map(relais_core::Secret::new)
    }
}

/// The `user` and optional `password` of a URL's authority, when it has userinfo.
fn url_userinfo(url: &str) -> Option<(&str, Option<&str>)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    Some(match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    })
}

impl ProviderConfig {
    /// One line describing the provider for `relais check`, secrets masked (a password in a
    /// URL's userinfo included).
    pub fn summary(&self) -> String {
        let line = self.summary_unmasked_urls();
        match self.base_url_password() {
            Some(p) if !p.is_empty() => line.replace(p.expose(), "****"),
            _ => line,
        }
    }

    fn summary_unmasked_urls(&self) -> String {
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
