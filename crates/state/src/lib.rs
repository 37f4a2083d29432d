//! Stores behind traits (DESIGN.md §6): keys and teams, in SQLite (the embedded default) or
//! PostgreSQL (many nodes). The gateway never speaks SQL outside this crate.
//!
//! Keys are stored only as a SHA-256 hash and a short display prefix; this crate never sees a
//! plaintext key. It must never depend on the server, the router or any wire format.

mod ledger;
mod migrations;
mod postgres;
mod priority;
mod sqlite;

use relais_core::BoxFuture;

pub use ledger::{
    GroupBy, LedgerRow, LedgerStore, PlanEvent, RowQuery, ShadowSample, Spend, StoredResponse,
    UsageLine, UsageQuery,
};
pub use postgres::PostgresStore;
pub use priority::background_thread;
pub use sqlite::SqliteStore;

/// Rate limits of a key or a team; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt and output).
    pub tpm: Option<u64>,
    /// Requests at once.
    pub max_concurrent: Option<u64>,
    /// Spend per UTC calendar day, in pico-USD (10⁻¹² USD).
    pub budget_day: Option<u64>,
    /// Spend per UTC calendar month, in pico-USD.
    pub budget_month: Option<u64>,
    /// Spend over the subject's whole life, in pico-USD.
    pub budget_total: Option<u64>,
    /// When an operator last reset the budgets (Unix milliseconds): spend before it no longer
    /// counts against any of them.
    pub budget_reset_ms: Option<i64>,
}

impl Limits {
    /// Whether any USD budget is set.
    pub fn has_budget(&self) -> bool {
        self.budget_day.is_some() || self.budget_month.is_some() || self.budget_total.is_some()
    }
}

/// Where a key's or team's requests may go: to which vendors, carrying which classes of data.
/// `None` is no restriction.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reach {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendors: Option<Vec<String>>,
    /// Classes of data the requests may be marked with (`x-relais-data-class`); the first is
    /// the class of an unmarked request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_classes: Option<Vec<String>>,
    /// Data guardrails for every request of the key or team, by class of data found in it
    /// (`"allow"`, `"mask"`, `"route"`, `"block"`); joined with the route's, the strictest wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<std::collections::BTreeMap<String, String>>,
}

/// A team: the unit keys belong to and budgets are set on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub id: String,
    pub name: String,
    /// Routes the team's keys may use; all when `None`.
    pub routes: Option<Vec<String>>,
    /// Unix seconds.
    pub created_at: i64,
    /// For all the team's keys together.
    pub limits: Limits,
    pub reach: Reach,
}

/// A virtual key as stored: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    pub team_id: String,
    /// The first characters of the key, to recognise it in lists and logs.
    pub prefix: String,
    /// Lowercase hex SHA-256 of the whole key.
    pub hash: String,
    /// Routes this key may use, within its team's; all of the team's when `None`.
    pub routes: Option<Vec<String>>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// Unix seconds after which the key no longer authenticates; never when `None`.
    pub expires_at: Option<i64>,
    pub limits: Limits,
    /// Within its team's.
    pub reach: Reach,
}

/// One admin change, as the audit log keeps it: who (the admin credential's name and role),
/// from which address, what (`key.create`, `team.update`, `route.promote`, ...), on what, and
/// the object before and after as JSON (never a secret: keys appear by prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub id: String,
    pub at_ms: i64,
    pub actor: String,
    pub role: String,
    pub address: Option<String>,
    pub action: String,
    pub target: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Backend(String),
}

/// Keys and teams. Implementations: [`SqliteStore`], [`PostgresStore`].
pub trait KeyStore: Send + Sync {
    /// Which backend, for logs and `/readyz`.
    fn kind(&self) -> &'static str;
    fn create_team<'a>(&'a self, team: &'a Team) -> BoxFuture<'a, Result<(), StoreError>>;
    fn teams(&self) -> BoxFuture<'_, Result<Vec<Team>, StoreError>>;
    fn insert_key<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Every key, revoked ones included, oldest first.
    fn keys(&self) -> BoxFuture<'_, Result<Vec<StoredKey>, StoreError>>;
    fn key_by_hash<'a>(
        &'a self,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredKey>, StoreError>>;
    /// Mark a key revoked at `at`; `NotFound` when no such key exists. Revoking twice keeps
    /// the first time.
    fn revoke_key<'a>(&'a self, id: &'a str, at: i64) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Give a key a new secret (prefix and hash), keeping its id, team and permissions.
    fn rotate_key<'a>(
        &'a self,
        id: &'a str,
        prefix: &'a str,
        hash: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Write a team's name, routes, limits and reach; `NotFound` when no such team exists.
    fn update_team<'a>(&'a self, team: &'a Team) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Write a key's name, routes, limits, reach and expiry (never its secret, team or
    /// revocation); `NotFound` when no such key exists.
    fn update_key<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Append to the audit log.
    fn put_audit<'a>(&'a self, entry: &'a AuditEntry) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The newest `limit` audit entries before `before_ms` (all when `None`), newest first.
    fn audit(
        &self,
        limit: u32,
        before_ms: Option<i64>,
    ) -> BoxFuture<'_, Result<Vec<AuditEntry>, StoreError>>;
}

/// Limits as stored: seven nullable BIGINT columns (rpm, tpm, max_concurrent, budget_day,
/// budget_month, budget_total, budget_reset_ms).
fn limits_to_sql(l: &Limits) -> [Option<i64>; 7] {
    let c = |v: Option<u64>| v.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    [
        c(l.rpm),
        c(l.tpm),
        c(l.max_concurrent),
        c(l.budget_day),
        c(l.budget_month),
        c(l.budget_total),
        l.budget_reset_ms,
    ]
}

fn limits_from_sql(v: [Option<i64>; 7]) -> Limits {
    let c = |n: Option<i64>| n.map(|n| u64::try_from(n).unwrap_or(0));
    Limits {
        rpm: c(v[0]),
        tpm: c(v[1]),
        max_concurrent: c(v[2]),
        budget_day: c(v[3]),
        budget_month: c(v[4]),
        budget_total: c(v[5]),
        budget_reset_ms: v[6],
    }
}

/// A reach as stored: a JSON object, NULL when unrestricted.
fn reach_to_text(reach: &Reach) -> Option<String> {
    (*reach != Reach::default()).then(|| serde_json::to_string(reach).unwrap_or_default())
}

fn reach_from_text(text: Option<String>) -> Result<Reach, StoreError> {
    text.map_or(Ok(Reach::default()), |t| {
        serde_json::from_str(&t).map_err(|e| {
            StoreError::Backend(format!("stored vendor/data-class policy is not valid: {e}"))
        })
    })
}

fn routes_to_text(routes: &Option<Vec<String>>) -> Option<String> {
    routes
        .as_ref()
        .map(|r| serde_json::Value::from(r.clone()).to_string())
}

fn routes_from_text(text: Option<String>) -> Result<Option<Vec<String>>, StoreError> {
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| StoreError::Backend(format!("stored route list is not valid: {e}")))
    })
    .transpose()
}
