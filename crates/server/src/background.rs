//! The server's periodic tasks: Plan B's ticker (promotions from other instances, then the
//! dependency check), the key refresher, and the ledger flush at exit. The config watcher is
//! [`crate::reload::watch_config`].

use std::sync::Arc;
use std::time::Duration;

use crate::state::AppState;

/// Plan B's periodic work, every `every`: promotions made on other instances, then the
/// dependency check.
pub(crate) async fn plan_b_every(state: Arc<AppState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        crate::reload::sync_promotions(&state).await;
        let live = state.live();
        if let Err(e) = crate::planb::check_dependency(&live, &state.planb.alerts).await {
            tracing::debug!(error = %e.message, "dependency check skipped");
        }
    }
}

/// Ship the ledger's write-ahead file to the store before exiting; what cannot be shipped in
/// a few seconds stays on disk for the next start.
pub(crate) async fn flush_ledger(state: &AppState) {
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

/// Send the spans still queued for export before exiting (a few seconds at most).
pub(crate) async fn flush_traces(state: &AppState) {
    if let Some(tracer) = state.live().runtime.otel.clone() {
        tracer.flush(Duration::from_secs(5)).await;
    }
}

/// Reload keys and teams from the store now and then, so revocations and keys made by other
/// instances (or by `relais keys` on the same file) arrive.
pub(crate) async fn refresh_keys(ring: Arc<relais_governance::KeyRing>, every: Duration) {
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

/// Delete expired Responses API responses, hourly (a lookup never returns one anyway).
pub(crate) async fn purge_responses(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3_600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.responses.purge(&state.live()).await;
    }
}

/// Stops a background task when the server returns.
pub(crate) struct AbortOnDrop(pub(crate) Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}
