//! `anthropic`: Anthropic's Messages API, `POST {base_url}/v1/messages` with `x-api-key` and
//! `anthropic-version`.
//!
//! Streams arrive as Anthropic's SSE event sequence and whole responses as one message; both go
//! through one state machine (`stream::EventDecoder`). Usage is normalised there, once:
//! Anthropic's `input_tokens` leaves out cache reads and writes, the canonical count includes
//! them. Errors carry Anthropic's `error.type`, including the 529 `overloaded_error` that
//! signals a capacity shortage rather than a fault (see `error.rs`).

mod config;
mod convert;
pub(crate) mod error;
mod stream;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use relais_core::{
    BoxFuture, ChatRequest, EmbedRequest, EmbedResponse, Error, EventStream, Provider, Secret,
    StreamEvent,
};

pub use config::AnthropicConfig;

use crate::openai_compat::parse_headers;
use crate::sse::{SseDecode, SseEvent};
use convert::{EncodeOptions, encode_request};
use stream::EventDecoder;
use wire::{AnthropicEvent, AnthropicMessageOut};

pub(crate) const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The API version this adapter and its recordings follow.
pub(crate) const DEFAULT_VERSION: &str = "2023-06-01";
/// See [`AnthropicConfig::default_max_tokens`].
pub(crate) const DEFAULT_MAX_TOKENS: u32 = 4096;

/// A whole non-streaming response; far above any real message.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

/// An Anthropic account (or a server speaking its API).
struct Anthropic {
    /// `{base_url}/v1/messages`, built once.
    url: String,
    api_key: Secret,
    version: String,
    headers: Vec<(HeaderName, Secret)>,
    http: reqwest::Client,
    timeout: Duration,
    default_max_tokens: u32,
}

/// Build an `anthropic` provider from its config.
pub fn build(cfg: &AnthropicConfig, http: reqwest::Client) -> Result<Arc<dyn Provider>, String> {
    Ok(Arc::new(Anthropic::from_config(cfg, http)?))
}

impl Anthropic {
    /// Validate the config into the runtime form; errors name the field.
    fn from_config(cfg: &AnthropicConfig, http: reqwest::Client) -> Result<Self, String> {
        let base = cfg
            .base_url
            .as_ref()
            .map_or(DEFAULT_BASE_URL, |b| b.0.as_str())
            .trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(format!(
                "base_url: '{base}' must start with https:// or http://"
            ));
        }
        if base.ends_with("/v1") {
            return Err(format!(
                "base_url: '{base}' must not end in /v1: requests go to {{base_url}}/v1/messages"
            ));
        }
        if cfg.api_key.is_empty() {
            return Err("api_key: must not be empty".to_owned());
        }
        if http::HeaderValue::from_str(cfg.api_key.expose()).is_err() {
            return Err("api_key: is not a valid header value".to_owned());
        }
        let version = cfg
            .version
            .as_ref()
            .map_or(DEFAULT_VERSION, |v| v.0.as_str());
        if version.is_empty() || http::HeaderValue::from_str(version).is_err() {
            return Err(format!("version: '{version}' is not a valid header value"));
        }
        let headers = parse_headers(&cfg.headers)?;
        for (name, _) in &headers {
            let field = match name.as_str() {
                "x-api-key" => "api_key",
                "anthropic-version" => "version",
                _ => continue,
            };
            return Err(format!(
                "headers: '{}' is set by the provider; use the '{field}' field",
                name.as_str()
            ));
        }
        let default_max_tokens = cfg.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        if default_max_tokens == 0 {
            return Err("default_max_tokens: must be at least 1".to_owned());
        }
        Ok(Self {
            url: format!("{base}/v1/messages"),
            api_key: cfg.api_key.clone(),
            version: version.to_owned(),
            headers,
            http,
            timeout: Duration::from_secs(cfg.timeout_secs.unwrap_or(600)),
            default_max_tokens,
        })
    }

    fn secrets(&self) -> Vec<&Secret> {
        let mut s = vec![&self.api_key];
        s.extend(self.headers.iter().map(|(_, v)| v));
        s
    }

    /// The request for a JSON body, with auth, version, configured headers and the client's
    /// own `anthropic-beta` (added to a configured one).
    fn request(&self, body: Vec<u8>, beta: Option<&str>) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .post(self.url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-api-key", self.api_key.expose())
            .header("anthropic-version", self.version.as_str())
            .timeout(self.timeout)
            .body(body);
        let mut beta = beta;
        for (name, value) in &self.headers {
            match (name.as_str(), beta.take()) {
                ("anthropic-beta", Some(client)) => {
                    rb = rb.header(name, format!("{},{client}", value.expose()));
                }
                (_, b) => {
                    beta = b;
                    rb = rb.header(name, value.expose());
                }
            }
        }
        if let Some(client) = beta {
            rb = rb.header("anthropic-beta", client);
        }
        rb
    }

    async fn send(&self, body: Vec<u8>, beta: Option<&str>) -> Result<reqwest::Response, Error> {
        crate::http::send(self.request(body, beta))
            .await?
            .map_err(|r| error::from_response(r.status, &r.headers, &r.body, &self.secrets()))
    }

    async fn chat_inner(&self, model: &str, req: &ChatRequest) -> Result<EventStream, Error> {
        let opts = EncodeOptions {
            model,
            default_max_tokens: self.default_max_tokens,
        };
        let body = serde_json::to_vec(&encode_request(req, &opts)?)
            .map_err(|e| Error::internal(format!("cannot encode request: {e}")))?;
        let resp = self.send(body, client_beta(req)).await?;
        let is_sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if req.stream && is_sse {
            return Ok(crate::sse::sse_stream(resp, EventDecoder::new()));
        }
        // A non-streaming answer (or a server that ignored `stream`): decode it whole.
        let body = crate::http::read_limited(resp, MAX_RESPONSE_BODY).await?;
        let events = decode_whole(&body)?;
        Ok(Box::pin(futures_util::stream::iter(
            events.into_iter().map(Ok),
        )))
    }
}

impl Provider for Anthropic {
    fn kind(&self) -> &'static str {
        "anthropic"
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
        _model: &'a str,
        _request: &'a EmbedRequest,
    ) -> BoxFuture<'a, Result<EmbedResponse, Error>> {
        Box::pin(std::future::ready(Err::<EmbedResponse, Error>(
            Error::unsupported("the anthropic provider has no embeddings API"),
        )))
    }
}

/// Decode a whole (non-streaming) message body into events.
pub(crate) fn decode_whole(body: &[u8]) -> Result<Vec<StreamEvent>, Error> {
    let message: AnthropicMessageOut = serde_json::from_slice(body)
        .map_err(|e| error::protocol(format!("upstream sent an invalid message: {e}")))?;
    let mut decoder = EventDecoder::new();
    let mut out = Vec::new();
    decoder.decode_message(message, &mut out)?;
    Ok(out)
}

/// Decode one SSE data payload.
impl SseDecode for EventDecoder {
    fn event(&mut self, ev: &mut SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, Error> {
        decode_frame(self, &ev.data, out)?;
        // Nothing after `message_stop` belongs to the response; stop reading.
        Ok(self.stopped())
    }

    fn complete(&self) -> bool {
        self.finished()
    }
}

fn decode_frame(
    decoder: &mut EventDecoder,
    data: &str,
    out: &mut Vec<StreamEvent>,
) -> Result<(), Error> {
    if data.trim().is_empty() {
        return Ok(());
    }
    let event: AnthropicEvent = serde_json::from_str(data)
        .map_err(|e| error::protocol(format!("upstream sent an invalid stream event: {e}")))?;
    decoder.decode(event, out)
}

/// Decode recorded payloads (one SSE data field each) the way a live stream is decoded.
#[cfg(test)]
pub(crate) fn decode_chunks<'a>(
    chunks: impl Iterator<Item = &'a str>,
) -> Result<Vec<StreamEvent>, Error> {
    let mut decoder = EventDecoder::new();
    let mut out = Vec::new();
    for c in chunks {
        if decoder.stopped() {
            break;
        }
        decode_frame(&mut decoder, c, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

/// The client's `anthropic-beta`, when the client speaks Anthropic's API: another family's
/// beta names mean nothing here.
fn client_beta(req: &ChatRequest) -> Option<&str> {
    let beta = req.vendor_beta.as_deref()?;
    if req.extra_family == Some(convert::FAMILY) {
        Some(beta)
    } else {
        tracing::debug!(
            beta,
            "vendor beta dropped: the client does not speak Anthropic's API"
        );
        None
    }
}
