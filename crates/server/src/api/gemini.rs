//! The Gemini API: `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent`
//! (`?alt=sse`, or a streamed JSON array) and `:countTokens`, `GET /v1beta/models` and
//! `GET /v1beta/models/{model}` (the same under `/v1`). The model segment is the route name.
//! The key comes as `x-goog-api-key`, `?key=` or a bearer token.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use relais_core::{Error, ErrorKind, Side};
use relais_dialects::gemini;
use relais_router::RouteKind;
use serde_json::{Value, json};

use super::chat::serve;
use crate::dialect::Dialect;
use crate::http::{Ctx, query_params};
use crate::live::Live;
use crate::pipeline::admit;
use crate::pipeline::respond::json_or_sse;
use crate::state::AppState;

/// A query parameter, percent-decoded.
fn query_value(q: Option<&str>, name: &str) -> Option<String> {
    query_params(q.unwrap_or_default()).remove(name)
}

/// Whether a client on a path both APIs share (`GET /v1/models`) is a Gemini client: it
/// presents its key the Google way or names Google's SDK.
pub(super) fn speaks_gemini(headers: &HeaderMap, q: Option<&str>) -> bool {
    headers.contains_key("x-goog-api-key")
        || headers.contains_key("x-goog-api-client")
        || query_value(q, "key").is_some()
}

/// The headers with `?key=` as `x-goog-api-key` when the client sent no other credential.
fn with_query_key(mut headers: HeaderMap, q: Option<&str>) -> HeaderMap {
    let presented = ["authorization", "x-goog-api-key", "x-api-key", "api-key"]
        .iter()
        .any(|h| headers.contains_key(*h));
    if !presented {
        if let Some(v) = query_value(q, "key").and_then(|k| HeaderValue::from_str(&k).ok()) {
            headers.insert("x-goog-api-key", v);
        }
    }
    headers
}

fn not_found(what: &str) -> Error {
    Error::new(ErrorKind::NotFound, Side::Client, what.to_owned())
}

/// `POST .../models/{model}:{method}`.
pub(super) async fn call(
    State(app): State<Arc<AppState>>,
    Path(target): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let sse = query_value(q.as_deref(), "alt").is_some_and(|a| a == "sse");
    let headers = with_query_key(headers, q.as_deref());
    let ctx = Ctx::for_dialect(&headers, Dialect::Gemini { sse });
    let Some((model, method)) = target.rsplit_once(':') else {
        let e = not_found(&format!(
            "models/{target} takes a method: models/{target}:generateContent"
        ));
        return admit::refuse(&app, &ctx, &e);
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        "countTokens" => return count_tokens(&app, &ctx, &headers, model, body).await,
        other => {
            let e = not_found(&format!(
                "method '{other}' is not supported (generateContent, streamGenerateContent and countTokens are)"
            ));
            return admit::refuse(&app, &ctx, &e);
        }
    };
    let live = app.live();
    let (caller, bytes, decoding) =
        or_refuse!(app, ctx, admit::gate(&app, &live, &headers, body).await);
    let req = or_refuse!(app, ctx, gemini::parse_generate(&bytes, model, stream));
    drop((bytes, decoding));
    or_refuse!(app, ctx, gemini_only_fields(&live, &req));
    serve(&app, &ctx, &live, &caller, &headers, req, None).await
}

/// `safetySettings` and `cachedContent`, which only an upstream that forwards them can honour:
/// refused, naming the deployment, on a route that may send the request elsewhere.
fn gemini_only_fields(live: &Live, req: &relais_core::ChatRequest) -> Result<(), Error> {
    let Some(field) = gemini::GEMINI_ONLY
        .iter()
        .find(|f| req.extra.contains_key(**f))
    else {
        return Ok(());
    };
    let Some(entry) = live.entries.get(&req.model) else {
        return Ok(());
    };
    match entry
        .route
        .deployments
        .iter()
        .find(|d| !d.provider.forwards_extra(field))
    {
        None => Ok(()),
        Some(d) => Err(Error::unsupported(format!(
            "'{field}' can only be honoured by a Gemini upstream; route '{}' may send this request to '{}' ({})",
            req.model, d.id, d.vendor
        ))
        .with_param(*field)),
    }
}

async fn count_tokens(
    app: &Arc<AppState>,
    ctx: &Ctx,
    headers: &HeaderMap,
    model: &str,
    body: Body,
) -> Response {
    let live = app.live();
    let (caller, bytes, _decoding) =
        or_refuse!(app, ctx, admit::gate(app, &live, headers, body).await);
    let req = or_refuse!(app, ctx, gemini::parse_count_tokens(&bytes, model));
    or_refuse!(app, ctx, live.entry(&caller, model, RouteKind::Chat));
    answer(
        ctx,
        gemini::render_count_tokens(req.estimate_input_tokens()),
    )
}

fn answer(ctx: &Ctx, body: impl Into<Body>) -> Response {
    let mut resp = json_or_sse(body.into(), false);
    ctx.headers(&mut resp, Duration::ZERO);
    resp
}

fn entry_of(live: &Live, name: &str) -> Value {
    let context = live
        .entries
        .get(name)
        .and_then(|e| e.route.primary())
        .and_then(|d| d.provider.model_info(&d.model).context_length);
    gemini::model_entry(name, context.map(u64::from))
}

/// `GET .../models`: the chat routes the caller may use.
pub(super) async fn list(
    State(app): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let headers = with_query_key(headers, q.as_deref());
    let ctx = Ctx::for_dialect(&headers, Dialect::Gemini { sse: false });
    let live = app.live();
    let caller = or_refuse!(app, ctx, live.authenticate(&headers).await);
    let models: Vec<Value> = live
        .entries
        .iter()
        .filter(|(name, e)| caller.allows(name) && e.route.kind == RouteKind::Chat)
        .map(|(name, _)| entry_of(&live, name))
        .collect();
    answer(&ctx, json!({ "models": models }).to_string())
}

/// `GET .../models/{model}`.
pub(super) async fn get(
    State(app): State<Arc<AppState>>,
    Path(model): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let headers = with_query_key(headers, q.as_deref());
    let ctx = Ctx::for_dialect(&headers, Dialect::Gemini { sse: false });
    let live = app.live();
    let caller = or_refuse!(app, ctx, live.authenticate(&headers).await);
    or_refuse!(app, ctx, live.entry(&caller, &model, RouteKind::Chat));
    answer(&ctx, entry_of(&live, &model).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_key_is_a_credential_only_when_no_header_is() {
        let h = with_query_key(HeaderMap::new(), Some("alt=sse&key=abc%2B1"));
        assert_eq!(h["x-goog-api-key"], "abc+1");
        let mut given = HeaderMap::new();
        given.insert("x-goog-api-key", HeaderValue::from_static("header"));
        let h = with_query_key(given, Some("key=query"));
        assert_eq!(h["x-goog-api-key"], "header");
    }
}
