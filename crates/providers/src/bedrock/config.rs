use relais_core::{EnvString, Secret};
use serde::Deserialize;

/// `type = "bedrock"`: Amazon Bedrock's Converse API, signed with AWS Signature Version 4.
///
/// ```toml
/// [providers.aws]
/// type = "bedrock"
/// region = "us-east-1"
/// access_key_id = "${AWS_ACCESS_KEY_ID}"
/// secret_access_key = "${AWS_SECRET_ACCESS_KEY}"
/// session_token = "${AWS_SESSION_TOKEN:-}"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BedrockConfig {
    /// The AWS region, e.g. `us-east-1`: part of the default endpoint and of every signature.
    pub region: EnvString,
    /// Scheme, host and an optional path prefix: requests go to
    /// `{base_url}/model/{modelId}/converse` and `/converse-stream`. Default
    /// `https://bedrock-runtime.{region}.amazonaws.com`; set it for a VPC endpoint, a FIPS
    /// endpoint or a test server.
    pub base_url: Option<EnvString>,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    /// For temporary credentials (STS, SSO, an instance role's). Empty means none, so
    /// `${AWS_SESSION_TOKEN:-}` works with and without one.
    pub session_token: Option<Secret>,
    /// Total time one attempt may take, in seconds. Default 600.
    pub timeout_secs: Option<u64>,
    /// `inferenceConfig.maxTokens` for requests that name no output cap. Default: none, and
    /// Bedrock then allows the model's own maximum. With thinking on, the thinking budget is
    /// added to it so the answer keeps its room.
    pub default_max_tokens: Option<u32>,
}
