//! The relais HTTP server: config, the axum app, metrics and graceful shutdown.
//!
//! It depends on every other crate and is depended on only by the binary.

mod app;
pub mod config;
mod dialect;
mod metrics;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use app::{AppState, router};
pub use config::{ConfigError, RawConfig, Runtime};

/// Serve until `shutdown` resolves, then drain: stop accepting, let in-flight requests finish
/// for up to the configured grace period, end any stream still open with an error event, return.
pub async fn serve(
    runtime: Runtime,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = runtime.shutdown_grace;
    let (abort_tx, abort_rx) = watch::channel(false);
    let (started_tx, mut started_rx) = watch::channel(false);
    let state = Arc::new(AppState::new(runtime, abort_rx));
    let app = router(state.clone());
    let drain_state = state.clone();
    // Nagle plus delayed ACK holds a response's last small write for ~40 ms under keep-alive.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain_state.draining.store(true, Ordering::Relaxed);
            tracing::info!("shutting down: draining in-flight requests");
            let _ = started_tx.send(true);
        })
        .into_future();
    tokio::pin!(server);
    let deadline = async {
        while !*started_rx.borrow_and_update() {
            if started_rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = &mut server => return r,
        () = deadline => {}
    }
    tracing::warn!("drain deadline reached: ending open streams");
    let _ = abort_tx.send(true);
    // Give the streams a moment to write their closing error event.
    tokio::select! {
        r = &mut server => r,
        () = tokio::time::sleep(Duration::from_secs(2)) => Ok(()),
    }
}
