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

    // The peak-minute check below needs the requests in one UTC minute: start early in one.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute > 45 {
        tokio::time::sleep(Duration::from_secs(61 - into_minute)).await;
    }
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

    // `relais usage --by vendor` (and the admin API) carry the same concentration.
    let (_, by_vendor) = admin(&gw, "GET", "/admin/usage?by=vendor", None).await;
    assert_eq!(
        by_vendor["concentration"]["hhi_requests"], 10_000,
        "{by_vendor}"
    );

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

async fn post(gw: &Gateway, path: &str, body: Value) -> (u16, Value) {
    admin(gw, "POST", path, Some(body)).await
}

async fn wait_drill(gw: &Gateway, id: &str, state: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let (status, r) = admin(gw, "GET", &format!("/admin/drills/{id}"), None).await;
        assert_eq!(status, 200, "{r}");
        if r["status"]["state"] == state {
            return r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "drill not {state}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A drill at 50% for a bounded time sends that share of the route's traffic to its backup;
/// its counters, the ledger and the upstream all agree. A drill whose backup fails aborts
/// itself at the threshold, and traffic goes back to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue8_drill_reports_what_the_ledger_holds_and_aborts_on_errors() {
    let (section, dump) = store("sqlite").await;
    let gw = Gateway::start(&format!("{section}[admin]\nkey = \"{ADMIN}\"\n")).await;
    let (status, d) = post(
        &gw,
        "/admin/drills",
        json!({"route": "failover", "deployment": "up/primary", "share": 0.5,
               "duration_secs": 60, "started_by": "alice"}),
    )
    .await;
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    // A second drill on the same route is refused while the first runs.
    let (status, _) = post(
        &gw,
        "/admin/drills",
        json!({"route": "failover", "deployment": "up/primary", "share": 0.5,
               "duration_secs": 3, "started_by": "bob"}),
    )
    .await;
    assert_eq!(status, 400);
    // Only chat routes can be drilled.
    let (status, e) = post(
        &gw,
        "/admin/drills",
        json!({"route": "emb", "deployment": "up/text-embedding-3-small", "share": 0.5,
               "duration_secs": 3, "started_by": "bob"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a chat route"),
        "{e}"
    );
    for i in 0..60 {
        ask(&gw, "failover", &format!("drill {i}"), i % 3 == 0, None).await;
    }
    // Ended by hand once the 60 requests are in (a drill that ends by its time is below).
    let (status, _) = post(
        &gw,
        &format!("/admin/drills/{id}/stop"),
        json!({"by": "alice"}),
    )
    .await;
    assert_eq!(status, 200);
    let r = wait_drill(&gw, &id, "stopped").await;
    assert_eq!(r["status"]["by"], "alice");
    let to = |m: &str| {
        gw.mock
            .requests()
            .iter()
            .filter(|q| q.body["model"] == m)
            .count() as u64
    };
    let drilled = r["observed"]["drilled_requests"].as_u64().unwrap();
    assert_eq!(r["observed"]["route_requests"], 60, "{r}");
    assert!(
        (15..=45).contains(&drilled),
        "{drilled} of 60 drilled at 50%"
    );
    assert_eq!(r["observed"]["failovers"], drilled);
    assert_eq!(r["observed"]["drilled_errors"], 0);
    assert_eq!(r["ledger"]["drilled_requests"], drilled, "{r}");
    assert_eq!(r["ledger"]["drilled_errors"], 0);
    assert_eq!(r["ledger"]["served_by"]["backup/secondary"], drilled);
    assert_eq!(to("secondary"), drilled);
    assert_eq!(to("primary"), 60 - drilled);
    assert_eq!(r["started_by"], "alice");

    // The backup fails: every drilled request fails, and the drill stops itself after 5.
    gw.mock.push_fault(Fault {
        model: Some("secondary".into()),
        status: Some(500),
        times: Some(0),
        ..Fault::default()
    });
    let (_, d) = post(
        &gw,
        "/admin/drills",
        json!({"route": "failover", "deployment": "up/primary", "share": 1.0,
               "duration_secs": 60, "abort_error_rate": 0.5, "min_requests": 5,
               "started_by": "alice"}),
    )
    .await;
    let id = d["id"].as_str().unwrap().to_owned();
    let mut failed = 0;
    for i in 0..12 {
        let resp = Gateway::client()
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(&json!({"model": "failover", "messages": [{"role": "user", "content": format!("abort {i}")}]}))
            .send()
            .await
            .unwrap();
        failed += usize::from(resp.status() != 200);
    }
    assert_eq!(failed, 5, "the drill ran until its threshold, then stopped");
    let r = wait_drill(&gw, &id, "aborted").await;
    assert!(
        r["status"]["reason"].as_str().unwrap().contains("5 of 5"),
        "{r}"
    );
    assert_eq!(r["ledger"]["drilled_errors"], 5);
    assert!(r["ended_at"].as_i64().unwrap() < r["ends_at"].as_i64().unwrap());
    // A drill ends by itself at its time.
    gw.mock.clear_faults();
    let (_, d) = post(
        &gw,
        "/admin/drills",
        json!({"route": "failover", "deployment": "up/primary", "share": 0.1,
               "duration_secs": 1, "started_by": "carol"}),
    )
    .await;
    wait_drill(&gw, d["id"].as_str().unwrap(), "completed").await;
    let (_, list) = admin(&gw, "GET", "/admin/drills", None).await;
    assert_eq!(list["drills"].as_array().unwrap().len(), 3);
    drop(gw);
    dump(true);
}

/// The promotion dry run matches a hand computation on a seeded ledger; promote and undo swap
/// the primary under load without a failed request, and both are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue8_promotion_forecast_swap_and_undo() {
    let (section, dump) = store("sqlite").await;
    let extra = format!(
        r#"{section}[admin]
key = "{ADMIN}"

[prices.live-model]
input = 2.50
output = 10.00

[prices.backup-model]
input = 0.15
output = 0.60

[routes.promo]
deployments = [{{ provider = "up", model = "live-model" }}]

[routes.promo.shadow]
sample_rate = 0.0
deployments = [{{ provider = "backup", model = "backup-model", rpm = 600 }}]
"#
    );
    // Seed the ledger: 3 requests two days ago and 5 yesterday on `promo`, each of 1,000
    // prompt and 200 output tokens, at the live model's price.
    let path = section
        .lines()
        .find_map(|l| l.strip_prefix("sqlite_path = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    {
        let st = relais_state::SqliteStore::open(std::path::Path::new(&path))
            .await
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let day = 86_400_000;
        let rows: Vec<_> = (0..8)
            .map(|i| relais_state::LedgerRow {
                id: format!("seed{i}"),
                request_id: format!("seed{i}"),
                at_ms: if i < 3 { now - 2 * day } else { now - day },
                category: "live".into(),
                route: "promo".into(),
                deployment: Some("up/live-model".into()),
                vendor: Some("up".into()),
                input_tokens: 1000,
                output_tokens: 200,
                // 1000 × $2.50/M + 200 × $10/M = $0.0045
                cost_pusd: 4_500_000_000,
                status: 200,
                ..Default::default()
            })
            .collect();
        relais_state::LedgerStore::insert_rows(&st, &rows)
            .await
            .unwrap();
    }
    let gw = Gateway::start(&extra).await;

    let (status, dry) = post(
        &gw,
        "/admin/promote",
        json!({"route": "promo", "to": "backup/backup-model", "dry_run": true}),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    let f = &dry["forecast"];
    // By hand: 8 requests over 2 days with traffic = 4 a day; now 8 × $0.0045 / 2 = $0.018 a
    // day; at the backup's prices 8 × (1000 × 0.15 + 200 × 0.60) / 1e6 / 2 = $0.00108 a day.
    assert_eq!(f["days_with_traffic"], 2, "{f}");
    assert_eq!(f["requests_per_day"], 4);
    assert_eq!(f["cost_per_day_pusd"], 18_000_000_000u64);
    assert_eq!(f["forecast_cost_per_day_pusd"], 1_080_000_000u64);
    assert_eq!(f["cost_per_day_usd"], "0.018000");
    assert_eq!(f["limits"]["rpm"], 600);
    assert_eq!(f["from"], "up/live-model");
    // A dry run changes nothing.
    ask(&gw, "promo", "still live", false, None).await;
    assert_eq!(
        gw.mock.requests().last().unwrap().body["model"],
        "live-model"
    );

    // Promote and undo while four clients keep asking: nothing fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..4 {
        let (url, stop) = (gw.url.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0, 0);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let resp = Gateway::client()
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&json!({"model": "promo", "stream": i % 2 == 0,
                        "messages": [{"role": "user", "content": format!("load {w} {i}")}]}))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let _ = resp.text().await.unwrap();
                if status == 200 { ok += 1 } else { bad += 1 }
            }
            (ok, bad)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, done) = post(
        &gw,
        "/admin/promote",
        json!({"route": "promo", "to": "backup/backup-model", "by": "alice"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["to"], "backup/backup-model");
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.mock.clear_requests();
    ask(&gw, "promo", "after promotion", false, None).await;
    assert_eq!(
        gw.mock.requests().last().unwrap().body["model"],
        "backup-model"
    );
    let (status, undone) = post(
        &gw,
        "/admin/promote",
        json!({"route": "promo", "undo": true, "by": "alice"}),
    )
    .await;
    assert_eq!(status, 200, "{undone}");
    assert_eq!(undone["to"], "up/live-model");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut bad) = (0, 0);
    for t in load {
        let (o, b) = t.await.unwrap();
        ok += o;
        bad += b;
    }
    assert_eq!(bad, 0, "{bad} requests failed during the swaps ({ok} ok)");
    assert!(ok > 20, "only {ok} requests under load");
    ask(&gw, "promo", "after undo", false, None).await;
    assert_eq!(
        gw.mock.requests().last().unwrap().body["model"],
        "live-model"
    );
    // Undo twice is refused.
    let (status, _) = post(
        &gw,
        "/admin/promote",
        json!({"route": "promo", "undo": true, "by": "alice"}),
    )
    .await;
    assert_eq!(status, 400);
    drop(gw);
    dump(true);
}

/// With `similarity_route` set, similarity is the cosine of the two answers' embeddings,
/// fetched through that embeddings route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue8_similarity_through_an_embeddings_route() {
    let (section, dump) = store("sqlite").await;
    let gw = Gateway::start(&format!(
        "{section}{}",
        routes("similarity_route = \"emb\"", "")
    ))
    .await;
    for i in 0..3 {
        ask(&gw, "shadowed", &format!("embed me {i}"), false, None).await;
    }
    let r = samples(&gw, 3).await;
    let embeds: Vec<_> = gw
        .mock
        .requests()
        .into_iter()
        .filter(|q| q.path.ends_with("/embeddings"))
        .collect();
    assert_eq!(embeds.len(), 3, "one embeddings call per sample");
    // Both answers are the same text, so their embeddings are the same vector.
    assert_eq!(embeds[0].body["input"][0], embeds[0].body["input"][1]);
    assert_eq!(r["similarity"]["value"], 1.0, "{r}");
    drop(gw);
    dump(true);
}

/// The first deployment of route `shadowed` on a gateway, from `/admin/routes`.
async fn primary(gw: &Gateway) -> String {
    let (status, v) = admin(gw, "GET", "/admin/routes", None).await;
    assert_eq!(status, 200, "{v}");
    v["routes"]["shadowed"]["deployments"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no deployments for route shadowed: {v}"))
        .to_owned()
}

async fn wait_primary(gw: &Gateway, want: &str) {
    let t0 = Instant::now();
    loop {
        let now = primary(gw).await;
        if now == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{}: primary {now}, waiting for {want}",
            gw.url
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// On a cluster, a promotion made through one instance reaches the others through the store
/// (they sync every `check_secs`), and so does its undo; a new instance starts promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue8_a_promotion_reaches_the_other_instances() {
    let (section, dump) = store("postgres").await;
    let extra = format!("{section}{}", routes("", ""));
    let a = Gateway::start(&extra).await;
    let b = Gateway::start(&extra).await;
    assert_eq!(primary(&b).await, "up/live-model");
    let (status, done) = post(
        &a,
        "/admin/promote",
        json!({"route": "shadowed", "to": "backup/backup-model", "by": "alice"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(primary(&a).await, "backup/backup-model");
    wait_primary(&b, "backup/backup-model").await;
    let c = Gateway::start(&extra).await;
    assert_eq!(primary(&c).await, "backup/backup-model");
    let (status, _) = post(
        &b,
        "/admin/promote",
        json!({"route": "shadowed", "undo": true, "by": "bob"}),
    )
    .await;
    assert_eq!(status, 200);
    wait_primary(&a, "up/live-model").await;
    wait_primary(&c, "up/live-model").await;
    drop((a, b, c));
    dump(true);
}

/// Copies count against a backup's configured limits with routed traffic, and are not sent
/// past them: a backup limited to 3 requests a minute gets 3 copies of 6 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue8_copies_respect_the_backups_limits() {
    let (section, dump) = store("sqlite").await;
    let gw = Gateway::start(&format!(
        r#"{section}[admin]
key = "{ADMIN}"

[routes.limited]
deployments = [{{ provider = "up", model = "live-model" }}, {{ provider = "backup", model = "backup-model", rpm = 3 }}]

[routes.limited.shadow]
sample_rate = 1.0
"#
    ))
    .await;
    for i in 0..6 {
        ask(&gw, "limited", &format!("limited {i}"), false, None).await;
    }
    let t0 = Instant::now();
    loop {
        let m = gw.get_text("/metrics").await;
        if counter(&m, "answered") + counter(&m, "skipped_backup_limits") == 6 {
            assert_eq!(counter(&m, "answered"), 3, "{m}");
            assert_eq!(counter(&m, "skipped_backup_limits"), 3);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let copies = gw
        .mock
        .requests()
        .iter()
        .filter(|q| q.body["model"] == "backup-model")
        .count();
    assert_eq!(copies, 3);
    drop(gw);
    dump(true);
}
