//! Issue 19: what the clients people run send, accepted and carried to every upstream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a failed test"
)]

mod common;

use common::{Gateway, UPSTREAM_KEY};
use serde_json::{Value, json};

/// The last request the mock vendor received, as JSON.
fn last_upstream(gw: &Gateway) -> Value {
    gw.mock
        .requests()
        .last()
        .expect("the upstream was called")
        .body
        .clone()
}

/// The text of a message's content, whether a string or an array of text blocks.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Claude Code, with a model outside its built-in list, sends `role: "system"` inside
/// `messages[]` (beta mid-conversation-system); relais answered 400 `unknown variant system`.
#[tokio::test]
async fn issue19_system_messages_inside_messages_reach_every_upstream() {
    let gw = Gateway::start(&format!(
        "[providers.anth]\ntype = \"anthropic\"\nbase_url = \"MOCK\"\napi_key = \"{UPSTREAM_KEY}\"\n\n\
         [routes.my-claude]\ndeployments = [{{ provider = \"anth\", model = \"claude-sonnet-4-5\" }}]\n"
    ))
    .await;
    let ask = |model: &str| {
        json!({"model": model, "max_tokens": 64, "system": "You are relais's test.", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "From now on, be terse."},
            {"role": "user", "content": "go"}
        ]})
    };
    for stream in [false, true] {
        // An OpenAI-compatible upstream takes system messages anywhere: at its place.
        let mut body = ask("gpt-4o-mini");
        body["stream"] = stream.into();
        let resp = gw.post("/v1/messages", &body).await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        let sent = last_upstream(&gw);
        let roles: Vec<&str> = sent["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "system", "user"], "{sent}");
        assert_eq!(
            text_of(&sent["messages"][2]["content"]),
            "From now on, be terse."
        );
        // An Anthropic upstream without the beta: folded into its system instructions, in order.
        let mut body = ask("my-claude");
        body["stream"] = stream.into();
        let resp = gw.post("/v1/messages", &body).await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        let sent = last_upstream(&gw);
        assert_eq!(
            text_of(&sent["system"]),
            "You are relais's test.From now on, be terse.",
            "{sent}"
        );
        for m in sent["messages"].as_array().unwrap() {
            assert_ne!(m["role"], "system", "{sent}");
        }
    }
    // A system message holds text only; anything else is refused where it is.
    let mut body = ask("gpt-4o-mini");
    body["messages"][1]["content"] =
        json!([{"type": "image", "source": {"type": "url", "url": "http://x"}}]);
    let resp = gw.post("/v1/messages", &body).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["type"], "error", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[1].content[0].type"),
        "{err}"
    );
}

/// On an Anthropic → Anthropic stream, the client's `message_start` carries the prompt's
/// token count the upstream sent in its own, not zeros (Claude Code shows it as context used).
#[tokio::test]
async fn issue19_message_start_carries_the_upstream_input_tokens() {
    let gw = Gateway::start(&format!(
        "[providers.anth]\ntype = \"anthropic\"\nbase_url = \"MOCK\"\napi_key = \"{UPSTREAM_KEY}\"\n\n\
         [routes.my-claude]\ndeployments = [{{ provider = \"anth\", model = \"claude-sonnet-4-5\" }}]\n"
    ))
    .await;
    let body = json!({"model": "my-claude", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "tell me something about the sea, briefly"}]});
    let resp = gw.post("/v1/messages", &body).await;
    assert_eq!(resp.status(), 200);
    let events = common::sse_data_payloads(&resp.text().await.unwrap());
    let start = events
        .iter()
        .find(|e| e["type"] == "message_start")
        .expect("a message_start");
    let input = start["message"]["usage"]["input_tokens"].as_u64().unwrap();
    assert!(input > 0, "{start}");
    // The same count the upstream reported, as the final usage says too.
    let delta = events
        .iter()
        .rfind(|e| e["type"] == "message_delta")
        .expect("a message_delta");
    assert_eq!(
        delta["usage"]["input_tokens"].as_u64(),
        Some(input),
        "{delta}"
    );
}

/// Clients that probe the base URL (`HEAD /`) before their first call get a 200.
#[tokio::test]
async fn issue19_head_on_the_root_answers_200() {
    let gw = Gateway::start("").await;
    let resp = Gateway::client()
        .head(format!("{}/", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = Gateway::client()
        .get(format!("{}/", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// An Anthropic client's `anthropic-beta` header and Anthropic-only fields reach an Anthropic
/// upstream (they were silently dropped), and no other vendor's.
#[tokio::test]
async fn issue19_anthropic_betas_and_fields_reach_anthropic_upstreams_only() {
    let gw = Gateway::start(&format!(
        "[providers.anth]\ntype = \"anthropic\"\nbase_url = \"MOCK\"\napi_key = \"{UPSTREAM_KEY}\"\n\n\
         [routes.my-claude]\ndeployments = [{{ provider = \"anth\", model = \"claude-sonnet-4-5\" }}]\n"
    ))
    .await;
    let beta = "context-management-2025-06-27,mid-conversation-system-2026-04-07";
    let management = json!({"edits": [{"type": "clear_tool_uses_20250919"}]});
    for (route, anthropic) in [("my-claude", true), ("gpt-4o-mini", false)] {
        let body = json!({"model": route, "max_tokens": 32, "context_management": management,
            "messages": [{"role": "user", "content": "hi"}]});
        let resp = Gateway::client()
            .post(format!("{}/v1/messages", gw.url))
            .header("anthropic-beta", beta)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{route}: {}",
            resp.text().await.unwrap()
        );
        let sent = gw.mock.requests().last().unwrap().clone();
        if anthropic {
            assert_eq!(
                sent.headers.get("anthropic-beta").map(String::as_str),
                Some(beta)
            );
            assert_eq!(sent.body["context_management"], management, "{}", sent.body);
        } else {
            assert!(
                !sent.headers.contains_key("anthropic-beta"),
                "{:?}",
                sent.headers
            );
            assert!(
                sent.body.get("context_management").is_none(),
                "{}",
                sent.body
            );
        }
    }
}

/// POST /v1/responses with a client key, as JSON; the status and the body.
async fn respond(gw: &Gateway, key: &str, body: Value) -> (u16, Value) {
    let resp = Gateway::client()
        .post(format!("{}/v1/responses", gw.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn call(gw: &Gateway, method: reqwest::Method, key: &str, path: &str) -> (u16, Value) {
    let resp = Gateway::client()
        .request(method, format!("{}{path}", gw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Responses stored by one instance are found by another on the same store (SQLite file or
/// PostgreSQL): read, continued with `previous_response_id` (the whole conversation reaches the
/// upstream), listed, deleted; never by another key; gone after the retention period.
async fn responses_shared_by_instances(kind: &str) {
    let (section, dump) = common::store(kind).await;
    let extra = format!(
        "[auth]\nkeys = [{{ name = \"a\", key = \"key-a-0123456789\" }}, {{ name = \"b\", key = \"key-b-0123456789\" }}]\n\
         [responses]\nretention_secs = 2\n{section}"
    );
    let one = Gateway::start(&extra).await;
    let two = Gateway::start(&extra).await;
    let (a, b) = ("key-a-0123456789", "key-b-0123456789");
    let (status, first) = respond(
        &one,
        a,
        json!({"model": "gpt-4o-mini", "input": "hi there"}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(
        first["output"][0]["content"][0]["text"],
        "Hello from mock! You said: hi there"
    );
    // The other instance reads it from the store (nothing in its memory).
    let (status, got) = call(
        &two,
        reqwest::Method::GET,
        a,
        &format!("/v1/responses/{id}"),
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, first);
    let (status, e) = call(
        &two,
        reqwest::Method::GET,
        b,
        &format!("/v1/responses/{id}"),
    )
    .await;
    assert_eq!(status, 404, "{e}");
    // ... and continues it: the upstream gets the earlier turn too.
    let (status, second) = respond(
        &two,
        a,
        json!({"model": "gpt-4o-mini", "input": "again", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let sent = two.mock.requests().last().unwrap().body.clone();
    let texts: Vec<String> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| text_of(&m["content"]))
        .collect();
    assert_eq!(
        texts,
        ["hi there", "Hello from mock! You said: hi there", "again"]
    );
    let path = format!(
        "/v1/responses/{}/input_items?order=asc",
        second["id"].as_str().unwrap()
    );
    let (status, items) = call(&one, reqwest::Method::GET, a, &path).await;
    assert_eq!(status, 200, "{items}");
    assert_eq!(items["data"].as_array().unwrap().len(), 3);
    // Deleted on one instance: gone on both.
    let (status, _) = call(
        &two,
        reqwest::Method::DELETE,
        b,
        &format!("/v1/responses/{id}"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, d) = call(
        &two,
        reqwest::Method::DELETE,
        a,
        &format!("/v1/responses/{id}"),
    )
    .await;
    assert_eq!((status, &d["deleted"]), (200, &json!(true)));
    for gw in [&one, &two] {
        let (status, _) = call(gw, reqwest::Method::GET, a, &format!("/v1/responses/{id}")).await;
        assert_eq!(status, 404);
    }
    // Past the retention period nothing is found, in memory or in the store.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let second_id = second["id"].as_str().unwrap();
    for gw in [&one, &two] {
        let (status, _) = call(
            gw,
            reqwest::Method::GET,
            a,
            &format!("/v1/responses/{second_id}"),
        )
        .await;
        assert_eq!(status, 404);
    }
    drop((one, two));
    dump(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue19_stored_responses_are_shared_by_instances_with_sqlite() {
    responses_shared_by_instances("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue19_stored_responses_are_shared_by_instances_with_postgres() {
    responses_shared_by_instances("postgres").await;
}

/// A streamed response: the typed events in order, numbered, and the response kept once the
/// stream ends (another turn continues it at once on the same instance).
#[tokio::test]
async fn issue19_a_streamed_response_is_numbered_and_kept() {
    let gw = Gateway::start("").await;
    let resp = gw
        .post(
            "/v1/responses",
            &json!({"model": "gpt-4o-mini", "input": "hi there", "stream": true}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = common::sse_data_payloads(&resp.text().await.unwrap());
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        kinds[kinds.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i);
    }
    let done = &events.last().unwrap()["response"];
    let id = done["id"].as_str().unwrap();
    let (status, next) = respond(
        &gw,
        "unused",
        json!({"model": "gpt-4o-mini", "input": "and?", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(
        gw.mock.requests().last().unwrap().body["messages"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}
