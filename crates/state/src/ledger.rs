//! The ledger's rows and the queries over them, shared by both stores. A row is written once per
//! request (attempt 0: what the client got) and once per upstream attempt (1, 2, ...); the pair
//! (id, attempt) is the primary key, so writing a row twice (a replay after a crash) keeps one.

use relais_core::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// One ledger row. Money is integer pico-USD (10⁻¹² USD); times are microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// The gateway's own id of the request, unique even when clients reuse `x-request-id`.
    pub id: String,
    /// 0: the request as the client saw it (its totals); 1, 2, ...: its upstream attempts.
    pub attempt: u32,
    /// The id the client saw (`x-request-id`).
    pub request_id: String,
    /// Unix milliseconds when the request arrived.
    pub at_ms: i64,
    /// `live` for client traffic (others, such as shadow copies, are kept apart).
    pub category: String,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub route: String,
    pub deployment: Option<String>,
    pub provider: Option<String>,
    pub vendor: Option<String>,
    /// The upstream's name of the model.
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_pusd: u64,
    pub latency_us: u64,
    pub ttft_us: Option<u64>,
    /// The HTTP status the client got (attempt 0), or the upstream's (0 when none answered).
    pub status: u16,
    /// The error class when it failed (`rate_limited`, `timeout`, ...).
    pub error_class: Option<String>,
    pub stream: bool,
    /// The failover drill this request was part of (its share of traffic treated a
    /// deployment as down), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<String>,
    /// The classes of data the request carried: the one it declared and those the guardrails
    /// found, comma-separated (classes only, never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_classes: Option<String>,
}

/// What to group a usage summary by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Team,
    Route,
    Vendor,
    Provider,
    /// Deployment id (`provider/model`).
    Deployment,
    Model,
    /// UTC day.
    Day,
    /// UTC minute (for peaks: the busiest minute of a window).
    Minute,
    /// UTC day and vendor, as `day:vendor` (the dependency index over time).
    DayVendor,
}

impl GroupBy {
    pub const NAMES: &'static str =
        "key, team, route, vendor, provider, deployment, model, day, minute, day_vendor";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "key" => Self::Key,
            "team" => Self::Team,
            "route" => Self::Route,
            "vendor" => Self::Vendor,
            "provider" => Self::Provider,
            "deployment" => Self::Deployment,
            "model" => Self::Model,
            "day" => Self::Day,
            "minute" => Self::Minute,
            "day_vendor" => Self::DayVendor,
            _ => return None,
        })
    }

    /// The SQL expression grouped on; a fixed string per variant, never user input.
    pub(crate) fn column(self) -> &'static str {
        match self {
            Self::Key => "COALESCE(key_id, '')",
            Self::Team => "COALESCE(team_id, '')",
            Self::Route => "route",
            Self::Vendor => "COALESCE(vendor, '')",
            Self::Provider => "COALESCE(provider, '')",
            Self::Deployment => "COALESCE(deployment, '')",
            Self::Model => "COALESCE(model, '')",
            Self::Day => "CAST(at_ms / 86400000 AS TEXT)",
            Self::Minute => "CAST(at_ms / 60000 AS TEXT)",
            Self::DayVendor => "CAST(at_ms / 86400000 AS TEXT) || ':' || COALESCE(vendor, '')",
        }
    }
}

/// Which requests to summarise: attempt-0 rows of one category in `[from_ms, to_ms)`,
/// optionally of one key, team or route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub group_by: GroupBy,
    pub from_ms: i64,
    pub to_ms: i64,
    pub category: String,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub route: Option<String>,
    /// Only the requests of this failover drill.
    pub drill: Option<String>,
}

impl UsageQuery {
    /// Live traffic of one route in `[from_ms, to_ms)`, grouped by `group_by`: what Plan B's
    /// readiness, forecasts, dependency checks and drill reports read.
    pub fn live_route(group_by: GroupBy, route: &str, from_ms: i64, to_ms: i64) -> Self {
        Self {
            group_by,
            from_ms,
            to_ms,
            category: "live".to_owned(),
            key_id: None,
            team_id: None,
            route: Some(route.to_owned()),
            drill: None,
        }
    }
}

/// Which requests to list: attempt-0 rows of one category in `[from_ms, to_ms)`, optionally
/// of one key, team, route or vendor, only failures when `errors`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub category: String,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub route: Option<String>,
    pub vendor: Option<String>,
    pub errors: bool,
    pub limit: u32,
}

/// One group of a usage summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageLine {
    /// The group's value (a key id, a route, ...; for days, the number of days since 1970).
    pub group: String,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_pusd: u64,
}

/// A subject's spend in pico-USD: since the start of the day, of the month, and ever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub day: u64,
    pub month: u64,
    pub total: u64,
}

/// Where ledger rows end up. Implementations: [`crate::SqliteStore`], [`crate::PostgresStore`].
pub trait LedgerStore: Send + Sync {
    /// Insert rows in one transaction; rows already present (same id and attempt) are left as
    /// they are. Returns how many were new.
    fn insert_rows<'a>(&'a self, rows: &'a [LedgerRow]) -> BoxFuture<'a, Result<u64, StoreError>>;
    fn usage<'a>(&'a self, q: &'a UsageQuery) -> BoxFuture<'a, Result<Vec<UsageLine>, StoreError>>;
    /// Live spend of a key or team (by its id) since `day_ms` and `month_ms`, and in total;
    /// nothing before `since_ms` counts (a budget reset).
    fn spend<'a>(
        &'a self,
        subject: &'a str,
        day_ms: i64,
        month_ms: i64,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Spend, StoreError>>;
    /// Requests (attempt-0 rows) matching `q`, newest first: the console's request list and
    /// the points of its charts.
    fn requests<'a>(&'a self, q: &'a RowQuery)
    -> BoxFuture<'a, Result<Vec<LedgerRow>, StoreError>>;
    /// Every row of a request, by the gateway's id or the id the client saw, oldest request
    /// first, attempts in order (for audits: "what happened to request X").
    fn rows_of<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<LedgerRow>, StoreError>>;
    /// Store shadow samples; ones already present (same id) are left as they are.
    fn insert_samples<'a>(
        &'a self,
        samples: &'a [ShadowSample],
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// Insert or replace a Plan B event (a drill, a promotion) by its id.
    fn put_event<'a>(&'a self, event: &'a PlanEvent) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The newest `limit` events of `kind`, of one route when given, newest first.
    fn events<'a>(
        &'a self,
        kind: &'a str,
        route: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<PlanEvent>, StoreError>>;
    /// The newest `limit` samples of `route` (of one backup when given) since `since_ms`,
    /// newest first.
    fn samples<'a>(
        &'a self,
        route: &'a str,
        backup: Option<&'a str>,
        since_ms: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<ShadowSample>, StoreError>>;
    /// Store a Responses API response, replacing one of the same id (a background response's
    /// queued state by its answer; ids are the gateway's own, never a client's).
    fn put_response<'a>(&'a self, r: &'a StoredResponse) -> BoxFuture<'a, Result<(), StoreError>>;
    /// A stored response by id, if present and not expired at `now_ms`.
    fn get_response<'a>(
        &'a self,
        id: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Option<StoredResponse>, StoreError>>;
    /// Delete a stored response; whether it was there.
    fn delete_response<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Delete the responses expired at `now_ms`; how many went.
    fn purge_responses(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;
}

/// A response of the Responses API, kept so a later turn can continue it
/// (`previous_response_id`) and its creator can read or delete it. Only the key that made it
/// may see it (the gateway checks `key_id` and `team_id`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredResponse {
    /// `resp_...`
    pub id: String,
    pub at_ms: i64,
    /// When it is deleted (the retention period after `at_ms`).
    pub expires_ms: i64,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub route: String,
    /// The conversation's input items up to this turn (earlier turns' input and output and
    /// this turn's input), a JSON array.
    pub items: String,
    /// The response object, JSON (its `output` continues the conversation).
    pub response: String,
}

pub(crate) const PUT_RESPONSE: &str = "INSERT INTO relais_responses \
    (id, at_ms, expires_ms, key_id, team_id, route, items, response) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET \
    expires_ms = excluded.expires_ms, items = excluded.items, response = excluded.response";
pub(crate) const GET_RESPONSE: &str = "SELECT id, at_ms, expires_ms, key_id, team_id, route, \
    items, response FROM relais_responses WHERE id = $1 AND expires_ms > $2";
pub(crate) const DELETE_RESPONSE: &str = "DELETE FROM relais_responses WHERE id = $1";
pub(crate) const PURGE_RESPONSES: &str = "DELETE FROM relais_responses WHERE expires_ms <= $1";

/// One shadow sample: a backup's answer to a copy of a live request, scored against the
/// primary's. The scores are a JSON object the gateway writes and reads (this crate keeps no
/// opinion on the axes); the columns beside them are what queries select on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowSample {
    pub id: String,
    /// Unix milliseconds when the live request arrived.
    pub at_ms: i64,
    pub route: String,
    /// The backup's deployment id (`provider/model`).
    pub backup: String,
    pub vendor: String,
    /// The backup answered without error.
    pub ok: bool,
    pub scores: String,
}

/// Something done to a route that must be remembered with who did it: a drill (its settings
/// and report) or a promotion. The body is a JSON object the gateway writes and reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEvent {
    pub id: String,
    pub at_ms: i64,
    /// `drill` or `promotion`.
    pub kind: String,
    pub route: String,
    pub body: String,
}

pub(crate) const PUT_EVENT: &str = "INSERT INTO relais_events (id, at_ms, kind, route, body) \
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET body = excluded.body";
pub(crate) const SELECT_EVENTS: &str = "SELECT id, at_ms, kind, route, body FROM relais_events \
    WHERE kind = $1 AND ($2 = '' OR route = $2) ORDER BY at_ms DESC, id DESC LIMIT $3";

pub(crate) const INSERT_SAMPLE: &str = "INSERT INTO relais_shadow \
    (id, at_ms, route, backup, vendor, ok, scores) VALUES ($1, $2, $3, $4, $5, $6, $7) \
    ON CONFLICT (id) DO NOTHING";
pub(crate) const SELECT_SAMPLES: &str = "SELECT id, at_ms, route, backup, vendor, ok, scores \
    FROM relais_shadow WHERE route = $1 AND ($2 = '' OR backup = $2) AND at_ms >= $3 \
    ORDER BY at_ms DESC, id DESC LIMIT $4";

pub(crate) const LEDGER_COLUMNS: &str = "id, attempt, request_id, at_ms, category, key_id, \
    team_id, route, deployment, provider, vendor, model, input_tokens, output_tokens, \
    cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_pusd, latency_us, ttft_us, \
    status, error_class, stream, drill, data_classes";
pub(crate) const LEDGER_WIDTH: usize = 25;

/// `INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING` for `n` rows, with `$k` parameters
/// (`?k` for SQLite).
pub(crate) fn insert_sql(n: usize, mark: char) -> String {
    let mut s = format!("INSERT INTO relais_ledger ({LEDGER_COLUMNS}) VALUES ");
    for r in 0..n {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..LEDGER_WIDTH {
            if c > 0 {
                s.push_str(", ");
            }
            s.push(mark);
            s.push_str(&(r * LEDGER_WIDTH + c + 1).to_string());
        }
        s.push(')');
    }
    s.push_str(" ON CONFLICT (id, attempt) DO NOTHING");
    s
}

pub(crate) fn usage_sql(group_by: GroupBy) -> String {
    let g = group_by.column();
    format!(
        "SELECT {g}, COUNT(*), \
         CAST(COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cost_pusd), 0) AS BIGINT) \
         FROM relais_ledger WHERE attempt = 0 AND (category = $1 OR category = $1 || '_charged') \
         AND at_ms >= $2 AND at_ms < $3 \
         AND ($4 = '' OR key_id = $4) AND ($5 = '' OR team_id = $5) AND ($6 = '' OR route = $6) \
         AND ($7 = '' OR drill = $7) \
         GROUP BY {g} ORDER BY {g}"
    )
}

pub(crate) const SPEND_SQL: &str = "SELECT \
    CAST(COALESCE(SUM(CASE WHEN at_ms >= $2 THEN cost_pusd ELSE 0 END), 0) AS BIGINT), \
    CAST(COALESCE(SUM(CASE WHEN at_ms >= $3 THEN cost_pusd ELSE 0 END), 0) AS BIGINT), \
    CAST(COALESCE(SUM(cost_pusd), 0) AS BIGINT) \
    FROM relais_ledger WHERE attempt = 0 AND category IN ('live', 'cache_charged') \
    AND (key_id = $1 OR team_id = $1) AND at_ms >= $4";

pub(crate) fn requests_sql() -> String {
    format!(
        "SELECT {LEDGER_COLUMNS} FROM relais_ledger WHERE attempt = 0 AND category = $1 \
         AND at_ms >= $2 AND at_ms < $3 AND ($4 = '' OR key_id = $4) AND ($5 = '' OR team_id = $5) \
         AND ($6 = '' OR route = $6) AND ($7 = '' OR vendor = $7) AND (CAST($8 AS BIGINT) = 0 OR status >= 400) \
         ORDER BY at_ms DESC, id DESC LIMIT $9"
    )
}

pub(crate) fn rows_of_sql() -> String {
    format!(
        "SELECT {LEDGER_COLUMNS} FROM relais_ledger WHERE id = $1 OR request_id = $1 \
         ORDER BY at_ms, id, attempt LIMIT 1000"
    )
}

pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
