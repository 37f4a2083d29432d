//! Test kit: a fault-injecting mock vendor that speaks the OpenAI, Azure OpenAI and Anthropic
//! Messages wire formats over loopback, and records what it received.
//!
//! Faults are queued through a control API (`POST /_mock/faults`) or [`MockServer::push_fault`]:
//! status codes with `retry-after`, delays before headers and between chunks, a connection closed
//! before any answer, a stream cut after N chunks, malformed JSON, a slow drip of bytes.
//! Answers are deterministic functions of the request, so tests can predict them.
//!
//! This crate is test support: it is never linked into the gateway.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a poisoned mutex or a failed bind should abort the test"
)]
#![allow(
    clippy::result_large_err,
    reason = "the mock's checks fail with the HTTP response to send; size does not matter here"
)]

mod anthropic;
pub mod bedrock;
mod behaviour;
mod fast;
#[cfg(feature = "fuzz")]
pub mod fuzz;
mod gemini;
pub mod responses;
mod sink;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub use behaviour::{Reply, completion_tokens, prompt_tokens, reply_for};
pub use fast::{FastOptions, serve_fast};
pub use gemini::{TOKEN_FAULT_MODEL, vertex_test_key};
pub use sink::{OtlpSpan, Posted, Sink, otlp_spans};

/// One injected fault, applied to the next `times` requests whose model matches.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Fault {
    /// Only requests for this model (or Azure deployment); any when absent.
    pub model: Option<String>,
    /// How many requests it applies to; 0 means every request until cleared. Default 1.
    pub times: Option<u32>,
    /// Answer with this status (and `body`, or an OpenAI-shaped error).
    pub status: Option<u16>,
    pub body: Option<String>,
    pub retry_after: Option<String>,
    /// Wait before sending headers.
    pub delay_ms: Option<u64>,
    /// Wait between stream chunks (or drip pieces).
    pub chunk_delay_ms: Option<u64>,
    /// Close the connection without answering.
    pub close_before_headers: bool,
    /// Streams: break the connection after this many SSE frames.
    pub cut_after_chunks: Option<usize>,
    /// Streams: after this many SSE frames, send nothing more (for an hour).
    pub stall_after_chunks: Option<usize>,
    /// Send invalid JSON (whole body, or one SSE frame).
    pub malformed: bool,
    /// Send the body in pieces of this many bytes.
    pub drip_bytes: Option<usize>,
    /// Extra response headers on a `status` answer (a redirect's `location`, say).
    pub headers: BTreeMap<String, String>,
    /// Streams: halfway through (after the first text), send this JSON as the vendor's in-stream error (an
    /// OpenAI `data:` error chunk, Anthropic's `event: error`, Gemini's `data:` error object,
    /// Bedrock's exception message), then the rest of the answer.
    pub stream_error: Option<String>,
}

/// A request the mock received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    /// The body exactly as received (lossy UTF-8), for checks that hash it, like a SigV4
    /// signature's payload hash. Absent from recordings made before it existed.
    #[serde(default)]
    pub body_raw: String,
}

/// How a streamed answer ended, as the mock saw it.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    pub model: String,
    /// Every frame was written; `false` when the body was dropped early (the peer closed the
    /// connection, or a cut fault).
    pub completed: bool,
    /// When the body was dropped (tokio's clock, so paused-time tests can read it).
    pub at: tokio::time::Instant,
}

/// Records a [`StreamEnd`] when the streamed body is dropped, however that happens.
struct EndGuard {
    ends: Arc<Mutex<Vec<StreamEnd>>>,
    model: String,
    completed: bool,
}

impl EndGuard {
    fn completed(&mut self) {
        self.completed = true;
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(StreamEnd {
                model: std::mem::take(&mut self.model),
                completed: self.completed,
                at: tokio::time::Instant::now(),
            });
    }
}

#[derive(Default)]
struct MockState {
    faults: Mutex<Vec<Fault>>,
    requests: Mutex<Vec<Recorded>>,
    stream_ends: Arc<Mutex<Vec<StreamEnd>>>,
    api_key: Option<String>,
    gemini: gemini::GeminiState,
}

impl MockState {
    fn take_fault(&self, model: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let pos = faults
            .iter()
            .position(|f| f.model.as_deref().is_none_or(|m| m == model))?;
        let f = faults[pos].clone();
        match f.times.unwrap_or(1) {
            0 => {}
            1 => {
                faults.remove(pos);
            }
            n => faults[pos].times = Some(n - 1),
        }
        Some(f)
    }
}

/// Closes the current connection when notified.
#[derive(Clone)]
struct Killer(Arc<Notify>);

/// A running mock vendor on 127.0.0.1.
pub struct MockServer {
    pub addr: SocketAddr,
    state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Start on an ephemeral loopback port; `api_key`, when set, is required like a vendor would.
    pub async fn start(api_key: Option<&str>) -> Self {
        Self::bind("127.0.0.1:0".parse().unwrap(), api_key).await
    }

    pub async fn bind(addr: SocketAddr, api_key: Option<&str>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind mock");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState {
            api_key: api_key.map(str::to_owned),
            ..MockState::default()
        });
        let app = app(state.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let kill = Arc::new(Notify::new());
                let svc =
                    TowerToHyperService::new(app.clone().layer(Extension(Killer(kill.clone()))));
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = kill.notified() => {}
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push_fault(&self, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fault);
    }

    pub fn clear_faults(&self) {
        self.state
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Streamed answers that ended so far, in order.
    pub fn stream_ends(&self) -> Vec<StreamEnd> {
        self.state
            .stream_ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn clear_requests(&self) {
        self.state
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn app(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/responses", post(openai_responses))
        .route("/openai/v1/responses", post(azure_responses))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/v1/models", get(models))
        .route("/v1/messages", post(anthropic_messages))
        .route("/model/{model}/converse", post(bedrock::converse))
        .route(
            "/model/{model}/converse-stream",
            post(bedrock::converse_stream),
        )
        .route("/openai/v1/chat/completions", post(azure_v1_chat))
        .route("/openai/v1/embeddings", post(azure_v1_embeddings))
        .route(
            "/openai/deployments/{dep}/chat/completions",
            post(azure_chat),
        )
        .route(
            "/openai/deployments/{dep}/embeddings",
            post(azure_embeddings),
        )
        .route("/v1beta/models/{model_action}", post(gemini::studio))
        .route(
            "/v1/projects/{project}/locations/{location}/publishers/google/models/{model_action}",
            post(gemini::vertex),
        )
        .route("/token", post(gemini::token))
        .route("/_mock/faults", post(add_fault).delete(clear_faults))
        .route("/_mock/requests", get(list_requests).delete(clear_requests))
        .route("/_mock/health", get(|| async { "ok" }))
        // Vendors take long conversations (tens of MB); axum's 2 MB default would refuse them.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(state)
}

async fn add_fault(State(s): State<Arc<MockState>>, Json(f): Json<Fault>) -> StatusCode {
    s.faults
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(f);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(s): State<Arc<MockState>>) -> StatusCode {
    s.faults
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    StatusCode::NO_CONTENT
}

async fn list_requests(State(s): State<Arc<MockState>>) -> Json<Vec<Recorded>> {
    Json(
        s.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    )
}

async fn clear_requests(State(s): State<Arc<MockState>>) -> StatusCode {
    s.requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    StatusCode::NO_CONTENT
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]}),
    )
}

fn error_json(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            .to_string(),
    )
        .into_response()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    OpenAi,
    Azure,
    Anthropic,
    /// The Responses API (OpenAI's, or Azure's v1 path).
    Responses,
}

/// Shared front half of every endpoint: record, authenticate, apply faults.
async fn admit(
    s: &MockState,
    killer: &Killer,
    req: &Call,
) -> Result<(Value, Option<Fault>), Response> {
    let (headers, body, auth, query) = (&req.headers, &req.body, req.auth, &req.query);
    let model_from_path = req.dep.as_deref();
    let body_json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    s.requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Recorded {
            method: "POST".into(),
            path: req.path.clone(),
            query: query.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: body_json.clone(),
            body_raw: String::from_utf8_lossy(body).into_owned(),
        });
    if body_json.is_null() {
        if auth == Auth::SigV4 {
            return Err(bedrock::error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                "Malformed input request, please reformat your input and try again.",
            ));
        }
        return Err(error_json(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            None,
        ));
    }
    if auth == Auth::SigV4 {
        bedrock::authenticate(s.api_key.as_deref(), req)?;
    } else if let Some(expected) = &s.api_key {
        let presented = match auth {
            Auth::Bearer => headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or(""),
            Auth::ApiKey => headers
                .get("api-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            Auth::AzureV1 => headers
                .get("api-key")
                .and_then(|v| v.to_str().ok())
                .or_else(|| {
                    headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                })
                .unwrap_or(""),
            Auth::XApiKey | Auth::SigV4 => headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            Auth::GoogApiKey => headers
                .get("x-goog-api-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            // Checked below against the tokens `/token` issued, not against the key.
            Auth::VertexBearer => expected.as_str(),
        };
        if auth == Auth::GoogApiKey && presented != expected {
            return Err(gemini::bad_api_key());
        }
        if auth == Auth::XApiKey && presented != expected {
            let body = anthropic::error_body(401, "invalid x-api-key");
            return Err((
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response());
        }
        if presented != expected {
            // Like OpenAI, echo the key that was presented: the gateway must redact it.
            return Err(error_json(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "Incorrect API key provided: {presented}. You can find your API key in your account settings."
                ),
                "invalid_request_error",
                Some("invalid_api_key"),
            ));
        }
    }
    if auth == Auth::VertexBearer {
        gemini::check_bearer(&s.gemini, headers)?;
    }
    if auth == Auth::XApiKey && !headers.contains_key("anthropic-version") {
        let body = anthropic::error_body(400, "anthropic-version: header is required");
        return Err((
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response());
    }
    if auth == Auth::ApiKey && !query.contains_key("api-version") {
        return Err(error_json(
            StatusCode::NOT_FOUND,
            "Resource not found",
            "invalid_request_error",
            Some("404"),
        ));
    }
    let model = model_from_path
        .map(str::to_owned)
        .or_else(|| {
            body_json
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let fault = s.take_fault(&model);
    if let Some(f) = &fault {
        if let Some(ms) = f.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if f.close_before_headers {
            killer.0.notify_one();
            // The connection task drops the connection; this response is never sent.
            std::future::pending::<()>().await;
        }
        if let Some(status) = f.status {
            if auth == Auth::SigV4 {
                let mut resp = bedrock::fault_response(status, f);
                add_headers(&mut resp, f);
                return Err(resp);
            }
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = f.body.clone().unwrap_or_else(|| {
                if auth == Auth::XApiKey {
                    return anthropic::error_body(status, &format!("mock fault: HTTP {status}"));
                }
                if matches!(auth, Auth::GoogApiKey | Auth::VertexBearer) {
                    return gemini::error_body(
                        status,
                        &format!("mock fault: HTTP {status}"),
                        f.retry_after.as_deref(),
                    );
                }
                json!({"error": {"message": format!("mock fault: HTTP {status}"), "type": "server_error", "param": null, "code": null}}).to_string()
            });
            let mut resp =
                (code, [(header::CONTENT_TYPE, "application/json")], body).into_response();
            if let Some(ra) = &f.retry_after {
                if let Ok(v) = ra.parse() {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            add_headers(&mut resp, f);
            return Err(resp);
        }
    }
    Ok((body_json, fault))
}

/// A fault's extra headers, on a response it made.
fn add_headers(resp: &mut Response, f: &Fault) {
    for (name, value) in &f.headers {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    }
}

/// One vendor call as the mock sees it.
struct Call {
    path: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
    auth: Auth,
    /// The Azure deployment or Bedrock model named in the path.
    dep: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    Bearer,
    ApiKey,
    /// Azure's v1 paths: `api-key` or a bearer token, no `api-version`.
    AzureV1,
    /// Anthropic: `x-api-key`, and `anthropic-version` must be present.
    XApiKey,
    /// Bedrock: an AWS Signature Version 4 (see `bedrock.rs`).
    SigV4,
    /// Gemini on AI Studio: `x-goog-api-key`.
    GoogApiKey,
    /// Gemini on Vertex AI: a bearer token the mock's `/token` issued (see `gemini.rs`).
    VertexBearer,
}

async fn openai_chat(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        path: "/v1/chat/completions".into(),
        query: q,
        headers,
        body,
        auth: Auth::Bearer,
        dep: None,
    };
    chat(&s, &k, call, Flavor::OpenAi).await
}

async fn anthropic_messages(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        path: "/v1/messages".into(),
        query: q,
        headers,
        body,
        auth: Auth::XApiKey,
        dep: None,
    };
    chat(&s, &k, call, Flavor::Anthropic).await
}

async fn azure_v1_chat(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        path: "/openai/v1/chat/completions".into(),
        query: q,
        headers,
        body,
        auth: Auth::Bearer,
        dep: None,
    };
    chat(&s, &k, call, Flavor::Azure).await
}

async fn openai_responses(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        path: "/v1/responses".into(),
        query: q,
        headers,
        body,
        auth: Auth::Bearer,
        dep: None,
    };
    chat(&s, &k, call, Flavor::Responses).await
}

async fn azure_responses(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        path: "/openai/v1/responses".into(),
        query: q,
        headers,
        body,
        auth: Auth::AzureV1,
        dep: None,
    };
    chat(&s, &k, call, Flavor::Responses).await
}

async fn azure_chat(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Path(dep): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/openai/deployments/{dep}/chat/completions");
    let call = Call {
        path,
        query: q,
        headers,
        body,
        auth: Auth::ApiKey,
        dep: Some(dep),
    };
    chat(&s, &k, call, Flavor::Azure).await
}

async fn chat(s: &MockState, killer: &Killer, call: Call, flavor: Flavor) -> Response {
    let dep = call.dep.as_deref();
    let (req, fault) = match admit(s, killer, &call).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let fault = fault.unwrap_or_default();
    let model = dep
        .map(str::to_owned)
        .or_else(|| req.get("model").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "mock-model".into());
    let (reply, prompt, extras) = match flavor {
        Flavor::Anthropic => {
            let (reply, prompt) = anthropic::answer(&req);
            (reply, prompt, responses::Extras::default())
        }
        Flavor::Responses => responses::answer(&req),
        Flavor::OpenAi | Flavor::Azure => (
            reply_for(&req),
            behaviour::prompt_tokens(&req),
            responses::Extras::default(),
        ),
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        let include_usage = req
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut frames = if flavor == Flavor::Anthropic {
            anthropic::stream_frames(&reply, &model, prompt)
        } else if flavor == Flavor::Responses {
            responses::stream_frames(&reply, &model, prompt, extras)
        } else {
            behaviour::stream_frames(
                &reply,
                &model,
                prompt,
                include_usage,
                flavor == Flavor::Azure,
            )
        };
        if fault.malformed {
            frames.insert(
                frames.len().min(2),
                "data: {\"choices\": [{\"delta\": {\"content\": \"x\"\n\n".to_owned(),
            );
        }
        if let Some(err) = &fault.stream_error {
            let frame = if flavor == Flavor::Anthropic {
                format!("event: error\ndata: {err}\n\n")
            } else {
                format!("data: {err}\n\n")
            };
            frames.insert(frames.len() / 2, frame);
        }
        let cut = fault.cut_after_chunks;
        let stall = fault.stall_after_chunks;
        let delay = fault.chunk_delay_ms.map(Duration::from_millis);
        let guard = EndGuard {
            ends: s.stream_ends.clone(),
            model: model.clone(),
            completed: false,
        };
        let body = futures_util::stream::unfold(
            (frames.into_iter(), 0usize, false, guard),
            move |(mut it, n, done, mut guard)| async move {
                if done {
                    return None;
                }
                if cut == Some(n) {
                    // Let hyper flush the frames already yielded, so the cut lands mid-stream
                    // rather than before the headers.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    // An error from the body makes hyper abort the connection mid-message.
                    return Some((
                        Err(std::io::Error::other("mock: stream cut")),
                        (it, n, true, guard),
                    ));
                }
                if stall == Some(n) {
                    // Headers and the first frames are out; then nothing, for an hour.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let Some(frame) = it.next() else {
                    guard.completed();
                    return None;
                };
                if n > 0 {
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                }
                Some((
                    Ok::<_, std::io::Error>(Bytes::from(frame)),
                    (it, n + 1, false, guard),
                ))
            },
        );
        return (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(body),
        )
            .into_response();
    }
    let body = if fault.malformed {
        "{\"id\": \"chatcmpl-mock\", \"choices\": [".to_owned()
    } else if flavor == Flavor::Anthropic {
        anthropic::message_json(&reply, &model, prompt).to_string()
    } else if flavor == Flavor::Responses {
        responses::response_json(&reply, &model, prompt, extras).to_string()
    } else {
        behaviour::completion_json(&reply, &model, prompt).to_string()
    };
    drip(body, &fault)
}

/// Send `body` whole, or in small delayed pieces when the fault asks for a drip.
fn drip(body: String, fault: &Fault) -> Response {
    let Some(size) = fault.drip_bytes.filter(|s| *s > 0) else {
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    };
    let delay = Duration::from_millis(fault.chunk_delay_ms.unwrap_or(5));
    let pieces: Vec<Bytes> = body
        .into_bytes()
        .chunks(size)
        .map(Bytes::copy_from_slice)
        .collect();
    let stream = futures_util::stream::unfold(pieces.into_iter(), move |mut it| async move {
        let p = it.next()?;
        tokio::time::sleep(delay).await;
        Some((Ok::<_, Infallible>(p), it))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn openai_embeddings(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        path: "/v1/embeddings".into(),
        query: q,
        headers,
        body,
        auth: Auth::Bearer,
        dep: None,
    };
    embed(&s, &k, call).await
}

async fn azure_v1_embeddings(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        path: "/openai/v1/embeddings".into(),
        query: q,
        headers,
        body,
        auth: Auth::Bearer,
        dep: None,
    };
    embed(&s, &k, call).await
}

async fn azure_embeddings(
    State(s): State<Arc<MockState>>,
    Extension(k): Extension<Killer>,
    Path(dep): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/openai/deployments/{dep}/embeddings");
    let call = Call {
        path,
        query: q,
        headers,
        body,
        auth: Auth::ApiKey,
        dep: Some(dep),
    };
    embed(&s, &k, call).await
}

async fn embed(s: &MockState, killer: &Killer, call: Call) -> Response {
    let (req, fault) = match admit(s, killer, &call).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let fault = fault.unwrap_or_default();
    if fault.malformed {
        return ([(header::CONTENT_TYPE, "application/json")], "{\"data\": [").into_response();
    }
    drip(behaviour::embeddings_json(&req).to_string(), &fault)
}

/// Run SQL as the superuser on the test database (PostgreSQL on 127.0.0.1:5432, trust auth,
/// database `test`, as `.ci/run` provides); its output, one row a line. Panics with psql's
/// message when the statement fails.
pub fn psql(sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-At",
            "-c",
        ])
        .arg(sql)
        .output()
        .expect("psql must be installed (.ci/run checks PostgreSQL)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
