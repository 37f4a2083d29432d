//! `/v1/models`: the routes the caller may use, described by their primary deployment. The
//! Gemini API lists models at the same path (Google's SDK speaks `v1` by default): a client
//! that presents its key the Google way gets Google's shape (see [`super::gemini`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use relais_dialects::openai;

use crate::http::Ctx;
use crate::pipeline::respond::json_or_sse;
use crate::state::AppState;

/// `GET /v1/models`.
pub(super) async fn list(
    State(app): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    if super::gemini::speaks_gemini(&headers, q.as_deref()) {
        return super::gemini::list(State(app), RawQuery(q), headers).await;
    }
    entries(&app, &headers, None).await
}

/// `GET /v1/models/{model}`: one route, or a 404 like OpenAI's.
pub(super) async fn retrieve(
    State(app): State<Arc<AppState>>,
    Path(model): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    if super::gemini::speaks_gemini(&headers, q.as_deref()) {
        return super::gemini::get(State(app), Path(model), RawQuery(q), headers).await;
    }
    entries(&app, &headers, Some(&model)).await
}

/// The list, or the one entry named `only`.
async fn entries(app: &AppState, headers: &HeaderMap, only: Option<&str>) -> Response {
    let ctx = Ctx::new(headers);
    let live = app.live();
    let key = match live.authenticate(headers).await {
        Ok(k) => k,
        Err(e) => {
            app.global.rejected(e.kind);
            return ctx.error(&e, Duration::ZERO);
        }
    };
    let list: Vec<openai::ModelEntry> = live
        .entries
        .iter()
        .filter(|(name, _)| key.allows(name) && only.is_none_or(|o| o == name.as_str()))
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
    let body = match (only, list.first()) {
        (None, _) => openai::render_models(&list),
        (Some(_), Some(one)) => serde_json::to_vec(one).unwrap_or_default(),
        (Some(name), None) => {
            let e = relais_core::Error::new(
                relais_core::ErrorKind::NotFound,
                relais_core::Side::Client,
                format!("The model '{name}' does not exist or you do not have access to it."),
            )
            .with_param("model");
            return ctx.error(&e, Duration::ZERO);
        }
    };
    let mut resp = json_or_sse(Body::from(body), false);
    ctx.headers(&mut resp, Duration::ZERO);
    resp
}
