//! Stage 3, respond: turn the routed event stream into the client's answer. A JSON answer is
//! folded from the events, then the settlement is finished before the response leaves; a
//! stream is encoded event by event by [`super::sse`], which carries the settlement in the
//! body. Every event passes through [`Settlement::observe`].

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures_util::StreamExt;
use relais_core::{ChatRequest, ChatResponse, Collector, Error, EventStream, Side, StreamEvent};
use relais_router::{Exhausted, Routed};
use tokio::sync::watch;

use super::{End, Settlement};
use crate::clock::{Instant, unix_secs};
use crate::dialect::Turn;
use crate::guardrails::{AnswerGuard, Guardrails};
use crate::http::Ctx;

/// What an answer passes before it reaches the client.
#[derive(Default)]
pub(crate) struct AnswerChecks<'a> {
    /// The guardrails' webhook, when it checks answers, with the client it is asked through:
    /// a whole answer is checked before it leaves (a stream is gathered first).
    pub(crate) hook: Option<(&'a Guardrails, &'a relais_providers::HttpClient)>,
    /// The guardrails' answer side: placeholders restored, classes masked or refused.
    pub(crate) guard: Option<AnswerGuard>,
}

/// Answer a routed chat request, as a stream or as one JSON body; a Responses API turn is
/// written (and kept) by its [`Turn`]. The answer passes `checks` first.
pub(crate) async fn chat(
    ctx: &Ctx,
    req: &ChatRequest,
    routed: Routed,
    mut settlement: Settlement,
    (abort, turn): (watch::Receiver<bool>, Option<Turn>),
    checks: AnswerChecks<'_>,
) -> Response {
    let ttft = ctx.start.elapsed();
    settlement.served(
        routed.route,
        routed.deployment,
        routed.failed,
        Some(ttft),
        routed.attempt_started,
    );
    let AnswerChecks { hook, guard } = checks;
    if req.stream {
        let wait = routed.upstream_wait;
        let Some((g, http)) = hook else {
            return streamed(
                ctx,
                req,
                turn,
                routed.stream,
                settlement,
                (abort, guard),
                wait,
            );
        };
        // The hook judges whole answers: gather the stream, ask, then stream what was gathered.
        let gather_start = Instant::now();
        let (events, gathered) = gather(routed.stream, &mut abort.clone()).await;
        let verdict = match gathered {
            Ok(r) => g.hook_answer(http, (&req.model, &ctx.id), &r).await,
            Err(e) => Err(e),
        };
        let wait = wait + gather_start.elapsed();
        if let Err(e) = verdict {
            for ev in &events {
                settlement.observe(ev);
            }
            log_error(&req.model, &ctx.id, &e);
            let status = ctx.dialect.error_status(&e);
            settlement.finish(End::Failed { error: &e, status });
            return ctx.error(&e, wait);
        }
        let stream: EventStream = Box::pin(futures_util::stream::iter(events.into_iter().map(Ok)));
        return streamed(ctx, req, turn, stream, settlement, (abort, guard), wait);
    }
    let dialect = ctx.dialect;
    let response_id = dialect.response_id(&ctx.id);
    let created = unix_secs();
    let collect_start = Instant::now();
    let collected = collect(routed.stream, &mut settlement).await;
    let upstream = routed.upstream_wait + collect_start.elapsed();
    match collected {
        Ok(mut r) => {
            let mut checked = match hook {
                Some((g, http)) => g.hook_answer(http, (&req.model, &ctx.id), &r).await,
                None => Ok(()),
            };
            if let (Ok(()), Some(mut guard)) = (&checked, guard) {
                checked = guard.response(&mut r);
            }
            if let Err(e) = checked {
                log_error(&req.model, &ctx.id, &e);
                let status = dialect.error_status(&e);
                settlement.finish(End::Failed { error: &e, status });
                return ctx.error(&e, upstream);
            }
            let body = match turn {
                Some(t) => t.answer(&r).await,
                None => dialect.render(&r, &response_id, &req.model, created),
            };
            settlement.finish(End::Answered);
            let mut resp = json_or_sse(Body::from(body), false);
            ctx.headers(&mut resp, upstream);
            settlement.routed_headers(&mut resp);
            resp
        }
        Err(e) => {
            log_error(&req.model, &ctx.id, &e);
            let status = dialect.error_status(&e);
            settlement.finish(End::Failed { error: &e, status });
            ctx.error(&e, upstream)
        }
    }
}

/// Answer from the response cache: the entry rendered in the client's dialect, as one JSON
/// body or replayed as a stream; the settlement bills it as a hit.
pub(crate) async fn cached(
    ctx: &Ctx,
    req: &ChatRequest,
    entry: &crate::cache::Entry,
    mut settlement: Settlement,
    (abort, turn): (watch::Receiver<bool>, Option<Turn>),
    guard: Option<AnswerGuard>,
) -> Response {
    let events = crate::cache::replay(entry);
    if req.stream {
        let stream: EventStream = Box::pin(futures_util::stream::iter(events.into_iter().map(Ok)));
        return streamed(
            ctx,
            req,
            turn,
            stream,
            settlement,
            (abort, guard),
            Duration::ZERO,
        );
    }
    let dialect = ctx.dialect;
    let response_id = dialect.response_id(&ctx.id);
    let created = unix_secs();
    for ev in &events {
        settlement.observe(ev);
    }
    // The entry holds what the vendor wrote (placeholders included): the guard restores this
    // request's values.
    let mut answer = std::borrow::Cow::Borrowed(&entry.response);
    if let Some(mut g) = guard {
        if let Err(e) = g.response(answer.to_mut()) {
            let status = dialect.error_status(&e);
            settlement.finish(End::Failed { error: &e, status });
            return ctx.error(&e, Duration::ZERO);
        }
    }
    let body = match turn {
        Some(t) => t.answer(&answer).await,
        None => dialect.render(&answer, &response_id, &req.model, created),
    };
    settlement.finish(End::Answered);
    let mut resp = json_or_sse(Body::from(body), false);
    ctx.headers(&mut resp, Duration::ZERO);
    resp
}

/// A streamed answer: `stream`'s events encoded in the client's dialect (a Responses API turn
/// by its own encoder), the settlement carried in the body; `wait` is the time spent on
/// upstreams before the first event.
fn streamed(
    ctx: &Ctx,
    req: &ChatRequest,
    turn: Option<Turn>,
    stream: EventStream,
    settlement: Settlement,
    abort_guard: (watch::Receiver<bool>, Option<AnswerGuard>),
    wait: Duration,
) -> Response {
    let dialect = ctx.dialect;
    let encoder = match turn {
        Some(t) => t.encoder(),
        None => dialect.stream_encoder(
            dialect.response_id(&ctx.id),
            req.model.clone(),
            unix_secs(),
            req.stream_include_usage,
        ),
    };
    let mut resp = json_or_sse(Body::empty(), true);
    ctx.headers(&mut resp, wait);
    settlement.routed_headers(&mut resp);
    *resp.body_mut() = super::sse::body(stream, encoder, settlement, abort_guard);
    resp
}

/// Every deployment failed: settle, log, answer with the last error.
pub(crate) fn exhausted(
    ctx: &Ctx,
    route: &str,
    mut settlement: Settlement,
    ex: &Exhausted,
) -> Response {
    log_error(route, &ctx.id, &ex.error);
    let status = ctx.dialect.error_status(&ex.error);
    settlement.finish(End::Exhausted { ex, status });
    ctx.error(&ex.error, ex.upstream_wait)
}

/// A response with its content type: `application/json`, or an uncached `text/event-stream`.
pub(crate) fn json_or_sse(body: Body, sse: bool) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    if sse {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    resp
}

/// Fold the events into one answer, each passing through the settlement on the way.
async fn collect(
    mut stream: EventStream,
    settlement: &mut Settlement,
) -> Result<ChatResponse, Error> {
    let mut c = Collector::new();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        settlement.observe(&ev);
        c.push(&ev)?;
    }
    Ok(c.finish())
}

/// Gather a stream whole, without settling anything: its events, and the answer they fold
/// into (or the error that ended it, the drain deadline of a shutdown included).
async fn gather(
    mut stream: EventStream,
    abort: &mut watch::Receiver<bool>,
) -> (Vec<StreamEvent>, Result<ChatResponse, Error>) {
    let mut events = Vec::new();
    let mut c = Collector::new();
    loop {
        let next = tokio::select! {
            biased;
            () = super::sse::aborted(abort) => return (events, Err(super::sse::cut_at_drain())),
            next = stream.next() => next,
        };
        let Some(ev) = next else {
            return (events, Ok(c.finish()));
        };
        match ev.and_then(|ev| c.push(&ev).map(|()| ev)) {
            Ok(ev) => events.push(ev),
            Err(e) => return (events, Err(e)),
        }
    }
}

/// One log line per failed request: DEBUG for the client's own errors, WARN for the rest.
pub(crate) fn log_error(route: &str, id: &str, err: &Error) {
    if err.side == Side::Client {
        tracing::debug!(
            request_id = id,
            route,
            class = err.kind.as_str(),
            "request refused"
        );
    } else {
        tracing::warn!(
            request_id = id,
            route,
            class = err.kind.as_str(),
            upstream_status = err.upstream_status,
            message = %err.message,
            "request failed"
        );
    }
}
