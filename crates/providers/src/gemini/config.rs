use std::collections::BTreeMap;

use relais_core::{EnvString, Secret};
use serde::Deserialize;

/// `type = "gemini"`: Google's Gemini API (AI Studio), with an API key.
///
/// ```toml
/// [providers.gemini]
/// type = "gemini"
/// api_key = "${GEMINI_API_KEY}"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeminiConfig {
    /// Scheme and host, without `/v1beta`: requests go to
    /// `{base_url}/v1beta/models/{model}:generateContent`.
    /// Default `https://generativelanguage.googleapis.com`.
    pub base_url: Option<EnvString>,
    /// Sent as `x-goog-api-key`.
    pub api_key: Secret,
    /// Extra headers on every request. Values are secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Total time one attempt may take, in seconds. Default 600.
    pub timeout_secs: Option<u64>,
}

/// `type = "vertex"`: Gemini on Google Cloud's Vertex AI, with a service account.
///
/// ```toml
/// [providers.vertex]
/// type = "vertex"
/// location = "us-central1"
/// credentials_file = "${GOOGLE_APPLICATION_CREDENTIALS}"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VertexConfig {
    /// The Google Cloud project. Default: the key's `project_id`.
    pub project: Option<EnvString>,
    /// The region (`us-central1`, `europe-west4`, ...) or `global`.
    pub location: EnvString,
    /// Path of the service account's JSON key file.
    pub credentials_file: Option<EnvString>,
    /// The JSON key itself, for deployments that keep it in an environment variable
    /// (`credentials = "${VERTEX_CREDENTIALS_JSON}"`). Exactly one of the two is required.
    pub credentials: Option<Secret>,
    /// Scheme and host, without `/v1`. Default `https://{location}-aiplatform.googleapis.com`,
    /// or `https://aiplatform.googleapis.com` for `global`.
    pub base_url: Option<EnvString>,
    /// Extra headers on every request. Values are secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Total time one attempt may take, in seconds. Default 600.
    pub timeout_secs: Option<u64>,
}
