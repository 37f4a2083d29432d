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

use relais_state::{KeyStore, Limits, PostgresStore, SqliteStore, StoreError, StoredKey, Team};

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
        limits: Limits {
            rpm: None,
            tpm: Some(100_000),
            max_concurrent: None,
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
}

#[tokio::test]
async fn sqlite_store() {
    let store = sqlite_at(&sqlite_path()).await;
    assert_eq!(store.kind(), "sqlite");
    suite(&store).await;
}

#[tokio::test]
async fn postgres_store() {
    let url = postgres_schema().await;
    let store = PostgresStore::connect(&url).await.unwrap();
    assert_eq!(store.kind(), "postgres");
    suite(&store).await;
    drop_schema(&url).await;
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
