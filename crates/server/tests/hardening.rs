//! Issue 17: relais tried as an attacker would, as a hostile upstream and as a hostile or slow
//! client. Each test is named after the defect it guards.
//!
//! The whole binary logs at TRACE into a buffer, so every test can also prove that nothing it
//! provoked wrote a vendor secret to relais's log.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, logs, sse_data_payloads as sse_payloads};
use relais_testkit::{Fault, MockServer, vertex_test_key};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A vLLM-style upstream token: nothing about it looks like a key.
const SECRET: &str = "relais-upstream-plain-secret";
/// The first access token the mock's `/token` issues (Vertex AI's credential on the wire).
const VERTEX_TOKEN: &str = "ya29.mock-1";

// ---- one gateway in front of every provider kind ----

/// Provider kinds, with the route that reaches each.
const KINDS: [&str; 6] = [
    "openai",
    "azure",
    "anthropic",
    "gemini",
    "vertex",
    "bedrock",
];

fn server_section(extra: &str) -> String {
    let body = if extra.contains("max_body_bytes") {
        ""
    } else {
        "max_body_bytes = 65536\n"
    };
    format!("[server]\nlisten = \"127.0.0.1:0\"\n{body}shutdown_grace_secs = 2\n{extra}\n")
}

/// A gateway whose routes `openai`, `azure`, `anthropic`, `gemini`, `vertex` and `bedrock` each
/// reach the mock through that provider kind, every credential being [`SECRET`].
async fn every_kind(server: &str) -> Gateway {
    common::capture_logs(tracing::Level::TRACE);
    let mock = MockServer::start(Some(SECRET)).await;
    let key_file = std::env::temp_dir().join(common::unique("vertex-key"));
    std::fs::write(&key_file, vertex_test_key(&format!("{}/token", mock.url()))).unwrap();
    let text = format!(
        r#"{server}
[providers.openai]
type = "openai_compat"
base_url = "@MOCK@/v1"
api_key = "{SECRET}"

[providers.azure]
type = "azure"
endpoint = "@MOCK@"
api_key = "{SECRET}"
api_version = "2024-10-21"

[providers.anthropic]
type = "anthropic"
base_url = "@MOCK@"
api_key = "{SECRET}"

[providers.gemini]
type = "gemini"
base_url = "@MOCK@"
api_key = "{SECRET}"

[providers.vertex]
type = "vertex"
base_url = "@MOCK@"
location = "us-central1"
credentials_file = "{key}"

[providers.bedrock]
type = "bedrock"
region = "us-west-2"
base_url = "@MOCK@"
access_key_id = "AKIDRELAISMOCK"
secret_access_key = "{SECRET}"

[routes.openai]
deployments = [{{ provider = "openai", model = "gpt-4o-mini" }}]
[routes.azure]
deployments = [{{ provider = "azure", model = "gpt-4o" }}]
[routes.anthropic]
deployments = [{{ provider = "anthropic", model = "claude-sonnet-4-5" }}]
[routes.gemini]
deployments = [{{ provider = "gemini", model = "gemini-2.5-flash" }}]
[routes.vertex]
deployments = [{{ provider = "vertex", model = "gemini-2.5-flash" }}]
[routes.bedrock]
deployments = [{{ provider = "bedrock", model = "amazon.nova-lite-v1:0" }}]
"#,
        key = key_file.display(),
        server = server_section(server),
    )
    .replace("@MOCK@", &mock.url());
    Gateway::start_text(mock, &text).await
}

/// The two client APIs, by path.
const DIALECTS: [&str; 2] = ["/v1/chat/completions", "/v1/messages"];

fn ask(dialect: &str, route: &str, stream: bool) -> Value {
    let mut body = json!({
        "model": route,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hello there"}],
    });
    if stream {
        body["stream"] = json!(true);
        if dialect == "/v1/chat/completions" {
            body["stream_options"] = json!({"include_usage": true});
        }
    }
    body
}

/// The error a dialect rendered: OpenAI's `{"error": {...}}` or Anthropic's
/// `{"type": "error", "error": {...}}`, as a JSON body or as the last event of a stream.
fn error_in(dialect: &str, text: &str, streamed: bool) -> Value {
    let v: Value = if streamed {
        let frames = sse_payloads(text);
        frames
            .into_iter()
            .rev()
            .find(|f| f.get("error").is_some())
            .unwrap_or_else(|| panic!("no error event in {text}"))
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    if dialect == "/v1/messages" {
        assert_eq!(v["type"], "error", "{text}");
    }
    let e = v["error"].clone();
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    e
}

// ---- defect 1: redirects ----

/// A listener that counts every connection made to it.
async fn sink(addr: &str) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind(addr).await.unwrap();
    let url = format!("http://{}/internal", l.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\ninternal-secret")
                .await;
        }
    });
    (url, hits)
}

#[tokio::test]
async fn issue17_upstream_redirects_are_never_followed() {
    let gw = every_kind("").await;
    // Another port on this host, and another loopback address standing in for an internal
    // service (tests send traffic to loopback only).
    let (other_port, hits_port) = sink("127.0.0.1:0").await;
    let (internal, hits_internal) = sink("127.0.0.2:0").await;
    for status in [301u16, 302, 307, 308] {
        for location in [&other_port, &internal] {
            for kind in KINDS {
                for dialect in DIALECTS {
                    gw.mock.clear_requests();
                    gw.mock.push_fault(Fault {
                        status: Some(status),
                        headers: BTreeMap::from([("location".to_owned(), location.clone())]),
                        body: Some(String::new()),
                        ..Fault::default()
                    });
                    let resp = gw.post(dialect, &ask(dialect, kind, false)).await;
                    let code = resp.status().as_u16();
                    let text = resp.text().await.unwrap();
                    assert_eq!(code, 502, "{status} {kind} {dialect}: {text}");
                    let e = error_in(dialect, &text, false);
                    assert!(
                        e["message"].as_str().unwrap().contains("redirect"),
                        "{status} {kind} {dialect}: {text}"
                    );
                    assert!(!text.contains("internal"), "{text}");
                    if dialect == "/v1/chat/completions" {
                        assert_eq!(e["code"], "upstream_redirect", "{text}");
                    }
                    // The vendor got the request once; nothing was re-sent anywhere.
                    let vendor_calls = gw
                        .mock
                        .requests()
                        .iter()
                        .filter(|r| r.path != "/token")
                        .count();
                    assert_eq!(vendor_calls, 1, "{status} {kind} {dialect}");
                }
            }
        }
    }
    assert_eq!(
        hits_port.load(Ordering::SeqCst),
        0,
        "the other port was called"
    );
    assert_eq!(
        hits_internal.load(Ordering::SeqCst),
        0,
        "the internal address was called"
    );
}

// ---- defect 2: secrets in vendor error fields ----

/// A vendor error body that echoes `s` in every field its format has.
fn echoing_error(kind: &str, s: &str) -> String {
    match kind {
        "openai" | "azure" => json!({"error": {
            "message": format!("Incorrect API key provided: {s}"), "type": s, "param": s, "code": s,
            "details": {"key": s}
        }}),
        "anthropic" => json!({"type": "error", "error": {"type": s, "message": format!("invalid x-api-key {s}")}}),
        "gemini" | "vertex" => json!({"error": {
            "code": 400, "message": format!("API key not valid: {s}"), "status": s,
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": s,
                         "domain": s, "metadata": {"key": s}}]
        }}),
        _ => json!({"message": format!("The security token {s} is invalid"), "__type": s}),
    }
    .to_string()
}

/// The same, as the vendor's in-stream error payload.
fn echoing_stream_error(kind: &str, s: &str) -> String {
    match kind {
        "openai" | "azure" => json!({"error": {"message": format!("failed for {s}"), "type": s, "param": s, "code": s}}),
        "anthropic" => json!({"type": "error", "error": {"type": s, "message": format!("overloaded {s}")}}),
        "gemini" | "vertex" => json!({"error": {"code": 500, "message": format!("internal {s}"), "status": s}}),
        _ => json!({"message": format!("internal failure {s}")}),
    }
    .to_string()
}

#[tokio::test]
async fn issue17_vendor_secrets_never_reach_a_client_or_a_log() {
    let gw = every_kind("").await;
    for kind in KINDS {
        let echoed = if kind == "vertex" {
            VERTEX_TOKEN
        } else {
            SECRET
        };
        for dialect in DIALECTS {
            // Refused outright: a JSON error body.
            let mut headers = BTreeMap::new();
            if kind == "bedrock" {
                headers.insert("x-amzn-errortype".to_owned(), echoed.to_owned());
            }
            gw.mock.push_fault(Fault {
                status: Some(400),
                body: Some(echoing_error(kind, echoed)),
                headers,
                ..Fault::default()
            });
            let resp = gw.post(dialect, &ask(dialect, kind, false)).await;
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert!(status >= 400, "{kind} {dialect}: {text}");
            error_in(dialect, &text, false);
            assert!(!text.contains(echoed), "{kind} {dialect}: {text}");

            // Failed mid-stream, after the first events went out.
            gw.mock.push_fault(Fault {
                stream_error: Some(echoing_stream_error(kind, echoed)),
                ..Fault::default()
            });
            let resp = gw.post(dialect, &ask(dialect, kind, true)).await;
            assert_eq!(resp.status(), 200, "{kind} {dialect}");
            let text = resp.text().await.unwrap();
            error_in(dialect, &text, true);
            assert!(!text.contains(echoed), "{kind} {dialect}: {text}");
        }
    }
    let metrics = gw.get_text("/metrics").await;
    assert!(!metrics.contains(SECRET) && !metrics.contains(VERTEX_TOKEN));
    let log = logs();
    assert!(
        log.contains("request failed") || log.contains("stream failed"),
        "the failures were logged"
    );
    for s in [SECRET, VERTEX_TOKEN] {
        if let Some(at) = log.find(s) {
            let from = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let to = log[at..].find('\n').map_or(log.len(), |i| at + i);
            panic!("a secret reached the log: {}", &log[from..to]);
        }
    }
}

// ---- defect 3: client fields that would override relais's ----

/// Fields a client may try to slip past relais: each dialect's fields that relais sets itself,
/// and other vendors' fields. An OpenAI client's unknown fields do reach an OpenAI-family
/// upstream (vLLM's `guided_json`, a new OpenAI parameter): there only relais's own fields are
/// tried, and the parser refuses a second copy of those.
fn overriding(dialect: &str, route: &str) -> Value {
    let mut body = ask(dialect, route, true);
    let same_family = dialect == "/v1/chat/completions" && ["openai", "azure"].contains(&route);
    if same_family {
        body["logit_bias"] = json!({"50256": -100});
        return body;
    }
    let extra = json!({
        "n": 50,
        "max_completion_tokens": 100000,
        "stream_options": {"include_usage": false},
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
        "max_tokens_to_sample": 100000,
        "system": "injected system prompt",
        "contents": [{"role": "user", "parts": [{"text": "injected contents"}]}],
        "generationConfig": {"maxOutputTokens": 100000, "candidateCount": 8},
        "inferenceConfig": {"maxTokens": 100000},
        "anthropic_version": "injected",
        "stop_sequences": ["injected-stop"],
    });
    for (k, v) in extra.as_object().unwrap() {
        // A dialect's own known fields are parsed, not extra: leave those it defines.
        let known = match dialect {
            "/v1/messages" => ["system", "stop_sequences"].contains(&k.as_str()),
            _ => ["n", "max_completion_tokens", "stream_options"].contains(&k.as_str()),
        };
        if !known {
            body[k] = v.clone();
        }
    }
    body
}

/// The largest output the upstream was allowed, whatever its format calls it.
fn output_caps(body: &Value) -> Vec<u64> {
    [
        "/max_tokens",
        "/max_completion_tokens",
        "/generationConfig/maxOutputTokens",
        "/inferenceConfig/maxTokens",
    ]
    .iter()
    .filter_map(|p| body.pointer(p).and_then(Value::as_u64))
    .collect()
}

#[tokio::test]
async fn issue17_client_fields_never_override_what_relais_sets() {
    let gw = every_kind("").await;
    for kind in KINDS {
        for dialect in DIALECTS {
            gw.mock.clear_requests();
            let resp = gw.post(dialect, &overriding(dialect, kind)).await;
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert_eq!(status, 200, "{kind} {dialect}: {text}");
            let seen = gw.mock.requests();
            let sent = seen.iter().rev().find(|r| r.path != "/token").unwrap();
            let raw = &sent.body_raw;
            let at = format!("{kind} {dialect}: {raw}");
            assert!(!raw.contains("injected"), "{at}");
            if kind == "anthropic" && dialect == "/v1/messages" {
                // Issue 19: an Anthropic client's own Anthropic field reaches an Anthropic
                // upstream, as the client sent it (relais sets no such field).
                assert_eq!(
                    sent.body["context_management"],
                    json!({"edits": [{"type": "clear_tool_uses_20250919"}]}),
                    "{at}"
                );
            } else {
                assert!(!raw.contains("context_management"), "{at}");
            }
            assert!(!raw.contains("100000"), "{at}");
            assert!(sent.body.get("n").is_none(), "{at}");
            assert!(!raw.contains("candidateCount"), "{at}");
            if dialect == "/v1/chat/completions" && ["openai", "azure"].contains(&kind) {
                assert_eq!(sent.body["logit_bias"]["50256"], -100, "{at}");
            }
            // Each field relais sets is written once: a second copy would be the client's.
            for field in [
                "\"stream_options\"",
                "\"stream\"",
                "\"model\"",
                "\"messages\"",
                "\"max_tokens\"",
                "\"maxOutputTokens\"",
            ] {
                assert!(raw.matches(field).count() <= 1, "{field} twice: {at}");
            }
            assert_eq!(output_caps(&sent.body), vec![20], "{at}");
            if let Some(opts) = sent.body.get("stream_options") {
                assert_eq!(opts["include_usage"], true, "{at}");
            }
            // Metering cannot be switched off: the client still gets real usage.
            let frames = sse_payloads(&text);
            let output_tokens = frames
                .iter()
                .filter_map(|f| {
                    f.pointer("/usage/completion_tokens")
                        .or_else(|| f.pointer("/usage/output_tokens"))
                        .and_then(Value::as_u64)
                })
                .max()
                .unwrap_or(0);
            assert!(
                output_tokens > 0,
                "no usage reached the client: {kind} {dialect}: {text}"
            );
        }
    }
}

// ---- defect 4: client connections bounded in time and number ----

const TIMEOUTS: &str =
    "header_read_timeout_secs = 1\nbody_read_timeout_secs = 1\nidle_timeout_secs = 1";

/// Read until the peer closes; `None` if it did not within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn addr(gw: &Gateway) -> String {
    gw.url.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn issue17_silent_and_slowloris_clients_are_cut() {
    let gw = every_kind(TIMEOUTS).await;
    // No byte at all.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr(&gw)).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent connection stayed open"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A head sent a byte every 200 ms: lively, but never whole in time.
    let mut slow = TcpStream::connect(addr(&gw)).await.unwrap();
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut cut = false;
    for b in head {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    if !cut {
        cut = closed_within(&mut slow, Duration::from_millis(500))
            .await
            .is_some();
    }
    assert!(cut, "a slowloris head kept its connection");
    assert!(started.elapsed() < Duration::from_secs(4), "cut too late");
}

#[tokio::test]
async fn issue17_half_sent_body_gets_408_in_the_client_dialect() {
    let gw = every_kind(TIMEOUTS).await;
    for (path, anthropic) in [("/v1/chat/completions", false), ("/v1/messages", true)] {
        let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{{\"model\": \"openai\""
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let got = closed_within(&mut s, Duration::from_secs(5))
            .await
            .expect("the connection stayed open");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let v: Value = serde_json::from_str(body).unwrap();
        if anthropic {
            assert_eq!(v["type"], "error", "{body}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
        } else {
            assert_eq!(v["error"]["code"], "request_timeout", "{body}");
        }
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

#[tokio::test]
async fn issue17_idle_keep_alive_is_closed_but_a_long_stream_is_not() {
    let gw = every_kind(TIMEOUTS).await;
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(5))
            .await
            .is_some(),
        "an idle keep-alive connection stayed open"
    );
    assert!(idle_from.elapsed() >= Duration::from_millis(900));

    // A stream that takes longer than every timeout above is served whole: a response in
    // progress is not idleness.
    gw.mock.push_fault(Fault {
        chunk_delay_ms: Some(400),
        ..Fault::default()
    });
    let started = Instant::now();
    let resp = gw
        .post(
            "/v1/chat/completions",
            &ask("/v1/chat/completions", "openai", true),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        started.elapsed() > Duration::from_millis(1500),
        "the stream was not slow"
    );
    assert_eq!(sse_payloads(&text).last().unwrap(), "[DONE]", "{text}");
}

#[tokio::test]
async fn issue17_connection_cap_holds_and_silent_connections_are_reaped() {
    let gw = every_kind(&format!("{TIMEOUTS}\nmax_connections = 4")).await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(addr(&gw)).await.unwrap());
    }
    // Four are served (and cut after the header timeout), the rest wait in the backlog and
    // are taken as slots free up; a real request gets its turn.
    let started = Instant::now();
    let resp = Gateway::client()
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "served before any slot was free: the cap did not hold"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(silent);
}

#[tokio::test]
async fn issue17_http2_cleartext_only_when_configured() {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    for (enabled, speaks_h2) in [("", false), ("http2_cleartext = true", true)] {
        let gw = every_kind(enabled).await;
        let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
        s.write_all(preface).await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        // An HTTP/2 server answers the preface with a SETTINGS frame (type 4); HTTP/1.1 refuses
        // it with 400 or closes.
        let got_settings = n >= 9 && buf[3] == 4;
        assert_eq!(got_settings, speaks_h2, "{enabled:?}: {:?}", &buf[..n]);
    }
    let _ = std::io::stdout().flush();
}

// ---- defect 6: /metrics answers anyone ----

#[tokio::test]
async fn issue17_metrics_can_require_a_credential() {
    let open = every_kind("").await;
    let resp = Gateway::client()
        .get(format!("{}/metrics", open.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "without metrics_key /metrics stays open"
    );

    let gw = every_kind("metrics_key = \"metrics-key-0123456789\"").await;
    for presented in [
        None,
        Some("wrong-key-0123456789"),
        Some("metrics-key-012345678"),
    ] {
        let mut req = Gateway::client().get(format!("{}/metrics", gw.url));
        if let Some(k) = presented {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{presented:?}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains("relais_requests"), "{text}");
    }
    let resp = Gateway::client()
        .get(format!("{}/metrics", gw.url))
        .bearer_auth("metrics-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("# TYPE"));
}

// ---- defect 5: memory ----

#[tokio::test]
async fn issue17_large_bodies_beyond_the_decoding_budget_are_turned_away_with_retry_after() {
    let gw = every_kind("max_body_bytes = 10485760\nmax_decoding_bytes = 16777216").await;
    let len = 9 * 1024 * 1024;
    // A 9 MiB body on its way (head and a first piece sent, then nothing) holds 9 of the
    // budget's 16 MiB: no second large body fits beside it.
    let mut holding = Vec::new();
    for _ in 0..1 {
        let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n{{\"model\": \"openai\", \"messages\": ["
        );
        s.write_all(head.as_bytes()).await.unwrap();
        holding.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third large body is turned away at once, in the client's dialect, with retry-after,
    // and the client reads the answer (its body was drained, not cut).
    let big = json!({
        "model": "openai", "max_tokens": 5,
        "messages": vec![json!({"role": "user", "content": "hi"}); 300_000],
    })
    .to_string();
    assert!(big.len() > 8 * 1024 * 1024 && big.len() < 10 * 1024 * 1024);
    for path in DIALECTS {
        let resp = Gateway::client()
            .post(format!("{}{path}", gw.url))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        // Anthropic's dialect says "overloaded" with its own 529, which its SDKs retry.
        let overloaded = if path == "/v1/messages" { 529 } else { 503 };
        assert_eq!(resp.status(), overloaded, "{path}");
        assert_eq!(resp.headers()["retry-after"], "1", "{path}");
        let text = resp.text().await.unwrap();
        let e = error_in(path, &text, false);
        assert!(e["message"].as_str().unwrap().contains("decoded"), "{text}");
    }
    // Small requests are not held back by large ones.
    let resp = gw
        .post(
            "/v1/chat/completions",
            &ask("/v1/chat/completions", "openai", false),
        )
        .await;
    assert_eq!(resp.status(), 200);
    // Once the held bodies are gone the budget is back.
    drop(holding);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
