//! `azure`: Azure OpenAI, in both its deployment-path form and its newer `/openai/v1/` form.
//!
//! The wire format is OpenAI's, so this folder holds only addressing and auth; decoding
//! (including Azure's empty first stream chunk and its content-filter finish) is shared with
//! `openai_compat`.

mod config;

use std::sync::Arc;
use std::time::Duration;

use relais_core::{Error, ErrorKind, Provider, Secret, Side};

pub use config::{ApiStyle, AzureConfig};

use crate::openai_compat::{Endpoint, Family, FamilyOptions, MaxTokensField, parse_headers};

/// The GA API version this adapter is tested against.
const DEFAULT_API_VERSION: &str = "2024-10-21";

struct AzureEndpoint {
    base: String,
    style: ApiStyle,
    api_version: String,
    api_key: Secret,
}

impl AzureEndpoint {
    fn url(&self, model: &str, op: &str) -> String {
        match self.style {
            ApiStyle::Deployments => format!(
                "{}/openai/deployments/{}/{op}?api-version={}",
                self.base,
                encode_segment(model),
                self.api_version
            ),
            ApiStyle::V1 => format!("{}/openai/v1/{op}", self.base),
        }
    }
}

/// Deployment names are user-chosen; keep them from changing the path.
fn encode_segment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.~".contains(c) {
                c.to_string()
            } else {
                format!("%{:02X}", u32::from(c) & 0xff)
            }
        })
        .collect()
}

impl AzureEndpoint {
    /// The deployment is in the path, so the URL is built per request.
    fn parsed(&self, model: &str, op: &str) -> Result<reqwest::Url, Error> {
        reqwest::Url::parse(&self.url(model, op)).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                Side::Gateway,
                format!("cannot build the Azure URL for deployment '{model}': {e}"),
            )
        })
    }
}

impl Endpoint for AzureEndpoint {
    fn chat_url(&self, model: &str) -> Result<reqwest::Url, Error> {
        self.parsed(model, "chat/completions")
    }
    fn embeddings_url(&self, model: &str) -> Result<reqwest::Url, Error> {
        self.parsed(model, "embeddings")
    }
    fn responses_url(&self, _model: &str) -> Result<reqwest::Url, Error> {
        reqwest::Url::parse(&format!("{}/openai/v1/responses", self.base)).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                Side::Gateway,
                format!("cannot build the Azure Responses URL: {e}"),
            )
        })
    }
    fn model_in_body(&self) -> bool {
        self.style == ApiStyle::V1
    }
    fn authorize(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.style {
            ApiStyle::Deployments => rb.header("api-key", self.api_key.expose()),
            ApiStyle::V1 => rb.bearer_auth(self.api_key.expose()),
        }
    }
    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.api_key]
    }
}

pub fn build(cfg: &AzureConfig, http: reqwest::Client) -> Result<Arc<dyn Provider>, String> {
    let base = cfg.endpoint.trim_end_matches('/').to_owned();
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        return Err(format!(
            "endpoint: '{base}' must start with https:// or http://"
        ));
    }
    if cfg.api_key.is_empty() {
        return Err("api_key: must not be empty".to_owned());
    }
    let endpoint = AzureEndpoint {
        base,
        style: cfg.api_style,
        api_version: cfg
            .api_version
            .as_ref()
            .map(|v| v.0.clone())
            .unwrap_or_else(|| DEFAULT_API_VERSION.to_owned()),
        api_key: cfg.api_key.clone(),
    };
    let opts = FamilyOptions {
        kind: "azure",
        headers: parse_headers(&cfg.headers)?,
        max_tokens_field: cfg
            .max_tokens_field
            .unwrap_or(MaxTokensField::MaxCompletionTokens),
        stream_usage: cfg.stream_usage.unwrap_or(true),
        tool_call_ids: crate::openai_compat::ToolCallIds::AsIs,
        timeout: Duration::from_secs(cfg.timeout_secs.unwrap_or(600)),
        wire_api: cfg.wire_api,
    };
    Ok(Arc::new(Family::new(endpoint, http, opts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_by_style() {
        let mut e = AzureEndpoint {
            base: "https://r.openai.azure.com".into(),
            style: ApiStyle::Deployments,
            api_version: "2024-10-21".into(),
            api_key: Secret::new("k"),
        };
        assert_eq!(
            e.chat_url("my dep").unwrap().as_str(),
            "https://r.openai.azure.com/openai/deployments/my%20dep/chat/completions?api-version=2024-10-21"
        );
        assert!(!e.model_in_body());
        e.style = ApiStyle::V1;
        assert_eq!(
            e.embeddings_url("x").unwrap().as_str(),
            "https://r.openai.azure.com/openai/v1/embeddings"
        );
        assert!(e.model_in_body());
    }
}
