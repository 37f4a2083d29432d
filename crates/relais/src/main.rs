//! `relais`: the gateway binary. Subcommands: `serve`, `check`, `chat`, `keys`, `teams`, `usage`,
//! `readiness`, `drill`, `promote`.

#![allow(clippy::print_stdout, reason = "a CLI writes its results to stdout")]

mod chat;
mod planb;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use relais_server::config::{self, LogFormat};

/// mimalloc: malloc and free were 12-17% of the gateway's CPU with glibc's allocator on the
/// proxying path; with mimalloc JSON requests/s rose 10% on one core, streams unchanged
/// (docs/benchmarks.md, issue 21). Memory after a spike is returned by
/// [`relais_server::memory`], which calls [`mimalloc_collect`].
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_allow_thp` in mimalloc v3's `mi_option_t` (include/mimalloc.h; the -sys crate
/// does not name it; checked against the header of the locked version, and by a test).
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// No transparent huge pages for the heap: with them an idle gateway held 25 MiB instead of 17
/// (glibc: 18), for no measurable gain in requests/s. mimalloc reads its options when it
/// starts, before `main` (the runtime allocates first), so this runs as an ELF constructor
/// ahead of mimalloc's own (`.init_array` entries with a priority run before unprioritised ones).
// `allow`, not `expect`: rustc 1.95's incremental builds hit an internal compiler error
// ("unstable fingerprints for shallow_lint_levels_on(MIMALLOC_OPTIONS)") on an `expect` here
// after the item's attributes changed.
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
#[allow(
    unsafe_code,
    reason = "an ELF constructor that sets one mimalloc option"
)]
#[used]
#[unsafe(link_section = ".init_array.00100")]
static MIMALLOC_OPTIONS: extern "C" fn() = {
    extern "C" fn set() {
        // SAFETY: mi_option_set takes an option number and a value, no pointers; it only
        // stores the value in mimalloc's option table, which needs no initialisation.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) }
    }
    set
};

/// Return the calling thread's free mimalloc memory to the OS.
#[cfg(feature = "mimalloc")]
#[expect(
    unsafe_code,
    reason = "mimalloc's collection entry point is a C function"
)]
fn mimalloc_collect() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time; it
    // only frees and decommits memory the allocator holds unused.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[derive(Parser)]
#[command(
    name = "relais",
    version,
    about = "An AI gateway: every vendor one config line away"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (TOML). Default: $RELAIS_CONFIG, then ./relais.toml, then built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address, overriding `server.listen`.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Validate a config file and print the resolved routes, secrets masked.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Stream an answer from a running gateway to the terminal.
    Chat(chat::ChatArgs),
    /// Issue, list, rotate and revoke virtual keys (in the config's [governance] store).
    Keys {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: KeysCmd,
    },
    /// Create and list teams (in the config's [governance] store).
    Teams {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: TeamsCmd,
    },
    /// Spend and tokens from the ledger, grouped by key, team, route, vendor, provider, model
    /// or day.
    Usage {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// key, team, route, vendor, provider, model or day (by vendor: with each vendor's
        /// share and the concentration index).
        #[arg(long, default_value = "key")]
        by: String,
        /// First day (YYYY-MM-DD, UTC); default the first of this month.
        #[arg(long)]
        from: Option<String>,
        /// Last day, included; default today.
        #[arg(long)]
        to: Option<String>,
        /// Only this key (id).
        #[arg(long)]
        key: Option<String>,
        /// Only this team (id).
        #[arg(long)]
        team: Option<String>,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Print JSON (the admin API's shape) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Whether each shadowed backup could take over (Plan B), from a running gateway.
    Readiness(planb::ReadinessArgs),
    /// Treat a deployment as down for a share of a route's traffic, for a bounded time.
    Drill(planb::DrillArgs),
    /// Make a deployment a route's primary (--dry-run: forecast only; --undo: put it back).
    Promote(planb::PromoteArgs),
}

struct UsageArgs {
    by: String,
    from: Option<String>,
    to: Option<String>,
    filters: [Option<String>; 3],
    json: bool,
}

fn usage(config: Option<PathBuf>, a: UsageArgs) -> Result<()> {
    let q =
        relais_server::reports::usage_query(&a.by, a.from.as_deref(), a.to.as_deref(), a.filters)
            .map_err(|e| anyhow!(e.message))?;
    with_keyring(config, async |g| {
        let lines = g
            .ledger_store
            .usage(&q)
            .await
            .map_err(|e| anyhow!("ledger store: {e}"))?;
        let hits = g
            .ledger_store
            .usage(&relais_server::reports::savings_query(&q))
            .await
            .map_err(|e| anyhow!("ledger store: {e}"))?;
        let v = relais_server::reports::usage_json(&q, &lines, &hits);
        if a.json {
            println!("{v}");
            return Ok(());
        }
        println!(
            "{:<36} {:>9} {:>7} {:>12} {:>12} {:>16}",
            a.by, "requests", "errors", "input", "output", "cost (USD)"
        );
        for row in v["usage"].as_array().into_iter().flatten() {
            println!(
                "{:<36} {:>9} {:>7} {:>12} {:>12} {:>16}",
                row["group"].as_str().unwrap_or(""),
                row["requests"],
                row["errors"],
                row["input_tokens"],
                row["output_tokens"],
                row["cost_usd"].as_str().unwrap_or("")
            );
        }
        println!(
            "{} to {}: total {} USD",
            v["from"].as_str().unwrap_or(""),
            v["to"].as_str().unwrap_or(""),
            v["total_cost_usd"].as_str().unwrap_or("")
        );
        if v["total_saved_pusd"].as_u64().unwrap_or(0) > 0 {
            let hits: u64 = v["usage"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["cache_hits"].as_u64())
                .sum();
            println!(
                "response cache: {hits} hits saved {} USD",
                v["total_saved_usd"].as_str().unwrap_or("")
            );
        }
        if let Some(c) = v.get("concentration") {
            println!(
                "vendor concentration (HHI, 0-10000): {} by requests, {} by spend",
                c["hhi_requests"], c["hhi_spend"]
            );
        }
        Ok(())
    })
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per command line; boxing would only obscure the clap derive"
)]
enum KeysCmd {
    /// Issue a key; its secret is printed once and stored nowhere.
    Create {
        #[arg(long)]
        team: String,
        #[arg(long)]
        name: String,
        /// Routes the key may use (comma-separated), within its team's; all of the team's by default.
        #[arg(long, value_delimiter = ',')]
        routes: Option<Vec<String>>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List keys by prefix (never their secrets).
    List,
    /// Give a key a new secret; the old one stops working.
    Rotate { id: String },
    /// Revoke a key.
    Revoke { id: String },
}

/// Limits, budgets and policy of a key or team (none by default).
#[derive(clap::Args, Clone)]
struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute (prompt and output).
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests at once.
    #[arg(long)]
    max_concurrent: Option<u64>,
    /// USD per UTC day ("25", "12.50").
    #[arg(long, value_parser = relais_governance::parse_usd)]
    budget_day: Option<u64>,
    /// USD per UTC month.
    #[arg(long, value_parser = relais_governance::parse_usd)]
    budget_month: Option<u64>,
    /// USD in total.
    #[arg(long, value_parser = relais_governance::parse_usd)]
    budget_total: Option<u64>,
    /// Vendors the requests may go to (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    vendors: Option<Vec<String>>,
    /// Data classes the requests may carry (comma-separated); the first is the default.
    #[arg(long, value_delimiter = ',')]
    data_classes: Option<Vec<String>>,
    /// Data guardrails by class found in a request, joined with each route's (the strictest
    /// wins): "email=mask,secret=route,payment_card=block".
    #[arg(long, value_delimiter = ',', value_parser = guard_rule)]
    guardrails: Option<Vec<(String, String)>>,
}

/// `class=action`, the action one of allow, mask, route, block.
fn guard_rule(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((class, action @ ("allow" | "mask" | "route" | "block")))
            if !class.trim().is_empty() =>
        {
            Ok((class.trim().to_owned(), action.to_owned()))
        }
        _ => Err(format!(
            "'{s}': write class=action, the action one of allow, mask, route, block"
        )),
    }
}

impl LimitArgs {
    fn reach(&self) -> relais_governance::Reach {
        relais_governance::Reach {
            vendors: self.vendors.clone(),
            data_classes: self.data_classes.clone(),
            guardrails: self
                .guardrails
                .as_ref()
                .map(|rules| rules.iter().cloned().collect()),
        }
    }
}

impl From<LimitArgs> for relais_governance::Limits {
    fn from(a: LimitArgs) -> Self {
        Self {
            rpm: a.rpm,
            tpm: a.tpm,
            max_concurrent: a.max_concurrent,
            budget_day: a.budget_day,
            budget_month: a.budget_month,
            budget_total: a.budget_total,
            budget_reset_ms: None,
        }
    }
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per command line; boxing would only obscure the clap derive"
)]
enum TeamsCmd {
    Create {
        name: String,
        /// Routes the team's keys may use (comma-separated); all by default.
        #[arg(long, value_delimiter = ',')]
        routes: Option<Vec<String>>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    List,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen } => serve(config, listen),
        Command::Check { config } => check(config),
        Command::Chat(args) => chat::run(args),
        Command::Keys { config, action } => keys(config, action),
        Command::Teams { config, action } => teams(config, action),
        Command::Usage {
            config,
            by,
            from,
            to,
            key,
            team,
            route,
            json,
        } => usage(
            config,
            UsageArgs {
                by,
                from,
                to,
                filters: [key, team, route],
                json,
            },
        ),
        Command::Readiness(args) => planb::readiness(args),
        Command::Drill(args) => planb::drill(args),
        Command::Promote(args) => planb::promote(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relais: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Which config file to use, if any.
fn config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit
        .or_else(|| std::env::var_os("RELAIS_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let p = PathBuf::from("relais.toml");
            p.exists().then_some(p)
        })
}

fn load(path: Option<&Path>) -> Result<(config::RawConfig, String, String)> {
    match path {
        Some(p) => {
            let (raw, source) = config::load(p).map_err(|e| anyhow!(e))?;
            Ok((raw, source, p.display().to_string()))
        }
        None => {
            let source = default_config();
            let raw = config::parse(&source, "(built-in defaults)").map_err(|e| anyhow!(e))?;
            Ok((raw, source, "(built-in defaults)".to_owned()))
        }
    }
}

/// Where `scripts/fetch-model` puts the default model.
fn default_model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RELAIS_MODEL") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("RELAIS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".local/share/relais")
        });
    home.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The built-in defaults: the local model on loopback, no keys, routes `local` and `default`.
fn default_config() -> String {
    let model = default_model_path().display().to_string();
    let model = model.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"[server]
listen = "127.0.0.1:8080"

[providers.local]
type = "local"
model_path = "{model}"

[routes.local]
deployments = [{{ provider = "local", model = "SmolLM2-135M-Instruct" }}]

[routes.default]
deployments = [{{ provider = "local", model = "SmolLM2-135M-Instruct" }}]

# Virtual keys and teams in an embedded SQLite file ($RELAIS_HOME/relais.db). Until a key is
# issued (relais keys create ...), the gateway is open, as fits a loopback default.
[governance]
store = "sqlite"
"#
    )
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("RELAIS_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_writer(std::io::stderr),
                )
                .try_init();
        }
        LogFormat::Text => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                        .with_writer(std::io::stderr),
                )
                .try_init();
        }
    }
}

fn serve(config: Option<PathBuf>, listen: Option<String>) -> Result<()> {
    let path = config_path(config);
    let (mut raw, source, origin) = load(path.as_deref())?;
    if let Some(l) = &listen {
        raw.server.listen.clone_from(l);
    }
    // The built-in defaults have no config to hold an admin key: the environment may give one,
    // which turns the admin API and the console on.
    let mut admin_from_env = false;
    if path.is_none() && raw.admin.key.is_none() {
        if let Ok(key) = std::env::var("RELAIS_ADMIN_KEY") {
            raw.admin.key = Some(relais_core::Secret::new(key));
            admin_from_env = true;
        }
    }
    init_logging(raw.server.log_format);
    #[cfg(feature = "mimalloc")]
    relais_server::memory::set_allocator_trim(mimalloc_collect);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(relais_server::memory::worker_parked)
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let mut runtime = config::build(&raw, &source, &origin).map_err(|e| anyhow!(e))?;
        config::open_state(&raw, &mut runtime, &origin)
            .await
            .map_err(|e| anyhow!(e))?;
        if let Some(ring) = &runtime.keyring {
            tracing::info!(store = ring.store_kind(), active_keys = ring.has_active_keys(), "virtual keys loaded");
        }
        if runtime.routes.is_empty() {
            tracing::warn!(
                config = %origin,
                "no routes configured: every request will get model_not_found; see examples/"
            );
        }
        if runtime.keys.is_empty() && !runtime.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %runtime.listen,
                "no client keys configured and listening beyond loopback: anyone who can reach this port can spend your vendor credit"
            );
        }
        let listener = tokio::net::TcpListener::bind(runtime.listen)
            .await
            .with_context(|| format!("cannot listen on {}", runtime.listen))?;
        let addr = listener.local_addr()?;
        for w in &runtime.warnings {
            tracing::warn!(config = %origin, "{w}");
        }
        tracing::info!(%addr, config = %origin, routes = runtime.routes.len(), "relais listening");
        let console = format!("http://{addr}/ui/");
        if admin_from_env {
            tracing::info!(%console, "console: open it and sign in with the key in RELAIS_ADMIN_KEY");
        } else if runtime.admin.is_on() {
            tracing::info!(%console, "console: open it and sign in with an admin credential ([admin] key or [[admin.credentials]])");
        } else {
            tracing::info!(%console, "console: off until an admin credential is set: [admin] key in a config, or RELAIS_ADMIN_KEY=<16 or more characters> with the built-in defaults");
        }
        // A config file is watched (and re-read on SIGHUP); the built-in defaults have none.
        let reload = path.map(|path| relais_server::Reload {
            path,
            poll: std::time::Duration::from_secs(1),
            listen_override: listen,
        });
        relais_server::serve_with_reload(runtime, listener, shutdown_signal(), reload).await?;
        tracing::info!("relais stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn check(config: Option<PathBuf>) -> Result<()> {
    let path = config_path(config);
    let (raw, source, origin) = load(path.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let runtime = rt.block_on(async { config::build(&raw, &source, &origin) });
    let runtime = runtime.map_err(|e| anyhow!(e))?;
    println!("config OK: {origin}");
    println!("listen: {}", runtime.listen);
    println!("providers:");
    for (name, p) in &raw.providers {
        println!("  {name} ({}): {}", p.kind(), p.summary());
    }
    println!("routes:");
    for (name, r) in &runtime.routes {
        let chain: Vec<&str> = r.deployments.iter().map(|d| d.id.as_str()).collect();
        let sep = if r.strategy == relais_router::Strategy::Failover {
            " -> "
        } else {
            ", "
        };
        println!(
            "  {name} ({}, {}): {}",
            r.kind.as_str(),
            r.strategy.as_str(),
            chain.join(sep)
        );
        for (why, f) in [
            ("context window", &r.fallbacks.context_window),
            ("content filter", &r.fallbacks.content_filter),
        ] {
            if let Some(f) = f {
                println!("    on {why}: falls back to route {}", f.name);
            }
        }
        for d in &r.deployments {
            let info = d.provider.model_info(&d.model);
            if !info.details.is_empty() {
                println!("    {}: {}", d.id, serde_json::Value::Object(info.details));
            }
        }
    }
    if runtime.admin.is_on() {
        println!(
            "admin API and console: on (/admin/, /ui/), {} credential(s)",
            runtime.admin.credentials.len()
        );
    }
    for w in &runtime.warnings {
        println!("warning: {w}");
    }
    if runtime.keys.is_empty() {
        println!("auth: open (no client keys)");
    } else {
        println!("auth: {} client key(s)", runtime.keys.len());
        for k in &runtime.keys {
            let routes = k
                .routes
                .as_ref()
                .map_or("all routes".to_owned(), |r| r.join(", "));
            println!("  {} ({}): {routes}", k.name, k.key.masked());
        }
    }
    Ok(())
}

/// Open the key ring of the config's `[governance]` store, on a small runtime of its own.
fn with_keyring<T>(
    config: Option<PathBuf>,
    f: impl AsyncFnOnce(&config::Governed) -> Result<T>,
) -> Result<T> {
    let path = config_path(config);
    let (raw, _, origin) = load(path.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let governed = config::open_governance(raw.governance.as_ref(), &origin)
            .await
            .map_err(|e| anyhow!(e))?
            .ok_or_else(|| anyhow!("{origin}: no [governance] section: virtual keys are off"))?;
        f(&governed).await
    })
}

fn fmt_routes(routes: &Option<Vec<String>>) -> String {
    routes
        .as_ref()
        .map_or("all routes".to_owned(), |r| r.join(","))
}

fn keys(config: Option<PathBuf>, action: KeysCmd) -> Result<()> {
    with_keyring(config, async |g| {
        let ring = &g.keyring;
        match action {
            KeysCmd::Create {
                team,
                name,
                routes,
                limits,
            } => {
                let issued = ring
                    .create_key(
                        &team,
                        &name,
                        relais_governance::Grant {
                            routes,
                            limits: limits.clone().into(),
                            reach: limits.reach(),
                        },
                        None,
                    )
                    .await
                    .map_err(|e| anyhow!(e.message))?;
                println!("{}", issued.key.expose());
                eprintln!(
                    "key {} ({}) for team {}: {}; shown once, store it now",
                    issued.stored.id,
                    issued.stored.prefix,
                    team,
                    fmt_routes(&issued.stored.routes)
                );
            }
            KeysCmd::List => {
                for k in ring.keys().await.map_err(|e| anyhow!(e.message))? {
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{}  {}...  {}  team={}  {}  {}",
                        k.id,
                        k.prefix,
                        k.name,
                        k.team_id,
                        fmt_routes(&k.routes),
                        state
                    );
                }
            }
            KeysCmd::Rotate { id } => {
                let issued = ring.rotate_key(&id).await.map_err(|e| anyhow!(e.message))?;
                println!("{}", issued.key.expose());
                eprintln!(
                    "key {id} has a new secret ({}); the old one no longer works",
                    issued.stored.prefix
                );
            }
            KeysCmd::Revoke { id } => {
                ring.revoke_key(&id).await.map_err(|e| anyhow!(e.message))?;
                eprintln!("key {id} revoked");
            }
        }
        Ok(())
    })
}

fn teams(config: Option<PathBuf>, action: TeamsCmd) -> Result<()> {
    with_keyring(config, async |g| {
        let ring = &g.keyring;
        match action {
            TeamsCmd::Create {
                name,
                routes,
                limits,
            } => {
                let t = ring
                    .create_team(&name, routes, limits.clone().into(), limits.reach())
                    .await
                    .map_err(|e| anyhow!(e.message))?;
                println!("{}", t.id);
            }
            TeamsCmd::List => {
                for t in ring.teams().await.map_err(|e| anyhow!(e.message))? {
                    println!("{}  {}  {}", t.id, t.name, fmt_routes(&t.routes));
                }
            }
        }
        Ok(())
    })
}

#[cfg(all(test, feature = "mimalloc", target_os = "linux"))]
mod tests {
    /// The constructor ran before mimalloc started, and option 43 is the one that allows
    /// transparent huge pages (1 by default on Linux): it reads 0. Option 15, `purge_delay`
    /// (1000 ms by default in v3's options.c), shows the numbering is the header's.
    #[test]
    #[expect(unsafe_code, reason = "reads two mimalloc options")]
    fn mimalloc_starts_without_transparent_huge_pages() {
        // SAFETY: mi_option_get takes an option number and returns its value; no pointers.
        let (thp, purge_delay) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::MI_OPTION_ALLOW_THP),
                libmimalloc_sys::mi_option_get(15),
            )
        };
        assert_eq!(thp, 0);
        assert_eq!(purge_delay, 1000);
    }
}
