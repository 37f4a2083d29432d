//! Virtual keys and teams end to end (issue 7, first part): issued through the admin API,
//! checked on every request, scoped to routes, rotated and revoked; against both stores,
//! SQLite and PostgreSQL. PostgreSQL must be reachable on 127.0.0.1:5432 (`.ci/run` starts it).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failure is a failed test"
)]

mod common;

use common::{ADMIN, Gateway, admin, error_of, redis_cli, redis_on, store, unique};
use relais_testkit::psql;
use serde_json::{Value, json};

async fn chat(gw: &Gateway, model: &str, key: Option<&str>) -> reqwest::Response {
    let rb = Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
    match key {
        Some(k) => rb.bearer_auth(k),
        None => rb,
    }
    .send()
    .await
    .unwrap()
}

async fn keys_lifecycle(kind: &str) {
    let (section, dump) = store(kind).await;
    let extra = format!("[admin]\nkey = \"{ADMIN}\"\n{section}");
    let gw = Gateway::start(&extra).await;

    // No key issued yet: the gateway is open, as before.
    assert_eq!(chat(&gw, "gpt-4o-mini", None).await.status(), 200);

    let (status, team) = admin(
        &gw,
        "POST",
        "/admin/teams",
        Some(json!({"name": "search", "routes": ["gpt-4o-mini", "emb"]})),
    )
    .await;
    assert_eq!(status, 201, "{team}");
    let (status, err) = admin(
        &gw,
        "POST",
        "/admin/teams",
        Some(json!({"name": "x", "routes": ["nope"]})),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    // A key cannot be given more than its team holds.
    let (status, err) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "search", "name": "too much", "routes": ["failover"]})),
    )
    .await;
    assert_eq!(status, 403, "{err}");
    let (status, issued) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "search", "name": "app"})),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let key = issued["key"].as_str().unwrap().to_owned();
    let id = issued["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("rk-") && key.len() == 67, "{key}");
    assert!(key.starts_with(issued["prefix"].as_str().unwrap()));
    assert_eq!(
        issued["routes"],
        json!(["gpt-4o-mini", "emb"]),
        "inherits the team's routes"
    );

    // Now a key is required, and it is scoped.
    error_of(chat(&gw, "gpt-4o-mini", None).await, 401).await;
    assert_eq!(chat(&gw, "gpt-4o-mini", Some(&key)).await.status(), 200);
    let e = error_of(chat(&gw, "failover", Some(&key)).await, 404).await;
    assert_eq!(e["code"], "model_not_found");
    error_of(chat(&gw, "gpt-4o-mini", Some("rk-0000")).await, 401).await;

    // The store holds no secret: not the key, and its hash does not authenticate.
    let stored = dump(false);
    assert!(!stored.contains(&key), "plaintext key in the {kind} store");
    let hash = relais_governance::hash_key(&key);
    assert!(stored.contains(&hash), "the {kind} store keeps the hash");
    error_of(chat(&gw, "gpt-4o-mini", Some(&hash)).await, 401).await;

    // Listing shows prefixes, never secrets.
    let (_, list) = admin(&gw, "GET", "/admin/keys", None).await;
    let listed = list.to_string();
    assert!(
        !listed.contains(&key) && !listed.contains(&hash),
        "{listed}"
    );
    assert_eq!(list["keys"][0]["prefix"], issued["prefix"]);

    // Another instance on the same store accepts the key at once (a cache miss reads the store).
    let other = Gateway::start(&extra).await;
    assert_eq!(chat(&other, "gpt-4o-mini", Some(&key)).await.status(), 200);

    // Rotation: the old secret stops, the new one works.
    let (status, rotated) = admin(&gw, "POST", &format!("/admin/keys/{id}/rotate"), None).await;
    assert_eq!(status, 200, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    error_of(chat(&gw, "gpt-4o-mini", Some(&key)).await, 401).await;
    assert_eq!(chat(&gw, "gpt-4o-mini", Some(&new_key)).await.status(), 200);

    // Revocation: refused here at once, on the other instance within its refresh (1 s).
    assert_eq!(
        chat(&other, "gpt-4o-mini", Some(&new_key)).await.status(),
        200
    );
    let (status, _) = admin(&gw, "POST", &format!("/admin/keys/{id}/revoke"), None).await;
    assert_eq!(status, 200);
    let e = error_of(chat(&gw, "gpt-4o-mini", Some(&new_key)).await, 401).await;
    assert!(e["message"].as_str().unwrap().contains("revoked"), "{e}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    error_of(chat(&other, "gpt-4o-mini", Some(&new_key)).await, 401).await;
    let (status, err) = admin(&gw, "POST", "/admin/keys/key_nope/revoke", None).await;
    assert_eq!(status, 404, "{err}");
    drop((gw, other));
    dump(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_virtual_keys_with_sqlite() {
    keys_lifecycle("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_virtual_keys_with_postgres() {
    keys_lifecycle("postgres").await;
}

#[tokio::test]
async fn admin_key_endpoints_need_governance_and_the_admin_key() {
    let gw = Gateway::start(&format!("[admin]\nkey = \"{ADMIN}\"\n")).await;
    let (status, e) = admin(&gw, "GET", "/admin/keys", None).await;
    assert_eq!(status, 404, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[governance]")
    );
    let resp = Gateway::client()
        .get(format!("{}/admin/keys", gw.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

async fn issue(gw: &Gateway, team: Value, key: Value) -> String {
    let (status, t) = admin(gw, "POST", "/admin/teams", Some(team)).await;
    assert_eq!(status, 201, "{t}");
    let (status, k) = admin(gw, "POST", "/admin/keys", Some(key)).await;
    assert_eq!(status, 201, "{k}");
    k["key"].as_str().unwrap().to_owned()
}

/// Per-key and per-team limits: requests per minute over a sliding minute, requests at once, and
/// tokens per minute with a reservation (prompt + max_tokens) settled to the real usage.
async fn limits_hold(kind: &str) {
    let (section, dump) = store(kind).await;
    let gw = Gateway::start(&format!("[admin]\nkey = \"{ADMIN}\"\n{section}")).await;

    // A key may not be given more than its team.
    let (status, _) = admin(
        &gw,
        "POST",
        "/admin/teams",
        Some(json!({"name": "small", "rpm": 10})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, e) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "small", "name": "greedy", "rpm": 11})),
    )
    .await;
    assert_eq!(status, 403, "{e}");

    // RPM 3 on the key: the fourth request in the minute is a 429 with the wait.
    let key = issue(
        &gw,
        json!({"name": "rpm"}),
        json!({"team": "rpm", "name": "k", "rpm": 3}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(chat(&gw, "gpt-4o-mini", Some(&key)).await.status(), 200);
    }
    let resp = chat(&gw, "gpt-4o-mini", Some(&key)).await;
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "retry-after {wait}");
    let e = error_of(resp, 429).await;
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("3 requests per minute"),
        "{e}"
    );

    // One request at once for the team: a second while the first waits on a slow upstream is
    // refused; after it, the next one passes.
    let key = issue(
        &gw,
        json!({"name": "serial", "max_concurrent": 1}),
        json!({"team": "serial", "name": "k"}),
    )
    .await;
    gw.mock.push_fault(relais_testkit::Fault {
        model: Some("gpt-4o-mini".into()),
        delay_ms: Some(500),
        ..Default::default()
    });
    let slow = {
        let (url, key) = (gw.url.clone(), key.clone());
        tokio::spawn(async move {
            Gateway::client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let e = error_of(chat(&gw, "gpt-4o-mini", Some(&key)).await, 429).await;
    assert!(
        e["message"].as_str().unwrap().contains("team 'serial'"),
        "{e}"
    );
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(chat(&gw, "gpt-4o-mini", Some(&key)).await.status(), 200);

    // TPM 100: a request reserving ~85 (prompt + max_tokens 80) holds the room while it runs;
    // settled to its real usage (~10 tokens), it leaves room for the next.
    let key = issue(
        &gw,
        json!({"name": "tokens"}),
        json!({"team": "tokens", "name": "k", "tpm": 100}),
    )
    .await;
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 80, "messages": [{"role": "user", "content": "hi"}]});
    gw.mock.push_fault(relais_testkit::Fault {
        model: Some("gpt-4o-mini".into()),
        delay_ms: Some(500),
        ..Default::default()
    });
    let first = {
        let (url, key, body) = (gw.url.clone(), key.clone(), body.clone());
        tokio::spawn(async move {
            Gateway::client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let send = || {
        Gateway::client()
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let e = error_of(send().await.unwrap(), 429).await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("100 tokens per minute"),
        "{e}"
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(
        send().await.unwrap().status(),
        200,
        "settled to the real usage"
    );
    // Too big on its own: refused without a retry-after, whatever the minute holds.
    let huge = json!({"model": "gpt-4o-mini", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]});
    let resp = Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("retry-after").is_none());
    error_of(resp, 429).await;
    drop(gw);
    dump(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_key_and_team_limits_with_sqlite() {
    limits_hold("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_key_and_team_limits_with_postgres() {
    limits_hold("postgres").await;
}

/// Three instances sharing one key store and one Redis: a key's limits hold across all of them.
async fn limits_across_instances(kind: &str) {
    let (section, dump) = store(kind).await;
    let prefix = unique("relais_test");
    let extra = format!(
        "[admin]\nkey = \"{ADMIN}\"\n{section}limits = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{prefix}\"\n"
    );
    let gws = [
        Gateway::start(&extra).await,
        Gateway::start(&extra).await,
        Gateway::start(&extra).await,
    ];
    let key = issue(
        &gws[0],
        json!({"name": "shared"}),
        json!({"team": "shared", "name": "k", "rpm": 100}),
    )
    .await;

    // 300 requests from 30 clients spread over the three instances, all within the minute.
    let urls: Vec<String> = gws.iter().map(|g| g.url.clone()).collect();
    let mut tasks = Vec::new();
    for w in 0..30 {
        let (urls, key) = (urls.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..10 {
                let url = &urls[(w + i) % 3];
                let status = Gateway::client()
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                assert!(status == 200 || status == 429, "status {status}");
                ok += usize::from(status == 200);
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    let upstream: usize = gws.iter().map(|g| g.mock.requests().len()).sum();
    eprintln!(
        "figures: {kind}+redis: 300 requests over 3 instances, key limit 100/min: {ok} admitted, {upstream} reached the upstreams"
    );
    assert_eq!(ok, upstream);
    assert!(upstream <= 100, "{upstream} admitted past a limit of 100");
    assert!(upstream >= 99, "only {upstream} of 100 admitted");

    // Redis holds key and team ids, never a key or its hash.
    let everything = redis_cli(&[
        "EVAL",
        "local out = {} for _, k in ipairs(redis.call('KEYS', ARGV[1])) do table.insert(out, k) \
         local t = redis.call('TYPE', k).ok \
         if t == 'hash' then for _, v in ipairs(redis.call('HGETALL', k)) do table.insert(out, v) end \
         elseif t == 'zset' then for _, v in ipairs(redis.call('ZRANGE', k, 0, -1)) do table.insert(out, v) end end end \
         return table.concat(out, ' ')",
        "0",
        &format!("{prefix}:*"),
    ]);
    assert!(
        everything.contains("key_"),
        "nothing read from Redis: {everything}"
    );
    assert!(!everything.contains(&key[3..]), "a key's secret in Redis");
    assert!(
        !everything.contains(&relais_governance::hash_key(&key)),
        "a key's hash in Redis"
    );

    // TPM across instances: streaming and whole requests of random real lengths (prompts of 5 to
    // 80 words, output caps of 10 to 150 tokens, answers the length of the prompt plus four
    // words, cut at the cap), released together over the three instances under 3000 TPM while
    // a sampler reads the committed total from Redis every few milliseconds.
    const TPM: u64 = 3000;
    let key = issue(
        &gws[0],
        json!({"name": "tpm"}),
        json!({"team": "tpm", "name": "k", "tpm": TPM}),
    )
    .await;
    let team_id = {
        let (_, teams) = admin(&gws[0], "GET", "/admin/teams", None).await;
        teams["teams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "tpm")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for g in &gws {
        g.mock.push_fault(relais_testkit::Fault {
            delay_ms: Some(150),
            times: Some(0),
            ..Default::default()
        });
        g.mock.clear_requests();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, tok) = (stop.clone(), format!("{prefix}:{team_id}:tok"));
        tokio::task::spawn_blocking(move || {
            let (mut max, mut samples) = (0u64, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v = redis_cli(&["HGET", &tok, "_total"]);
                max = max.max(v.parse().unwrap_or(0));
                samples += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            (max, samples)
        })
    };
    let mut rng = fastrand::Rng::with_seed(7);
    let mut tasks = Vec::new();
    for w in 0..60 {
        let words = rng.usize(5..=80);
        let prompt: Vec<String> = (0..words)
            .map(|i| format!("w{}", (i * 7 + w) % 97))
            .collect();
        let max_tokens = rng.u64(10..=150);
        let stream = rng.bool();
        let (url, key) = (urls[w % 3].clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut body = json!({
                "model": "gpt-4o-mini", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": prompt.join(" ")}],
            });
            if stream {
                body["stream"] = json!(true);
                body["stream_options"] = json!({"include_usage": true});
            }
            let resp = Gateway::client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            if status != 200 {
                assert_eq!(status, 429, "{text}");
                return (stream, None);
            }
            let usage = if stream {
                text.lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                    .find_map(|c| c["usage"]["total_tokens"].as_u64())
            } else {
                serde_json::from_str::<Value>(&text).unwrap()["usage"]["total_tokens"].as_u64()
            };
            (stream, Some(usage.expect("a usage figure in every answer")))
        }));
    }
    let (mut admitted, mut streams, mut used) = (0, 0, 0);
    for t in tasks {
        if let (stream, Some(tokens)) = t.await.unwrap() {
            admitted += 1;
            streams += usize::from(stream);
            used += tokens;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak, samples) = sampler.await.unwrap();
    let total: u64 = redis_cli(&["HGET", &format!("{prefix}:{team_id}:tok"), "_total"])
        .parse()
        .unwrap();
    let in_flight = redis_cli(&["ZCARD", &format!("{prefix}:{team_id}:cur")]);
    // What the upstreams saw and reported: every admitted request, nothing else.
    let upstream: usize = gws.iter().map(|g| g.mock.requests().len()).sum();
    eprintln!(
        "figures: {kind}+redis TPM {TPM}: {admitted} of 60 admitted ({streams} streams), {used} tokens \
         reported, {total} counted after settlement, committed peak {peak} over {samples} samples"
    );
    assert_eq!(
        upstream, admitted,
        "the upstreams saw exactly the admitted requests"
    );
    assert!((10..60).contains(&admitted), "{admitted} admitted");
    assert!(streams >= 1 && streams < admitted, "both kinds admitted");
    assert_eq!(total, used, "reservations settled to the reported usage");
    assert!(used <= TPM, "{used} tokens used in one window past {TPM}");
    assert!(peak <= TPM, "committed {peak} tokens past {TPM}");
    assert!(samples >= 5, "the sampler ran {samples} times");
    assert_eq!(
        in_flight, "0",
        "no reservation left in flight after the last response"
    );

    // Leave nothing behind in the shared Redis.
    let _ = redis_cli(&[
        "EVAL",
        &format!(
            "for _, k in ipairs(redis.call('KEYS', '{prefix}:*')) do redis.call('DEL', k) end return 0"
        ),
        "0",
    ]);
    drop(gws);
    dump(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_limits_hold_across_three_instances_with_sqlite_and_redis() {
    limits_across_instances("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_limits_hold_across_three_instances_with_postgres_and_redis() {
    limits_across_instances("postgres").await;
}

/// Redis down at start and during requests: limited keys are refused (fail closed, the default)
/// with a 503 and `/readyz` says so; when Redis comes up the instance connects on its own and
/// serves them. Failing open admits them while Redis is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_redis_down_fails_closed_and_recovers_on_its_own() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (section, dump) = store("sqlite").await;
    let prefix = unique("relais_down");
    let gov = |mode: &str| {
        format!(
            "[admin]\nkey = \"{ADMIN}\"\n{section}limits = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}\"\nredis_prefix = \"{prefix}\"\nwhen_redis_down = \"{mode}\"\n"
        )
    };
    let gw = Gateway::start(&gov("closed")).await;
    let key = issue(
        &gw,
        json!({"name": "down"}),
        json!({"team": "down", "name": "k", "rpm": 1000}),
    )
    .await;
    let e = error_of(chat(&gw, "gpt-4o-mini", Some(&key)).await, 503).await;
    assert!(
        e["message"].as_str().unwrap().contains("limit store"),
        "{e}"
    );
    let ready = Gateway::client()
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        gw.get_text("/metrics")
            .await
            .contains("relais_limit_store_up{kind=\"redis\"} 0")
    );

    // Failing open, the same key passes while Redis is down.
    let open = Gateway::start(&gov("open")).await;
    assert_eq!(chat(&open, "gpt-4o-mini", Some(&key)).await.status(), 200);

    // Redis comes up: the closed instance connects by itself within a few seconds.
    let mut redis = redis_on(port);
    // With no traffic at all (a balancer that follows /readyz sends none), the instance finds
    // Redis by itself and says it is ready again.
    let t0 = std::time::Instant::now();
    let mut ready = 0;
    while t0.elapsed() < std::time::Duration::from_secs(10) {
        ready = Gateway::client()
            .get(format!("{}/readyz", gw.url))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if ready == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!(
        "figures: Redis back; /readyz 200 again after {:?} with no traffic",
        t0.elapsed()
    );
    let status = chat(&gw, "gpt-4o-mini", Some(&key)).await.status().as_u16();
    let metrics = gw.get_text("/metrics").await;
    let _ = redis.kill();
    let _ = redis.wait();
    assert_eq!(ready, 200, "the instance did not become ready again");
    assert_eq!(status, 200, "the instance did not recover");
    assert!(metrics.contains("relais_limit_store_up{kind=\"redis\"} 1"));
    drop((gw, open));
    dump(true);
}

/// PostgreSQL goes away under a running instance and comes back (as in a restart or a
/// failover): its sessions are cut and new ones refused for a while (the instance's role is
/// made NOLOGIN, so nothing else sharing the server is touched). Requests on keys already
/// known go on, their ledger rows wait on disk, `/readyz` says degraded, issuing a key fails
/// fast; then the instance reconnects by itself, ships every row and issues keys again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_postgres_outage_heals_on_its_own() {
    let role = unique("relais_heal");
    psql(&format!(
        "CREATE ROLE {role} LOGIN; CREATE SCHEMA {role} AUTHORIZATION {role}"
    ));
    let url =
        format!("host=127.0.0.1 port=5432 user={role} dbname=test options='-c search_path={role}'");
    let gw = Gateway::start(&format!(
        "[admin]\nkey = \"{ADMIN}\"\n[governance]\nstore = \"postgres\"\npostgres_url = \"{url}\"\nrefresh_secs = 1\nledger_ship_ms = 100\n"
    ))
    .await;
    let key = issue(
        &gw,
        json!({"name": "heal"}),
        json!({"team": "heal", "name": "k"}),
    )
    .await;
    assert_eq!(chat(&gw, "gpt-4o-mini", Some(&key)).await.status(), 200);
    let readyz = || async {
        let r = Gateway::client()
            .get(format!("{}/readyz", gw.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };

    psql(&format!(
        "ALTER ROLE {role} NOLOGIN; SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{role}'"
    ));
    for _ in 0..20 {
        assert_eq!(chat(&gw, "gpt-4o-mini", Some(&key)).await.status(), 200);
    }
    let t0 = std::time::Instant::now();
    let mut seen = Value::Null;
    while t0.elapsed() < std::time::Duration::from_secs(10) {
        let (status, body) = readyz().await;
        assert_eq!(status, 200, "a store outage does not stop serving: {body}");
        if body.get("keys").is_some() && body.get("ledger").is_some() {
            seen = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen["status"], "degraded", "{seen}");
    let metrics = gw.get_text("/metrics").await;
    assert!(metrics.contains("relais_ledger_store_up 0"), "{metrics}");
    assert!(metrics.contains("relais_key_store_up{kind=\"postgres\"} 0"));
    let waiting: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("relais_ledger_backlog_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(waiting > 0, "rows written during the outage wait on disk");
    let t1 = std::time::Instant::now();
    let (status, body) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "heal", "name": "k2"})),
    )
    .await;
    assert!(status >= 500, "{status} {body}");
    assert!(
        t1.elapsed() < std::time::Duration::from_secs(7),
        "issuing a key hung"
    );
    assert!(
        !body.to_string().contains(&role),
        "the store's address in an error: {body}"
    );

    psql(&format!("ALTER ROLE {role} LOGIN"));
    let t0 = std::time::Instant::now();
    let mut back = Value::Null;
    while t0.elapsed() < std::time::Duration::from_secs(40) {
        let (_, body) = readyz().await;
        if body["status"] == "ready" {
            back = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!(
        "figures: PostgreSQL back; /readyz {} after {:?}, no restart",
        back["status"],
        t0.elapsed()
    );
    assert_eq!(back["status"], "ready", "the instance did not heal");
    let new_key = issue(
        &gw,
        json!({"name": "heal2"}),
        json!({"team": "heal2", "name": "k"}),
    )
    .await;
    assert_eq!(chat(&gw, "gpt-4o-mini", Some(&new_key)).await.status(), 200);
    let (status, usage) = admin(&gw, "GET", "/admin/usage?by=key", None).await;
    assert_eq!(status, 200, "{usage}");
    let requests: u64 = usage["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(
        requests, 22,
        "every request has its row in the store: {usage}"
    );
    assert_eq!(
        gw.get_text("/metrics")
            .await
            .lines()
            .find(|l| l.starts_with("relais_ledger_backlog_bytes ")),
        Some("relais_ledger_backlog_bytes 0")
    );
    drop(gw);
    psql(&format!("DROP SCHEMA {role} CASCADE; DROP ROLE {role}"));
}

/// Prices that make every token count: USD 0.123457 and 1.000003 per million tokens.
const ODD_PRICES: &str = "[prices.\"gpt-4o-mini\"]\ninput = \"0.123457\"\noutput = \"1.000003\"\n";

/// What the mock reported for every request it answered: (prompt, completion) tokens.
fn mock_usage(gw: &Gateway, model: &str) -> (u64, u64) {
    gw.mock
        .requests()
        .iter()
        .filter(|r| r.body["model"] == model)
        .fold((0, 0), |(i, o), r| {
            (
                i + relais_testkit::prompt_tokens(&r.body),
                o + relais_testkit::completion_tokens(&relais_testkit::reply_for(&r.body)),
            )
        })
}

/// The ledger: one row per request and per attempt; its token and money sums equal what the
/// mock reported, to the token and the pico-dollar; streams included.
async fn ledger_adds_up(kind: &str) {
    let (section, dump) = store(kind).await;
    let gw = Gateway::start(&format!(
        "[admin]\nkey = \"{ADMIN}\"\n{ODD_PRICES}{section}"
    ))
    .await;
    let key = issue(
        &gw,
        json!({"name": "ledger"}),
        json!({"team": "ledger", "name": "k"}),
    )
    .await;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut streamed = 0;
    for i in 0..40 {
        let words: Vec<String> = (0..rng.usize(1..60)).map(|w| format!("w{w}")).collect();
        let stream = i % 2 == 1;
        streamed += usize::from(stream);
        let resp = Gateway::client()
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(
                &json!({"model": "gpt-4o-mini", "max_tokens": rng.u64(1..50), "stream": stream,
                "messages": [{"role": "user", "content": words.join(" ")}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(!resp.text().await.unwrap().is_empty());
    }
    let (input, output) = mock_usage(&gw, "gpt-4o-mini");
    let cost = input * 123_457 + output * 1_000_003;
    let (status, usage) = admin(&gw, "GET", "/admin/usage?by=key", None).await;
    assert_eq!(status, 200, "{usage}");
    let lines = usage["usage"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{usage}");
    let line = &lines[0];
    eprintln!(
        "figures: {kind}: 40 requests ({streamed} streamed): mock reported {input} + {output} tokens, {cost} pico-USD; ledger {} + {}, {}",
        line["input_tokens"], line["output_tokens"], line["cost_pusd"]
    );
    assert_eq!(line["requests"], 40);
    assert_eq!(line["input_tokens"], input);
    assert_eq!(line["output_tokens"], output);
    assert_eq!(line["cost_pusd"], cost);
    assert_eq!(usage["total_cost_pusd"], cost);
    let (_, by_day) = admin(&gw, "GET", "/admin/usage?by=day&route=gpt-4o-mini", None).await;
    assert_eq!(by_day["usage"].as_array().unwrap().len(), 1, "{by_day}");
    assert_eq!(by_day["usage"][0]["cost_pusd"], cost);
    let (status, bad) = admin(&gw, "GET", "/admin/usage?by=colour", None).await;
    assert_eq!(status, 400, "{bad}");

    // A failover: the primary fails once; the ledger holds the request, the failed attempt
    // and the attempt that served.
    gw.mock.push_fault(relais_testkit::Fault {
        model: Some("primary".to_owned()),
        status: Some(500),
        ..Default::default()
    });
    let resp = chat(&gw, "failover", Some(&key)).await;
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let (status, rows) = admin(&gw, "GET", &format!("/admin/ledger/{rid}"), None).await;
    assert_eq!(status, 200, "{rows}");
    let rows = rows["rows"].as_array().unwrap();
    let summary: Vec<(u64, u64, &str, Option<&str>)> = rows
        .iter()
        .map(|r| {
            (
                r["attempt"].as_u64().unwrap(),
                r["status"].as_u64().unwrap(),
                r["model"].as_str().unwrap(),
                r["error_class"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (0, 200, "secondary", None),
            (1, 500, "primary", Some("server")),
            (2, 200, "secondary", None),
        ],
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r["key_id"] == rows[0]["key_id"] && r["team_id"].is_string())
    );
    drop(gw);
    dump(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_ledger_adds_up_to_the_unit_with_sqlite() {
    ledger_adds_up("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_ledger_adds_up_to_the_unit_with_postgres() {
    ledger_adds_up("postgres").await;
}

/// Output costs USD 1 per million tokens and input nothing, so a request with `max_tokens = 10`
/// costs at most 10 µUSD whatever its prompt: a budget of 50 µUSD holds exactly five.
const BUDGET_PRICES: &str = "[prices.\"gpt-4o-mini\"]\ninput = \"0\"\noutput = \"1\"\n";

/// 64 requests released together (spread over `urls`) on a slow upstream, so all are in flight
/// at once; returns how many were admitted, checking every refusal is a budget's 402.
async fn budget_race(urls: &[String], key: &str) -> usize {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (url, key, start) = (urls[i % urls.len()].clone(), key.to_owned(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let resp = Gateway::client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&json!({"model": "gpt-4o-mini", "max_tokens": 10,
                    "messages": [{"role": "user", "content": "count to ten please"}]}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            if status != 200 {
                let e = error_of(resp, 402).await;
                assert_eq!(e["code"], "budget_exceeded", "{e}");
            }
            status == 200
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    admitted
}

/// Budgets on one instance: a key cannot get more than its team; spend is refused before it
/// could pass the budget, in each client's dialect; 64 concurrent requests against a budget of
/// five worst cases admit five.
async fn budgets_hold(kind: &str) {
    let (section, dump) = store(kind).await;
    let gw = Gateway::start(&format!(
        "[admin]\nkey = \"{ADMIN}\"\n{BUDGET_PRICES}{section}"
    ))
    .await;
    let (status, _) = admin(
        &gw,
        "POST",
        "/admin/teams",
        Some(json!({"name": "b", "budget_day": "0.00005"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, e) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "b", "name": "greedy", "budget_day": "0.00006"})),
    )
    .await;
    assert_eq!(status, 403, "{e}");
    let (status, e) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "b", "name": "bad", "budget_day": "lots"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    let (status, k) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "b", "name": "k"})),
    )
    .await;
    assert_eq!(status, 201);
    let key = k["key"].as_str().unwrap().to_owned();

    // One at a time until refused: each request reserves 10 µUSD and spends what it used.
    let mut served = 0;
    let refused = loop {
        let resp = Gateway::client()
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-4o-mini", "max_tokens": 10,
                "messages": [{"role": "user", "content": "count to ten please"}]}))
            .send()
            .await
            .unwrap();
        if resp.status() != 200 {
            break resp;
        }
        served += 1;
        assert!(served < 100, "the budget never refused");
    };
    let e = error_of(refused, 402).await;
    assert_eq!(e["code"], "budget_exceeded");
    assert_eq!(e["type"], "insufficient_quota");
    assert!(
        e["message"].as_str().unwrap().contains("daily budget"),
        "{e}"
    );
    let resp = Gateway::client()
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", &key)
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "billing_error", "{v}");
    let (_, usage) = admin(&gw, "GET", "/admin/usage?by=team", None).await;
    let spent = usage["total_cost_pusd"].as_u64().unwrap();
    let (_, output) = mock_usage(&gw, "gpt-4o-mini");
    eprintln!(
        "figures: {kind}: daily budget 50 µUSD, 10 µUSD reserved per request: {served} served, spent {spent} pico-USD"
    );
    assert_eq!(
        spent,
        output * 1_000_000,
        "the ledger charged what the mock reported"
    );
    assert!(spent <= 50_000_000, "spent {spent} past the budget");
    assert!(
        spent + 10_000_000 > 50_000_000,
        "refused while a worst case still fit: spent {spent}"
    );

    // The race: 64 at once against a fresh budget of five worst cases.
    let key = issue(
        &gw,
        json!({"name": "race", "budget_total": "0.00005"}),
        json!({"team": "race", "name": "k"}),
    )
    .await;
    gw.mock.push_fault(relais_testkit::Fault {
        delay_ms: Some(300),
        times: Some(0),
        ..Default::default()
    });
    let admitted = budget_race(std::slice::from_ref(&gw.url), &key).await;
    eprintln!("figures: {kind}: 64 requests at once, budget of 5 worst cases: {admitted} admitted");
    assert_eq!(admitted, 5);
    drop(gw);
    dump(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_budgets_hold_with_sqlite() {
    budgets_hold("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_budgets_hold_with_postgres() {
    budgets_hold("postgres").await;
}

/// The budget race across three instances sharing one Redis and one store: at most five of 64
/// admitted, and what they spent stays within the budget.
async fn budget_race_across_instances(kind: &str) {
    let (section, dump) = store(kind).await;
    let prefix = unique("relais_budget");
    let extra = format!(
        "[admin]\nkey = \"{ADMIN}\"\n{BUDGET_PRICES}{section}limits = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{prefix}\"\n"
    );
    let gws = [
        Gateway::start(&extra).await,
        Gateway::start(&extra).await,
        Gateway::start(&extra).await,
    ];
    let key = issue(
        &gws[0],
        json!({"name": "race", "budget_total": "0.00005"}),
        json!({"team": "race", "name": "k"}),
    )
    .await;
    for g in &gws {
        g.mock.push_fault(relais_testkit::Fault {
            delay_ms: Some(300),
            times: Some(0),
            ..Default::default()
        });
    }
    let urls: Vec<String> = gws.iter().map(|g| g.url.clone()).collect();
    let admitted = budget_race(&urls, &key).await;
    let upstream: usize = gws.iter().map(|g| g.mock.requests().len()).sum();
    let output: u64 = gws.iter().map(|g| mock_usage(g, "gpt-4o-mini").1).sum();
    // Rows of the other instances reach the shared store within their ship interval.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let (_, usage) = admin(&gws[0], "GET", "/admin/usage?by=team", None).await;
    let spent: u64 = usage["total_cost_pusd"].as_u64().unwrap();
    eprintln!(
        "figures: {kind}+redis: 64 requests over 3 instances, budget of 5 worst cases: {admitted} admitted, {upstream} reached the upstreams; spent {spent} of 50000000 pico-USD"
    );
    assert!((1..=5).contains(&admitted), "{admitted} admitted");
    assert_eq!(admitted, upstream);
    assert_eq!(spent, output * 1_000_000);
    assert!(spent <= 50_000_000, "spent {spent} past the budget");
    let _ = redis_cli(&[
        "EVAL",
        &format!(
            "for _, k in ipairs(redis.call('KEYS', '{prefix}:*')) do redis.call('DEL', k) end return 0"
        ),
        "0",
    ]);
    drop(gws);
    dump(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_budget_race_across_three_instances_with_sqlite_and_redis() {
    budget_race_across_instances("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_budget_race_across_three_instances_with_postgres_and_redis() {
    budget_race_across_instances("postgres").await;
}

/// Allowed vendors and data classes: a key's requests go only to deployments of its vendors
/// that accept its data class; a class it may not send, or a policy that leaves nothing, is a
/// 403 before any upstream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_vendor_and_data_class_policies_choose_deployments() {
    let (section, dump) = store("sqlite").await;
    let gw = Gateway::start(&format!(
        "[admin]\nkey = \"{ADMIN}\"\n{section}\n[routes.classy]\ndeployments = [{{ provider = \"up\", model = \"public-only\", data_classes = [\"public\"] }}, {{ provider = \"backup\", model = \"anything\", vendor = \"onprem\" }}]\n"
    ))
    .await;
    let (status, e) = admin(
        &gw,
        "POST",
        "/admin/teams",
        Some(json!({"name": "p", "vendors": ["up", "onprem"], "data_classes": ["confidential", "public"]})),
    )
    .await;
    assert_eq!(status, 201, "{e}");
    let (status, e) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "p", "name": "wide", "vendors": ["elsewhere"]})),
    )
    .await;
    assert_eq!(status, 403, "{e}");
    let (_, k) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "p", "name": "k"})),
    )
    .await;
    let key = k["key"].as_str().unwrap().to_owned();
    let (_, k) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "p", "name": "up-only", "vendors": ["up"]})),
    )
    .await;
    let up_only = k["key"].as_str().unwrap().to_owned();
    assert_eq!(k["vendors"], json!(["up"]));

    let ask = |key: String, class: Option<&'static str>| {
        let url = gw.url.clone();
        async move {
            let mut rb = Gateway::client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "classy", "messages": [{"role": "user", "content": "hi"}]}));
            if let Some(c) = class {
                rb = rb.header("x-relais-data-class", c);
            }
            rb.send().await.unwrap()
        }
    };
    let deployment = |r: &reqwest::Response| {
        r.headers()
            .get("x-relais-deployment")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // Unmarked: the key's first class, confidential: not to the public-only deployment.
    let r = ask(key.clone(), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(deployment(&r).as_deref(), Some("backup/anything"));
    // Marked public: the primary takes it.
    let r = ask(key.clone(), Some("public")).await;
    assert_eq!(deployment(&r).as_deref(), Some("up/public-only"));
    // A class the key may not send.
    let e = error_of(ask(key.clone(), Some("secret")).await, 403).await;
    assert_eq!(e["param"], "x-relais-data-class", "{e}");
    // Vendor "up" only, confidential data: nothing is left.
    gw.mock.clear_requests();
    let e = error_of(ask(up_only.clone(), None).await, 403).await;
    assert!(e["message"].as_str().unwrap().contains("policy"), "{e}");
    assert!(gw.mock.requests().is_empty(), "no upstream call");
    let r = ask(up_only, Some("public")).await;
    assert_eq!(deployment(&r).as_deref(), Some("up/public-only"));
    // The ledger names the vendor (none for the request the policy refused in the router).
    let (_, by_vendor) = admin(&gw, "GET", "/admin/usage?by=vendor", None).await;
    let vendors: Vec<&str> = by_vendor["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["group"].as_str().unwrap())
        .collect();
    assert_eq!(vendors, ["", "onprem", "up"], "{by_vendor}");
    drop(gw);
    dump(true);
}

/// The OpenAPI document describes every admin path, and every path it describes is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue7_the_admin_api_is_described_by_its_openapi_document() {
    let (section, dump) = store("sqlite").await;
    let gw = Gateway::start(&format!("[admin]\nkey = \"{ADMIN}\"\n{section}")).await;
    let (status, doc) = admin(&gw, "GET", "/admin/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/admin/routes",
        "/admin/teams",
        "/admin/keys",
        "/admin/keys/{id}/rotate",
        "/admin/keys/{id}/revoke",
        "/admin/usage",
        "/admin/ledger/{id}",
        "/admin/openapi.json",
    ] {
        assert!(paths.contains(&p), "{p} is not described");
    }
    // The admin paths here (every path, the client APIs and the console included, is held to
    // the router by `admin::tests::issue20_the_openapi_document_matches_the_router`).
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/admin/") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let url = path.replace("{id}", "req-none");
            let (status, body) = match method.as_str() {
                "get" => admin(&gw, "GET", &url, None).await,
                m => admin(&gw, &m.to_uppercase(), &url, Some(json!({}))).await,
            };
            // Served: any answer but the router's "no such path".
            let unknown = body["error"]["code"] == "unknown_url";
            assert!(
                !(status == 404 && unknown),
                "{method} {path}: {status} {body}"
            );
        }
    }
    // Without the admin key: refused.
    let resp = Gateway::client()
        .get(format!("{}/admin/openapi.json", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    drop(gw);
    dump(true);
}
