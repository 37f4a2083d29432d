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

/// The configured exporter: sampling, payload policy and the batch being filled.
pub(crate) struct Tracer {
    config: OtelConfig,
    queue: Arc<Queue>,
    pub(crate) stats: Arc<OtelStats>,
}

/// The spans waiting for export: one buffer that settling requests write their spans into
/// (under a lock held for the writing only) and that the exporter takes whole. No per-request
/// buffer, channel message or task wake-up.
struct Queue {
    batch: std::sync::Mutex<Batch>,
    /// Spans the batch may hold; more are dropped and counted.
    max_spans: u64,
    /// Spans that make the exporter send before its tick.
    send_at: u64,
    wake: tokio::sync::Notify,
    /// Flushes asked for (at shutdown), answered once what was queued before is sent.
    flushes: std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// The tracer was replaced or dropped: send what is left and stop.
    closed: std::sync::atomic::AtomicBool,
}

/// The spans waiting, in chunks of [`CHUNK`] bytes: appending never moves what is there (a
/// growing single buffer would copy megabytes while holding the lock), and the lock is held
/// for a copy of one request's bytes.
#[derive(Default)]
struct Batch {
    chunks: Vec<Vec<u8>>,
    spans: u64,
}

/// Bytes per chunk of the batch.
const CHUNK: usize = 64 * 1024;

thread_local! {
    /// Where a request's spans are encoded before they are copied into the batch (reused).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Relaxed);
        self.queue.wake.notify_one();
    }
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
        let queue = Arc::new(Queue {
            batch: std::sync::Mutex::default(),
            max_spans: config.queue_size as u64,
            send_at: (config.batch_size as u64).min(config.queue_size as u64),
            wake: tokio::sync::Notify::new(),
            flushes: std::sync::Mutex::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let resource = encode_resource(&config.service_name);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let exporter = Exporter {
                url: traces_url(config.endpoint.expose()),
                endpoint: Secret::new(traces_url(config.endpoint.expose())),
                headers: config.headers.clone(),
                client: client.clone(),
                timeout: Duration::from_secs(config.timeout_secs),
                flush: Duration::from_millis(config.flush_ms.max(1)),
                stats: stats.clone(),
                queue: queue.clone(),
                head: export_head(&resource),
            };
            handle.spawn(exporter.run());
        }
        Arc::new(Self {
            config: config.clone(),
            queue,
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

    /// Write `n` spans into the batch with `write`; when the batch already holds
    /// `queue_size` spans they are dropped and counted instead.
    fn submit(&self, n: u64, write: impl FnOnce(&mut Vec<u8>)) {
        SCRATCH.with(|scratch| {
            let Ok(mut buf) = scratch.try_borrow_mut() else {
                return;
            };
            buf.clear();
            write(&mut buf);
            let q = &self.queue;
            let mut b = q
                .batch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if b.spans + n > q.max_spans {
                drop(b);
                self.stats.dropped_full.fetch_add(n, Ordering::Relaxed);
                return;
            }
            let comma = usize::from(b.spans > 0);
            match b.chunks.last_mut() {
                Some(c) if c.len() + comma + buf.len() <= c.capacity() => {
                    if comma == 1 {
                        c.push(b',');
                    }
                    c.extend_from_slice(&buf);
                }
                _ => {
                    let mut c = Vec::with_capacity(CHUNK.max(buf.len() + 1));
                    if comma == 1 {
                        c.push(b',');
                    }
                    c.extend_from_slice(&buf);
                    b.chunks.push(c);
                }
            }
            b.spans += n;
            let full = b.spans >= q.send_at;
            drop(b);
            if full {
                q.wake.notify_one();
            }
            // A request with a huge payload attribute does not keep its buffer.
            buf.shrink_to(CHUNK);
        });
    }

    /// Export what is queued now, waiting at most `limit` (at shutdown: the spans of the last
    /// requests are not left behind).
    pub(crate) async fn flush(&self, limit: Duration) {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.queue
            .flushes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(done);
        self.queue.wake.notify_one();
        if tokio::time::timeout(limit, wait).await.is_err() {
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

/// Lowercase hex of `v`'s `digits` low nibbles, appended (trace and span ids).
fn push_hex(out: &mut Vec<u8>, v: u128, digits: u32) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let bytes = v.to_be_bytes();
    for b in &bytes[16 - (digits as usize / 2)..] {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

/// An unsigned number in decimal, appended without the formatting machinery.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

/// A key known to need no escaping (the attribute names are ours), quoted.
fn key_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A JSON string literal (quoted, escaped) appended to `out`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        // Nothing to escape (the usual case: names, ids, models).
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn push_num(out: &mut Vec<u8>, n: impl std::fmt::Display) {
    use std::io::Write;
    let _ = write!(out, "{n}");
}

/// Writes one OTLP JSON `Span` straight into a buffer: the request path builds no tree of
/// values and allocates nothing per attribute (every sampled request writes its spans).
struct SpanWriter<'a> {
    out: &'a mut Vec<u8>,
    attrs: usize,
}

/// The identity and timing of a span to write.
struct SpanHead<'a> {
    trace_id: u128,
    span_id: u64,
    parent: Option<u64>,
    /// `{operation} {model}`, as the GenAI conventions name spans.
    operation: &'a str,
    model: &'a str,
    /// OTLP `SpanKind`: 2 server, 3 client.
    kind: u8,
    start_ns: u64,
    end_ns: u64,
}

impl<'a> SpanWriter<'a> {
    /// Start a span (a `,` first when `out` already holds one).
    fn start(out: &'a mut Vec<u8>, h: &SpanHead<'_>) -> Self {
        if out.last().is_some_and(|b| *b == b'}') {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"traceId\":\"");
        push_hex(out, h.trace_id, 32);
        out.extend_from_slice(b"\",\"spanId\":\"");
        push_hex(out, u128::from(h.span_id), 16);
        if let Some(p) = h.parent {
            out.extend_from_slice(b"\",\"parentSpanId\":\"");
            push_hex(out, u128::from(p), 16);
        }
        out.extend_from_slice(b"\",\"name\":");
        let name_len = h.operation.len() + 1 + h.model.len();
        if name_len < 256 {
            let mut name = [0u8; 256];
            name[..h.operation.len()].copy_from_slice(h.operation.as_bytes());
            name[h.operation.len()] = b' ';
            name[h.operation.len() + 1..name_len].copy_from_slice(h.model.as_bytes());
            json_str(
                out,
                std::str::from_utf8(&name[..name_len]).unwrap_or(h.operation),
            );
        } else {
            json_str(out, &format!("{} {}", h.operation, h.model));
        }
        out.extend_from_slice(b",\"kind\":");
        push_u64(out, u64::from(h.kind));
        out.extend_from_slice(b",\"startTimeUnixNano\":\"");
        push_u64(out, h.start_ns);
        out.extend_from_slice(b"\",\"endTimeUnixNano\":\"");
        push_u64(out, h.end_ns);
        out.extend_from_slice(b"\",\"attributes\":[");
        Self { out, attrs: 0 }
    }

    fn key(&mut self, key: &str) {
        if self.attrs > 0 {
            self.out.push(b',');
        }
        self.attrs += 1;
        self.out.extend_from_slice(b"{\"key\":");
        key_str(self.out, key);
        self.out.extend_from_slice(b",\"value\":{");
    }

    fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(b"\"stringValue\":");
        json_str(self.out, v);
        self.out.extend_from_slice(b"}}");
        self
    }

    /// proto3's JSON mapping writes 64-bit integers as strings.
    fn int(&mut self, key: &str, v: i64) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(b"\"intValue\":\"");
        push_i64(self.out, v);
        self.out.extend_from_slice(b"\"}}");
        self
    }

    fn float(&mut self, key: &str, v: f64) -> &mut Self {
        if v.is_finite() {
            self.key(key);
            self.out.extend_from_slice(b"\"doubleValue\":");
            push_num(self.out, v);
            self.out.extend_from_slice(b"}}");
        }
        self
    }

    fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(if v {
            b"\"boolValue\":true}}"
        } else {
            b"\"boolValue\":false}}"
        });
        self
    }

    fn strs(&mut self, key: &str, items: &[&str]) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(b"\"arrayValue\":{\"values\":[");
        for (i, s) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(b"{\"stringValue\":");
            json_str(self.out, s);
            self.out.push(b'}');
        }
        self.out.extend_from_slice(b"]}}}");
        self
    }

    /// Close the span with status OK, or ERROR and its message.
    fn end(self, error: Option<&str>) {
        self.out.extend_from_slice(b"],\"status\":");
        match error {
            Some(m) => {
                self.out.extend_from_slice(b"{\"code\":2,\"message\":");
                json_str(self.out, m);
                self.out.extend_from_slice(b"}}");
            }
            None => self.out.extend_from_slice(b"{\"code\":1}}"),
        }
    }
}

/// The resource's attributes as a JSON array, encoded once per exporter.
fn encode_resource(service: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = SpanWriter {
        out: &mut out,
        attrs: 0,
    };
    w.out.push(b'[');
    w.str("service.name", service)
        .str("service.version", env!("CARGO_PKG_VERSION"))
        .str("telemetry.sdk.name", "relais")
        .str("telemetry.sdk.language", "rust");
    out.push(b']');
    out
}

/// The start of an OTLP `ExportTraceServiceRequest` (JSON), up to its list of spans.
fn export_head(resource: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + resource.len());
    out.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":{\"attributes\":");
    out.extend_from_slice(resource);
    out.extend_from_slice(b"},\"scopeSpans\":[{\"scope\":{\"name\":\"relais\",\"version\":");
    json_str(&mut out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(b"},\"spans\":[");
    out
}

/// What closes the export body after its spans.
const EXPORT_TAIL: &[u8] = b"]}]}]}";

struct Exporter {
    url: String,
    /// The configured endpoint, to redact from error messages.
    endpoint: Secret,
    headers: std::collections::BTreeMap<String, Secret>,
    client: relais_providers::HttpClient,
    timeout: Duration,
    flush: Duration,
    stats: Arc<OtelStats>,
    queue: Arc<Queue>,
    /// The export body's head (resource and scope).
    head: Vec<u8>,
}

impl Exporter {
    /// Every `flush_ms` (sooner when `batch_size` spans wait or a flush is asked for), take the
    /// batch and send it; stop once the tracer is gone and the batch is sent.
    async fn run(self) {
        let q = self.queue.clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.flush) => {}
                () = q.wake.notified() => {}
            }
            let closed = q.closed.load(Ordering::Relaxed);
            let flushes = std::mem::take(
                &mut *q
                    .flushes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            let (chunks, spans) = {
                let mut b = q
                    .batch
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (
                    std::mem::take(&mut b.chunks),
                    std::mem::replace(&mut b.spans, 0),
                )
            };
            if spans > 0 {
                let size: usize = chunks.iter().map(Vec::len).sum();
                let mut body = Vec::with_capacity(self.head.len() + size + EXPORT_TAIL.len());
                body.extend_from_slice(&self.head);
                for c in &chunks {
                    body.extend_from_slice(c);
                }
                drop(chunks);
                body.extend_from_slice(EXPORT_TAIL);
                self.send(body, spans).await;
            }
            for done in flushes {
                let _ = done.send(());
            }
            if closed {
                return;
            }
        }
    }

    /// One export, tried up to three times (0.2 s, then 0.8 s apart) when the failure may pass.
    async fn send(&self, body: Vec<u8>, count: u64) {
        let body = bytes::Bytes::from(body);
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
                    self.stats.exported.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                Ok(r) => {
                    let s = r.status().as_u16();
                    tracing::debug!(status = s, "OTLP export refused");
                    s == 429 || s >= 500
                }
                Err(e) => {
                    // reqwest's message names the URL, which may carry a token.
                    tracing::debug!(error = %relais_core::redact(&e.to_string(), &[&self.endpoint]), "OTLP export failed");
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
            .fetch_add(count, Ordering::Relaxed);
        tracing::warn!(
            spans = count,
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
    input_messages_with(req, str::to_owned)
}

/// The request's messages as an attribute, each text passed through `scrub` first.
fn input_messages_with(req: &ChatRequest, scrub: impl Fn(&str) -> String) -> String {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let parts: Vec<Value> = m
                .content
                .iter()
                .map(|p| match p {
                    relais_core::ContentPart::Text(t) => {
                        json!({ "type": "text", "content": redacted(&scrub(t)) })
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
fn provider_name(d: &Deployment) -> &str {
    match d.provider.kind() {
        "azure" => "azure.ai.openai",
        "bedrock" => "aws.bedrock",
        "gemini" => "gcp.gemini",
        "vertex" => "gcp.vertex_ai",
        "local" => "relais.local",
        "anthropic" => "anthropic",
        _ => match d.vendor.as_str() {
            "mistral" => "mistral_ai",
            "xai" => "x_ai",
            v => v,
        },
    }
}

/// What the client asked for, as the request span reports it.
#[derive(Default)]
struct Asked {
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stream: Option<bool>,
}

/// A sampled request's trace while it runs: what its spans will say.
pub(crate) struct RequestTrace {
    tracer: Arc<Tracer>,
    pub(crate) ctx: TraceContext,
    /// `chat` or `embeddings`.
    operation: &'static str,
    /// The model (route) the client asked for.
    requested: String,
    asked: Asked,
    input: Option<String>,
    /// Answer text, when payloads are recorded.
    output: Option<String>,
    /// The guardrails of a guarded request: every value they find is left out of recorded
    /// payloads (`[EMAIL]`).
    scrub: Option<Arc<crate::guardrails::Guardrails>>,
    response_id: Option<String>,
    response_model: Option<String>,
    /// Finish reasons (one per choice; the first four kept), and how many.
    finish: [&'static str; 4],
    finishes: usize,
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

fn tokens(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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
        let payloads = tracer.config.payloads;
        let asked = chat.map_or_else(Asked::default, |req| Asked {
            max_tokens: req.max_output_tokens,
            temperature: req.temperature,
            top_p: req.top_p,
            stream: Some(req.stream),
        });
        let trace = Box::new(Self {
            tracer: tracer.clone(),
            ctx,
            operation,
            requested: requested.to_owned(),
            asked,
            input: chat.filter(|_| payloads).map(input_messages),
            output: payloads.then(String::new),
            scrub: None,
            response_id: None,
            response_model: None,
            finish: [""; 4],
            finishes: 0,
        });
        (ctx, Some(trace))
    }

    /// The request is guarded: recorded payloads keep no value the guardrails find.
    pub(crate) fn scrub_with(
        &mut self,
        guards: Arc<crate::guardrails::Guardrails>,
        req: &ChatRequest,
    ) {
        if self.input.is_some() {
            self.input = Some(input_messages_with(req, |t| guards.scrub(t)));
        }
        self.scrub = Some(guards);
    }

    /// Whether the answer's text is recorded (`payloads = true`): the request must then reach
    /// the client as decoded events, not as the same-dialect pass-through's vendor chunks.
    pub(crate) fn records_output(&self) -> bool {
        self.output.is_some()
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
            StreamEvent::Finish(f) => {
                if let Some(slot) = self.finish.get_mut(self.finishes) {
                    *slot = finish_name(*f);
                    self.finishes += 1;
                }
            }
            StreamEvent::TextDelta(t) => {
                if let Some(out) = &mut self.output {
                    if out.len() < MAX_PAYLOAD {
                        out.push_str(t);
                    }
                }
            }
            _ => {}
        }
    }

    /// The attributes every attempt span has.
    fn attempt_attrs(&self, w: &mut SpanWriter<'_>, d: &Deployment, n: u32) {
        w.str("gen_ai.operation.name", self.operation)
            .str("gen_ai.provider.name", provider_name(d))
            .str("gen_ai.request.model", &d.model)
            .str("relais.deployment", &d.id)
            .str("relais.vendor", &d.vendor)
            .int("relais.attempt", i64::from(n));
    }

    /// Queue the request's spans (failed attempts, the serving attempt, the request).
    pub(crate) fn finish(self: Box<Self>, end: &TraceEnd<'_>) {
        let n = end.failed.len() as u64 + u64::from(end.serving.is_some()) + 1;
        let tracer = self.tracer.clone();
        tracer.submit(n, |out| self.write_spans(out, end));
    }

    /// Write the request's spans into `out`.
    fn write_spans(&self, out: &mut Vec<u8>, end: &TraceEnd<'_>) {
        let now = now_ns();
        let tokio_now = tokio::time::Instant::now();
        let at = |t: tokio::time::Instant| ns_before(now, tokio_now.saturating_duration_since(t));
        let ctx = self.ctx;
        let mut n: u32 = 0;
        for f in end.failed {
            let d = end
                .live
                .entries
                .get(&f.route)
                .and_then(|e| e.route.deployments.get(f.deployment));
            let start_ns = at(f.started);
            let mut w = SpanWriter::start(
                out,
                &SpanHead {
                    trace_id: ctx.trace_id,
                    span_id: ctx.attempt_span_id(n),
                    parent: Some(ctx.span_id),
                    operation: self.operation,
                    model: d.map_or("", |d| d.model.as_str()),
                    kind: 3,
                    start_ns,
                    end_ns: start_ns
                        .saturating_add(u64::try_from(f.elapsed.as_nanos()).unwrap_or(0)),
                },
            );
            if let Some(d) = d {
                self.attempt_attrs(&mut w, d, n);
            }
            w.str("error.type", f.error.kind.as_str());
            if let Some(s) = f.error.upstream_status {
                w.int("http.response.status_code", i64::from(s));
            }
            w.end(Some(&f.error.message));
            n += 1;
        }
        let request_start = ns_before(now, end.elapsed);
        let response_model = match (&self.response_model, end.serving) {
            (Some(m), _) => Some(m.as_str()),
            (None, Some((d, _))) => Some(d.model.as_str()),
            (None, None) => None,
        };
        if let Some((d, started)) = end.serving {
            let mut w = SpanWriter::start(
                out,
                &SpanHead {
                    trace_id: ctx.trace_id,
                    span_id: ctx.attempt_span_id(n),
                    parent: Some(ctx.span_id),
                    operation: self.operation,
                    model: &d.model,
                    kind: 3,
                    start_ns: at(started).max(request_start),
                    end_ns: now,
                },
            );
            self.attempt_attrs(&mut w, d, n);
            self.response_attrs(&mut w, response_model, end.usage);
            if let Some((class, _)) = end.error {
                w.str("error.type", class);
            }
            w.end(end.error.map(|(_, m)| m));
        }
        let mut w = SpanWriter::start(
            out,
            &SpanHead {
                trace_id: ctx.trace_id,
                span_id: ctx.span_id,
                parent: ctx.parent_span_id,
                operation: self.operation,
                model: &self.requested,
                kind: 2,
                start_ns: request_start,
                end_ns: now,
            },
        );
        w.str("gen_ai.operation.name", self.operation)
            .str("gen_ai.request.model", &self.requested)
            .int("http.response.status_code", i64::from(end.status))
            .int(
                "relais.attempts",
                i64::from(n) + i64::from(end.serving.is_some()),
            );
        if let Some(v) = self.asked.max_tokens {
            w.int("gen_ai.request.max_tokens", i64::from(v));
        }
        if let Some(v) = self.asked.temperature {
            w.float("gen_ai.request.temperature", v);
        }
        if let Some(v) = self.asked.top_p {
            w.float("gen_ai.request.top_p", v);
        }
        if let Some(v) = self.asked.stream {
            w.bool("relais.stream", v);
        }
        // Usage, response model and finish reasons are on the serving attempt's span only: a
        // backend summing `gen_ai.usage.*` over spans counts each token once.
        if let Some((d, _)) = end.serving {
            w.str("relais.deployment", &d.id);
        }
        if end.cost_pusd > 0 {
            w.float("relais.cost_usd", end.cost_pusd as f64 / 1e12);
        }
        if let Some(input) = &self.input {
            w.str("gen_ai.input.messages", input);
        }
        if let (Some(out), Some(_)) = (&self.output, end.serving) {
            let out = match &self.scrub {
                Some(g) => redacted(&g.scrub(out)),
                None => redacted(out),
            };
            let text = json!([{ "role": "assistant",
                "parts": [{ "type": "text", "content": out }],
                "finish_reason": if self.finishes > 0 { self.finish[0] } else { "stop" } }]);
            w.str("gen_ai.output.messages", &text.to_string());
        }
        if let Some((class, _)) = end.error {
            w.str("error.type", class);
        }
        w.end(end.error.map(|(_, m)| m));
    }

    /// What the vendor answered: model, id, usage, finish reasons.
    fn response_attrs(&self, w: &mut SpanWriter<'_>, model: Option<&str>, usage: Option<&Usage>) {
        if let Some(m) = model {
            w.str("gen_ai.response.model", m);
        }
        if let Some(id) = &self.response_id {
            w.str("gen_ai.response.id", id);
        }
        if let Some(u) = usage {
            w.int("gen_ai.usage.input_tokens", tokens(u.input_tokens))
                .int("gen_ai.usage.output_tokens", tokens(u.output_tokens));
        }
        if self.finishes > 0 {
            w.strs(
                "gen_ai.response.finish_reasons",
                &self.finish[..self.finishes],
            );
        }
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

    #[test]
    fn spans_encode_as_otlp_json() {
        let mut spans = Vec::new();
        for i in 1..=3u64 {
            let mut w = SpanWriter::start(
                &mut spans,
                &SpanHead {
                    trace_id: 1,
                    span_id: i,
                    parent: (i > 1).then_some(3),
                    operation: "chat",
                    model: "\"m\"\n\u{e9}",
                    kind: 3,
                    start_ns: 10,
                    end_ns: 20,
                },
            );
            w.str("a", "x")
                .int("b", -5)
                .strs("c", &["stop", "length"])
                .float("d", 0.25)
                .float("nan", f64::NAN)
                .bool("e", true);
            w.end((i == 2).then_some("boom"));
        }
        let mut body = export_head(&encode_resource("relais"));
        body.extend_from_slice(&spans);
        body.extend_from_slice(EXPORT_TAIL);
        let body: Value = serde_json::from_slice(&body).unwrap();
        let rs = &body["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "relais"
        );
        assert_eq!(
            rs["resource"]["attributes"][3]["key"],
            "telemetry.sdk.language"
        );
        let all = rs["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(all.len(), 3);
        assert!(all[0].get("parentSpanId").is_none());
        let s = &all[1];
        assert_eq!(s["traceId"], "00000000000000000000000000000001");
        assert_eq!(s["spanId"], "0000000000000002");
        assert_eq!(s["parentSpanId"], "0000000000000003");
        assert_eq!(s["name"], "chat \"m\"\n\u{e9}");
        assert_eq!(s["kind"], 3);
        assert_eq!(s["startTimeUnixNano"], "10");
        assert_eq!(s["endTimeUnixNano"], "20");
        let attrs = s["attributes"].as_array().unwrap();
        assert_eq!(attrs.len(), 5, "a NaN is left out: {attrs:?}");
        assert_eq!(attrs[1]["value"]["intValue"], "-5");
        assert_eq!(
            attrs[2]["value"]["arrayValue"]["values"][1]["stringValue"],
            "length"
        );
        assert_eq!(attrs[3]["value"]["doubleValue"], 0.25);
        assert_eq!(attrs[4]["value"]["boolValue"], true);
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(s["status"]["message"], "boom");
        assert_eq!(all[0]["status"]["code"], 1);
        assert!(all[0]["status"].get("message").is_none());
    }

    #[test]
    fn numbers_and_ids_are_written_exactly() {
        let mut out = Vec::new();
        for n in [0u64, 7, 10, 1_764_912_000_000_000_000, u64::MAX] {
            out.clear();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for n in [i64::MIN, -1, 0, 42, i64::MAX] {
            out.clear();
            push_i64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for (v, digits) in [
            (0u128, 16),
            (0xab, 16),
            (u128::from(u64::MAX), 16),
            (u128::MAX - 5, 32),
            (1, 32),
        ] {
            out.clear();
            push_hex(&mut out, v, digits);
            let want = format!("{v:0width$x}", width = digits as usize);
            assert_eq!(
                String::from_utf8_lossy(&out),
                want[want.len() - digits as usize..]
            );
        }
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
