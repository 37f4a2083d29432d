//! Configuration in two stages: the raw TOML form (serde, unknown fields rejected, `${VAR}`
//! expanded), then a validated runtime form holding built providers and routes. Errors name the
//! file, the line and the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use relais_core::{Capabilities, Price, Secret};
use relais_providers::{HttpSettings, ProviderConfig, build_provider, shared_client};
use relais_router::{
    BreakerPolicy, BudgetPolicy, Deployment, DeploymentLimits, Fallbacks, Health, LatencyPolicy,
    RetryBudget, RetryPolicy, Route, RouteKind, Strategy, Timeouts,
};
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
}

/// Where keys and teams live.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GovernanceConfig {
    /// `sqlite` (default: one file, this instance only) or `postgres` (shared by many).
    #[serde(default = "default_store")]
    pub store: String,
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
    #[serde(default = "default_limits")]
    pub limits: String,
    /// For `limits = "redis"`: `redis://127.0.0.1:6379`.
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key relais writes.
    #[serde(default = "default_prefix")]
    pub redis_prefix: String,
    /// How long a request's place in flight is held in Redis if its instance dies.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// When Redis cannot be reached: `closed` (refuse limited keys with 503) or `open` (admit
    /// without limits). Logged either way.
    #[serde(default = "default_when_down")]
    pub when_redis_down: String,
    /// The ledger's write-ahead directory, one per instance; default `$RELAIS_HOME/ledger`.
    pub ledger_dir: Option<String>,
    /// How often the write-ahead file is shipped to the store (the group commit), ms.
    #[serde(default = "default_ship_ms")]
    pub ledger_ship_ms: u64,
}

fn default_ship_ms() -> u64 {
    200
}

/// The governance store, opened: keys and teams, and the same database for the ledger.
pub struct Governed {
    pub keyring: Arc<relais_governance::KeyRing>,
    pub ledger_store: Arc<dyn relais_state::LedgerStore>,
}

/// Open the ledger's write-ahead directory (locked for this process) on `store`. Segments a
/// previous run left are shipped in the background; [`relais_governance::Ledger::flush`]
/// waits for them.
pub fn open_ledger(
    cfg: &GovernanceConfig,
    store: Arc<dyn relais_state::LedgerStore>,
    origin: &str,
) -> Result<Arc<relais_governance::Ledger>, ConfigError> {
    // By default beside the SQLite file (one data directory), else in $RELAIS_HOME.
    let dir = match (&cfg.ledger_dir, cfg.store.as_str(), &cfg.sqlite_path) {
        (Some(d), _, _) => std::path::PathBuf::from(d),
        (None, "sqlite", Some(db)) => Path::new(db)
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("ledger"),
        _ => relais_home().join("ledger"),
    };
    relais_governance::Ledger::open(
        &dir,
        store,
        Duration::from_millis(cfg.ledger_ship_ms.clamp(10, 60_000)),
    )
    .map_err(|e| ConfigError(format!("{origin}: governance.ledger_dir: {}", e.message)))
}

fn default_limits() -> String {
    "local".to_owned()
}

fn default_prefix() -> String {
    "relais".to_owned()
}

fn default_lease() -> u64 {
    900
}

fn default_when_down() -> String {
    "closed".to_owned()
}

/// Open everything `[governance]` names into `runtime`: the store and its keys, the ledger
/// (shipping what a previous run left on disk before budgets are read), and where limits and
/// budgets are counted.
pub async fn open_state(
    raw: &RawConfig,
    runtime: &mut Runtime,
    origin: &str,
) -> Result<(), ConfigError> {
    let source = runtime.source.clone();
    open_state_unlocated(raw, runtime, origin)
        .await
        .map_err(|e| e.located(&source, origin))
}

async fn open_state_unlocated(
    raw: &RawConfig,
    runtime: &mut Runtime,
    origin: &str,
) -> Result<(), ConfigError> {
    let governed = open_governance(raw.governance.as_ref(), origin).await?;
    let ledger_store = governed.as_ref().map(|g| g.ledger_store.clone());
    if let (Some(g), Some(cfg)) = (&governed, &raw.governance) {
        let ledger = open_ledger(cfg, g.ledger_store.clone(), origin)?;
        if let Err(e) = ledger.flush().await {
            tracing::warn!(error = %e.message, "ledger: rows left by the last run could not be stored yet; they stay on disk and are retried");
        }
        runtime.ledger = Some(ledger);
    }
    runtime.keyring = governed.map(|g| g.keyring);
    if let Some(limits) = open_rate_limits(raw.governance.as_ref(), origin, ledger_store).await? {
        runtime.rate_limits = limits;
    }
    Ok(())
}

/// Where the config says key and team limits are counted (`None`: in this process, with no
/// ledger to read spend from). Budgets read a subject's spend so far from `ledger_store`.
pub async fn open_rate_limits(
    cfg: Option<&GovernanceConfig>,
    origin: &str,
    ledger_store: Option<Arc<dyn relais_state::LedgerStore>>,
) -> Result<Option<relais_governance::RateLimits>, ConfigError> {
    let Some(cfg) = cfg else {
        return Ok(None);
    };
    let fail_open = match cfg.when_redis_down.as_str() {
        "closed" => false,
        "open" => true,
        other => {
            return Err(ConfigError(format!(
                "{origin}: governance.when_redis_down: '{other}' is not one of: closed, open"
            )));
        }
    };
    match cfg.limits.as_str() {
        "local" => Ok(ledger_store.map(|l| {
            relais_governance::RateLimits::Local(Arc::new(relais_governance::Limiter::with_ledger(
                l,
            )))
        })),
        "redis" => {
            let url = cfg.redis_url.as_ref().ok_or_else(|| {
                ConfigError(format!(
                    "{origin}: governance.redis_url: required when limits = \"redis\""
                ))
            })?;
            let r = relais_governance::RedisLimiter::connect(
                url.expose(),
                &cfg.redis_prefix,
                Duration::from_secs(cfg.lease_secs.max(1)),
                fail_open,
                ledger_store,
            )
            .await
            .map_err(|e| ConfigError(format!("{origin}: governance.redis_url: {}", e.message)))?;
            Ok(Some(relais_governance::RateLimits::Redis(r)))
        }
        other => Err(ConfigError(format!(
            "{origin}: governance.limits: '{other}' is not one of: local, redis"
        ))),
    }
}

fn default_max_tokens() -> u64 {
    4096
}

fn default_store() -> String {
    "sqlite".to_owned()
}

fn default_refresh() -> u64 {
    10
}

/// `$RELAIS_HOME`, by default `~/.local/share/relais`.
pub fn relais_home() -> std::path::PathBuf {
    std::env::var_os("RELAIS_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_default()
                .join(".local/share/relais")
        })
}

/// Open the governance store the config names, if any, and load its keys.
pub async fn open_governance(
    cfg: Option<&GovernanceConfig>,
    origin: &str,
) -> Result<Option<Governed>, ConfigError> {
    let Some(cfg) = cfg else {
        return Ok(None);
    };
    let (store, ledger_store): (
        Arc<dyn relais_state::KeyStore>,
        Arc<dyn relais_state::LedgerStore>,
    ) = match cfg.store.as_str() {
        "sqlite" => {
            let path = cfg
                .sqlite_path
                .as_ref()
                .map_or_else(|| relais_home().join("relais.db"), std::path::PathBuf::from);
            let s = Arc::new(
                relais_state::SqliteStore::open(&path)
                    .await
                    .map_err(|e| ConfigError(format!("{origin}: governance.sqlite_path: {e}")))?,
            );
            (s.clone(), s)
        }
        "postgres" => {
            let url = cfg.postgres_url.as_ref().ok_or_else(|| {
                ConfigError(format!(
                    "{origin}: governance.postgres_url: required when store = \"postgres\""
                ))
            })?;
            let s = Arc::new(
                relais_state::PostgresStore::connect(url.expose())
                    .await
                    .map_err(|e| ConfigError(format!("{origin}: governance.postgres_url: {e}")))?,
            );
            (s.clone(), s)
        }
        other => {
            return Err(ConfigError(format!(
                "{origin}: governance.store: '{other}' is not one of: sqlite, postgres"
            )));
        }
    };
    let ring = relais_governance::KeyRing::load(store)
        .await
        .map_err(|e| ConfigError(format!("{origin}: governance: {}", e.message)))?;
    Ok(Some(Governed {
        keyring: Arc::new(ring),
        ledger_store,
    }))
}

/// The price table shipped in the binary (`prices.toml`), which the config's `[prices]`
/// overrides model by model.
fn shipped_prices() -> BTreeMap<String, PriceConfig> {
    #[derive(Deserialize)]
    struct Shipped {
        prices: BTreeMap<String, PriceConfig>,
    }
    // Checked by a unit test; an empty table if it ever failed to parse.
    toml::from_str::<Shipped>(include_str!("prices.toml"))
        .map(|s| s.prices)
        .unwrap_or_default()
}

/// The admin API (`/admin/...`). Off unless a key is set.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub key: Option<Secret>,
    /// The admin API also asks for a client certificate signed by `server.tls.client_ca_file`.
    #[serde(default)]
    pub require_client_cert: bool,
}

/// A price as TOML gives it: a number (`0.15`) or a string (`"0.15"`), read as an exact decimal.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum PriceValue {
    Number(f64),
    Text(String),
}

impl PriceValue {
    fn parse(&self) -> Result<u64, String> {
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
    #[serde(default = "default_kind")]
    pub kind: Spanned<String>,
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

fn default_kind() -> Spanned<String> {
    Spanned::new(0..0, "chat".to_owned())
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

/// A config error: where and what.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// This error with the line of the field it names (`origin: a.b.c: problem` becomes
    /// `origin:LINE: a.b.c: problem`), when it has none yet: every check after parsing names a
    /// dotted path, and the source says where that path was written. A field that is missing
    /// points at the nearest table that holds it.
    pub fn located(self, source: &str, origin: &str) -> Self {
        let Some(rest) = self
            .0
            .strip_prefix(origin)
            .and_then(|r| r.strip_prefix(": "))
        else {
            return self;
        };
        let path = rest.split(": ").next().unwrap_or_default();
        match line_of_path(source, path) {
            Some(line) => Self(format!("{origin}:{line}: {rest}")),
            None => self,
        }
    }
}

/// The line where the dotted `path` (`routes.a.retry.attempts`, `auth.keys[0].key`) was
/// written, or of the deepest part of it that was.
fn line_of_path(source: &str, path: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(source).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
            break;
        };
        found = Some(k.span().start);
        let mut value = v;
        if let Some(i) = index {
            match value.get_ref() {
                toml::de::DeValue::Array(items) => match items.get(i) {
                    Some(item) => {
                        found = Some(item.span().start);
                        value = item;
                    }
                    None => break,
                },
                _ => break,
            }
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) if parts.peek().is_some() => table = t,
            _ => {
                if parts.peek().is_some() {
                    break;
                }
            }
        }
    }
    found.map(|offset| line_of(source, offset))
}

/// A client key as the server checks it.
pub struct ClientKey {
    pub name: String,
    pub key: Secret,
    pub routes: Option<Vec<String>>,
}

/// The validated, built form the server runs on.
pub struct Runtime {
    pub listen: SocketAddr,
    pub admin_key: Option<Secret>,
    /// Virtual keys and teams, when `[governance]` is configured; opened by the caller with
    /// [`open_governance`] (it is async) and kept across reloads.
    pub keyring: Option<Arc<relais_governance::KeyRing>>,
    /// Where key and team limits are counted (in this process unless the caller installs
    /// Redis with [`open_rate_limits`]); kept across reloads.
    pub rate_limits: relais_governance::RateLimits,
    /// The ledger's write path, opened by the caller with [`open_ledger`]; kept across
    /// reloads. `None`: no ledger (no `[governance]`).
    pub ledger: Option<Arc<relais_governance::Ledger>>,
    pub governance: Option<GovernanceConfig>,
    /// Things that are allowed but probably not meant (shown by `relais check`, logged at start).
    pub warnings: Vec<String>,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// How the listener bounds its clients in time (read for each new connection).
    pub client_limits: crate::listen::ClientLimits,
    /// Client connections open at once (fixed at start: the listener outlives reloads).
    pub max_connections: usize,
    /// The credential `/metrics` asks for, if any.
    pub metrics_key: Option<Secret>,
    /// Request bytes being decoded at once (fixed at start).
    pub max_decoding_bytes: usize,
    /// TLS on the listener, loaded (fixed at start; the certificate files are watched).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// The admin API asks for a verified client certificate too.
    pub admin_client_cert: bool,
    pub keys: Vec<ClientKey>,
    pub routes: BTreeMap<String, Arc<Route>>,
    /// Providers by name, with the settings they were built from (a reload keeps unchanged ones).
    pub providers: BTreeMap<String, (ProviderConfig, Arc<dyn relais_core::Provider>)>,
    /// Provider kinds by name, for `relais check`.
    pub provider_kinds: BTreeMap<String, &'static str>,
    /// Shadow traffic by route name.
    pub shadows: BTreeMap<String, Arc<crate::planb::ShadowRoute>>,
    pub plan_b: crate::planb::Settings,
    /// The config text this was built from and where it came from, so a promotion can
    /// rebuild it the way a reload does.
    pub source: Arc<str>,
    pub origin: String,
}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

/// Errors inside a provider table carry the span of the whole table (its `type` tag makes serde
/// buffer it); point at the line that holds the field or variable the message names instead.
fn refine_line(source: &str, span: std::ops::Range<usize>, msg: &str) -> usize {
    let needle = if let Some(rest) = msg.split("environment variable ").nth(1) {
        rest.split_whitespace().next().map(|v| format!("${{{v}"))
    } else {
        msg.split('`').nth(1).map(|f| f.to_owned())
    };
    let start = span.start.min(source.len());
    // The span may cover only the table's key; search to the next table header.
    let next_table = source[span.end.min(source.len())..]
        .find("\n[")
        .map_or(source.len(), |i| span.end.min(source.len()) + i);
    let end = next_table.max(start);
    if let Some(needle) = needle.filter(|n| !n.is_empty()) {
        let mut offset = start;
        for line in source[start..end].split_inclusive('\n') {
            let t = line.trim_start();
            let hit = if needle.starts_with('$') {
                t.contains(&needle)
            } else {
                t.starts_with(&needle)
                    && t[needle.len()..].trim_start().starts_with(['=', '.', ' '])
            };
            if hit {
                return line_of(source, offset);
            }
            offset += line.len();
        }
    }
    line_of(source, start)
}

/// What `backup` lacks that `primary` has, in words.
fn capability_loss(primary: &Capabilities, backup: &Capabilities) -> Vec<&'static str> {
    let mut lost = Vec::new();
    if primary.tools && !backup.tools {
        lost.push("tools");
    }
    if primary.images && !backup.images {
        lost.push("images");
    }
    if primary.json_schema && !backup.json_schema {
        lost.push("JSON schema output");
    }
    let window = |c: &Capabilities| c.context_window.map_or(u64::MAX, u64::from);
    if window(backup) < window(primary) {
        lost.push("the primary's context window");
    }
    let out = |c: &Capabilities| c.max_output_tokens.map_or(u64::MAX, u64::from);
    if out(backup) < out(primary) {
        lost.push("the primary's max output tokens");
    }
    lost
}

/// Parse TOML text. `origin` names the source in error messages.
pub fn parse(source: &str, origin: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(source).map_err(|e| {
        let msg = e.message().trim_end().to_owned();
        let line = e.span().map(|s| refine_line(source, s, &msg));
        match line {
            Some(l) => ConfigError(format!("{origin}:{l}: {msg}")),
            None => ConfigError(format!("{origin}: {msg}")),
        }
    })
}

/// Read and parse a config file.
pub fn load(path: &Path) -> Result<(RawConfig, String), ConfigError> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    let raw = parse(&source, &path.display().to_string())?;
    Ok((raw, source))
}

/// Validate a parsed config and build its providers and routes.
pub fn build(raw: &RawConfig, source: &str, origin: &str) -> Result<Runtime, ConfigError> {
    build_from(raw, source, origin, None).map_err(|e| e.located(source, origin))
}

/// Build a config that replaces `previous` (a reload): providers whose settings did not change
/// are kept (the built-in model is not loaded twice), and deployments still there keep their
/// live health (breaker, cool-down, latency estimate).
pub fn rebuild(
    raw: &RawConfig,
    source: &str,
    origin: &str,
    previous: &Runtime,
) -> Result<Runtime, ConfigError> {
    build_from(raw, source, origin, Some(previous)).map_err(|e| e.located(source, origin))
}

fn secs(
    value: Option<f64>,
    default: Option<f64>,
    field: &str,
    origin: &str,
) -> Result<Option<Duration>, ConfigError> {
    match value.or(default) {
        None => Ok(None),
        Some(v) if v > 0.0 && v <= 86_400.0 => Ok(Some(Duration::from_secs_f64(v))),
        Some(_) => Err(ConfigError(format!(
            "{origin}: {field}: must be within (0, 86400] seconds"
        ))),
    }
}

fn share(value: Option<f64>, default: f64, field: &str, origin: &str) -> Result<f64, ConfigError> {
    let v = value.unwrap_or(default);
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError(format!(
            "{origin}: {field}: must be within [0, 1]"
        )))
    }
}

/// Shadow traffic per route and the shared Plan B settings.
fn build_plan_b(
    raw: &RawConfig,
    origin: &str,
    routes: &BTreeMap<String, Arc<Route>>,
    providers: &BTreeMap<String, (ProviderConfig, Arc<dyn relais_core::Provider>)>,
    prices: &BTreeMap<String, Price>,
    at: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
) -> Result<
    (
        BTreeMap<String, Arc<crate::planb::ShadowRoute>>,
        crate::planb::Settings,
    ),
    ConfigError,
> {
    let err = |field: String, msg: &str| ConfigError(format!("{origin}: {field}: {msg}"));
    let pb = &raw.plan_b;
    let defaults = crate::planb::Settings::default();
    let similarity_route = match &pb.similarity_route {
        Some(r) => match routes.get(r) {
            Some(route) if route.kind == RouteKind::Embeddings => Some(r.clone()),
            Some(_) => {
                return Err(err(
                    "plan_b.similarity_route".into(),
                    "must name an embeddings route",
                ));
            }
            None => {
                return Err(err(
                    "plan_b.similarity_route".into(),
                    &format!("no route named '{r}'"),
                ));
            }
        },
        None => None,
    };
    let alert = pb
        .dependency_alert_percent
        .unwrap_or(defaults.alert_percent);
    if !(0.0..=100.0).contains(&alert) {
        return Err(err(
            "plan_b.dependency_alert_percent".into(),
            "must be within [0, 100]",
        ));
    }
    let settings = crate::planb::Settings {
        max_concurrent: pb
            .max_concurrent
            .unwrap_or(defaults.max_concurrent)
            .clamp(1, 1024),
        queue: pb.queue.unwrap_or(defaults.queue).clamp(1, 1 << 20),
        window_samples: pb
            .window_samples
            .unwrap_or(defaults.window_samples)
            .clamp(1, 100_000),
        window_days: pb.window_days.unwrap_or(defaults.window_days).clamp(1, 366),
        similarity_route,
        alert_percent: alert,
        check_every: Duration::from_secs(pb.check_secs.unwrap_or(60).clamp(1, 86_400)),
        thresholds: pb.thresholds.clone(),
    };
    let mut shadows = BTreeMap::new();
    for (name, rc) in &raw.routes {
        let Some(sc) = &rc.shadow else {
            continue;
        };
        let f = |x: &str| format!("routes.{name}.shadow.{x}");
        let Some(route) = routes.get(name) else {
            continue;
        };
        if route.kind != RouteKind::Chat {
            return Err(err(f("deployments"), "shadow traffic is for chat routes"));
        }
        if raw.governance.is_none() {
            return Err(err(
                format!("routes.{name}.shadow"),
                "needs [governance]: samples and the shadow ledger are kept in its store",
            ));
        }
        if !(0.0..=1.0).contains(&sc.sample_rate) {
            return Err(err(f("sample_rate"), "must be within [0, 1]"));
        }
        let backups = match &sc.deployments {
            Some(list) => {
                let mut out: Vec<Deployment> = Vec::with_capacity(list.len());
                for (i, d) in list.iter().enumerate() {
                    let field = f(&format!("deployments[{i}]"));
                    // A backup that is also in the route shares its health record; one that
                    // is only shadowed gets its own.
                    let health = |id: &str| {
                        route.deployments.iter().find(|x| x.id == id).map_or_else(
                            || Arc::new(Health::new(tokio::time::Instant::now(), &route.breaker)),
                            |x| x.health.clone(),
                        )
                    };
                    let dep = build_deployment(d, &field, providers, prices, health, at)?;
                    if out.iter().any(|x| x.id == dep.id) {
                        return Err(err(field, &format!("'{}' is listed twice", dep.id)));
                    }
                    out.push(dep);
                }
                out
            }
            None => route.deployments[1..].to_vec(),
        };
        if backups.is_empty() {
            return Err(err(
                f("deployments"),
                "no backup to shadow: list shadow.deployments or give the route a second deployment",
            ));
        }
        if let Some(b) = backups.iter().find(|b| b.id == route.deployments[0].id) {
            return Err(err(
                f("deployments"),
                &format!(
                    "'{}' is the route's primary; shadow it to its backups",
                    b.id
                ),
            ));
        }
        let budget_per_day = match &sc.budget_per_day_usd {
            None => None,
            Some(v) => {
                let text = match v {
                    PriceValue::Number(n) => format!("{n}"),
                    PriceValue::Text(t) => t.clone(),
                };
                Some(
                    relais_governance::parse_usd(&text)
                        .map_err(|e| err(f("budget_per_day_usd"), &e))?,
                )
            }
        };
        let timeout = secs(sc.timeout_secs, Some(120.0), &f("timeout_secs"), origin)?
            .unwrap_or(Duration::from_secs(120));
        shadows.insert(
            name.clone(),
            Arc::new(crate::planb::ShadowRoute {
                route: name.clone(),
                backups,
                sample_rate: sc.sample_rate,
                budget_per_day,
                timeout,
            }),
        );
    }
    Ok((shadows, settings))
}

/// One deployment from its config; `field` names it in errors and `health` gives the health
/// record of its id (kept across reloads).
fn build_deployment(
    d: &DeploymentConfig,
    field: &str,
    providers: &BTreeMap<String, (ProviderConfig, Arc<dyn relais_core::Provider>)>,
    prices: &BTreeMap<String, Price>,
    health: impl FnOnce(&str) -> Arc<Health>,
    at: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
) -> Result<Deployment, ConfigError> {
    let pname = d.provider.get_ref();
    let (_, provider) = providers.get(pname).ok_or_else(|| {
        let known: Vec<&str> = providers.keys().map(String::as_str).collect();
        at(
            d.provider.span(),
            &format!("{field}.provider"),
            format!(
                "no provider named '{pname}' (defined: {})",
                known.join(", ")
            ),
        )
    })?;
    let id = format!("{pname}/{}", d.model);
    let base = provider.capabilities(&d.model);
    let capabilities = Capabilities {
        tools: d.tools.unwrap_or(base.tools),
        images: d.images.unwrap_or(base.images),
        json_schema: d.json_schema.unwrap_or(base.json_schema),
        context_window: d.context_window.or(base.context_window),
        max_output_tokens: d.max_output_tokens.or(base.max_output_tokens),
    };
    Ok(Deployment {
        health: health(&id),
        id,
        provider_name: pname.clone(),
        provider: provider.clone(),
        model: d.model.clone(),
        weight: d.weight.unwrap_or(1),
        capabilities,
        limits: DeploymentLimits {
            rpm: d.rpm,
            tpm: d.tpm,
            concurrent: d.max_concurrent,
        },
        // The built-in model costs nothing; others cost what the price table says.
        price: if provider.kind() == "local" {
            Some(Price::default())
        } else {
            prices.get(&d.model).copied()
        },
        vendor: d.vendor.clone().unwrap_or_else(|| match provider.kind() {
            "openai_compat" => pname.clone(),
            kind => kind.to_owned(),
        }),
        data_classes: d.data_classes.clone(),
    })
}

fn build_from(
    raw: &RawConfig,
    source: &str,
    origin: &str,
    previous: Option<&Runtime>,
) -> Result<Runtime, ConfigError> {
    let at = |span: std::ops::Range<usize>, field: &str, msg: String| {
        if span.is_empty() && span.start == 0 {
            ConfigError(format!("{origin}: {field}: {msg}"))
        } else {
            ConfigError(format!(
                "{origin}:{}: {field}: {msg}",
                line_of(source, span.start)
            ))
        }
    };
    let listen: SocketAddr = raw.server.listen.parse().map_err(|_| {
        ConfigError(format!(
            "{origin}: server.listen: '{}' is not an address like 127.0.0.1:8080",
            raw.server.listen
        ))
    })?;
    if raw.server.max_body_bytes < 1024 {
        return Err(ConfigError(format!(
            "{origin}: server.max_body_bytes: must be at least 1024"
        )));
    }
    for (field, secs) in [
        (
            "header_read_timeout_secs",
            raw.server.header_read_timeout_secs,
        ),
        ("body_read_timeout_secs", raw.server.body_read_timeout_secs),
        ("idle_timeout_secs", raw.server.idle_timeout_secs),
    ] {
        if secs == 0 {
            return Err(ConfigError(format!(
                "{origin}: server.{field}: must be at least 1"
            )));
        }
    }
    if raw
        .server
        .metrics_key
        .as_ref()
        .is_some_and(|k| k.expose().len() < 16)
    {
        return Err(ConfigError(format!(
            "{origin}: server.metrics_key: must be at least 16 characters"
        )));
    }
    // A reload keeps the listener's TLS as loaded at start (its files are watched on their own).
    let tls = match (previous.and_then(|p| p.tls.clone()), &raw.server.tls) {
        (Some(kept), Some(cfg)) if kept.config() == cfg => Some(kept),
        (_, Some(cfg)) => Some(Arc::new(
            crate::tls::Tls::load(cfg).map_err(|e| ConfigError(format!("{origin}: {e}")))?,
        )),
        (_, None) => None,
    };
    if raw.admin.require_client_cert && !tls.as_ref().is_some_and(|t| t.verifies_clients()) {
        return Err(ConfigError(format!(
            "{origin}: admin.require_client_cert: needs server.tls.client_ca_file"
        )));
    }
    if raw.server.max_connections == 0 {
        return Err(ConfigError(format!(
            "{origin}: server.max_connections: must be at least 1"
        )));
    }
    let http = shared_client(&HttpSettings {
        connect_timeout: Duration::from_millis(raw.upstream.connect_timeout_ms.max(1)),
        pool_idle_timeout: Duration::from_secs(raw.upstream.pool_idle_timeout_secs),
        pool_max_idle_per_host: raw.upstream.pool_max_idle_per_host,
    })
    .map_err(|e| ConfigError(format!("{origin}: upstream: {e}")))?;
    if raw.upstream.max_stream_bytes < 64 * 1024 {
        return Err(ConfigError(format!(
            "{origin}: upstream.max_stream_bytes: must be at least 65536"
        )));
    }

    if let Some(admin) = &raw.admin.key {
        if admin.expose().len() < 16 {
            return Err(ConfigError(format!(
                "{origin}: admin.key: must be at least 16 characters"
            )));
        }
    }

    let mut providers = BTreeMap::new();
    let mut provider_kinds = BTreeMap::new();
    for (name, cfg) in &raw.providers {
        let kept = previous
            .and_then(|p| p.providers.get(name))
            .filter(|(old, _)| old == cfg)
            .map(|(_, p)| p.clone());
        let p = match kept {
            Some(p) => p,
            None => build_provider(cfg, http.clone())
                .map_err(|e| ConfigError(format!("{origin}: providers.{name}.{e}")))?,
        };
        providers.insert(name.clone(), (cfg.clone(), p));
        provider_kinds.insert(name.clone(), cfg.kind());
    }

    // Shipped defaults first; the config's own entries replace them model by model.
    let shipped = shipped_prices();
    let mut prices = BTreeMap::new();
    for (model, pc) in shipped.iter().chain(&raw.prices) {
        let field = |f: &str| format!("prices.{model}.{f}");
        let one = |v: &PriceValue, f: &str| {
            v.parse()
                .map_err(|e| ConfigError(format!("{origin}: {}: {e}", field(f))))
        };
        let opt = |v: &Option<PriceValue>, f: &str| v.as_ref().map(|v| one(v, f)).transpose();
        prices.insert(
            model.clone(),
            Price {
                input: one(&pc.input, "input")?,
                output: one(&pc.output, "output")?,
                cache_read: opt(&pc.cache_read, "cache_read")?,
                cache_write: opt(&pc.cache_write, "cache_write")?,
                reasoning: opt(&pc.reasoning, "reasoning")?,
            },
        );
    }

    // Fallback routes must exist, serve chat and form no cycle; routes are built so that a
    // route's fallbacks exist before it does.
    for (name, rc) in &raw.routes {
        for (field, target) in [
            ("context_window", &rc.fallbacks.context_window),
            ("content_filter", &rc.fallbacks.content_filter),
        ] {
            if let Some(t) = target {
                let f = format!("routes.{name}.fallbacks.{field}");
                match raw.routes.get(t.get_ref()) {
                    None => {
                        return Err(at(
                            t.span(),
                            &f,
                            format!("no route named '{}'", t.get_ref()),
                        ));
                    }
                    Some(other)
                        if other.kind.get_ref() != "chat" || rc.kind.get_ref() != "chat" =>
                    {
                        return Err(at(t.span(), &f, "fallbacks are for chat routes".to_owned()));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let mut order: Vec<&str> = Vec::with_capacity(raw.routes.len());
    {
        // Depth-first, children first; `visiting` catches a cycle.
        fn visit<'a>(
            name: &'a str,
            raw: &'a RawConfig,
            order: &mut Vec<&'a str>,
            visiting: &mut Vec<&'a str>,
        ) -> Result<(), String> {
            if order.contains(&name) {
                return Ok(());
            }
            if visiting.contains(&name) {
                visiting.push(name);
                return Err(visiting.join(" -> "));
            }
            visiting.push(name);
            if let Some(rc) = raw.routes.get(name) {
                for t in [&rc.fallbacks.context_window, &rc.fallbacks.content_filter]
                    .into_iter()
                    .flatten()
                {
                    visit(t.get_ref(), raw, order, visiting)?;
                }
            }
            visiting.pop();
            order.push(name);
            Ok(())
        }
        for name in raw.routes.keys() {
            let mut visiting = Vec::new();
            visit(name, raw, &mut order, &mut visiting).map_err(|cycle| {
                ConfigError(format!(
                    "{origin}: routes.{name}.fallbacks: fallbacks form a cycle: {cycle}"
                ))
            })?;
        }
    }

    let now = tokio::time::Instant::now();
    let mut warnings = Vec::new();
    let mut routes: BTreeMap<String, Arc<Route>> = BTreeMap::new();
    for name in order {
        let Some(rc) = raw.routes.get(name) else {
            continue;
        };
        let name = name.to_owned();
        let kind = match rc.kind.get_ref().as_str() {
            "chat" => RouteKind::Chat,
            "embeddings" => RouteKind::Embeddings,
            other => {
                return Err(at(
                    rc.kind.span(),
                    &format!("routes.{name}.kind"),
                    format!("'{other}' is not one of: chat, embeddings"),
                ));
            }
        };
        let strategy = match &rc.strategy {
            None => Strategy::Failover,
            Some(s) => Strategy::parse(s.get_ref()).ok_or_else(|| {
                at(
                    s.span(),
                    &format!("routes.{name}.strategy"),
                    format!("'{}' is not one of: {}", s.get_ref(), Strategy::NAMES),
                )
            })?,
        };
        if rc.deployments.is_empty() {
            return Err(ConfigError(format!(
                "{origin}: routes.{name}.deployments: at least one deployment is required"
            )));
        }
        if rc.deployments.len() > 64 {
            return Err(ConfigError(format!(
                "{origin}: routes.{name}.deployments: at most 64 deployments per route"
            )));
        }
        let f = |field: &str| format!("routes.{name}.breaker.{field}");
        let breaker_defaults = BreakerPolicy::default();
        let bc = &rc.breaker;
        let breaker = BreakerPolicy {
            consecutive_failures: bc
                .consecutive_failures
                .unwrap_or(breaker_defaults.consecutive_failures),
            failure_rate: share(
                bc.failure_rate,
                breaker_defaults.failure_rate,
                &f("failure_rate"),
                origin,
            )?,
            min_requests: bc.min_requests.unwrap_or(breaker_defaults.min_requests),
            window: secs(bc.window_secs, None, &f("window_secs"), origin)?
                .unwrap_or(breaker_defaults.window),
            base_ejection: secs(
                bc.base_ejection_secs,
                None,
                &f("base_ejection_secs"),
                origin,
            )?
            .unwrap_or(breaker_defaults.base_ejection),
            max_ejection: secs(bc.max_ejection_secs, None, &f("max_ejection_secs"), origin)?
                .unwrap_or(breaker_defaults.max_ejection),
            max_ejected_share: share(
                bc.max_ejected_percent.map(|p| p / 100.0),
                breaker_defaults.max_ejected_share,
                &f("max_ejected_percent"),
                origin,
            )?,
        };
        let prev_route = previous.and_then(|p| p.routes.get(&name));
        let mut deployments = Vec::with_capacity(rc.deployments.len());
        for (i, d) in rc.deployments.iter().enumerate() {
            let field = format!("routes.{name}.deployments[{i}]");
            let health = |id: &str| {
                prev_route
                    .and_then(|r| r.deployments.iter().find(|x| x.id == id))
                    .map_or_else(
                        || Arc::new(Health::new(now, &breaker)),
                        |x| x.health.clone(),
                    )
            };
            let dep = build_deployment(d, &field, &providers, &prices, health, &at)?;
            if deployments.iter().any(|x: &Deployment| x.id == dep.id) {
                return Err(at(
                    d.provider.span(),
                    &field,
                    format!("'{}' is listed twice", dep.id),
                ));
            }
            deployments.push(dep);
        }
        if strategy == Strategy::Weighted && deployments.iter().all(|d| d.weight == 0) {
            return Err(ConfigError(format!(
                "{origin}: routes.{name}.deployments: every weight is 0; nothing could be chosen"
            )));
        }
        for d in deployments.iter().filter(|d| d.price.is_none()) {
            warnings.push(if strategy == Strategy::LeastCost {
                format!(
                    "routes.{name}: least_cost, but no [prices.\"{}\"] for {}: it is chosen last",
                    d.model, d.id
                )
            } else {
                format!(
                    "routes.{name}: no [prices.\"{}\"] for {}: its requests cost $0 in the ledger and in budgets",
                    d.model, d.id
                )
            });
        }
        // A backup that lacks what the primary has fails the requests that use it.
        let primary = deployments[0].capabilities;
        for d in &deployments[1..] {
            for lost in capability_loss(&primary, &d.capabilities) {
                warnings.push(format!(
                    "routes.{name}: {} lacks {lost} that the primary {} has; requests that use it skip this deployment",
                    d.id, deployments[0].id
                ));
            }
        }
        let first = |field: &str, v: Option<f64>, default: Option<f64>| {
            secs(v, default, &format!("routes.{name}.{field}"), origin)
        };
        let timeouts = Timeouts {
            first_event: first(
                "first_token_timeout_secs",
                rc.first_token_timeout_secs,
                Some(120.0),
            )?
            .unwrap_or(Duration::from_secs(120)),
            idle: first("idle_timeout_secs", rc.idle_timeout_secs, Some(120.0))?,
            attempt: first("attempt_timeout_secs", rc.attempt_timeout_secs, None)?,
            request: first("request_timeout_secs", rc.request_timeout_secs, None)?,
        };
        let mut retry = RetryPolicy::for_deployments(deployments.len());
        if let Some(n) = rc.retry.attempts {
            if n == 0 {
                return Err(ConfigError(format!(
                    "{origin}: routes.{name}.retry.attempts: must be at least 1"
                )));
            }
            retry.max_attempts = n;
        }
        if let Some(ms) = rc.retry.backoff_base_ms {
            retry.backoff_base = Duration::from_millis(ms);
        }
        if let Some(ms) = rc.retry.backoff_max_ms {
            retry.backoff_max = Duration::from_millis(ms);
        }
        let budget_defaults = BudgetPolicy::default();
        let budget = BudgetPolicy {
            ratio: share(
                rc.retry.budget_ratio,
                budget_defaults.ratio,
                &format!("routes.{name}.retry.budget_ratio"),
                origin,
            )?,
            min_per_sec: match rc.retry.budget_min_per_sec {
                Some(v) if !(0.0..=10_000.0).contains(&v) => {
                    return Err(ConfigError(format!(
                        "{origin}: routes.{name}.retry.budget_min_per_sec: must be within [0, 10000]"
                    )));
                }
                v => v.unwrap_or(budget_defaults.min_per_sec),
            },
            window: budget_defaults.window,
        };
        let latency_defaults = LatencyPolicy::default();
        let latency = LatencyPolicy {
            default_rtt: match rc.latency.default_ms {
                Some(ms) if ms > 0.0 && ms <= 600_000.0 => Duration::from_secs_f64(ms / 1000.0),
                Some(_) => {
                    return Err(ConfigError(format!(
                        "{origin}: routes.{name}.latency.default_ms: must be within (0, 600000]"
                    )));
                }
                None => latency_defaults.default_rtt,
            },
            decay: first("latency.decay_secs", rc.latency.decay_secs, None)?
                .unwrap_or(latency_defaults.decay),
        };
        let fallback =
            |t: &Option<Spanned<String>>| t.as_ref().and_then(|t| routes.get(t.get_ref()).cloned());
        let fallbacks = Fallbacks {
            context_window: fallback(&rc.fallbacks.context_window),
            content_filter: fallback(&rc.fallbacks.content_filter),
        };
        routes.insert(
            name.clone(),
            Arc::new(Route {
                name: name.clone(),
                kind,
                deployments,
                strategy,
                timeouts,
                retry,
                budget: RetryBudget::new(budget, now),
                breaker,
                latency,
                fallbacks,
            }),
        );
    }

    let (shadows, plan_b) = build_plan_b(raw, origin, &routes, &providers, &prices, &at)?;

    let mut keys = Vec::with_capacity(raw.auth.keys.len());
    for (i, k) in raw.auth.keys.iter().enumerate() {
        if k.key.expose().len() < 8 {
            return Err(ConfigError(format!(
                "{origin}: auth.keys[{i}].key: must be at least 8 characters"
            )));
        }
        let allowed = match &k.routes {
            None => None,
            Some(list) => {
                let mut out = Vec::new();
                for r in list {
                    if !routes.contains_key(r.get_ref()) {
                        return Err(at(
                            r.span(),
                            &format!("auth.keys[{i}].routes"),
                            format!("no route named '{}'", r.get_ref()),
                        ));
                    }
                    out.push(r.get_ref().clone());
                }
                Some(out)
            }
        };
        keys.push(ClientKey {
            name: k.name.clone(),
            key: k.key.clone(),
            routes: allowed,
        });
    }

    if let Some(p) = previous {
        if p.governance != raw.governance {
            warnings.push(
                "[governance] changed: the running gateway keeps its store until restarted"
                    .to_owned(),
            );
        }
        if p.listen != listen {
            warnings.push(format!(
                "server.listen changed to {listen}: a running gateway keeps listening on {} until restarted",
                p.listen
            ));
        }
    }

    // Process-wide like the connection pool; set only once the whole config is known good.
    relais_providers::set_max_stream_bytes(raw.upstream.max_stream_bytes);
    Ok(Runtime {
        listen,
        admin_key: raw.admin.key.clone(),
        keyring: previous.and_then(|p| p.keyring.clone()),
        rate_limits: previous.map_or_else(Default::default, |p| p.rate_limits.clone()),
        ledger: previous.and_then(|p| p.ledger.clone()),
        governance: match previous {
            Some(p) => p.governance.clone(),
            None => raw.governance.clone(),
        },
        warnings,
        providers,
        max_body_bytes: raw.server.max_body_bytes,
        shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_secs),
        log_format: raw.server.log_format,
        client_limits: crate::listen::ClientLimits {
            header_read_timeout: Duration::from_secs(raw.server.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(raw.server.body_read_timeout_secs),
            idle_timeout: Duration::from_secs(raw.server.idle_timeout_secs),
            http2_cleartext: raw.server.http2_cleartext,
        },
        max_connections: raw.server.max_connections,
        metrics_key: raw.server.metrics_key.clone(),
        max_decoding_bytes: raw.server.max_decoding_bytes,
        tls,
        admin_client_cert: raw.admin.require_client_cert,
        keys,
        routes,
        provider_kinds,
        shadows,
        plan_b,
        source: Arc::from(source),
        origin: origin.to_owned(),
    })
}

/// Make each promoted deployment its route's primary (`promoted`: route name to deployment id,
/// `provider/model`). A deployment of the route moves to the front; a shadow-only backup moves
/// from the shadow list to the front, and the route's other deployments (the old primary
/// first) become the backups shadow traffic measures.
pub fn apply_promotions(
    raw: &mut RawConfig,
    promoted: &BTreeMap<String, String>,
    origin: &str,
) -> Result<(), ConfigError> {
    for (route, to) in promoted {
        let Some(rc) = raw.routes.get_mut(route) else {
            return Err(ConfigError(format!(
                "{origin}: promotion of '{to}' on route '{route}': the route is gone from the config"
            )));
        };
        let id = |d: &DeploymentConfig| format!("{}/{}", d.provider.get_ref(), d.model);
        if let Some(i) = rc.deployments.iter().position(|d| id(d) == *to) {
            let d = rc.deployments.remove(i);
            rc.deployments.insert(0, d);
            continue;
        }
        let from_shadow = rc.shadow.as_mut().and_then(|sc| {
            let list = sc.deployments.as_mut()?;
            let i = list.iter().position(|d| id(d) == *to)?;
            let d = list.remove(i);
            if list.is_empty() {
                sc.deployments = None;
            }
            Some(d)
        });
        match from_shadow {
            Some(d) => rc.deployments.insert(0, d),
            None => {
                return Err(ConfigError(format!(
                    "{origin}: promotion of '{to}' on route '{route}': no such deployment or shadow backup in the config"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str) -> Result<Runtime, ConfigError> {
        let raw = parse(src, "t.toml")?;
        build(&raw, src, "t.toml")
    }

    #[test]
    fn shipped_prices_parse_and_the_config_overrides_them() {
        let shipped = shipped_prices();
        assert!(shipped.len() >= 20, "{}", shipped.len());
        for (model, pc) in &shipped {
            assert!(pc.input.parse().is_ok(), "{model}");
            assert!(pc.output.parse().is_ok(), "{model}");
        }
        let rt = check(&format!(
            "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"gpt-4o-mini\" }}, {{ provider = \"b\", model = \"gpt-4o\" }}]\n[prices.\"gpt-4o\"]\ninput = \"1\"\noutput = \"2\"\n"
        ))
        .unwrap();
        let d = &rt.routes["r"].deployments;
        assert_eq!(
            d[0].price.map(|p| (p.input, p.output)),
            Some((150_000, 600_000))
        );
        assert_eq!(
            d[1].price.map(|p| (p.input, p.output)),
            Some((1_000_000, 2_000_000))
        );
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let e = check("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
            .err()
            .unwrap();
        assert!(e.0.starts_with("t.toml:3:"), "{e}");
        assert!(e.0.contains("lisen"), "{e}");
    }

    #[test]
    fn issue17_every_config_error_names_its_line() {
        let route = "[providers.a]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\n[routes.a]\ndeployments = [{ provider = \"a\", model = \"m\" }]\n";
        for (src, line, field) in [
            (format!("[admin]\nkey = \"short\"\n{route}"), 2, "admin.key"),
            (
                format!("{route}idle_timeout_secs = -5\n"),
                7,
                "routes.a.idle_timeout_secs",
            ),
            (
                format!(
                    "[server]\nlisten = \"127.0.0.1:1\"\nheader_read_timeout_secs = 0\n{route}"
                ),
                3,
                "server.header_read_timeout_secs",
            ),
            (
                format!("[server]\n\nmax_body_bytes = 5\n{route}"),
                3,
                "server.max_body_bytes",
            ),
            (
                format!("{route}[routes.a.retry]\nattempts = 0\n"),
                8,
                "routes.a.retry.attempts",
            ),
            (
                format!("[auth]\nkeys = [\n  {{ name = \"n\", key = \"k\" }},\n]\n{route}"),
                3,
                "auth.keys[0].key",
            ),
        ] {
            let e = check(&src)
                .err()
                .unwrap_or_else(|| panic!("accepted: {src}"));
            assert!(
                e.0.starts_with(&format!("t.toml:{line}: {field}")),
                "{e}\n{src}"
            );
        }
    }

    #[test]
    fn unknown_provider_in_route_names_line() {
        let src = "[providers.a]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\n[routes.r]\ndeployments = [\n  { provider = \"b\", model = \"m\" },\n]\n";
        let e = check(src).err().unwrap();
        assert!(
            e.0.starts_with("t.toml:7: routes.r.deployments[0].provider"),
            "{e}"
        );
    }

    #[test]
    fn provider_field_errors_name_the_provider() {
        let src =
            "[providers.a]\ntype = \"openai_compat\"\nbase_url = \"http://x\"\napi_kee = \"k\"\n";
        let e = check(src).err().unwrap();
        assert!(e.0.contains("api_kee"), "{e}");
        assert!(e.0.starts_with("t.toml:"), "{e}");
        let src = "[providers.a]\ntype = \"openai_compat\"\n";
        let e = check(src).err().unwrap();
        assert!(e.0.contains("providers.a.base_url"), "{e}");
        let src = "[providers.a]\ntype = \"nope\"\n";
        let e = check(src).err().unwrap();
        assert!(e.0.contains("nope"), "{e}");
    }

    #[test]
    fn missing_env_var_is_named() {
        let src = "[providers.a]\ntype = \"openai_compat\"\nbase_url = \"http://x\"\napi_key = \"${RELAIS_TEST_SURELY_UNSET_VAR}\"\n";
        let e = check(src).err().unwrap();
        assert!(e.0.contains("RELAIS_TEST_SURELY_UNSET_VAR"), "{e}");
        assert!(e.0.starts_with("t.toml:4"), "{e}");
    }

    #[test]
    fn valid_config_builds() {
        let src = r#"
[server]
listen = "127.0.0.1:0"
[providers.up]
type = "openai_compat"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-test-123456"
[providers.az]
type = "azure"
endpoint = "http://127.0.0.1:9"
api_key = "azkey-123456"
[routes.chat]
deployments = [{ provider = "up", model = "gpt" }, { provider = "az", model = "dep" }]
[routes.emb]
kind = "embeddings"
deployments = [{ provider = "up", model = "e" }]
[[auth.keys]]
name = "team"
key = "relais-key-1"
routes = ["chat"]
"#;
        let rt = check(src).ok().unwrap();
        assert_eq!(rt.routes.len(), 2);
        assert_eq!(rt.routes["chat"].deployments[1].id, "az/dep");
        assert_eq!(rt.keys[0].routes.as_deref(), Some(&["chat".to_owned()][..]));
    }

    const TWO_PROVIDERS: &str = "[providers.a]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[providers.b]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"\n";

    #[test]
    fn routing_options_are_validated_with_lines() {
        let src = format!(
            "{TWO_PROVIDERS}[routes.r]\nstrategy = \"fastest\"\ndeployments = [{{ provider = \"a\", model = \"m\" }}]\n"
        );
        let e = check(&src).err().unwrap();
        assert!(e.0.starts_with("t.toml:8: routes.r.strategy"), "{e}");
        assert!(e.0.contains("least_latency"), "{e}");
        let src = format!(
            "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"m\" }}]\nfallbacks = {{ context_window = \"nowhere\" }}\n"
        );
        let e = check(&src).err().unwrap();
        assert!(
            e.0.starts_with("t.toml:9: routes.r.fallbacks.context_window"),
            "{e}"
        );
        let src = format!(
            "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"m\" }}]\nfallbacks = {{ context_window = \"s\" }}\n[routes.s]\ndeployments = [{{ provider = \"b\", model = \"m\" }}]\nfallbacks = {{ content_filter = \"r\" }}\n"
        );
        let e = check(&src).err().unwrap();
        assert!(e.0.contains("cycle: r -> s -> r"), "{e}");
        let src = format!(
            "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"m\" }}]\n[routes.r.breaker]\nmax_ejected_percent = 150\n"
        );
        let e = check(&src).err().unwrap();
        assert!(e.0.contains("routes.r.breaker.max_ejected_percent"), "{e}");
        let src = format!(
            "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"m\" }}]\n[prices.m]\ninput = \"0.1234567\"\noutput = 1\n"
        );
        let e = check(&src).err().unwrap();
        assert!(e.0.contains("prices.m.input"), "{e}");
    }

    #[test]
    fn routing_options_build_and_warn_about_lost_capabilities() {
        let src = format!(
            r#"{TWO_PROVIDERS}
[prices.m]
input = 0.15
output = "0.6"
[routes.r]
strategy = "least_cost"
request_timeout_secs = 30
deployments = [
  {{ provider = "a", model = "m", context_window = 128000, rpm = 100 }},
  {{ provider = "b", model = "n", tools = false, context_window = 8000, weight = 3 }},
]
fallbacks = {{ context_window = "big" }}
[routes.r.retry]
attempts = 4
budget_ratio = 0.1
[routes.r.breaker]
consecutive_failures = 2
max_ejected_percent = 34
[routes.big]
deployments = [{{ provider = "a", model = "huge" }}]
"#
        );
        let rt = check(&src).ok().unwrap();
        let r = &rt.routes["r"];
        assert_eq!(r.strategy, Strategy::LeastCost);
        assert_eq!(r.retry.max_attempts, 4);
        assert_eq!(r.budget.policy().ratio, 0.1);
        assert_eq!(r.breaker.consecutive_failures, 2);
        assert!((r.breaker.max_ejected_share - 0.34).abs() < 1e-9);
        assert_eq!(r.timeouts.request, Some(Duration::from_secs(30)));
        assert_eq!(
            r.deployments[0].price.map(|p| (p.input, p.output)),
            Some((150_000, 600_000))
        );
        assert_eq!(r.deployments[0].limits.rpm, Some(100));
        assert_eq!(r.deployments[1].weight, 3);
        assert!(!r.deployments[1].capabilities.tools);
        assert_eq!(
            r.fallbacks.context_window.as_ref().map(|f| f.name.as_str()),
            Some("big")
        );
        let warnings = rt.warnings.join("\n");
        assert!(warnings.contains("b/n lacks tools"), "{warnings}");
        assert!(warnings.contains("context window"), "{warnings}");
        assert!(warnings.contains("no [prices.\"n\"]"), "{warnings}");
    }

    #[test]
    fn a_rebuild_keeps_live_health_and_unchanged_providers() {
        let src = format!(
            "{TWO_PROVIDERS}[routes.r]\ndeployments = [{{ provider = \"a\", model = \"m\" }}, {{ provider = \"b\", model = \"m\" }}]\n"
        );
        let old = check(&src).ok().unwrap();
        let changed = src.replace(
            "[providers.b]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"",
            "[providers.b]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:10/v1\"",
        );
        let raw = parse(&changed, "t.toml").unwrap();
        let new = rebuild(&raw, &changed, "t.toml", &old).ok().unwrap();
        let (o, n) = (&old.routes["r"], &new.routes["r"]);
        assert!(Arc::ptr_eq(
            &o.deployments[0].health,
            &n.deployments[0].health
        ));
        assert!(Arc::ptr_eq(&old.providers["a"].1, &new.providers["a"].1));
        assert!(!Arc::ptr_eq(&old.providers["b"].1, &new.providers["b"].1));
    }
}
