//! Chat: OpenAI Chat Completions, Anthropic Messages and Azure OpenAI's deployment path, one
//! pipeline for all three (the dialect decides only how the request is read and the answer
//! written).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use relais_core::ChatRequest;
use relais_router::RouteKind;

use crate::cache::Lookup;
use crate::caller::Caller;
use crate::clock::now_ms;
use crate::dialect::{Dialect, Turn};
use crate::guardrails::{Guardrails, Inspection};
use crate::http::Ctx;
use crate::live::Live;
use crate::otel::RequestTrace;
use crate::pipeline::respond::AnswerChecks;
use crate::pipeline::route::Carried;
use crate::pipeline::{admit, respond, route};
use crate::planb::Admission;
use crate::state::AppState;

pub(super) async fn openai(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    chat(app, headers, body, None, Dialect::OpenAi).await
}

pub(super) async fn anthropic(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    chat(app, headers, body, None, Dialect::Anthropic).await
}

pub(super) async fn azure(
    State(app): State<Arc<AppState>>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    chat(app, headers, body, Some(deployment), Dialect::OpenAi).await
}

/// The chat pipeline: admit, route, respond; the settlement settles whichever way it ends.
async fn chat(
    app: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    model: Option<String>,
    dialect: Dialect,
) -> Response {
    let ctx = Ctx::for_dialect(&headers, dialect);
    let live = app.live();
    // 1. Admit: caller, body, request, route, data class, limits; Plan B's tap.
    let (caller, bytes, decoding) =
        or_refuse!(app, ctx, admit::gate(&app, &live, &headers, body).await);
    let mut req = or_refuse!(app, ctx, dialect.parse_chat(&bytes, &headers));
    drop((bytes, decoding));
    if let Some(m) = model {
        req.model = m;
    }
    serve(&app, &ctx, &live, &caller, &headers, req, None).await
}

/// The pipeline from a parsed request on: the route, the data class, limits and the
/// settlement, Plan B's tap; then route and respond (a Responses API turn through its
/// [`Turn`]).
pub(super) async fn serve(
    app: &Arc<AppState>,
    ctx: &Ctx,
    live: &Arc<Live>,
    caller: &Caller<'_>,
    headers: &HeaderMap,
    mut req: ChatRequest,
    turn: Option<Turn>,
) -> Response {
    let entry = or_refuse!(app, ctx, live.entry(caller, &req.model, RouteKind::Chat));
    let class = or_refuse!(app, ctx, caller.data_class(headers));
    // Data guardrails, before anything is reserved: a blocked class is refused here, masked
    // values are replaced by placeholders (so the cache key, the shadow copy and the trace see
    // only placeholders), and the webhook is asked.
    let guards = &live.runtime.guardrails;
    let policy = Guardrails::policy(live.runtime.guarded_routes.get(&req.model), caller);
    let mut inspection = Inspection::default();
    if let Some(policy) = &policy {
        let route = req.model.clone();
        inspection = or_refuse!(app, ctx, guards.inspect(&route, &mut req, policy));
        let at = (route.as_str(), ctx.id.as_str());
        or_refuse!(
            app,
            ctx,
            guards.hook_request(&live.runtime.http, at, &req).await
        );
    }
    let carried = Carried {
        class,
        sent: &inspection.sent,
        stay: &inspection.stay,
    };
    let worst = admit::worst_chat(live, &entry.route, &req);
    let key = (req.model.as_str(), req.stream);
    let mut settlement = or_refuse!(
        app,
        ctx,
        admit::settlement(app, live, ctx, caller, key, worst).await
    );
    // Where this request may go (the caller's vendors and data class, the classes found): the
    // routing, Plan B's copies and the semantic cache's embedding all keep to it.
    let allow = |d: &relais_router::Deployment| carried.allows(caller, d);
    let restricted = carried
        .restricts(caller)
        .then_some(&allow as relais_router::Allow<'_>);
    // The response cache, after admission: a hit is still a request under the key's limits.
    let mut cache_label = None;
    let mut cached = live.runtime.cached_routes.get(&req.model);
    if let (Some(cache), Some(_)) = (&live.runtime.cache, cached) {
        // Hosted tools travel only in the native body, which a recorded answer cannot keep:
        // such a request goes around the cache.
        if !crate::guardrails::hosted_tools(&req).is_empty() {
            cache
                .stats
                .bypasses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            cache_label = Some("bypass");
            cached = None;
        }
    }
    if let (Some(cache), Some(policy)) = (&live.runtime.cache, cached) {
        let recorder = match cache
            .lookup(policy, caller, headers, &req, restricted)
            .await
        {
            Lookup::Hit(e) => {
                let age = (now_ms() - e.stored_ms) / 1000;
                settlement.set_hit(e.clone(), policy.charge);
                settlement.set_classes(class, &inspection.classes);
                let abort = app.abort_streams.clone();
                let guard = inspection.answer.take();
                let mut resp =
                    respond::cached(ctx, &req, &e, settlement, (abort, turn), guard).await;
                Lookup::headers("hit", Some(age), &mut resp);
                return resp;
            }
            Lookup::Miss(r) => {
                cache_label = Some("miss");
                Some(r)
            }
            Lookup::Bypass(r) => {
                cache_label = Some("bypass");
                r
            }
        };
        if let Some(r) = recorder {
            // The answer is recorded from decoded events, in canonical form.
            req.decode_answer();
            settlement.set_recorder(r);
        }
    }
    let seen = Admission {
        route: &entry.route.name,
        request_id: &ctx.id,
        billed_at_ms: settlement.billed_at_ms(),
        payer: caller.payer(),
    };
    settlement.set_classes(class, &inspection.classes);
    settlement.set_tap(app.planb.tap(live, &mut req, &seen, allow));
    let trace = live.runtime.otel.as_ref().map(|t| {
        let (tc, mut spans) =
            RequestTrace::begin(t, ctx.traceparent, "chat", &req.model, Some(&req));
        if let (Some(s), Some(_)) = (&mut spans, &policy) {
            s.scrub_with(guards.clone(), &req);
        }
        if spans.as_ref().is_some_and(|s| s.records_output()) {
            // The answer's text is recorded from decoded events (no vendor format parsed here).
            req.passthrough = false;
        }
        settlement.set_trace(spans);
        tc
    });
    // 2. Route: the first deployment that produces a first event.
    let down = settlement.down();
    let mut resp = match route::chat(&entry.route, &req, caller, carried, down, trace).await {
        Ok(routed) => {
            // 3. Respond (and 4. settle, when the answer or the stream ends).
            let abort = app.abort_streams.clone();
            let checks = AnswerChecks {
                hook: (policy.is_some() && guards.hook_checks_answers())
                    .then_some((&**guards, &live.runtime.http)),
                guard: inspection.answer.take(),
            };
            respond::chat(ctx, &req, routed, settlement, (abort, turn), checks).await
        }
        Err(ex) => respond::exhausted(ctx, &req.model, settlement, &ex),
    };
    if let Some(label) = cache_label {
        Lookup::headers(label, None, &mut resp);
    }
    resp
}

/// `/v1/messages/count_tokens`: the route must exist and be visible to the key; the count is
/// an estimate (see [`relais_core::ChatRequest::estimate_input_tokens`]), since no upstream is
/// called for it.
pub(super) async fn count_tokens(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ctx = Ctx::for_dialect(&headers, Dialect::Anthropic);
    let live = app.live();
    let counted = async {
        let (key, bytes, _decoding) = admit::gate(&app, &live, &headers, body).await?;
        let req = relais_dialects::anthropic::parse_count_tokens(&bytes)?;
        live.entry(&key, &req.model, RouteKind::Chat)?;
        Ok::<_, relais_core::Error>(req.estimate_input_tokens())
    }
    .await;
    match counted {
        Ok(n) => {
            let body = relais_dialects::anthropic::render_count_tokens(n);
            let mut resp = respond::json_or_sse(Body::from(body), false);
            ctx.headers(&mut resp, Duration::ZERO);
            resp
        }
        Err(e) => {
            app.global.rejected(e.kind);
            ctx.error(&e, Duration::ZERO)
        }
    }
}
