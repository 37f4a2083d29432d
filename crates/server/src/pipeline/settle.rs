//! Stage 4, settle: everything a request's end requires, exactly once, however it ends (an
//! answer, an error after routing, every deployment failed, or the client gone mid-stream).
//!
//! A [`Settlement`] is created at admission. A JSON answer finishes it before the response
//! leaves; a stream moves it into the response body, which finishes it after the last event
//! is encoded, or, when the client disconnects and the body is dropped, its `Drop` finishes it
//! as cancelled (status 499). Every path does the same steps in the same order:
//!
//! 1. the reservation is settled with the usage the upstream reported;
//! 2. the deployment's metric series counts the outcome, tokens and duration;
//! 3. the ledger rows are written (failed attempts, the serving attempt, the request);
//! 4. Plan B's tap, when the request has one, is told the outcome;
//! 5. the key's slot (the ticket) and then the in-flight count are released.
//!
//! This is pingora's `logging` phase: one end-of-request hook called from every exit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use relais_core::{Error, StreamEvent, Usage};
use relais_governance::Ticket;
use relais_router::{Exhausted, FailedAttempt, Route};

use crate::bill::{Bill, Served, cost_at};
use crate::clock::Instant;
use crate::live::Live;
use crate::metrics::Series;
use crate::otel::{RequestTrace, TraceEnd};
use crate::planb::{RequestTap, TapEnd, TapOutcome};
use crate::state::AppState;

/// How a request ended.
pub(crate) enum End<'e> {
    /// The answer reached the client whole.
    Answered,
    /// A deployment answered, then failed; `status` is what the client got (a stream's is the
    /// 200 already sent).
    Failed { error: &'e Error, status: u16 },
    /// Every deployment failed before a first event.
    Exhausted { ex: &'e Exhausted, status: u16 },
    /// The client went away before the end (nginx's 499, "client closed request").
    Canceled,
}

/// The deployment that produced the first event.
struct Serving {
    route: Arc<Route>,
    deployment: usize,
    series: Option<Arc<Series>>,
    ttft: Option<Duration>,
    /// When the serving attempt started.
    started: Instant,
}

/// What must happen once when the request ends; see the module doc.
pub(crate) struct Settlement {
    app: Arc<AppState>,
    live: Arc<Live>,
    start: Instant,
    ticket: Option<Ticket>,
    bill: Option<Box<Bill>>,
    tap: Option<Box<RequestTap>>,
    serving: Option<Serving>,
    failed: Vec<FailedAttempt>,
    usage: Option<Usage>,
    /// The request's spans in the making, when it is traced and sampled.
    trace: Option<Box<RequestTrace>>,
    /// A cache miss: its answer is recorded for the cache as it passes.
    recorder: Option<Box<crate::cache::Recorder>>,
    /// A cache hit: answered from this entry, nothing upstream (and whether budgets are
    /// charged what it saved).
    hit: Option<(Arc<crate::cache::Entry>, bool)>,
    done: bool,
}

impl Settlement {
    /// Counts the request in flight until it is settled.
    pub(crate) fn new(
        app: &Arc<AppState>,
        live: &Arc<Live>,
        start: Instant,
        ticket: Option<Ticket>,
        bill: Option<Box<Bill>>,
    ) -> Self {
        app.global.inflight.fetch_add(1, Ordering::Relaxed);
        Self {
            app: app.clone(),
            live: live.clone(),
            start,
            ticket,
            bill,
            tap: None,
            serving: None,
            failed: Vec::new(),
            usage: None,
            trace: None,
            recorder: None,
            hit: None,
            done: false,
        }
    }

    /// Record the answer for the response cache.
    pub(crate) fn set_recorder(&mut self, recorder: Box<crate::cache::Recorder>) {
        self.recorder = Some(recorder);
    }

    /// The answer comes from the response cache: settled with no tokens used, billed as a
    /// saving (category `cache`; `cache_charged` when `charge`: budgets pay what the answer
    /// cost when it was made), never traced or copied by Plan B.
    pub(crate) fn set_hit(&mut self, entry: Arc<crate::cache::Entry>, charge: bool) {
        self.tap = None;
        self.trace = None;
        self.hit = Some((entry, charge));
    }

    /// When the request arrived (Unix ms) if it is billed: Plan B copies only billed requests.
    pub(crate) fn billed_at_ms(&self) -> Option<i64> {
        self.bill.as_ref().map(|b| b.at_ms())
    }

    /// The classes of data the request carried: its declared class and those the guardrails
    /// found (names only), for the ledger.
    pub(crate) fn set_classes(&mut self, declared: Option<&str>, found: &[String]) {
        let Some(bill) = &mut self.bill else {
            return;
        };
        if declared.is_none() && found.is_empty() {
            return;
        }
        let mut all: Vec<&str> = declared.into_iter().collect();
        all.extend(
            found
                .iter()
                .map(String::as_str)
                .filter(|c| Some(*c) != declared),
        );
        bill.set_data_classes(all.join(","));
    }

    /// Attach Plan B's tap; a drilled request's ledger rows carry the drill's id.
    pub(crate) fn set_tap(&mut self, tap: Option<Box<RequestTap>>) {
        if let (Some(id), Some(bill)) = (tap.as_ref().and_then(|t| t.drill_id()), &mut self.bill) {
            bill.set_drill(id);
        }
        self.tap = tap;
    }

    /// Trace the request (see [`crate::otel`]).
    pub(crate) fn set_trace(&mut self, trace: Option<Box<RequestTrace>>) {
        self.trace = trace;
    }

    /// The deployment a drill treats as down for this request.
    pub(crate) fn down(&self) -> Option<&str> {
        self.tap.as_ref().and_then(|t| t.down())
    }

    /// Routing produced a first event from deployment `deployment` of `route` after `failed`
    /// attempts; `ttft` is the time to that event (streams and chat answers).
    pub(crate) fn served(
        &mut self,
        route: Arc<Route>,
        deployment: usize,
        failed: Vec<FailedAttempt>,
        ttft: Option<Duration>,
        started: Instant,
    ) {
        self.live.record_failed(&failed);
        let series = self.live.series_of(&route.name, deployment).cloned();
        if let (Some(s), Some(t)) = (&series, ttft) {
            s.ttft.observe(t);
        }
        self.failed = failed;
        self.serving = Some(Serving {
            route,
            deployment,
            series,
            ttft,
            started,
        });
    }

    /// `x-relais-deployment` and `x-relais-attempts`, on every routed answer.
    pub(crate) fn routed_headers(&self, resp: &mut Response) {
        let Some(s) = &self.serving else {
            return;
        };
        let h = resp.headers_mut();
        if let Some(Ok(v)) = s
            .route
            .deployments
            .get(s.deployment)
            .map(|d| HeaderValue::from_str(&d.id))
        {
            h.insert(HeaderName::from_static("x-relais-deployment"), v);
        }
        let attempts = self.failed.len() + 1;
        if let Ok(v) = HeaderValue::from_str(&attempts.to_string()) {
            h.insert(HeaderName::from_static("x-relais-attempts"), v);
        }
    }

    /// An event on its way to the client: usage is added up, Plan B's tap folds it. As cheap
    /// as a match when the request has no tap.
    #[inline]
    pub(crate) fn observe(&mut self, ev: &StreamEvent) {
        if let StreamEvent::Usage(u) = ev {
            self.add_usage(u);
        }
        if let Some(t) = &mut self.tap {
            t.observe(ev);
        }
        if let Some(t) = &mut self.trace {
            t.observe(ev);
        }
        if let Some(r) = &mut self.recorder {
            r.observe(ev);
        }
    }

    /// Usage the upstream reported outside the event stream (embeddings).
    pub(crate) fn add_usage(&mut self, u: &Usage) {
        match &mut self.usage {
            Some(x) => x.merge(u),
            None => self.usage = Some(*u),
        }
    }

    /// Settle the request (once; later calls do nothing).
    pub(crate) fn finish(&mut self, end: End<'_>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        if let Some((entry, charge)) = self.hit.take() {
            self.finish_hit(&entry, charge, &end, elapsed);
            return;
        }
        let deployment = self
            .serving
            .as_ref()
            .and_then(|s| s.route.deployments.get(s.deployment));
        let cost = match (&self.usage, deployment) {
            (Some(u), Some(d)) => cost_at(d, u),
            _ => 0,
        };
        // 1. The reservation.
        if let (Some(t), Some(u), Some(_)) = (&self.ticket, &self.usage, deployment) {
            t.settle(u.total_tokens(), cost);
            step("reservation settled");
        }
        // 1b. The response cache keeps a whole answer.
        if let (Some(r), End::Answered, Some(d)) = (self.recorder.take(), &end, deployment) {
            r.store(d, cost);
        }
        // 2. Metrics.
        step("metrics counted");
        match (&end, &self.serving) {
            (End::Exhausted { ex, .. }, _) => self.live.record_exhausted(ex, elapsed),
            (
                _,
                Some(Serving {
                    series: Some(s), ..
                }),
            ) => {
                match &end {
                    End::Answered => {
                        s.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    End::Failed { error, .. } => s.error(error.kind),
                    End::Canceled => {
                        s.canceled.fetch_add(1, Ordering::Relaxed);
                    }
                    End::Exhausted { .. } => {}
                }
                if let Some(u) = &self.usage {
                    s.tokens(u);
                }
                s.duration.observe(elapsed);
            }
            _ => {}
        }
        // 3. The ledger.
        if let Some(bill) = &mut self.bill {
            let served = self.serving.as_ref().map(|s| Served {
                route: s.route.clone(),
                deployment: s.deployment,
                usage: self.usage,
                ttft: s.ttft,
            });
            let (failed, served, status, error) = match &end {
                End::Answered => (&self.failed, served.as_ref(), 200, None),
                End::Failed { error, status } => (
                    &self.failed,
                    served.as_ref(),
                    *status,
                    Some((error.kind.as_str(), error.upstream_status)),
                ),
                End::Exhausted { ex, status } => (
                    &ex.failed,
                    None,
                    *status,
                    Some((ex.error.kind.as_str(), ex.error.upstream_status)),
                ),
                End::Canceled => (&self.failed, served.as_ref(), 499, Some(("canceled", None))),
            };
            bill.record(&self.live, failed, served, status, error);
            step("ledger rows written");
        }
        // 3b. The trace, when the request is sampled: spans built and queued, never waited on.
        if let Some(trace) = self.trace.take() {
            let (failed, status, error) = match &end {
                End::Answered => (&self.failed[..], 200, None),
                End::Failed { error, status } => (
                    &self.failed[..],
                    *status,
                    Some((error.kind.as_str(), error.message.as_str())),
                ),
                End::Exhausted { ex, status } => (
                    &ex.failed[..],
                    *status,
                    Some((ex.error.kind.as_str(), ex.error.message.as_str())),
                ),
                End::Canceled => (
                    &self.failed[..],
                    499,
                    Some(("canceled", "the client closed the request")),
                ),
            };
            let serving = self.serving.as_ref().and_then(|s| {
                s.route
                    .deployments
                    .get(s.deployment)
                    .map(|d| (d, s.started))
            });
            trace.finish(&TraceEnd {
                status,
                error,
                serving,
                failed,
                usage: self.usage.as_ref(),
                cost_pusd: cost,
                elapsed,
                live: &self.live,
            });
            step("spans queued");
        }
        // 4. Plan B.
        if let Some(tap) = self.tap.take() {
            let outcome = match &end {
                End::Answered => match deployment {
                    Some(d) => TapOutcome::Served(&d.id),
                    None => TapOutcome::Failed("internal"),
                },
                End::Failed { error, .. } => TapOutcome::Failed(error.kind.as_str()),
                End::Exhausted { ex, .. } => TapOutcome::Failed(ex.error.kind.as_str()),
                End::Canceled => TapOutcome::Canceled,
            };
            let ttft = self.serving.as_ref().and_then(|s| s.ttft);
            let end = TapEnd {
                outcome,
                latency: elapsed,
                ttft,
                cost_pusd: cost,
            };
            tap.finish(&self.app.planb, &self.live, end);
            step("plan b told");
        }
        // 5. The key's slot, then the in-flight count.
        if self.ticket.take().is_some() {
            step("ticket released");
        }
        self.app.global.inflight.fetch_sub(1, Ordering::Relaxed);
        step("in-flight released");
    }

    /// A hit ends: nothing was used upstream (the reservation settles at zero), and its
    /// ledger row says what it would have cost.
    fn finish_hit(
        &mut self,
        entry: &crate::cache::Entry,
        charge: bool,
        end: &End<'_>,
        elapsed: Duration,
    ) {
        let answered = matches!(end, End::Answered);
        if let Some(t) = &self.ticket {
            t.settle(
                0,
                if charge && answered {
                    entry.cost_pusd
                } else {
                    0
                },
            );
        }
        if let Some(bill) = &mut self.bill {
            let status = match end {
                End::Answered => 200,
                End::Failed { status, .. } | End::Exhausted { status, .. } => *status,
                End::Canceled => 499,
            };
            bill.record_hit(
                entry,
                self.usage.as_ref(),
                (status, charge && answered),
                elapsed,
            );
        }
        self.ticket.take();
        self.app.global.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
thread_local! {
    /// The steps of [`Settlement::finish`] as they ran on this thread, for the order test.
    static STEPS: std::cell::RefCell<Vec<&'static str>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks a step of [`Settlement::finish`]; compiled away outside tests.
#[inline]
fn step(_name: &'static str) {
    #[cfg(test)]
    STEPS.with(|s| s.borrow_mut().push(_name));
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.finish(End::Canceled);
    }
}

#[cfg(test)]
mod tests {
    //! The settlement's steps run in one order whichever way a request ends (issue 18: the
    //! JSON path used to release the key's slot and the in-flight count before writing the
    //! ledger, the stream path after it).

    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;
    use crate::testing::{self, TempDir};
    use relais_governance::{Holder, Limits};

    const ORDER: [&str; 5] = [
        "reservation settled",
        "metrics counted",
        "ledger rows written",
        "ticket released",
        "in-flight released",
    ];

    const CONFIG: &str = "[providers.up]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n\
        [routes.r]\ndeployments = [{ provider = \"up\", model = \"m\" }]\n\n\
        [prices.m]\ninput = 1.0\noutput = 2.0\n";

    /// A reservation under a key that may run one request at once.
    async fn ticket(live: &Live) -> Result<Option<Ticket>, Error> {
        let limits = Limits {
            max_concurrent: Some(1),
            ..Limits::default()
        };
        let subjects = [(
            "key_t",
            Holder::Key {
                name: "t",
                prefix: "rk-t",
            },
            limits,
        )];
        live.runtime.rate_limits.admit(&subjects, 100, 0).await
    }

    /// A settlement as admission opens it; `served`: routing found a deployment, which streamed
    /// usage.
    fn open(
        app: &Arc<AppState>,
        live: &Arc<Live>,
        ticket: Option<Ticket>,
        id: &str,
        served: bool,
    ) -> Settlement {
        let bill = Bill::start(
            live,
            id,
            crate::caller::Payer::default(),
            "r",
            true,
            Instant::now(),
        );
        let mut s = Settlement::new(app, live, Instant::now(), ticket, bill);
        if !served {
            return s;
        }
        let route = live.entries["r"].route.clone();
        s.served(
            route,
            0,
            Vec::new(),
            Some(Duration::from_millis(1)),
            Instant::now(),
        );
        s.observe(&StreamEvent::Usage(Usage {
            input_tokens: 10,
            output_tokens: 5,
            ..Usage::default()
        }));
        s
    }

    #[tokio::test]
    async fn issue18_every_end_settles_in_the_same_order_once() {
        let dir = TempDir::new("settle");
        let app = testing::governed(CONFIG, &dir).await;
        let live = app.live();
        let error = Error::internal("boom");
        let ex = Exhausted {
            error: Error::internal("all down"),
            failed: Vec::new(),
            upstream_wait: Duration::ZERO,
        };
        let expected = ORDER.to_vec();
        for (i, how) in ["answered", "failed", "exhausted", "dropped"]
            .into_iter()
            .enumerate()
        {
            STEPS.with(|s| s.borrow_mut().clear());
            // The previous request gave the key's one slot back.
            let t = ticket(&live).await.unwrap();
            assert!(t.is_some(), "{how}: the key has a concurrency limit");
            let mut s = open(&app, &live, t, &format!("req-{i}"), how != "exhausted");
            // The slot is taken while the request runs.
            assert!(ticket(&live).await.is_err(), "{how}");
            assert_eq!(app.global.inflight.load(Ordering::Relaxed), 1);
            match how {
                "answered" => s.finish(End::Answered),
                "failed" => s.finish(End::Failed {
                    error: &error,
                    status: 200,
                }),
                "exhausted" => s.finish(End::Exhausted {
                    ex: &ex,
                    status: 500,
                }),
                _ => drop(s),
            }
            let steps = STEPS.with(|s| s.borrow().clone());
            let mut want = expected.clone();
            if how == "exhausted" {
                // Served by nobody: nothing to settle the reservation with (it is freed).
                want.retain(|s| *s != "reservation settled");
            }
            assert_eq!(steps, want, "{how}");
            assert_eq!(app.global.inflight.load(Ordering::Relaxed), 0, "{how}");
        }
        // Each end wrote its request's rows once, with the status the client got.
        let ledger = live.runtime.ledger.clone().unwrap();
        ledger.flush().await.unwrap();
        for (i, status) in [200, 200, 500, 499].into_iter().enumerate() {
            let rows = ledger.store().rows_of(&format!("req-{i}")).await.unwrap();
            let request = rows.iter().find(|r| r.attempt == 0).unwrap();
            assert_eq!(request.status, status, "req-{i}: {rows:?}");
            let attempts = if status == 500 { 1 } else { 2 };
            assert_eq!(rows.len(), attempts, "req-{i}: {rows:?}");
        }
    }
}
