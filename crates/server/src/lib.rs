//! The relais HTTP server: config, the axum app, metrics and graceful shutdown.
//!
//! A request meets the stages of [`pipeline`] in order: admit → route → respond (+ sse) →
//! settle. The modules, bottom up (each depends only on those above it in this list):
//!
//! - `config` (+ `config/`): parse, validate and build a [`Runtime`]; the only I/O in `open`.
//! - `clock`, `http`, `dialect`, `metrics`: time, HTTP plumbing, the client's API, counters.
//! - `live`: the config in force with its metric series; `caller`: who calls and who pays.
//! - `bill`: ledger rows and cost; `reports`: usage queries for the admin API and the CLI.
//! - `planb`: shadowing, readiness, drills, dependency; the pipeline sees only its tap.
//! - `responses`: stored Responses API responses; the pipeline sees only a `Turn`.
//! - `state`: what outlives a reload; `reload`: the one way a config is installed.
//! - `pipeline`: the stages; `api`: handlers that call them in order.
//! - `ops` (`/healthz`, `/readyz`, `/metrics`) and `admin` (its own router and credential).
//! - `app`: the router; `listen`, `tls`: the accept loop; `background`: periodic tasks.
//!
//! It depends on every other crate and is depended on only by the binary.

mod admin;
mod alerts;
mod api;
mod app;
mod background;
pub mod bill;
mod cache;
mod caller;
mod clock;
pub mod config;
mod console;
mod dialect;
mod guardrails;
mod http;
mod listen;
mod live;
pub mod memory;
mod metrics;
mod ops;
mod otel;
mod pipeline;
pub mod planb;
mod reload;
pub mod reports;
mod responses;
mod state;
#[cfg(test)]
mod testing;
mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use app::router;
pub use config::{ConfigError, RawConfig, Runtime};
pub use live::Live;
pub use state::AppState;
pub use tls::TlsConfig;

/// Where a running server re-reads its config: the file is checked every `poll` and re-read at
/// once on SIGHUP. A changed file is validated and built first; only then is it swapped in.
#[derive(Debug, Clone)]
pub struct Reload {
    pub path: PathBuf,
    pub poll: Duration,
    /// `relais serve --listen` given on the command line; it outlives reloads.
    pub listen_override: Option<String>,
}

/// Serve until `shutdown` resolves, then drain: stop accepting, let in-flight requests finish
/// for up to the configured grace period, end any stream still open with an error event, return.
pub async fn serve(
    runtime: Runtime,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_reload(runtime, listener, shutdown, None).await
}

/// [`serve`], reloading the config from `reload` when it changes.
pub async fn serve_with_reload(
    runtime: Runtime,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: Option<Reload>,
) -> std::io::Result<()> {
    let grace = runtime.shutdown_grace;
    let (abort_tx, abort_rx) = watch::channel(false);
    let (started_tx, mut started_rx) = watch::channel(false);
    let state = Arc::new(AppState::new(runtime, abort_rx));
    let watcher = reload.map(|r| tokio::spawn(reload::watch_config(state.clone(), r)));
    let _stop_watcher = background::AbortOnDrop(watcher);
    let refresher = state.live().runtime.keyring.clone().map(|ring| {
        let every = state
            .live()
            .runtime
            .governance
            .as_ref()
            .map_or(10, |g| g.refresh_secs)
            .max(1);
        tokio::spawn(background::refresh_keys(ring, Duration::from_secs(every)))
    });
    let _stop_refresher = background::AbortOnDrop(refresher);
    reload::sync_promotions(&state).await;
    let every = state.live().runtime.plan_b.check_every;
    let checker = tokio::spawn(background::plan_b_every(state.clone(), every));
    let _stop_checker = background::AbortOnDrop(Some(checker));
    let purger = tokio::spawn(background::purge_responses(state.clone()));
    let _stop_purger = background::AbortOnDrop(Some(purger));
    let alerter = tokio::spawn(alerts::watch(state.clone()));
    let _stop_alerter = background::AbortOnDrop(Some(alerter));
    let trimmer = tokio::spawn(memory::trim_after_spikes());
    let _stop_trimmer = background::AbortOnDrop(Some(trimmer));
    let app = router(state.clone());
    let drain_state = state.clone();
    let max_connections = state.live().runtime.max_connections;
    let tls = state.live().runtime.tls.clone();
    let tls_watcher = tls
        .clone()
        .map(|t| tokio::spawn(t.watch(Duration::from_secs(2))));
    let _stop_tls_watcher = background::AbortOnDrop(tls_watcher);
    let limits_state = state.clone();
    let server = listen::serve(
        listener,
        app,
        tls,
        max_connections,
        move || limits_state.live().runtime.client_limits,
        async move {
            shutdown.await;
            drain_state.draining.store(true, Ordering::Relaxed);
            tracing::info!("shutting down: draining in-flight requests");
            let _ = started_tx.send(true);
        },
    );
    tokio::pin!(server);
    let deadline = async {
        while !*started_rx.borrow_and_update() {
            if started_rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        tokio::time::sleep(grace).await;
    };
    let served = tokio::select! {
        r = &mut server => r,
        () = deadline => {
            tracing::warn!("drain deadline reached: ending open streams");
            let _ = abort_tx.send(true);
            // Give the streams a moment to write their closing error event.
            tokio::select! {
                r = &mut server => r,
                () = tokio::time::sleep(Duration::from_secs(2)) => Ok(()),
            }
        }
    };
    state.live().runtime.rate_limits.close().await;
    background::flush_ledger(&state).await;
    background::flush_traces(&state).await;
    served
}
