//! `openai_compat`: OpenAI and every server that speaks its Chat Completions API (Mistral, Groq,
//! DeepSeek, Together, vLLM, Ollama, llama.cpp server), as configurations of one adapter.
//!
//! The wire handling here is shared with `azure`, which differs only in addressing and auth:
//! see [`Endpoint`].

mod config;
mod convert;
pub(crate) mod error;
mod responses;
mod stream;
mod wire;

use std::time::Duration;

use http::HeaderName;
use relais_core::{
    BoxFuture, ChatRequest, EmbedRequest, EmbedResponse, Error, EventStream, Provider, Secret,
    StreamEvent,
};

pub use config::{MaxTokensField, OpenAiCompatConfig, Preset, ToolCallIds, WireApi};

use crate::sse::{SseDecode, SseEvent};
use convert::{EncodeOptions, encode_request};
use stream::ChunkDecoder;
use wire::{OpenAiEmbeddingList, OpenAiResponse};

/// A whole non-streaming response; far above any real completion.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

/// How a member of the OpenAI wire family is addressed and authenticated.
pub(crate) trait Endpoint: Send + Sync + 'static {
    fn chat_url(&self, model: &str) -> Result<reqwest::Url, Error>;
    fn embeddings_url(&self, model: &str) -> Result<reqwest::Url, Error>;
    /// Where the Responses API is (`wire_api = "responses"`); the body always names the model.
    fn responses_url(&self, model: &str) -> Result<reqwest::Url, Error>;
    /// Whether the body names the model (false when the URL does, as in Azure deployments).
    fn model_in_body(&self) -> bool;
    fn authorize(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder;
    fn secrets(&self) -> Vec<&Secret>;
}

/// Plain OpenAI-style addressing: `{base_url}/chat/completions` with a bearer token. The URLs
/// and the authorization header are built once, not per request (parsing a URL and formatting
/// a header showed up in the request path's profile).
pub(crate) struct BaseUrl {
    chat: reqwest::Url,
    embeddings: reqwest::Url,
    responses: reqwest::Url,
    api_key: Option<Secret>,
    authorization: Option<http::HeaderValue>,
}

impl BaseUrl {
    fn new(base: &str, api_key: Option<Secret>) -> Result<Self, String> {
        let parse = |path: &str| {
            reqwest::Url::parse(&format!("{base}/{path}"))
                .map_err(|e| format!("base_url: '{base}' is not a valid URL: {e}"))
        };
        let authorization = match &api_key {
            Some(k) if !k.is_empty() => {
                let mut v = http::HeaderValue::from_str(&format!("Bearer {}", k.expose()))
                    .map_err(|_| {
                        "api_key: contains characters not allowed in a header".to_owned()
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
            _ => None,
        };
        Ok(Self {
            chat: parse("chat/completions")?,
            embeddings: parse("embeddings")?,
            responses: parse("responses")?,
            api_key,
            authorization,
        })
    }
}

impl Endpoint for BaseUrl {
    fn chat_url(&self, _model: &str) -> Result<reqwest::Url, Error> {
        Ok(self.chat.clone())
    }
    fn embeddings_url(&self, _model: &str) -> Result<reqwest::Url, Error> {
        Ok(self.embeddings.clone())
    }
    fn responses_url(&self, _model: &str) -> Result<reqwest::Url, Error> {
        Ok(self.responses.clone())
    }
    fn model_in_body(&self) -> bool {
        true
    }
    fn authorize(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Some(v) => rb.header(http::header::AUTHORIZATION, v.clone()),
            None => rb,
        }
    }
    fn secrets(&self) -> Vec<&Secret> {
        self.api_key.iter().collect()
    }
}

/// Options shared by every member of the family.
pub(crate) struct FamilyOptions {
    pub kind: &'static str,
    pub headers: Vec<(HeaderName, Secret)>,
    pub max_tokens_field: MaxTokensField,
    pub stream_usage: bool,
    pub tool_call_ids: ToolCallIds,
    pub timeout: Duration,
    pub wire_api: WireApi,
}

/// A provider speaking the OpenAI wire format through some [`Endpoint`].
pub(crate) struct Family<E> {
    endpoint: E,
    http: reqwest::Client,
    opts: FamilyOptions,
}

pub(crate) fn parse_headers(
    headers: &std::collections::BTreeMap<String, Secret>,
) -> Result<Vec<(HeaderName, Secret)>, String> {
    headers
        .iter()
        .map(|(k, v)| {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|_| format!("headers: '{k}' is not a valid header name"))?;
            http::HeaderValue::from_str(v.expose())
                .map_err(|_| format!("headers: the value of '{k}' is not a valid header value"))?;
            Ok((name, v.clone()))
        })
        .collect()
}

/// Build an `openai_compat` provider from its config.
pub fn build(
    cfg: &OpenAiCompatConfig,
    http: reqwest::Client,
) -> Result<std::sync::Arc<dyn Provider>, String> {
    let defaults = cfg.preset.map(Preset::defaults);
    let base = match (&cfg.base_url, &defaults) {
        (Some(b), _) => b.0.clone(),
        (None, Some(d)) => d.base_url.to_owned(),
        (None, None) => return Err("base_url: required when no preset is given".to_owned()),
    };
    let base = base.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(format!(
            "base_url: '{base}' must start with http:// or https://"
        ));
    }
    let opts = FamilyOptions {
        kind: "openai_compat",
        headers: parse_headers(&cfg.headers)?,
        max_tokens_field: cfg
            .max_tokens_field
            .or(defaults.as_ref().map(|d| d.max_tokens_field))
            .unwrap_or(MaxTokensField::MaxTokens),
        stream_usage: cfg
            .stream_usage
            .or(defaults.as_ref().map(|d| d.stream_usage))
            .unwrap_or(true),
        tool_call_ids: cfg
            .tool_call_ids
            .or(defaults.as_ref().map(|d| d.tool_call_ids))
            .unwrap_or(ToolCallIds::AsIs),
        timeout: Duration::from_secs(cfg.timeout_secs.unwrap_or(600)),
        wire_api: cfg.wire_api,
    };
    let endpoint = BaseUrl::new(&base, cfg.api_key.clone())?;
    Ok(std::sync::Arc::new(Family::new(endpoint, http, opts)))
}

impl<E: Endpoint> Family<E> {
    pub(crate) fn new(endpoint: E, http: reqwest::Client, opts: FamilyOptions) -> Self {
        Self {
            endpoint,
            http,
            opts,
        }
    }

    fn secrets(&self) -> Vec<&Secret> {
        let mut s = self.endpoint.secrets();
        s.extend(self.opts.headers.iter().map(|(_, v)| v));
        s
    }

    async fn post(&self, url: reqwest::Url, body: Vec<u8>) -> Result<reqwest::Response, Error> {
        let mut rb = self
            .http
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .timeout(self.opts.timeout)
            .body(body);
        for (name, value) in &self.opts.headers {
            rb = rb.header(name, value.expose());
        }
        crate::http::send(self.endpoint.authorize(rb))
            .await?
            .map_err(|r| error::from_response(r.status, &r.headers, &r.body, &self.secrets()))
    }

    /// A chat request through the Responses API (`wire_api = "responses"`).
    async fn responses_inner(&self, model: &str, req: &ChatRequest) -> Result<EventStream, Error> {
        // A Responses client's request goes through whole; any other is encoded.
        let native = req.responses_body.is_some();
        let body = match &req.responses_body {
            Some(b) => responses::native(b, req, model),
            None => responses::encode(req, model)?,
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| Error::internal(format!("cannot encode request: {e}")))?;
        let resp = self.post(self.endpoint.responses_url(model)?, body).await?;
        if req.stream && is_sse(&resp) {
            return Ok(crate::sse::sse_stream(
                resp,
                responses::ResponsesDecoder::forwarding(native),
            ));
        }
        let body = crate::http::read_limited(resp, MAX_RESPONSE_BODY).await?;
        let events = responses::decode_whole(&body, native)?;
        Ok(Box::pin(futures_util::stream::iter(
            events.into_iter().map(Ok),
        )))
    }

    async fn chat_inner(&self, model: &str, req: &ChatRequest) -> Result<EventStream, Error> {
        if self.opts.wire_api == WireApi::Responses {
            return self.responses_inner(model, req).await;
        }
        let opts = EncodeOptions {
            model: self.endpoint.model_in_body().then_some(model),
            stream: req.stream,
            stream_usage: self.opts.stream_usage,
            max_tokens_field: self.opts.max_tokens_field,
            tool_call_ids: self.opts.tool_call_ids,
        };
        let body = serde_json::to_vec(&encode_request(req, &opts)?)
            .map_err(|e| Error::internal(format!("cannot encode request: {e}")))?;
        let resp = self.post(self.endpoint.chat_url(model)?, body).await?;
        if req.stream && is_sse(&resp) {
            let decoder = ChunkDecoder::forwarding(req.passthrough);
            return Ok(crate::sse::sse_stream(resp, decoder));
        }
        // A non-streaming answer (or a server that ignored `stream`): decode it whole.
        let body = crate::http::read_limited(resp, MAX_RESPONSE_BODY).await?;
        let events = decode_whole(&body)?;
        Ok(Box::pin(futures_util::stream::iter(
            events.into_iter().map(Ok),
        )))
    }

    async fn embed_inner(&self, model: &str, req: &EmbedRequest) -> Result<EmbedResponse, Error> {
        let mut body = req.extra.clone();
        if self.endpoint.model_in_body() {
            body.insert("model".into(), model.into());
        }
        body.insert("input".into(), req.input.clone().into());
        body.insert("encoding_format".into(), "float".into());
        if let Some(d) = req.dimensions {
            body.insert("dimensions".into(), d.into());
        }
        if let Some(u) = &req.user {
            body.insert("user".into(), u.clone().into());
        }
        let body = serde_json::to_vec(&body)
            .map_err(|e| Error::internal(format!("cannot encode request: {e}")))?;
        let resp = self
            .post(self.endpoint.embeddings_url(model)?, body)
            .await?;
        let body = crate::http::read_limited(resp, MAX_RESPONSE_BODY).await?;
        decode_embeddings(&body)
    }
}

impl<E: Endpoint> Provider for Family<E> {
    fn kind(&self) -> &'static str {
        self.opts.kind
    }

    fn speaks_responses(&self) -> bool {
        self.opts.wire_api == WireApi::Responses
    }

    fn chat<'a>(
        &'a self,
        model: &'a str,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, Error>> {
        Box::pin(self.chat_inner(model, request))
    }

    fn embed<'a>(
        &'a self,
        model: &'a str,
        request: &'a EmbedRequest,
    ) -> BoxFuture<'a, Result<EmbedResponse, Error>> {
        Box::pin(self.embed_inner(model, request))
    }
}

fn is_sse(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Undecodable upstream output. Retryable: when it happens before the first event reached the
/// client, another deployment can still answer.
fn protocol(what: &str, e: &serde_json::Error) -> Error {
    Error::protocol(format!("upstream sent invalid {what}: {e}"))
}

impl SseDecode for ChunkDecoder {
    fn event(&mut self, ev: &mut SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, Error> {
        if ev.data == "[DONE]" {
            return Ok(true);
        }
        if ev.data.trim().is_empty() {
            return Ok(false);
        }
        // The same-dialect fast path: once the response has started (its first chunk, which
        // the router's commit point waits past, is always decoded), a chunk of plain content
        // leaves as it came. Usage, finish, errors and tool calls are still decoded here.
        if self.passthrough && self.started && !self.finished {
            if let Some(spans) = stream::forwardable(&ev.data) {
                out.push(StreamEvent::Raw(relais_core::RawChunk {
                    json: std::mem::take(&mut ev.data),
                    id: spans.id,
                    created: spans.created,
                    model: spans.model,
                }));
                return Ok(false);
            }
        }
        let chunk: OpenAiResponse =
            serde_json::from_str(&ev.data).map_err(|e| protocol("stream chunk", &e))?;
        self.decode(chunk, out)?;
        Ok(false)
    }

    fn complete(&self) -> bool {
        self.finished
    }
}

/// Decode a whole (non-streaming) completion body into events.
pub(crate) fn decode_whole(body: &[u8]) -> Result<Vec<StreamEvent>, Error> {
    let resp: OpenAiResponse =
        serde_json::from_slice(body).map_err(|e| protocol("completion JSON", &e))?;
    let mut events = Vec::new();
    let mut decoder = ChunkDecoder::new();
    decoder.decode(resp, &mut events)?;
    if !decoder.finished {
        events.push(StreamEvent::Finish(relais_core::FinishReason::Stop));
    }
    Ok(events)
}

pub(crate) fn decode_embeddings(body: &[u8]) -> Result<EmbedResponse, Error> {
    let mut list: OpenAiEmbeddingList =
        serde_json::from_slice(body).map_err(|e| protocol("embeddings JSON", &e))?;
    list.data.sort_by_key(|d| d.index);
    Ok(EmbedResponse {
        model: list.model,
        usage: relais_core::Usage {
            input_tokens: list.usage.map(|u| u.prompt_tokens).unwrap_or(0),
            ..relais_core::Usage::default()
        },
        embeddings: list.data.into_iter().map(|d| d.embedding).collect(),
    })
}

/// Decode recorded chunks (one JSON payload each) the way a live stream is decoded.
#[cfg(test)]
pub(crate) fn decode_chunks<'a>(
    chunks: impl Iterator<Item = &'a str>,
) -> Result<Vec<StreamEvent>, Error> {
    let mut decoder = ChunkDecoder::new();
    let mut out = Vec::new();
    for c in chunks {
        if c.trim().is_empty() || c.trim() == "[DONE]" {
            continue;
        }
        let chunk: OpenAiResponse = serde_json::from_str(c).map_err(|e| protocol("chunk", &e))?;
        decoder.decode(chunk, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests;
