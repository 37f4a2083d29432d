//! The one list of provider types. Adding a vendor is one variant and one match arm here.

use std::sync::Arc;

use relais_core::Provider;
use serde::Deserialize;

use crate::{azure, openai_compat};

/// A `[providers.NAME]` table; `type` picks the variant.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProviderConfig {
    OpenaiCompat(openai_compat::OpenAiCompatConfig),
    Azure(azure::AzureConfig),
}

impl ProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OpenaiCompat(_) => "openai_compat",
            Self::Azure(_) => "azure",
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
    }
}
