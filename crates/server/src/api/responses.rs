//! The OpenAI Responses API: `POST /v1/responses` (the chat pipeline, answered and kept by a
//! [`Turn`]), `GET` and `DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items`
//! and `POST /v1/responses/input_tokens` (an estimate, as `count_tokens` is).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::StreamExt;
use relais_core::{Error, ErrorKind};
use relais_dialects::responses::{
    ResponseMeta, ResponsesRequest, native_body, parse_responses, with_history,
};
use relais_router::RouteKind;
use serde_json::{Value, json};

use super::chat::serve;
use crate::caller::Caller;
use crate::clock::unix_secs;
use crate::dialect::{Dialect, Turn};
use crate::http::{Ctx, query_params};
use crate::listen::{Busy, Connection};
use crate::live::Live;
use crate::pipeline::admit;
use crate::pipeline::respond::json_or_sse;
use crate::responses::{Conversations, Save, history, new_response_id, record};
use crate::state::AppState;

/// `POST /v1/responses`.
pub(super) async fn create(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    turn(app, headers, body, None, None).await
}

/// One response, over HTTP or as one `response.create` of a WebSocket (`socket`: that
/// session's conversations).
///
/// `background_id`: this is the background run of the response of that id, already answered
/// `queued` (see [`background`]).
async fn turn(
    app: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    socket: Option<&Arc<Conversations>>,
    background_id: Option<String>,
) -> Response {
    let ctx = Ctx::for_dialect(&headers, Dialect::Responses);
    let live = app.live();
    let (caller, bytes, decoding) =
        or_refuse!(app, ctx, admit::gate(&app, &live, &headers, body).await);
    let mut turn = or_refuse!(app, ctx, parse_responses(&bytes));
    drop(decoding);
    let native = natively(&live, &turn.chat.model);
    or_refuse!(app, ctx, canonical_only(&turn, native));
    let earlier = or_refuse!(
        app,
        ctx,
        continue_from(&app, &live, &caller, &mut turn, socket).await
    );
    if native.is_some() {
        // A deployment that speaks the Responses API gets the client's request whole.
        let body = or_refuse!(app, ctx, native_body(&bytes, &turn, &earlier));
        turn.chat.responses_body = Some(Arc::new(body));
    }
    let id = background_id.unwrap_or_else(new_response_id);
    let retention = live.runtime.responses.retention_secs;
    let stored = turn.store && retention > 0;
    if turn.background {
        if !stored || turn.chat.stream || socket.is_some() {
            let e = Error::unsupported(
                "background mode needs a stored response (store: true, not over a WebSocket) and is not streamed",
            )
            .with_param("background");
            return crate::pipeline::admit::refuse(&app, &ctx, &e);
        }
        let rec = record(
            &id,
            &turn.chat.model,
            caller.payer(),
            retention,
            earlier,
            &turn.input,
        );
        let queued = background(&app, &live, &headers, &bytes, turn, id, rec).await;
        return json(&ctx, queued.to_string());
    }
    if !stored {
        turn.echo.insert("store".into(), false.into());
    }
    // A socket keeps even an unstored response, for its own next turn, while it lives.
    let rec = |kept_for| {
        record(
            &id,
            &turn.chat.model,
            caller.payer(),
            kept_for,
            earlier,
            &turn.input,
        )
    };
    let save = match (stored, socket) {
        (true, None) => Some(Save::new(app.responses.clone(), &live, rec(retention))),
        (true, Some(s)) => {
            Some(Save::new(app.responses.clone(), &live, rec(retention)).also_in(s.clone()))
        }
        (false, Some(s)) => Some(Save::new(s.clone(), &live, rec(86_400))),
        (false, None) => None,
    };
    let keep = save.map(Save::into_keep);
    drop(bytes);
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

/// How the route's deployments take a Responses request: `Some(true)` all speak the Responses
/// API natively, `Some(false)` some do, `None` none does (or no such route).
fn natively(live: &Live, route: &str) -> Option<bool> {
    let deployments = &live.entries.get(route)?.route.deployments;
    let native = deployments
        .iter()
        .filter(|d| d.provider.speaks_responses())
        .count();
    (native > 0).then_some(native == deployments.len())
}

/// Background mode, run by relais for any vendor: the response is answered `queued` and kept
/// at once; the same request then runs in a task of its own through the whole pipeline (key,
/// limits, routing, ledger), and its answer replaces the queued one in the store (or, if it
/// fails, a `failed` response with the error does). `GET /v1/responses/{id}` shows where it is.
/// Returns the queued response object.
async fn background(
    app: &Arc<AppState>,
    live: &Live,
    headers: &HeaderMap,
    raw: &[u8],
    turn: ResponsesRequest,
    id: String,
    rec: relais_state::StoredResponse,
) -> Value {
    let mut echo = turn.echo.clone();
    echo.insert("background".into(), true.into());
    let meta = ResponseMeta {
        id: id.clone(),
        model: turn.chat.model.clone(),
        created_at: unix_secs(),
        echo,
        custom_tools: Vec::new(),
        namespaced: Vec::new(),
    };
    let queued = meta.object(
        "queued",
        Vec::new(),
        &relais_dialects::responses::End::default(),
    );
    Save::new(app.responses.clone(), live, rec.clone()).into_keep()(&queued).await;
    let on_failure = Save::new(app.responses.clone(), live, rec).into_keep();
    // The same request, run in the foreground of its task.
    let mut body: serde_json::Map<String, Value> = serde_json::from_slice(raw).unwrap_or_default();
    body.remove("background");
    let body = Value::Object(body).to_string();
    let (app, headers) = (app.clone(), headers.clone());
    let mut failed = queued.clone();
    tokio::spawn(async move {
        let resp = turn_boxed(app, headers, Body::from(body), id).await;
        if resp.status().is_success() {
            return;
        }
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let err: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        failed["status"] = "failed".into();
        failed["error"] = json!({"code": err["error"]["code"], "message": err["error"]["message"]});
        on_failure(&failed).await;
    });
    queued
}

/// [`turn`] as a boxed future, for the task a background response runs in.
fn turn_boxed(
    app: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    id: String,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
    Box::pin(async move { turn(app, headers, body, None, Some(id)).await })
}

/// What only an upstream speaking the Responses API natively can do (hosted tools) is refused
/// by name on a route that may send the request elsewhere.
fn canonical_only(turn: &ResponsesRequest, native: Option<bool>) -> Result<(), Error> {
    let route = &turn.chat.model;
    if !turn.hosted_tools.is_empty() && native != Some(true) {
        return Err(Error::unsupported(format!(
            "hosted tools are not supported ({}): route '{route}' has an upstream that does not speak the Responses API natively; offer them as function tools",
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
    socket: Option<&Arc<Conversations>>,
) -> Result<Vec<Value>, Error> {
    let Some(previous) = turn.previous_response_id.clone() else {
        return Ok(Vec::new());
    };
    let on_socket = match socket {
        Some(s) => s.get(live, &previous, caller.payer()).await.ok(),
        None => None,
    };
    let found = match on_socket {
        Some(r) => Ok(r),
        None => app.responses.get(live, &previous, caller.payer()).await,
    };
    let stored = found.map_err(|e| {
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
    if query_params(q.as_deref().unwrap_or_default())
        .get("stream")
        .is_some_and(|v| v == "true")
    {
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
        for (k, v) in query_params(q.unwrap_or_default()) {
            match k.as_str() {
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
                    page.ascending = match v.as_str() {
                        "asc" => true,
                        "desc" => false,
                        _ => {
                            return Err(Error::bad_request("'order' must be asc or desc")
                                .with_param("order"));
                        }
                    };
                }
                "after" => page.after = Some(v),
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
        continue_from(&app, &live, &caller, &mut turn, None).await
    );
    let n = turn.chat.estimate_input_tokens();
    json(
        &ctx,
        json!({"object": "response.input_tokens", "input_tokens": n}).to_string(),
    )
}

/// `GET /v1/responses` with a WebSocket upgrade: OpenAI's WebSocket mode. Each
/// `response.create` message (the body of a `POST /v1/responses`, `stream` implied) runs as a
/// response of its own through the same pipeline (key, limits, ledger, failover), one at a
/// time, its events sent as text messages; a refusal is an `error` event with its status. The
/// key is checked at the handshake and again for each response. A socket silent for the
/// listener's idle timeout between responses is closed.
pub(super) async fn websocket(
    State(app): State<Arc<AppState>>,
    connection: Option<Extension<Connection>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let ctx = Ctx::for_dialect(&headers, Dialect::Responses);
    let live = app.live();
    or_refuse!(app, ctx, live.authenticate(&headers).await);
    let limit = live.runtime.max_body_bytes;
    let idle = live.runtime.client_limits.idle_timeout;
    drop(live);
    upgrade.max_message_size(limit).on_upgrade(move |socket| {
        // The socket is this handler's now: the listener's deadlines step aside.
        let hold = connection.map(|Extension(c)| c.hold());
        session(app, headers, socket, idle, hold)
    })
}

async fn session(
    app: Arc<AppState>,
    headers: HeaderMap,
    mut socket: WebSocket,
    idle: Duration,
    _hold: Option<Busy>,
) {
    let conversations = Arc::new(Conversations::socket(&app.live().runtime.responses));
    loop {
        let message = match tokio::time::timeout(idle, socket.recv()).await {
            Ok(Some(Ok(m))) => m,
            Err(_) => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            Ok(None | Some(Err(_))) => return,
        };
        let text = match message {
            Message::Text(t) => t,
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(_) => {
                let e = Error::bad_request(
                    "binary messages are not supported; send response.create as text",
                );
                if send_error(&mut socket, &e, 400).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let body = match ws_request(&text) {
            Ok(b) => b,
            Err(e) => {
                if send_error(&mut socket, &e, 400).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let resp = turn(
            app.clone(),
            headers.clone(),
            Body::from(body),
            Some(&conversations),
            None,
        )
        .await;
        if forward(&mut socket, resp).await.is_err() {
            return;
        }
    }
}

/// A `response.create` message as the body of `POST /v1/responses`.
fn ws_request(text: &str) -> Result<Vec<u8>, Error> {
    let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(text) else {
        return Err(Error::bad_request("a message must be a JSON object"));
    };
    match m.remove("type") {
        Some(Value::String(t)) if t == "response.create" => {}
        other => {
            return Err(Error::bad_request(format!(
                "unsupported message type {}: send response.create",
                other.unwrap_or(Value::Null)
            ))
            .with_param("type"));
        }
    }
    // Responses are always streamed on a socket.
    m.insert("stream".into(), true.into());
    serde_json::to_vec(&m).map_err(|e| Error::internal(format!("cannot encode the request: {e}")))
}

async fn send_error(socket: &mut WebSocket, e: &Error, status: u16) -> Result<(), axum::Error> {
    let body: Value =
        serde_json::from_slice(&relais_dialects::openai::error_body(e)).unwrap_or(Value::Null);
    let event = json!({"type": "error", "status": status, "error": body["error"]});
    socket.send(Message::Text(event.to_string().into())).await
}

/// A response as socket messages: each SSE event's data, or an `error` event for a refusal.
async fn forward(socket: &mut WebSocket, resp: Response) -> Result<(), axum::Error> {
    let status = resp.status();
    let mut body = resp.into_body().into_data_stream();
    if !status.is_success() {
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk.map_err(axum::Error::new)?);
        }
        let err: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let event = json!({"type": "error", "status": status.as_u16(), "error": err["error"]});
        return socket.send(Message::Text(event.to_string().into())).await;
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.map_err(axum::Error::new)?);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..end + 2).collect();
            let frame = String::from_utf8_lossy(&frame);
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                socket.send(Message::Text(data.to_owned().into())).await?;
            }
        }
    }
    Ok(())
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
