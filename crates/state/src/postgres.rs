//! PostgreSQL, for many gateway instances sharing one set of keys. One pipelined connection
//! per process (tokio-postgres multiplexes queries on it); the schema is migrated under an
//! advisory lock, so replicas starting together do not race.
//!
//! The connection heals itself: a query that finds it closed (a PostgreSQL restart, a
//! failover, an idle connection cut by a proxy) opens a new one, at most one attempt a second
//! for the whole process, so a store that is down costs callers one fast error, not a wait.
//! Every query has a deadline, so a network that drops packets without a reset cannot hold a
//! caller (or the ledger's shipper) forever; a connection that missed a deadline is replaced.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use relais_core::BoxFuture;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Row};

use crate::ledger::{
    DELETE_RESPONSE, GET_RESPONSE, INSERT_SAMPLE, LEDGER_WIDTH, LedgerRow, LedgerStore,
    PURGE_RESPONSES, PUT_EVENT, PUT_RESPONSE, PlanEvent, RowQuery, SELECT_EVENTS, SELECT_SAMPLES,
    SPEND_SQL, ShadowSample, Spend, StoredResponse, UsageLine, UsageQuery, insert_sql,
    requests_sql, rows_of_sql, to_i64, to_u64, usage_sql,
};
use crate::migrations::{
    CREATE_SCHEMA_TABLE, INSERT_AUDIT, INSERT_KEY, INSERT_TEAM, REVOKE_KEY, ROTATE_KEY,
    SELECT_AUDIT, SELECT_KEY_BY_HASH, SELECT_KEYS, SELECT_TEAMS, STEPS, UPDATE_KEY, UPDATE_TEAM,
    steps_to_apply,
};
use crate::{
    AuditEntry, KeyStore, StoreError, StoredKey, Team, limits_from_sql, limits_to_sql,
    reach_from_text, reach_to_text, routes_from_text, routes_to_text,
};

/// Keys and teams in PostgreSQL.
pub struct PostgresStore {
    config: Config,
    /// The live connection; `None` after one was found dead and before a new one opened.
    current: Mutex<Option<Arc<Client>>>,
    /// Serialises reconnection and remembers when it was last tried.
    reconnecting: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// How long one query may take. Generous: the ledger ships up to 1,000 rows in one call.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a connection may take, unless the URL sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection attempts are at least this far apart, whoever asks.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// Arbitrary, fixed: the advisory lock that serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 0x7265_6c61_6973;

fn db_error(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        || e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION)
    {
        return StoreError::Conflict(e.to_string());
    }
    // The error's Display never includes the connection string, so no password leaks here.
    StoreError::Backend(format!("PostgreSQL: {e}"))
}

fn limits_from_row(r: &Row, first: usize) -> Result<crate::Limits, StoreError> {
    let mut v = [None; 7];
    for (i, slot) in v.iter_mut().enumerate() {
        *slot = r.try_get(first + i).map_err(db_error)?;
    }
    Ok(limits_from_sql(v))
}

fn key_from_row(r: &Row) -> Result<StoredKey, StoreError> {
    Ok(StoredKey {
        id: r.try_get(0).map_err(db_error)?,
        name: r.try_get(1).map_err(db_error)?,
        team_id: r.try_get(2).map_err(db_error)?,
        prefix: r.try_get(3).map_err(db_error)?,
        hash: r.try_get(4).map_err(db_error)?,
        routes: routes_from_text(r.try_get(5).map_err(db_error)?)?,
        created_at: r.try_get(6).map_err(db_error)?,
        revoked_at: r.try_get(7).map_err(db_error)?,
        limits: limits_from_row(r, 8)?,
        reach: reach_from_text(r.try_get(15).map_err(db_error)?)?,
        expires_at: r.try_get(16).map_err(db_error)?,
    })
}

type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// A team's values in the order of `INSERT_TEAM`.
fn team_values(t: &Team) -> Vec<Param> {
    let mut v: Vec<Param> = vec![
        Box::new(t.id.clone()),
        Box::new(t.name.clone()),
        Box::new(routes_to_text(&t.routes)),
        Box::new(t.created_at),
    ];
    v.extend(limits_to_sql(&t.limits).map(|n| Box::new(n) as Param));
    v.push(Box::new(reach_to_text(&t.reach)));
    v
}

/// A key's values in the order of `INSERT_KEY`.
fn key_values(k: &StoredKey) -> Vec<Param> {
    let mut v: Vec<Param> = vec![
        Box::new(k.id.clone()),
        Box::new(k.name.clone()),
        Box::new(k.team_id.clone()),
        Box::new(k.prefix.clone()),
        Box::new(k.hash.clone()),
        Box::new(routes_to_text(&k.routes)),
        Box::new(k.created_at),
        Box::new(k.revoked_at),
    ];
    v.extend(limits_to_sql(&k.limits).map(|n| Box::new(n) as Param));
    v.push(Box::new(reach_to_text(&k.reach)));
    v.push(Box::new(k.expires_at));
    v
}

fn refs(values: &[Param]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// Open one connection, its I/O driven by a task of its own.
async fn open(config: &Config) -> Result<Client, StoreError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection closed; the next query opens a new one");
        }
    });
    Ok(client)
}

impl PostgresStore {
    /// Connect (`postgres://user@host:port/db`, or key=value form) and migrate the schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("not a PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // Operators find relais's sessions in pg_stat_activity by this name.
        if config.get_application_name().is_none() {
            config.application_name("relais");
        }
        let mut client = open(&config).await?;
        migrate(&mut client).await?;
        Ok(Self {
            config,
            current: Mutex::new(Some(Arc::new(client))),
            reconnecting: tokio::sync::Mutex::new(None),
        })
    }

    fn live(&self) -> Option<Arc<Client>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|c| !c.is_closed())
            .cloned()
    }

    /// The live connection, or a new one when it died (one attempt a second at most).
    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let mut last = self.reconnecting.lock().await;
        // Another caller may have reconnected while this one waited.
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let now = tokio::time::Instant::now();
        if last.is_some_and(|t| now.saturating_duration_since(t) < RECONNECT_EVERY) {
            return Err(StoreError::Backend(
                "PostgreSQL is unreachable (reconnecting)".to_owned(),
            ));
        }
        *last = Some(now);
        let client = Arc::new(open(&self.config).await?);
        tracing::info!("reconnected to PostgreSQL");
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(client.clone());
        Ok(client)
    }

    /// Await one query on `client` with the deadline; a connection that missed it is dropped,
    /// so the next caller opens a fresh one instead of queueing behind a dead socket.
    async fn timed<T>(
        &self,
        client: &Arc<Client>,
        query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(QUERY_TIMEOUT, query).await {
            Ok(r) => r.map_err(db_error),
            Err(_) => {
                let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
                if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
                    *current = None;
                }
                Err(StoreError::Backend(format!(
                    "PostgreSQL did not answer within {} s",
                    QUERY_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

/// Bring the schema up to date in one transaction under the migration lock.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_error)?;
    tx.batch_execute(CREATE_SCHEMA_TABLE)
        .await
        .map_err(db_error)?;
    let applied: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM relais_schema",
            &[],
        )
        .await
        .map_err(db_error)?
        .try_get(0)
        .map_err(db_error)?;
    let applied = steps_to_apply(applied)?;
    for (i, step) in STEPS.iter().enumerate().skip(applied) {
        tx.batch_execute(step).await.map_err(db_error)?;
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO relais_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(())
}

impl KeyStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn create_team<'a>(&'a self, team: &'a Team) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let values = team_values(team);
            self.timed(&c, c.execute(INSERT_TEAM, &refs(&values)))
                .await?;
            Ok(())
        })
    }

    fn teams(&self) -> BoxFuture<'_, Result<Vec<Team>, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = self.timed(&c, c.query(SELECT_TEAMS, &[])).await?;
            rows.iter()
                .map(|r| {
                    Ok(Team {
                        id: r.try_get(0).map_err(db_error)?,
                        name: r.try_get(1).map_err(db_error)?,
                        routes: routes_from_text(r.try_get(2).map_err(db_error)?)?,
                        created_at: r.try_get(3).map_err(db_error)?,
                        limits: limits_from_row(r, 4)?,
                        reach: reach_from_text(r.try_get(11).map_err(db_error)?)?,
                    })
                })
                .collect()
        })
    }

    fn insert_key<'a>(&'a self, k: &'a StoredKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let values = key_values(k);
            self.timed(&c, c.execute(INSERT_KEY, &refs(&values)))
                .await?;
            Ok(())
        })
    }

    fn keys(&self) -> BoxFuture<'_, Result<Vec<StoredKey>, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = self.timed(&c, c.query(SELECT_KEYS, &[])).await?;
            rows.iter().map(key_from_row).collect()
        })
    }

    fn key_by_hash<'a>(
        &'a self,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredKey>, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let row = self
                .timed(&c, c.query_opt(SELECT_KEY_BY_HASH, &[&hash]))
                .await?;
            row.as_ref().map(key_from_row).transpose()
        })
    }

    fn revoke_key<'a>(&'a self, id: &'a str, at: i64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let n = self.timed(&c, c.execute(REVOKE_KEY, &[&id, &at])).await?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("key {id}")));
            }
            Ok(())
        })
    }

    fn rotate_key<'a>(
        &'a self,
        id: &'a str,
        prefix: &'a str,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let n = self
                .timed(&c, c.execute(ROTATE_KEY, &[&id, &prefix, &hash]))
                .await?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("active key {id}")));
            }
            Ok(())
        })
    }

    fn update_team<'a>(&'a self, team: &'a Team) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut values = team_values(team);
            values.remove(3); // created_at is not updated
            self.update_one(UPDATE_TEAM, values, || format!("team {}", team.id))
                .await
        })
    }

    fn update_key<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // id, then name, routes, limits, reach, expiry (never team, secret or revocation).
            let mut values = key_values(key);
            values.drain(2..8);
            values.insert(2, Box::new(routes_to_text(&key.routes)));
            self.update_one(UPDATE_KEY, values, || format!("key {}", key.id))
                .await
        })
    }

    fn put_audit<'a>(&'a self, e: &'a AuditEntry) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            self.timed(
                &c,
                c.execute(
                    INSERT_AUDIT,
                    &[
                        &e.id, &e.at_ms, &e.actor, &e.role, &e.address, &e.action, &e.target,
                        &e.before, &e.after,
                    ],
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn audit(
        &self,
        limit: u32,
        before_ms: Option<i64>,
    ) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let before = before_ms.unwrap_or(i64::MAX);
            let rows = self
                .timed(&c, c.query(SELECT_AUDIT, &[&before, &i64::from(limit)]))
                .await?;
            rows.iter()
                .map(|r| {
                    let g = |i: usize| r.try_get::<_, String>(i).map_err(db_error);
                    let o = |i: usize| r.try_get::<_, Option<String>>(i).map_err(db_error);
                    Ok(AuditEntry {
                        id: g(0)?,
                        at_ms: r.try_get(1).map_err(db_error)?,
                        actor: g(2)?,
                        role: g(3)?,
                        address: o(4)?,
                        action: g(5)?,
                        target: g(6)?,
                        before: o(7)?,
                        after: o(8)?,
                    })
                })
                .collect()
        })
    }
}

impl PostgresStore {
    /// Run an `UPDATE ... WHERE id = $1`; `NotFound` when it matched no row.
    async fn update_one(
        &self,
        statement: &str,
        values: Vec<Param>,
        what: impl FnOnce() -> String,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        let n = self.timed(&c, c.execute(statement, &refs(&values))).await?;
        if n == 0 {
            return Err(StoreError::NotFound(what()));
        }
        Ok(())
    }
}

/// Rows per INSERT statement: 23 parameters each, well under PostgreSQL's 65,535.
const INSERT_CHUNK: usize = 256;

fn ledger_row(r: &Row) -> Result<LedgerRow, StoreError> {
    let u = |i: usize| r.try_get::<_, i64>(i).map(to_u64).map_err(db_error);
    Ok(LedgerRow {
        id: r.try_get(0).map_err(db_error)?,
        attempt: u32::try_from(r.try_get::<_, i64>(1).map_err(db_error)?).unwrap_or(0),
        request_id: r.try_get(2).map_err(db_error)?,
        at_ms: r.try_get(3).map_err(db_error)?,
        category: r.try_get(4).map_err(db_error)?,
        key_id: r.try_get(5).map_err(db_error)?,
        team_id: r.try_get(6).map_err(db_error)?,
        route: r.try_get(7).map_err(db_error)?,
        deployment: r.try_get(8).map_err(db_error)?,
        provider: r.try_get(9).map_err(db_error)?,
        vendor: r.try_get(10).map_err(db_error)?,
        model: r.try_get(11).map_err(db_error)?,
        input_tokens: u(12)?,
        output_tokens: u(13)?,
        cache_read_tokens: u(14)?,
        cache_write_tokens: u(15)?,
        reasoning_tokens: u(16)?,
        cost_pusd: u(17)?,
        latency_us: u(18)?,
        ttft_us: r
            .try_get::<_, Option<i64>>(19)
            .map_err(db_error)?
            .map(to_u64),
        status: u16::try_from(r.try_get::<_, i64>(20).map_err(db_error)?).unwrap_or(0),
        error_class: r.try_get(21).map_err(db_error)?,
        stream: r.try_get::<_, i64>(22).map_err(db_error)? != 0,
        drill: r.try_get(23).map_err(db_error)?,
        data_classes: r.try_get(24).map_err(db_error)?,
    })
}

/// A row's numbers as PostgreSQL BIGINTs, in column order from `input_tokens`.
fn ledger_numbers(r: &LedgerRow) -> [i64; 7] {
    [
        to_i64(r.input_tokens),
        to_i64(r.output_tokens),
        to_i64(r.cache_read_tokens),
        to_i64(r.cache_write_tokens),
        to_i64(r.reasoning_tokens),
        to_i64(r.cost_pusd),
        to_i64(r.latency_us),
    ]
}

impl LedgerStore for PostgresStore {
    fn insert_rows<'a>(&'a self, rows: &'a [LedgerRow]) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            // Owned numbers first: the parameter list borrows them.
            let scalars: Vec<([i64; 7], [i64; 4], Option<i64>)> = rows
                .iter()
                .map(|r| {
                    (
                        ledger_numbers(r),
                        [
                            i64::from(r.attempt),
                            i64::from(r.status),
                            i64::from(r.stream),
                            r.at_ms,
                        ],
                        r.ttft_us.map(to_i64),
                    )
                })
                .collect();
            let mut added = 0;
            for (chunk, nums) in rows.chunks(INSERT_CHUNK).zip(scalars.chunks(INSERT_CHUNK)) {
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    Vec::with_capacity(chunk.len() * LEDGER_WIDTH);
                for (r, (n, s, ttft)) in chunk.iter().zip(nums) {
                    params.extend_from_slice(&[
                        &r.id,
                        &s[0],
                        &r.request_id,
                        &s[3],
                        &r.category,
                        &r.key_id,
                        &r.team_id,
                        &r.route,
                        &r.deployment,
                        &r.provider,
                        &r.vendor,
                        &r.model,
                        &n[0],
                        &n[1],
                        &n[2],
                        &n[3],
                        &n[4],
                        &n[5],
                        &n[6],
                        ttft,
                        &s[1],
                        &r.error_class,
                        &s[2],
                        &r.drill,
                        &r.data_classes,
                    ]);
                }
                // One statement per chunk is atomic on its own; a replay of a chunk that
                // landed before a crash inserts nothing.
                added += self
                    .timed(&c, c.execute(&insert_sql(chunk.len(), '$'), &params))
                    .await?;
            }
            Ok(added)
        })
    }

    fn usage<'a>(&'a self, q: &'a UsageQuery) -> BoxFuture<'a, Result<Vec<UsageLine>, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let (key, team, route, drill) = (
                q.key_id.clone().unwrap_or_default(),
                q.team_id.clone().unwrap_or_default(),
                q.route.clone().unwrap_or_default(),
                q.drill.clone().unwrap_or_default(),
            );
            let rows = self
                .timed(
                    &c,
                    c.query(
                        &usage_sql(q.group_by),
                        &[
                            &q.category,
                            &q.from_ms,
                            &q.to_ms,
                            &key,
                            &team,
                            &route,
                            &drill,
                        ],
                    ),
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let u = |i: usize| r.try_get::<_, i64>(i).map(to_u64).map_err(db_error);
                    Ok(UsageLine {
                        group: r.try_get(0).map_err(db_error)?,
                        requests: u(1)?,
                        errors: u(2)?,
                        input_tokens: u(3)?,
                        output_tokens: u(4)?,
                        cache_read_tokens: u(5)?,
                        cache_write_tokens: u(6)?,
                        reasoning_tokens: u(7)?,
                        cost_pusd: u(8)?,
                    })
                })
                .collect()
        })
    }

    fn spend<'a>(
        &'a self,
        subject: &'a str,
        day_ms: i64,
        month_ms: i64,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Spend, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let r = self
                .timed(
                    &c,
                    c.query_one(SPEND_SQL, &[&subject, &day_ms, &month_ms, &since_ms]),
                )
                .await?;
            let u = |i: usize| r.try_get::<_, i64>(i).map(to_u64).map_err(db_error);
            Ok(Spend {
                day: u(0)?,
                month: u(1)?,
                total: u(2)?,
            })
        })
    }

    fn requests<'a>(
        &'a self,
        q: &'a RowQuery,
    ) -> BoxFuture<'a, Result<Vec<LedgerRow>, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let text = |v: &Option<String>| v.clone().unwrap_or_default();
            let (key, team, route, vendor) = (
                text(&q.key_id),
                text(&q.team_id),
                text(&q.route),
                text(&q.vendor),
            );
            let (errors, limit) = (i64::from(q.errors), i64::from(q.limit));
            let rows = self
                .timed(
                    &c,
                    c.query(
                        &requests_sql(),
                        &[
                            &q.category,
                            &q.from_ms,
                            &q.to_ms,
                            &key,
                            &team,
                            &route,
                            &vendor,
                            &errors,
                            &limit,
                        ],
                    ),
                )
                .await?;
            rows.iter().map(ledger_row).collect()
        })
    }

    fn rows_of<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<LedgerRow>, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = self.timed(&c, c.query(&rows_of_sql(), &[&id])).await?;
            rows.iter().map(ledger_row).collect()
        })
    }

    fn insert_samples<'a>(
        &'a self,
        samples: &'a [ShadowSample],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let mut added = 0;
            for s in samples {
                let ok = i64::from(s.ok);
                added += self
                    .timed(
                        &c,
                        c.execute(
                            INSERT_SAMPLE,
                            &[
                                &s.id, &s.at_ms, &s.route, &s.backup, &s.vendor, &ok, &s.scores,
                            ],
                        ),
                    )
                    .await?;
            }
            Ok(added)
        })
    }

    fn put_event<'a>(&'a self, e: &'a PlanEvent) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            self.timed(
                &c,
                c.execute(PUT_EVENT, &[&e.id, &e.at_ms, &e.kind, &e.route, &e.body]),
            )
            .await?;
            Ok(())
        })
    }

    fn events<'a>(
        &'a self,
        kind: &'a str,
        route: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<PlanEvent>, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let route = route.unwrap_or_default();
            let limit = i64::from(limit);
            let rows = self
                .timed(&c, c.query(SELECT_EVENTS, &[&kind, &route, &limit]))
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(PlanEvent {
                        id: r.try_get(0).map_err(db_error)?,
                        at_ms: r.try_get(1).map_err(db_error)?,
                        kind: r.try_get(2).map_err(db_error)?,
                        route: r.try_get(3).map_err(db_error)?,
                        body: r.try_get(4).map_err(db_error)?,
                    })
                })
                .collect()
        })
    }

    fn samples<'a>(
        &'a self,
        route: &'a str,
        backup: Option<&'a str>,
        since_ms: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<ShadowSample>, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let backup = backup.unwrap_or_default();
            let limit = i64::from(limit);
            let rows = self
                .timed(
                    &c,
                    c.query(SELECT_SAMPLES, &[&route, &backup, &since_ms, &limit]),
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(ShadowSample {
                        id: r.try_get(0).map_err(db_error)?,
                        at_ms: r.try_get(1).map_err(db_error)?,
                        route: r.try_get(2).map_err(db_error)?,
                        backup: r.try_get(3).map_err(db_error)?,
                        vendor: r.try_get(4).map_err(db_error)?,
                        ok: r.try_get::<_, i64>(5).map_err(db_error)? != 0,
                        scores: r.try_get(6).map_err(db_error)?,
                    })
                })
                .collect()
        })
    }

    fn put_response<'a>(&'a self, r: &'a StoredResponse) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            self.timed(
                &c,
                c.execute(
                    PUT_RESPONSE,
                    &[
                        &r.id,
                        &r.at_ms,
                        &r.expires_ms,
                        &r.key_id,
                        &r.team_id,
                        &r.route,
                        &r.items,
                        &r.response,
                    ],
                ),
            )
            .await?;
            Ok(())
        })
    }

    fn get_response<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<StoredResponse>, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = self
                .timed(&c, c.query(GET_RESPONSE, &[&id, &now_ms]))
                .await?;
            rows.first()
                .map(|r| {
                    Ok(StoredResponse {
                        id: r.try_get(0).map_err(db_error)?,
                        at_ms: r.try_get(1).map_err(db_error)?,
                        expires_ms: r.try_get(2).map_err(db_error)?,
                        key_id: r.try_get(3).map_err(db_error)?,
                        team_id: r.try_get(4).map_err(db_error)?,
                        route: r.try_get(5).map_err(db_error)?,
                        items: r.try_get(6).map_err(db_error)?,
                        response: r.try_get(7).map_err(db_error)?,
                    })
                })
                .transpose()
        })
    }

    fn delete_response<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let n = self.timed(&c, c.execute(DELETE_RESPONSE, &[&id])).await?;
            Ok(n > 0)
        })
    }

    fn purge_responses(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            self.timed(&c, c.execute(PURGE_RESPONSES, &[&now_ms])).await
        })
    }
}
