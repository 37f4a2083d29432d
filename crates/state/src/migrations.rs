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
    // Budgets in pico-USD per UTC day, UTC month and in total.
    "ALTER TABLE relais_teams ADD COLUMN budget_day BIGINT;
     ALTER TABLE relais_teams ADD COLUMN budget_month BIGINT;
     ALTER TABLE relais_teams ADD COLUMN budget_total BIGINT;
     ALTER TABLE relais_keys ADD COLUMN budget_day BIGINT;
     ALTER TABLE relais_keys ADD COLUMN budget_month BIGINT;
     ALTER TABLE relais_keys ADD COLUMN budget_total BIGINT",
    // The ledger: attempt 0 is the request as the client saw it, 1.. its upstream attempts.
    // `id` is the gateway's own (unique) id of the request, `request_id` the one the client
    // saw (it may have chosen it). Replays insert the same (id, attempt) again and are ignored.
    "CREATE TABLE relais_ledger (
        id TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        category TEXT NOT NULL,
        key_id TEXT,
        team_id TEXT,
        route TEXT NOT NULL,
        deployment TEXT,
        provider TEXT,
        vendor TEXT,
        model TEXT,
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        cache_read_tokens BIGINT NOT NULL,
        cache_write_tokens BIGINT NOT NULL,
        reasoning_tokens BIGINT NOT NULL,
        cost_pusd BIGINT NOT NULL,
        latency_us BIGINT NOT NULL,
        ttft_us BIGINT,
        status BIGINT NOT NULL,
        error_class TEXT,
        stream BIGINT NOT NULL,
        PRIMARY KEY (id, attempt)
    );
    CREATE INDEX relais_ledger_at ON relais_ledger (at_ms);
    CREATE INDEX relais_ledger_key ON relais_ledger (key_id, at_ms);
    CREATE INDEX relais_ledger_team ON relais_ledger (team_id, at_ms)",
    // Allowed vendors and data classes, as a JSON object (NULL: unrestricted).
    "ALTER TABLE relais_teams ADD COLUMN reach TEXT;
     ALTER TABLE relais_keys ADD COLUMN reach TEXT",
    // Plan B: shadow samples, scored against the live answer (`scores` is a JSON object).
    "CREATE TABLE relais_shadow (
        id TEXT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        route TEXT NOT NULL,
        backup TEXT NOT NULL,
        vendor TEXT NOT NULL,
        ok BIGINT NOT NULL,
        scores TEXT NOT NULL
    );
    CREATE INDEX relais_shadow_route ON relais_shadow (route, backup, at_ms)",
    // Plan B: drills and promotions, and which drill a ledger row belongs to.
    "CREATE TABLE relais_events (
        id TEXT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        route TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX relais_events_kind ON relais_events (kind, route, at_ms);
    ALTER TABLE relais_ledger ADD COLUMN drill TEXT",
    // Responses API: stored responses, for previous_response_id and GET/DELETE.
    "CREATE TABLE relais_responses (
        id TEXT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        key_id TEXT,
        team_id TEXT,
        route TEXT NOT NULL,
        items TEXT NOT NULL,
        response TEXT NOT NULL
    );
    CREATE INDEX relais_responses_expiry ON relais_responses (expires_ms)",
    // Operators: budget resets, key expiry, and the audit log of admin changes.
    "ALTER TABLE relais_teams ADD COLUMN budget_reset_ms BIGINT;
     ALTER TABLE relais_keys ADD COLUMN budget_reset_ms BIGINT;
     ALTER TABLE relais_keys ADD COLUMN expires_at BIGINT;
     CREATE TABLE relais_audit (
        id TEXT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        role TEXT NOT NULL,
        address TEXT,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        old_value TEXT,
        new_value TEXT
    );
    CREATE INDEX relais_audit_at ON relais_audit (at_ms)",
    // Guardrails: the classes of data a request carried (declared and detected).
    "ALTER TABLE relais_ledger ADD COLUMN data_classes TEXT",
];

pub(crate) const CREATE_SCHEMA_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS relais_schema (version BIGINT PRIMARY KEY)";

/// A team's columns in the order of [`INSERT_TEAM`] and [`SELECT_TEAMS`] (a macro, so that
/// `concat!` can take it).
macro_rules! team_columns {
    () => {
        "id, name, routes, created_at, rpm, tpm, max_concurrent, budget_day, budget_month, \
         budget_total, budget_reset_ms, reach"
    };
}
/// A key's columns in the order of [`INSERT_KEY`] and the key selects.
macro_rules! key_columns {
    () => {
        "id, name, team_id, prefix, hash, routes, created_at, revoked_at, rpm, tpm, \
         max_concurrent, budget_day, budget_month, budget_total, budget_reset_ms, reach, expires_at"
    };
}

pub(crate) const INSERT_TEAM: &str = concat!(
    "INSERT INTO relais_teams (",
    team_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
);
pub(crate) const SELECT_TEAMS: &str = concat!(
    "SELECT ",
    team_columns!(),
    " FROM relais_teams ORDER BY created_at, id"
);
/// Everything but the id and creation time.
pub(crate) const UPDATE_TEAM: &str = "UPDATE relais_teams SET name = $2, routes = $3, rpm = $4, \
    tpm = $5, max_concurrent = $6, budget_day = $7, budget_month = $8, budget_total = $9, \
    budget_reset_ms = $10, reach = $11 WHERE id = $1";
pub(crate) const INSERT_KEY: &str = concat!(
    "INSERT INTO relais_keys (",
    key_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
);
pub(crate) const SELECT_KEYS: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM relais_keys ORDER BY created_at, id"
);
pub(crate) const SELECT_KEY_BY_HASH: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM relais_keys WHERE hash = $1"
);
/// What an operator may change of a key: never its secret, team or revocation.
pub(crate) const UPDATE_KEY: &str = "UPDATE relais_keys SET name = $2, routes = $3, rpm = $4, \
    tpm = $5, max_concurrent = $6, budget_day = $7, budget_month = $8, budget_total = $9, \
    budget_reset_ms = $10, reach = $11, expires_at = $12 WHERE id = $1";
/// Revoking twice keeps the first time.
pub(crate) const REVOKE_KEY: &str =
    "UPDATE relais_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1";
pub(crate) const ROTATE_KEY: &str =
    "UPDATE relais_keys SET prefix = $2, hash = $3 WHERE id = $1 AND revoked_at IS NULL";
pub(crate) const INSERT_AUDIT: &str = "INSERT INTO relais_audit \
    (id, at_ms, actor, role, address, action, target, old_value, new_value) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
/// `$1`: entries before this time (Unix ms), `$2`: how many.
pub(crate) const SELECT_AUDIT: &str = "SELECT id, at_ms, actor, role, address, action, target, \
    old_value, new_value FROM relais_audit WHERE at_ms < $1 ORDER BY at_ms DESC, id DESC LIMIT $2";

/// How many of [`STEPS`] a database at schema version `applied` already has; an error when it
/// is newer than this build (an older relais must not run on a newer schema).
pub(crate) fn steps_to_apply(applied: i64) -> Result<usize, crate::StoreError> {
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > STEPS.len() {
        return Err(crate::StoreError::Backend(format!(
            "the database schema is at version {applied}, newer than this relais knows ({}): upgrade relais",
            STEPS.len()
        )));
    }
    Ok(applied)
}
