//! The one way a config is installed in a running server. Three things change the config in
//! force: the config file (watched, and re-read on SIGHUP), a promotion made through the admin
//! API, and a promotion made on another instance (read from the store). All three build the
//! new runtime the same way ([`build`]: parse, apply the promotions in force, build on the
//! running one so its stores and limiters carry over) and swap it in the same way
//! ([`install`]). A config that does not build changes nothing.
//!
//! Depends on config, state and Plan B's target check; never on the pipeline or the API.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};

use relais_core::Error;

use crate::Reload;
use crate::clock::now_ms;
use crate::config::{self, ConfigError, Runtime};
use crate::live::Live;
use crate::planb::{store_error, target};
use crate::state::AppState;

/// Promotions: route name to the deployment id made its primary.
pub(crate) type Promotions = BTreeMap<String, String>;

/// Build a runtime from config `text` with `promoted` in force (and the `--listen` given on
/// the command line), on top of the running one.
fn build(
    text: &str,
    origin: &str,
    listen: Option<&str>,
    promoted: &Promotions,
    running: &Runtime,
) -> Result<Runtime, ConfigError> {
    let mut raw = config::parse(text, origin)?;
    if let Some(l) = listen {
        raw.server.listen = l.to_owned();
    }
    config::apply_promotions(&mut raw, promoted, origin)?;
    config::rebuild(&raw, text, origin, running)
}

/// The running config built again with `promoted` in force, keeping the address it listens on
/// (a `--listen` given on the command line included): what a promotion changes is routes.
fn rebuild_running(
    app: &AppState,
    promoted: &Promotions,
) -> Result<(Arc<Live>, Runtime), ConfigError> {
    let live = app.live();
    let rt = &live.runtime;
    let listen = rt.listen.to_string();
    let runtime = build(&rt.source, &rt.origin, Some(&listen), promoted, rt)?;
    Ok((live, runtime))
}

/// Swap `runtime` in (with the promotions it was built with, when they changed).
fn install(app: &AppState, runtime: Runtime, promoted: Option<Promotions>) {
    app.swap(runtime);
    if let Some(p) = promoted {
        *app.promoted.lock().unwrap_or_else(PoisonError::into_inner) = p;
    }
}

/// Make `to` the primary of `route` (or undo the route's promotion when `to` is `None`):
/// recorded with who did it, in force until undone, across reloads and restarts.
pub async fn promote(
    app: &AppState,
    route: &str,
    to: Option<&str>,
    by: &str,
) -> Result<serde_json::Value, Error> {
    let live = app.live();
    let before = live
        .entries
        .get(route)
        .ok_or_else(|| Error::bad_request(format!("no route named '{route}'")).with_param("route"))?
        .route
        .primary()
        .map(|d| d.id.clone())
        .unwrap_or_default();
    let mut promoted = app.promotions();
    match to {
        Some(to) => {
            target(&live, route, to)?;
            if before == to {
                return Err(Error::bad_request(format!(
                    "'{to}' is already the primary of route '{route}'"
                )));
            }
            promoted.insert(route.to_owned(), to.to_owned());
        }
        None => {
            if promoted.remove(route).is_none() {
                return Err(Error::bad_request(format!(
                    "route '{route}' has no promotion to undo"
                )));
            }
        }
    }
    // Built first (a promotion that does not build changes nothing), recorded next (other
    // instances, and this one's own sync, read the store), swapped in last.
    let not_built =
        |e: ConfigError| Error::bad_request(format!("the promoted config does not build: {e}"));
    let (built_on, mut runtime) = rebuild_running(app, &promoted).map_err(not_built)?;
    let after = runtime
        .routes
        .get(route)
        .and_then(|r| r.primary().map(|d| d.id.clone()))
        .unwrap_or_default();
    let now = now_ms();
    let body = serde_json::json!({
        "route": route,
        "from": before,
        "to": after,
        "undo": to.is_none(),
        "by": by,
        "at": now,
    });
    if let Some(ledger) = &live.runtime.ledger {
        let event = relais_state::PlanEvent {
            id: format!("promotion_{}", crate::bill::row_id(now)),
            at_ms: now,
            kind: "promotion".to_owned(),
            route: route.to_owned(),
            body: body.to_string(),
        };
        ledger
            .store()
            .put_event(&event)
            .await
            .map_err(store_error)?;
    }
    // A config reloaded while the event was being recorded is the one to promote in.
    if !Arc::ptr_eq(&built_on, &app.live()) {
        runtime = rebuild_running(app, &promoted).map_err(not_built)?.1;
    }
    install(app, runtime, Some(promoted));
    tracing::warn!(%route, from = %before, to = %after, %by, undo = to.is_none(), "route primary changed by promotion");
    Ok(body)
}

/// The promotions in force according to the store: the newest event of each route decides
/// (an undo clears it); one that no longer fits the config is logged and skipped.
async fn recorded_promotions(live: &Live) -> Option<Promotions> {
    let ledger = live.runtime.ledger.as_ref()?;
    let events = match ledger.store().events("promotion", None, 10_000).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "promotions could not be read from the store");
            return None;
        }
    };
    let mut promoted = Promotions::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in events {
        if !seen.insert(e.route.clone()) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&e.body) else {
            continue;
        };
        if v["undo"] == true {
            continue;
        }
        if let Some(to) = v["to"].as_str() {
            if target(live, &e.route, to).is_ok() {
                promoted.insert(e.route.clone(), to.to_owned());
            } else {
                tracing::warn!(route = %e.route, %to, "a recorded promotion no longer fits the config; skipped");
            }
        }
    }
    Some(promoted)
}

/// Bring this instance's promotions in line with the store: at start, and then every
/// `check_secs`, so a promotion (or undo) made on one instance of a cluster reaches the others.
pub async fn sync_promotions(app: &AppState) {
    let live = app.live();
    let Some(promoted) = recorded_promotions(&live).await else {
        return;
    };
    if promoted == app.promotions() {
        return;
    }
    // Built on the config in force now: a reload may have come while the store was read.
    match rebuild_running(app, &promoted) {
        Ok((_, runtime)) => {
            tracing::info!(routes = promoted.len(), "promotions from the store applied");
            install(app, runtime, Some(promoted));
        }
        Err(e) => {
            tracing::warn!(error = %e, "promotions from the store could not be applied")
        }
    }
}

/// Watch the config file; on a change (or SIGHUP) validate and build it, then swap it in. An
/// invalid file is refused with a log line naming the problem, and the running config stays.
pub(crate) async fn watch_config(state: Arc<AppState>, reload: Reload) {
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
        // An empty file is one being rewritten in place (truncated, not yet written): it would
        // read as the built-in defaults and drop every route until the next poll. A running
        // gateway waits for the text (an empty config is for starting with no file).
        if text.trim().is_empty() {
            if forced || seen.as_deref().is_some_and(|s| !s.trim().is_empty()) {
                tracing::warn!(config = %origin, "the config file is empty; the running config stays");
            }
            seen = Some(text);
            continue;
        }
        seen = Some(text.clone());
        // Promotions made through the admin API stay in force across reloads.
        let listen = reload.listen_override.as_deref();
        let built = build(
            &text,
            &origin,
            listen,
            &state.promotions(),
            &state.live().runtime,
        );
        match built {
            Ok(runtime) => {
                for w in &runtime.warnings {
                    tracing::warn!(config = %origin, "{w}");
                }
                let routes = runtime.routes.len();
                install(&state, runtime, None);
                tracing::info!(config = %origin, routes, "config reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the running config stays");
            }
        }
    }
}
