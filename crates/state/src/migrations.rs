//! The schema, one step per entry, shared by SQLite and PostgreSQL (the SQL below is the common
//! subset of both). A step is applied once, in order, and recorded in `relais_schema`.

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
];

pub(crate) const CREATE_SCHEMA_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS relais_schema (version BIGINT PRIMARY KEY)";
