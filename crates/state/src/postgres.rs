//! PostgreSQL, for many gateway instances sharing one set of keys. One pipelined connection
//! per process (tokio-postgres multiplexes queries on it); the schema is migrated under an
//! advisory lock, so replicas starting together do not race.

use relais_core::BoxFuture;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Row};

use crate::migrations::{
    CREATE_SCHEMA_TABLE, INSERT_KEY, INSERT_TEAM, REVOKE_KEY, ROTATE_KEY, SELECT_KEY_BY_HASH,
    SELECT_KEYS, SELECT_TEAMS, STEPS,
};
use crate::{
    KeyStore, StoreError, StoredKey, Team, limits_from_sql, limits_to_sql, routes_from_text,
    routes_to_text,
};

/// Keys and teams in PostgreSQL.
pub struct PostgresStore {
    client: Client,
}

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
    Ok(limits_from_sql([
        r.try_get(first).map_err(db_error)?,
        r.try_get(first + 1).map_err(db_error)?,
        r.try_get(first + 2).map_err(db_error)?,
    ]))
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
    })
}

impl PostgresStore {
    /// Connect (`postgres://user@host:port/db`, or key=value form) and migrate the schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let (mut client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "PostgreSQL connection closed");
            }
        });
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
        let applied = usize::try_from(applied).unwrap_or(0);
        if applied > STEPS.len() {
            return Err(StoreError::Backend(format!(
                "the database schema is at version {applied}, newer than this relais knows ({}): upgrade relais",
                STEPS.len()
            )));
        }
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
        Ok(Self { client })
    }
}

impl KeyStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn create_team<'a>(&'a self, team: &'a Team) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let [rpm, tpm, concurrent] = limits_to_sql(&team.limits);
            self.client
                .execute(
                    INSERT_TEAM,
                    &[
                        &team.id,
                        &team.name,
                        &routes_to_text(&team.routes),
                        &team.created_at,
                        &rpm,
                        &tpm,
                        &concurrent,
                    ],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    fn teams(&self) -> BoxFuture<'_, Result<Vec<Team>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .client
                .query(SELECT_TEAMS, &[])
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(|r| {
                    Ok(Team {
                        id: r.try_get(0).map_err(db_error)?,
                        name: r.try_get(1).map_err(db_error)?,
                        routes: routes_from_text(r.try_get(2).map_err(db_error)?)?,
                        created_at: r.try_get(3).map_err(db_error)?,
                        limits: limits_from_row(r, 4)?,
                    })
                })
                .collect()
        })
    }

    fn insert_key<'a>(&'a self, k: &'a StoredKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let [rpm, tpm, concurrent] = limits_to_sql(&k.limits);
            self.client
                .execute(
                    INSERT_KEY,
                    &[
                        &k.id,
                        &k.name,
                        &k.team_id,
                        &k.prefix,
                        &k.hash,
                        &routes_to_text(&k.routes),
                        &k.created_at,
                        &k.revoked_at,
                        &rpm,
                        &tpm,
                        &concurrent,
                    ],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    fn keys(&self) -> BoxFuture<'_, Result<Vec<StoredKey>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .client
                .query(SELECT_KEYS, &[])
                .await
                .map_err(db_error)?;
            rows.iter().map(key_from_row).collect()
        })
    }

    fn key_by_hash<'a>(
        &'a self,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredKey>, StoreError>> {
        Box::pin(async move {
            let row = self
                .client
                .query_opt(SELECT_KEY_BY_HASH, &[&hash])
                .await
                .map_err(db_error)?;
            row.as_ref().map(key_from_row).transpose()
        })
    }

    fn revoke_key<'a>(&'a self, id: &'a str, at: i64) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let n = self
                .client
                .execute(REVOKE_KEY, &[&id, &at])
                .await
                .map_err(db_error)?;
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
            let n = self
                .client
                .execute(ROTATE_KEY, &[&id, &prefix, &hash])
                .await
                .map_err(db_error)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("active key {id}")));
            }
            Ok(())
        })
    }
}
