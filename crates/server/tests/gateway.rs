//! End to end over loopback: client → relais → fault-injecting mock vendor.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a failed test"
)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{AZURE_KEY, Gateway, UPSTREAM_KEY, error_of, sse_payloads};
use relais_testkit::{Fault, MockServer};
use serde_json::{Value, json};

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi there"}]})
}

#[tokio::test]
async fn chat_non_streaming_with_headers_and_forwarded_request() {
    let gw = Gateway::start("").await;
    let resp = gw
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
                "max_tokens": 50, "temperature": 0.2, "seed": 7, "stop": ["END"],
                "logit_bias": {"50256": -100}, "frequency_penalty": 0.5, "x_vendor_flag": {"a": 1}
            }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(rid.len(), 32);
    let overhead: f64 = resp.headers()["x-relais-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(overhead >= 0.0);
    assert_eq!(resp.headers()["x-relais-deployment"], "up/gpt-4o-mini");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from mock! You said: hi there"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // The mock counts a token per word plus one per message: (2 + 1) + (2 + 1).
    assert_eq!(body["usage"]["prompt_tokens"], 6);
    assert_eq!(body["usage"]["completion_tokens"], 7);
    assert_eq!(body["usage"]["total_tokens"], 13);

    let seen = gw.mock.requests();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(up.path, "/v1/chat/completions");
    assert_eq!(
        up.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    assert_eq!(up.body["model"], "gpt-4o-mini");
    assert_eq!(up.body["max_tokens"], 50);
    assert_eq!(up.body["seed"], 7);
    assert_eq!(up.body["stop"], json!(["END"]));
    // Unknown fields pass through untouched.
    assert_eq!(up.body["logit_bias"], json!({"50256": -100}));
    assert_eq!(up.body["frequency_penalty"], 0.5);
    assert_eq!(up.body["x_vendor_flag"], json!({"a": 1}));
}

#[tokio::test]
async fn client_request_id_is_echoed() {
    let gw = Gateway::start("").await;
    let resp = Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-request-id", "my-trace-123")
        .json(&hello("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "my-trace-123");
}

#[tokio::test]
async fn streaming_decided_by_body_not_accept_header() {
    let gw = Gateway::start("").await;
    let resp = Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("accept", "application/json")
        .json(&json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "stream please"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    let frames = sse_payloads(&text);
    assert_eq!(frames.last().unwrap(), "[DONE]");
    assert_eq!(frames[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello from mock! You said: stream please");
    let usage = &frames[frames.len() - 2]["usage"];
    assert_eq!(usage["completion_tokens"], 7);
    // relais asks the upstream for usage even when the client does not, to meter it.
    assert_eq!(
        gw.mock.requests()[0].body["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn parallel_tool_calls_stream_and_non_stream() {
    let gw = Gateway::start("").await;
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}
    ]);
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "weather and time?"}], "tools": tools});
    let v: Value = gw
        .post("/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"mock\"}");
    assert_eq!(calls[1]["function"]["name"], "get_time");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let text = gw
        .post("/v1/chat/completions", &sbody)
        .await
        .text()
        .await
        .unwrap();
    let frames = sse_payloads(&text);
    let mut args = [String::new(), String::new()];
    let mut names = vec![];
    for f in &frames {
        if let Some(tcs) = f["choices"][0]["delta"]["tool_calls"].as_array() {
            for tc in tcs {
                let i = tc["index"].as_u64().unwrap() as usize;
                if let Some(n) = tc["function"]["name"].as_str() {
                    names.push(n.to_owned());
                    assert!(tc["id"].as_str().is_some());
                }
                args[i].push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
    }
    assert_eq!(names, ["get_weather", "get_time"]);
    assert_eq!(args[0], "{\"city\":\"mock\"}");
    assert_eq!(args[1], "{\"tz\":\"mock\"}");

    // The tool result goes back in history and reaches the upstream as a tool message.
    let follow = json!({"model": "gpt-4o-mini", "tools": tools, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    ]});
    let v: Value = gw
        .post("/v1/chat/completions", &follow)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Tool result received: sunny"
    );
    let up = gw.mock.requests().last().unwrap().body.clone();
    assert_eq!(up["messages"][1]["tool_calls"][0]["id"], "call_1");
    assert_eq!(up["messages"][1]["content"], Value::Null);
    assert_eq!(up["messages"][2]["tool_call_id"], "call_1");
}

#[tokio::test]
async fn json_mode_images_and_tool_choice_are_forwarded() {
    let gw = Gateway::start("").await;
    let body = json!({"model": "gpt-4o-mini",
    "response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": true, "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}},
    "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
    ]}]});
    let v: Value = gw
        .post("/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"n": 1}));
    let up = gw.mock.requests()[0].body.clone();
    assert_eq!(up["response_format"]["json_schema"]["strict"], true);
    assert_eq!(
        up["messages"][0]["content"][1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgo="
    );
    assert_eq!(
        up["messages"][0]["content"][1]["image_url"]["detail"],
        "low"
    );
}

#[tokio::test]
async fn fails_over_on_500_429_and_closed_connection() {
    // Five failures in a row on the primary are the point here, not its ejection.
    let gw = Gateway::start("[routes.failover.breaker]\nconsecutive_failures = 0\n").await;
    // Streams fail over too, as long as nothing was sent yet.
    gw.mock.push_fault(Fault {
        model: Some("primary".into()),
        status: Some(502),
        ..Fault::default()
    });
    let mut body = hello("failover");
    body["stream"] = json!(true);
    let text = gw
        .post("/v1/chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    for fault in [
        Fault {
            status: Some(500),
            ..Fault::default()
        },
        Fault {
            status: Some(503),
            ..Fault::default()
        },
        Fault {
            close_before_headers: true,
            ..Fault::default()
        },
        Fault {
            malformed: true,
            ..Fault::default()
        },
        // Last: the 429's retry-after cools the primary down for the rest of the test.
        Fault {
            status: Some(429),
            retry_after: Some("3".into()),
            ..Fault::default()
        },
    ] {
        gw.mock.clear_requests();
        gw.mock.push_fault(Fault {
            model: Some("primary".into()),
            ..fault.clone()
        });
        let resp = gw.post("/v1/chat/completions", &hello("failover")).await;
        assert_eq!(resp.status(), 200, "fault {fault:?}");
        assert_eq!(resp.headers()["x-relais-deployment"], "backup/secondary");
        assert_eq!(resp.headers()["x-relais-attempts"], "2");
        let models: Vec<String> = gw
            .mock
            .requests()
            .iter()
            .map(|r| r.body["model"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(models, ["primary", "secondary"], "fault {fault:?}");
    }
    // The primary cools down after its 429: the next request goes straight to the backup.
    gw.mock.clear_requests();
    let resp = gw.post("/v1/chat/completions", &hello("failover")).await;
    assert_eq!(resp.headers()["x-relais-attempts"], "1");
    assert_eq!(resp.headers()["x-relais-deployment"], "backup/secondary");
    let metrics = gw.get_text("/metrics").await;
    assert!(metrics.contains(r#"relais_failed_attempts_total{route="failover",deployment="up/primary",provider="up",class="server"} 2"#), "{metrics}");
    for class in ["rate_limited", "overloaded", "connect", "protocol"] {
        assert!(
            metrics.contains(&format!("class=\"{class}\"}} 1")),
            "{class}: {metrics}"
        );
    }
}

#[tokio::test]
async fn client_errors_are_not_failed_over_and_keep_upstream_message() {
    let gw = Gateway::start("").await;
    gw.mock.push_fault(Fault {
        model: Some("primary".into()),
        status: Some(400),
        body: Some(r#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#.into()),
        ..Fault::default()
    });
    let e = error_of(
        gw.post("/v1/chat/completions", &hello("failover")).await,
        400,
    )
    .await;
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(
        e["message"],
        "This model's maximum context length is 8192 tokens."
    );
    assert_eq!(e["upstream_status"], 400);
    assert_eq!(gw.mock.requests().len(), 1);
}

#[tokio::test]
async fn every_deployment_failing_maps_by_class_with_retry_after() {
    let gw = Gateway::start("").await;
    let every = |fault: Fault| Fault {
        times: Some(0),
        ..fault
    };
    gw.mock.push_fault(every(Fault {
        status: Some(500),
        ..Fault::default()
    }));
    error_of(
        gw.post("/v1/chat/completions", &hello("failover")).await,
        500,
    )
    .await;
    // Both deployments, then one retry (attempts default to deployments + 1).
    assert_eq!(gw.mock.requests().len(), 3);
    gw.mock.clear_faults();

    gw.mock.push_fault(every(Fault {
        close_before_headers: true,
        ..Fault::default()
    }));
    let e = error_of(
        gw.post("/v1/chat/completions", &hello("failover")).await,
        502,
    )
    .await;
    assert_eq!(e["code"], "upstream_unreachable");
    gw.mock.clear_faults();

    gw.mock.push_fault(every(Fault {
        malformed: true,
        ..Fault::default()
    }));
    let e = error_of(
        gw.post("/v1/chat/completions", &hello("gpt-4o-mini")).await,
        502,
    )
    .await;
    assert_eq!(e["code"], "upstream_protocol_error");
    gw.mock.clear_faults();

    gw.mock.push_fault(every(Fault {
        status: Some(429),
        retry_after: Some("7".into()),
        ..Fault::default()
    }));
    let resp = gw.post("/v1/chat/completions", &hello("failover")).await;
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.headers()["x-relais-error-class"], "rate_limited");
    let e = error_of(resp, 429).await;
    assert_eq!(e["type"], "rate_limit_error");
    // Both deployments now cool down for 7 s: the next request is refused by relais itself,
    // with the time left, and no vendor is called.
    gw.mock.clear_requests();
    let resp = gw.post("/v1/chat/completions", &hello("failover")).await;
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((6..=7).contains(&wait), "retry-after {wait}");
    error_of(resp, 429).await;
    assert!(gw.mock.requests().is_empty());
}

#[tokio::test]
async fn unreachable_upstream_is_a_connect_error() {
    // A port nothing listens on: bind one, note it, drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(&format!(
        "[providers.dead]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n\n[routes.dead-first]\ndeployments = [{{ provider = \"dead\", model = \"x\" }}, {{ provider = \"up\", model = \"y\" }}]\n[routes.dead-only]\ndeployments = [{{ provider = \"dead\", model = \"x\" }}]\n"
    ))
    .await;
    let resp = gw.post("/v1/chat/completions", &hello("dead-first")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-relais-deployment"], "up/y");
    let e = error_of(
        gw.post("/v1/chat/completions", &hello("dead-only")).await,
        502,
    )
    .await;
    assert_eq!(e["code"], "upstream_unreachable");
}

#[tokio::test]
async fn upstream_auth_failure_never_echoes_the_vendor_key() {
    let gw = Gateway::start(
        "[providers.wrongkey]\ntype = \"openai_compat\"\nbase_url = \"MOCK/v1\"\napi_key = \"sk-wrong-key-abcdef0123456789\"\n[routes.wrong]\ndeployments = [{ provider = \"wrongkey\", model = \"m\" }]\n",
    )
    .await;
    let resp = gw.post("/v1/chat/completions", &hello("wrong")).await;
    let text = resp.text().await.unwrap();
    assert!(!text.contains("sk-wrong-key-abcdef0123456789"), "{text}");
    assert!(!text.contains("abcdef0123456789"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[REDACTED]")
    );
    assert_eq!(v["error"]["upstream_status"], 401);
}

#[tokio::test]
async fn stream_cut_mid_way_ends_with_an_error_event_not_a_clean_end() {
    let gw = Gateway::start("").await;
    gw.mock.push_fault(Fault {
        model: Some("primary".into()),
        cut_after_chunks: Some(4),
        ..Fault::default()
    });
    let mut body = hello("failover");
    body["stream"] = json!(true);
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let frames = sse_payloads(&text);
    assert_ne!(frames.last().unwrap(), "[DONE]", "{text}");
    let last = frames.last().unwrap();
    assert!(last["error"]["message"].as_str().is_some(), "{text}");
    let content: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello from mock! ");
    // No retry after the first byte: the backup was never asked.
    assert_eq!(gw.mock.requests().len(), 1);
}

#[tokio::test]
async fn slow_drip_and_chunk_delays_are_tolerated() {
    let gw = Gateway::start("").await;
    gw.mock.push_fault(Fault {
        drip_bytes: Some(16),
        chunk_delay_ms: Some(2),
        ..Fault::default()
    });
    let v: Value = gw
        .post("/v1/chat/completions", &hello("gpt-4o-mini"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from mock! You said: hi there"
    );
    gw.mock.push_fault(Fault {
        delay_ms: Some(100),
        chunk_delay_ms: Some(20),
        ..Fault::default()
    });
    let mut body = hello("gpt-4o-mini");
    body["stream"] = json!(true);
    let text = gw
        .post("/v1/chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn first_token_timeout_fails_over() {
    let gw = Gateway::start(
        "[routes.impatient]\nfirst_token_timeout_secs = 0.3\ndeployments = [{ provider = \"up\", model = \"slow\" }, { provider = \"backup\", model = \"fast\" }]\n",
    )
    .await;
    gw.mock.push_fault(Fault {
        model: Some("slow".into()),
        delay_ms: Some(3000),
        ..Fault::default()
    });
    let start = std::time::Instant::now();
    let resp = gw.post("/v1/chat/completions", &hello("impatient")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-relais-deployment"], "backup/fast");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn bad_input_gets_openai_errors() {
    let gw = Gateway::start("").await;
    let e = error_of(
        gw.post_raw(
            "/v1/chat/completions",
            "{\"model\": \"gpt-4o-mini\",\n \"messages\": [}",
        )
        .await,
        400,
    )
    .await;
    assert!(
        e["message"].as_str().unwrap().contains("line 2 column"),
        "{e}"
    );
    assert_eq!(e["code"], "invalid_json");

    let e = error_of(gw.post_raw("/v1/chat/completions", r#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}"#).await, 400).await;
    assert_eq!(e["param"], "max_tokens");

    let e = error_of(
        gw.post_raw("/v1/chat/completions", r#"{"model": 5, "messages": []}"#)
            .await,
        400,
    )
    .await;
    assert_eq!(e["param"], "model");

    let e = error_of(
        gw.post("/v1/chat/completions", &hello("no-such-route"))
            .await,
        404,
    )
    .await;
    assert_eq!(e["code"], "model_not_found");

    let e = error_of(gw.post("/v1/chat/completions", &hello("emb")).await, 400).await;
    assert!(e["message"].as_str().unwrap().contains("embeddings"));

    let deep = format!(
        "{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}],\"deep\":{}1{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let resp = Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .body(deep)
        .send()
        .await
        .unwrap();
    let e = error_of(resp, 400).await;
    assert!(
        e["message"].as_str().unwrap().contains("recursion limit"),
        "{e}"
    );

    let big = format!(
        "{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "a".repeat(70_000)
    );
    let resp = Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .body(big)
        .send()
        .await
        .unwrap();
    let e = error_of(resp, 413).await;
    assert_eq!(e["code"], "payload_too_large");

    let e = error_of(
        Gateway::client()
            .get(format!("{}/v1/chat/completions", gw.url))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    assert_eq!(e["code"], "method_not_allowed");
    let e = error_of(gw.post("/v1/nope", &json!({})).await, 404).await;
    assert_eq!(e["code"], "unknown_url");
    let e = error_of(gw.post("/v1/chat/completions", &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "n": 3})).await, 400).await;
    assert_eq!(e["param"], "n");
    // Nothing malformed reached the vendor.
    assert!(gw.mock.requests().is_empty());
    let metrics = gw.get_text("/metrics").await;
    assert!(
        metrics.contains("relais_rejected_total{class=\"bad_request\"}"),
        "{metrics}"
    );
}

/// 413 must come from the declared length, before the body is read: a client that declares a
/// huge body and sends none still gets its answer at once.
#[tokio::test]
async fn oversize_body_refused_before_reading() {
    let gw = Gateway::start("").await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 999999999\r\n\r\n{").unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test]
async fn client_keys_authenticate_and_scope_routes() {
    let gw = Gateway::start(
        "[[auth.keys]]\nname = \"all\"\nkey = \"relais-key-all-0001\"\n\n[[auth.keys]]\nname = \"narrow\"\nkey = \"relais-key-narrow-01\"\nroutes = [\"gpt-4o-mini\"]\n",
    )
    .await;
    let c = Gateway::client();
    let url = format!("{}/v1/chat/completions", gw.url);
    let e = error_of(
        c.post(&url)
            .json(&hello("gpt-4o-mini"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_eq!(e["code"], "invalid_api_key");
    let e = error_of(
        c.post(&url)
            .bearer_auth("relais-key-wrong")
            .json(&hello("gpt-4o-mini"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_eq!(e["message"], "invalid API key");
    assert_eq!(
        c.post(&url)
            .bearer_auth("relais-key-all-0001")
            .json(&hello("failover"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.post(&url)
            .header("api-key", "relais-key-narrow-01")
            .json(&hello("gpt-4o-mini"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let e = error_of(
        c.post(&url)
            .bearer_auth("relais-key-narrow-01")
            .json(&hello("failover"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(e["code"], "model_not_found");
    let models: Value = c
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth("relais-key-narrow-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini"]);
    let models: Value = c
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth("relais-key-all-0001")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 3);
    assert_eq!(models["object"], "list");
    error_of(
        c.get(format!("{}/v1/models", gw.url)).send().await.unwrap(),
        401,
    )
    .await;
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    let gw = Gateway::start("").await;
    let v: Value = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "emb", "input": ["hello world", "bye"], "encoding_format": "float"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    let floats: Vec<f32> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats.len(), 8);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    let v: Value = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "emb", "input": "hello world", "encoding_format": "base64"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let b64 = v["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(b64.len(), 44); // 8 floats = 32 bytes = 44 base64 chars
    // The upstream is always asked for floats, whatever the client asked.
    assert_eq!(gw.mock.requests()[1].body["encoding_format"], "float");
    let e = error_of(
        gw.post(
            "/v1/embeddings",
            &json!({"model": "gpt-4o-mini", "input": "x"}),
        )
        .await,
        400,
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("chat"));
}

#[tokio::test]
async fn azure_both_styles_and_azure_shaped_inbound_path() {
    let mock = MockServer::start(Some(AZURE_KEY)).await;
    let gw = Gateway::start_with(
        mock,
        &format!(
            "[providers.az]\ntype = \"azure\"\nendpoint = \"MOCK\"\napi_key = \"{AZURE_KEY}\"\napi_version = \"2024-10-21\"\n\n[providers.azv1]\ntype = \"azure\"\nendpoint = \"MOCK\"\napi_key = \"{AZURE_KEY}\"\napi_style = \"v1\"\n\n[routes.az-dep]\ndeployments = [{{ provider = \"az\", model = \"my-gpt\" }}]\n[routes.az-v1]\ndeployments = [{{ provider = \"azv1\", model = \"gpt-4o\" }}]\n[routes.az-emb]\nkind = \"embeddings\"\ndeployments = [{{ provider = \"az\", model = \"my-emb\" }}]\n"
        ),
    )
    .await;
    let mut body = hello("az-dep");
    body["max_tokens"] = json!(20);
    let v: Value = gw
        .post("/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from mock! You said: hi there"
    );
    let r = gw.mock.requests()[0].clone();
    assert_eq!(r.path, "/openai/deployments/my-gpt/chat/completions");
    assert_eq!(r.query["api-version"], "2024-10-21");
    assert_eq!(r.headers["api-key"], AZURE_KEY);
    assert!(r.body.get("model").is_none());
    assert_eq!(r.body["max_completion_tokens"], 20);

    // The empty first chunk Azure sends must not reach the client as a broken frame.
    let mut body = hello("az-v1");
    body["stream"] = json!(true);
    let text = gw
        .post("/v1/chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    let frames = sse_payloads(&text);
    assert!(frames.iter().filter(|f| f.is_object()).all(|f| {
        f["choices"].as_array().is_some_and(|c| !c.is_empty()) || f.get("usage").is_some()
    }));
    let content: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello from mock! You said: hi there");
    let r = gw.mock.requests()[1].clone();
    assert_eq!(r.path, "/openai/v1/chat/completions");
    assert_eq!(r.headers["authorization"], format!("Bearer {AZURE_KEY}"));
    assert_eq!(r.body["model"], "gpt-4o");

    let v: Value = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "az-emb", "input": "x y", "encoding_format": "float"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(
        gw.mock.requests()[2].path,
        "/openai/deployments/my-emb/embeddings"
    );

    // Azure-shaped inbound path: the deployment segment names the route.
    let v: Value = gw.post("/openai/deployments/az-dep/chat/completions?api-version=2024-10-21", &json!({"messages": [{"role": "user", "content": "via azure path"}], "model": "ignored"})).await.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from mock! You said: via azure path"
    );
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let gw = Gateway::start("").await;
    let c = Gateway::client();
    assert_eq!(
        c.get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/readyz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.post("/v1/chat/completions", &hello("gpt-4o-mini"))
        .await
        .bytes()
        .await
        .unwrap();
    let mut b = hello("gpt-4o-mini");
    b["stream"] = json!(true);
    gw.post("/v1/chat/completions", &b)
        .await
        .bytes()
        .await
        .unwrap();
    let m = c
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let l = r#"route="gpt-4o-mini",deployment="up/gpt-4o-mini",provider="up""#;
    assert!(
        m.contains(&format!("relais_requests_total{{{l},outcome=\"ok\"}} 2")),
        "{m}"
    );
    assert!(
        m.contains(&format!("relais_tokens_total{{{l},kind=\"output\"}} 14")),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "relais_time_to_first_token_seconds_count{{{l}}} 2"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!("relais_request_duration_seconds_count{{{l}}} 2")),
        "{m}"
    );
    assert!(m.contains("relais_inflight_requests 0"), "{m}");
}

#[tokio::test]
async fn shutdown_drains_streams_then_cuts_at_the_deadline() {
    let mut gw = Gateway::start("").await;
    // 9 frames 150 ms apart: ~1.2 s, inside the 2 s grace.
    gw.mock.push_fault(Fault {
        model: Some("gpt-4o-mini".into()),
        chunk_delay_ms: Some(150),
        ..Fault::default()
    });
    // A stream that would take ~9 s: cut at the deadline.
    gw.mock.push_fault(Fault {
        model: Some("secondary".into()),
        chunk_delay_ms: Some(1000),
        ..Fault::default()
    });
    let mut short = hello("gpt-4o-mini");
    short["stream"] = json!(true);
    let mut long = hello("failover");
    long["stream"] = json!(true);
    gw.mock.push_fault(Fault {
        model: Some("primary".into()),
        status: Some(500),
        ..Fault::default()
    });
    let a = gw.post("/v1/chat/completions", &short).await;
    let b = gw.post("/v1/chat/completions", &long).await;
    gw.stop();
    // New requests are refused while draining.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (ta, tb) = tokio::join!(a.text(), b.text());
    let ta = ta.unwrap();
    assert!(ta.ends_with("data: [DONE]\n\n"), "{ta}");
    let tb = tb.unwrap();
    let last = sse_payloads(&tb).pop().unwrap();
    assert_eq!(last["error"]["code"], "unavailable", "{tb}");
    let served = gw.task.take().unwrap().await.unwrap();
    assert!(served.is_ok());
}
