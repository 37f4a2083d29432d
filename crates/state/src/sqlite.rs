//! The embedded default: one SQLite file, in WAL mode, driven from tokio's blocking pool so no
//! worker ever waits on the disk.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use relais_core::BoxFuture;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use crate::ledger::{
    DELETE_RESPONSE, GET_RESPONSE, INSERT_SAMPLE, LedgerRow, LedgerStore, PURGE_RESPONSES,
    PUT_EVENT, PUT_RESPONSE, PlanEvent, RowQuery, SELECT_EVENTS, SELECT_SAMPLES, SPEND_SQL,
    ShadowSample, Spend, StoredResponse, UsageLine, UsageQuery, insert_sql, requests_sql,
    rows_of_sql, to_i64, to_u64, usage_sql,
};
use crate::migrations::{
    CREATE_SCHEMA_TABLE, INSERT_AUDIT, INSERT_KEY, INSERT_TEAM, REVOKE_KEY, ROTATE_KEY,
    SELECT_AUDIT, SELECT_KEY_BY_HASH, SELECT_KEYS, SELECT_TEAMS, STEPS, UPDATE_KEY, UPDATE_TEAM,
    steps_to_apply,
};
use crate::{
    AuditEntry, KeyStore, Reach, StoreError, StoredKey, Team, limits_from_sql, limits_to_sql,
    reach_from_text, reach_to_text, routes_from_text, routes_to_text,
};

/// Keys and teams in a SQLite file.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

/// The shared statements use PostgreSQL's `$1`; SQLite reads `$1` as a *named* parameter
/// (numbered by first appearance) and `?1` as the numbered one.
fn sql(statement: &str) -> String {
    statement.replace('$', "?")
}

fn db_error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
            StoreError::Conflict(e.to_string())
        }
        _ => StoreError::Backend(format!("SQLite: {e}")),
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute(CREATE_SCHEMA_TABLE, []).map_err(db_error)?;
    let applied: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM relais_schema",
            [],
            |r| r.get(0),
        )
        .map_err(db_error)?;
    let applied = steps_to_apply(applied)?;
    for (i, step) in STEPS.iter().enumerate().skip(applied) {
        let tx = conn.unchecked_transaction().map_err(db_error)?;
        tx.execute_batch(step).map_err(db_error)?;
        tx.execute(
            "INSERT INTO relais_schema (version) VALUES (?1)",
            params![i64::try_from(i + 1).unwrap_or(i64::MAX)],
        )
        .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
    }
    Ok(())
}

/// A key row, with its route list and reach still as text (parsed by [`parsed_key`]).
type KeyRow = (StoredKey, Option<String>, Option<String>);

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok((
        StoredKey {
            id: r.get(0)?,
            name: r.get(1)?,
            team_id: r.get(2)?,
            prefix: r.get(3)?,
            hash: r.get(4)?,
            routes: None,
            created_at: r.get(6)?,
            revoked_at: r.get(7)?,
            expires_at: r.get(16)?,
            limits: limits_from_sql([
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
                r.get(13)?,
                r.get(14)?,
            ]),
            reach: Reach::default(),
        },
        r.get(5)?,
        r.get(15)?,
    ))
}

/// A team's values in the order of `INSERT_TEAM` (`UPDATE_TEAM` takes `[0..2] + [4..]`).
fn team_values(t: &Team) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value;
    let mut v = vec![
        Value::from(t.id.clone()),
        Value::from(t.name.clone()),
        Value::from(routes_to_text(&t.routes)),
        Value::from(t.created_at),
    ];
    v.extend(limits_to_sql(&t.limits).map(Value::from));
    v.push(Value::from(reach_to_text(&t.reach)));
    v
}

/// A key's values in the order of `INSERT_KEY`.
fn key_values(k: &StoredKey) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value;
    let mut v = vec![
        Value::from(k.id.clone()),
        Value::from(k.name.clone()),
        Value::from(k.team_id.clone()),
        Value::from(k.prefix.clone()),
        Value::from(k.hash.clone()),
        Value::from(routes_to_text(&k.routes)),
        Value::from(k.created_at),
        Value::from(k.revoked_at),
    ];
    v.extend(limits_to_sql(&k.limits).map(Value::from));
    v.push(Value::from(reach_to_text(&k.reach)));
    v.push(Value::from(k.expires_at));
    v
}

/// Run an `UPDATE ... WHERE id = $1`; `NotFound` when it matched no row.
fn update_one(
    c: &Connection,
    statement: &str,
    values: Vec<rusqlite::types::Value>,
    what: String,
) -> Result<(), StoreError> {
    let n = c
        .execute(&sql(statement), rusqlite::params_from_iter(values))
        .map_err(db_error)?;
    if n == 0 {
        return Err(StoreError::NotFound(what));
    }
    Ok(())
}

fn parsed_key((mut k, routes, reach): KeyRow) -> Result<StoredKey, StoreError> {
    k.routes = routes_from_text(routes)?;
    k.reach = reach_from_text(reach)?;
    Ok(k)
}

/// Ledger rows inserted between two yields of the writing thread.
const YIELD_EVERY: usize = 16;

impl SqliteStore {
    /// Open (creating it if needed) the database file and bring its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            let conn = Connection::open(&path)
                .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
            // WAL lets readers run beside the writer; foreign keys keep a key's team real.
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(db_error)?;
            conn.pragma_update(None, "foreign_keys", "ON")
                .map_err(db_error)?;
            // 8 MiB of page cache instead of SQLite's 2 MiB: the ledger's indexes stay in
            // memory instead of being read back from the OS on every shipment.
            conn.pragma_update(None, "cache_size", -8_192)
                .map_err(db_error)?;
            conn.busy_timeout(Duration::from_secs(5))
                .map_err(db_error)?;
            migrate(&conn)?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("SQLite open task failed: {e}")))??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` on the connection in the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            crate::background_thread();
            let c = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&c)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("SQLite task failed: {e}")))?
    }
}

impl KeyStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn create_team<'a>(&'a self, team: &'a Team) -> BoxFuture<'a, Result<(), StoreError>> {
        let values = team_values(team);
        Box::pin(self.run(move |c| {
            c.execute(&sql(INSERT_TEAM), rusqlite::params_from_iter(values))
                .map_err(db_error)?;
            Ok(())
        }))
    }

    fn teams(&self) -> BoxFuture<'_, Result<Vec<Team>, StoreError>> {
        Box::pin(self.run(|c| {
            let mut stmt = c.prepare(&sql(SELECT_TEAMS)).map_err(db_error)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, i64>(3)?,
                        limits_from_sql([
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                            r.get(8)?,
                            r.get(9)?,
                            r.get(10)?,
                        ]),
                        r.get::<_, Option<String>>(11)?,
                    ))
                })
                .map_err(db_error)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, name, routes, created_at, limits, reach) = row.map_err(db_error)?;
                out.push(Team {
                    id,
                    name,
                    routes: routes_from_text(routes)?,
                    created_at,
                    limits,
                    reach: reach_from_text(reach)?,
                });
            }
            Ok(out)
        }))
    }

    fn insert_key<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), StoreError>> {
        let values = key_values(key);
        Box::pin(self.run(move |c| {
            c.execute(&sql(INSERT_KEY), rusqlite::params_from_iter(values))
                .map_err(db_error)?;
            Ok(())
        }))
    }

    fn keys(&self) -> BoxFuture<'_, Result<Vec<StoredKey>, StoreError>> {
        Box::pin(self.run(|c| {
            let mut stmt = c.prepare(&sql(SELECT_KEYS)).map_err(db_error)?;
            let rows = stmt.query_map([], key_from_row).map_err(db_error)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(parsed_key(row.map_err(db_error)?)?);
            }
            Ok(out)
        }))
    }

    fn key_by_hash<'a>(
        &'a self,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredKey>, StoreError>> {
        let hash = hash.to_owned();
        Box::pin(self.run(move |c| {
            let found = c
                .query_row(&sql(SELECT_KEY_BY_HASH), params![hash], key_from_row)
                .optional()
                .map_err(db_error)?;
            found.map(parsed_key).transpose()
        }))
    }

    fn revoke_key<'a>(&'a self, id: &'a str, at: i64) -> BoxFuture<'a, Result<(), StoreError>> {
        let id = id.to_owned();
        Box::pin(self.run(move |c| {
            let n = c
                .execute(&sql(REVOKE_KEY), params![id, at])
                .map_err(db_error)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("key {id}")));
            }
            Ok(())
        }))
    }

    fn rotate_key<'a>(
        &'a self,
        id: &'a str,
        prefix: &'a str,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (id, prefix, hash) = (id.to_owned(), prefix.to_owned(), hash.to_owned());
        Box::pin(self.run(move |c| {
            let n = c
                .execute(&sql(ROTATE_KEY), params![id, prefix, hash])
                .map_err(db_error)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("active key {id}")));
            }
            Ok(())
        }))
    }

    fn update_team<'a>(&'a self, team: &'a Team) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut values = team_values(team);
        values.remove(3); // created_at is not updated
        let what = format!("team {}", team.id);
        Box::pin(self.run(move |c| update_one(c, UPDATE_TEAM, values, what)))
    }

    fn update_key<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), StoreError>> {
        // id, then name, routes, limits, reach, expiry (never team, secret or revocation).
        let mut values = key_values(key);
        values.drain(2..8);
        values.insert(2, rusqlite::types::Value::from(routes_to_text(&key.routes)));
        let what = format!("key {}", key.id);
        Box::pin(self.run(move |c| update_one(c, UPDATE_KEY, values, what)))
    }

    fn put_audit<'a>(&'a self, e: &'a AuditEntry) -> BoxFuture<'a, Result<(), StoreError>> {
        let e = e.clone();
        Box::pin(self.run(move |c| {
            c.execute(
                &sql(INSERT_AUDIT),
                params![
                    e.id, e.at_ms, e.actor, e.role, e.address, e.action, e.target, e.before,
                    e.after
                ],
            )
            .map_err(db_error)?;
            Ok(())
        }))
    }

    fn audit(
        &self,
        limit: u32,
        before_ms: Option<i64>,
    ) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>> {
        Box::pin(self.run(move |c| {
            let mut stmt = c.prepare(&sql(SELECT_AUDIT)).map_err(db_error)?;
            let rows = stmt
                .query_map(
                    params![before_ms.unwrap_or(i64::MAX), i64::from(limit)],
                    |r| {
                        Ok(AuditEntry {
                            id: r.get(0)?,
                            at_ms: r.get(1)?,
                            actor: r.get(2)?,
                            role: r.get(3)?,
                            address: r.get(4)?,
                            action: r.get(5)?,
                            target: r.get(6)?,
                            before: r.get(7)?,
                            after: r.get(8)?,
                        })
                    },
                )
                .map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
        }))
    }
}

fn ledger_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerRow> {
    let u = |i: usize| r.get::<_, i64>(i).map(to_u64);
    Ok(LedgerRow {
        id: r.get(0)?,
        attempt: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        request_id: r.get(2)?,
        at_ms: r.get(3)?,
        category: r.get(4)?,
        key_id: r.get(5)?,
        team_id: r.get(6)?,
        route: r.get(7)?,
        deployment: r.get(8)?,
        provider: r.get(9)?,
        vendor: r.get(10)?,
        model: r.get(11)?,
        input_tokens: u(12)?,
        output_tokens: u(13)?,
        cache_read_tokens: u(14)?,
        cache_write_tokens: u(15)?,
        reasoning_tokens: u(16)?,
        cost_pusd: u(17)?,
        latency_us: u(18)?,
        ttft_us: r.get::<_, Option<i64>>(19)?.map(to_u64),
        status: u16::try_from(r.get::<_, i64>(20)?).unwrap_or(0),
        error_class: r.get(21)?,
        stream: r.get::<_, i64>(22)? != 0,
        drill: r.get(23)?,
        data_classes: r.get(24)?,
    })
}

impl LedgerStore for SqliteStore {
    fn insert_rows<'a>(&'a self, rows: &'a [LedgerRow]) -> BoxFuture<'a, Result<u64, StoreError>> {
        let rows = rows.to_vec();
        Box::pin(self.run(move |c| {
            let tx = c.unchecked_transaction().map_err(db_error)?;
            let mut added = 0;
            {
                let mut stmt = tx.prepare_cached(&insert_sql(1, '?')).map_err(db_error)?;
                for (i, r) in rows.iter().enumerate() {
                    // Let the request threads run between short runs of inserts: on a busy
                    // core this thread would otherwise share it evenly with them for the
                    // whole batch, and the requests that arrive meanwhile wait (measured
                    // with the gateway on one core at 5,000 req/s: p99 3.9 ms -> 1.2-1.5 ms,
                    // and 14,000 -> 16,000 req/s at most).
                    if i % YIELD_EVERY == YIELD_EVERY - 1 {
                        std::thread::yield_now();
                    }
                    added += stmt
                        .execute(params![
                            r.id,
                            i64::from(r.attempt),
                            r.request_id,
                            r.at_ms,
                            r.category,
                            r.key_id,
                            r.team_id,
                            r.route,
                            r.deployment,
                            r.provider,
                            r.vendor,
                            r.model,
                            to_i64(r.input_tokens),
                            to_i64(r.output_tokens),
                            to_i64(r.cache_read_tokens),
                            to_i64(r.cache_write_tokens),
                            to_i64(r.reasoning_tokens),
                            to_i64(r.cost_pusd),
                            to_i64(r.latency_us),
                            r.ttft_us.map(to_i64),
                            i64::from(r.status),
                            r.error_class,
                            i64::from(r.stream),
                            r.drill,
                            r.data_classes,
                        ])
                        .map_err(db_error)? as u64;
                }
            }
            tx.commit().map_err(db_error)?;
            Ok(added)
        }))
    }

    fn usage<'a>(&'a self, q: &'a UsageQuery) -> BoxFuture<'a, Result<Vec<UsageLine>, StoreError>> {
        let q = q.clone();
        Box::pin(self.run(move |c| {
            let mut stmt = c.prepare(&sql(&usage_sql(q.group_by))).map_err(db_error)?;
            let rows = stmt
                .query_map(
                    params![
                        q.category,
                        q.from_ms,
                        q.to_ms,
                        q.key_id.unwrap_or_default(),
                        q.team_id.unwrap_or_default(),
                        q.route.unwrap_or_default(),
                        q.drill.unwrap_or_default()
                    ],
                    |r| {
                        let u = |i: usize| r.get::<_, i64>(i).map(to_u64);
                        Ok(UsageLine {
                            group: r.get(0)?,
                            requests: u(1)?,
                            errors: u(2)?,
                            input_tokens: u(3)?,
                            output_tokens: u(4)?,
                            cache_read_tokens: u(5)?,
                            cache_write_tokens: u(6)?,
                            reasoning_tokens: u(7)?,
                            cost_pusd: u(8)?,
                        })
                    },
                )
                .map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
        }))
    }

    fn spend<'a>(
        &'a self,
        subject: &'a str,
        day_ms: i64,
        month_ms: i64,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Spend, StoreError>> {
        let subject = subject.to_owned();
        Box::pin(self.run(move |c| {
            c.query_row(
                &sql(SPEND_SQL),
                params![subject, day_ms, month_ms, since_ms],
                |r| {
                    Ok(Spend {
                        day: to_u64(r.get(0)?),
                        month: to_u64(r.get(1)?),
                        total: to_u64(r.get(2)?),
                    })
                },
            )
            .map_err(db_error)
        }))
    }

    fn requests<'a>(
        &'a self,
        q: &'a RowQuery,
    ) -> BoxFuture<'a, Result<Vec<LedgerRow>, StoreError>> {
        let q = q.clone();
        Box::pin(self.run(move |c| {
            let mut stmt = c.prepare(&sql(&requests_sql())).map_err(db_error)?;
            let rows = stmt
                .query_map(
                    params![
                        q.category,
                        q.from_ms,
                        q.to_ms,
                        q.key_id.unwrap_or_default(),
                        q.team_id.unwrap_or_default(),
                        q.route.unwrap_or_default(),
                        q.vendor.unwrap_or_default(),
                        i64::from(q.errors),
                        i64::from(q.limit)
                    ],
                    ledger_row,
                )
                .map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
        }))
    }

    fn rows_of<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<LedgerRow>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.run(move |c| {
            let mut stmt = c.prepare(&sql(&rows_of_sql())).map_err(db_error)?;
            let rows = stmt.query_map(params![id], ledger_row).map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
        }))
    }

    fn insert_samples<'a>(
        &'a self,
        samples: &'a [ShadowSample],
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let samples = samples.to_vec();
        Box::pin(self.run(move |c| {
            let tx = c.unchecked_transaction().map_err(db_error)?;
            let mut added = 0;
            {
                let mut stmt = tx.prepare_cached(&sql(INSERT_SAMPLE)).map_err(db_error)?;
                for s in &samples {
                    added += stmt
                        .execute(params![
                            s.id,
                            s.at_ms,
                            s.route,
                            s.backup,
                            s.vendor,
                            i64::from(s.ok),
                            s.scores
                        ])
                        .map_err(db_error)?;
                }
            }
            tx.commit().map_err(db_error)?;
            Ok(u64::try_from(added).unwrap_or(0))
        }))
    }

    fn put_event<'a>(&'a self, e: &'a PlanEvent) -> BoxFuture<'a, Result<(), StoreError>> {
        let e = e.clone();
        Box::pin(self.run(move |c| {
            c.execute(
                &sql(PUT_EVENT),
                params![e.id, e.at_ms, e.kind, e.route, e.body],
            )
            .map_err(db_error)?;
            Ok(())
        }))
    }

    fn events<'a>(
        &'a self,
        kind: &'a str,
        route: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<PlanEvent>, StoreError>> {
        let (kind, route) = (kind.to_owned(), route.unwrap_or_default().to_owned());
        Box::pin(self.run(move |c| {
            let mut stmt = c.prepare_cached(&sql(SELECT_EVENTS)).map_err(db_error)?;
            let rows = stmt
                .query_map(params![kind, route, i64::from(limit)], |r| {
                    Ok(PlanEvent {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        kind: r.get(2)?,
                        route: r.get(3)?,
                        body: r.get(4)?,
                    })
                })
                .map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
        }))
    }

    fn samples<'a>(
        &'a self,
        route: &'a str,
        backup: Option<&'a str>,
        since_ms: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<ShadowSample>, StoreError>> {
        let (route, backup) = (route.to_owned(), backup.unwrap_or_default().to_owned());
        Box::pin(self.run(move |c| {
            let mut stmt = c.prepare_cached(&sql(SELECT_SAMPLES)).map_err(db_error)?;
            let rows = stmt
                .query_map(params![route, backup, since_ms, i64::from(limit)], |r| {
                    Ok(ShadowSample {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        route: r.get(2)?,
                        backup: r.get(3)?,
                        vendor: r.get(4)?,
                        ok: r.get::<_, i64>(5)? != 0,
                        scores: r.get(6)?,
                    })
                })
                .map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
        }))
    }

    fn put_response<'a>(&'a self, r: &'a StoredResponse) -> BoxFuture<'a, Result<(), StoreError>> {
        let r = r.clone();
        Box::pin(self.run(move |c| {
            c.execute(
                &sql(PUT_RESPONSE),
                params![
                    r.id,
                    r.at_ms,
                    r.expires_ms,
                    r.key_id,
                    r.team_id,
                    r.route,
                    r.items,
                    r.response
                ],
            )
            .map_err(db_error)?;
            Ok(())
        }))
    }

    fn get_response<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<StoredResponse>, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.run(move |c| {
            c.query_row(&sql(GET_RESPONSE), params![id, now_ms], |r| {
                Ok(StoredResponse {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    expires_ms: r.get(2)?,
                    key_id: r.get(3)?,
                    team_id: r.get(4)?,
                    route: r.get(5)?,
                    items: r.get(6)?,
                    response: r.get(7)?,
                })
            })
            .optional()
            .map_err(db_error)
        }))
    }

    fn delete_response<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        let id = id.to_owned();
        Box::pin(self.run(move |c| {
            let n = c
                .execute(&sql(DELETE_RESPONSE), params![id])
                .map_err(db_error)?;
            Ok(n > 0)
        }))
    }

    fn purge_responses(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.run(move |c| {
            let n = c
                .execute(&sql(PURGE_RESPONSES), params![now_ms])
                .map_err(db_error)?;
            Ok(n as u64)
        }))
    }
}
