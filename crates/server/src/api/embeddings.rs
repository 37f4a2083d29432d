//! Embeddings: OpenAI's `/v1/embeddings` and Azure OpenAI's deployment path, through the same
//! stages as chat (no stream, no Plan B).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use relais_dialects::openai;
use relais_router::RouteKind;

use crate::http::Ctx;
use crate::otel::RequestTrace;
use crate::pipeline::{End, admit, respond, route};
use crate::state::AppState;

pub(super) async fn openai(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    embeddings(app, headers, body, None).await
}

pub(super) async fn azure(
    State(app): State<Arc<AppState>>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    embeddings(app, headers, body, Some(deployment)).await
}

async fn embeddings(
    app: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    model: Option<String>,
) -> Response {
    let ctx = Ctx::new(&headers);
    let live = app.live();
    // 1. Admit.
    let (caller, bytes, decoding) =
        or_refuse!(app, ctx, admit::gate(&app, &live, &headers, body).await);
    let (mut req, base64) = or_refuse!(app, ctx, openai::parse_embeddings(&bytes));
    drop((bytes, decoding));
    if let Some(m) = model {
        req.model = m;
    }
    let entry = or_refuse!(
        app,
        ctx,
        live.entry(&caller, &req.model, RouteKind::Embeddings)
    );
    let class = or_refuse!(app, ctx, caller.data_class(&headers));
    let worst = admit::worst_embed(&entry.route, &req);
    let key = (req.model.as_str(), false);
    let mut settlement = or_refuse!(
        app,
        ctx,
        admit::settlement(&app, &live, &ctx, &caller, key, worst).await
    );
    let trace = live.runtime.otel.as_ref().map(|t| {
        let (tc, spans) = RequestTrace::begin(t, ctx.traceparent, "embeddings", &req.model, None);
        settlement.set_trace(spans);
        tc
    });
    // 2. Route.
    let routed = route::embed(&entry.route, &req, &caller, class, trace).await;
    let (i, answer, failed, waited, started) = match routed {
        Ok(r) => r,
        Err(ex) => return respond::exhausted(&ctx, &req.model, settlement, &ex),
    };
    // 3. Respond, 4. settle.
    settlement.served(entry.route.clone(), i, failed, None, started);
    settlement.add_usage(&answer.usage);
    settlement.finish(End::Answered);
    let body = openai::render_embeddings(&answer, &req.model, base64);
    let mut resp = respond::json_or_sse(Body::from(body), false);
    ctx.headers(&mut resp, waited);
    settlement.routed_headers(&mut resp);
    resp
}
