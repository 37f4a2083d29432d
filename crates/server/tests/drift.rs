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
