use std::future::Future;
use std::pin::Pin;

use futures_core::Stream;
use serde_json::{Map, Value};

use crate::{ChatRequest, Error, StreamEvent, Usage};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A response in progress: canonical events until the end, or an error. Dropping it cancels the
/// upstream request.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, Error>> + Send>>;

/// An embeddings request in canonical form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedRequest {
    pub model: String,
    pub input: Vec<String>,
    pub dimensions: Option<u32>,
    pub user: Option<String>,
    /// Unknown fields passed through to same-family upstreams.
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedResponse {
    pub model: Option<String>,
    pub embeddings: Vec<Vec<f32>>,
    pub usage: Usage,
}

/// Facts about a model a provider serves, shown in `/v1/models` and `relais check`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    pub owned_by: String,
    pub context_length: Option<u32>,
    /// Free-form facts (architecture, quantisation, ...).
    pub details: Map<String, Value>,
}

/// What a deployment can serve, so a router skips one that lacks what a request uses instead of
/// sending it there to fail. Vendor APIs are assumed able unless a provider knows better (the
/// built-in model has no tools or images) or the config says otherwise; an unknown window is no
/// limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub tools: bool,
    pub images: bool,
    pub json_schema: bool,
    /// Context window in tokens, prompt and output together.
    pub context_window: Option<u32>,
    pub max_output_tokens: Option<u32>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            tools: true,
            images: true,
            json_schema: true,
            context_window: None,
            max_output_tokens: None,
        }
    }
}

/// One configured upstream: a vendor account or the built-in model. A provider turns canonical
/// requests into canonical events; it never sees a client's wire format.
pub trait Provider: Send + Sync {
    /// The config `type` of this provider (`openai_compat`, `azure`, ...).
    fn kind(&self) -> &'static str;

    /// Start a chat completion with `model` (the upstream's name for it). The future resolves
    /// once the upstream accepted the request; events follow on the stream.
    fn chat<'a>(
        &'a self,
        model: &'a str,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, Error>>;

    fn embed<'a>(
        &'a self,
        model: &'a str,
        request: &'a EmbedRequest,
    ) -> BoxFuture<'a, Result<EmbedResponse, Error>>;

    /// Whether this provider speaks the OpenAI Responses API natively, so a Responses client's
    /// request reaches it whole (see [`crate::ChatRequest::responses_body`]).
    fn speaks_responses(&self) -> bool {
        false
    }

    /// Whether a request field the client's API has and relais has no canonical form for
    /// (Gemini's `safetySettings`, ...), carried in [`crate::ChatRequest::extra`], is sent on to
    /// this provider's upstream, so a route whose deployments do not all forward it refuses
    /// it instead of dropping it.
    fn forwards_extra(&self, _field: &str) -> bool {
        false
    }

    /// What `model` can serve; see [`Capabilities`].
    fn capabilities(&self, _model: &str) -> Capabilities {
        Capabilities::default()
    }

    fn model_info(&self, _model: &str) -> ModelInfo {
        ModelInfo {
            owned_by: self.kind().to_owned(),
            ..ModelInfo::default()
        }
    }
}
