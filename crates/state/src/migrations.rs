//! The schema and the statements, shared by SQLite and PostgreSQL: the SQL below is the common
//! subset of both, and `$1`-style parameters are positional in both. A schema step is applied
//! once, in order, and recorded in `relais_schema`.

pub(crate) const STEPS: &[&str] = &[
    "CREATE TABLE relais_teams (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        routes TEXT,
        created_at BIGINT NOT NULL
    )",
    "CREATE TABLE relais_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        team_id TEXT NOT NULL REFERENCES relais_teams(id),
        prefix TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        routes TEXT,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    )",
    "ALTER TABLE relais_teams ADD COLUMN rpm BIGINT;
     ALTER TABLE relais_teams ADD COLUMN tpm BIGINT;
     ALTER TABLE relais_teams ADD COLUMN max_concurrent BIGINT;
     ALTER TABLE relais_keys ADD COLUMN rpm BIGINT;
     ALTER TABLE relais_keys ADD COLUMN tpm BIGINT;
     ALTER TABLE relais_keys ADD COLUMN max_concurrent BIGINT",
];

pub(crate) const CREATE_SCHEMA_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS relais_schema (version BIGINT PRIMARY KEY)";

pub(crate) const INSERT_TEAM: &str = "INSERT INTO relais_teams \
    (id, name, routes, created_at, rpm, tpm, max_concurrent) VALUES ($1, $2, $3, $4, $5, $6, $7)";
pub(crate) const SELECT_TEAMS: &str = "SELECT id, name, routes, created_at, rpm, tpm, \
    max_concurrent FROM relais_teams ORDER BY created_at, id";
pub(crate) const INSERT_KEY: &str = "INSERT INTO relais_keys \
    (id, name, team_id, prefix, hash, routes, created_at, revoked_at, rpm, tpm, max_concurrent) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
pub(crate) const SELECT_KEYS: &str = "SELECT id, name, team_id, prefix, hash, routes, created_at, \
    revoked_at, rpm, tpm, max_concurrent FROM relais_keys ORDER BY created_at, id";
pub(crate) const SELECT_KEY_BY_HASH: &str = "SELECT id, name, team_id, prefix, hash, routes, \
    created_at, revoked_at, rpm, tpm, max_concurrent FROM relais_keys WHERE hash = $1";
/// Revoking twice keeps the first time.
pub(crate) const REVOKE_KEY: &str =
    "UPDATE relais_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1";
pub(crate) const ROTATE_KEY: &str =
    "UPDATE relais_keys SET prefix = $2, hash = $3 WHERE id = $1 AND revoked_at IS NULL";
