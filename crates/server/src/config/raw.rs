//! The config file as serde reads it: unknown fields rejected, defaults filled in, nothing
//! validated beyond its shape. [`super::build`] turns it into a runtime.

use std::collections::BTreeMap;

use relais_core::{Price, Secret};
use relais_providers::{HttpSettings, ProviderConfig};
use serde::Deserialize;
use toml::Spanned;

/// The whole config file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    /// Prices per upstream model name, in USD per million tokens.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Virtual keys and teams (and, later, limits, budgets and the ledger) in a store.
    pub governance: Option<GovernanceConfig>,
    #[serde(default)]
    pub plan_b: PlanBConfig,
    #[serde(default)]
    pub responses: ResponsesConfig,
    /// OpenTelemetry trace export (OTLP/HTTP); off unless an endpoint is set.
    pub otel: Option<OtelConfig>,
    /// Alerts: always a metric and a log line; a webhook when a URL is set.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The response cache's stores (each route turns it on with its own `cache` table).
    #[serde(default)]
    pub cache: CacheConfig,
    /// Data guardrails shared by every route (each route sets its policy in `guardrails`).
    #[serde(default)]
    pub guardrails: GuardrailsConfig,
}

/// `[guardrails]`: classes of data relais detects besides the built-in ones.
#[derive(Debug, Deserialize, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsConfig {
    #[serde(default)]
    pub custom: Vec<CustomClassConfig>,
    /// Checks relais does not do itself (a prompt-injection classifier, moderation): asked
    /// about every request to a guarded route, and about its answer.
    pub webhook: Option<GuardWebhookConfig>,
}

/// `[guardrails.webhook]`: JSON over HTTP; the hook answers `{"action": "allow"}` or
/// `{"action": "block", "reason": "..."}`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardWebhookConfig {
    pub url: Secret,
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// How long a check may take.
    #[serde(default = "default_hook_timeout")]
    pub timeout_ms: u64,
    /// When the hook does not answer in time, answers an error or nonsense: `closed` (the
    /// request is refused with 503) or `open` (it goes on; logged and counted either way).
    #[serde(default)]
    pub on_error: HookFailure,
    /// Also check answers (a streamed answer is gathered whole, checked, then streamed).
    #[serde(default = "default_true")]
    pub answers: bool,
}

fn default_hook_timeout() -> u64 {
    1000
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HookFailure {
    #[default]
    Closed,
    Open,
}

/// A class found by a regular expression (Rust's `regex` syntax).
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CustomClassConfig {
    pub class: String,
    pub pattern: String,
}

/// What a route (or a key or team) does with a request carrying a class of data, from the
/// most lenient to the strictest: where policies meet, the strictest wins. `mask` is stricter
/// than `route`: a masked value reaches no vendor at all.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    Allow,
    /// Only deployments that list the class may serve the request.
    Route,
    /// Reversible placeholders: the vendor never sees the value, the client gets it back.
    Mask,
    Block,
}

impl GuardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block => "block",
            Self::Route => "route",
            Self::Mask => "mask",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Allow, Self::Route, Self::Mask, Self::Block]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// `[cache]`: where cached answers live. Routes opt in with `[routes.NAME.cache]`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The in-process store's size, MiB (least recently used entries leave first).
    #[serde(default = "default_cache_memory_mb")]
    pub memory_mb: u64,
    /// The largest answer kept, KiB; larger ones are served but not cached.
    #[serde(default = "default_cache_entry_kb")]
    pub max_entry_kb: u64,
    /// For routes with `backend = "redis"`: `redis://127.0.0.1:6379`, shared by instances.
    pub redis_url: Option<Secret>,
    #[serde(default = "default_cache_prefix")]
    pub redis_prefix: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_mb: default_cache_memory_mb(),
            max_entry_kb: default_cache_entry_kb(),
            redis_url: None,
            redis_prefix: default_cache_prefix(),
        }
    }
}

fn default_cache_memory_mb() -> u64 {
    64
}

fn default_cache_entry_kb() -> u64 {
    256
}

fn default_cache_prefix() -> String {
    "relais:cache".to_owned()
}

/// `[routes.NAME.cache]`: exact-match caching of the route's answers.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// `memory` (this instance) or `redis` (every instance; `[cache] redis_url`).
    #[serde(default)]
    pub backend: CacheBackendSetting,
    /// How long an answer is served from the cache.
    #[serde(default = "default_cache_ttl")]
    pub ttl_secs: u64,
    /// Who sees an entry: `team` (the team whose key made it; the default), `key`, or `shared`
    /// (every caller of the route).
    #[serde(default)]
    pub scope: CacheScopeSetting,
    /// Also cache requests sampled with `temperature > 0` (without a `seed`, a fresh answer
    /// would differ each time, so by default they are not cached).
    #[serde(default)]
    pub sampled: bool,
    /// Charge a hit to the key's and team's budgets at what its answer cost when it was made
    /// (chargeback: teams pay as if they had asked upstream; the organisation still saves).
    /// Default: hits are free to budgets.
    #[serde(default)]
    pub charge_budget: bool,
    /// Semantic matching (off unless set): a request whose last user message is close enough
    /// to an earlier one's, all else equal, is answered with that one's answer.
    pub semantic: Option<SemanticCacheConfig>,
}

/// `[routes.X.cache.semantic]`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SemanticCacheConfig {
    /// The embeddings route that turns a question into a vector.
    pub embeddings: String,
    /// Cosine similarity at or above which two questions are the same, in (0, 1].
    #[serde(default = "default_semantic_threshold")]
    pub threshold: f64,
    /// Questions the in-process index keeps (the oldest leave first).
    #[serde(default = "default_semantic_entries")]
    pub max_entries: usize,
}

fn default_semantic_threshold() -> f64 {
    0.95
}

fn default_semantic_entries() -> usize {
    10_000
}

fn default_cache_ttl() -> u64 {
    300
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackendSetting {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CacheScopeSetting {
    #[default]
    Team,
    Key,
    Shared,
}

/// `[otel]`: traces of every sampled request (a span per request and one per upstream attempt,
/// GenAI semantic conventions) sent to an OTLP/HTTP collector as JSON.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtelConfig {
    /// The collector's base URL (`http://127.0.0.1:4318`); `/v1/traces` is appended unless the
    /// URL already ends with it.
    pub endpoint: Secret,
    /// Extra headers on every export (`authorization = "Bearer ${OTLP_TOKEN}"`).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Share of requests without a sampled parent that are traced (0.0 to 1.0). A client's
    /// `traceparent` decides for its own requests.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    #[serde(default = "default_service")]
    pub service_name: String,
    /// Record the prompt and the answer text (`gen_ai.input.messages`, `gen_ai.output.messages`),
    /// with key-like tokens redacted and each cut at 16 KiB.
    #[serde(default)]
    pub payloads: bool,
    /// Spans waiting for export; when that many wait, new ones are dropped and counted.
    #[serde(default = "default_otel_queue")]
    pub queue_size: usize,
    /// Spans waiting that make the exporter send before `flush_ms` is up.
    #[serde(default = "default_otel_batch")]
    pub batch_size: usize,
    /// The longest a span waits for its batch to fill, in milliseconds.
    #[serde(default = "default_otel_flush")]
    pub flush_ms: u64,
    /// One export request's time limit, in seconds.
    #[serde(default = "default_otel_timeout")]
    pub timeout_secs: u64,
}

fn default_ratio() -> f64 {
    1.0
}
fn default_service() -> String {
    "relais".to_owned()
}
fn default_otel_queue() -> usize {
    4096
}
fn default_otel_batch() -> usize {
    512
}
fn default_otel_flush() -> u64 {
    1000
}
fn default_otel_timeout() -> u64 {
    10
}

/// `[alerts]`: what is worth waking someone for. Each alert is a gauge in `/metrics` and a
/// structured log line when it fires and when it clears; with `webhook_url`, also a JSON POST.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    pub webhook_url: Option<Secret>,
    /// Extra headers on every webhook POST (`authorization = "Bearer ${HOOK_TOKEN}"`).
    #[serde(default)]
    pub webhook_headers: BTreeMap<String, Secret>,
    /// Deliveries tried per alert (backoff 0.5 s, doubling, up to 30 s between tries).
    #[serde(default = "default_webhook_attempts")]
    pub webhook_attempts: u32,
    /// How often budgets, readiness and the limit store are checked, in seconds.
    #[serde(default = "default_alert_check")]
    pub check_secs: u64,
    /// An alert that cleared and fires again within this many seconds is not sent again.
    #[serde(default = "default_alert_repeat")]
    pub repeat_secs: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_headers: BTreeMap::new(),
            webhook_attempts: default_webhook_attempts(),
            check_secs: default_alert_check(),
            repeat_secs: default_alert_repeat(),
        }
    }
}

fn default_webhook_attempts() -> u32 {
    5
}
fn default_alert_check() -> u64 {
    15
}
fn default_alert_repeat() -> u64 {
    3600
}

/// Responses API conversation state (`/v1/responses` with `store`, `previous_response_id`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResponsesConfig {
    /// How long a stored response is kept (in the governance store when there is one, in
    /// memory otherwise), in seconds; 30 days by default. 0 turns storing off: every response
    /// is then answered with `store: false`.
    #[serde(default = "default_retention_secs")]
    pub retention_secs: u64,
    /// Memory for stored responses, in MiB: the whole store without `[governance]` (the
    /// oldest are evicted first), only the ones still being written with it.
    #[serde(default = "default_responses_memory")]
    pub memory_mib: u64,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        Self {
            retention_secs: default_retention_secs(),
            memory_mib: default_responses_memory(),
        }
    }
}

fn default_retention_secs() -> u64 {
    30 * 86_400
}

fn default_responses_memory() -> u64 {
    64
}

/// Where keys and teams live.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GovernanceConfig {
    /// `sqlite` (default: one file, this instance only) or `postgres` (shared by many).
    #[serde(default)]
    pub store: StoreKind,
    /// SQLite file; default `$RELAIS_HOME/relais.db` (`~/.local/share/relais/relais.db`).
    pub sqlite_path: Option<String>,
    /// PostgreSQL connection string, for `store = "postgres"`.
    pub postgres_url: Option<Secret>,
    /// How often keys are reloaded from the store, so a revocation made on another instance
    /// arrives here.
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
    /// Output tokens reserved against a TPM limit for a request that sets no `max_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// Where key and team limits are counted: `local` (this instance) or `redis` (all
    /// instances together).
    #[serde(default)]
    pub limits: LimitsAt,
    /// For `limits = "redis"`: `redis://127.0.0.1:6379`.
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key relais writes.
    #[serde(default = "default_prefix")]
    pub redis_prefix: String,
    /// How long a request's place in flight is held in Redis if its instance dies.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// With `limits = "redis"`: how long a slice of a busy key's or team's limits is leased to
    /// one instance, which then admits its requests without asking Redis (0: every request
    /// asks Redis). Limit changes reach leased subjects within this time.
    #[serde(default = "default_limit_lease_ms")]
    pub limit_lease_ms: u64,
    /// When Redis cannot be reached: `closed` (refuse limited keys with 503) or `open` (admit
    /// without limits). Logged either way.
    #[serde(default)]
    pub when_redis_down: WhenDown,
    /// The ledger's write-ahead directory, one per instance; default `$RELAIS_HOME/ledger`.
    pub ledger_dir: Option<String>,
    /// How often the write-ahead file is shipped to the store (the group commit), ms.
    #[serde(default = "default_ship_ms")]
    pub ledger_ship_ms: u64,
}

fn default_ship_ms() -> u64 {
    200
}

fn default_prefix() -> String {
    "relais".to_owned()
}

fn default_lease() -> u64 {
    900
}

fn default_limit_lease_ms() -> u64 {
    1000
}

fn default_max_tokens() -> u64 {
    4096
}

fn default_refresh() -> u64 {
    10
}

/// The price table shipped in the binary (`prices.toml`), which the config's `[prices]`
/// overrides model by model.
pub(super) fn shipped_prices() -> BTreeMap<String, PriceConfig> {
    #[derive(Deserialize)]
    struct Shipped {
        prices: BTreeMap<String, PriceConfig>,
    }
    // Checked by a unit test; an empty table if it ever failed to parse.
    toml::from_str::<Shipped>(include_str!("prices.toml"))
        .map(|s| s.prices)
        .unwrap_or_default()
}

/// The admin API (`/admin/...`) and the console (`/ui/`). Off unless a credential is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The `admin` role's credential, named `admin` in the audit log.
    pub key: Option<Secret>,
    /// The admin API also asks for a client certificate signed by `server.tls.client_ca_file`.
    #[serde(default)]
    pub require_client_cert: bool,
    /// More credentials, each named and with a role.
    #[serde(default)]
    pub credentials: Vec<AdminCredentialConfig>,
    /// How long a console sign-in lasts, in seconds (8 hours).
    #[serde(default = "default_session_secs")]
    pub session_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            key: None,
            require_client_cert: false,
            credentials: Vec::new(),
            session_secs: default_session_secs(),
        }
    }
}

fn default_session_secs() -> u64 {
    8 * 3600
}

/// One `[[admin.credentials]]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AdminCredentialConfig {
    /// Who this is, in the audit log and the console.
    pub name: String,
    pub key: Secret,
    pub role: Role,
    /// The team (name or id) a `team_admin` manages.
    pub team: Option<String>,
}

/// What an admin credential may do.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read everything, change nothing.
    Viewer,
    /// One team's keys (create, edit within the team's limits, rotate, revoke, reset their
    /// budgets), and that team's usage and requests; nothing else.
    TeamAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
            Self::TeamAdmin => "team_admin",
        }
    }
}

/// A price as TOML gives it: a number (`0.15`) or a string (`"0.15"`), read as an exact decimal.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum PriceValue {
    Number(f64),
    Text(String),
}

impl PriceValue {
    pub(crate) fn parse(&self) -> Result<u64, String> {
        match self {
            // f64's Display is the shortest text that reads back as the same number, so 0.15
            // becomes "0.15", not 0.1499999...
            Self::Number(n) if n.is_finite() && *n >= 0.0 => {
                Price::parse_usd_per_mtok(&format!("{n}"))
            }
            Self::Number(n) => Err(format!("{n} is not a price")),
            Self::Text(t) => Price::parse_usd_per_mtok(t),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    pub input: PriceValue,
    pub output: PriceValue,
    pub cache_read: Option<PriceValue>,
    pub cache_write: Option<PriceValue>,
    pub reasoning: Option<PriceValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Largest request body accepted, in bytes; larger bodies get 413 before being read.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// A request head must arrive whole within this many seconds of its first byte (and a new
    /// connection's first head within this many seconds of the connect).
    pub header_read_timeout_secs: u64,
    /// A request body must arrive whole within this many seconds of its head (408 otherwise).
    pub body_read_timeout_secs: u64,
    /// A keep-alive connection with no request in flight is closed after this many seconds
    /// without a byte.
    pub idle_timeout_secs: u64,
    /// Client connections open at once; past it the listener stops accepting until one closes.
    pub max_connections: usize,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) beside HTTP/1.1. Off: HTTP/1.1 only.
    pub http2_cleartext: bool,
    /// When set, `/metrics` answers only `Authorization: Bearer <this key>` (or the admin key).
    pub metrics_key: Option<Secret>,
    /// Request bodies (over 64 KiB each) being read and parsed at once, in bytes; past it a
    /// request gets 503 with `retry-after`. At least `max_body_bytes`.
    pub max_decoding_bytes: usize,
    /// TLS on the listener; plain HTTP without it.
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 10 * 1024 * 1024,
            shutdown_grace_secs: 30,
            log_format: LogFormat::Text,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 60,
            idle_timeout_secs: 75,
            max_connections: 10_000,
            http2_cleartext: false,
            metrics_key: None,
            max_decoding_bytes: 32 * 1024 * 1024,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    pub pool_idle_timeout_secs: u64,
    pub pool_max_idle_per_host: usize,
    /// The most bytes one streamed answer may deliver; past it the stream ends with an error.
    pub max_stream_bytes: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        let d = HttpSettings::default();
        Self {
            connect_timeout_ms: u64::try_from(d.connect_timeout.as_millis()).unwrap_or(10_000),
            pool_idle_timeout_secs: d.pool_idle_timeout.as_secs(),
            pool_max_idle_per_host: d.pool_max_idle_per_host,
            max_stream_bytes: relais_providers::DEFAULT_MAX_STREAM_BYTES,
        }
    }
}

/// Client credentials. With no keys configured, the gateway is open (fine on loopback, warned
/// about elsewhere); virtual keys with teams and budgets replace this with governance.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    pub key: Secret,
    /// Routes this key may use; all when absent.
    pub routes: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `chat` (default) or `embeddings`.
    #[serde(default)]
    pub kind: RouteKindSetting,
    /// `failover` (default), `weighted`, `least_latency`, `least_cost`, `least_busy`.
    pub strategy: Option<Spanned<String>>,
    pub deployments: Vec<DeploymentConfig>,
    /// Per attempt: time allowed until the first event before trying the next deployment.
    pub first_token_timeout_secs: Option<f64>,
    /// Per attempt, once streaming: longest silence between two events.
    pub idle_timeout_secs: Option<f64>,
    /// Per attempt: the whole response.
    pub attempt_timeout_secs: Option<f64>,
    /// The whole request, every attempt and backoff included.
    pub request_timeout_secs: Option<f64>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub latency: LatencyConfig,
    #[serde(default)]
    pub fallbacks: FallbackConfig,
    /// Plan B: copies of sampled requests sent to backups and scored (see `[plan_b]`).
    pub shadow: Option<ShadowConfig>,
    /// Exact-match caching of answers (off unless set).
    pub cache: Option<RouteCacheConfig>,
    /// Data guardrails: what to do per class of data found in a request (`email = "block"`);
    /// classes not named are allowed.
    pub guardrails: Option<BTreeMap<String, GuardAction>>,
    /// What to do per class of data found in an answer the vendor wrote: `allow`, `mask`
    /// (`[EMAIL_REDACTED]`) or `block`. Default: the classes `guardrails` blocks or masks.
    /// Checking holds a stream's text back by up to 256 bytes (`{}` checks nothing);
    /// placeholders are restored either way.
    pub answer_guardrails: Option<BTreeMap<String, GuardAction>>,
}

/// Shadow traffic for one route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// The backups that get copies. Default: the route's deployments after the first.
    pub deployments: Option<Vec<DeploymentConfig>>,
    /// Share of live requests copied, in [0, 1].
    pub sample_rate: f64,
    /// Most the copies may cost per UTC day (all backups of the route together), in USD.
    pub budget_per_day_usd: Option<PriceValue>,
    /// Longest a copy may take (default 120 s).
    pub timeout_secs: Option<f64>,
}

/// Plan B settings shared by every route (DESIGN.md §8).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PlanBConfig {
    /// Copies in flight at once, all routes together (default 4).
    pub max_concurrent: Option<usize>,
    /// Copies waiting for a slot; more are dropped and counted (default 64).
    pub queue: Option<usize>,
    /// Readiness reads the newest `window_samples` samples of the last `window_days` days
    /// (defaults 500 and 7).
    pub window_samples: Option<u32>,
    pub window_days: Option<u32>,
    /// An embeddings route: when set, text similarity is the cosine of the two answers'
    /// embeddings instead of the lexical measure.
    pub similarity_route: Option<String>,
    /// Alert (log line and metric) when one vendor serves more than this percent of a route's
    /// requests and the route has no ready backup (default 90).
    pub dependency_alert_percent: Option<f64>,
    /// How often the dependency alert is checked (default 60 s).
    pub check_secs: Option<u64>,
    #[serde(default)]
    pub thresholds: relais_planb::Thresholds,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per request, all deployments together (default: deployments + 1).
    pub attempts: Option<u32>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    /// Retries at most this share of the route's requests ...
    pub budget_ratio: Option<f64>,
    /// ... plus this many per second.
    pub budget_min_per_sec: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    pub consecutive_failures: Option<u32>,
    pub failure_rate: Option<f64>,
    pub min_requests: Option<u32>,
    pub window_secs: Option<f64>,
    pub base_ejection_secs: Option<f64>,
    pub max_ejection_secs: Option<f64>,
    pub max_ejected_percent: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    pub default_ms: Option<f64>,
    pub decay_secs: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    pub context_window: Option<Spanned<String>>,
    pub content_filter: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// A key of `[providers]`.
    pub provider: Spanned<String>,
    /// The upstream's name for the model (Azure: the deployment name).
    pub model: String,
    /// Share of traffic under the `weighted` strategy.
    pub weight: Option<u32>,
    /// Limits from the vendor contract: requests and tokens per minute, requests at once.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u32>,
    /// Capabilities, where the provider's own answer is wrong for this model.
    pub tools: Option<bool>,
    pub images: Option<bool>,
    pub json_schema: Option<bool>,
    pub context_window: Option<u32>,
    pub max_output_tokens: Option<u32>,
    /// Who stands behind it, for key and team vendor policies, the ledger and the dependency
    /// index. Default: the provider's type (`anthropic`, `gemini`, `local`, ...), or for
    /// `openai_compat`, which fronts many vendors, the provider's name.
    pub vendor: Option<String>,
    /// Classes of data (`x-relais-data-class`) it may receive; any by default.
    pub data_classes: Option<Vec<String>>,
}

/// Where keys, teams and the ledger are stored.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// One file, this instance only.
    #[default]
    Sqlite,
    /// Shared by many instances.
    Postgres,
}

/// Where key and team limits are counted.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitsAt {
    /// In this instance.
    #[default]
    Local,
    /// In Redis, for all instances together.
    Redis,
}

/// What limited keys get while Redis cannot be reached.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenDown {
    /// Refused with 503.
    #[default]
    Closed,
    /// Admitted without limits.
    Open,
}

/// What a route serves.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RouteKindSetting {
    #[default]
    Chat,
    Embeddings,
}

impl From<RouteKindSetting> for relais_router::RouteKind {
    fn from(k: RouteKindSetting) -> Self {
        match k {
            RouteKindSetting::Chat => Self::Chat,
            RouteKindSetting::Embeddings => Self::Embeddings,
        }
    }
}
