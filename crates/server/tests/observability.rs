//! Issue 20, parts 3 and 4: OpenTelemetry traces exported to an OTLP receiver on loopback
//! (spans, GenAI attributes, parent links, `traceparent` in and out, sampling, the bounded
//! queue), and alerts (metric, log line, webhook with retries and deduplication).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failure is a failed test"
)]

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN, Gateway, admin, capture_logs, logs, redis_on, store, unique};
use relais_testkit::{Fault, OtlpSpan, Posted, Sink};
use serde_json::{Value, json};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn otel(sink: &Sink, extra: &str) -> String {
    format!(
        "[otel]\nendpoint = \"{}\"\nflush_ms = 50\nheaders = {{ authorization = \"Bearer otlp-token-0123\" }}\n{extra}\n",
        sink.url()
    )
}

async fn ask(gw: &Gateway, model: &str, stream: bool, traceparent: Option<&str>) -> (u16, String) {
    let mut rb = Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(
            &json!({"model": model, "stream": stream, "max_tokens": 20, "temperature": 0.5,
            "messages": [{"role": "user", "content": "say something"}]}),
        );
    if let Some(tp) = traceparent {
        rb = rb.header("traceparent", tp);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Wait until the sink holds spans of `n` requests (server spans) of trace `trace` (any when
/// empty).
async fn spans_of(sink: &Sink, trace: &str, n: usize) -> Vec<OtlpSpan> {
    let t0 = Instant::now();
    loop {
        let spans: Vec<OtlpSpan> = sink
            .spans()
            .into_iter()
            .filter(|s| trace.is_empty() || s.trace_id == trace)
            .collect();
        if spans.iter().filter(|s| s.kind == 2).count() >= n
            || t0.elapsed() > Duration::from_secs(10)
        {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A failover under a client's trace: one server span (child of the client's span), two
/// client spans under it (the failed attempt with its error, the serving one with usage and
/// finish reasons); each upstream request carried a `traceparent` naming its attempt span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue20_a_failover_exports_two_attempt_spans_under_one_request_span() {
    let sink = Sink::start().await;
    let gw = Gateway::start(&otel(&sink, "")).await;
    gw.mock.push_fault(Fault {
        model: Some("primary".into()),
        status: Some(500),
        ..Fault::default()
    });
    let tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, body) = ask(&gw, "failover", false, Some(&tp)).await;
    assert_eq!(status, 200, "{body}");
    let spans = spans_of(&sink, CLIENT_TRACE, 1).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let request = spans.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(request.parent_span_id, CLIENT_SPAN);
    assert_eq!(request.name, "chat failover");
    assert_eq!(request.str_attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(request.str_attr("gen_ai.request.model"), Some("failover"));
    assert_eq!(request.int_attr("http.response.status_code"), Some(200));
    assert_eq!(request.int_attr("relais.attempts"), Some(2));
    assert_eq!(request.int_attr("gen_ai.request.max_tokens"), Some(20));
    assert_eq!(
        request.attr("gen_ai.request.temperature"),
        Some(&json!(0.5))
    );
    assert_eq!(request.resource.get("service.name"), Some(&json!("relais")));
    assert_eq!(request.status_code, 1);
    let mut attempts: Vec<&OtlpSpan> = spans.iter().filter(|s| s.kind == 3).collect();
    attempts.sort_by_key(|s| s.int_attr("relais.attempt"));
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert_eq!(a.parent_span_id, request.span_id);
        assert_eq!(
            a.str_attr("gen_ai.provider.name"),
            Some(a.str_attr("relais.vendor").unwrap())
        );
        assert!(
            a.start_ns >= request.start_ns && a.end_ns <= request.end_ns,
            "{a:?} {request:?}"
        );
    }
    let (failed, served) = (attempts[0], attempts[1]);
    assert_eq!(failed.name, "chat primary");
    assert_eq!(failed.str_attr("gen_ai.request.model"), Some("primary"));
    assert_eq!(failed.str_attr("relais.deployment"), Some("up/primary"));
    assert_eq!(failed.str_attr("error.type"), Some("server"), "{failed:?}");
    assert_eq!(failed.int_attr("http.response.status_code"), Some(500));
    assert_eq!(failed.status_code, 2);
    assert!(failed.end_ns <= served.start_ns, "attempts overlap");
    assert_eq!(served.name, "chat secondary");
    assert_eq!(served.str_attr("gen_ai.response.model"), Some("secondary"));
    assert!(served.int_attr("gen_ai.usage.input_tokens").unwrap() > 0);
    assert!(served.int_attr("gen_ai.usage.output_tokens").unwrap() > 0);
    assert_eq!(
        served.attr("gen_ai.response.finish_reasons"),
        Some(&json!(["stop"]))
    );
    assert!(served.str_attr("gen_ai.response.id").is_some());
    // Tokens are counted once: on the attempt that used them, not again on the request.
    assert_eq!(request.int_attr("gen_ai.usage.output_tokens"), None);
    assert_eq!(
        request.str_attr("relais.deployment"),
        Some("backup/secondary")
    );
    // What the vendor was told: the trace, and the attempt's own span as the parent.
    let sent: Vec<String> = gw
        .mock
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| r.headers.get("traceparent").cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        sent,
        vec![
            format!("00-{CLIENT_TRACE}-{}-01", failed.span_id),
            format!("00-{CLIENT_TRACE}-{}-01", served.span_id),
        ]
    );
    // The export carried the configured header; nothing was dropped.
    let post = sink
        .posts()
        .into_iter()
        .find(|p| p.path == "/v1/traces")
        .unwrap();
    assert_eq!(
        post.headers.get("authorization").map(String::as_str),
        Some("Bearer otlp-token-0123")
    );
    let metrics = gw.get_text("/metrics").await;
    assert!(
        metrics.contains("relais_otel_spans_exported_total 3"),
        "{metrics}"
    );
    assert!(metrics.contains("relais_otel_spans_dropped_total{reason=\"queue_full\"} 0"));
}

/// Spans still waiting for their batch when the gateway stops are exported before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue20_spans_queued_at_shutdown_are_exported() {
    let sink = Sink::start().await;
    let mut gw = Gateway::start(&format!(
        "[otel]\nendpoint = \"{}\"\nflush_ms = 600000\n",
        sink.url()
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(ask(&gw, "gpt-4o-mini", false, None).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.spans().is_empty(), "exported before the batch filled");
    gw.stop();
    gw.task.take().unwrap().await.unwrap().unwrap();
    assert_eq!(sink.spans().len(), 6, "{:#?}", sink.spans());
}

/// A stream's spans: the serving attempt lasts until the stream ends and carries the usage and
/// finish reason the stream reported; a new trace is started when the client sent none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue20_a_stream_exports_its_spans_when_it_ends() {
    let sink = Sink::start().await;
    let gw = Gateway::start(&otel(&sink, "payloads = true")).await;
    gw.mock.push_fault(Fault {
        chunk_delay_ms: Some(30),
        ..Fault::default()
    });
    let (status, body) = ask(&gw, "gpt-4o-mini", true, None).await;
    assert_eq!(status, 200);
    assert!(body.contains("[DONE]"), "{body}");
    let spans = spans_of(&sink, "", 1).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let request = spans.iter().find(|s| s.kind == 2).unwrap();
    let attempt = spans.iter().find(|s| s.kind == 3).unwrap();
    assert_eq!(request.parent_span_id, "");
    assert_eq!(request.trace_id.len(), 32);
    assert_eq!(attempt.trace_id, request.trace_id);
    assert_eq!(attempt.parent_span_id, request.span_id);
    assert_eq!(request.attr("relais.stream"), Some(&json!(true)));
    assert!(attempt.int_attr("gen_ai.usage.output_tokens").unwrap() > 0);
    assert_eq!(
        attempt.attr("gen_ai.response.finish_reasons"),
        Some(&json!(["stop"]))
    );
    // The attempt lasted while the chunks came (30 ms apart).
    assert!(
        attempt.end_ns - attempt.start_ns >= 100_000_000,
        "{attempt:?}"
    );
    // Payloads, when enabled: the prompt and the streamed answer.
    let input = request.str_attr("gen_ai.input.messages").unwrap();
    let input: Value = serde_json::from_str(input).unwrap();
    assert_eq!(input[0]["role"], "user");
    assert_eq!(input[0]["parts"][0]["content"], "say something");
    let output: Value =
        serde_json::from_str(request.str_attr("gen_ai.output.messages").unwrap()).unwrap();
    let text = output[0]["parts"][0]["content"].as_str().unwrap();
    assert!(
        !text.is_empty() && body.contains(text.split(' ').next().unwrap()),
        "{text}"
    );
    // The vendor got a traceparent of the new trace.
    let sent = gw.mock.requests()[0]
        .headers
        .get("traceparent")
        .cloned()
        .unwrap();
    assert_eq!(
        sent,
        format!("00-{}-{}-01", request.trace_id, attempt.span_id)
    );
}

/// Sampling: at ratio 0 only requests whose client asked for a sampled trace are exported, yet
/// every upstream is told the trace (unsampled); payloads are redacted; an unreachable
/// collector makes no request wait, and its spans are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue20_sampling_redaction_and_a_dead_collector() {
    let sink = Sink::start().await;
    let gw = Gateway::start(&otel(&sink, "sample_ratio = 0.0\npayloads = true")).await;
    for _ in 0..5 {
        assert_eq!(ask(&gw, "gpt-4o-mini", false, None).await.0, 200);
    }
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    assert_eq!(
        ask(&gw, "gpt-4o-mini", false, Some(&unsampled)).await.0,
        200
    );
    // A sampled parent, and a prompt holding a key.
    let secret = "sk-proj-Zx81Qm20LkP7wTy5Rb3NcV6D";
    let resp = Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&json!({"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": format!("my key is {secret} keep it")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = spans_of(&sink, "", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = sink.spans();
    assert_eq!(
        all.len(),
        2,
        "only the sampled request is exported: {all:#?}"
    );
    assert!(spans.iter().all(|s| s.trace_id == CLIENT_TRACE));
    let request = all.iter().find(|s| s.kind == 2).unwrap();
    let input = request.str_attr("gen_ai.input.messages").unwrap();
    assert!(
        !input.contains(secret) && input.contains("[REDACTED]"),
        "{input}"
    );
    let flags: Vec<String> = gw
        .mock
        .requests()
        .iter()
        .map(|r| r.headers.get("traceparent").cloned().unwrap_or_default())
        .collect();
    assert_eq!(flags.len(), 7);
    assert!(
        flags[..6]
            .iter()
            .all(|f| f.ends_with("-00") && f.len() == 55),
        "{flags:?}"
    );
    assert!(flags[5].contains(CLIENT_TRACE));
    assert!(flags[6].ends_with("-01"));

    // A collector that accepts connections and never answers: the exporter waits on it (up to
    // its timeout), its queue of 2 fills, requests go on at full speed, spans are dropped.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_url = format!("http://{}", hole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = hole.accept().await {
            conns.push(c);
        }
    });
    let dead = Gateway::start(&format!(
        "[otel]\nendpoint = \"{hole_url}\"\nqueue_size = 2\nbatch_size = 1\nflush_ms = 1\ntimeout_secs = 30\n"
    ))
    .await;
    let t0 = Instant::now();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(ask(&dead, "gpt-4o-mini", false, None).await.0, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a request waited on the exporter"
        );
    }
    let metrics = dead.get_text("/metrics").await;
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("relais_otel_spans_dropped_total{reason=\"queue_full\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    eprintln!(
        "figures: 20 requests with a hung collector in {:?}; {dropped} spans dropped",
        t0.elapsed()
    );
    // 40 spans: at most one batch in flight and two requests' spans queued survive.
    assert!(dropped >= 30, "{metrics}");
    held.abort();
}

fn firing<'a>(posts: &'a [Posted], id: &str, status: &str) -> Vec<&'a Posted> {
    posts
        .iter()
        .filter(|p| p.body["id"] == id && p.body["status"] == status)
        .collect()
}

/// Set a team's daily budget through the admin API.
async fn set_budget_day(gw: &Gateway, team_id: &str, usd: &str) {
    let (status, body) = admin(
        gw,
        "PATCH",
        &format!("/admin/teams/{team_id}"),
        Some(json!({"budget_day": usd})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn wait_alert(sink: &Sink, id: &str, status: &str) -> Vec<Posted> {
    let posts = sink
        .wait_for(Duration::from_secs(20), |ps| {
            !firing(ps, id, status).is_empty()
        })
        .await;
    assert!(
        !firing(&posts, id, status).is_empty(),
        "no webhook for {id} {status}: {posts:#?}"
    );
    posts
}

fn alerts(sink: &Sink) -> String {
    format!(
        "[alerts]\nwebhook_url = \"{}/hook\"\ncheck_secs = 1\nwebhook_headers = {{ authorization = \"Bearer hook-token-0123\" }}\n",
        sink.url()
    )
}

/// Budgets at 80% and 100%: each threshold fires once (a webhook POST retried past a 503,
/// never repeated while it holds), shows in `/metrics` and the log, and clears when the budget
/// is raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue20_budget_alerts_fire_once_at_80_and_100_percent_and_clear() {
    capture_logs(tracing::Level::INFO);
    let sink = Sink::start().await;
    sink.fail_next(1, 503);
    let (section, dump) = store("sqlite").await;
    let gw = Gateway::start(&format!(
        "[admin]\nkey = \"{ADMIN}\"\n[prices.\"gpt-4o-mini\"]\ninput = \"0\"\noutput = \"1\"\n{section}ledger_ship_ms = 100\n{}",
        alerts(&sink)
    ))
    .await;
    let (status, team) = admin(
        &gw,
        "POST",
        "/admin/teams",
        Some(json!({"name": "b", "budget_day": "0.00005"})),
    )
    .await;
    assert_eq!(status, 201, "{team}");
    let team_id = team["id"].as_str().unwrap().to_owned();
    let (status, k) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "b", "name": "k"})),
    )
    .await;
    assert_eq!(status, 201);
    let key = k["key"].as_str().unwrap().to_owned();
    // Spend until the budget refuses (each request reserves 5 µUSD of the 50, spends 5).
    for _ in 0..100 {
        let resp = Gateway::client()
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-4o-mini", "max_tokens": 5,
                "messages": [{"role": "user", "content": "count to ten please"}]}))
            .send()
            .await
            .unwrap();
        if resp.status() != 200 {
            assert_eq!(resp.status(), 402);
            break;
        }
    }
    let id80 = format!("budget:{team_id}:day:80");
    let id100 = format!("budget:{team_id}:day:100");
    let posts = wait_alert(&sink, &id80, "firing").await;
    let p = firing(&posts, &id80, "firing")[0];
    assert_eq!(p.path, "/hook");
    assert_eq!(p.body["alert"], "budget");
    assert_eq!(p.body["subject"], "team b");
    assert_eq!(p.body["details"]["budget_usd"], "0.000050");
    assert_eq!(
        p.headers.get("authorization").map(String::as_str),
        Some("Bearer hook-token-0123")
    );
    assert!(p.headers.contains_key("idempotency-key"));
    // The first delivery got a 503 and was retried.
    assert!(
        sink.posts()[0].path.ends_with("(failed)"),
        "{:?}",
        sink.posts()[0]
    );
    // The budget is cut below what was spent: 100% fires too.
    set_budget_day(&gw, &team_id, "0.00001").await;
    wait_alert(&sink, &id100, "firing").await;
    let metrics = gw.get_text("/metrics").await;
    assert!(
        metrics.contains("relais_alert_active{alert=\"budget\",subject=\"team b\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("relais_alerts_fired_total{alert=\"budget\"} 2"),
        "{metrics}"
    );
    // Checks go on every second: no second POST for an alert that still holds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let posts = sink.wait_for(Duration::ZERO, |_| true).await;
    assert_eq!(firing(&posts, &id80, "firing").len(), 1, "{posts:#?}");
    assert_eq!(firing(&posts, &id100, "firing").len(), 1);
    // Raised: both clear.
    set_budget_day(&gw, &team_id, "10").await;
    wait_alert(&sink, &id80, "resolved").await;
    wait_alert(&sink, &id100, "resolved").await;
    let log = logs();
    assert!(
        log.contains(&id80) && log.contains("firing") && log.contains("resolved"),
        "{log}"
    );
    let metrics = gw.get_text("/metrics").await;
    assert!(
        !metrics.contains("relais_alert_active{alert=\"budget\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("relais_alert_webhook_deliveries_total{outcome=\"sent\"} 4"),
        "{metrics}"
    );
    // Cut again within repeat_secs: the alerts fire again (gauge, counter) but are not posted
    // a second time.
    set_budget_day(&gw, &team_id, "0.00001").await;
    let t0 = Instant::now();
    while !gw
        .get_text("/metrics")
        .await
        .contains("relais_alerts_fired_total{alert=\"budget\"} 4")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the alerts did not fire again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = sink.wait_for(Duration::ZERO, |_| true).await;
    assert_eq!(firing(&posts, &id80, "firing").len(), 1, "{posts:#?}");
    assert_eq!(firing(&posts, &id100, "firing").len(), 1);
    drop(gw);
    dump(true);
}

/// A breaker that opens fires `breaker_open` (with the deployment), and the limit store being
/// down fires `store_down` until Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue20_breaker_and_limit_store_alerts_reach_the_webhook() {
    let sink = Sink::start().await;
    let gw = Gateway::start(&format!(
        "{}[routes.failover.breaker]\nconsecutive_failures = 1\nbase_ejection_secs = 60\n",
        alerts(&sink)
    ))
    .await;
    gw.mock.push_fault(Fault {
        model: Some("primary".into()),
        status: Some(500),
        ..Fault::default()
    });
    assert_eq!(ask(&gw, "failover", false, None).await.0, 200);
    let id = "breaker_open:failover/up/primary";
    let posts = wait_alert(&sink, id, "firing").await;
    let p = firing(&posts, id, "firing")[0];
    assert_eq!(p.body["details"]["deployment"], "up/primary");
    assert_eq!(p.body["details"]["ejected"], true);
    assert!(
        gw.get_text("/metrics")
            .await
            .contains("relais_alerts_fired_total{alert=\"breaker_open\"} 1")
    );

    // Redis down from the start: the limit store alert fires; Redis comes up: it clears.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (section, dump) = store("sqlite").await;
    let prefix = unique("relais_alert");
    let down = Gateway::start(&format!(
        "[admin]\nkey = \"{ADMIN}\"\n{section}limits = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}\"\nredis_prefix = \"{prefix}\"\n{}",
        alerts(&sink)
    ))
    .await;
    let posts = wait_alert(&sink, "store_down:limits", "firing").await;
    let p = firing(&posts, "store_down:limits", "firing")[0];
    assert_eq!(p.body["details"]["kind"], "redis");
    let mut redis = redis_on(port);
    let posts = sink
        .wait_for(Duration::from_secs(20), |ps| {
            !firing(ps, "store_down:limits", "resolved").is_empty()
        })
        .await;
    let _ = redis.kill();
    let _ = redis.wait();
    assert_eq!(
        firing(&posts, "store_down:limits", "resolved").len(),
        1,
        "{posts:#?}"
    );
    drop(down);
    dump(true);
}

/// The Grafana dashboard queries only series relais exports: every `relais_*` name in its
/// expressions is one the server writes (histograms by their base name).
#[test]
fn issue20_the_grafana_dashboard_queries_series_relais_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("../../deploy/grafana/relais.json")).unwrap(),
    )
    .unwrap();
    let mut source = String::new();
    let mut dirs = vec![root.join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                source.push_str(&std::fs::read_to_string(p).unwrap());
            }
        }
    }
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut names = 0;
    for p in panels {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("relais_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                let name = &tail[..end];
                let base = name.strip_suffix("_bucket").unwrap_or(name);
                assert!(
                    source.contains(&format!("\"{base}\"")),
                    "panel '{}' queries {name}, which relais does not export",
                    p["title"]
                );
                names += 1;
                rest = &tail[end..];
            }
        }
    }
    assert!(names >= 20, "{names}");
}

/// Plan B's alerts: a route whose only backup was ready loses it (`backup_readiness_lost`),
/// and with no ready backup one vendor carries it (`dependency`); both reach the webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue20_readiness_lost_and_dependency_alerts_reach_the_webhook() {
    let sink = Sink::start().await;
    let (section, dump) = store("sqlite").await;
    let gw = Gateway::start(&format!(
        r#"{section}ledger_ship_ms = 100
[admin]
key = "{ADMIN}"

[plan_b]
check_secs = 1

[plan_b.thresholds]
min_samples = 8

[routes.shadowed]
deployments = [{{ provider = "up", model = "live-model" }}, {{ provider = "backup", model = "backup-model" }}]

[routes.shadowed.shadow]
sample_rate = 1.0
{}"#,
        alerts(&sink)
    ))
    .await;
    let ask_shadowed = |i: usize| {
        let url = format!("{}/v1/chat/completions", gw.url);
        async move {
            let resp = Gateway::client()
                .post(url)
                .json(&json!({"model": "shadowed",
                    "messages": [{"role": "user", "content": format!("question {i}")}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
    };
    let verdict = |n: u64| {
        let gw = &gw;
        async move {
            let t0 = Instant::now();
            loop {
                let (_, body) = admin(gw, "GET", "/admin/readiness?route=shadowed", None).await;
                let b = body["backups"][0].clone();
                if b["samples"].as_u64() == Some(n) {
                    return b["verdict"].as_str().unwrap_or("").to_owned();
                }
                assert!(t0.elapsed() < Duration::from_secs(20), "{body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for i in 0..10 {
        ask_shadowed(i).await;
    }
    assert_eq!(verdict(10).await, "ready");
    // Let a check see the ready backup.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let none = sink.wait_for(Duration::ZERO, |_| true).await;
    assert!(
        firing(&none, "backup_readiness_lost:shadowed", "firing").is_empty()
            && firing(&none, "dependency:shadowed", "firing").is_empty(),
        "{none:#?}"
    );
    // The backup starts failing: not ready any more.
    gw.mock.push_fault(Fault {
        model: Some("backup-model".into()),
        status: Some(500),
        times: Some(0),
        ..Fault::default()
    });
    for i in 10..20 {
        ask_shadowed(i).await;
    }
    assert_eq!(verdict(20).await, "not_ready");
    let posts = wait_alert(&sink, "backup_readiness_lost:shadowed", "firing").await;
    let p = firing(&posts, "backup_readiness_lost:shadowed", "firing")[0];
    assert_eq!(p.body["details"]["backups"], json!(["backup/backup-model"]));
    let posts = wait_alert(&sink, "dependency:shadowed", "firing").await;
    let p = firing(&posts, "dependency:shadowed", "firing")[0];
    assert_eq!(p.body["details"]["vendor"], "up");
    let metrics = gw.get_text("/metrics").await;
    assert!(
        metrics.contains(
            "relais_alert_active{alert=\"backup_readiness_lost\",subject=\"route shadowed\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("relais_alert_active{alert=\"dependency\",subject=\"route shadowed\"} 1")
    );
    drop(gw);
    dump(true);
}

/// Issue 22: a guarded request's recorded payloads keep no value the guardrails find: an
/// allowed e-mail address is recorded as `[EMAIL]`, a masked IBAN as its placeholder, in the
/// prompt and in the answer, while the client gets both values back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue22_recorded_payloads_keep_no_guarded_value() {
    let sink = Sink::start().await;
    let gw = Gateway::start(&format!(
        "{}\n[routes.guarded]\ndeployments = [{{ provider = \"up\", model = \"m\" }}]\nguardrails = {{ email = \"allow\", iban = \"mask\" }}\n",
        otel(&sink, "payloads = true")
    ))
    .await;
    let (email, iban) = ("jane.doe@example.com", "DE89370400440532013000");
    let resp = Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": "guarded", "max_tokens": 30,
            "messages": [{"role": "user", "content": format!("pay {iban} and mail {email}")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(body.contains(email) && body.contains(iban), "{body}");
    let spans = spans_of(&sink, "", 1).await;
    let request = spans.iter().find(|s| s.kind == 2).unwrap();
    let input = request.str_attr("gen_ai.input.messages").unwrap();
    let output = request.str_attr("gen_ai.output.messages").unwrap();
    for recorded in [input, output] {
        assert!(
            recorded.contains("[EMAIL]") && recorded.contains("[IBAN_1]"),
            "{recorded}"
        );
        assert!(
            !recorded.contains(email) && !recorded.contains(iban),
            "{recorded}"
        );
    }
}
