//! Stage 1, admit: everything a request must pass before an upstream is called. Not draining,
//! a valid key, a body within the limits, a route the key may use, a data class it may send,
//! room under its limits and budgets. What passes gets a [`Settlement`], which from then on
//! owns the request's end; what does not is refused here, counted and logged once.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use relais_core::{ChatRequest, EmbedRequest, Error, ErrorKind, Side};
use relais_router::Route;

use super::Settlement;
use super::respond::log_error;
use crate::bill::{Bill, worst_cost};
use crate::caller::Caller;
use crate::http::{Ctx, Decoding, read_body};
use crate::live::Live;
use crate::state::AppState;

/// The gate in front of every API endpoint: not draining, a known caller, the body read within
/// the size limit and the decoding budget (held until the returned [`Decoding`] drops).
pub(crate) async fn gate<'a>(
    app: &AppState,
    live: &'a Live,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Caller<'a>, Bytes, Decoding), Error> {
    if app.draining.load(Ordering::Relaxed) {
        return Err(Error::new(
            ErrorKind::Unavailable,
            Side::Gateway,
            "gateway is shutting down",
        ));
    }
    let caller = live.authenticate(headers).await?;
    let (bytes, decoding) = read_body(
        body,
        headers,
        live.runtime.max_body_bytes,
        Some(&app.decoding),
    )
    .await?;
    Ok((caller, bytes, decoding))
}

/// Reserve room under the key's and its team's limits and budgets for the worst case
/// `worst() = (tokens, pico-USD)` (estimated only when there are limits to keep), and open the
/// request's [`Settlement`] (with its ledger rows when there is a ledger).
pub(crate) async fn settlement(
    app: &Arc<AppState>,
    live: &Arc<Live>,
    ctx: &Ctx,
    caller: &Caller<'_>,
    (route, stream): (&str, bool),
    worst: impl FnOnce() -> (u64, u64),
) -> Result<Settlement, Error> {
    // The limiter's future is large (Redis): built only for a caller with limits.
    let ticket = match caller.subjects() {
        None => None,
        Some(subjects) => {
            let (tokens, cost) = worst();
            live.runtime
                .rate_limits
                .admit(&subjects, tokens, cost)
                .await?
        }
    };
    let bill = Bill::start(live, &ctx.id, caller.payer(), route, stream, ctx.start);
    Ok(Settlement::new(app, live, ctx.start, ticket, bill))
}

/// The most a chat request can use: its estimated prompt and its output cap (the configured
/// default when it sets none), in tokens and in pico-USD on the dearest deployment.
pub(crate) fn worst_chat<'a>(
    live: &'a Live,
    route: &'a Route,
    req: &'a ChatRequest,
) -> impl FnOnce() -> (u64, u64) + 'a {
    move || {
        let input = req.estimate_input_tokens();
        let output = req
            .max_output_tokens
            .map_or(live.default_max_tokens(), u64::from);
        (input + output, worst_cost(route, input, output))
    }
}

/// The most an embeddings request can use: its input at four bytes a token.
pub(crate) fn worst_embed<'a>(
    route: &'a Route,
    req: &'a EmbedRequest,
) -> impl FnOnce() -> (u64, u64) + 'a {
    move || {
        let tokens = req
            .input
            .iter()
            .map(|s| s.len() as u64)
            .sum::<u64>()
            .div_ceil(4);
        (tokens, worst_cost(route, tokens, 0))
    }
}

/// A request refused at admission: counted, logged, answered in the client's dialect.
pub(crate) fn refuse(app: &AppState, ctx: &Ctx, err: &Error) -> Response {
    app.global.rejected(err.kind);
    log_error("", &ctx.id, err);
    ctx.error(err, std::time::Duration::ZERO)
}
