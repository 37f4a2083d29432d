//! Every store test runs against both backends of its role: SQLite (a fresh file) and
//! PostgreSQL (127.0.0.1:5432, database `test`, or `RELAIS_TEST_POSTGRES_URL`), each PostgreSQL
//! test in a schema of its own. A PostgreSQL that cannot be reached fails the test: `.ci/run`
//! starts it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a failure is a failed test"
)]

use std::sync::atomic::{AtomicUsize, Ordering};

use relais_state::{
    GroupBy, KeyStore, LedgerRow, LedgerStore, Limits, PlanEvent, PostgresStore, ShadowSample,
    Spend, SqliteStore, StoreError, StoredKey, StoredResponse, Team, UsageQuery,
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn sqlite_at(path: &std::path::Path) -> SqliteStore {
    SqliteStore::open(path).await.unwrap()
}

fn sqlite_path() -> std::path::PathBuf {
    std::env::temp_dir()
        .join(unique("relais-state"))
        .join("relais.db")
}

fn postgres_base() -> String {
    std::env::var("RELAIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned())
}

/// Drop a test's schema once it passed (a failed test leaves it behind for inspection).
async fn drop_schema(url: &str) {
    let schema = url
        .split("search_path=")
        .nth(1)
        .unwrap()
        .trim_end_matches('\'');
    let (client, conn) = tokio_postgres::connect(&postgres_base(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// A PostgreSQL connection string whose tables live in a fresh schema.
async fn postgres_schema() -> String {
    let base = postgres_base();
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be reachable on 127.0.0.1:5432 (.ci/run starts it)");
    tokio::spawn(conn);
    let schema = unique("relais_test");
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    format!("{base} options='-c search_path={schema}'")
}

fn team(name: &str) -> Team {
    Team {
        id: format!("team_{name}"),
        name: name.to_owned(),
        routes: Some(vec!["gpt-4o-mini".to_owned()]),
        created_at: 1_700_000_000,
        limits: Limits {
            rpm: Some(600),
            tpm: None,
            max_concurrent: Some(20),
            budget_day: None,
            budget_month: Some(50_000_000_000_000),
            budget_total: None,
            budget_reset_ms: None,
        },
        reach: relais_state::Reach {
            vendors: Some(vec!["openai".to_owned(), "local".to_owned()]),
            data_classes: None,
            guardrails: Some(
                [("email".to_owned(), "mask".to_owned())]
                    .into_iter()
                    .collect(),
            ),
        },
    }
}

fn key(id: &str, team: &str, hash: &str) -> StoredKey {
    StoredKey {
        id: id.to_owned(),
        name: format!("{id} name"),
        team_id: format!("team_{team}"),
        prefix: "rk-abcd".to_owned(),
        hash: hash.to_owned(),
        routes: None,
        created_at: 1_700_000_100,
        revoked_at: None,
        expires_at: Some(1_900_000_000),
        limits: Limits {
            rpm: None,
            tpm: Some(100_000),
            max_concurrent: None,
            budget_day: Some(5_000_000_000_000),
            budget_month: None,
            budget_total: Some(u64::try_from(i64::MAX).unwrap()),
            budget_reset_ms: Some(1_700_000_200_000),
        },
        reach: relais_state::Reach {
            vendors: None,
            data_classes: Some(vec!["internal".to_owned()]),
            guardrails: None,
        },
    }
}

async fn suite(store: &dyn KeyStore) {
    store.create_team(&team("search")).await.unwrap();
    store.create_team(&team("ads")).await.unwrap();
    let dup = Team {
        id: "team_other".into(),
        ..team("search")
    };
    assert!(matches!(
        store.create_team(&dup).await,
        Err(StoreError::Conflict(_))
    ));
    let teams = store.teams().await.unwrap();
    assert_eq!(teams.len(), 2);
    assert!(teams.contains(&team("search")), "{teams:?}");

    let mut k1 = key("k1", "search", "aa11");
    k1.routes = Some(vec!["a".into(), "b".into()]);
    store.insert_key(&k1).await.unwrap();
    store.insert_key(&key("k2", "ads", "bb22")).await.unwrap();
    // The same hash twice, or a team that does not exist: refused.
    assert!(matches!(
        store.insert_key(&key("k3", "ads", "aa11")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.insert_key(&key("k4", "nobody", "cc33")).await,
        Err(StoreError::Conflict(_))
    ));
    // Everything round-trips, limits included.
    assert_eq!(store.key_by_hash("aa11").await.unwrap(), Some(k1.clone()));
    assert_eq!(store.key_by_hash("zz99").await.unwrap(), None);
    let ids: Vec<String> = store
        .keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, ["k1", "k2"]);

    // Rotation: the new secret finds the key, the old one does not.
    store.rotate_key("k1", "rk-efgh", "dd44").await.unwrap();
    assert_eq!(store.key_by_hash("aa11").await.unwrap(), None);
    let rotated = store.key_by_hash("dd44").await.unwrap().unwrap();
    assert_eq!(
        (rotated.id.as_str(), rotated.prefix.as_str()),
        ("k1", "rk-efgh")
    );
    assert_eq!(rotated.routes, k1.routes);

    // Revocation keeps the first time; unknown keys are NotFound; a revoked key cannot rotate.
    store.revoke_key("k2", 1_800_000_000).await.unwrap();
    store.revoke_key("k2", 1_900_000_000).await.unwrap();
    let k2 = store.key_by_hash("bb22").await.unwrap().unwrap();
    assert_eq!(k2.revoked_at, Some(1_800_000_000));
    assert!(matches!(
        store.revoke_key("nope", 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.rotate_key("k2", "rk-x", "ee55").await,
        Err(StoreError::NotFound(_))
    ));

    // An update writes what an operator may change, and nothing else: the secret, team,
    // creation and revocation stay.
    let mut edited = rotated.clone();
    edited.name = "renamed".into();
    edited.routes = None;
    edited.limits.rpm = Some(7);
    edited.limits.budget_reset_ms = Some(1_750_000_000_000);
    edited.reach.vendors = Some(vec!["anthropic".into()]);
    edited.expires_at = None;
    let mut tampered = edited.clone();
    tampered.hash = "ff66".into();
    tampered.team_id = "team_ads".into();
    tampered.revoked_at = Some(5);
    store.update_key(&tampered).await.unwrap();
    assert_eq!(store.key_by_hash("dd44").await.unwrap(), Some(edited));
    assert!(matches!(
        store.update_key(&key("nope", "ads", "x")).await,
        Err(StoreError::NotFound(_))
    ));
    let mut t = team("ads");
    t.name = "ads-renamed".into();
    t.routes = None;
    t.limits.budget_day = Some(1);
    t.limits.budget_reset_ms = Some(1_760_000_000_000);
    t.reach.data_classes = Some(vec!["public".into()]);
    store.update_team(&t).await.unwrap();
    assert!(store.teams().await.unwrap().contains(&t));
    assert!(matches!(
        store.update_team(&team("nobody")).await,
        Err(StoreError::NotFound(_))
    ));

    // The audit log: newest first, paged by time.
    for i in 0..5i64 {
        store
            .put_audit(&relais_state::AuditEntry {
                id: format!("aud_{i}"),
                at_ms: 1_000 + i,
                actor: "ops".into(),
                role: "admin".into(),
                address: (i % 2 == 0).then(|| "127.0.0.1".to_owned()),
                action: "key.update".into(),
                target: "k1".into(),
                before: Some(format!("{{\"rpm\":{i}}}")),
                after: None,
            })
            .await
            .unwrap();
    }
    let newest = store.audit(2, None).await.unwrap();
    let ids: Vec<_> = newest.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["aud_4", "aud_3"]);
    assert_eq!(newest[0].address.as_deref(), Some("127.0.0.1"));
    assert_eq!(newest[1].before.as_deref(), Some("{\"rpm\":3}"));
    let older = store.audit(10, Some(1_003)).await.unwrap();
    let ids: Vec<_> = older.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["aud_2", "aud_1", "aud_0"]);
}

#[tokio::test]
async fn sqlite_store() {
    let store = sqlite_at(&sqlite_path()).await;
    assert_eq!(store.kind(), "sqlite");
    suite(&store).await;
    ledger_suite(&store).await;
    planb_suite(&store).await;
    responses_suite(&store).await;
}

#[tokio::test]
async fn postgres_store() {
    let url = postgres_schema().await;
    let store = PostgresStore::connect(&url).await.unwrap();
    assert_eq!(store.kind(), "postgres");
    suite(&store).await;
    ledger_suite(&store).await;
    planb_suite(&store).await;
    responses_suite(&store).await;
    drop_schema(&url).await;
}

const DAY_MS: i64 = 86_400_000;

fn row(id: &str, attempt: u32, key: &str, team: &str, day: i64, cost: u64) -> LedgerRow {
    LedgerRow {
        id: id.to_owned(),
        attempt,
        request_id: format!("req-{id}"),
        at_ms: day * DAY_MS + 1000,
        category: "live".to_owned(),
        key_id: Some(key.to_owned()),
        team_id: Some(team.to_owned()),
        route: "gpt-4o-mini".to_owned(),
        deployment: Some("up/gpt-4o-mini".to_owned()),
        provider: Some("up".to_owned()),
        vendor: Some("openai_compat".to_owned()),
        model: Some("gpt-4o-mini".to_owned()),
        input_tokens: 10,
        output_tokens: 5,
        cache_read_tokens: 2,
        cache_write_tokens: 1,
        reasoning_tokens: 3,
        cost_pusd: cost,
        latency_us: 1234,
        ttft_us: Some(567),
        status: 200,
        error_class: None,
        stream: attempt % 2 == 1,
        drill: (attempt == 1).then(|| "drill-1".to_owned()),
        data_classes: (attempt == 0).then(|| "internal,email".to_owned()),
    }
}

/// Plan B's rows: shadow samples (replays ignored, newest first, by backup, bounded) and
/// events (replaced by id, by kind and route, newest first).
async fn planb_suite(store: &dyn LedgerStore) {
    let sample = |id: &str, at_ms: i64, backup: &str, ok: bool| ShadowSample {
        id: id.to_owned(),
        at_ms,
        route: "r".to_owned(),
        backup: backup.to_owned(),
        vendor: "v".to_owned(),
        ok,
        scores: format!("{{\"n\":\"{id}\"}}"),
    };
    let batch = [
        sample("s1", 1_000, "b/one", true),
        sample("s2", 2_000, "b/one", false),
        sample("s3", 3_000, "b/two", true),
        sample("s4", 4_000, "b/one", true),
    ];
    assert_eq!(store.insert_samples(&batch).await.unwrap(), 4);
    assert_eq!(store.insert_samples(&batch[..1]).await.unwrap(), 0);
    let one = store.samples("r", Some("b/one"), 0, 10).await.unwrap();
    let ids: Vec<&str> = one.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["s4", "s2", "s1"]);
    assert_eq!(one[1], batch[1]);
    let recent = store.samples("r", None, 1_500, 2).await.unwrap();
    let ids: Vec<&str> = recent.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["s4", "s3"]);
    assert!(
        store
            .samples("other", None, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let event = |id: &str, at_ms: i64, kind: &str, body: &str| PlanEvent {
        id: id.to_owned(),
        at_ms,
        kind: kind.to_owned(),
        route: "r".to_owned(),
        body: body.to_owned(),
    };
    store
        .put_event(&event("d1", 10, "drill", "{\"state\":\"running\"}"))
        .await
        .unwrap();
    store
        .put_event(&event("p1", 20, "promotion", "{}"))
        .await
        .unwrap();
    store
        .put_event(&event("d2", 30, "drill", "{}"))
        .await
        .unwrap();
    store
        .put_event(&event("d1", 10, "drill", "{\"state\":\"done\"}"))
        .await
        .unwrap();
    let drills = store.events("drill", Some("r"), 10).await.unwrap();
    assert_eq!(drills.len(), 2);
    assert_eq!(drills[0].id, "d2");
    assert_eq!(drills[1].body, "{\"state\":\"done\"}");
    assert_eq!(store.events("promotion", None, 10).await.unwrap().len(), 1);
    assert!(
        store
            .events("drill", Some("x"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Stored responses: put, get (an expired one is gone), an id stored again is replaced,
/// delete, and the purge of expired ones.
async fn responses_suite(store: &dyn LedgerStore) {
    let r = |id: &str, expires_ms: i64| StoredResponse {
        id: id.to_owned(),
        at_ms: 1_000,
        expires_ms,
        key_id: Some("key_a".to_owned()),
        team_id: None,
        route: "r".to_owned(),
        items: "[{\"role\":\"user\",\"content\":\"hi\"}]".to_owned(),
        response: "{\"output\":[]}".to_owned(),
    };
    store.put_response(&r("resp_live", 10_000)).await.unwrap();
    store.put_response(&r("resp_old", 2_000)).await.unwrap();
    let mut twice = r("resp_live", 10_000);
    twice.response = "{\"status\":\"completed\"}".to_owned();
    store.put_response(&twice).await.unwrap();
    assert_eq!(
        store.get_response("resp_live", 5_000).await.unwrap(),
        Some(twice)
    );
    assert_eq!(store.get_response("resp_old", 5_000).await.unwrap(), None);
    assert_eq!(store.get_response("resp_none", 0).await.unwrap(), None);
    assert_eq!(store.purge_responses(5_000).await.unwrap(), 1);
    assert_eq!(store.get_response("resp_old", 0).await.unwrap(), None);
    assert!(store.delete_response("resp_live").await.unwrap());
    assert!(!store.delete_response("resp_live").await.unwrap());
    assert_eq!(store.get_response("resp_live", 0).await.unwrap(), None);
}

/// Rows in, replays ignored, summaries and spend exact; 600 rows in one call (more than one
/// PostgreSQL statement's worth).
async fn ledger_suite(store: &dyn LedgerStore) {
    let day = 20_780;
    let mut rows = Vec::new();
    for i in 0..600u64 {
        let key = if i % 3 == 0 { "key_a" } else { "key_b" };
        let d = day - i64::try_from(i % 40).unwrap();
        rows.push(row(&format!("r{i}"), 0, key, "team_t", d, 1_000_000 + i));
        rows.push(row(&format!("r{i}"), 1, key, "team_t", d, 1_000_000 + i));
    }
    let mut failed = row("r0", 2, "key_a", "team_t", day, 0);
    failed.status = 503;
    failed.error_class = Some("overloaded".to_owned());
    failed.ttft_us = None;
    rows.push(failed.clone());
    assert_eq!(store.insert_rows(&rows).await.unwrap(), 1201);
    // A replay of rows already stored adds nothing and keeps the first copy.
    let mut changed = rows[0].clone();
    changed.cost_pusd = 1;
    assert_eq!(
        store
            .insert_rows(&[changed, rows[1].clone()])
            .await
            .unwrap(),
        0
    );
    let r0 = store.rows_of("r0").await.unwrap();
    assert_eq!(r0.len(), 3);
    assert_eq!(r0[0], rows[0]);
    assert_eq!(r0[2], failed);

    // Summaries count attempt-0 rows only.
    let q = |group_by, from_ms, to_ms, key_id: Option<&str>| UsageQuery {
        group_by,
        from_ms,
        to_ms,
        category: "live".to_owned(),
        key_id: key_id.map(str::to_owned),
        team_id: None,
        route: None,
        drill: None,
    };
    let all = (day - 100) * DAY_MS;
    let end = (day + 1) * DAY_MS;
    let by_key = store.usage(&q(GroupBy::Key, all, end, None)).await.unwrap();
    assert_eq!(
        by_key.iter().map(|l| l.group.as_str()).collect::<Vec<_>>(),
        ["key_a", "key_b"]
    );
    assert_eq!(by_key[0].requests, 200);
    assert_eq!(by_key[1].requests, 400);
    let expected_a: u64 = (0..600u64)
        .filter(|i| i % 3 == 0)
        .map(|i| 1_000_000 + i)
        .sum();
    assert_eq!(by_key[0].cost_pusd, expected_a);
    assert_eq!(by_key[0].input_tokens, 2000);
    assert_eq!(by_key[0].reasoning_tokens, 600);
    let today = store
        .usage(&q(GroupBy::Day, day * DAY_MS, end, Some("key_a")))
        .await
        .unwrap();
    assert_eq!(today.len(), 1);
    assert_eq!(today[0].group, day.to_string());
    assert_eq!(
        today[0].requests, 5,
        "i in 0..600 with i % 3 == 0 and i % 40 == 0"
    );

    // Spend of a key and of its team, since a day and a month, and in total.
    let spend = store
        .spend("key_a", day * DAY_MS, (day - 22) * DAY_MS, 0)
        .await
        .unwrap();
    let since = |from: i64| -> u64 {
        (0..600u64)
            .filter(|i| i % 3 == 0 && day - i64::try_from(i % 40).unwrap() >= from)
            .map(|i| 1_000_000 + i)
            .sum()
    };
    assert_eq!(
        spend,
        Spend {
            day: since(day),
            month: since(day - 22),
            total: expected_a
        }
    );
    let team = store.spend("team_t", 0, 0, 0).await.unwrap();
    assert_eq!(team.total, (0..600u64).map(|i| 1_000_000 + i).sum::<u64>());
    // After a budget reset nothing before it counts, in total too.
    let reset = (day - 10) * DAY_MS;
    let after_reset = store
        .spend("key_a", day * DAY_MS, reset, reset)
        .await
        .unwrap();
    assert_eq!(after_reset.total, since(day - 10));
    assert_eq!(after_reset.month, since(day - 10));

    // The request list: attempt 0 only, newest first, filtered, bounded.
    let list = |key: Option<&str>, errors: bool, limit: u32| relais_state::RowQuery {
        from_ms: 0,
        to_ms: end,
        category: "live".into(),
        key_id: key.map(str::to_owned),
        team_id: None,
        route: None,
        vendor: None,
        errors,
        limit,
    };
    let rows = store
        .requests(&list(Some("key_a"), false, 1000))
        .await
        .unwrap();
    assert_eq!(rows.len(), 200, "i % 3 == 0 of 600");
    assert!(
        rows.iter()
            .all(|r| r.attempt == 0 && r.key_id.as_deref() == Some("key_a"))
    );
    assert!(rows.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
    assert_eq!(
        store.requests(&list(None, false, 7)).await.unwrap().len(),
        7
    );
    assert!(
        store
            .requests(&list(None, true, 1000))
            .await
            .unwrap()
            .is_empty()
    );
    let mut refused = row("rfail", 0, "key_b", "team_t", day, 0);
    refused.status = 429;
    store.insert_rows(&[refused.clone()]).await.unwrap();
    assert_eq!(
        store.requests(&list(None, true, 1000)).await.unwrap(),
        [refused]
    );
}

#[tokio::test]
async fn reopening_keeps_data_and_does_not_migrate_twice() {
    let path = sqlite_path();
    sqlite_at(&path)
        .await
        .create_team(&team("x"))
        .await
        .unwrap();
    let again = sqlite_at(&path).await;
    assert_eq!(again.teams().await.unwrap().len(), 1);

    let url = postgres_schema().await;
    PostgresStore::connect(&url)
        .await
        .unwrap()
        .create_team(&team("x"))
        .await
        .unwrap();
    // Two replicas starting together: the advisory lock serialises the migration.
    let (a, b) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
    assert_eq!(a.unwrap().teams().await.unwrap().len(), 1);
    assert_eq!(b.unwrap().teams().await.unwrap().len(), 1);
    drop_schema(&url).await;
}

#[tokio::test]
async fn an_unreachable_postgres_is_a_clear_error() {
    let err = PostgresStore::connect("host=127.0.0.1 port=1 user=postgres dbname=test")
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("cannot connect to PostgreSQL"),
        "{err}"
    );
}
