//! The inbound APIs: each handler reads its dialect and calls the stages of
//! [`crate::pipeline`] in order (admit → route → respond → settle).
//!
//! Depends on the pipeline, live, caller, state and the dialects; never on the admin API.

/// The value of an admission step, or the refusal answered at once (counted and logged by
/// [`crate::pipeline::admit::refuse`]). Steps run in place, so no admitted value is moved
/// through a tuple on its way to the next stage.
macro_rules! or_refuse {
    ($app:expr, $ctx:expr, $step:expr) => {
        match $step {
            Ok(v) => v,
            Err(e) => return $crate::pipeline::admit::refuse(&$app, &$ctx, &e),
        }
    };
}

mod chat;
mod embeddings;
mod gemini;
mod models;
mod responses;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

/// The API routes: OpenAI Chat Completions, embeddings and models, the OpenAI Responses API,
/// Anthropic Messages, the Gemini API, and the Azure OpenAI deployment paths.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/chat/completions", post(chat::openai))
        .route("/v1/embeddings", post(embeddings::openai))
        .route("/v1/models", get(models::list))
        .route("/v1/messages", post(chat::anthropic))
        .route("/v1/messages/count_tokens", post(chat::count_tokens))
        .route("/v1beta/models", get(gemini::list))
        .route(
            "/v1beta/models/{target}",
            post(gemini::call).get(gemini::get),
        )
        .route(
            "/v1/models/{target}",
            post(gemini::call).get(models::retrieve),
        )
        .route(
            "/v1/responses",
            post(responses::create).get(responses::websocket),
        )
        .route("/v1/responses/input_tokens", post(responses::input_tokens))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items),
        )
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(chat::azure),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(embeddings::azure),
        )
}
