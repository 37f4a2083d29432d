//! The router under injected faults (issue 6): the fault-injecting mock vendor and relais over
//! loopback, in-process. Time-based behaviour runs on tokio's paused clock, so "7 seconds of
//! cool-down" or "60 seconds of traffic" take virtual time and no test sleeps for real.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Gateway, sse_payloads};
use relais_testkit::Fault;
use serde_json::{Value, json};
use tokio::time::Instant;

const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream,
           "messages": [{"role": "user", "content": "route me"}]})
}

/// Send one chat request; the deployment that answered (from `x-relais-deployment`), or the
/// status when it failed.
async fn ask(gw: &Gateway, model: &str) -> Result<String, u16> {
    let resp = gw.post("/v1/chat/completions", &chat(model, false)).await;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(status);
    }
    let dep = resp.headers()["x-relais-deployment"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = resp.bytes().await.unwrap();
    Ok(dep)
}

/// Upstream requests the mock received for `model`.
fn upstream(gw: &Gateway, model: &str) -> usize {
    gw.mock
        .requests()
        .iter()
        .filter(|r| r.body["model"] == model)
        .count()
}

async fn admin_routes(gw: &Gateway) -> Value {
    let resp = Gateway::client()
        .get(format!("{}/admin/routes", gw.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn deployment<'a>(routes: &'a Value, route: &str, id: &str) -> &'a Value {
    routes["routes"][route]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap()
}

fn every(model: &str, fault: Fault) -> Fault {
    Fault {
        model: Some(model.to_owned()),
        times: Some(0),
        ..fault
    }
}

fn trio(strategy: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
key = "{ADMIN_KEY}"

[routes.trio]
strategy = "{strategy}"
deployments = [
  {{ provider = "up", model = "m1" }},
  {{ provider = "up", model = "m2" }},
  {{ provider = "up", model = "m3" }},
]
{extra}
"#
    )
}

/// One of three deployments answers 500: the breaker ejects it after the configured count,
/// while ejected it sees under 1% of the traffic (half-open probes only), and once it heals a
/// probe brings it back into rotation.
#[tokio::test(start_paused = true)]
async fn issue6_failing_deployment_is_ejected_and_comes_back() {
    let gw = Gateway::start(&trio(
        "weighted",
        "[routes.trio.breaker]\nconsecutive_failures = 3\nbase_ejection_secs = 10\nmax_ejection_secs = 40\n",
    ))
    .await;
    gw.mock.push_fault(every(
        "m2",
        Fault {
            status: Some(500),
            ..Fault::default()
        },
    ));
    let start = Instant::now();
    let mut served = BTreeMap::<String, usize>::new();
    // Until m2 has failed three times in a row (weighted: a third of first picks go there).
    while upstream(&gw, "m2") < 3 {
        let dep = ask(&gw, "trio").await.expect("failover hides the 500s");
        *served.entry(dep).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let routes = admin_routes(&gw).await;
    assert_eq!(deployment(&routes, "trio", "up/m2")["state"], "ejected");
    assert_eq!(deployment(&routes, "trio", "up/m2")["ejections"], 1);
    assert!(!served.contains_key("up/m2"));
    let metrics = gw.get_text("/metrics").await;
    let labels = r#"route="trio",deployment="up/m2",provider="up""#;
    assert!(
        metrics.contains(&format!("relais_ejections_total{{{labels}}} 1")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("relais_deployment_ejected{{{labels}}} 1")));
    assert!(metrics.contains(&format!("relais_failovers_total{{{labels}}} 3")));

    // 60 s of traffic while m2 stays broken: only probes reach it.
    let before = upstream(&gw, "m2");
    let total_before = gw.mock.requests().len();
    let ejected_at = Instant::now();
    while ejected_at.elapsed() < Duration::from_secs(60) {
        ask(&gw, "trio").await.expect("failover hides the 500s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let probes = upstream(&gw, "m2") - before;
    let attempts = gw.mock.requests().len() - total_before;
    let share = probes as f64 / attempts as f64;
    eprintln!(
        "figures: ejected deployment got {probes} of {attempts} attempts in 60 s ({:.2}%)",
        share * 100.0
    );
    assert!(
        share < 0.01,
        "ejected deployment got {probes} of {attempts} attempts"
    );
    assert!(
        probes >= 2,
        "half-open probes keep testing it ({probes} in 60 s)"
    );

    // It heals: within one (capped) ejection period a probe succeeds and it takes traffic again.
    gw.mock.clear_faults();
    let healed_at = Instant::now();
    let mut back = None;
    let mut after = BTreeMap::<String, usize>::new();
    while healed_at.elapsed() < Duration::from_secs(80) {
        let dep = ask(&gw, "trio").await.unwrap();
        if dep == "up/m2" && back.is_none() {
            back = Some(healed_at.elapsed());
        }
        if back.is_some() {
            *after.entry(dep).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = back.expect("the healed deployment came back");
    eprintln!("figures: healed deployment back in rotation after {back:?}");
    assert!(back <= Duration::from_secs(41), "back after {back:?}");
    let total: usize = after.values().sum();
    let m2 = after.get("up/m2").copied().unwrap_or(0);
    assert!(
        m2 as f64 > 0.2 * total as f64,
        "after recovery m2 served {m2} of {total}"
    );
    assert!(start.elapsed() >= Duration::from_secs(140));
}

/// A 429 with `retry-after: 7` cools the deployment down for 7 s (±10%): traffic fails over,
/// and the 429 is not a failure for the breaker.
#[tokio::test(start_paused = true)]
async fn issue6_retry_after_cools_down_without_ejecting() {
    let gw = Gateway::start(&format!(
        "[admin]\nkey = \"{ADMIN_KEY}\"\n[routes.failover.breaker]\nconsecutive_failures = 1\n"
    ))
    .await;
    gw.mock.push_fault(Fault {
        model: Some("primary".into()),
        status: Some(429),
        retry_after: Some("7".into()),
        ..Fault::default()
    });
    let t0 = Instant::now();
    assert_eq!(ask(&gw, "failover").await, Ok("backup/secondary".into()));
    let mut back_at = None;
    while t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dep = ask(&gw, "failover").await.unwrap();
        if dep == "up/primary" {
            back_at = Some(t0.elapsed());
            break;
        }
    }
    let back_at = back_at.expect("primary came back");
    eprintln!("figures: primary cooled down for {back_at:?} after retry-after: 7");
    assert!(
        back_at >= Duration::from_millis(6300) && back_at <= Duration::from_millis(7700),
        "cooled down for {back_at:?}"
    );
    let routes = admin_routes(&gw).await;
    let primary = deployment(&routes, "failover", "up/primary");
    assert_eq!(primary["state"], "healthy");
    assert_eq!(primary["failures"], 0, "a 429 is not a failure");
    assert_eq!(primary["ejections"], 0);
    assert_eq!(upstream(&gw, "primary"), 2);
}

/// Every upstream fails: upstream attempts stay within 1.2 × client requests plus the budget's
/// floor, and after recovery each request costs exactly one attempt (no retry storm).
#[tokio::test(start_paused = true)]
async fn issue6_retry_budget_bounds_load_when_everything_fails() {
    let gw = Gateway::start(&trio(
        "failover",
        "[routes.trio.retry]\nbudget_ratio = 0.2\nbudget_min_per_sec = 1\n",
    ))
    .await;
    gw.mock.push_fault(Fault {
        times: Some(0),
        status: Some(500),
        ..Fault::default()
    });
    let requests = 500;
    for _ in 0..requests {
        assert!(ask(&gw, "trio").await.is_err());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let attempts = gw.mock.requests().len();
    eprintln!(
        "figures: every upstream failing: {attempts} upstream attempts for {requests} requests"
    );
    // The floor: 1 retry per second over the budget's 10 s window.
    let bound = 1.2 * requests as f64 + 10.0;
    assert!(
        attempts as f64 <= bound,
        "{attempts} upstream attempts for {requests} requests (bound {bound})"
    );
    assert!(attempts > requests, "some retries were allowed");

    gw.mock.clear_faults();
    gw.mock.clear_requests();
    // Let ejections run out so the recovered deployments are all back.
    tokio::time::sleep(Duration::from_secs(60)).await;
    for _ in 0..200 {
        assert!(ask(&gw, "trio").await.is_ok());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.mock.requests().len(), 200, "one attempt per request");
}

/// A stream cut after 5 chunks: the client gets those chunks, each once, then a well-formed
/// error event; the backup is never asked (no retry after the first byte).
#[tokio::test(start_paused = true)]
async fn issue6_stream_cut_after_five_chunks_ends_with_an_error_event() {
    let gw = Gateway::start("").await;
    gw.mock.push_fault(Fault {
        model: Some("primary".into()),
        cut_after_chunks: Some(5),
        ..Fault::default()
    });
    let body = json!({"model": "failover", "stream": true,
        "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten"}]});
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let payloads = sse_payloads(&text);
    let last = payloads.last().unwrap();
    assert!(last["error"]["message"].is_string(), "{text}");
    assert!(!text.contains("[DONE]"));
    let content: String = payloads
        .iter()
        .filter_map(|p| {
            p.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    // Frames 0..5 upstream: the role chunk, then 4 words ("Hello from mock! You").
    assert_eq!(content, "Hello from mock! You ");
    assert_eq!(upstream(&gw, "secondary"), 0);
    assert_eq!(upstream(&gw, "primary"), 1);
}

/// One deployment 500 ms slower: under least_latency its share falls under 10% within 10 s,
/// and comes back after it heals.
#[tokio::test(start_paused = true)]
async fn issue6_least_latency_avoids_a_slow_deployment_and_returns_to_it() {
    let gw = Gateway::start(
        r#"
[routes.duo]
strategy = "least_latency"
deployments = [{ provider = "up", model = "fast" }, { provider = "up", model = "slow" }]
[routes.duo.latency]
default_ms = 100
decay_secs = 5
"#,
    )
    .await;
    let fast = every(
        "fast",
        Fault {
            delay_ms: Some(20),
            ..Fault::default()
        },
    );
    gw.mock.push_fault(fast.clone());
    gw.mock.push_fault(every(
        "slow",
        Fault {
            delay_ms: Some(520),
            ..Fault::default()
        },
    ));
    // Open-loop traffic, one request every 50 ms, for `secs`; returns the deployments that
    // answered, in order.
    async fn traffic(gw: &Gateway, secs: u64) -> Vec<String> {
        let url = gw.url.clone();
        let mut tasks = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let resp = Gateway::client()
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&chat("duo", false))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                resp.headers()["x-relais-deployment"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            }));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }
    let first = traffic(&gw, 10).await;
    let slow = first.iter().filter(|d| *d == "up/slow").count();
    eprintln!(
        "figures: +500 ms deployment served {slow} of {} requests in the first 10 s",
        first.len()
    );
    assert!(
        (slow as f64) < 0.1 * first.len() as f64,
        "slow deployment served {slow} of {}",
        first.len()
    );
    // It heals: same speed as the other.
    gw.mock.clear_faults();
    gw.mock.push_fault(fast);
    gw.mock.push_fault(every(
        "slow",
        Fault {
            delay_ms: Some(20),
            ..Fault::default()
        },
    ));
    let healed = traffic(&gw, 60).await;
    let tail = &healed[healed.len() / 2..];
    let slow = tail.iter().filter(|d| *d == "up/slow").count();
    eprintln!(
        "figures: healed, it served {slow} of the last {} requests",
        tail.len()
    );
    assert!(
        slow as f64 > 0.25 * tail.len() as f64,
        "after healing it served {slow} of the last {}",
        tail.len()
    );
}

/// The client disconnects mid-stream: the upstream request is closed within a second.
#[tokio::test(start_paused = true)]
async fn issue6_client_disconnect_cancels_the_upstream_request() {
    let gw = Gateway::start("").await;
    gw.mock.push_fault(Fault {
        model: Some("gpt-4o-mini".into()),
        chunk_delay_ms: Some(200),
        ..Fault::default()
    });
    let body = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "a b c d e f g h i j k l m n o p q r s t"}]});
    let mut resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    let left_at = Instant::now();
    drop(resp);
    let mut waited = Duration::ZERO;
    while gw.mock.stream_ends().is_empty() && waited < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    let ends = gw.mock.stream_ends();
    assert_eq!(ends.len(), 1, "the upstream stream ended");
    assert!(!ends[0].completed, "it was cut, not finished");
    let after = ends[0].at.saturating_duration_since(left_at);
    eprintln!("figures: upstream stream closed {after:?} after the client left");
    assert!(
        after <= Duration::from_secs(1),
        "closed {after:?} after the client left"
    );
}

/// The upstream stalls mid-stream: the idle timeout fires at its configured value and the
/// client gets an error event.
#[tokio::test(start_paused = true)]
async fn issue6_idle_timeout_fires_when_the_upstream_stalls() {
    let gw = Gateway::start("[routes.stall]\nidle_timeout_secs = 2\ndeployments = [{ provider = \"up\", model = \"stall\" }]\n").await;
    gw.mock.push_fault(Fault {
        model: Some("stall".into()),
        stall_after_chunks: Some(3),
        ..Fault::default()
    });
    let mut resp = gw.post("/v1/chat/completions", &chat("stall", true)).await;
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    let mut last_at = Instant::now();
    let mut waited = Duration::ZERO;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        waited = last_at.elapsed();
        last_at = Instant::now();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    eprintln!("figures: idle timeout (2 s configured) fired after {waited:?}");
    // The wait before the last chunk (the error event) is the idle timeout.
    assert!(
        waited >= Duration::from_millis(1900) && waited <= Duration::from_millis(2200),
        "idle timeout after {waited:?}"
    );
    let content: String = sse_payloads(&text)
        .iter()
        .filter_map(|p| {
            p.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(
        content, "Hello from ",
        "the chunks before the stall arrived"
    );
    let last = sse_payloads(&text).pop().unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sent nothing for 2000 ms"),
        "{text}"
    );
}

/// Capability-aware selection: a request with tools skips a deployment configured without
/// them; a prompt too long for every deployment falls back to the long-context route.
#[tokio::test(start_paused = true)]
async fn issue6_capabilities_skip_deployments_and_context_falls_back() {
    let gw = Gateway::start(
        r#"
[routes.small]
deployments = [
  { provider = "up", model = "no-tools", tools = false, context_window = 64 },
  { provider = "backup", model = "tools", context_window = 64 },
]
fallbacks = { context_window = "long" }

[routes.long]
deployments = [{ provider = "up", model = "long", context_window = 100000 }]
"#,
    )
    .await;
    assert_eq!(ask(&gw, "small").await, Ok("up/no-tools".into()));
    let tools = json!({"model": "small", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]});
    let resp = gw.post("/v1/chat/completions", &tools).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-relais-deployment"], "backup/tools");
    let long_text = "word ".repeat(400);
    let long = json!({"model": "small", "messages": [{"role": "user", "content": long_text}]});
    let resp = gw.post("/v1/chat/completions", &long).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-relais-deployment"], "up/long");
    assert_eq!(upstream(&gw, "no-tools"), 1);
}

fn reload_config(mock: &str, version: usize) -> String {
    // Each version changes the route's deployment, strategy and timeouts.
    let strategy = ["failover", "weighted", "least_latency", "least_busy"][version % 4];
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
key = "{ADMIN_KEY}"
[providers.up]
type = "openai_compat"
base_url = "{mock}/v1"
api_key = "{key}"
[routes.r]
strategy = "{strategy}"
first_token_timeout_secs = {timeout}
deployments = [{{ provider = "up", model = "v{version}" }}]
"#,
        key = common::UPSTREAM_KEY,
        timeout = 30 + version,
    )
}

/// Hot reload under load: the config file changes ten times while four clients keep sending
/// requests; none fails, each change takes effect, and an invalid file is refused while the
/// last good config keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue6_hot_reload_under_load_loses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let mock = relais_testkit::MockServer::start(Some(common::UPSTREAM_KEY)).await;
    let dir = std::env::temp_dir().join(format!("relais-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relais.toml");
    std::fs::write(&path, reload_config(&mock.url(), 0)).unwrap();
    let (raw, source) = relais_server::config::load(&path).unwrap();
    let runtime = relais_server::config::build(&raw, &source, "relais.toml").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reload = relais_server::Reload {
        path: path.clone(),
        poll: Duration::from_millis(50),
        listen_override: None,
    };
    let server = tokio::spawn(relais_server::serve_with_reload(
        runtime,
        listener,
        async {
            let _ = stop_rx.await;
        },
        Some(reload),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (url, stop, ok, failed, seen) = (
            url.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            seen.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = Gateway::client();
            let mut n = 0usize;
            // Bounded: at most 20,000 requests per client, and only until told to stop.
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                let resp = client
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&chat("r", i % 2 == 0))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let dep = r.headers()["x-relais-deployment"]
                            .to_str()
                            .unwrap()
                            .to_owned();
                        let body = r.text().await.unwrap_or_default();
                        // A whole answer, or a stream that ended with [DONE] and no error.
                        let whole = if i % 2 == 0 {
                            body.ends_with("data: [DONE]\n\n")
                        } else {
                            body.contains("Hello from mock!")
                        };
                        if whole && !body.contains("\"error\"") {
                            ok.fetch_add(1, Ordering::Relaxed);
                            *seen.lock().unwrap() = dep;
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let wait_for = |dep: String| {
        let seen = seen.clone();
        async move {
            let t0 = std::time::Instant::now();
            while *seen.lock().unwrap() != dep {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "config with {dep} never took effect"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for("up/v0".into()).await;
    for version in 1..=10 {
        std::fs::write(&path, reload_config(&mock.url(), version)).unwrap();
        wait_for(format!("up/v{version}")).await;
    }
    // An empty file (one being rewritten in place, caught between its truncation and its
    // write) is not a config to switch to: the running one stays.
    std::fs::write(&path, "").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, reload_config(&mock.url(), 10)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*seen.lock().unwrap(), "up/v10");
    // An invalid file (a route naming a provider that does not exist) is refused.
    let broken = reload_config(&mock.url(), 11).replace("provider = \"up\"", "provider = \"nope\"");
    std::fs::write(&path, broken).unwrap();
    let served_before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *seen.lock().unwrap(),
        "up/v10",
        "the last good config serves on"
    );
    assert!(
        ok.load(Ordering::Relaxed) > served_before,
        "traffic continued"
    );

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "figures: hot reload: {} requests ok, {} failed, across 10 reloads and 1 refused file",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
}

/// Per-deployment limits from the vendor contract: traffic moves to the backup before the
/// primary would answer 429, and with nowhere left to go the client gets a 429 with the time to
/// wait, without any vendor being called.
#[tokio::test(start_paused = true)]
async fn issue6_deployment_limits_spread_traffic_before_the_vendor_refuses() {
    let gw = Gateway::start(
        r#"
[routes.limited]
deployments = [
  { provider = "up", model = "contract", rpm = 3 },
  { provider = "backup", model = "spare", rpm = 2 },
]
"#,
    )
    .await;
    let mut served = Vec::new();
    for _ in 0..5 {
        served.push(ask(&gw, "limited").await.unwrap());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        served,
        [
            "up/contract",
            "up/contract",
            "up/contract",
            "backup/spare",
            "backup/spare"
        ]
    );
    let resp = gw
        .post("/v1/chat/completions", &chat("limited", false))
        .await;
    assert_eq!(resp.status(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The first request of the minute leaves the window about 55 s from now.
    assert!((50..=60).contains(&wait), "retry-after {wait}");
    assert_eq!(
        gw.mock.requests().len(),
        5,
        "no vendor was called for the 429"
    );
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(ask(&gw, "limited").await, Ok("up/contract".into()));
}
