//! The OpenAI Responses API: `POST /v1/responses` (the chat pipeline, answered and kept by a
//! [`Turn`]), `GET` and `DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`
//! and `POST /v1/responses/input_tokens` (an estimate, as `count_tokens` is).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use relais_core::{Error, ErrorKind};
use relais_dialects::responses::{ResponseMeta, ResponsesRequest, parse_responses, with_history};
use relais_router::RouteKind;
use serde_json::{Value, json};

use super::chat::serve;
use crate::caller::Caller;
use crate::clock::unix_secs;
use crate::dialect::{Dialect, Turn};
use crate::http::Ctx;
use crate::live::Live;
use crate::pipeline::admit;
use crate::pipeline::respond::json_or_sse;
use crate::responses::{Save, history, new_response_id, record};
use crate::state::AppState;

/// `POST /v1/responses`.
pub(super) async fn create(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ctx = Ctx::for_dialect(&headers, Dialect::Responses);
    let live = app.live();
    let (caller, bytes, decoding) =
        or_refuse!(app, ctx, admit::gate(&app, &live, &headers, body).await);
    let mut turn = or_refuse!(app, ctx, parse_responses(&bytes));
    drop((bytes, decoding));
    or_refuse!(app, ctx, canonical_only(&turn));
    let earlier = or_refuse!(
        app,
        ctx,
        continue_from(&app, &live, &caller, &mut turn).await
    );
    let id = new_response_id();
    let retention = live.runtime.responses.retention_secs;
    let stored = turn.store && retention > 0;
    if !stored {
        turn.echo.insert("store".into(), false.into());
    }
    let keep = stored.then(|| {
        let rec = record(
            &id,
            &turn.chat.model,
            caller.payer(),
            retention,
            earlier,
            &turn.input,
        );
        Save::new(app.responses.clone(), &live, rec).into_keep()
    });
    let answer = Turn {
        meta: ResponseMeta {
            id,
            model: turn.chat.model.clone(),
            created_at: unix_secs(),
            echo: turn.echo,
            custom_tools: turn.custom_tools,
            namespaced: turn.namespaced,
        },
        keep,
    };
    serve(
        &app,
        &ctx,
        &live,
        &caller,
        &headers,
        turn.chat,
        Some(answer),
    )
    .await
}

/// What only an upstream speaking the Responses API natively can do is refused by name.
fn canonical_only(turn: &ResponsesRequest) -> Result<(), Error> {
    let route = &turn.chat.model;
    if turn.background {
        return Err(Error::unsupported(format!(
            "background mode is not supported: route '{route}' has no upstream that speaks the Responses API natively"
        ))
        .with_param("background"));
    }
    if !turn.hosted_tools.is_empty() {
        return Err(Error::unsupported(format!(
            "hosted tools are not supported ({}): route '{route}' has no upstream that speaks the Responses API natively; offer them as function tools",
            turn.hosted_tools.join(", ")
        ))
        .with_param("tools"));
    }
    Ok(())
}

/// Put the stored conversation of `previous_response_id` in front of this turn's input; the
/// conversation so far (to store with this turn), empty for a first turn.
async fn continue_from(
    app: &AppState,
    live: &Live,
    caller: &Caller<'_>,
    turn: &mut ResponsesRequest,
) -> Result<Vec<Value>, Error> {
    let Some(previous) = turn.previous_response_id.clone() else {
        return Ok(Vec::new());
    };
    let stored = app
        .responses
        .get(live, &previous, caller.payer())
        .await
        .map_err(|e| {
            if e.kind == ErrorKind::NotFound {
                Error::bad_request(format!("Previous response with id '{previous}' not found."))
                    .with_param("previous_response_id")
                    .with_code("previous_response_not_found")
            } else {
                e
            }
        })?;
    let items = history(&stored)?;
    with_history(turn, &items)?;
    Ok(items)
}

fn json(ctx: &Ctx, body: impl Into<Body>) -> Response {
    let mut resp = json_or_sse(body.into(), false);
    ctx.headers(&mut resp, Duration::ZERO);
    resp
}

/// The query's `name=value` pairs (ids, numbers and words: nothing here needs decoding).
fn query_pairs(q: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    q.unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
}

/// `GET /v1/responses/{id}`.
pub(super) async fn get(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let ctx = Ctx::for_dialect(&headers, Dialect::Responses);
    let live = app.live();
    let caller = or_refuse!(app, ctx, live.authenticate(&headers).await);
    if query_pairs(q.as_deref()).any(|(k, v)| k == "stream" && v == "true") {
        let e = Error::unsupported("replaying a stored response as a stream is not supported")
            .with_param("stream");
        return crate::pipeline::admit::refuse(&app, &ctx, &e);
    }
    let r = or_refuse!(
        app,
        ctx,
        app.responses.get(&live, &id, caller.payer()).await
    );
    json(&ctx, r.response.clone())
}

/// `DELETE /v1/responses/{id}`.
pub(super) async fn delete(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = Ctx::for_dialect(&headers, Dialect::Responses);
    let live = app.live();
    let caller = or_refuse!(app, ctx, live.authenticate(&headers).await);
    or_refuse!(
        app,
        ctx,
        app.responses.delete(&live, &id, caller.payer()).await
    );
    json(
        &ctx,
        json!({"id": id, "object": "response", "deleted": true}).to_string(),
    )
}

/// `GET /v1/responses/{id}/input_items`: the conversation's input up to that response, a page
/// at a time (`limit` 1 to 100, default 20; `order` `desc` (default) or `asc`; `after` an id).
pub(super) async fn input_items(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let ctx = Ctx::for_dialect(&headers, Dialect::Responses);
    let live = app.live();
    let caller = or_refuse!(app, ctx, live.authenticate(&headers).await);
    let page = or_refuse!(app, ctx, Page::parse(q.as_deref()));
    let r = or_refuse!(
        app,
        ctx,
        app.responses.get(&live, &id, caller.payer()).await
    );
    let items: Vec<Value> = or_refuse!(
        app,
        ctx,
        serde_json::from_str(&r.items)
            .map_err(|_| Error::internal(format!("stored response '{id}' has unreadable items")))
    );
    json(&ctx, page.list(items).to_string())
}

struct Page {
    limit: usize,
    ascending: bool,
    after: Option<String>,
}

impl Page {
    fn parse(q: Option<&str>) -> Result<Self, Error> {
        let mut page = Self {
            limit: 20,
            ascending: false,
            after: None,
        };
        for (k, v) in query_pairs(q) {
            match k {
                "limit" => {
                    page.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| {
                            Error::bad_request("'limit' must be between 1 and 100")
                                .with_param("limit")
                        })?;
                }
                "order" => {
                    page.ascending = match v {
                        "asc" => true,
                        "desc" => false,
                        _ => {
                            return Err(Error::bad_request("'order' must be asc or desc")
                                .with_param("order"));
                        }
                    };
                }
                "after" => page.after = Some(v.to_owned()),
                _ => {}
            }
        }
        Ok(page)
    }

    fn list(&self, mut items: Vec<Value>) -> Value {
        if !self.ascending {
            items.reverse();
        }
        let start = self.after.as_deref().map_or(0, |after| {
            items
                .iter()
                .position(|i| i.get("id").and_then(Value::as_str) == Some(after))
                .map_or(items.len(), |p| p + 1)
        });
        let rest = items.len().saturating_sub(start);
        let data: Vec<Value> = items.into_iter().skip(start).take(self.limit).collect();
        let id_of = |v: Option<&Value>| v.and_then(|i| i.get("id")).cloned();
        json!({
            "object": "list",
            "first_id": id_of(data.first()),
            "last_id": id_of(data.last()),
            "has_more": rest > data.len(),
            "data": data,
        })
    }
}

/// `POST /v1/responses/input_tokens`: the route must exist and be visible to the key; the
/// count is an estimate of the input with the stored conversation it continues.
pub(super) async fn input_tokens(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ctx = Ctx::for_dialect(&headers, Dialect::Responses);
    let live = app.live();
    let (caller, bytes, _decoding) =
        or_refuse!(app, ctx, admit::gate(&app, &live, &headers, body).await);
    let mut turn = or_refuse!(app, ctx, parse_responses(&bytes));
    if !turn.chat.model.is_empty() {
        or_refuse!(
            app,
            ctx,
            live.entry(&caller, &turn.chat.model, RouteKind::Chat)
        );
    }
    or_refuse!(
        app,
        ctx,
        continue_from(&app, &live, &caller, &mut turn).await
    );
    let n = turn.chat.estimate_input_tokens();
    json(
        &ctx,
        json!({"object": "response.input_tokens", "input_tokens": n}).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_of_input_items() {
        let items: Vec<Value> = (0..5).map(|i| json!({"id": format!("i{i}")})).collect();
        let page = Page::parse(Some("limit=2&order=asc&after=i1")).unwrap();
        let v = page.list(items.clone());
        assert_eq!(v["first_id"], "i2");
        assert_eq!(v["last_id"], "i3");
        assert_eq!(v["has_more"], true);
        let v = Page::parse(None).unwrap().list(items);
        assert_eq!(v["first_id"], "i4");
        assert_eq!(v["has_more"], false);
        assert!(Page::parse(Some("limit=0")).is_err());
        assert!(Page::parse(Some("order=up")).is_err());
    }
}
