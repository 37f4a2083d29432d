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

/// What a request carries, for the deployments it may go to: its declared data class, the
/// classes the guardrails found whose values reach the vendor (a deployment that lists the
/// classes it accepts must list these too), and the classes only deployments that list them
/// may receive (`route`).
#[derive(Clone, Copy, Default)]
pub(crate) struct Carried<'a> {
    pub(crate) class: Option<&'a str>,
    pub(crate) sent: &'a [String],
    pub(crate) stay: &'a [String],
}

impl Carried<'_> {
    /// Whether `caller` may send this request to `d`.
    pub(crate) fn allows(&self, caller: &Caller<'_>, d: &Deployment) -> bool {
        caller.may_use(d, self.class)
            && self.sent.iter().all(|c| d.accepts_class(Some(c)))
            && self
                .stay
                .iter()
                .all(|c| d.data_classes.as_ref().is_some_and(|l| l.contains(c)))
    }

    /// Whether a policy applies at all.
    pub(crate) fn restricts(&self, caller: &Caller<'_>) -> bool {
        caller.restricts(self.class) || !self.sent.is_empty() || !self.stay.is_empty()
    }
}

/// Route a chat request. `down` is the deployment a drill treats as down for this request.
pub(crate) async fn chat(
    route: &Arc<Route>,
    req: &ChatRequest,
    caller: &Caller<'_>,
    carried: Carried<'_>,
    down: Option<&str>,
    trace: Option<TraceContext>,
) -> Result<Routed, Exhausted> {
    let allow = |d: &Deployment| carried.allows(caller, d) && down != Some(d.id.as_str());
    let restricted = carried.restricts(caller) || down.is_some();
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
