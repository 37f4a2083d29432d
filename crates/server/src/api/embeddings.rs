//! Embeddings: OpenAI's `/v1/embeddings` and Azure OpenAI's deployment path, through the same
//! stages as chat (no stream, no Plan B).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use relais_core::Error;
use relais_dialects::openai;
use relais_router::RouteKind;

use crate::http::Ctx;
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
    let admitted = async {
        let (caller, bytes, _decoding) = admit::gate(&app, &live, &headers, body).await?;
        let (mut req, base64) = openai::parse_embeddings(&bytes)?;
        if let Some(m) = model {
            req.model = m;
        }
        let entry = live.entry(&caller, &req.model, RouteKind::Embeddings)?;
        let class = caller.data_class(&headers)?.map(str::to_owned);
        let worst = admit::worst_embed(&entry.route, &req);
        let key = (req.model.as_str(), false);
        let settlement = admit::settlement(&app, &live, &ctx, &caller, key, worst).await?;
        Ok::<_, Error>((caller, req, base64, entry.route.clone(), class, settlement))
    }
    .await;
    let (caller, req, base64, route, class, mut settlement) = match admitted {
        Ok(a) => a,
        Err(e) => return admit::refuse(&app, &ctx, &e),
    };
    // 2. Route.
    let (i, answer, failed, waited) =
        match route::embed(&route, &req, &caller, class.as_deref()).await {
            Ok(r) => r,
            Err(ex) => return respond::exhausted(&ctx, &req.model, settlement, &ex),
        };
    // 3. Respond, 4. settle.
    settlement.served(route, i, failed, None);
    settlement.add_usage(&answer.usage);
    settlement.finish(End::Answered);
    let body = openai::render_embeddings(&answer, &req.model, base64);
    let mut resp = respond::json_or_sse(Body::from(body), false);
    ctx.headers(&mut resp, waited);
    settlement.routed_headers(&mut resp);
    resp
}
