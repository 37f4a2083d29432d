//! The routes' live state, as the router sees it.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;

use super::common::Admin;
use crate::http::plain;

/// `GET /admin/routes`: every route's strategy and, per deployment, the router's live view:
/// breaker state, cool-downs, latency estimate, in-flight and counters. Behind `admin.key`.
pub(crate) async fn admin_routes(Admin { live, headers, .. }: Admin) -> Response {
    let now = tokio::time::Instant::now();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let routes: serde_json::Map<String, serde_json::Value> = live
        .runtime
        .routes
        .iter()
        .map(|(name, r)| {
            let deployments: Vec<serde_json::Value> = r
                .deployments
                .iter()
                .map(|d| {
                    let h = d.health.snapshot(now, &d.limits, &r.latency);
                    serde_json::json!({
                        "id": d.id,
                        "provider": d.provider_name,
                        "model": d.model,
                        "weight": d.weight,
                        "state": h.state,
                        "unavailable_for_ms": h.unavailable_for.map(ms),
                        "latency_estimate_ms": h.latency_estimate.map(ms),
                        "inflight": h.inflight,
                        "consecutive_failures": h.consecutive_failures,
                        "window": {"successes": h.window_successes, "failures": h.window_failures},
                        "last_minute": {"requests": h.minute_requests, "tokens": h.minute_tokens},
                        "limits": {"rpm": d.limits.rpm, "tpm": d.limits.tpm, "max_concurrent": d.limits.concurrent},
                        "attempts": h.attempts,
                        "failures": h.failures,
                        "retries": h.retries,
                        "failovers": h.failovers,
                        "ejections": h.ejections,
                    })
                })
                .collect();
            let value = serde_json::json!({
                "kind": r.kind.as_str(),
                "strategy": r.strategy.as_str(),
                "deployments": deployments,
                "fallbacks": {
                    "context_window": r.fallbacks.context_window.as_ref().map(|f| f.name.as_str()),
                    "content_filter": r.fallbacks.content_filter.as_ref().map(|f| f.name.as_str()),
                },
            });
            (name.clone(), value)
        })
        .collect();
    let body = serde_json::json!({ "routes": routes }).to_string();
    plain(&headers, StatusCode::OK, "application/json", body)
}

/// `GET /admin/alerts`: the alerts firing now (see [`crate::alerts`]), and whether a webhook
/// receives them.
pub(crate) async fn admin_alerts(
    Admin {
        app, live, headers, ..
    }: Admin,
) -> Response {
    let body = serde_json::json!({
        "alerts": app.alerting.list(),
        "webhook": live.runtime.alerts.webhook_url.is_some(),
        "check_secs": live.runtime.alerts.check_secs,
    })
    .to_string();
    plain(&headers, StatusCode::OK, "application/json", body)
}
