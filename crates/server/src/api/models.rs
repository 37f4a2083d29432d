//! `/v1/models`: the routes the caller may use, described by their primary deployment.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use relais_dialects::openai;

use crate::http::Ctx;
use crate::pipeline::respond::json_or_sse;
use crate::state::AppState;

pub(super) async fn list(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let ctx = Ctx::new(&headers);
    let live = app.live();
    let key = match live.authenticate(&headers).await {
        Ok(k) => k,
        Err(e) => {
            app.global.rejected(e.kind);
            return ctx.error(&e, Duration::ZERO);
        }
    };
    let list: Vec<openai::ModelEntry> = live
        .entries
        .iter()
        .filter(|(name, _)| key.allows(name))
        .map(|(name, e)| {
            let info = e
                .route
                .primary()
                .map(|d| d.provider.model_info(&d.model))
                .unwrap_or_default();
            let mut details = serde_json::Map::new();
            details.insert("kind".into(), e.route.kind.as_str().into());
            if let Some(ctx_len) = info.context_length {
                details.insert("context_length".into(), ctx_len.into());
            }
            details.extend(info.details);
            openai::ModelEntry {
                id: name.clone(),
                object: "model",
                created: app.started_at,
                owned_by: info.owned_by,
                details,
            }
        })
        .collect();
    let mut resp = json_or_sse(Body::from(openai::render_models(&list)), false);
    ctx.headers(&mut resp, Duration::ZERO);
    resp
}
