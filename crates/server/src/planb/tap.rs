//! [`RequestTap`]: the only thing the pipeline knows of Plan B. [`PlanB::tap`] at admission
//! returns `None` for a request that is neither sampled for shadowing nor in a drill (one map
//! lookup, one random draw and one atomic load; no allocation). Otherwise the tap rides in the
//! request's settlement: it names the deployment a drill treats as down, folds the answer of a
//! sampled request as it is served, and when the request ends counts it in its drill and
//! queues the shadow copies.

use std::sync::Arc;
use std::time::Duration;

use relais_core::{ChatRequest, Collector, StreamEvent};
use relais_router::Deployment;

use super::PlanB;
use super::drills::InDrill;
use super::shadow::{Job, Sampled};
use crate::caller::{OwnedPayer, Payer};
use crate::clock::us;
use crate::live::Live;

/// What Plan B sees of a request at admission.
pub(crate) struct Admission<'a> {
    pub route: &'a str,
    pub request_id: &'a str,
    /// When the request arrived (Unix ms), if it is billed: only billed requests are copied.
    pub billed_at_ms: Option<i64>,
    pub payer: Payer<'a>,
}

/// A live request sampled for shadowing: what its copies need, and its answer as it is folded.
struct ShadowTap {
    sampled: Sampled,
    req: ChatRequest,
    request_id: String,
    at_ms: i64,
    payer: OwnedPayer,
    collector: Collector,
}

/// A request's part in Plan B; see the module doc.
pub(crate) struct RequestTap {
    shadow: Option<ShadowTap>,
    drill: Option<InDrill>,
}

/// How the request ended, as Plan B counts it.
pub(crate) enum TapOutcome<'a> {
    /// Answered whole by this deployment (id).
    Served(&'a str),
    /// Failed, with this error class.
    Failed(&'a str),
    /// The client went away: counted in a drill as an error, never copied.
    Canceled,
}

/// The end of a tapped request.
pub(crate) struct TapEnd<'a> {
    pub outcome: TapOutcome<'a>,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub cost_pusd: u64,
}

impl PlanB {
    /// The request's tap, or `None` when Plan B has nothing to do with it. `allow` is the
    /// request's own vendor and data-class policy: a copy goes nowhere the request could not.
    /// A sampled request is folded, so it is no longer passed through byte for byte.
    pub(crate) fn tap(
        &self,
        live: &Live,
        req: &mut ChatRequest,
        seen: &Admission<'_>,
        allow: impl Fn(&Deployment) -> bool,
    ) -> Option<Box<RequestTap>> {
        let sampled = match (live.runtime.shadows.get(seen.route), seen.billed_at_ms) {
            (Some(shadow), Some(at_ms)) => self.shadower.sample(shadow, allow).map(|s| (s, at_ms)),
            _ => None,
        };
        let drill = self.drills.join(seen.route);
        if sampled.is_none() && drill.is_none() {
            // The common case returns here, having built nothing.
            return None;
        }
        let shadow = sampled.map(|(sampled, at_ms)| {
            req.passthrough = false;
            ShadowTap {
                sampled,
                req: req.clone(),
                request_id: seen.request_id.to_owned(),
                at_ms,
                payer: seen.payer.to_owned(),
                collector: Collector::new(),
            }
        });
        Some(Box::new(RequestTap { shadow, drill }))
    }
}

impl RequestTap {
    /// The deployment this request treats as down, when it is in a drill's drilled share.
    pub(crate) fn down(&self) -> Option<&str> {
        self.drill
            .as_ref()
            .filter(|x| x.drilled)
            .map(|x| x.drill.deployment.as_str())
    }

    /// The drill whose drilled share this request is in (its ledger rows carry the id).
    pub(crate) fn drill_id(&self) -> Option<&str> {
        self.drill
            .as_ref()
            .filter(|x| x.drilled)
            .map(|x| x.drill.id.as_str())
    }

    /// An event on its way to the client: folded when the request is copied.
    pub(crate) fn observe(&mut self, ev: &StreamEvent) {
        if let Some(s) = &mut self.shadow {
            // A fold that fails (events out of order) leaves the stream as it is; the
            // comparison then sees what was folded.
            let _ = s.collector.push(ev);
        }
    }

    /// The request ended: count it in its drill, queue its shadow copies.
    pub(crate) fn finish(self, planb: &PlanB, live: &Arc<Live>, end: TapEnd<'_>) {
        if let Some(x) = &self.drill {
            let served = match end.outcome {
                TapOutcome::Served(id) => Some(id),
                _ => None,
            };
            x.outcome(served, end.latency);
        }
        let Some(s) = self.shadow else {
            return;
        };
        let result = match end.outcome {
            TapOutcome::Served(_) => Ok(s.collector.finish()),
            TapOutcome::Failed(class) => Err(class.to_owned()),
            TapOutcome::Canceled => return,
        };
        let Some(ledger) = live.runtime.ledger.clone() else {
            return;
        };
        planb.shadower.submit(Job {
            sampled: s.sampled,
            req: s.req,
            live: relais_planb::Outcome {
                result,
                latency_us: us(end.latency),
                ttft_us: end.ttft.map(us),
                cost_pusd: end.cost_pusd,
            },
            request_id: s.request_id,
            at_ms: s.at_ms,
            payer: s.payer,
            ledger,
            config: live.clone(),
        });
    }
}
