//! Stage 2, route: try the route's deployments in order (failing over, retrying, skipping the
//! ejected) until one produces a first event. The caller's policy (vendors, data class) and a
//! drill's "down" deployment narrow the deployments tried. Nothing is written to the client
//! and nothing is settled here.

use relais_core::trace::TraceContext;
use relais_core::{ChatRequest, EmbedRequest, EmbedResponse};
use relais_router::{Allow, Deployment, Exhausted, FailedAttempt, Route, Routed};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::caller::Caller;

/// Route a chat request. `down` is the deployment a drill treats as down for this request.
pub(crate) async fn chat(
    route: &Arc<Route>,
    req: &ChatRequest,
    caller: &Caller<'_>,
    (class, stay): (Option<&str>, &[String]),
    down: Option<&str>,
    trace: Option<TraceContext>,
) -> Result<Routed, Exhausted> {
    // `stay`: classes the guardrails found that only deployments listing them may receive.
    let allow = |d: &Deployment| {
        caller.may_use(d, class)
            && down != Some(d.id.as_str())
            && stay
                .iter()
                .all(|c| d.data_classes.as_ref().is_some_and(|l| l.contains(c)))
    };
    let restricted = caller.restricts(class) || down.is_some() || !stay.is_empty();
    let policy = restricted.then_some(&allow as Allow<'_>);
    match trace {
        Some(t) => relais_core::trace::scope(t, route.chat_within(req, policy)).await,
        None => route.chat_within(req, policy).await,
    }
}

/// An embeddings answer: the deployment index that served, the answer, the failed attempts,
/// the time spent waiting on upstreams and when the serving attempt started.
pub(crate) type Embedded = (usize, EmbedResponse, Vec<FailedAttempt>, Duration, Instant);

/// Route an embeddings request.
pub(crate) async fn embed(
    route: &Arc<Route>,
    req: &EmbedRequest,
    caller: &Caller<'_>,
    class: Option<&str>,
    trace: Option<TraceContext>,
) -> Result<Embedded, Exhausted> {
    let allow = |d: &Deployment| caller.may_use(d, class);
    let policy = caller.restricts(class).then_some(&allow as Allow<'_>);
    match trace {
        Some(t) => relais_core::trace::scope(t, route.embed(req, policy)).await,
        None => route.embed(req, policy).await,
    }
}
