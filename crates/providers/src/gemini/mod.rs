//! `gemini` and `vertex`: Google's Gemini models through AI Studio (`type = "gemini"`, an API
//! key) and through Vertex AI (`type = "vertex"`, a service account). One adapter serves both:
//! they share the GenerateContent wire format and differ only in addressing and auth (see
//! [`Endpoint`]).
//!
//! - AI Studio: `POST {base_url}/v1beta/models/{model}:generateContent`, or
//!   `:streamGenerateContent?alt=sse`, with `x-goog-api-key`.
//! - Vertex AI: `POST {base_url}/v1/projects/{project}/locations/{location}/publishers/google/
//!   models/{model}:generateContent` (or the stream), with a bearer token from the service
//!   account's key (`auth.rs`).
//!
//! Streams are SSE whose every event is a whole response holding the next parts, and a whole
//! response is one of them: both go through one decoder (`stream::ChunkDecoder`), where usage is
//! normalised once (Gemini counts thinking outside its candidates' tokens, the canonical count
//! includes it). Errors carry Google's status names and, for 429, a `RetryInfo` delay
//! (`error.rs`). Embeddings use AI Studio's `batchEmbedContents` and Vertex's `predict`.

mod auth;
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
    StreamEvent, Usage,
};

pub use config::{GeminiConfig, VertexConfig};

use crate::openai_compat::parse_headers;
use crate::sse::{SseDecode, SseEvent};
use auth::{ServiceAccount, TokenSource};
use convert::{EncodeOptions, encode_request, forwards};
use stream::ChunkDecoder;
use wire::{GeminiEmbeddings, GeminiResponse, VertexPredictions};

/// AI Studio's host.
pub(crate) const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// A whole non-streaming response; far above any real answer.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

/// Where requests go and how they are authenticated.
enum Endpoint {
    /// AI Studio: `{base}/v1beta/models/...` with an API key.
    Studio { base: String, api_key: Secret },
    /// Vertex AI: `{models}/...`, where `models` is the project's and location's publisher
    /// path, with a bearer token.
    Vertex {
        models: String,
        /// Boxed: the signing key makes it far larger than the other variant.
        tokens: Box<TokenSource>,
    },
}

/// A Gemini account: an AI Studio key or a Vertex AI project.
struct Gemini {
    kind: &'static str,
    endpoint: Endpoint,
    headers: Vec<(HeaderName, Secret)>,
    http: reqwest::Client,
    timeout: Duration,
}

/// Build a `gemini` (AI Studio) provider from its config.
pub fn build(cfg: &GeminiConfig, http: reqwest::Client) -> Result<Arc<dyn Provider>, String> {
    Ok(Arc::new(Gemini::studio(cfg, http)?))
}

/// Build a `vertex` (Vertex AI) provider from its config. Reads the key file.
pub fn build_vertex(
    cfg: &VertexConfig,
    http: reqwest::Client,
) -> Result<Arc<dyn Provider>, String> {
    Ok(Arc::new(Gemini::vertex(cfg, http)?))
}

/// Vertex AI's host for a location: regional, or the global endpoint.
pub(crate) fn vertex_base_url(location: &str) -> String {
    if location == "global" {
        "https://aiplatform.googleapis.com".to_owned()
    } else {
        format!("https://{location}-aiplatform.googleapis.com")
    }
}

/// A base URL must be a scheme and host (and maybe a path prefix), without the API version the
/// provider adds.
fn check_base_url(base: &str, version: &str) -> Result<(), String> {
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        return Err(format!(
            "base_url: '{base}' must start with https:// or http://"
        ));
    }
    if base.ends_with(version) {
        return Err(format!(
            "base_url: '{base}' must not end in {version}: the provider adds it"
        ));
    }
    Ok(())
}

/// Headers the provider sets itself, and the field to use instead.
fn check_headers(
    headers: &[(HeaderName, Secret)],
    reserved: &[(&str, &str)],
) -> Result<(), String> {
    for (name, _) in headers {
        if let Some((_, field)) = reserved.iter().find(|(h, _)| *h == name.as_str()) {
            return Err(format!(
                "headers: '{}' is set by the provider; use the '{field}' field",
                name.as_str()
            ));
        }
    }
    Ok(())
}

/// A project id or location goes into the URL path: letters, digits and `-_.:` only (`:` for
/// domain-scoped projects such as `example.com:my-project`).
fn check_path_value(field: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: '{value}' is not a Google Cloud {field} (letters, digits, '-', '_', '.', ':')"
        ))
    }
}

/// The model as a path segment: `models/` (AI Studio's resource prefix) dropped, anything that
/// would change the path escaped.
fn model_segment(model: &str) -> String {
    let model = model.strip_prefix("models/").unwrap_or(model);
    let mut out = String::with_capacity(model.len());
    for b in model.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Gemini {
    /// Validate an AI Studio config into the runtime form; errors name the field.
    fn studio(cfg: &GeminiConfig, http: reqwest::Client) -> Result<Self, String> {
        let base = cfg
            .base_url
            .as_ref()
            .map_or(DEFAULT_BASE_URL, |b| b.0.as_str())
            .trim_end_matches('/');
        check_base_url(base, "/v1beta")?;
        if cfg.api_key.is_empty() {
            return Err("api_key: must not be empty".to_owned());
        }
        if http::HeaderValue::from_str(cfg.api_key.expose()).is_err() {
            return Err("api_key: is not a valid header value".to_owned());
        }
        let headers = parse_headers(&cfg.headers)?;
        check_headers(&headers, &[("x-goog-api-key", "api_key")])?;
        Ok(Self {
            kind: "gemini",
            endpoint: Endpoint::Studio {
                base: base.to_owned(),
                api_key: cfg.api_key.clone(),
            },
            headers,
            http,
            timeout: Duration::from_secs(cfg.timeout_secs.unwrap_or(600)),
        })
    }

    /// Validate a Vertex AI config into the runtime form, reading and parsing the key.
    fn vertex(cfg: &VertexConfig, http: reqwest::Client) -> Result<Self, String> {
        let (field, json) = match (&cfg.credentials_file, &cfg.credentials) {
            (Some(path), None) => (
                "credentials_file",
                std::fs::read_to_string(&path.0)
                    .map_err(|e| format!("credentials_file: cannot read '{}': {e}", path.0))?,
            ),
            (None, Some(inline)) => ("credentials", inline.expose().to_owned()),
            (Some(_), Some(_)) => {
                return Err(
                    "credentials_file: set either credentials_file or credentials, not both"
                        .to_owned(),
                );
            }
            (None, None) => {
                return Err(
                    "credentials_file: required (or credentials, the key's JSON itself)".to_owned(),
                );
            }
        };
        let account = ServiceAccount::from_json(&json).map_err(|e| format!("{field}: {e}"))?;
        let project = match &cfg.project {
            Some(p) => p.0.clone(),
            None => account
                .project_id
                .clone()
                .ok_or_else(|| "project: required (the key names no project_id)".to_owned())?,
        };
        check_path_value("project", &project)?;
        let location = cfg.location.0.as_str();
        check_path_value("location", location)?;
        let base = match &cfg.base_url {
            Some(b) => b.0.trim_end_matches('/').to_owned(),
            None => vertex_base_url(location),
        };
        check_base_url(&base, "/v1")?;
        let headers = parse_headers(&cfg.headers)?;
        check_headers(&headers, &[("authorization", "credentials_file")])?;
        let timeout = Duration::from_secs(cfg.timeout_secs.unwrap_or(600));
        Ok(Self {
            kind: "vertex",
            endpoint: Endpoint::Vertex {
                models: format!(
                    "{base}/v1/projects/{project}/locations/{location}/publishers/google/models"
                ),
                tokens: Box::new(TokenSource::new(account, http.clone())),
            },
            headers,
            http,
            timeout,
        })
    }

    /// `{...}/models/{model}:{method}`; `method` may carry a query (`?alt=sse`).
    fn url(&self, model: &str, method: &str) -> String {
        let model = model_segment(model);
        match &self.endpoint {
            Endpoint::Studio { base, .. } => format!("{base}/v1beta/models/{model}:{method}"),
            Endpoint::Vertex { models, .. } => format!("{models}/{model}:{method}"),
        }
    }

    /// The request for a JSON body, with auth (the bearer `token` for Vertex) and configured
    /// headers.
    fn request(&self, url: &str, body: Vec<u8>, token: Option<&Secret>) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .timeout(self.timeout)
            .body(body);
        for (name, value) in &self.headers {
            rb = rb.header(name, value.expose());
        }
        match (&self.endpoint, token) {
            (Endpoint::Studio { api_key, .. }, _) => rb.header("x-goog-api-key", api_key.expose()),
            (Endpoint::Vertex { .. }, Some(token)) => rb.bearer_auth(token.expose()),
            (Endpoint::Vertex { .. }, None) => rb,
        }
    }

    async fn post(&self, url: &str, body: Vec<u8>) -> Result<reqwest::Response, Error> {
        let token = match &self.endpoint {
            Endpoint::Vertex { tokens, .. } => Some(tokens.token().await?),
            Endpoint::Studio { .. } => None,
        };
        let r = match crate::http::send(self.request(url, body, token.as_ref())).await? {
            Ok(resp) => return Ok(resp),
            Err(r) => r,
        };
        // A token Google no longer accepts (revoked, key rotated) is not used again.
        if let (401, Endpoint::Vertex { tokens, .. }) = (r.status, &self.endpoint) {
            tokens.invalidate();
        }
        let mut secrets: Vec<&Secret> = self.headers.iter().map(|(_, v)| v).collect();
        if let Endpoint::Studio { api_key, .. } = &self.endpoint {
            secrets.push(api_key);
        }
        if let Some(t) = &token {
            secrets.push(t);
        }
        Err(error::from_response(
            r.status, &r.headers, &r.body, &secrets,
        ))
    }

    fn is_vertex(&self) -> bool {
        matches!(self.endpoint, Endpoint::Vertex { .. })
    }

    async fn chat_inner(&self, model: &str, req: &ChatRequest) -> Result<EventStream, Error> {
        let opts = EncodeOptions {
            vertex: self.is_vertex(),
        };
        let body = serde_json::to_vec(&encode_request(req, &opts)?)
            .map_err(|e| Error::internal(format!("cannot encode request: {e}")))?;
        let method = if req.stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        let resp = self.post(&self.url(model, method), body).await?;
        let is_sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if req.stream && is_sse {
            return Ok(crate::sse::sse_stream(resp, ChunkDecoder::new()));
        }
        // A non-streaming answer (or a server that ignored `alt=sse` and sent a JSON array of
        // chunks): decode it whole.
        let body = crate::http::read_limited(resp, MAX_RESPONSE_BODY).await?;
        let events = decode_whole(&body)?;
        Ok(Box::pin(futures_util::stream::iter(
            events.into_iter().map(Ok),
        )))
    }

    async fn embed_inner(&self, model: &str, req: &EmbedRequest) -> Result<EmbedResponse, Error> {
        let (method, body) = if self.is_vertex() {
            ("predict", convert::vertex_embed_body(req))
        } else {
            let name = model.strip_prefix("models/").unwrap_or(model);
            ("batchEmbedContents", convert::studio_embed_body(name, req))
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| Error::internal(format!("cannot encode request: {e}")))?;
        let resp = self.post(&self.url(model, method), body).await?;
        let body = crate::http::read_limited(resp, MAX_RESPONSE_BODY).await?;
        if self.is_vertex() {
            decode_vertex_embeddings(model, &body, req.input.len())
        } else {
            decode_studio_embeddings(model, &body, req.input.len())
        }
    }
}

impl Provider for Gemini {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn forwards_extra(&self, field: &str) -> bool {
        forwards(field, self.is_vertex())
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

/// Decode a whole response body into events: one response, or (from a server that ignored
/// `alt=sse`) a JSON array of stream chunks.
pub(crate) fn decode_whole(body: &[u8]) -> Result<Vec<StreamEvent>, Error> {
    let is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let parsed: Result<Vec<GeminiResponse>, serde_json::Error> = if is_array {
        serde_json::from_slice(body)
    } else {
        serde_json::from_slice::<GeminiResponse>(body).map(|r| vec![r])
    };
    let chunks =
        parsed.map_err(|e| error::protocol(format!("upstream sent an invalid response: {e}")))?;
    let mut decoder = ChunkDecoder::new();
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.decode(chunk, &mut out)?;
    }
    decoder.end_whole(&mut out);
    Ok(out)
}

/// Decode one SSE data payload.
impl SseDecode for ChunkDecoder {
    fn event(&mut self, ev: &mut SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, Error> {
        decode_frame(self, &ev.data, out)?;
        // Gemini has no end-of-stream event: the finish reason is the end.
        Ok(false)
    }

    fn complete(&self) -> bool {
        self.finished()
    }
}

fn decode_frame(
    decoder: &mut ChunkDecoder,
    data: &str,
    out: &mut Vec<StreamEvent>,
) -> Result<(), Error> {
    let data = data.trim();
    if data.is_empty() {
        return Ok(());
    }
    let chunk: GeminiResponse = serde_json::from_str(data)
        .map_err(|e| error::protocol(format!("upstream sent an invalid stream chunk: {e}")))?;
    decoder.decode(chunk, out)
}

fn embeddings_count(got: usize, expected: usize) -> Result<(), Error> {
    if got == expected {
        Ok(())
    } else {
        Err(error::protocol(format!(
            "upstream returned {got} embeddings for {expected} inputs"
        )))
    }
}

/// AI Studio's `batchEmbedContents` answer. It reports no token counts.
pub(crate) fn decode_studio_embeddings(
    model: &str,
    body: &[u8],
    expected: usize,
) -> Result<EmbedResponse, Error> {
    let parsed: GeminiEmbeddings = serde_json::from_slice(body)
        .map_err(|e| error::protocol(format!("upstream sent invalid embeddings: {e}")))?;
    embeddings_count(parsed.embeddings.len(), expected)?;
    Ok(EmbedResponse {
        model: Some(model.to_owned()),
        embeddings: parsed.embeddings.into_iter().map(|e| e.values).collect(),
        usage: Usage::default(),
    })
}

/// Vertex's `predict` answer, with each input's token count.
pub(crate) fn decode_vertex_embeddings(
    model: &str,
    body: &[u8],
    expected: usize,
) -> Result<EmbedResponse, Error> {
    let parsed: VertexPredictions = serde_json::from_slice(body)
        .map_err(|e| error::protocol(format!("upstream sent invalid embeddings: {e}")))?;
    embeddings_count(parsed.predictions.len(), expected)?;
    let mut tokens: u64 = 0;
    let mut embeddings = Vec::with_capacity(parsed.predictions.len());
    for prediction in parsed.predictions {
        let embedding = prediction.embeddings;
        if let Some(count) = embedding.statistics.and_then(|s| s.token_count) {
            if count.is_finite() && count > 0.0 {
                // Saturating: a float beyond u64 becomes u64::MAX rather than wrapping.
                tokens = tokens.saturating_add(count as u64);
            }
        }
        embeddings.push(embedding.values);
    }
    Ok(EmbedResponse {
        model: Some(model.to_owned()),
        embeddings,
        usage: Usage {
            input_tokens: tokens,
            ..Usage::default()
        },
    })
}

/// Decode recorded chunks (one JSON payload per line) the way a live stream is decoded.
#[cfg(test)]
pub(crate) fn decode_chunks<'a>(
    chunks: impl Iterator<Item = &'a str>,
) -> Result<Vec<StreamEvent>, Error> {
    let mut decoder = ChunkDecoder::new();
    let mut out = Vec::new();
    for c in chunks {
        decode_frame(&mut decoder, c, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
