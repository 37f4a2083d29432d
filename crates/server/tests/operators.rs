//! Issue 20, the admin API for operators, end to end over loopback with two instances on one
//! store (SQLite, PostgreSQL; with Redis for the limits too): a key or team edited on one
//! instance is in force on the other within the key refresh interval; a budget reset lets a
//! refused key spend again on both; an expired key stops; every change is in the audit log,
//! read from either instance, never with a secret; the roles hold.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failure is a failed test"
)]

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN, Gateway, admin, admin_as, error_of, store, unique};
use serde_json::json;

const VIEWER: &str = "viewer-credential-0123456789";
const LEAD: &str = "team-lead-credential-0123456789";
/// Output at USD 1 per million tokens, input free: `max_tokens = 10` reserves 10 µUSD.
const PRICES: &str = "[prices.\"gpt-4o-mini\"]\ninput = \"0\"\noutput = \"1\"\n";

async fn chat(gw: &Gateway, model: &str, key: &str) -> reqwest::Response {
    Gateway::client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(&json!({"model": model, "max_tokens": 10,
            "messages": [{"role": "user", "content": "count to ten please"}]}))
        .send()
        .await
        .unwrap()
}

/// Poll `gw` until `model` with `key` answers `status` (within 5 s: the refresh is 1 s).
async fn eventually(gw: &Gateway, model: &str, key: &str, status: u16) {
    let start = Instant::now();
    loop {
        let resp = chat(gw, model, key).await;
        let got = resp.status().as_u16();
        if got == status {
            return;
        }
        let body = resp.text().await.unwrap_or_default();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{model} still answers {got}, not {status}, after 5 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn operators(kind: &str, redis: bool) {
    let (section, dump) = store(kind).await;
    let limits = if redis {
        format!(
            "limits = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{}\"\n",
            unique("relais_ops")
        )
    } else {
        String::new()
    };
    let extra = format!(
        "[admin]\nkey = \"{ADMIN}\"\n[[admin.credentials]]\nname = \"oncall\"\nkey = \"{VIEWER}\"\nrole = \"viewer\"\n\
         [[admin.credentials]]\nname = \"ops-lead\"\nkey = \"{LEAD}\"\nrole = \"team_admin\"\nteam = \"ops\"\n\
         {PRICES}{section}ledger_ship_ms = 100\n{limits}"
    );
    let (a, b) = (Gateway::start(&extra).await, Gateway::start(&extra).await);
    let (status, team) = admin(&a, "POST", "/admin/teams", Some(json!({"name": "ops"}))).await;
    assert_eq!(status, 201, "{team}");
    let (_, other_team) = admin(&a, "POST", "/admin/teams", Some(json!({"name": "other"}))).await;
    let (status, issued) = admin(
        &a,
        "POST",
        "/admin/keys",
        Some(json!({"team": "ops", "name": "svc"})),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let key = issued["key"].as_str().unwrap().to_owned();
    let id = issued["id"].as_str().unwrap().to_owned();
    assert_eq!(chat(&b, "gpt-4o-mini", &key).await.status(), 200);

    // Routes: narrowed on A, refused at once there and on B within the refresh; widened again.
    let (status, edited) = admin(
        &a,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"routes": ["failover"], "name": "svc-renamed"})),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["routes"], json!(["failover"]));
    assert_eq!(edited["name"], "svc-renamed");
    assert!(edited.get("key").is_none(), "a secret in a PATCH answer");
    // A route outside a key's list is answered as a route that does not exist (404).
    error_of(chat(&a, "gpt-4o-mini", &key).await, 404).await;
    eventually(&b, "gpt-4o-mini", &key, 404).await;
    let (status, _) = admin(
        &b,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"routes": null})),
    )
    .await;
    assert_eq!(status, 200);
    eventually(&a, "gpt-4o-mini", &key, 200).await;

    // Refused edits: a field that does not exist, a budget above the team's, a bad expiry.
    let (status, e) = admin(
        &a,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"rmp": 5})),
    )
    .await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("rmp")),
        "{e}"
    );
    let (status, _) = admin(
        &a,
        "PATCH",
        &format!("/admin/teams/{}", team["id"].as_str().unwrap()),
        Some(json!({"budget_day": "0.001"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, e) = admin(
        &a,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"budget_day": "0.01"})),
    )
    .await;
    assert_eq!(status, 403, "{e}");
    let (status, _) = admin(
        &a,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"expires_at": "soon"})),
    )
    .await;
    assert_eq!(status, 400);

    // The budget, set on A and reset there so it starts from nothing: spent on A until refused
    // (requests reserve 10 µUSD each), refused on B too; reset on B, and both admit again.
    let (status, e) = admin(
        &a,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"budget_day": "0.00003"})),
    )
    .await;
    assert_eq!(status, 200, "{e}");
    let (status, _) = admin(&a, "POST", &format!("/admin/keys/{id}/reset-budget"), None).await;
    assert_eq!(status, 200);
    // B learns of the budget within its refresh (1 s); until then it admits without one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut served = 0;
    loop {
        let resp = chat(&a, "gpt-4o-mini", &key).await;
        if resp.status() != 200 {
            let e = error_of(resp, 402).await;
            assert_eq!(e["code"], "budget_exceeded");
            break;
        }
        served += 1;
        assert!(served <= 3, "the budget did not hold");
    }
    assert!(
        served >= 2,
        "only {served} served under a budget of three requests"
    );
    eventually(&b, "gpt-4o-mini", &key, 402).await;
    // Rows reach the store within the ledger's shipping interval (100 ms here).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let spent_day = |listed: &serde_json::Value| -> f64 {
        let me = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id.as_str())
            .unwrap();
        me["spend"]["day"].as_str().unwrap().parse().unwrap()
    };
    let (_, listed) = admin(&b, "GET", "/admin/keys", None).await;
    let before = spent_day(&listed);
    // With Redis the budget is one for all instances; without it each instance counts its own
    // admissions (seeded from the ledger when it first sees the key or a reset), so B may spend
    // up to the budget again after A (docs/governance.md).
    let most = if redis { 0.00003 } else { 0.00006 };
    assert!(before > 0.00002 && before <= most, "{listed}");
    let (status, reset) = admin(&b, "POST", &format!("/admin/keys/{id}/reset-budget"), None).await;
    assert_eq!(status, 200, "{reset}");
    assert!(
        reset["limits"]["budget_reset_at_ms"].as_i64().is_some(),
        "{reset}"
    );
    assert_eq!(chat(&b, "gpt-4o-mini", &key).await.status(), 200);
    eventually(&a, "gpt-4o-mini", &key, 200).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, listed) = admin(&a, "GET", "/admin/keys", None).await;
    let after = spent_day(&listed);
    assert!(
        after > 0.0 && after <= 0.00002,
        "only what came after the reset: {listed}"
    );
    // A team reset is accepted the same way.
    let (status, _) = admin(
        &a,
        "POST",
        &format!("/admin/teams/{}/reset-budget", team["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // Expiry: in force on both once it passes.
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let (status, e) = admin(
        &a,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"expires_at": soon, "budget_day": null})),
    )
    .await;
    assert_eq!(status, 200, "{e}");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let e = error_of(chat(&a, "gpt-4o-mini", &key).await, 401).await;
    assert!(e["message"].as_str().unwrap().contains("expired"), "{e}");
    error_of(chat(&b, "gpt-4o-mini", &key).await, 401).await;

    // Roles: a viewer reads and changes nothing; a team_admin sees and manages its team's keys
    // only, and nothing beyond them.
    assert_eq!(
        admin_as(&b, VIEWER, "GET", "/admin/keys", None).await.0,
        200
    );
    assert_eq!(
        admin_as(&b, VIEWER, "GET", "/admin/audit", None).await.0,
        200
    );
    for (method, path) in [
        ("POST", "/admin/teams".to_owned()),
        ("PATCH", format!("/admin/keys/{id}")),
        ("POST", format!("/admin/keys/{id}/revoke")),
        ("POST", "/admin/promote".to_owned()),
    ] {
        let (status, e) = admin_as(&b, VIEWER, method, &path, Some(json!({}))).await;
        assert_eq!(status, 403, "viewer {method} {path}: {e}");
    }
    let (_, foreign) = admin(
        &a,
        "POST",
        "/admin/keys",
        Some(json!({"team": "other", "name": "theirs"})),
    )
    .await;
    let (status, mine) = admin_as(&a, LEAD, "GET", "/admin/keys", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = mine["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["svc-renamed"], "{mine}");
    let (status, _) = admin_as(
        &a,
        LEAD,
        "PATCH",
        &format!("/admin/keys/{}", foreign["id"].as_str().unwrap()),
        Some(json!({"rpm": 1})),
    )
    .await;
    assert_eq!(
        status, 404,
        "another team's key is not there for a team_admin"
    );
    let (status, e) = admin_as(
        &a,
        LEAD,
        "POST",
        "/admin/keys",
        Some(json!({"team": "other", "name": "sneaky"})),
    )
    .await;
    assert_eq!(status, 403, "{e}");
    let (status, made) = admin_as(
        &a,
        LEAD,
        "POST",
        "/admin/keys",
        Some(json!({"name": "lead-made"})),
    )
    .await;
    assert_eq!(
        (status, made["team_id"].clone()),
        (201, team["id"].clone()),
        "{made}"
    );
    for (method, path) in [
        (
            "PATCH",
            format!("/admin/teams/{}", team["id"].as_str().unwrap()),
        ),
        ("POST", "/admin/teams".to_owned()),
        ("GET", "/admin/audit".to_owned()),
        ("GET", "/admin/routes".to_owned()),
        ("POST", "/admin/promote".to_owned()),
    ] {
        let (status, e) = admin_as(&a, LEAD, method, &path, Some(json!({}))).await;
        assert_eq!(status, 403, "team_admin {method} {path}: {e}");
    }
    let (status, usage) =
        admin_as(&a, LEAD, "GET", "/admin/usage?by=team&team=anything", None).await;
    assert_eq!(status, 200);
    for line in usage["usage"].as_array().unwrap() {
        assert_eq!(line["group"], team["id"], "{usage}");
    }
    let _ = other_team;

    // The audit log, read on B: every change, newest first, by whom, from where; no secret.
    let (status, log) = admin(&b, "GET", "/admin/audit?limit=100", None).await;
    assert_eq!(status, 200);
    let entries = log["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for wanted in [
        "team.create",
        "key.create",
        "key.update",
        "team.update",
        "key.reset_budget",
        "team.reset_budget",
    ] {
        assert!(actions.contains(&wanted), "{wanted} missing: {actions:?}");
    }
    assert!(
        !actions.contains(&"key.revoke"),
        "a refused change was logged: {actions:?}"
    );
    let reset_entry = entries
        .iter()
        .find(|e| e["action"] == "key.reset_budget")
        .unwrap();
    assert_eq!(reset_entry["actor"], "admin");
    assert_eq!(reset_entry["address"], "127.0.0.1");
    assert_eq!(reset_entry["target"], id.as_str());
    let at = |side: &str| {
        reset_entry[side]["limits"]["budget_reset_at_ms"]
            .as_i64()
            .unwrap_or(0)
    };
    assert!(at("after") > at("before"), "{reset_entry}");
    let lead_entry = entries
        .iter()
        .find(|e| e["after"]["name"] == "lead-made")
        .unwrap();
    assert_eq!(
        (lead_entry["actor"].as_str(), lead_entry["role"].as_str()),
        (Some("ops-lead"), Some("team_admin"))
    );
    let ats: Vec<i64> = entries
        .iter()
        .map(|e| e["at_ms"].as_i64().unwrap())
        .collect();
    assert!(ats.windows(2).all(|w| w[0] >= w[1]), "not newest first");
    let text = log.to_string();
    assert!(
        !text.contains(&key) && !text.contains(&key[3..]),
        "a secret in the audit log"
    );
    assert!(
        !text.contains(made["key"].as_str().unwrap()),
        "a secret in the audit log"
    );
    drop((a, b));
    dump(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue20_operators_with_sqlite() {
    operators("sqlite", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue20_operators_with_postgres() {
    operators("postgres", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue20_operators_with_postgres_and_redis() {
    operators("postgres", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue20_operators_with_sqlite_and_redis() {
    operators("sqlite", true).await;
}
