//! The relais HTTP server: config, the axum app, metrics and graceful shutdown.
//!
//! It depends on every other crate and is depended on only by the binary.

mod admin;
mod app;
pub mod bill;
pub mod config;
mod dialect;
mod http;
mod listen;
mod memory;
mod metrics;
mod ops;
pub mod planb;
mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use app::{AppState, Live, router};
pub use config::{ConfigError, RawConfig, Runtime};
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
    let watcher = reload.map(|r| tokio::spawn(watch_config(state.clone(), r)));
    let _stop_watcher = AbortOnDrop(watcher);
    let refresher = state.live().runtime.keyring.clone().map(|ring| {
        let every = state
            .live()
            .runtime
            .governance
            .as_ref()
            .map_or(10, |g| g.refresh_secs)
            .max(1);
        tokio::spawn(refresh_keys(ring, Duration::from_secs(every)))
    });
    let _stop_refresher = AbortOnDrop(refresher);
    crate::planb::sync_promotions(&state).await;
    let every = state.live().runtime.plan_b.check_every;
    let checker = tokio::spawn(check_dependency_every(state.clone(), every));
    let _stop_checker = AbortOnDrop(Some(checker));
    let trimmer = tokio::spawn(memory::trim_after_spikes());
    let _stop_trimmer = AbortOnDrop(Some(trimmer));
    let app = router(state.clone());
    let drain_state = state.clone();
    let max_connections = state.live().runtime.max_connections;
    let tls = state.live().runtime.tls.clone();
    let tls_watcher = tls
        .clone()
        .map(|t| tokio::spawn(t.watch(Duration::from_secs(2))));
    let _stop_tls_watcher = AbortOnDrop(tls_watcher);
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
    flush_ledger(&state).await;
    served
}

/// Plan B's periodic work, every `every`: promotions made on other instances, then the
/// dependency check.
async fn check_dependency_every(state: Arc<AppState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        crate::planb::sync_promotions(&state).await;
        let live = state.live();
        if let Err(e) = crate::planb::check_dependency(&live, &state.dependency_alerts).await {
            tracing::debug!(error = %e.message, "dependency check skipped");
        }
    }
}

/// Ship the ledger's write-ahead file to the store before exiting; what cannot be shipped in
/// a few seconds stays on disk for the next start.
async fn flush_ledger(state: &AppState) {
    let Some(ledger) = state.live().runtime.ledger.clone() else {
        return;
    };
    match tokio::time::timeout(Duration::from_secs(5), ledger.flush()).await {
        Ok(Ok(())) => tracing::info!("ledger flushed"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e.message, "ledger: not all rows reached the store; they stay on disk for the next start");
        }
        Err(_) => tracing::warn!(
            "ledger: the store is slow; the remaining rows stay on disk for the next start"
        ),
    }
}

/// Reload keys and teams from the store now and then, so revocations and keys made by other
/// instances (or by `relais keys` on the same file) arrive.
async fn refresh_keys(ring: Arc<relais_governance::KeyRing>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = ring.refresh().await {
            tracing::warn!(store = ring.store_kind(), error = %e.message, "cannot refresh keys from the store; the last ones loaded stay in force");
        }
    }
}

/// Stops a background task when the server returns.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// Watch the config file; on a change (or SIGHUP) validate and build it, then swap it in. An
/// invalid file is refused with a log line naming the problem, and the running config stays.
async fn watch_config(state: Arc<AppState>, reload: Reload) {
    let origin = reload.path.display().to_string();
    let mut seen = std::fs::read_to_string(&reload.path).ok();
    let mut unreadable = false;
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(reload.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        #[cfg(not(unix))]
        let forced = {
            tick.tick().await;
            false
        };
        // A failed read (the file being replaced, `Too many open files`) says nothing about the
        // file's content: the running config stays, what was last read stays the reference (so
        // the next good read reloads only if the text changed), and the failure is logged once.
        let text = match std::fs::read_to_string(&reload.path) {
            Ok(t) => {
                if std::mem::take(&mut unreadable) {
                    tracing::info!(config = %origin, "the config is readable again");
                }
                t
            }
            Err(e) => {
                if forced || !unreadable {
                    tracing::error!(config = %origin, error = %e, "cannot read the config; the running config stays");
                }
                unreadable = true;
                continue;
            }
        };
        if !forced && seen.as_deref() == Some(text.as_str()) {
            continue;
        }
        seen = Some(text.clone());
        let built = config::parse(&text, &origin).and_then(|mut raw| {
            if let Some(l) = &reload.listen_override {
                raw.server.listen.clone_from(l);
            }
            // Promotions made through the admin API stay in force across reloads.
            config::apply_promotions(&mut raw, &state.promotions(), &origin)?;
            config::rebuild(&raw, &text, &origin, &state.live().runtime)
        });
        match built {
            Ok(runtime) => {
                for w in &runtime.warnings {
                    tracing::warn!(config = %origin, "{w}");
                }
                let routes = runtime.routes.len();
                state.install(runtime);
                tracing::info!(config = %origin, routes, "config reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the running config stays");
            }
        }
    }
}
