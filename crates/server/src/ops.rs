//! The operator's endpoints: `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use relais_core::{Error, ErrorKind, Side};

use crate::http::{Ctx, bearer, constant_time_eq, plain};
use crate::metrics::{Prom, labels};
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
        // Any admin credential reads the metrics too: a viewer sees no less in the console.
        let ok = presented.is_some_and(|p| {
            constant_time_eq(key.expose().as_bytes(), p.as_bytes())
                || live.runtime.admin.find(p).is_some()
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
    let mut p = Prom::default();
    crate::metrics::render(&mut p, &app.global, live.series());
    let limits = &live.runtime.rate_limits;
    p.family(
        "relais_limit_store_up",
        "gauge",
        "Whether key and team limits can be counted (1) or not (0).",
    );
    p.sample(
        "relais_limit_store_up",
        &labels(&[("kind", limits.kind())]),
        u8::from(limits.is_up()),
    );
    if let Some((leased, asked)) = limits.admissions() {
        p.family(
            "relais_limit_admissions_total",
            "counter",
            "Requests admitted under limits counted in Redis: under this instance's lease of a busy subject's limits, or by asking Redis.",
        );
        p.sample(
            "relais_limit_admissions_total",
            &labels(&[("path", "lease")]),
            leased,
        );
        p.sample(
            "relais_limit_admissions_total",
            &labels(&[("path", "redis")]),
            asked,
        );
    }
    let g = &live.runtime.guardrails;
    if g.has_hook() {
        p.family(
            "relais_guardrail_hook_checks_total",
            "counter",
            "Checks asked of the guardrails' webhook, by outcome (a failure follows on_error).",
        );
        for (i, outcome) in ["allowed", "blocked", "failed"].iter().enumerate() {
            p.sample(
                "relais_guardrail_hook_checks_total",
                &labels(&[("outcome", outcome)]),
                g.hook_counts[i].load(Ordering::Relaxed),
            );
        }
    }
    let [requests, answers] = g.counts();
    for (family, help, counts) in [
        (
            "relais_guardrail_detections_total",
            "Requests in which the data guardrails found a class of data, by what the policy did.",
            requests,
        ),
        (
            "relais_guardrail_answer_detections_total",
            "Values of a class a vendor wrote in an answer, by what the policy did (mask, block).",
            answers,
        ),
    ] {
        p.family(family, "counter", help);
        for (class, action, n) in counts {
            p.sample(family, &labels(&[("class", &class), ("action", action)]), n);
        }
    }
    if let Some(cache) = &live.runtime.cache {
        let s = &cache.stats;
        p.family(
            "relais_cache_requests_total",
            "counter",
            "Requests to cached routes, by what the response cache did: hit, miss or bypass.",
        );
        for (result, n) in [
            ("hit", &s.hits),
            ("miss", &s.misses),
            ("bypass", &s.bypasses),
        ] {
            p.sample(
                "relais_cache_requests_total",
                &labels(&[("result", result)]),
                n.load(Ordering::Relaxed),
            );
        }
        p.family(
            "relais_cache_saved_usd_total",
            "counter",
            "What the answers served from the cache would have cost upstream, USD.",
        );
        p.sample(
            "relais_cache_saved_usd_total",
            "",
            relais_governance::usd_plain(s.saved_pusd.load(Ordering::Relaxed)),
        );
        let (entries, bytes) = cache.memory.size();
        // The cache's unlabelled counters and gauges.
        for (name, kind, help, value) in [
            (
                "relais_cache_coalesced_total",
                "counter",
                "Hits served from an identical request's answer while it was in flight.",
                s.coalesced.load(Ordering::Relaxed),
            ),
            (
                "relais_cache_stored_total",
                "counter",
                "Answers kept by the response cache.",
                s.stored.load(Ordering::Relaxed),
            ),
            (
                "relais_cache_errors_total",
                "counter",
                "Cache store calls that failed (those requests were answered without the cache).",
                s.errors.load(Ordering::Relaxed),
            ),
            (
                "relais_cache_memory_entries",
                "gauge",
                "Answers held by the in-process cache store.",
                entries as u64,
            ),
            (
                "relais_cache_memory_bytes",
                "gauge",
                "Bytes held by the in-process cache store (estimated).",
                bytes as u64,
            ),
            (
                "relais_cache_semantic_hits_total",
                "counter",
                "Hits the semantic cache found by meaning (also in relais_cache_requests_total).",
                s.semantic_hits.load(Ordering::Relaxed),
            ),
            (
                "relais_cache_semantic_embeddings_total",
                "counter",
                "Questions embedded for the semantic cache.",
                s.embedded.load(Ordering::Relaxed),
            ),
            (
                "relais_cache_semantic_embedding_errors_total",
                "counter",
                "Embeddings that failed (those requests used the exact cache only).",
                s.embed_errors.load(Ordering::Relaxed),
            ),
            (
                "relais_cache_semantic_entries",
                "gauge",
                "Questions held by the semantic indexes.",
                cache.indexed() as u64,
            ),
        ] {
            p.family(name, kind, help);
            p.sample(name, "", value);
        }
    }
    if let Some(ring) = &live.runtime.keyring {
        p.family(
            "relais_key_store_up",
            "gauge",
            "Whether the last key refresh reached the store.",
        );
        p.sample(
            "relais_key_store_up",
            &labels(&[("kind", ring.store_kind())]),
            u8::from(ring.store_up()),
        );
    }
    if let Some(l) = &live.runtime.ledger {
        let st = &l.stats;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let rows = "relais_ledger_rows_total";
        p.family(
            rows,
            "counter",
            "Ledger rows appended to the write-ahead file (recorded) and accepted by the store (stored).",
        );
        p.sample(rows, &labels(&[("state", "recorded")]), n(&st.recorded));
        p.sample(rows, &labels(&[("state", "stored")]), n(&st.stored));
        for (name, kind, help, v) in [
            (
                "relais_ledger_write_errors_total",
                "counter",
                "Appends to the write-ahead file that failed (rows kept in memory).",
                n(&st.write_errors),
            ),
            (
                "relais_ledger_backlog_segments",
                "gauge",
                "Closed write-ahead segments waiting for the store.",
                n(&st.backlog),
            ),
            (
                "relais_ledger_backlog_bytes",
                "gauge",
                "Bytes of ledger rows on local disk not yet in the store.",
                n(&st.backlog_bytes),
            ),
            (
                "relais_ledger_store_up",
                "gauge",
                "Whether the last shipment reached the ledger store.",
                u64::from(l.store_up()),
            ),
        ] {
            p.family(name, kind, help);
            p.sample(name, "", v);
        }
    }
    app.planb.shadower.stats.render(&mut p);
    app.planb.alerts.render(&mut p);
    app.alerting.render(&mut p);
    if let Some(t) = &live.runtime.otel {
        t.render(&mut p);
    }
    let body = p.finish();
    plain(&headers, StatusCode::OK, "text/plain; version=0.0.4", body)
}
