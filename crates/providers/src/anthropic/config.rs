use std::collections::BTreeMap;

use relais_core::{EnvString, Secret};
use serde::Deserialize;

/// `type = "anthropic"`: Anthropic's Messages API.
///
/// ```toml
/// [providers.claude]
/// type = "anthropic"
/// api_key = "${ANTHROPIC_API_KEY}"
/// headers = { anthropic-beta = "context-1m-2025-08-07" }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicConfig {
    /// Scheme and host, without `/v1`: requests go to `{base_url}/v1/messages`.
    /// Default `https://api.anthropic.com`.
    pub base_url: Option<EnvString>,
    /// Sent as `x-api-key`.
    pub api_key: Secret,
    /// The `anthropic-version` header. Default `2023-06-01`, the version whose event sequence the
    /// stream decoder and the recorded fixtures follow; newer features arrive through
    /// `anthropic-beta` headers, not new versions.
    pub version: Option<EnvString>,
    /// Extra headers on every request (`anthropic-beta`, ...). Values are secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Total time one attempt may take, in seconds. Default 600.
    pub timeout_secs: Option<u64>,
    /// `max_tokens` for requests that name no output cap, which Anthropic requires on every
    /// request. Default 4096: enough for a long answer and accepted by every Claude model, whose
    /// output limits are 4096 (Claude 3 Haiku) and above. When thinking is on, the thinking
    /// budget is added to it so the answer keeps its room.
    pub default_max_tokens: Option<u32>,
}
