//! Plan B end to end (issue 8): shadow copies of live traffic go to backups off the hot path,
//! are billed apart and scored; readiness reads the scores; the dependency index reads the
//! ledger. Against both stores, on loopback, with the fault-injecting mock as every upstream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failure is a failed test"
)]

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN, Gateway, admin, sse_payloads, store};
use relais_testkit::Fault;
use serde_json::{Value, json};

/// Routes for these tests: `shadowed` copies every request to its backup, `plain` has the same
/// primary and no shadow, `single` has one vendor and no backup.
fn routes(plan_b: &str, backup_extra: &str) -> String {
    format!(
        r#"
[admin]
key = "{ADMIN}"

[plan_b]
check_secs = 1
{plan_b}

[plan_b.thresholds]
min_samples = 8

[routes.shadowed]
deployments = [{{ provider = "up", model = "live-model", rpm = 1000 }}, {{ provider = "backup", model = "backup-model", rpm = 1000, tpm = 1000000 {backup_extra} }}]

[routes.shadowed.shadow]
sample_rate = 1.0

[routes.plain]
deployments = [{{ provider = "up", model = "live-model" }}]
"#
    )
}

async fn ask(
    gw: &Gateway,
    model: &str,
    content: &str,
    stream: bool,
    class: Option<&str>,
) -> String {
    let mut rb = Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}));
    if let Some(c) = class {
        rb = rb.header("x-relais-data-class", c);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{model}");
    let body = resp.text().await.unwrap();
    if stream {
        // What the client reads: the text of every chunk, and the finish reason.
        let mut text = String::new();
        let mut finish = String::new();
        for p in sse_payloads(&body) {
            if let Some(t) = p
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                text.push_str(t);
            }
            if let Some(f) = p
                .pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
            {
                finish = f.to_owned();
            }
        }
        format!("{text}|{finish}")
    } else {
        let v: Value = serde_json::from_str(&body).unwrap();
        format!(
            "{}|{}|{}",
            v["choices"][0]["message"]["content"].as_str().unwrap(),
            v["choices"][0]["finish_reason"],
            v["usage"]
        )
    }
}

async fn readiness(gw: &Gateway) -> Value {
    let (status, body) = admin(gw, "GET", "/admin/readiness?route=shadowed", None).await;
    assert_eq!(status, 200, "{body}");
    body["backups"][0].clone()
}

/// Wait until the backup's readiness counts `n` samples.
async fn samples(gw: &Gateway, n: u64) -> Value {
    let t0 = Instant::now();
    loop {
        let r = readiness(gw).await;
        if r["samples"].as_u64() == Some(n) {
            return r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "waiting for {n} samples: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn counter(metrics: &str, state: &str) -> u64 {
    let line = format!("relais_shadow_requests_total{{state=\"{state}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line} in /metrics"))
}

async fn shadow_end_to_end(kind: &str) {
    let (section, dump) = store(kind).await;
    let gw = Gateway::start(&format!("{section}{}", routes("", ""))).await;

    // The client gets the same answers with and without a shadow, streams included.
    for i in 0..10 {
        let prompt = format!("question {i}: tell me about shadows");
        let stream = i % 2 == 1;
        let shadowed = ask(&gw, "shadowed", &prompt, stream, None).await;
        let plain = ask(&gw, "plain", &prompt, stream, None).await;
        assert_eq!(shadowed, plain, "request {i}");
    }
    let r = samples(&gw, 10).await;
    let copies: Vec<_> = gw
        .mock
        .requests()
        .into_iter()
        .filter(|q| q.body["model"] == "backup-model")
        .collect();
    assert_eq!(copies.len(), 10, "every request copied once");
    // The backup answers what the primary answers (the mock's reply depends on the prompt):
    // every axis agrees.
    assert_eq!(r["verdict"], "ready", "{r}");
    assert_eq!(r["success"]["value"], 1.0);
    assert_eq!(r["similarity"]["value"], 1.0);
    assert_eq!(r["finish_agreement"]["value"], 1.0);
    assert_eq!(r["primary"], "up/live-model");
    assert_eq!(r["backup"], "backup/backup-model");
    assert_eq!(r["limits"]["rpm"], 1000);
    assert!(r["limits"]["peak_rpm"].as_u64().unwrap() >= 10, "{r}");
    assert_eq!(r["days"][0]["samples"], 10);

    // Copies are billed apart: live usage counts the 20 client requests only, and each
    // shadowed request has a `shadow` row beside its live rows.
    let (_, usage) = admin(&gw, "GET", "/admin/usage?by=route", None).await;
    let live: u64 = usage["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(live, 20, "{usage}");
    let metrics = gw.get_text("/metrics").await;
    assert_eq!(counter(&metrics, "sampled"), 10);
    assert_eq!(counter(&metrics, "answered"), 10);
    assert_eq!(counter(&metrics, "dropped_queue_full"), 0);

    // The backup starts failing: with the newest samples all errors the verdict flips.
    gw.mock.push_fault(Fault {
        model: Some("backup-model".into()),
        status: Some(500),
        times: Some(0),
        ..Fault::default()
    });
    for i in 0..10 {
        ask(&gw, "shadowed", &format!("after {i}"), i % 2 == 0, None).await;
    }
    let r = samples(&gw, 20).await;
    assert_eq!(r["verdict"], "not_ready", "{r}");
    assert_eq!(r["success"]["value"], 0.5);
    assert!(
        r["reasons"][0]
            .as_str()
            .unwrap()
            .contains("success rate 50.0%"),
        "{r}"
    );
    let metrics = gw.get_text("/metrics").await;
    assert_eq!(counter(&metrics, "failed"), 10);

    // The dependency index: every live request went to vendor `up`.
    let (status, dep) = admin(&gw, "GET", "/admin/dependency", None).await;
    assert_eq!(status, 200, "{dep}");
    assert_eq!(dep["overall"]["hhi_requests"], 10_000, "{dep}");
    assert_eq!(dep["routes"]["shadowed"]["vendors"][0]["vendor"], "up");
    assert_eq!(dep["routes"]["shadowed"]["vendors"][0]["requests"], 20);
    assert_eq!(dep["days"][0]["hhi_requests"], 10_000);
    // ... and with its backup failing, the route alerts; `plain` has no backup at all.
    let t0 = Instant::now();
    loop {
        let m = gw.get_text("/metrics").await;
        if m.contains("relais_dependency_alert{route=\"shadowed\",vendor=\"up\"} 1")
            && m.contains("relais_dependency_alert{route=\"plain\",vendor=\"up\"} 1")
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no dependency alert: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(gw);
    dump(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue8_shadow_traffic_readiness_and_dependency_with_sqlite() {
    shadow_end_to_end("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue8_shadow_traffic_readiness_and_dependency_with_postgres() {
    shadow_end_to_end("postgres").await;
}

/// A full queue drops copies and counts them; the live requests do not wait for the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue8_full_shadow_queue_drops_and_counts() {
    let (section, dump) = store("sqlite").await;
    let gw = Gateway::start(&format!(
        "{section}{}",
        routes("max_concurrent = 1\nqueue = 1", "")
    ))
    .await;
    gw.mock.push_fault(Fault {
        model: Some("backup-model".into()),
        delay_ms: Some(3000),
        times: Some(0),
        ..Fault::default()
    });
    let t0 = Instant::now();
    for i in 0..12 {
        let started = Instant::now();
        ask(&gw, "shadowed", &format!("q{i}"), false, None).await;
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "a live request waited on its shadow: {:?}",
            started.elapsed()
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(3));
    let metrics = gw.get_text("/metrics").await;
    let dropped = counter(&metrics, "dropped_queue_full");
    // One copy runs, one waits in the queue, the dispatcher may hold one: the rest drop.
    assert!(dropped >= 9, "{dropped} dropped");
    assert_eq!(counter(&metrics, "sampled"), 12);
    drop(gw);
    dump(true);
}

/// A request of a data class the backup may not receive is not copied to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue8_shadow_copies_respect_data_class_policy() {
    let (section, dump) = store("sqlite").await;
    let gw = Gateway::start(&format!(
        "{section}{}",
        routes("", ", data_classes = [\"public\"]")
    ))
    .await;
    for i in 0..5 {
        ask(
            &gw,
            "shadowed",
            &format!("secret {i}"),
            i % 2 == 0,
            Some("confidential"),
        )
        .await;
    }
    ask(&gw, "shadowed", "public", false, Some("public")).await;
    samples(&gw, 1).await;
    let backup: Vec<_> = gw
        .mock
        .requests()
        .into_iter()
        .filter(|q| q.body["model"] == "backup-model")
        .collect();
    assert_eq!(backup.len(), 1, "only the public request is copied");
    let metrics = gw.get_text("/metrics").await;
    assert_eq!(counter(&metrics, "skipped_policy"), 5);
    drop(gw);
    dump(true);
}

/// A backup without tool support is not ready for a route whose traffic uses tools, and the
/// tool-call comparison runs on real tool calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue8_capability_gap_makes_a_backup_not_ready() {
    let (section, dump) = store("sqlite").await;
    let gw = Gateway::start(&format!("{section}{}", routes("", ", tools = false"))).await;
    for i in 0..8 {
        let resp = Gateway::client()
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&json!({
                "model": "shadowed",
                "messages": [{"role": "user", "content": format!("weather in city {i}?")}],
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let r = samples(&gw, 8).await;
    assert_eq!(r["verdict"], "not_ready", "{r}");
    assert_eq!(r["capability_gaps"], json!(["tools"]));
    assert_eq!(r["tool_agreement"]["value"], 1.0, "{r}");
    assert_eq!(r["tool_args_valid"]["value"], 1.0, "{r}");
    drop(gw);
    dump(true);
}
