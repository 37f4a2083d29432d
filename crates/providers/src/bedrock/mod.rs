//! `bedrock`: Amazon Bedrock's Converse API, `POST {base_url}/model/{modelId}/converse` and
//! `/converse-stream`, signed with AWS Signature Version 4.
//!
//! Streams arrive as `application/vnd.amazon.eventstream` binary messages (`eventstream.rs`)
//! whose payloads are ConverseStream events; whole responses as one Converse JSON body. Both go
//! through one state machine (`stream::EventDecoder`). Usage is normalised there, once: Bedrock's
//! `inputTokens` leaves out prompt-cache reads and writes, the canonical input includes them.
//! Errors are classified by AWS's error type names (`error.rs`), in HTTP answers and in-stream
//! exceptions alike.
//!
//! Signing (`sigv4.rs`) is a pure function of the request and the time; the time is the system
//! clock, not tokio's, because AWS compares it with its own wall clock.

mod config;
mod convert;
pub(crate) mod error;
mod eventstream;
mod sigv4;
mod stream;
mod wire;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relais_core::{
    BoxFuture, ChatRequest, EmbedRequest, EmbedResponse, Error, ErrorKind, EventStream, Provider,
    Secret, StreamEvent,
};

pub use config::BedrockConfig;

use convert::{EncodeOptions, encode_request};
use eventstream::{FrameDecoder, Message};
use sigv4::{Credentials, SignRequest};
use stream::EventDecoder;
use wire::{BedrockResponse, BedrockStreamEvent};

/// The content type of every request body (and a signed header).
const JSON: &str = "application/json";

/// A whole non-streaming response; far above any real message.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;
/// Bodies above this size (images, documents) are hashed for the signature on a blocking
/// thread: SHA-256 runs at roughly 1 GB/s, so 256 KiB is a quarter of a millisecond of a tokio
/// worker, and a 10 MiB body would be ten.
const INLINE_HASH_LIMIT: usize = 256 * 1024;

/// An AWS account's Bedrock Runtime in one region (or a server speaking its API).
struct Bedrock {
    /// `{base_url}` without a trailing slash.
    base: String,
    region: String,
    credentials: Credentials,
    http: reqwest::Client,
    timeout: Duration,
    default_max_tokens: Option<u32>,
}

/// Build a `bedrock` provider from its config.
pub fn build(cfg: &BedrockConfig, http: reqwest::Client) -> Result<Arc<dyn Provider>, String> {
    Ok(Arc::new(Bedrock::from_config(cfg, http)?))
}

/// The default endpoint of a region.
pub(crate) fn default_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

impl Bedrock {
    /// Validate the config into the runtime form; errors name the field.
    fn from_config(cfg: &BedrockConfig, http: reqwest::Client) -> Result<Self, String> {
        let region = cfg.region.0.trim();
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "region: '{region}' is not an AWS region name (like us-east-1)"
            ));
        }
        let base = match &cfg.base_url {
            Some(b) => b.0.trim_end_matches('/').to_owned(),
            None => default_base_url(region),
        };
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(format!(
                "base_url: '{base}' must start with https:// or http://"
            ));
        }
        let url = reqwest::Url::parse(&base)
            .map_err(|e| format!("base_url: '{base}' is not a valid URL: {e}"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("base_url: '{base}' has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "base_url: '{base}' must not have a query or a fragment"
            ));
        }
        let access_key_id = cfg.access_key_id.expose();
        // It is written into the `Credential=` part of the Authorization header, where a space,
        // a comma or a slash would change what AWS reads.
        if access_key_id.is_empty() || !access_key_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err("access_key_id: must be a non-empty run of letters and digits".to_owned());
        }
        if cfg.secret_access_key.is_empty() {
            return Err("secret_access_key: must not be empty".to_owned());
        }
        let session_token = cfg.session_token.clone().filter(|t| !t.is_empty());
        if let Some(token) = &session_token {
            if http::HeaderValue::from_str(token.expose()).is_err() {
                return Err("session_token: is not a valid header value".to_owned());
            }
        }
        if cfg.default_max_tokens == Some(0) {
            return Err("default_max_tokens: must be at least 1".to_owned());
        }
        Ok(Self {
            base,
            region: region.to_owned(),
            credentials: Credentials {
                access_key_id: cfg.access_key_id.clone(),
                secret_access_key: cfg.secret_access_key.clone(),
                session_token,
            },
            http,
            timeout: Duration::from_secs(cfg.timeout_secs.unwrap_or(600)),
            default_max_tokens: cfg.default_max_tokens,
        })
    }

    fn secrets(&self) -> Vec<&Secret> {
        let mut s = vec![
            &self.credentials.access_key_id,
            &self.credentials.secret_access_key,
        ];
        s.extend(self.credentials.session_token.as_ref());
        s
    }

    /// `{base}/model/{modelId}/converse[-stream]`, the model id one path segment encoded as
    /// botocore encodes it (every byte but `A-Za-z0-9-_.~`: `:` and the `/` of an ARN included).
    fn url(&self, model: &str, stream: bool) -> Result<reqwest::Url, Error> {
        // `.` and `..` would be read as path steps, by the URL parser here and by AWS.
        if model.is_empty() || model == "." || model == ".." {
            return Err(Error::bad_request(format!(
                "'{model}' is not a Bedrock model id"
            )));
        }
        let operation = if stream {
            "converse-stream"
        } else {
            "converse"
        };
        let url = format!(
            "{}/model/{}/{operation}",
            self.base,
            sigv4::uri_encode(model, false)
        );
        reqwest::Url::parse(&url)
            .map_err(|e| Error::internal(format!("cannot build the Bedrock URL: {e}")))
    }

    /// The signed request for `url` and a JSON body whose SHA-256 is `payload_hash`, at
    /// `unix_secs`.
    fn request(
        &self,
        url: reqwest::Url,
        body: Vec<u8>,
        payload_hash: &str,
        unix_secs: u64,
    ) -> reqwest::RequestBuilder {
        let host = host_header(&url);
        let signature = sigv4::sign(
            &SignRequest {
                method: "POST",
                host: &host,
                path: url.path(),
                query: url.query().unwrap_or_default(),
                content_type: JSON,
                payload_hash,
            },
            &self.credentials,
            &self.region,
            unix_secs,
        );
        let mut rb = self
            .http
            .post(url)
            .header(http::header::CONTENT_TYPE, JSON)
            .header("x-amz-date", signature.amz_date)
            .header(http::header::AUTHORIZATION, signature.authorization)
            .timeout(self.timeout)
            .body(body);
        if let Some(token) = &self.credentials.session_token {
            rb = rb.header("x-amz-security-token", token.expose());
        }
        rb
    }

    async fn send(
        &self,
        model: &str,
        stream: bool,
        body: Vec<u8>,
    ) -> Result<reqwest::Response, Error> {
        let url = self.url(model, stream)?;
        let (body, payload_hash) = payload_hash(body).await?;
        crate::http::send(self.request(url, body, &payload_hash, unix_now()))
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
        let resp = self.send(model, req.stream, body).await?;
        let is_json = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(JSON));
        if req.stream && !is_json {
            return Ok(event_stream(resp));
        }
        // A non-streaming answer (or a server that answered a stream request with JSON).
        let body = crate::http::read_limited(resp, MAX_RESPONSE_BODY).await?;
        let events = decode_whole(&body)?;
        Ok(Box::pin(futures_util::stream::iter(
            events.into_iter().map(Ok),
        )))
    }
}

impl Provider for Bedrock {
    fn kind(&self) -> &'static str {
        "bedrock"
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
            Error::unsupported("the bedrock provider has no embeddings API yet"),
        )))
    }
}

/// `host[:port]` as hyper writes the `Host` header (and HTTP/2 its `:authority`) for `url`: the
/// URL parser already dropped a default port, and lowercased a domain.
fn host_header(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The body and its SHA-256 for the signature; a large body is hashed off the async workers.
async fn payload_hash(body: Vec<u8>) -> Result<(Vec<u8>, String), Error> {
    if body.len() <= INLINE_HASH_LIMIT {
        let hash = sigv4::sha256_hex(&body);
        return Ok((body, hash));
    }
    tokio::task::spawn_blocking(move || {
        let hash = sigv4::sha256_hex(&body);
        (body, hash)
    })
    .await
    .map_err(|e| Error::internal(format!("cannot hash the request body: {e}")))
}

/// Decode a whole (non-streaming) Converse body into events.
pub(crate) fn decode_whole(body: &[u8]) -> Result<Vec<StreamEvent>, Error> {
    let response: BedrockResponse = serde_json::from_slice(body)
        .map_err(|e| error::protocol(format!("upstream sent an invalid Converse response: {e}")))?;
    let mut decoder = EventDecoder::new();
    let mut out = Vec::new();
    decoder.decode_response(response, &mut out)?;
    Ok(out)
}

/// Decode one event stream message: an event, or an exception that ends the response.
fn decode_message(
    decoder: &mut EventDecoder,
    message: &Message,
    out: &mut Vec<StreamEvent>,
) -> Result<(), Error> {
    match message.header(":message-type") {
        Some("event") => {
            let event_type = message.header(":event-type").unwrap_or_default();
            let event: BedrockStreamEvent = if message.payload.is_empty() {
                BedrockStreamEvent::default()
            } else {
                serde_json::from_slice(&message.payload).map_err(|e| {
                    error::protocol(format!(
                        "upstream sent an invalid {event_type} stream event: {e}"
                    ))
                })?
            };
            decoder.decode(event_type, event, out)
        }
        Some("exception") => Err(error::exception(
            message.header(":exception-type"),
            &message.payload,
        )),
        Some("error") => Err(error::stream_error(
            message.header(":error-code"),
            message.header(":error-message"),
        )),
        other => Err(error::protocol(format!(
            "upstream sent an event stream message of type {}",
            other.unwrap_or("(none)")
        ))),
    }
}

/// Decoding state of one upstream event stream.
struct StreamState {
    resp: reqwest::Response,
    frames: FrameDecoder,
    decoder: EventDecoder,
    messages: Vec<Message>,
    pending: VecDeque<StreamEvent>,
    /// An error decoded after the events in `pending`, reported once they are out.
    failed: Option<Error>,
    done: bool,
    meter: crate::http::StreamMeter,
}

impl StreamState {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            frames: FrameDecoder::new(),
            decoder: EventDecoder::new(),
            messages: Vec::new(),
            pending: VecDeque::new(),
            failed: None,
            done: false,
            meter: crate::http::StreamMeter::new(),
        }
    }

    /// Decode buffered messages into events, up to the end of the response or an error.
    fn drain_messages(&mut self) {
        let mut out = Vec::new();
        for message in self.messages.drain(..) {
            if self.decoder.complete() || self.failed.is_some() {
                break;
            }
            if let Err(e) = decode_message(&mut self.decoder, &message, &mut out) {
                self.failed = Some(e);
            }
        }
        self.pending.extend(out);
        // Stop reason and usage are both in: nothing after them belongs to the response.
        if self.decoder.complete() || self.failed.is_some() {
            self.done = true;
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        if let Err(e) = self.meter.add(bytes.len()) {
            self.failed = Some(e);
            self.done = true;
            return;
        }
        match self.frames.feed(bytes, &mut self.messages) {
            Ok(()) => self.drain_messages(),
            // Messages completed before the bad bytes are still delivered, then the error. Bytes
            // after a complete response are not part of it, broken or not.
            Err(e) => {
                self.drain_messages();
                if self.failed.is_none() && !self.decoder.complete() {
                    self.failed = Some(error::protocol(format!("upstream stream is corrupt: {e}")));
                }
                self.done = true;
            }
        }
    }

    /// The body ended: clean only after the stop reason, and never inside a message.
    fn end(&mut self) {
        self.done = true;
        if self.failed.is_some() {
            return;
        }
        if self.frames.pending() > 0 {
            self.failed = Some(Error::upstream(
                ErrorKind::Protocol,
                "upstream stream ended inside an event stream message",
            ));
        } else if !self.decoder.finished() {
            self.failed = Some(Error::upstream(
                ErrorKind::Protocol,
                "upstream stream ended before the response finished",
            ));
        }
    }

    async fn next(&mut self) -> Option<Result<StreamEvent, Error>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            if let Some(e) = self.failed.take() {
                self.done = true;
                return Some(Err(e));
            }
            if self.done {
                return None;
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.feed(&bytes),
                Ok(None) => self.end(),
                Err(e) => {
                    self.done = true;
                    self.failed = Some(crate::http::from_transport(&e, true));
                }
            }
        }
    }
}

fn event_stream(resp: reqwest::Response) -> EventStream {
    Box::pin(futures_util::stream::unfold(
        StreamState::new(resp),
        |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        },
    ))
}

#[cfg(test)]
mod tests;
