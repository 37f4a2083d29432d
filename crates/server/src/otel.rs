//! OpenTelemetry traces, exported over OTLP/HTTP as JSON, following the GenAI semantic
//! conventions: one server span per request (`chat gpt-4o-mini`) and one client span per
//! upstream attempt under it (`chat claude-sonnet-4-5-20250929`), so a failover shows as two
//! attempt spans under one request span.
//!
//! Cost on the request path: a sampling decision and, for a sampled request, a few fields kept
//! in its [`crate::pipeline::Settlement`]; the spans are built when the request settles and
//! handed to a bounded queue (`try_send`: when it is full they are dropped and counted, never
//! waited for). One exporter task per config batches them (`batch_size` spans or `flush_ms`)
//! and POSTs them with the shared upstream client (no redirects followed, a time limit per
//! export, two retries with backoff for 429, 5xx and transport errors).
//!
//! No OpenTelemetry crate is linked: OTLP's JSON encoding is a few dozen lines over
//! `serde_json`, which costs the 2-core CI nothing, where the SDK and its protobuf stack would
//! add minutes of compile time.
//!
//! A client's `traceparent` makes the request span its child and decides sampling for it
//! (parent-based); every upstream request carries a `traceparent` naming its attempt span
//! ([`relais_core::trace`]), sampled or not, so vendors that trace can join the trace.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relais_core::trace::{TraceContext, TraceParent};
use relais_core::{ChatRequest, FinishReason, Secret, StreamEvent, Usage};
use relais_router::Deployment;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::OtelConfig;
use crate::metrics::Prom;

/// Counters that outlive a reload (the tracer is rebuilt when `[otel]` changes).
#[derive(Default)]
pub(crate) struct OtelStats {
    exported: AtomicU64,
    dropped_full: AtomicU64,
    dropped_failed: AtomicU64,
    export_errors: AtomicU64,
}

/// The configured exporter: sampling, payload policy and the queue to the export task.
pub(crate) struct Tracer {
    config: OtelConfig,
    tx: mpsc::Sender<Msg>,
    /// Wakes the exporter before its tick when the queue is half full.
    wake: Arc<tokio::sync::Notify>,
    pub(crate) stats: Arc<OtelStats>,
}

/// What the exporter task is sent: a request's spans, or "send what you hold now" (at exit).
enum Msg {
    Spans(Vec<Span>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").finish_non_exhaustive()
    }
}

/// Where `[otel] endpoint` sends traces: the OTLP/HTTP traces path under it.
pub(crate) fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Check `[otel]` (called by the config build).
pub(crate) fn validate(cfg: &OtelConfig) -> Result<(), String> {
    let url = cfg.endpoint.expose();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("otel.endpoint: must be an http:// or https:// URL".into());
    }
    if !(0.0..=1.0).contains(&cfg.sample_ratio) {
        return Err("otel.sample_ratio: must be between 0.0 and 1.0".into());
    }
    if cfg.queue_size == 0 || cfg.batch_size == 0 || cfg.timeout_secs == 0 {
        return Err("otel.queue_size, batch_size and timeout_secs: must be at least 1".into());
    }
    for name in cfg.headers.keys() {
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("otel.headers: '{name}' is not a header name"));
        }
    }
    Ok(())
}

impl Tracer {
    /// A tracer for `config`, reusing `previous` when the config did not change (its queue and
    /// task go on) and its counters either way. The export task is spawned on the current
    /// Tokio runtime; without one (`relais check`) nothing is exported.
    pub(crate) fn build(
        config: &OtelConfig,
        client: &relais_providers::HttpClient,
        previous: Option<&Arc<Tracer>>,
    ) -> Arc<Self> {
        if let Some(p) = previous.filter(|p| p.config == *config) {
            return p.clone();
        }
        let stats = previous.map_or_else(Arc::default, |p| p.stats.clone());
        let (tx, rx) = mpsc::channel(config.queue_size);
        let wake = Arc::new(tokio::sync::Notify::new());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let exporter = Exporter {
                url: traces_url(config.endpoint.expose()),
                headers: config.headers.clone(),
                client: client.clone(),
                timeout: Duration::from_secs(config.timeout_secs),
                batch: config.batch_size,
                flush: Duration::from_millis(config.flush_ms.max(1)),
                resource: encode_resource(&[
                    ("service.name", Attr::S(config.service_name.clone())),
                    ("service.version", Attr::S(env!("CARGO_PKG_VERSION").into())),
                    ("telemetry.sdk.name", Attr::S("relais".into())),
                    ("telemetry.sdk.language", Attr::S("rust".into())),
                ]),
                stats: stats.clone(),
                wake: wake.clone(),
            };
            handle.spawn(exporter.run(rx));
        }
        Arc::new(Self {
            config: config.clone(),
            tx,
            wake,
            stats,
        })
    }

    /// The request's trace context: the client's trace (and its sampling decision) when it
    /// sent a valid `traceparent`, a new trace sampled at `sample_ratio` otherwise.
    pub(crate) fn context(&self, parent: Option<TraceParent>) -> TraceContext {
        let span_id = fastrand::u64(1..);
        match parent {
            Some(p) => TraceContext {
                trace_id: p.trace_id,
                span_id,
                parent_span_id: Some(p.span_id),
                sampled: p.sampled,
            },
            None => TraceContext {
                trace_id: fastrand::u128(1..),
                span_id,
                parent_span_id: None,
                sampled: self.config.sample_ratio >= 1.0
                    || fastrand::f64() < self.config.sample_ratio,
            },
        }
    }

    /// Queue a request's spans; dropped and counted when the queue is full.
    fn submit(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        if self.tx.try_send(Msg::Spans(spans)).is_err() {
            self.stats.dropped_full.fetch_add(n, Ordering::Relaxed);
        } else if self.tx.capacity() * 2 < self.tx.max_capacity() {
            // Half full: export now rather than at the next tick.
            self.wake.notify_one();
        }
    }

    /// Export what is queued now, waiting at most `limit` (at shutdown: the spans of the last
    /// requests are not left behind).
    pub(crate) async fn flush(&self, limit: Duration) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let flushed = async {
            if self.tx.send(Msg::Flush(done)).await.is_ok() {
                self.wake.notify_one();
                let _ = wait.await;
            }
        };
        if tokio::time::timeout(limit, flushed).await.is_err() {
            tracing::warn!("OTLP export: spans still queued at exit are dropped");
        }
    }

    pub(crate) fn render(&self, p: &mut Prom) {
        let s = &self.stats;
        p.family(
            "relais_otel_spans_exported_total",
            "counter",
            "Spans the OTLP collector accepted.",
        );
        p.sample(
            "relais_otel_spans_exported_total",
            "",
            s.exported.load(Ordering::Relaxed),
        );
        p.family(
            "relais_otel_spans_dropped_total",
            "counter",
            "Spans not exported: the queue was full, or the collector refused them after retries.",
        );
        for (reason, n) in [
            ("queue_full", &s.dropped_full),
            ("export_failed", &s.dropped_failed),
        ] {
            p.sample(
                "relais_otel_spans_dropped_total",
                &crate::metrics::labels(&[("reason", reason)]),
                n.load(Ordering::Relaxed),
            );
        }
        p.family(
            "relais_otel_export_errors_total",
            "counter",
            "Export requests that failed (each retry counts).",
        );
        p.sample(
            "relais_otel_export_errors_total",
            "",
            s.export_errors.load(Ordering::Relaxed),
        );
    }
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attr {
    S(String),
    I(i64),
    F(f64),
    B(bool),
    A(Vec<String>),
}

/// A finished span, ready to encode.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    trace_id: u128,
    span_id: u64,
    parent: Option<u64>,
    name: String,
    /// OTLP `SpanKind`: 2 server, 3 client.
    kind: u8,
    start_ns: u64,
    end_ns: u64,
    attrs: Vec<(&'static str, Attr)>,
    /// An error status with its message.
    error: Option<String>,
}

/// A JSON string literal (quoted, escaped) appended to `out`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// One OTLP `KeyValue` appended to `out`, written directly: no `Value` tree is built (the
/// export path encodes every span of every sampled request).
fn write_kv(out: &mut Vec<u8>, key: &str, value: &Attr) {
    use std::io::Write;
    out.extend_from_slice(b"{\"key\":");
    json_str(out, key);
    out.extend_from_slice(b",\"value\":{");
    match value {
        Attr::S(s) => {
            out.extend_from_slice(b"\"stringValue\":");
            json_str(out, s);
        }
        // proto3's JSON mapping writes 64-bit integers as strings.
        Attr::I(i) => {
            let _ = write!(out, "\"intValue\":\"{i}\"");
        }
        Attr::F(f) if f.is_finite() => {
            let _ = write!(out, "\"doubleValue\":{f}");
        }
        Attr::F(_) => out.extend_from_slice(b"\"stringValue\":\"NaN\""),
        Attr::B(b) => {
            let _ = write!(out, "\"boolValue\":{b}");
        }
        Attr::A(items) => {
            out.extend_from_slice(b"\"arrayValue\":{\"values\":[");
            for (i, s) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"stringValue\":");
                json_str(out, s);
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
        }
    }
    out.extend_from_slice(b"}}");
}

impl Span {
    /// The span as an OTLP JSON `Span` object, appended to `out`.
    fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(
            out,
            "{{\"traceId\":\"{:032x}\",\"spanId\":\"{:016x}\",",
            self.trace_id, self.span_id
        );
        if let Some(p) = self.parent {
            let _ = write!(out, "\"parentSpanId\":\"{p:016x}\",");
        }
        out.extend_from_slice(b"\"name\":");
        json_str(out, &self.name);
        let _ = write!(
            out,
            ",\"kind\":{},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[",
            self.kind, self.start_ns, self.end_ns
        );
        for (i, (k, v)) in self.attrs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_kv(out, k, v);
        }
        out.extend_from_slice(b"],\"status\":");
        match &self.error {
            Some(m) => {
                out.extend_from_slice(b"{\"code\":2,\"message\":");
                json_str(out, m);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"{\"code\":1}"),
        }
        out.push(b'}');
    }
}

/// Spans encoded between two yields to the runtime: a large batch never holds a worker for
/// long (on a one-core gateway that would be the requests' tail latency).
const ENCODE_CHUNK: usize = 32;

/// Encode spans as one OTLP `ExportTraceServiceRequest` (JSON), yielding between chunks.
async fn encode(resource: &[u8], spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + spans.len() * 640);
    out.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":{\"attributes\":");
    out.extend_from_slice(resource);
    out.extend_from_slice(b"},\"scopeSpans\":[{\"scope\":{\"name\":\"relais\",\"version\":");
    json_str(&mut out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(b"},\"spans\":[");
    for (n, chunk) in spans.chunks(ENCODE_CHUNK).enumerate() {
        if n > 0 {
            tokio::task::yield_now().await;
        }
        for (i, s) in chunk.iter().enumerate() {
            if n > 0 || i > 0 {
                out.push(b',');
            }
            s.write_json(&mut out);
        }
    }
    out.extend_from_slice(b"]}]}]}");
    out
}

/// The resource's attributes, encoded once per exporter.
fn encode_resource(attrs: &[(&str, Attr)]) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, (k, v)) in attrs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_kv(&mut out, k, v);
    }
    out.push(b']');
    out
}

struct Exporter {
    url: String,
    headers: std::collections::BTreeMap<String, Secret>,
    client: relais_providers::HttpClient,
    timeout: Duration,
    batch: usize,
    flush: Duration,
    resource: Vec<u8>,
    stats: Arc<OtelStats>,
    wake: Arc<tokio::sync::Notify>,
}

impl Exporter {
    /// Every `flush_ms` (sooner when the queue is half full or a flush is asked for), take
    /// everything queued and send it in batches of `batch_size`; stop once every sender is gone
    /// (the config was replaced) and the queue is empty.
    ///
    /// The task never waits on the queue itself: a request queuing its spans wakes nobody
    /// (one task wake-up per request would cost as much as encoding its spans).
    async fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<Span> = Vec::new();
        let mut flushed = Vec::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.flush) => {}
                () = self.wake.notified() => {}
            }
            let mut closed = false;
            loop {
                match rx.try_recv() {
                    Ok(Msg::Spans(spans)) => batch.extend(spans),
                    Ok(Msg::Flush(done)) => flushed.push(done),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
                if batch.len() >= self.batch {
                    let chunk: Vec<Span> = batch.drain(..).collect();
                    self.send(&chunk).await;
                }
            }
            if !batch.is_empty() {
                let chunk: Vec<Span> = batch.drain(..).collect();
                self.send(&chunk).await;
            }
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
            if closed {
                return;
            }
        }
    }

    /// One export, tried up to three times (0.2 s, then 0.8 s apart) when the failure may pass.
    async fn send(&self, spans: &[Span]) {
        let body = bytes::Bytes::from(encode(&self.resource, spans).await);
        let mut wait = Duration::from_millis(200);
        for attempt in 0..3 {
            let mut rb = self
                .client
                .post(&self.url)
                .timeout(self.timeout)
                .header("content-type", "application/json");
            for (k, v) in &self.headers {
                rb = rb.header(k.as_str(), v.expose());
            }
            let outcome = rb.body(body.clone()).send().await;
            let retry = match outcome {
                Ok(r) if r.status().is_success() => {
                    self.stats
                        .exported
                        .fetch_add(spans.len() as u64, Ordering::Relaxed);
                    return;
                }
                Ok(r) => {
                    let s = r.status().as_u16();
                    tracing::debug!(status = s, "OTLP export refused");
                    s == 429 || s >= 500
                }
                Err(e) => {
                    tracing::debug!(error = %relais_core::redact(&e.to_string(), &[]), "OTLP export failed");
                    true
                }
            };
            self.stats.export_errors.fetch_add(1, Ordering::Relaxed);
            if !retry || attempt == 2 {
                break;
            }
            tokio::time::sleep(wait).await;
            wait *= 4;
        }
        self.stats
            .dropped_failed
            .fetch_add(spans.len() as u64, Ordering::Relaxed);
        tracing::warn!(
            spans = spans.len(),
            "OTLP export failed: spans dropped (see relais_otel_spans_dropped_total)"
        );
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn ns_before(now_ns: u64, ago: Duration) -> u64 {
    now_ns.saturating_sub(u64::try_from(ago.as_nanos()).unwrap_or(u64::MAX))
}

/// The most text kept for one payload attribute.
const MAX_PAYLOAD: usize = 16 * 1024;

/// Cut to [`MAX_PAYLOAD`] bytes, the `...` mark included.
fn cut(text: &mut String) {
    relais_core::clip(text, MAX_PAYLOAD - 3);
}

/// Payload text as an attribute: key-like tokens redacted, cut at [`MAX_PAYLOAD`].
fn redacted(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_PAYLOAD));
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        // `redact` masks one word at a time the same way (and clips at 1,000 bytes, which a
        // single word rarely reaches).
        if word.len() >= 20 {
            out.push_str(&relais_core::redact(word, &[]));
        } else {
            out.push_str(word);
        }
        if out.len() > MAX_PAYLOAD {
            break;
        }
    }
    cut(&mut out);
    out
}

/// `gen_ai.input.messages`: the request's messages as the semantic conventions shape them
/// (role and text parts; images and tool calls named by type only).
fn input_messages(req: &ChatRequest) -> String {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let parts: Vec<Value> = m
                .content
                .iter()
                .map(|p| match p {
                    relais_core::ContentPart::Text(t) => {
                        json!({ "type": "text", "content": redacted(t) })
                    }
                    relais_core::ContentPart::ToolCall(c) => {
                        json!({ "type": "tool_call", "id": c.id, "name": c.name })
                    }
                    relais_core::ContentPart::ToolResult { call_id, .. } => {
                        json!({ "type": "tool_call_response", "id": call_id })
                    }
                    _ => json!({ "type": "image" }),
                })
                .collect();
            json!({ "role": m.role.as_str(), "parts": parts })
        })
        .collect();
    let mut text = serde_json::to_string(&messages).unwrap_or_default();
    cut(&mut text);
    text
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Refusal => "refusal",
        FinishReason::Error => "error",
        FinishReason::Other => "other",
    }
}

/// `gen_ai.provider.name` for a deployment (the semantic conventions' well-known values).
fn provider_name(d: &Deployment) -> String {
    match d.provider.kind() {
        "azure" => "azure.ai.openai".into(),
        "bedrock" => "aws.bedrock".into(),
        "gemini" => "gcp.gemini".into(),
        "vertex" => "gcp.vertex_ai".into(),
        "local" => "relais.local".into(),
        "anthropic" => "anthropic".into(),
        _ => match d.vendor.as_str() {
            "mistral" => "mistral_ai".into(),
            "xai" => "x_ai".into(),
            v => v.to_owned(),
        },
    }
}

/// A sampled request's trace while it runs: what its spans will say.
pub(crate) struct RequestTrace {
    tracer: Arc<Tracer>,
    pub(crate) ctx: TraceContext,
    /// `chat` or `embeddings`.
    operation: &'static str,
    /// The model (route) the client asked for.
    requested: String,
    request_attrs: Vec<(&'static str, Attr)>,
    input: Option<String>,
    /// Answer text, when payloads are recorded.
    output: Option<String>,
    response_id: Option<String>,
    response_model: Option<String>,
    finish: Vec<&'static str>,
}

/// How the request ended, for its spans.
pub(crate) struct TraceEnd<'a> {
    pub(crate) status: u16,
    /// The error the client got, if any (its class and message).
    pub(crate) error: Option<(&'static str, &'a str)>,
    pub(crate) serving: Option<(&'a Deployment, tokio::time::Instant)>,
    pub(crate) failed: &'a [relais_router::FailedAttempt],
    pub(crate) usage: Option<&'a Usage>,
    pub(crate) cost_pusd: u64,
    pub(crate) elapsed: Duration,
    pub(crate) live: &'a crate::live::Live,
}

impl RequestTrace {
    /// Start tracing a request, if `tracer` samples it; the context is returned either way so
    /// upstreams are told the trace.
    pub(crate) fn begin(
        tracer: &Arc<Tracer>,
        parent: Option<TraceParent>,
        operation: &'static str,
        requested: &str,
        chat: Option<&ChatRequest>,
    ) -> (TraceContext, Option<Box<Self>>) {
        let ctx = tracer.context(parent);
        if !ctx.sampled {
            return (ctx, None);
        }
        let mut request_attrs = Vec::new();
        let payloads = tracer.config.payloads;
        let mut input = None;
        if let Some(req) = chat {
            if let Some(n) = req.max_output_tokens {
                request_attrs.push(("gen_ai.request.max_tokens", Attr::I(i64::from(n))));
            }
            if let Some(t) = req.temperature {
                request_attrs.push(("gen_ai.request.temperature", Attr::F(t)));
            }
            if let Some(p) = req.top_p {
                request_attrs.push(("gen_ai.request.top_p", Attr::F(p)));
            }
            request_attrs.push(("relais.stream", Attr::B(req.stream)));
            if payloads {
                input = Some(input_messages(req));
            }
        }
        let trace = Box::new(Self {
            tracer: tracer.clone(),
            ctx,
            operation,
            requested: requested.to_owned(),
            request_attrs,
            input,
            output: payloads.then(String::new),
            response_id: None,
            response_model: None,
            finish: Vec::new(),
        });
        (ctx, Some(trace))
    }

    /// An event on its way to the client.
    pub(crate) fn observe(&mut self, ev: &StreamEvent) {
        match ev {
            StreamEvent::Start { id, model } => {
                if self.response_id.is_none() {
                    self.response_id.clone_from(id);
                }
                if self.response_model.is_none() {
                    self.response_model.clone_from(model);
                }
            }
            StreamEvent::Finish(f) => self.finish.push(finish_name(*f)),
            StreamEvent::TextDelta(t) => {
                if let Some(out) = &mut self.output {
                    if out.len() < MAX_PAYLOAD {
                        out.push_str(t);
                    }
                }
            }
            StreamEvent::Raw(raw) => {
                if let Some(out) = self.output.as_mut().filter(|o| o.len() < MAX_PAYLOAD) {
                    // The same-dialect fast path: the text is in the chunk's JSON.
                    if let Ok(v) = serde_json::from_str::<Value>(&raw.json) {
                        if let Some(t) = v
                            .pointer("/choices/0/delta/content")
                            .and_then(Value::as_str)
                        {
                            out.push_str(t);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Build the request's spans and queue them.
    pub(crate) fn finish(self: Box<Self>, end: &TraceEnd<'_>) {
        let now = now_ns();
        let tokio_now = tokio::time::Instant::now();
        let at = |t: tokio::time::Instant| ns_before(now, tokio_now.saturating_duration_since(t));
        let ctx = self.ctx;
        let mut spans = Vec::with_capacity(end.failed.len() + 2);
        let deployment_of = |route: &str, i: usize| {
            end.live
                .entries
                .get(route)
                .and_then(|e| e.route.deployments.get(i))
        };
        let base = |d: &Deployment| {
            vec![
                ("gen_ai.operation.name", Attr::S(self.operation.into())),
                ("gen_ai.provider.name", Attr::S(provider_name(d))),
                ("gen_ai.request.model", Attr::S(d.model.clone())),
                ("relais.deployment", Attr::S(d.id.clone())),
                ("relais.vendor", Attr::S(d.vendor.clone())),
            ]
        };
        let mut n: u32 = 0;
        for f in end.failed {
            let mut attrs = deployment_of(&f.route, f.deployment)
                .map(base)
                .unwrap_or_default();
            attrs.push(("error.type", Attr::S(f.error.kind.as_str().into())));
            if let Some(s) = f.error.upstream_status {
                attrs.push(("http.response.status_code", Attr::I(i64::from(s))));
            }
            attrs.push(("relais.attempt", Attr::I(i64::from(n))));
            let model = deployment_of(&f.route, f.deployment).map_or("", |d| d.model.as_str());
            let start = at(f.started);
            spans.push(Span {
                trace_id: ctx.trace_id,
                span_id: ctx.attempt_span_id(n),
                parent: Some(ctx.span_id),
                name: format!("{} {model}", self.operation),
                kind: 3,
                start_ns: start,
                end_ns: start.saturating_add(u64::try_from(f.elapsed.as_nanos()).unwrap_or(0)),
                attrs,
                error: Some(f.error.message.clone()),
            });
            n += 1;
        }
        let request_start = ns_before(now, end.elapsed);
        let mut req_attrs = vec![
            ("gen_ai.operation.name", Attr::S(self.operation.into())),
            ("gen_ai.request.model", Attr::S(self.requested.clone())),
            ("http.response.status_code", Attr::I(i64::from(end.status))),
            (
                "relais.attempts",
                Attr::I(i64::from(n) + i64::from(end.serving.is_some())),
            ),
        ];
        req_attrs.extend(self.request_attrs.iter().cloned());
        if let Some(input) = &self.input {
            req_attrs.push(("gen_ai.input.messages", Attr::S(input.clone())));
        }
        if let Some((d, started)) = end.serving {
            let mut attrs = base(d);
            attrs.push(("relais.attempt", Attr::I(i64::from(n))));
            let response_model = self
                .response_model
                .clone()
                .unwrap_or_else(|| d.model.clone());
            attrs.push(("gen_ai.response.model", Attr::S(response_model.clone())));
            if let Some(id) = &self.response_id {
                attrs.push(("gen_ai.response.id", Attr::S(id.clone())));
            }
            let mut usage_attrs = Vec::new();
            if let Some(u) = end.usage {
                let i = |v: u64| Attr::I(i64::try_from(v).unwrap_or(i64::MAX));
                usage_attrs.push(("gen_ai.usage.input_tokens", i(u.input_tokens)));
                usage_attrs.push(("gen_ai.usage.output_tokens", i(u.output_tokens)));
            }
            attrs.extend(usage_attrs.iter().cloned());
            if !self.finish.is_empty() {
                let reasons = Attr::A(self.finish.iter().map(|s| (*s).to_owned()).collect());
                attrs.push(("gen_ai.response.finish_reasons", reasons.clone()));
                req_attrs.push(("gen_ai.response.finish_reasons", reasons));
            }
            if let Some((class, _)) = end.error {
                attrs.push(("error.type", Attr::S(class.into())));
            }
            req_attrs.push(("gen_ai.provider.name", Attr::S(provider_name(d))));
            req_attrs.push(("gen_ai.response.model", Attr::S(response_model)));
            req_attrs.push(("relais.deployment", Attr::S(d.id.clone())));
            req_attrs.extend(usage_attrs);
            if let Some(out) = &self.output {
                let text = json!([{ "role": "assistant", "parts": [{ "type": "text", "content": redacted(out) }],
                    "finish_reason": self.finish.first().copied().unwrap_or("stop") }]);
                req_attrs.push(("gen_ai.output.messages", Attr::S(text.to_string())));
            }
            spans.push(Span {
                trace_id: ctx.trace_id,
                span_id: ctx.attempt_span_id(n),
                parent: Some(ctx.span_id),
                name: format!("{} {}", self.operation, d.model),
                kind: 3,
                start_ns: at(started).max(request_start),
                end_ns: now,
                attrs,
                error: end.error.map(|(_, m)| m.to_owned()),
            });
        }
        if end.cost_pusd > 0 {
            req_attrs.push(("relais.cost_usd", Attr::F(end.cost_pusd as f64 / 1e12)));
        }
        if let Some((class, _)) = end.error {
            req_attrs.push(("error.type", Attr::S(class.into())));
        }
        spans.push(Span {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent: ctx.parent_span_id,
            name: format!("{} {}", self.operation, self.requested),
            kind: 2,
            start_ns: request_start,
            end_ns: now,
            attrs: req_attrs,
            error: end.error.map(|(_, m)| m.to_owned()),
        });
        self.tracer.submit(spans);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c/otlp/v1/traces"),
            "http://c/otlp/v1/traces"
        );
    }

    #[tokio::test]
    async fn spans_encode_as_otlp_json() {
        let span = |i: u64| Span {
            trace_id: 1,
            span_id: i,
            parent: Some(3),
            name: "chat \"m\"\n\u{e9}".into(),
            kind: 3,
            start_ns: 10,
            end_ns: 20,
            attrs: vec![
                ("a", Attr::S("x".into())),
                ("b", Attr::I(-5)),
                ("c", Attr::A(vec!["stop".into(), "length".into()])),
                ("d", Attr::F(0.25)),
                ("e", Attr::B(true)),
            ],
            error: (i == 2).then(|| "boom".into()),
        };
        let spans: Vec<Span> = (1..=70).map(span).collect();
        let resource = encode_resource(&[("service.name", Attr::S("relais".into()))]);
        let body: Value = serde_json::from_slice(&encode(&resource, &spans).await).unwrap();
        let rs = &body["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "relais"
        );
        let all = rs["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(all.len(), 70);
        let s = &all[1];
        assert_eq!(s["traceId"], "00000000000000000000000000000001");
        assert_eq!(s["spanId"], "0000000000000002");
        assert_eq!(s["parentSpanId"], "0000000000000003");
        assert_eq!(s["name"], "chat \"m\"\n\u{e9}");
        assert_eq!(s["kind"], 3);
        assert_eq!(s["startTimeUnixNano"], "10");
        assert_eq!(s["attributes"][1]["value"]["intValue"], "-5");
        assert_eq!(
            s["attributes"][2]["value"]["arrayValue"]["values"][1]["stringValue"],
            "length"
        );
        assert_eq!(s["attributes"][3]["value"]["doubleValue"], 0.25);
        assert_eq!(s["attributes"][4]["value"]["boolValue"], true);
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(s["status"]["message"], "boom");
        assert_eq!(all[0]["status"]["code"], 1);
        assert!(all[0]["status"].get("message").is_none());
    }

    #[test]
    fn payload_text_is_redacted_and_bounded() {
        let text = format!("my key is sk-proj-{} ok", "a1B2".repeat(10));
        let out = redacted(&text);
        assert!(out.contains("[REDACTED]"), "{out}");
        assert!(!out.contains("a1B2a1B2"), "{out}");
        assert!(redacted(&"word ".repeat(10_000)).len() <= MAX_PAYLOAD);
    }
}
