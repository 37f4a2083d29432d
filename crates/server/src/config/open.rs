//! The only I/O of the config: opening the stores `[governance]` names (SQLite or PostgreSQL
//! for keys, teams and the ledger; Redis for limits) and the ledger's write-ahead directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::raw::{GovernanceConfig, LimitsAt, RawConfig, StoreKind, WhenDown};
use super::{ConfigError, Runtime};

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
    let dir = match (&cfg.ledger_dir, cfg.store, &cfg.sqlite_path) {
        (Some(d), _, _) => std::path::PathBuf::from(d),
        (None, StoreKind::Sqlite, Some(db)) => Path::new(db)
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
    let fail_open = cfg.when_redis_down == WhenDown::Open;
    match cfg.limits {
        LimitsAt::Local => Ok(ledger_store.map(|l| {
            relais_governance::RateLimits::Local(Arc::new(relais_governance::Limiter::with_ledger(
                l,
            )))
        })),
        LimitsAt::Redis => {
            let url = cfg.redis_url.as_ref().ok_or_else(|| {
                ConfigError(format!(
                    "{origin}: governance.redis_url: required when limits = \"redis\""
                ))
            })?;
            let r = relais_governance::RedisLimiter::connect(
                url.expose(),
                &cfg.redis_prefix,
                (
                    Duration::from_secs(cfg.lease_secs.max(1)),
                    Duration::from_millis(cfg.limit_lease_ms),
                ),
                fail_open,
                ledger_store,
            )
            .await
            .map_err(|e| ConfigError(format!("{origin}: governance.redis_url: {}", e.message)))?;
            Ok(Some(relais_governance::RateLimits::Redis(r)))
        }
    }
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
    ) = match cfg.store {
        StoreKind::Sqlite => {
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
        StoreKind::Postgres => {
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
    };
    let ring = relais_governance::KeyRing::load(store)
        .await
        .map_err(|e| ConfigError(format!("{origin}: governance: {}", e.message)))?;
    Ok(Some(Governed {
        keyring: Arc::new(ring),
        ledger_store,
    }))
}
