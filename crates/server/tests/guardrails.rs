//! Issue 22, data guardrails on the request path: per route and class, `block` refuses in the
//! client's dialect naming the class (never the value), `route` keeps the request on
//! deployments that list the class (failing closed when none does), and detections are
//! counted; no value reaches a log or a metric.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failure is a failed test"
)]

mod common;

use common::{Gateway, capture_logs, logs};
use serde_json::{Value, json};

const CONFIG: &str = r#"
[routes.guarded]
deployments = [
  { provider = "up", model = "vendor-model", data_classes = ["public", "email"] },
  { provider = "backup", model = "in-house", data_classes = ["public", "secret", "iban"] },
]
guardrails = { secret = "route", iban = "route", payment_card = "block", us_ssn = "block", email = "allow" }

[routes.nowhere]
deployments = [{ provider = "up", model = "vendor-model", data_classes = ["public"] }]
guardrails = { secret = "route" }
"#;

const CARD: &str = "4111 1111 1111 1111";
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";

async fn ask(gw: &Gateway, path: &str, body: Value) -> (u16, String, String) {
    let resp = gw.post(path, &body).await;
    let status = resp.status().as_u16();
    let deployment = resp
        .headers()
        .get("x-relais-deployment")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, deployment, resp.text().await.unwrap())
}

fn chat(route: &str, text: &str) -> Value {
    json!({"model": route, "max_tokens": 20, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue22_guardrails_block_route_and_count_by_class() {
    capture_logs(tracing::Level::DEBUG);
    let gw = Gateway::start(CONFIG).await;

    // Nothing sensitive: the first deployment, as always.
    let (status, dep, body) = ask(
        &gw,
        "/v1/chat/completions",
        chat("guarded", "Summarise our Q3 plan."),
    )
    .await;
    assert_eq!((status, dep.as_str()), (200, "up/vendor-model"), "{body}");
    // An e-mail address is allowed on this route.
    let (status, dep, _) = ask(
        &gw,
        "/v1/chat/completions",
        chat("guarded", "Write to ops@example.com today."),
    )
    .await;
    assert_eq!((status, dep.as_str()), (200, "up/vendor-model"));

    // A secret, in a tool result of the conversation: only the in-house deployment may see it.
    let body = json!({"model": "guarded", "max_tokens": 20, "messages": [
        {"role": "user", "content": "Check the deploy config."},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "read_file", "arguments": "{\"path\": \"deploy.env\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": format!("AWS_ACCESS_KEY_ID={AWS_KEY}\nREGION=eu-west-3")},
    ]});
    let (status, dep, text) = ask(&gw, "/v1/chat/completions", body).await;
    assert_eq!((status, dep.as_str()), (200, "backup/in-house"), "{text}");
    // An IBAN in the system prompt, through the Anthropic API: routed too.
    let (status, dep, _) = ask(
        &gw,
        "/v1/messages",
        json!({"model": "guarded", "max_tokens": 20, "system": "Customer IBAN: DE89 3704 0044 0532 0130 00",
               "messages": [{"role": "user", "content": "Draft the refund note."}]}),
    )
    .await;
    assert_eq!((status, dep.as_str()), (200, "backup/in-house"));
    // Encoded media (an audio part relais forwards as it came) is not read as text: its base64
    // would look like a secret and reroute the request.
    let audio = "CzBVep/E6Q4zWH2ix+wRNluApcrvFDleg6jN8hc8YYar0PUaP2SJrtP4HUJnjLHW+yBFao+02f4jSG2St9wBJktwlbrfBClOc5i94gcsUXabwOUKL1R5nsPoDTJXfKHG";
    let (status, dep, body) = ask(
        &gw,
        "/v1/chat/completions",
        json!({"model": "guarded", "max_tokens": 20, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Transcribe this."},
            {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}]}),
    )
    .await;
    assert_eq!((status, dep.as_str()), (200, "up/vendor-model"), "{body}");
    // Found classes the policy names join the request's data class: a secret with an e-mail
    // address has nowhere to go (the in-house deployment takes secrets but does not list
    // e-mail; the vendor lists e-mail, not secrets), and nothing goes upstream.
    let upstream = gw.mock.requests().len();
    let (status, _, body) = ask(
        &gw,
        "/v1/chat/completions",
        chat("guarded", &format!("key {AWS_KEY} owner ops@example.com")),
    )
    .await;
    assert_ne!(status, 200, "{body}");
    assert_eq!(gw.mock.requests().len(), upstream);

    // A payment card is blocked: 400 in each dialect, naming the class, never the number.
    let upstream = gw.mock.requests().len();
    let (status, _, openai) = ask(
        &gw,
        "/v1/chat/completions",
        chat("guarded", &format!("Refund card {CARD} please")),
    )
    .await;
    assert_eq!(status, 400, "{openai}");
    let e: Value = serde_json::from_str(&openai).unwrap();
    assert_eq!(e["error"]["code"], "guardrail_blocked", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'payment_card'"),
        "{e}"
    );
    let (status, _, anthropic) = ask(
        &gw,
        "/v1/messages",
        json!({"model": "guarded", "max_tokens": 20, "messages": [{"role": "user", "content": format!("SSN 123-45-6789 and card {CARD}")}]}),
    )
    .await;
    assert_eq!(status, 400, "{anthropic}");
    let e: Value = serde_json::from_str(&anthropic).unwrap();
    assert_eq!(e["type"], "error", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not accept"),
        "{e}"
    );
    assert_eq!(
        gw.mock.requests().len(),
        upstream,
        "nothing blocked went upstream"
    );
    // A number that fails the Luhn check is not a card.
    let (status, dep, _) = ask(
        &gw,
        "/v1/chat/completions",
        chat("guarded", "Ticket 4111 1111 1111 1112 is closed."),
    )
    .await;
    assert_eq!((status, dep.as_str()), (200, "up/vendor-model"));

    // No deployment may take a secret: the request fails closed, nothing goes upstream.
    let upstream = gw.mock.requests().len();
    let (status, _, body) = ask(
        &gw,
        "/v1/chat/completions",
        chat("nowhere", &format!("my key is {AWS_KEY}")),
    )
    .await;
    eprintln!("figures: a secret with nowhere to go: {status} {body}");
    assert_ne!(status, 200, "{body}");
    assert_eq!(gw.mock.requests().len(), upstream);

    let metrics = gw.get_text("/metrics").await;
    for line in [
        "relais_guardrail_detections_total{class=\"secret\",action=\"route\"} 3",
        "relais_guardrail_detections_total{class=\"iban\",action=\"route\"} 1",
        "relais_guardrail_detections_total{class=\"payment_card\",action=\"block\"} 2",
        "relais_guardrail_detections_total{class=\"us_ssn\",action=\"block\"} 1",
        "relais_guardrail_detections_total{class=\"email\",action=\"allow\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let logged = logs();
    for value in [CARD, AWS_KEY, "123-45-6789", "DE89 3704"] {
        assert!(!logged.contains(value), "{value} in the logs");
        assert!(!metrics.contains(value), "{value} in the metrics");
        assert!(
            !openai.contains(value) && !anthropic.contains(value),
            "{value} in an error"
        );
    }
}

#[tokio::test]
async fn issue22_a_guardrail_policy_names_known_classes_and_actions() {
    for (policy, expected) in [
        (
            "guardrails = { passport = \"block\" }",
            "not a class relais detects",
        ),
        ("guardrails = { email = \"hide\" }", "unknown variant"),
        (
            "answer_guardrails = { email = \"route\" }",
            "applies to requests",
        ),
        (
            "answer_guardrails = { passport = \"mask\" }",
            "answer_guardrails.passport",
        ),
        (
            "kind = \"embeddings\"\nguardrails = { email = \"block\" }",
            "only chat routes",
        ),
    ] {
        let text = format!(
            "[providers.up]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[routes.r]\ndeployments = [{{ provider = \"up\", model = \"m\" }}]\n{policy}\n"
        );
        let err = relais_server::config::parse(&text, "t.toml")
            .and_then(|raw| relais_server::config::build(&raw, &text, "t.toml").map(|_| ()))
            .err()
            .unwrap();
        assert!(err.to_string().contains(expected), "{err}");
    }
    let text = "[guardrails]\ncustom = [{ class = \"employee_id\", pattern = \"EMP-[0-9]{6}\" }]\n\n\
        [providers.up]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n\
        [routes.r]\ndeployments = [{ provider = \"up\", model = \"m\" }]\nguardrails = { employee_id = \"block\", email = \"mask\" }\n";
    let raw = relais_server::config::parse(text, "t.toml").unwrap();
    assert!(relais_server::config::build(&raw, text, "t.toml").is_ok());
}

/// A guardrail hook on loopback: blocks requests that mention "forbidden" and answers that say
/// "echo-block", takes 2 s over "slow", answers nonsense over "garbage"; records what it got.
async fn hook() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = axum::Router::new().route(
        "/check",
        post({
            let seen = seen.clone();
            move |body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    seen.lock().unwrap().push(v.clone());
                    let text = v.to_string();
                    if text.contains("slow") {
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    }
                    if text.contains("garbage") {
                        return "this is not json".to_owned();
                    }
                    let block = (v["stage"] == "request" && text.contains("forbidden"))
                        || (v["stage"] == "response" && text.contains("echo-block"));
                    if block {
                        json!({"action": "block", "reason": format!("policy 7 ({})", v["stage"].as_str().unwrap())}).to_string()
                    } else {
                        json!({"action": "allow"}).to_string()
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/check", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue22_a_guardrail_webhook_checks_requests_and_answers_and_fails_as_configured() {
    let (url, seen) = hook().await;
    let config = |on_error: &str| {
        format!(
            "[guardrails.webhook]\nurl = \"{url}\"\ntimeout_ms = 300\non_error = \"{on_error}\"\n\n\
             [routes.hooked]\ndeployments = [{{ provider = \"up\", model = \"m\" }}]\nguardrails = {{}}\n"
        )
    };
    let gw = Gateway::start(&config("closed")).await;

    let (status, _, body) = ask(
        &gw,
        "/v1/chat/completions",
        chat("hooked", "What is our refund policy?"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0]["stage"], "request");
        assert_eq!(seen[0]["route"], "hooked");
        assert_eq!(seen[0]["messages"][0]["text"], "What is our refund policy?");
        assert_eq!(seen[1]["stage"], "response");
        assert!(
            seen[1]["text"].as_str().unwrap().contains("refund policy"),
            "{}",
            seen[1]
        );
    }

    // Refused before anything goes upstream, in the client's dialect, with the hook's reason.
    let upstream = gw.mock.requests().len();
    let (status, _, body) = ask(
        &gw,
        "/v1/messages",
        json!({"model": "hooked", "max_tokens": 20,
        "messages": [{"role": "user", "content": "tell me the forbidden thing"}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        e["error"]["message"],
        "the guardrail hook refused the request: policy 7 (request)"
    );
    assert_eq!(gw.mock.requests().len(), upstream);

    // An answer the hook refuses never reaches the client (the mock echoes the prompt).
    let (status, _, body) = ask(
        &gw,
        "/v1/chat/completions",
        chat("hooked", "repeat echo-block"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("refused the answer: policy 7 (response)"),
        "{body}"
    );
    assert!(!body.contains("You said"), "{body}");
    assert_eq!(gw.mock.requests().len(), upstream + 1);
    // A streamed answer is gathered and checked whole before its first byte: refused as an
    // error response, or streamed complete once allowed.
    for (text, refused) in [("repeat echo-block", true), ("repeat this", false)] {
        let mut body = chat("hooked", text);
        body["stream"] = json!(true);
        let (status, _, body) = ask(&gw, "/v1/chat/completions", body).await;
        if refused {
            assert_eq!(status, 400, "{body}");
            assert!(body.contains("refused the answer"), "{body}");
            assert!(!body.contains("You said"), "{body}");
        } else {
            assert_eq!(status, 200, "{body}");
            assert!(
                body.contains("\"this\"") && body.ends_with("data: [DONE]\n\n"),
                "{body}"
            );
        }
    }
    let answers: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["stage"] == "response")
        .cloned()
        .collect();
    assert!(
        answers
            .iter()
            .any(|v| v["text"].as_str().unwrap_or("").contains("repeat this")),
        "the streamed answer was checked: {answers:?}"
    );

    // A hook that is slow or talks nonsense: refused (closed) ...
    for text in ["slow please", "garbage please"] {
        let (status, _, body) = ask(&gw, "/v1/chat/completions", chat("hooked", text)).await;
        assert_eq!(status, 503, "{text}: {body}");
    }
    let metrics = gw.get_text("/metrics").await;
    for line in [
        "relais_guardrail_hook_checks_total{outcome=\"allowed\"} 6",
        "relais_guardrail_hook_checks_total{outcome=\"blocked\"} 3",
        "relais_guardrail_hook_checks_total{outcome=\"failed\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    // ... or let through (open).
    let open = Gateway::start(&config("open")).await;
    let (status, _, body) = ask(
        &open,
        "/v1/chat/completions",
        chat("hooked", "garbage please"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

const MASKED: &str = r#"
[prices.vendor-model]
input = "1"
output = "2"

[routes.masked]
deployments = [{ provider = "up", model = "vendor-model" }]
guardrails = { email = "mask", iban = "mask", payment_card = "block" }
# What the vendor writes: its phone numbers masked, a US SSN refused (both allowed in requests).
answer_guardrails = { email = "mask", phone = "mask", us_ssn = "block" }

[routes.masked.cache]
ttl_secs = 60
"#;

const EMAIL: &str = "jane.doe@example.com";
const IBAN: &str = "FR1420041010050500013M02606";
const PHONE: &str = "+33 6 12 34 56 78";

/// The text of an answer in either dialect, JSON or SSE (deltas joined), and whether a stream
/// ended with an error event.
fn answer_text(body: &str) -> (String, bool) {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .or_else(|| v["content"][0]["text"].as_str())
            .unwrap_or_default();
        return (text.to_owned(), v.get("error").is_some());
    }
    let mut text = String::new();
    let mut failed = false;
    for p in common::sse_data_payloads(body) {
        failed |= p.get("error").is_some() || p["type"] == "error";
        if let Some(t) = p["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(t) = p["delta"]["text"].as_str() {
            text.push_str(t);
        }
    }
    (text, failed)
}

/// The user text the mock vendor last received.
fn vendor_saw(gw: &Gateway) -> String {
    let r = gw.mock.requests();
    let last = r.last().unwrap();
    last.body["messages"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue22_masked_values_never_reach_the_vendor_and_come_back_in_every_answer() {
    capture_logs(tracing::Level::DEBUG);
    let (section, _dump) = common::store("sqlite").await;
    let gw = Gateway::start(&format!(
        "[admin]\nkey = \"{}\"\n{section}{MASKED}",
        common::ADMIN
    ))
    .await;
    let prompt = format!("Write to {EMAIL} about IBAN {IBAN}, and copy {EMAIL}.");
    let mut bodies = Vec::new();
    // JSON and streams, OpenAI and Anthropic: the vendor sees placeholders, the client its values.
    for (path, stream) in [
        ("/v1/chat/completions", false),
        ("/v1/chat/completions", true),
        ("/v1/messages", false),
        ("/v1/messages", true),
    ] {
        let mut body = chat("masked", &prompt);
        body["stream"] = json!(stream);
        // Each ask is new to the cache: the max_tokens differ.
        body["max_tokens"] = json!(40 + bodies.len());
        let upstream = gw.mock.requests().len();
        let (status, _, text) = ask(&gw, path, body).await;
        assert_eq!(status, 200, "{path} {stream}: {text}");
        assert_eq!(gw.mock.requests().len(), upstream + 1);
        let saw = vendor_saw(&gw);
        assert!(
            saw.contains("Write to [EMAIL_1] about IBAN [IBAN_1], and copy [EMAIL_1]."),
            "{saw}"
        );
        assert!(!saw.contains(EMAIL) && !saw.contains("FR14"), "{saw}");
        let (answer, failed) = answer_text(&text);
        assert!(!failed, "{text}");
        assert_eq!(
            answer,
            format!("Hello from mock! You said: {prompt}"),
            "{path} stream={stream}"
        );
        bodies.push(text);
    }

    // JSON is masked inside its strings: a tool call's arguments stay JSON for the vendor.
    let body = json!({"model": "masked", "max_tokens": 20, "messages": [
        {"role": "user", "content": "Send the statement."},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "send", "arguments": json!({"to": EMAIL, "iban": IBAN}).to_string()}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": json!({"sent_to": EMAIL}).to_string()},
    ]});
    let (status, _, text) = ask(&gw, "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{text}");
    let sent = gw.mock.requests().last().unwrap().body.clone();
    let args: Value = serde_json::from_str(
        sent["messages"][1]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"to": "[EMAIL_1]", "iban": "[IBAN_1]"}));
    let result: Value =
        serde_json::from_str(sent["messages"][2]["content"].as_str().unwrap()).unwrap();
    assert_eq!(result, json!({"sent_to": "[EMAIL_1]"}));
    assert!(!sent.to_string().contains(EMAIL), "{sent}");
    // A part relais forwards as it came (an Anthropic text document) is read too: a card in
    // it is refused before anything goes upstream.
    let upstream = gw.mock.requests().len();
    let (status, _, text) = ask(
        &gw,
        "/v1/messages",
        json!({"model": "masked", "max_tokens": 20, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
             "data": "Refund card 4111 1111 1111 1111 today."}, "citations": {"enabled": true}},
            {"type": "text", "text": "Summarise the document."}]}]}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("'payment_card'") && !text.contains("4111"),
        "{text}"
    );
    assert_eq!(gw.mock.requests().len(), upstream);

    // The cache keys on what the vendor sees: another address, the same masked question, is a
    // hit, answered with this request's own address.
    let other = "max.mustermann@example.de";
    let mut body = chat(
        "masked",
        &format!("Write to {other} about IBAN {IBAN}, and copy {other}."),
    );
    body["max_tokens"] = json!(40);
    let upstream = gw.mock.requests().len();
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.headers()["x-relais-cache"], "hit");
    let (answer, _) = answer_text(&resp.text().await.unwrap());
    assert_eq!(
        answer,
        format!("Hello from mock! You said: Write to {other} about IBAN {IBAN}, and copy {other}.")
    );
    assert_eq!(gw.mock.requests().len(), upstream, "a hit goes nowhere");

    // What the vendor writes: a phone number (allowed in requests) comes back masked, even
    // split across the stream's events (the mock sends one word per event).
    for stream in [false, true] {
        let mut body = chat("masked", &format!("Call me at {PHONE} tomorrow."));
        body["stream"] = json!(stream);
        let (status, _, text) = ask(&gw, "/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            vendor_saw(&gw).contains(PHONE),
            "phones are allowed in requests"
        );
        let (answer, failed) = answer_text(&text);
        assert!(!failed);
        assert_eq!(
            answer,
            "Hello from mock! You said: Call me at [PHONE_REDACTED] tomorrow."
        );
        assert!(!text.contains("12 34"), "{text}");
    }
    // A US SSN in an answer is refused: a 4xx before anything is sent, or the stream's error
    // event in place of the text that carried it.
    let (status, _, text) = ask(
        &gw,
        "/v1/chat/completions",
        chat("masked", "Confirm SSN 123-45-6789 please."),
    )
    .await;
    assert!((400..500).contains(&status), "{status} {text}");
    let e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["error"]["code"], "guardrail_blocked", "{e}");
    assert!(text.contains("'us_ssn'"), "{text}");
    // A long answer: what comes before the value (beyond the 256 bytes held back) streams.
    let long = format!(
        "Confirm {}SSN 123-45-6789 please.",
        "the record ".repeat(30)
    );
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let mut body = chat("masked", &long);
        body["max_tokens"] = json!(100);
        body["stream"] = json!(true);
        let (status, _, text) = ask(&gw, path, body).await;
        assert_eq!(status, 200);
        let (answer, failed) = answer_text(&text);
        assert!(failed, "{path}: the stream must end with an error: {text}");
        assert!(!text.contains("6789"), "{text}");
        assert!(
            answer.starts_with("Hello from mock! You said: Confirm the record"),
            "{answer}"
        );
    }

    // The ledger keeps the classes, never a value; /metrics counts both sides.
    let (status, rows) = common::admin(&gw, "GET", "/admin/requests?route=masked", None).await;
    assert_eq!(status, 200, "{rows}");
    let classes: Vec<&str> = rows["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["data_classes"].as_str())
        .collect();
    assert!(classes.contains(&"email,iban"), "{rows}");
    assert!(classes.contains(&"phone"), "{rows}");
    assert!(classes.contains(&"us_ssn"), "{rows}");
    let metrics = gw.get_text("/metrics").await;
    for line in [
        "relais_guardrail_detections_total{class=\"email\",action=\"mask\"} 6",
        "relais_guardrail_answer_detections_total{class=\"phone\",action=\"mask\"} 2",
        "relais_guardrail_answer_detections_total{class=\"us_ssn\",action=\"block\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let logged = logs();
    let rows = rows.to_string();
    for value in [EMAIL, IBAN, "12 34 56", "123-45-6789", other] {
        assert!(!logged.contains(value), "{value} in the logs");
        assert!(!metrics.contains(value), "{value} in the metrics");
        assert!(!rows.contains(value), "{value} in the ledger");
    }
}

/// A team's policy joins the route's: the stricter action wins, for its keys only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue22_a_team_policy_masks_and_blocks_for_its_keys_only() {
    let (section, _dump) = common::store("sqlite").await;
    let gw = Gateway::start(&format!(
        "[admin]\nkey = \"{}\"\n{section}[routes.open]\ndeployments = [{{ provider = \"up\", model = \"m\" }}]\nguardrails = {{ email = \"allow\" }}\n",
        common::ADMIN
    ))
    .await;
    // An unknown class or action is refused by the admin API, naming the field.
    for bad in [json!({"passport": "block"}), json!({"email": "hide"})] {
        let (status, e) = common::admin(
            &gw,
            "POST",
            "/admin/teams",
            Some(json!({"name": "bad", "guardrails": bad})),
        )
        .await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["param"], "guardrails", "{e}");
    }
    let mut keys = Vec::new();
    for (team, policy) in [
        ("legal", json!({"email": "mask", "iban": "block"})),
        ("sales", Value::Null),
    ] {
        keys.push(common::team_key(&gw, json!({"name": team, "guardrails": policy})).await);
        let (_, teams) = common::admin(&gw, "GET", "/admin/teams", None).await;
        let listed = teams["teams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == team);
        assert_eq!(listed.unwrap()["guardrails"], policy, "{teams}");
    }
    let send = |key: String, text: String| {
        let url = format!("{}/v1/chat/completions", gw.url);
        async move {
            let resp = Gateway::client()
                .post(url)
                .bearer_auth(key)
                .json(&chat("open", &text))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let text = format!("Mail {EMAIL} now");
    let (status, body) = send(keys[0].clone(), text.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(vendor_saw(&gw).contains("Mail [EMAIL_1] now"));
    assert_eq!(
        answer_text(&body).0,
        format!("Hello from mock! You said: {text}")
    );
    let (status, _) = send(keys[0].clone(), format!("IBAN {IBAN}")).await;
    assert_eq!(status, 400);
    // Another team: the route's policy alone (e-mail allowed, IBAN allowed).
    let (status, _) = send(keys[1].clone(), text.clone()).await;
    assert_eq!(status, 200);
    assert!(vendor_saw(&gw).contains(EMAIL));
    let (status, _) = send(keys[1].clone(), format!("IBAN {IBAN}")).await;
    assert_eq!(status, 200);
}

/// Issue 22: hosted tools (Responses API, native upstream) travel only in the client's own
/// body. A route that must rewrite the request (masking) refuses them by name; a cached route
/// lets them go around the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue22_hosted_tools_are_refused_by_name_where_the_request_is_rewritten() {
    let gw = Gateway::start(&format!(
        r#"
[providers.resp]
type = "openai_compat"
base_url = "MOCK/v1"
api_key = "{}"
wire_api = "responses"

[routes.native-masked]
deployments = [{{ provider = "resp", model = "gpt-5" }}]
guardrails = {{ email = "mask" }}

[routes.native-cached]
deployments = [{{ provider = "resp", model = "gpt-5" }}]

[routes.native-cached.cache]
ttl_secs = 60
"#,
        common::UPSTREAM_KEY
    ))
    .await;
    let input = format!("mail {EMAIL} the news");
    let upstream = gw.mock.requests().len();
    let resp = gw
        .post(
            "/v1/responses",
            &json!({"model": "native-masked", "input": input, "tools": [{"type": "web_search"}]}),
        )
        .await;
    let e = common::error_of(resp, 400).await;
    assert_eq!(e["param"], "tools", "{e}");
    assert!(e["message"].as_str().unwrap().contains("web_search"), "{e}");
    assert_eq!(gw.mock.requests().len(), upstream, "nothing went upstream");
    // Without hosted tools: masked for the vendor, restored for the client.
    let resp = gw
        .post(
            "/v1/responses",
            &json!({"model": "native-masked", "input": input}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let r: Value = resp.json().await.unwrap();
    assert!(r.to_string().contains(EMAIL), "{r}");
    assert!(vendor_saw_anything(&gw).contains("[EMAIL_1]"));
    assert!(!vendor_saw_anything(&gw).contains(EMAIL));
    // A cached route: the request goes around the cache, hosted tools and all.
    for _ in 0..2 {
        let resp = gw
            .post(
                "/v1/responses",
                &json!({"model": "native-cached", "input": "news?", "tools": [{"type": "web_search"}]}),
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-relais-cache"], "bypass");
        let sent = gw.mock.requests().last().unwrap().body.clone();
        assert_eq!(sent["tools"], json!([{"type": "web_search"}]), "{sent}");
    }
}

/// The whole body the mock vendor last received, as text.
fn vendor_saw_anything(gw: &Gateway) -> String {
    gw.mock.requests().last().unwrap().body.to_string()
}
