//! Issue 22, the response cache: exact-match answers served in every dialect and as streams,
//! kept apart by team, bypassed when the client or the sampling says so, billed as savings,
//! coalesced when identical misses arrive together, and shared through Redis.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failure is a failed test"
)]

mod common;

use common::{ADMIN, Gateway, admin, redis_cli, sse_data_payloads, store, team_key, unique};
use serde_json::{Value, json};

const QUESTION: &str = "What is the capital of France?";

const ROUTE: &str = "[prices.gpt-4o-mini]\ninput = \"0.15\"\noutput = \"0.6\"\n\n\
    [routes.cached]\ndeployments = [{ provider = \"up\", model = \"gpt-4o-mini\" }]\n";

async fn key_of(gw: &Gateway, team: &str) -> String {
    team_key(gw, json!({"name": team})).await
}

/// A request with `key` (as a bearer token; Anthropic's clients send `x-api-key`, which relais
/// also reads), and what came back: status, `x-relais-cache`, `age`, body.
async fn ask(
    gw: &Gateway,
    key: &str,
    path: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> (u16, String, Option<u64>, String) {
    let mut req = Gateway::client()
        .post(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .json(body);
    for (h, v) in extra {
        req = req.header(*h, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let cache = header("x-relais-cache").unwrap_or_default();
    let age = header("age").and_then(|a| a.parse().ok());
    (status, cache, age, resp.text().await.unwrap())
}

fn chat(question: &str) -> Value {
    json!({"model": "cached", "max_tokens": 40, "temperature": 0,
           "messages": [{"role": "user", "content": question}]})
}

/// The text of an answer in any of the four dialects, JSON or SSE.
fn text_of(dialect: &str, body: &str) -> String {
    if body.starts_with("data:") || body.starts_with("event:") {
        let events = sse_data_payloads(body);
        return events
            .iter()
            .map(|e| {
                e.pointer("/choices/0/delta/content")
                    .or_else(|| e.pointer("/delta/text"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
    }
    let v: Value = serde_json::from_str(body).unwrap();
    match dialect {
        "openai" => v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned(),
        "anthropic" => v["content"][0]["text"].as_str().unwrap().to_owned(),
        "responses" => v["output"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|o| o["content"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["text"].as_str().map(str::to_owned))
            .collect(),
        _ => v["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue22_one_answer_serves_every_dialect_and_streams_and_stays_in_its_team() {
    let (section, dump) = store("sqlite").await;
    let gw = Gateway::start(&format!(
        "[admin]\nkey = \"{ADMIN}\"\n{section}{ROUTE}[routes.cached.cache]\nttl_secs = 60\n"
    ))
    .await;
    let (a, b) = (key_of(&gw, "alpha").await, key_of(&gw, "beta").await);

    let (status, cache, age, body) =
        ask(&gw, &a, "/v1/chat/completions", &chat(QUESTION), &[]).await;
    assert_eq!((status, cache.as_str(), age), (200, "miss", None), "{body}");
    let first = text_of("openai", &body);
    assert!(first.contains(QUESTION), "{first}");
    assert_eq!(gw.mock.requests().len(), 1);

    // The same question in every client API: one entry, rendered in each.
    let asks = [
        ("openai", "/v1/chat/completions", chat(QUESTION)),
        (
            "anthropic",
            "/v1/messages",
            json!({"model": "cached", "max_tokens": 40, "temperature": 0,
                   "messages": [{"role": "user", "content": QUESTION}]}),
        ),
        (
            "responses",
            "/v1/responses",
            json!({"model": "cached", "max_output_tokens": 40, "temperature": 0, "store": false,
                   "input": [{"role": "user", "content": QUESTION}]}),
        ),
        (
            "gemini",
            "/v1beta/models/cached:generateContent",
            json!({"contents": [{"role": "user", "parts": [{"text": QUESTION}]}],
                   "generationConfig": {"maxOutputTokens": 40, "temperature": 0}}),
        ),
    ];
    for (dialect, path, body) in &asks {
        let (status, cache, age, text) = ask(&gw, &a, path, body, &[]).await;
        assert_eq!((status, cache.as_str()), (200, "hit"), "{dialect}: {text}");
        assert!(age.is_some_and(|a| a < 60), "{dialect}: age {age:?}");
        assert_eq!(text_of(dialect, &text), first, "{dialect}");
    }
    // Streams replay the entry in the client's dialect.
    for (dialect, path, mut body) in asks.into_iter().take(2) {
        body["stream"] = json!(true);
        let (status, cache, _, text) = ask(&gw, &a, path, &body, &[]).await;
        assert_eq!((status, cache.as_str()), (200, "hit"), "{dialect}: {text}");
        assert_eq!(text_of(dialect, &text), first, "{dialect} stream: {text}");
        assert!(text.contains("data:"), "{dialect}: a stream");
    }
    assert_eq!(gw.mock.requests().len(), 1, "every hit stayed home");

    // Another team never sees alpha's entry: it asks upstream and gets its own.
    let (_, cache, _, _) = ask(&gw, &b, "/v1/chat/completions", &chat(QUESTION), &[]).await;
    assert_eq!(cache, "miss");
    assert_eq!(gw.mock.requests().len(), 2);
    let (_, cache, _, _) = ask(&gw, &b, "/v1/chat/completions", &chat(QUESTION), &[]).await;
    assert_eq!(cache, "hit");

    // Sampled without a seed: not cached; with a seed: cached.
    let mut sampled = chat(QUESTION);
    sampled["temperature"] = json!(0.8);
    for _ in 0..2 {
        let (_, cache, _, _) = ask(&gw, &a, "/v1/chat/completions", &sampled, &[]).await;
        assert_eq!(cache, "bypass");
    }
    assert_eq!(gw.mock.requests().len(), 4);
    sampled["seed"] = json!(7);
    let (_, c1, _, _) = ask(&gw, &a, "/v1/chat/completions", &sampled, &[]).await;
    let (_, c2, _, _) = ask(&gw, &a, "/v1/chat/completions", &sampled, &[]).await;
    assert_eq!((c1.as_str(), c2.as_str()), ("miss", "hit"));
    assert_eq!(gw.mock.requests().len(), 5);

    // The client's cache-control: no-store reads and writes nothing; no-cache asks upstream
    // and refreshes the entry (its age starts again).
    let (_, cache, _, _) = ask(
        &gw,
        &a,
        "/v1/chat/completions",
        &chat(QUESTION),
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(cache, "bypass");
    let (_, cache, _, _) = ask(
        &gw,
        &a,
        "/v1/chat/completions",
        &chat(QUESTION),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(cache, "bypass");
    assert_eq!(gw.mock.requests().len(), 7);
    let (_, cache, age, _) = ask(&gw, &a, "/v1/chat/completions", &chat(QUESTION), &[]).await;
    assert_eq!((cache.as_str(), age), ("hit", Some(0)));

    // Money: hits are ledger rows of category `cache` with the cost they saved; spend counts
    // only what went upstream.
    let (status, usage) = admin(&gw, "GET", "/admin/usage?by=team", None).await;
    assert_eq!(status, 200, "{usage}");
    let alpha = usage["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cache_hits"].as_u64().unwrap_or(0) >= 8)
        .unwrap_or_else(|| panic!("no team with 8 hits: {usage}"))
        .clone();
    eprintln!("figures: alpha's usage with the cache: {alpha}");
    assert_eq!(alpha["cache_hits"], 8, "{alpha}");
    assert_eq!(alpha["requests"], 6, "{alpha}");
    let (cost, saved) = (
        alpha["cost_pusd"].as_u64().unwrap(),
        alpha["saved_pusd"].as_u64().unwrap(),
    );
    assert!(saved > 0 && cost > 0, "{alpha}");
    assert!(usage["total_saved_pusd"].as_u64().unwrap() >= saved);
    let metrics = gw.get_text("/metrics").await;
    for line in [
        "relais_cache_requests_total{result=\"hit\"} 9",
        "relais_cache_requests_total{result=\"miss\"} 3",
        "relais_cache_requests_total{result=\"bypass\"} 4",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(
        metrics.contains("relais_cache_saved_usd_total 0.0000"),
        "{metrics}"
    );
    drop(gw);
    dump(true);
}

/// Ten identical requests at once while the upstream takes 300 ms: one reaches it, the other
/// nine wait and are served its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue22_identical_misses_in_flight_send_one_upstream_request() {
    let gw = Gateway::start(&format!(
        "{ROUTE}[routes.cached.cache]\nscope = \"shared\"\n"
    ))
    .await;
    gw.mock.push_fault(relais_testkit::Fault {
        delay_ms: Some(300),
        times: Some(0),
        ..Default::default()
    });
    let mut tasks = Vec::new();
    for i in 0..10 {
        let url = gw.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = chat("coalesce me");
            body["stream"] = json!(i % 2 == 0);
            let resp = Gateway::client()
                .post(format!("{url}/v1/chat/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let cache = resp.headers()["x-relais-cache"]
                .to_str()
                .unwrap()
                .to_owned();
            let dialect = "openai";
            (cache, text_of(dialect, &resp.text().await.unwrap()))
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    let misses = got.iter().filter(|(c, _)| c == "miss").count();
    assert_eq!(misses, 1, "{got:?}");
    assert!(
        got.iter()
            .all(|(_, t)| *t == got[0].1 && t.contains("coalesce me")),
        "{got:?}"
    );
    assert_eq!(gw.mock.requests().len(), 1);
    let metrics = gw.get_text("/metrics").await;
    assert!(
        metrics.contains("relais_cache_coalesced_total 9"),
        "{metrics}"
    );
}

/// Two instances with the Redis store: what one asked upstream, the other serves; the value in
/// Redis is the entry's JSON, LZ4-compressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue22_a_redis_cache_is_shared_by_instances_and_compressed() {
    let prefix = unique("relais_cache");
    let config = format!(
        "[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{prefix}\"\n\n{ROUTE}\
         [routes.cached.cache]\nbackend = \"redis\"\nscope = \"shared\"\nttl_secs = 30\n"
    );
    let (one, two) = (Gateway::start(&config).await, Gateway::start(&config).await);
    let long = "tell me about the sea ".repeat(12);
    let mut body = chat(&long);
    body["max_tokens"] = json!(200);
    let (_, cache, _, first) = ask(&one, "", "/v1/chat/completions", &body, &[]).await;
    assert_eq!(cache, "miss");
    // The entry is written off the request's path.
    let mut found = String::new();
    for _ in 0..50 {
        found = redis_cli(&["--scan", "--pattern", &format!("{prefix}:*")]);
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, cache, age, second) = ask(&two, "", "/v1/chat/completions", &body, &[]).await;
    assert_eq!((cache.as_str(), age.is_some()), ("hit", true));
    assert_eq!(text_of("openai", &second), text_of("openai", &first));
    assert_eq!(
        two.mock.requests().len(),
        0,
        "the second instance asked nobody"
    );

    let key = found.lines().next().unwrap().to_owned();
    let value = redis_get_bytes(&key).await;
    let json = lz4_flex::decompress_size_prepended(&value).unwrap();
    let entry: Value = serde_json::from_slice(&json).unwrap();
    assert!(
        entry["response"]["text"]
            .as_str()
            .unwrap()
            .contains("tell me about the sea")
    );
    eprintln!(
        "figures: a {} B entry is {} B in Redis",
        json.len(),
        value.len()
    );
    assert!(value.len() < json.len(), "compressed");
    let ttl: i64 = redis_cli(&["PTTL", &key]).parse().unwrap();
    assert!((1..=30_000).contains(&ttl), "ttl {ttl}");
    redis_cli(&["DEL", &key]);
}

async fn redis_get_bytes(key: &str) -> Vec<u8> {
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Questions asked first, each with rewordings that mean the same (they should hit) and near
/// misses that mean something else (they must not).
const PARAPHRASES: [(&str, [&str; 3], [&str; 2]); 6] = [
    (
        "What is the capital of France?",
        [
            "what is the capital of france",
            "What is the capital of France, please?",
            "Please, what is the capital of France?",
        ],
        [
            "What is the capital of Spain?",
            "What is the population of France?",
        ],
    ),
    (
        "How do I reset my password?",
        [
            "how do I reset my password??",
            "How do I reset my password please",
            "Hi! How do I reset my password?",
        ],
        ["How do I change my username?", "How do I reset my router?"],
    ),
    (
        "Summarise the refund policy for annual plans.",
        [
            "Summarize the refund policy for annual plans",
            "Please summarise the refund policy for annual plans.",
            "summarise the refund policy for the annual plans",
        ],
        [
            "Summarise the refund policy for monthly plans.",
            "Summarise the privacy policy for annual plans.",
        ],
    ),
    (
        "Translate 'good morning' into German.",
        [
            "Translate good morning into German",
            "translate 'Good morning' into German please",
            "Translate \"good morning\" into German!",
        ],
        [
            "Translate 'good night' into German.",
            "Translate 'good morning' into Italian.",
        ],
    ),
    (
        "What are your opening hours on Sunday?",
        [
            "What are your opening hours on Sunday",
            "what are your opening hours on sunday?",
            "So, what are your opening hours on Sunday?",
        ],
        [
            "What are your opening hours on Monday?",
            "What are your prices on Sunday?",
        ],
    ),
    (
        "Which plan includes single sign-on?",
        [
            "Which plan includes single sign on?",
            "which plan includes Single Sign-On",
            "Which plan includes single sign-on, please?",
        ],
        [
            "Which plan includes audit logs?",
            "Which plan excludes single sign-on?",
        ],
    ),
];

/// One gateway whose `cached` route matches by meaning at `threshold`, with two teams' keys.
async fn semantic_gateway(threshold: f64) -> (Gateway, String, String) {
    let (section, _dump) = store("sqlite").await;
    let gw = Gateway::start(&format!(
        "[admin]\nkey = \"{ADMIN}\"\n{section}{ROUTE}\
         [routes.questions]\nkind = \"embeddings\"\ndeployments = [{{ provider = \"up\", model = \"trigram-embed\" }}]\n\
         [routes.cached.cache]\nttl_secs = 60\nsemantic = {{ embeddings = \"questions\", threshold = {threshold}, max_entries = 1000 }}\n"
    ))
    .await;
    let (a, b) = (key_of(&gw, "alpha").await, key_of(&gw, "beta").await);
    (gw, a, b)
}

/// A question with `key`: `x-relais-cache` and the answer's text.
async fn ask_text(gw: &Gateway, key: &str, text: &str) -> (String, String) {
    let (status, cache, _, body) = ask(gw, key, "/v1/chat/completions", &chat(text), &[]).await;
    assert_eq!(status, 200, "{body}");
    (cache, text_of("openai", &body))
}

/// Ask every first question, then every rewording and near miss: (hits, missed rewordings,
/// near misses served another answer, near misses answered on their own).
async fn paraphrase_run(gw: &Gateway, key: &str, threshold: f64) -> [u32; 4] {
    for (first, _, _) in PARAPHRASES {
        assert_eq!(ask_text(gw, key, first).await.0, "miss", "{first}");
    }
    // Chat requests upstream (each question is also embedded: an embeddings request).
    let chats = || {
        gw.mock
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/chat/completions"))
            .count()
    };
    let mut n = [0u32; 4];
    for (first, same, other) in PARAPHRASES {
        for q in same {
            let upstream = chats();
            let (cache, answer) = ask_text(gw, key, q).await;
            if cache == "hit" {
                // The answer to this question or to an earlier rewording of it (a missed
                // rewording is indexed too), and nothing went upstream.
                let said = answer.trim_start_matches("Hello from mock! You said: ");
                assert!(
                    said == first || same.contains(&said),
                    "{q:?} got {answer:?}"
                );
                assert_eq!(chats(), upstream);
                n[0] += 1;
            } else {
                eprintln!("figures: at {threshold}, a rewording missed: {q:?} of {first:?}");
                n[1] += 1;
            }
        }
        for q in other {
            let (cache, answer) = ask_text(gw, key, q).await;
            if cache == "hit" {
                eprintln!("figures: at {threshold}, {q:?} was served the answer of {first:?}");
                n[2] += 1;
            } else {
                assert_eq!(answer, format!("Hello from mock! You said: {q}"));
                n[3] += 1;
            }
        }
    }
    let [hits, missed, wrong, right] = n;
    eprintln!(
        "figures: semantic cache at threshold {threshold} (lexical trigram embeddings), {} rewordings and {} near misses: \
         {hits} hits, {missed} missed, {wrong} wrong hits, {right} right misses; precision {:.1}%, recall {:.1}%",
        hits + missed,
        wrong + right,
        100.0 * f64::from(hits) / f64::from((hits + wrong).max(1)),
        100.0 * f64::from(hits) / f64::from(hits + missed),
    );
    n
}

/// Issue 22, the semantic cache, measured on a paraphrase set: rewordings are served the first
/// question's answer (nothing upstream) and near misses are not, within one team, one system
/// prompt and one set of parameters. The test's embeddings are lexical (character trigrams),
/// so a one-word change of meaning ("includes"/"excludes") scores like a rewording: the
/// threshold trades recall for precision, and both ends are measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue22_the_semantic_cache_serves_rewordings_and_not_near_misses() {
    // A strict threshold: no near miss served another question's answer.
    let (gw, a, b) = semantic_gateway(0.93).await;
    let [hits, missed, wrong, _] = paraphrase_run(&gw, &a, 0.93).await;
    assert_eq!(wrong, 0, "a near miss was served another question's answer");
    assert!(
        hits * 10 >= (hits + missed) * 7,
        "recall under 70%: {hits} of {}",
        hits + missed
    );

    // Another team, the same rewording: its own context, a miss.
    assert_eq!(ask_text(&gw, &b, PARAPHRASES[0].1[0]).await.0, "miss");
    // The same rewording under another system prompt: a miss too.
    let mut body = chat(PARAPHRASES[0].1[0]);
    body["messages"] = json!([{"role": "system", "content": "Answer in French."},
                              {"role": "user", "content": PARAPHRASES[0].1[0]}]);
    let (_, cache, _, _) = ask(&gw, &a, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(cache, "miss");
    // A rewording of alpha's question, by alpha: a hit.
    assert_eq!(ask_text(&gw, &a, PARAPHRASES[0].1[0]).await.0, "hit");

    let metrics = gw.get_text("/metrics").await;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert_eq!(
        value("relais_cache_semantic_hits_total"),
        u64::from(hits) + 1
    );
    assert!(value("relais_cache_semantic_entries") >= 6);
    assert_eq!(value("relais_cache_semantic_embedding_errors_total"), 0);
    drop(gw);

    // A lenient threshold: every rewording hits, and near misses that differ by one word of
    // meaning are served the wrong answer: measured, not hidden.
    let (gw, a, _) = semantic_gateway(0.88).await;
    let [hits, missed, wrong, _] = paraphrase_run(&gw, &a, 0.88).await;
    assert_eq!(missed, 0, "at 0.88 every rewording hits");
    assert!(
        hits > 0 && wrong > 0,
        "the lexical embedder confuses near misses at 0.88"
    );
}

/// Issue 22: budgets are not charged for hits unless the route says `charge_budget = true`;
/// then a hit costs the team what its answer cost when it was made, and still counts as saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue22_hits_are_free_to_budgets_unless_the_route_charges_them() {
    let (section, _dump) = store("sqlite").await;
    let gw = Gateway::start(&format!(
        "[admin]\nkey = \"{ADMIN}\"\n{section}{ROUTE}[routes.cached.cache]\nttl_secs = 60\n\
         [routes.charged]\ndeployments = [{{ provider = \"up\", model = \"gpt-4o-mini\" }}]\n\
         [routes.charged.cache]\nttl_secs = 60\ncharge_budget = true\n"
    ))
    .await;
    let mut spend = Vec::new();
    for (team, route) in [("free", "cached"), ("payer", "charged")] {
        let key = team_key(&gw, json!({"name": team, "budget_total": "10"})).await;
        let mut body = chat(QUESTION);
        body["model"] = json!(route);
        let mut caches = Vec::new();
        for _ in 0..4 {
            let (status, cache, _, text) = ask(&gw, &key, "/v1/chat/completions", &body, &[]).await;
            assert_eq!(status, 200, "{text}");
            caches.push(cache);
        }
        assert_eq!(caches, ["miss", "hit", "hit", "hit"]);
        let (_, teams) = admin(&gw, "GET", "/admin/teams", None).await;
        let total = teams["teams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == team)
            .map(|t| {
                t["spend"]["total"]
                    .as_str()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap()
            })
            .unwrap();
        spend.push(total);
    }
    // What one upstream answer cost, exactly (pico-USD), and what each team's hits saved.
    let (_, usage) = admin(&gw, "GET", "/admin/usage?by=team", None).await;
    let lines = usage["usage"].as_array().unwrap();
    let pusd = |i: usize, f: &str| lines[i][f].as_u64().unwrap();
    assert_eq!(lines.len(), 2, "{usage}");
    let cost = pusd(0, "cost_pusd");
    assert!(cost > 0 && pusd(1, "cost_pusd") == cost, "{usage}");
    for line in lines {
        assert_eq!(line["cache_hits"], 3, "{usage}");
        assert_eq!(line["saved_pusd"], 3 * cost, "both teams' hits are savings");
    }
    eprintln!(
        "figures: team spend after 1 miss and 3 hits (an answer costs {cost} pico-USD): free {} USD, charged {} USD",
        spend[0], spend[1]
    );
    // Budgets: the free team paid for the miss only; the charging route's team for the miss
    // and each hit at the same price (spend is shown to the micro-dollar).
    let usd = |p: u64| p as f64 / 1e12;
    assert!((spend[0] - usd(cost)).abs() <= 1e-6, "{spend:?}");
    assert!((spend[1] - usd(4 * cost)).abs() <= 1e-6, "{spend:?}");
    assert!(spend[1] > spend[0] * 3.0, "{spend:?}");
}
