//! The router: the inbound APIs, the operator's endpoints and the admin API, with the answers
//! for unknown paths and wrong methods (in OpenAI's error shape).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use relais_core::{Error, ErrorKind, Side};

use crate::http::Ctx;
use crate::state::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    crate::api::routes()
        // Some clients (Claude Code) check the base URL with `HEAD /` before the first call.
        .route("/", get(crate::ops::healthz))
        .route("/healthz", get(crate::ops::healthz))
        .route("/readyz", get(crate::ops::readyz))
        .route("/metrics", get(crate::ops::metrics))
        .merge(crate::admin::router(state.clone()))
        .merge(crate::console::routes())
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

async fn unknown_path(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let ctx = Ctx::new(&headers);
    let err = Error::new(
        ErrorKind::NotFound,
        Side::Client,
        format!("unknown path: {method} {}", uri.path()),
    )
    .with_code("unknown_url");
    ctx.error(&err, Duration::ZERO)
}

async fn wrong_method(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let ctx = Ctx::new(&headers);
    let err = Error::bad_request(format!("method {method} is not allowed on {}", uri.path()))
        .with_code("method_not_allowed");
    let mut resp = ctx.error(&err, Duration::ZERO);
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}
