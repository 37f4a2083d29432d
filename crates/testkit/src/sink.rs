//! A loopback HTTP receiver for what relais sends out on its own: OTLP/HTTP trace exports
//! (`POST /v1/traces`, JSON) and alert webhooks. It records every POST (path, headers, JSON
//! body) and can be told to fail the next few with a status, to test retries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use serde_json::Value;
use tokio::net::TcpListener;

/// One POST the sink received.
#[derive(Debug, Clone)]
pub struct Posted {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    /// The body as JSON (`Value::Null` when it was not JSON).
    pub body: Value,
}

#[derive(Default)]
struct SinkState {
    posts: Mutex<Vec<Posted>>,
    fail_next: AtomicU32,
    fail_status: AtomicU32,
}

/// A running sink on 127.0.0.1.
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<SinkState>,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(
    State(s): State<Arc<SinkState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let posted = Posted {
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let failing = s
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        // A failed delivery is recorded too: the test sees the retry.
        s.posts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Posted {
                path: format!("{} (failed)", posted.path),
                ..posted
            });
        let code = u16::try_from(s.fail_status.load(Ordering::SeqCst)).unwrap_or(503);
        return StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    }
    s.posts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(posted);
    StatusCode::OK
}

impl Sink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let addr = listener.local_addr().expect("sink address");
        let state = Arc::new(SinkState::default());
        let app = Router::new()
            .fallback(post(receive))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer the next `n` POSTs with `status` (recorded with ` (failed)` after the path).
    pub fn fail_next(&self, n: u32, status: u16) {
        self.state
            .fail_status
            .store(u32::from(status), Ordering::SeqCst);
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every POST so far, failed ones included.
    pub fn posts(&self) -> Vec<Posted> {
        self.state
            .posts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn clear(&self) {
        self.state
            .posts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Wait (up to `limit`) until `done` holds for the accepted POSTs; returns them either way.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&[Posted]) -> bool) -> Vec<Posted> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let posts: Vec<Posted> = self
                .posts()
                .into_iter()
                .filter(|p| !p.path.ends_with(" (failed)"))
                .collect();
            if done(&posts) || tokio::time::Instant::now() >= deadline {
                return posts;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The spans of every accepted OTLP/HTTP JSON export, flattened.
    pub fn spans(&self) -> Vec<OtlpSpan> {
        otlp_spans(&self.posts())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One span of an OTLP/HTTP JSON export, with its resource's and its own attributes as JSON
/// (`stringValue` as a string, `intValue` as a number, `arrayValue` as an array, ...).
#[derive(Debug, Clone)]
pub struct OtlpSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: i64,
    pub start_ns: u128,
    pub end_ns: u128,
    pub attributes: BTreeMap<String, Value>,
    pub resource: BTreeMap<String, Value>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i64,
    pub status_message: String,
}

impl OtlpSpan {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    pub fn int_attr(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_i64)
    }
}

/// An OTLP `AnyValue` as plain JSON.
fn any_value(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        return s.clone();
    }
    if let Some(i) = v.get("intValue") {
        // proto3 JSON writes int64 as a string; accept both.
        return match i {
            Value::String(s) => s.parse::<i64>().map_or(Value::Null, Value::from),
            other => other.clone(),
        };
    }
    if let Some(d) = v.get("doubleValue") {
        return d.clone();
    }
    if let Some(b) = v.get("boolValue") {
        return b.clone();
    }
    if let Some(a) = v.get("arrayValue") {
        return Value::Array(
            a.get("values")
                .and_then(Value::as_array)
                .map(|vs| vs.iter().map(any_value).collect())
                .unwrap_or_default(),
        );
    }
    Value::Null
}

fn attributes(list: Option<&Value>) -> BTreeMap<String, Value> {
    list.and_then(Value::as_array)
        .map(|attrs| {
            attrs
                .iter()
                .filter_map(|a| {
                    let key = a.get("key")?.as_str()?.to_owned();
                    Some((key, any_value(a.get("value")?)))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn nanos(v: Option<&Value>) -> u128 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().map_or(0, u128::from),
        _ => 0,
    }
}

/// Flatten the spans of OTLP/HTTP JSON exports (`/v1/traces` POSTs; others are skipped).
pub fn otlp_spans(posts: &[Posted]) -> Vec<OtlpSpan> {
    let mut out = Vec::new();
    for p in posts.iter().filter(|p| p.path == "/v1/traces") {
        let Some(resource_spans) = p.body.get("resourceSpans").and_then(Value::as_array) else {
            continue;
        };
        for rs in resource_spans {
            let resource = attributes(rs.get("resource").and_then(|r| r.get("attributes")));
            for ss in rs
                .get("scopeSpans")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for s in ss
                    .get("spans")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let text = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                    out.push(OtlpSpan {
                        trace_id: text("traceId"),
                        span_id: text("spanId"),
                        parent_span_id: text("parentSpanId"),
                        name: text("name"),
                        kind: s.get("kind").and_then(Value::as_i64).unwrap_or(0),
                        start_ns: nanos(s.get("startTimeUnixNano")),
                        end_ns: nanos(s.get("endTimeUnixNano")),
                        attributes: attributes(s.get("attributes")),
                        resource: resource.clone(),
                        status_code: s
                            .get("status")
                            .and_then(|st| st.get("code"))
                            .and_then(Value::as_i64)
                            .unwrap_or(0),
                        status_message: s
                            .get("status")
                            .and_then(|st| st.get("message"))
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    });
                }
            }
        }
    }
    out
}
