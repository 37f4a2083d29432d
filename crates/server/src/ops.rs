//! The operator's endpoints: `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use relais_core::{Error, ErrorKind, Side};

use crate::http::{Ctx, bearer, constant_time_eq, plain};
use crate::state::AppState;

pub(crate) async fn healthz(headers: HeaderMap) -> Response {
    plain(
        &headers,
        StatusCode::OK,
        "application/json",
        r#"{"status":"ok"}"#.to_owned(),
    )
}

/// `/readyz`: 503 while draining, and while the limit store (Redis) is unreachable when
/// limited keys fail closed, since such an instance refuses their requests; 200 otherwise, with
/// what is degraded named.
pub(crate) async fn readyz(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (status, body) = if app.draining.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "draining"}),
        )
    } else {
        let live = app.live();
        let limits = &live.runtime.rate_limits;
        let fail_open = live
            .runtime
            .governance
            .as_ref()
            .is_some_and(|g| g.when_redis_down == crate::config::WhenDown::Open);
        let mut body = serde_json::json!({"status": "ready"});
        let mut status = StatusCode::OK;
        match (limits.is_up(), fail_open) {
            (true, _) => {}
            (false, true) => {
                body["limits"] = "unreachable: admitting without limits".into();
            }
            (false, false) => {
                status = StatusCode::SERVICE_UNAVAILABLE;
                body["limits"] = "unreachable: refusing limited keys".into();
            }
        }
        // Neither stops this instance from serving: keys loaded last stay in force, ledger
        // rows wait on disk. Named so that an operator sees it.
        if live.runtime.keyring.as_ref().is_some_and(|r| !r.store_up()) {
            body["keys"] = "store unreachable: the keys loaded last stay in force".into();
        }
        if live.runtime.ledger.as_ref().is_some_and(|l| !l.store_up()) {
            body["ledger"] = "store unreachable: rows wait on disk".into();
        }
        if body.as_object().is_some_and(|o| o.len() > 1) {
            body["status"] = "degraded".into();
        }
        (status, body)
    };
    plain(&headers, status, "application/json", body.to_string())
}

pub(crate) async fn metrics(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let live = app.live();
    // Optional: the figures tell an attacker which vendors and routes exist and how busy they are.
    if let Some(key) = &live.runtime.metrics_key {
        let presented = bearer(&headers);
        let admin = live.runtime.admin_key.as_ref();
        let ok = presented.is_some_and(|p| {
            constant_time_eq(key.expose().as_bytes(), p.as_bytes())
                || admin.is_some_and(|a| constant_time_eq(a.expose().as_bytes(), p.as_bytes()))
        });
        if !ok {
            let e = Error::new(
                ErrorKind::Auth,
                Side::Client,
                "invalid or missing metrics key: send it as 'Authorization: Bearer <key>'",
            );
            return Ctx::new(&headers).error(&e, Duration::ZERO);
        }
    }
    let mut body = crate::metrics::render(&app.global, live.series());
    let limits = &live.runtime.rate_limits;
    body.push_str(&format!(
        "# HELP relais_limit_store_up Whether key and team limits can be counted (1) or not (0).\n# TYPE relais_limit_store_up gauge\nrelais_limit_store_up{{kind=\"{}\"}} {}\n",
        limits.kind(),
        u8::from(limits.is_up())
    ));
    if let Some(ring) = &live.runtime.keyring {
        body.push_str(&format!(
            "# HELP relais_key_store_up Whether the last key refresh reached the store.\n# TYPE relais_key_store_up gauge\nrelais_key_store_up{{kind=\"{}\"}} {}\n",
            ring.store_kind(),
            u8::from(ring.store_up())
        ));
    }
    if let Some(l) = &live.runtime.ledger {
        let st = &l.stats;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        body.push_str(&format!(
            "# HELP relais_ledger_rows_total Ledger rows appended to the write-ahead file (recorded) and accepted by the store (stored).\n# TYPE relais_ledger_rows_total counter\nrelais_ledger_rows_total{{state=\"recorded\"}} {}\nrelais_ledger_rows_total{{state=\"stored\"}} {}\n# HELP relais_ledger_write_errors_total Appends to the write-ahead file that failed (rows kept in memory).\n# TYPE relais_ledger_write_errors_total counter\nrelais_ledger_write_errors_total {}\n# HELP relais_ledger_backlog_segments Closed write-ahead segments waiting for the store.\n# TYPE relais_ledger_backlog_segments gauge\nrelais_ledger_backlog_segments {}\n# HELP relais_ledger_backlog_bytes Bytes of ledger rows on local disk not yet in the store.\n# TYPE relais_ledger_backlog_bytes gauge\nrelais_ledger_backlog_bytes {}\n# HELP relais_ledger_store_up Whether the last shipment reached the ledger store.\n# TYPE relais_ledger_store_up gauge\nrelais_ledger_store_up {}\n",
            n(&st.recorded),
            n(&st.stored),
            n(&st.write_errors),
            n(&st.backlog),
            n(&st.backlog_bytes),
            u8::from(l.store_up())
        ));
    }
    app.planb.shadower.stats.render(&mut body);
    app.planb.alerts.render(&mut body);
    plain(&headers, StatusCode::OK, "text/plain; version=0.0.4", body)
}
