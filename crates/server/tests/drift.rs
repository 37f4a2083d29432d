//! Issue 18: the ends of a request that had drifted apart between chat and embeddings, each now
//! the same on both paths.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a failed test"
)]

mod common;

use common::Gateway;
use relais_testkit::Fault;
use serde_json::json;

fn embed() -> serde_json::Value {
    json!({"model": "emb", "input": ["hello"]})
}

#[tokio::test]
async fn issue18_embeddings_answers_carry_the_routing_headers() {
    let gw = Gateway::start("").await;
    let resp = gw.post("/v1/embeddings", &embed()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-relais-deployment"],
        "up/text-embedding-3-small"
    );
    assert_eq!(resp.headers()["x-relais-attempts"], "1");
    // A failed first attempt counts.
    gw.mock.push_fault(Fault {
        status: Some(500),
        ..Fault::default()
    });
    let resp = gw.post("/v1/embeddings", &embed()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-relais-attempts"], "2");
}

/// The `_count` of the duration histogram of `route`'s series, summed over its deployments.
fn duration_count(metrics: &str, route: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("relais_request_duration_seconds_count")
                && l.contains(&format!("route=\"{route}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn issue18_an_exhausted_embeddings_request_records_its_duration() {
    let gw = Gateway::start("").await;
    let before = duration_count(&gw.get_text("/metrics").await, "emb");
    gw.mock.push_fault(Fault {
        status: Some(500),
        times: Some(0),
        ..Fault::default()
    });
    let resp = gw.post("/v1/embeddings", &embed()).await;
    assert_eq!(resp.status(), 500);
    let after = duration_count(&gw.get_text("/metrics").await, "emb");
    assert_eq!(after, before + 1, "the exhausted request has no duration");
}

#[tokio::test]
async fn issue18_embeddings_refusals_are_logged_like_chat_ones() {
    common::capture_logs(tracing::Level::DEBUG);
    let gw = Gateway::start("").await;
    for (path, id) in [
        ("/v1/embeddings", "drift-refusal-embeddings"),
        ("/v1/chat/completions", "drift-refusal-chat"),
    ] {
        let resp = Gateway::client()
            .post(format!("{}{path}", gw.url))
            .header("content-type", "application/json")
            .header("x-request-id", id)
            .body("{\"model\": \"no-such-route\", \"input\": [\"x\"], \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let log = common::logs();
        assert!(
            log.lines()
                .any(|l| l.contains("request refused") && l.contains(id)),
            "{path}: no refusal logged for {id}"
        );
    }
}

/// A client that goes away before a JSON answer (here while the upstream is still thinking)
/// is settled like a stream's: one ledger row, status 499, class `canceled`. Before the
/// Settlement, a JSON request dropped mid-way left no row at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_a_json_request_the_client_abandons_is_settled_as_canceled() {
    let (section, dump) = common::store("sqlite").await;
    let gw = Gateway::start(&format!("[admin]\nkey = \"{}\"\n{section}", common::ADMIN)).await;
    gw.mock.push_fault(Fault {
        delay_ms: Some(3_000),
        ..Fault::default()
    });
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let sent = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-request-id", "drift-abandoned-1")
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    assert!(sent.is_err(), "the client gave up first");
    // The server notices the closed connection and drops the request's future.
    let mut rows = serde_json::Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (status, body) =
            common::admin(&gw, "GET", "/admin/ledger/drift-abandoned-1", None).await;
        if status == 200 && body["rows"].as_array().is_some_and(|r| !r.is_empty()) {
            rows = body;
            break;
        }
    }
    let rows = rows["rows"]
        .as_array()
        .expect("the abandoned request has ledger rows");
    let request = rows.iter().find(|r| r["attempt"] == 0).unwrap();
    assert_eq!(request["status"], 499, "{rows:?}");
    assert_eq!(request["error_class"], "canceled", "{rows:?}");
    assert_eq!(rows.len(), 1, "{rows:?}");
    dump(true);
}
