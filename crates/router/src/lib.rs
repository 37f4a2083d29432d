//! Routing: from a public model name (a route) to the deployment that answers it, and what to
//! do when that deployment fails.
//!
//! Per request, [`Route::chat`] picks a deployment by the route's [`Strategy`] among those that
//! can serve the request (capabilities) and may take it now (breaker, vendor cool-down,
//! configured limits), and tries it. An error another deployment can cure (connect, timeout,
//! 5xx, overload, rate limit, garbled output) moves on to the next pick, immediately when there
//! is another deployment and after a jittered backoff when only the same one is left; every
//! retry is paid from the route's [`RetryBudget`]. All of it happens before the first event of a
//! response exists: that is the commit point, after which a retry would duplicate output the
//! client may already hold, so a later failure ends the stream with an error instead. A request
//! whose prompt is too long, or that a content filter refused, can move to a configured
//! fallback route.
//!
//! This crate must never depend on the server or on any wire format.

mod attempt;
mod budget;
mod health;
mod window;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use relais_core::{
    Capabilities, ChatRequest, EmbedRequest, EmbedResponse, Error, ErrorKind, EventStream, Price,
    Provider, ResponseFormat, Retry, Side, StreamEvent,
};
use tokio::time::Instant;

use attempt::{AttemptGuard, AttemptStream};
pub use budget::{BudgetPolicy, RetryBudget};
pub use health::{
    Availability, BreakerPolicy, DeploymentLimits, Health, HealthSnapshot, LatencyPolicy, Verdict,
};

/// What a route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Chat,
    Embeddings,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embeddings => "embeddings",
        }
    }
}

/// How a route chooses among the deployments that can take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The first in the configured order; the others only when it cannot answer.
    Failover,
    /// At random, in proportion to each deployment's weight.
    Weighted,
    /// Power of two choices over a peak-EWMA estimate of time to first token times the
    /// requests in flight (linkerd's balancer): cheap, and it avoids herding onto one.
    LeastLatency,
    /// The lowest estimated price for this request, from the price table.
    LeastCost,
    /// The fewest requests in flight.
    LeastBusy,
}

impl Strategy {
    pub const NAMES: &'static str = "failover, weighted, least_latency, least_cost, least_busy";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "failover" => Self::Failover,
            "weighted" => Self::Weighted,
            "least_latency" => Self::LeastLatency,
            "least_cost" => Self::LeastCost,
            "least_busy" => Self::LeastBusy,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failover => "failover",
            Self::Weighted => "weighted",
            Self::LeastLatency => "least_latency",
            Self::LeastCost => "least_cost",
            Self::LeastBusy => "least_busy",
        }
    }
}

/// One place a route can send a request: a provider and its name for the model. A clone shares
/// the provider and the health record.
#[derive(Clone)]
pub struct Deployment {
    /// `provider/model`, unique within a route; used in headers, logs and metrics.
    pub id: String,
    pub provider_name: String,
    pub provider: Arc<dyn Provider>,
    pub model: String,
    /// Share of traffic under [`Strategy::Weighted`].
    pub weight: u32,
    pub capabilities: Capabilities,
    pub limits: DeploymentLimits,
    /// For [`Strategy::LeastCost`]; a deployment without one sorts last.
    pub price: Option<Price>,
    pub health: Arc<Health>,
    /// Who stands behind it (`openai`, `anthropic`, `local`, ...), for key and team policies
    /// and the ledger.
    pub vendor: String,
    /// Classes of data it may receive; any when `None`.
    pub data_classes: Option<Vec<String>>,
}

impl Deployment {
    /// Whether a request of data class `class` (none: unclassified) may be sent here.
    pub fn accepts_class(&self, class: Option<&str>) -> bool {
        match (class, &self.data_classes) {
            (Some(c), Some(allowed)) => allowed.iter().any(|a| a == c),
            _ => true,
        }
    }
}

/// Which deployments a request may go to, beside what it needs: the caller's policy (allowed
/// vendors, the data class it carries). Checked before anything else, fallback routes included.
pub type Allow<'a> = &'a (dyn Fn(&Deployment) -> bool + Sync);

/// Time limits. Connecting is bounded by the shared upstream client's connect timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// Per attempt: until the first event, after which the next deployment is tried.
    pub first_event: Duration,
    /// Per attempt, after the first event: longest silence between two events.
    pub idle: Option<Duration>,
    /// Per attempt: the whole response.
    pub attempt: Option<Duration>,
    /// The whole request, all attempts and backoffs together.
    pub request: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            first_event: Duration::from_secs(120),
            idle: Some(Duration::from_secs(120)),
            attempt: None,
            request: None,
        }
    }
}

/// How many attempts a request gets and how long to wait before trying the same deployment
/// again (a different one is tried at once).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// Every deployment once, plus one more try.
    pub fn for_deployments(n: usize) -> Self {
        Self {
            max_attempts: u32::try_from(n).unwrap_or(u32::MAX).saturating_add(1),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }

    /// Full jitter (AWS's "exponential backoff and jitter"): uniform in [0, base·2ⁿ], capped.
    fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(retry.min(16)))
            .min(self.backoff_max);
        cap.mul_f64(fastrand::f64())
    }
}

/// Other routes to hand a request to when this one cannot serve it for a reason another route
/// may not share.
#[derive(Default)]
pub struct Fallbacks {
    /// The prompt does not fit: a route with a bigger window.
    pub context_window: Option<Arc<Route>>,
    /// A content filter refused it: a route with another policy.
    pub content_filter: Option<Arc<Route>>,
}

/// A public model name and the deployments behind it.
pub struct Route {
    pub name: String,
    pub kind: RouteKind,
    pub deployments: Vec<Deployment>,
    pub strategy: Strategy,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub budget: RetryBudget,
    pub breaker: BreakerPolicy,
    pub latency: LatencyPolicy,
    pub fallbacks: Fallbacks,
}

/// One failed attempt, for metrics and logs.
#[derive(Debug, Clone)]
pub struct FailedAttempt {
    /// The route the deployment belongs to (a fallback route's name after a fallback).
    pub route: String,
    pub deployment: usize,
    pub error: Error,
    /// When the attempt started, and how long it took to fail.
    pub started: Instant,
    pub elapsed: Duration,
}

/// A committed response: the route and deployment that produced its first event, and the
/// stream (first event included).
pub struct Routed {
    pub route: Arc<Route>,
    pub deployment: usize,
    pub stream: EventStream,
    pub failed: Vec<FailedAttempt>,
    /// Time spent waiting on upstreams until the first event, all attempts included.
    pub upstream_wait: Duration,
    /// When the serving attempt started.
    pub attempt_started: Instant,
}

/// The request failed on every deployment it was allowed to try.
pub struct Exhausted {
    pub error: Error,
    pub failed: Vec<FailedAttempt>,
    pub upstream_wait: Duration,
}

/// Whether an error before the commit point should move on to another attempt. Never on a
/// client error: the same request would fail the same way anywhere.
pub fn should_fail_over(err: &Error) -> bool {
    err.is_retryable()
        && matches!(
            err.kind,
            ErrorKind::Connect
                | ErrorKind::Timeout
                | ErrorKind::Server
                | ErrorKind::Overloaded
                | ErrorKind::RateLimited
                | ErrorKind::Protocol
        )
}

/// What a request needs from a deployment. The prompt estimate is computed only if some check
/// needs it (it walks the whole conversation).
pub struct Needs<'a> {
    req: Option<&'a ChatRequest>,
    allow: Option<Allow<'a>>,
    tools: bool,
    images: bool,
    json_schema: bool,
    max_output: Option<u32>,
    prompt: OnceLock<u64>,
}

impl<'a> Needs<'a> {
    pub fn of(req: &'a ChatRequest) -> Self {
        Self {
            req: Some(req),
            allow: None,
            tools: !req.tools.is_empty(),
            images: req.has_images(),
            json_schema: matches!(req.response_format, Some(ResponseFormat::JsonSchema { .. })),
            max_output: req.max_output_tokens,
            prompt: OnceLock::new(),
        }
    }

    fn none() -> Self {
        Self {
            req: None,
            allow: None,
            tools: false,
            images: false,
            json_schema: false,
            max_output: None,
            prompt: OnceLock::from(0),
        }
    }

    /// Only deployments `allow` accepts.
    pub fn with_allow(mut self, allow: Option<Allow<'a>>) -> Self {
        self.allow = allow;
        self
    }

    fn allows(&self, d: &Deployment) -> bool {
        self.allow.is_none_or(|a| a(d))
    }

    /// Estimated prompt tokens.
    pub fn prompt_tokens(&self) -> u64 {
        *self
            .prompt
            .get_or_init(|| self.req.map_or(0, ChatRequest::estimate_input_tokens))
    }

    /// Tokens the request may use: its prompt plus its output cap.
    fn tokens(&self) -> u64 {
        self.prompt_tokens() + u64::from(self.max_output.unwrap_or(0))
    }

    /// What `caps` lacks for this request, if anything.
    pub fn lack(&self, caps: &Capabilities) -> Option<Lack> {
        if self.tools && !caps.tools {
            return Some(Lack::Tools);
        }
        if self.images && !caps.images {
            return Some(Lack::Images);
        }
        if self.json_schema && !caps.json_schema {
            return Some(Lack::JsonSchema);
        }
        if let (Some(want), Some(max)) = (self.max_output, caps.max_output_tokens) {
            if want > max {
                return Some(Lack::MaxOutput);
            }
        }
        if let Some(window) = caps.context_window {
            if self.tokens() > u64::from(window) {
                return Some(Lack::ContextWindow);
            }
        }
        None
    }
}

/// A capability a deployment lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lack {
    Tools,
    Images,
    JsonSchema,
    MaxOutput,
    ContextWindow,
}

impl Lack {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Images => "images",
            Self::JsonSchema => "JSON schema output",
            Self::MaxOutput => "the requested max output tokens",
            Self::ContextWindow => "a context window this long",
        }
    }
}

/// The deployment chosen for one attempt.
struct Pick {
    index: usize,
    probe: bool,
}

/// Requests handed from route to route by fallbacks, at most: a guard against long chains.
const MAX_FALLBACK_HOPS: usize = 4;

impl Route {
    /// The primary deployment: the first configured (after promotions). A built route always
    /// has one; `None` only for a route made by hand with none.
    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments.first()
    }

    /// Run a chat request: pick, attempt, fail over until a deployment produces a first event,
    /// then follow a fallback route if the error calls for one.
    pub async fn chat(self: &Arc<Self>, req: &ChatRequest) -> Result<Routed, Exhausted> {
        self.chat_within(req, None).await
    }

    /// [`Route::chat`] over the deployments `allow` accepts (a key's policy).
    pub async fn chat_within(
        self: &Arc<Self>,
        req: &ChatRequest,
        allow: Option<Allow<'_>>,
    ) -> Result<Routed, Exhausted> {
        let start = Instant::now();
        let deadline = self.timeouts.request.map(|d| start + d);
        let mut failed = Vec::new();
        let mut route = self.clone();
        let mut hops = 0;
        loop {
            match route.chat_here(req, allow, deadline, &mut failed).await {
                Ok((deployment, stream, attempt_started)) => {
                    return Ok(Routed {
                        route,
                        deployment,
                        stream,
                        failed,
                        upstream_wait: start.elapsed(),
                        attempt_started,
                    });
                }
                Err(error) => {
                    let next = match error.kind {
                        ErrorKind::ContextWindowExceeded => route.fallbacks.context_window.clone(),
                        ErrorKind::ContentFiltered => route.fallbacks.content_filter.clone(),
                        _ => None,
                    };
                    match next {
                        Some(next) if hops < MAX_FALLBACK_HOPS => {
                            tracing::debug!(
                                route = %route.name,
                                to = %next.name,
                                class = error.kind.as_str(),
                                "falling back to another route"
                            );
                            hops += 1;
                            route = next;
                        }
                        _ => {
                            return Err(Exhausted {
                                error,
                                failed,
                                upstream_wait: start.elapsed(),
                            });
                        }
                    }
                }
            }
        }
    }

    /// The attempts of one route.
    async fn chat_here(
        self: &Arc<Self>,
        req: &ChatRequest,
        allow: Option<Allow<'_>>,
        deadline: Option<Instant>,
        failed: &mut Vec<FailedAttempt>,
    ) -> Result<(usize, EventStream, Instant), Error> {
        let needs = Needs::of(req).with_allow(allow);
        let limits = self.attempt_limits(deadline);
        self.attempts(&needs, deadline, failed, |i, guard| {
            let d = &self.deployments[i];
            let limit = limits(Instant::now());
            async move {
                let started = Instant::now();
                let stream = tokio::time::timeout(limit, first_event(d, req))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::upstream(
                            ErrorKind::Timeout,
                            format!("no response from upstream within {} ms", limit.as_millis()),
                        ))
                    })?;
                let mut guard = guard;
                self.record_success(i, started);
                guard.settle();
                let attempt_deadline = match (self.timeouts.attempt, deadline) {
                    (Some(a), Some(r)) => Some((a.min(r - started), (started + a).min(r))),
                    (Some(a), None) => Some((a, started + a)),
                    (None, Some(r)) => Some((r.saturating_duration_since(started), r)),
                    (None, None) => None,
                };
                let watched =
                    AttemptStream::new(stream, guard, self.timeouts.idle, attempt_deadline);
                Ok(Box::pin(watched) as EventStream)
            }
        })
        .await
    }

    /// Run an embeddings request with the same selection, failover and budget rules.
    pub async fn embed(
        self: &Arc<Self>,
        req: &EmbedRequest,
        allow: Option<Allow<'_>>,
    ) -> Result<(usize, EmbedResponse, Vec<FailedAttempt>, Duration, Instant), Exhausted> {
        let start = Instant::now();
        let deadline = self.timeouts.request.map(|d| start + d);
        let limits = self.attempt_limits(deadline);
        let mut failed = Vec::new();
        let needs = Needs::none().with_allow(allow);
        let outcome = self
            .attempts(&needs, deadline, &mut failed, |i, guard| {
                let d = &self.deployments[i];
                let limit = limits(Instant::now());
                async move {
                    let mut guard = guard;
                    let started = Instant::now();
                    let resp = tokio::time::timeout(limit, d.provider.embed(&d.model, req))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::upstream(
                                ErrorKind::Timeout,
                                format!(
                                    "no response from upstream within {} ms",
                                    limit.as_millis()
                                ),
                            ))
                        })?;
                    self.record_success(i, started);
                    guard.settle();
                    drop(guard);
                    Ok(resp)
                }
            })
            .await;
        match outcome {
            Ok((i, resp, started)) => Ok((i, resp, failed, start.elapsed(), started)),
            Err(error) => Err(Exhausted {
                error,
                failed,
                upstream_wait: start.elapsed(),
            }),
        }
    }

    /// Time allowed to the next attempt's first event, given the request deadline.
    fn attempt_limits(&self, deadline: Option<Instant>) -> impl Fn(Instant) -> Duration + use<> {
        let first = self.timeouts.first_event;
        move |now| match deadline {
            Some(d) => first.min(d.saturating_duration_since(now)),
            None => first,
        }
    }

    /// The attempt loop: pick, run, and on a curable failure pick again, paying each retry
    /// from the budget. `run` gets the deployment's index and the guard that holds its place.
    async fn attempts<T, F, Fut>(
        self: &Arc<Self>,
        needs: &Needs<'_>,
        deadline: Option<Instant>,
        failed: &mut Vec<FailedAttempt>,
        mut run: F,
    ) -> Result<(usize, T, Instant), Error>
    where
        F: FnMut(usize, AttemptGuard) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut tried: u64 = 0;
        let mut last: Option<usize> = None;
        let mut attempt: u32 = 0;
        self.budget.deposit(Instant::now());
        loop {
            let now = Instant::now();
            let pick = match self.pick(needs, tried, now) {
                Ok(p) => p,
                Err(e) => return Err(failed.last().map_or(e, |f| f.error.clone())),
            };
            if attempt > 0 {
                if !self.budget.withdraw(now) {
                    tracing::debug!(route = %self.name, "retry budget spent; not retrying");
                    return Err(last_error(failed));
                }
                if tried & bit(pick.index) != 0 {
                    // Only a deployment already tried is left: back off before trying it again.
                    let wait = self.retry.backoff(attempt - 1);
                    if let Some(d) = deadline {
                        if now + wait >= d {
                            return Err(last_error(failed));
                        }
                    }
                    tokio::time::sleep(wait).await;
                }
            }
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return Err(failed.last().map_or_else(
                        || {
                            Error::upstream(
                                ErrorKind::Timeout,
                                "the request deadline passed before an upstream answered",
                            )
                        },
                        |f| f.error.clone(),
                    ));
                }
            }
            if let Some(prev) = last.filter(|p| *p != pick.index) {
                self.deployments[prev]
                    .health
                    .failovers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let d = &self.deployments[pick.index];
            let tokens = if d.limits.tpm.is_some() {
                needs.tokens()
            } else {
                0
            };
            d.health.begin(Instant::now(), tokens, attempt > 0);
            let guard = AttemptGuard::new(self.clone(), pick.index, pick.probe);
            let started = Instant::now();
            // Upstream calls made by this attempt carry its span in their `traceparent`.
            relais_core::trace::set_attempt(u32::try_from(failed.len()).unwrap_or(u32::MAX));
            let outcome = run(pick.index, guard).await;
            match outcome {
                Ok(value) => return Ok((pick.index, value, started)),
                Err(error) => {
                    let now = Instant::now();
                    self.record_failure(pick.index, &error, now);
                    attempt += 1;
                    tried |= bit(pick.index);
                    last = Some(pick.index);
                    let again = should_fail_over(&error) && attempt < self.retry.max_attempts;
                    tracing::debug!(
                        route = %self.name,
                        deployment = %d.id,
                        class = error.kind.as_str(),
                        fail_over = again,
                        "attempt failed"
                    );
                    failed.push(FailedAttempt {
                        route: self.name.clone(),
                        deployment: pick.index,
                        error,
                        started,
                        elapsed: now.saturating_duration_since(started),
                    });
                    if !again {
                        return Err(last_error(failed));
                    }
                }
            }
        }
    }

    /// Choose the deployment for the next attempt. Untried deployments come first; a half-open
    /// one gets its probe; when every deployment the request may use is ejected, the one back
    /// soonest is tried anyway (better a likely failure than a certain one); when they are all
    /// cooling down or at their limits, the request is refused with the time to wait.
    fn pick(&self, needs: &Needs<'_>, tried: u64, now: Instant) -> Result<Pick, Error> {
        let n = self.deployments.len().min(64);
        let mut capable = false;
        let mut permitted = false;
        let mut lack = None;
        let mut fresh: u64 = 0;
        let mut again: u64 = 0;
        let mut soonest_ejected: Option<(Instant, usize)> = None;
        let mut soonest_free: Option<Instant> = None;
        for (i, d) in self.deployments.iter().enumerate().take(n) {
            if !needs.allows(d) {
                continue;
            }
            permitted = true;
            if let Some(l) = needs.lack(&d.capabilities) {
                lack.get_or_insert(l);
                continue;
            }
            capable = true;
            let tokens = || needs.tokens();
            match d.health.availability(now, &d.limits, tokens) {
                Availability::Probe => {
                    if tried & bit(i) == 0 && d.health.try_probe(now) {
                        return Ok(Pick {
                            index: i,
                            probe: true,
                        });
                    }
                }
                Availability::Ready => {
                    if tried & bit(i) == 0 {
                        fresh |= bit(i);
                    } else {
                        again |= bit(i);
                    }
                }
                Availability::Probing => {}
                Availability::Ejected { until } => {
                    if soonest_ejected.is_none_or(|(u, _)| until < u) {
                        soonest_ejected = Some((until, i));
                    }
                }
                Availability::Cooling { until } | Availability::AtLimit { until } => {
                    soonest_free = Some(soonest_free.map_or(until, |u| u.min(until)));
                }
            }
        }
        if !permitted {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                Side::Client,
                format!(
                    "the policy (the key's allowed vendors or data class, or the route's guardrails for data found in the request) leaves no deployment of model '{}' to use",
                    self.name
                ),
            ));
        }
        if !capable {
            // The message names the route, never its deployments: which vendors stand behind
            // a model name is the operator's business, not the client's.
            let lack = lack.unwrap_or(Lack::Tools);
            let msg = format!(
                "no deployment of model '{}' supports {}",
                self.name,
                lack.as_str()
            );
            return Err(if lack == Lack::ContextWindow {
                Error::new(ErrorKind::ContextWindowExceeded, Side::Client, msg)
                    .with_code("context_length_exceeded")
            } else {
                Error::unsupported(msg)
            });
        }
        let set = if fresh != 0 { fresh } else { again };
        if set != 0 {
            return Ok(Pick {
                index: self.choose(set, needs, now),
                probe: false,
            });
        }
        if let Some(until) = soonest_free {
            let wait = until.saturating_duration_since(now);
            return Err(Error::new(
                ErrorKind::RateLimited,
                Side::Gateway,
                format!(
                    "every deployment of model '{}' is rate limited or at its limit; retry in {} ms",
                    self.name,
                    wait.as_millis()
                ),
            )
            .with_retry(Retry::After(wait.max(Duration::from_millis(1)))));
        }
        match soonest_ejected {
            Some((_, i)) if tried & bit(i) == 0 => Ok(Pick {
                index: i,
                probe: false,
            }),
            _ => Err(Error::new(
                ErrorKind::Unavailable,
                Side::Gateway,
                format!(
                    "no deployment of model '{}' can take the request now",
                    self.name
                ),
            )),
        }
    }

    /// Apply the strategy to a non-empty set of deployments (a bit mask).
    fn choose(&self, set: u64, needs: &Needs<'_>, now: Instant) -> usize {
        let members = || (0..self.deployments.len().min(64)).filter(move |i| set & bit(*i) != 0);
        let first = members().next().unwrap_or(0);
        if set.count_ones() == 1 {
            return first;
        }
        match self.strategy {
            Strategy::Failover => first,
            Strategy::Weighted => {
                let total: u64 = members()
                    .map(|i| u64::from(self.deployments[i].weight))
                    .sum();
                if total == 0 {
                    return first;
                }
                let mut ticket = fastrand::u64(0..total);
                for i in members() {
                    let w = u64::from(self.deployments[i].weight);
                    if ticket < w {
                        return i;
                    }
                    ticket -= w;
                }
                first
            }
            Strategy::LeastLatency => {
                let count = set.count_ones() as usize;
                let nth = |k: usize| members().nth(k).unwrap_or(first);
                let a = nth(fastrand::usize(0..count));
                let mut b = nth(fastrand::usize(0..count - 1));
                if b == a {
                    b = nth(count - 1);
                }
                let cost = |i: usize| {
                    let d = &self.deployments[i];
                    d.health.latency(now, &self.latency) * f64::from(d.health.inflight() + 1)
                };
                if cost(b) < cost(a) { b } else { a }
            }
            Strategy::LeastCost => {
                let out = u64::from(needs.max_output.unwrap_or(DEFAULT_OUTPUT_ESTIMATE));
                let prompt = needs.prompt_tokens();
                members()
                    .min_by_key(|i| {
                        self.deployments[*i].price.map_or(u128::MAX, |p| {
                            u128::from(prompt) * u128::from(p.input)
                                + u128::from(out) * u128::from(p.output)
                        })
                    })
                    .unwrap_or(first)
            }
            Strategy::LeastBusy => {
                // Ties go to a random one among the least busy (reservoir sampling, no
                // allocation), so idle deployments share.
                let mut best = first;
                let mut min = u32::MAX;
                let mut ties = 0u32;
                for i in members() {
                    let n = self.deployments[i].health.inflight();
                    if n < min {
                        (best, min, ties) = (i, n, 1);
                    } else if n == min {
                        ties += 1;
                        if fastrand::u32(0..ties) == 0 {
                            best = i;
                        }
                    }
                }
                best
            }
        }
    }

    fn record_success(&self, index: usize, started: Instant) {
        let now = Instant::now();
        self.deployments[index].health.success(
            now,
            now.saturating_duration_since(started),
            &self.latency,
        );
    }

    /// Tell a deployment's breaker about a failure; eject it if the breaker says so and the
    /// route can spare it.
    pub(crate) fn record_failure(&self, index: usize, err: &Error, now: Instant) {
        let d = &self.deployments[index];
        if let Verdict::Failure { eject: true } = d.health.failure(now, err, &self.breaker) {
            let ejected = self
                .deployments
                .iter()
                .enumerate()
                .filter(|(i, x)| *i != index && x.health.is_ejected())
                .count();
            let max = (self.breaker.max_ejected_share * self.deployments.len() as f64).floor();
            if (ejected + 1) as f64 <= max || d.health.is_ejected() {
                let wait = d.health.eject(now, &self.breaker);
                tracing::warn!(
                    route = %self.name,
                    deployment = %d.id,
                    class = err.kind.as_str(),
                    ejected_for_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "deployment ejected"
                );
            }
        }
    }
}

/// Output tokens assumed for a price estimate when the request sets no cap.
const DEFAULT_OUTPUT_ESTIMATE: u32 = 512;

fn bit(i: usize) -> u64 {
    1u64 << (i.min(63))
}

fn last_error(failed: &[FailedAttempt]) -> Error {
    failed.last().map_or_else(
        || Error::internal("no attempt was made"),
        |f| f.error.clone(),
    )
}

/// Start a response on `d` and wait for its first event with content: the commit point.
///
/// A bare `Start` (the upstream accepted the request: Anthropic's `message_start`, an OpenAI
/// role-only chunk) is held back rather than committed to: vendors report overload and rate
/// limits in the stream right after it (Anthropic's in-stream `overloaded_error`), and nothing
/// the client can see depends on it yet, so such an error still fails over. Usage reported
/// with the start (Anthropic's prompt count) is held the same way: it is not content.
async fn first_event(d: &Deployment, req: &ChatRequest) -> Result<EventStream, Error> {
    let mut stream = d.provider.chat(&d.model, req).await?;
    // Providers send one Start; should one send more, the first carries what the response
    // needs (the collector keeps the first id and model), so only it is held: no allocation.
    let mut start: Option<StreamEvent> = None;
    // Usage reports are running totals: the latest figures of each kind stand for them all.
    let mut usage: Option<relais_core::Usage> = None;
    let held = |start: Option<StreamEvent>, usage: Option<relais_core::Usage>| {
        start.into_iter().chain(usage.map(StreamEvent::Usage))
    };
    loop {
        match stream.next().await {
            Some(Ok(ev @ StreamEvent::Start { .. })) => {
                start.get_or_insert(ev);
            }
            Some(Ok(StreamEvent::Usage(u))) => match &mut usage {
                Some(x) => x.merge(&u),
                None => usage = Some(u),
            },
            Some(Ok(first)) => {
                let head = held(start, usage).chain(std::iter::once(first)).map(Ok);
                return Ok(Box::pin(futures_util::stream::iter(head).chain(stream)));
            }
            Some(Err(e)) => return Err(e),
            None if start.is_none() && usage.is_none() => {
                return Err(Error::upstream(
                    ErrorKind::Protocol,
                    "upstream closed the response without any event",
                ));
            }
            // Accepted, then ended with nothing: let the decoder's own judgement stand.
            None => {
                return Ok(Box::pin(futures_util::stream::iter(
                    held(start, usage).map(Ok),
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relais_core::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A provider scripted with one outcome per call.
    struct Scripted {
        outcomes: Vec<Result<Vec<Result<StreamEvent, Error>>, Error>>,
        calls: AtomicUsize,
    }

    impl Provider for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }
        fn chat<'a>(
            &'a self,
            _model: &'a str,
            _request: &'a ChatRequest,
        ) -> BoxFuture<'a, Result<EventStream, Error>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let outcome = self.outcomes[n.min(self.outcomes.len() - 1)].clone();
            Box::pin(async move {
                outcome.map(|events| Box::pin(futures_util::stream::iter(events)) as EventStream)
            })
        }
        fn embed<'a>(
            &'a self,
            _model: &'a str,
            _request: &'a EmbedRequest,
        ) -> BoxFuture<'a, Result<EmbedResponse, Error>> {
            Box::pin(async { Err(Error::unsupported("no embeddings")) })
        }
    }

    fn route(providers: Vec<Arc<Scripted>>) -> Arc<Route> {
        route_with(providers, Strategy::Failover, |_| {})
    }

    fn route_with(
        providers: Vec<Arc<Scripted>>,
        strategy: Strategy,
        tune: impl FnOnce(&mut Route),
    ) -> Arc<Route> {
        let now = Instant::now();
        let breaker = BreakerPolicy::default();
        let n = providers.len();
        let mut r = Route {
            name: "r".into(),
            kind: RouteKind::Chat,
            deployments: providers
                .into_iter()
                .enumerate()
                .map(|(i, p)| Deployment {
                    id: format!("p{i}/m"),
                    provider_name: format!("p{i}"),
                    provider: p,
                    model: "m".into(),
                    weight: 1,
                    capabilities: Capabilities::default(),
                    limits: DeploymentLimits::default(),
                    price: None,
                    vendor: format!("v{i}"),
                    data_classes: (i == 0).then(|| vec!["public".to_owned()]),
                    health: Arc::new(Health::new(now, &breaker)),
                })
                .collect(),
            strategy,
            timeouts: Timeouts::default(),
            retry: RetryPolicy::for_deployments(n),
            budget: RetryBudget::new(BudgetPolicy::default(), now),
            breaker,
            latency: LatencyPolicy::default(),
            fallbacks: Fallbacks::default(),
        };
        tune(&mut r);
        Arc::new(r)
    }

    fn ok_events() -> Vec<Result<StreamEvent, Error>> {
        vec![
            Ok(StreamEvent::TextDelta("hi".into())),
            Ok(StreamEvent::Finish(relais_core::FinishReason::Stop)),
        ]
    }

    fn scripted(outcomes: Vec<Result<Vec<Result<StreamEvent, Error>>, Error>>) -> Arc<Scripted> {
        Arc::new(Scripted {
            outcomes,
            calls: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn fails_over_on_server_error_before_first_event() {
        let a = scripted(vec![Err(Error::upstream(ErrorKind::Server, "boom"))]);
        let b = scripted(vec![Ok(ok_events())]);
        let r = route(vec![a.clone(), b.clone()]);
        let routed = r.chat(&ChatRequest::default()).await.ok().unwrap();
        assert_eq!(routed.deployment, 1);
        assert_eq!(routed.failed.len(), 1);
        let events: Vec<_> = routed.stream.collect().await;
        assert_eq!(events.len(), 2);
    }

    #[tokio::test]
    async fn error_as_first_stream_item_still_fails_over() {
        let a = scripted(vec![Ok(vec![Err(Error::upstream(
            ErrorKind::Protocol,
            "cut",
        )
        .with_retry(relais_core::Retry::Yes))])]);
        let b = scripted(vec![Ok(ok_events())]);
        let routed = route(vec![a, b])
            .chat(&ChatRequest::default())
            .await
            .ok()
            .unwrap();
        assert_eq!(routed.deployment, 1);
    }

    /// Anthropic sends `message_start`, then may report `overloaded_error` in the stream:
    /// nothing reached the client, so the next deployment answers.
    #[tokio::test]
    async fn error_right_after_start_still_fails_over() {
        let a = scripted(vec![Ok(vec![
            Ok(StreamEvent::Start {
                id: Some("msg_1".into()),
                model: None,
            }),
            Err(Error::upstream(ErrorKind::Overloaded, "overloaded")),
        ])]);
        let b = scripted(vec![Ok(ok_events())]);
        let routed = route(vec![a, b])
            .chat(&ChatRequest::default())
            .await
            .ok()
            .unwrap();
        assert_eq!(routed.deployment, 1);
        assert_eq!(routed.failed[0].error.kind, ErrorKind::Overloaded);
        let events: Vec<_> = routed.stream.collect().await;
        assert_eq!(events.len(), 2);
    }

    /// Anthropic's `message_start` carries the prompt's token count, which the decoder passes
    /// on at once (issue 19): usage is not content, so an error after it still fails over, and
    /// a committed stream keeps the held usage after the start.
    #[tokio::test]
    async fn usage_with_the_start_does_not_commit() {
        let start = || {
            Ok(StreamEvent::Start {
                id: Some("msg_1".into()),
                model: None,
            })
        };
        let usage = |input_tokens| {
            Ok(StreamEvent::Usage(relais_core::Usage {
                input_tokens,
                ..relais_core::Usage::default()
            }))
        };
        let a = scripted(vec![Ok(vec![
            start(),
            usage(12),
            Err(Error::upstream(ErrorKind::Overloaded, "overloaded")),
        ])]);
        let b = scripted(vec![Ok(vec![
            start(),
            usage(7),
            usage(9),
            Ok(StreamEvent::TextDelta("hi".into())),
        ])]);
        let routed = route(vec![a, b])
            .chat(&ChatRequest::default())
            .await
            .ok()
            .unwrap();
        assert_eq!(routed.deployment, 1);
        assert_eq!(routed.failed[0].error.kind, ErrorKind::Overloaded);
        let events: Vec<_> = routed.stream.collect().await;
        assert!(matches!(events[0], Ok(StreamEvent::Start { .. })));
        assert!(
            matches!(&events[1], Ok(StreamEvent::Usage(u)) if u.input_tokens == 9),
            "{events:?}"
        );
        assert!(matches!(events[2], Ok(StreamEvent::TextDelta(_))));
        assert_eq!(events.len(), 3);
    }

    #[tokio::test]
    async fn start_is_kept_in_front_of_the_first_content() {
        let a = scripted(vec![Ok(vec![
            Ok(StreamEvent::Start {
                id: Some("x".into()),
                model: None,
            }),
            Ok(StreamEvent::TextDelta("hi".into())),
        ])]);
        let routed = route(vec![a])
            .chat(&ChatRequest::default())
            .await
            .ok()
            .unwrap();
        let events: Vec<_> = routed.stream.collect().await;
        assert!(matches!(events[0], Ok(StreamEvent::Start { .. })));
        assert!(matches!(events[1], Ok(StreamEvent::TextDelta(_))));
    }

    #[tokio::test]
    async fn client_errors_do_not_fail_over() {
        let a = scripted(vec![Err(Error::upstream(ErrorKind::BadRequest, "bad"))]);
        let b = scripted(vec![Ok(ok_events())]);
        let r = route(vec![a, b.clone()]);
        let err = r.chat(&ChatRequest::default()).await.err().unwrap();
        assert_eq!(err.error.kind, ErrorKind::BadRequest);
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn errors_after_first_event_are_not_retried() {
        let a = scripted(vec![Ok(vec![
            Ok(StreamEvent::TextDelta("partial".into())),
            Err(Error::upstream(ErrorKind::Protocol, "cut").with_retry(relais_core::Retry::Yes)),
        ])]);
        let b = scripted(vec![Ok(ok_events())]);
        let r = route(vec![a, b.clone()]);
        let routed = r.chat(&ChatRequest::default()).await.ok().unwrap();
        assert_eq!(routed.deployment, 0);
        let events: Vec<_> = routed.stream.collect().await;
        assert!(events[1].is_err());
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn all_failing_returns_last_error() {
        let a = scripted(vec![Err(Error::upstream(
            ErrorKind::RateLimited,
            "slow down",
        ))]);
        let b = scripted(vec![Err(Error::upstream(ErrorKind::Overloaded, "busy"))]);
        let err = route(vec![a, b])
            .chat(&ChatRequest::default())
            .await
            .err()
            .unwrap();
        assert_eq!(err.error.kind, ErrorKind::Overloaded);
        // a cools down after its 429; b (no retry-after) gets one more try after a backoff:
        // two deployments plus one retry.
        assert_eq!(err.failed.len(), 3);
        assert_eq!(err.failed[2].deployment, 1);
    }

    fn always_ok(n: usize) -> Vec<Arc<Scripted>> {
        (0..n).map(|_| scripted(vec![Ok(ok_events())])).collect()
    }

    async fn served_by(r: &Arc<Route>, req: &ChatRequest, n: usize) -> Vec<usize> {
        let mut counts = vec![0; r.deployments.len()];
        for _ in 0..n {
            let routed = r.chat(req).await.ok().unwrap();
            counts[routed.deployment] += 1;
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_spreads_in_proportion() {
        let r = route_with(always_ok(2), Strategy::Weighted, |r| {
            r.deployments[0].weight = 3;
            r.deployments[1].weight = 1;
        });
        fastrand::seed(7);
        let counts = served_by(&r, &ChatRequest::default(), 4000).await;
        let share = counts[0] as f64 / 4000.0;
        assert!((share - 0.75).abs() < 0.03, "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn least_cost_prefers_the_cheaper_price() {
        let price = |input, output| {
            Some(Price {
                input,
                output,
                ..Price::default()
            })
        };
        let r = route_with(always_ok(3), Strategy::LeastCost, |r| {
            r.deployments[0].price = None;
            r.deployments[1].price = price(3_000_000, 15_000_000);
            r.deployments[2].price = price(150_000, 600_000);
        });
        assert_eq!(
            served_by(&r, &ChatRequest::default(), 20).await,
            vec![0, 0, 20]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn least_busy_avoids_deployments_with_requests_in_flight() {
        let r = route_with(always_ok(2), Strategy::LeastBusy, |_| {});
        // Hold a response open on whichever deployment takes the first request.
        let held = r.chat(&ChatRequest::default()).await.ok().unwrap();
        let busy = held.deployment;
        let counts = served_by(&r, &ChatRequest::default(), 10).await;
        assert_eq!(counts[busy], 0, "{counts:?}");
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn a_policy_skips_vendors_and_data_classes_it_does_not_allow() {
        let providers = always_ok(2);
        let r = route(providers.clone());
        // Only vendor v1: the primary (v0) is never tried.
        let only_v1 = |d: &Deployment| d.vendor == "v1";
        let routed = r
            .chat_within(&ChatRequest::default(), Some(&only_v1))
            .await
            .ok()
            .unwrap();
        assert_eq!(routed.deployment, 1);
        assert_eq!(providers[0].calls.load(Ordering::SeqCst), 0);
        // Confidential data: the primary takes public data only.
        let confidential = |d: &Deployment| d.accepts_class(Some("confidential"));
        let routed = r
            .chat_within(&ChatRequest::default(), Some(&confidential))
            .await
            .ok()
            .unwrap();
        assert_eq!(routed.deployment, 1);
        // Nothing allowed: refused without an attempt.
        let none = |d: &Deployment| d.vendor == "elsewhere";
        let err = r
            .chat_within(&ChatRequest::default(), Some(&none))
            .await
            .err()
            .unwrap();
        assert_eq!(err.error.kind, ErrorKind::PermissionDenied);
        assert!(err.failed.is_empty());
        assert_eq!(providers[0].calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_no_deployment_can_serve_is_refused_before_any_attempt() {
        let providers = always_ok(2);
        let r = route_with(providers.clone(), Strategy::Failover, |r| {
            for d in &mut r.deployments {
                d.capabilities.images = false;
            }
        });
        let req = ChatRequest {
            messages: vec![relais_core::Message {
                role: relais_core::Role::User,
                content: vec![relais_core::ContentPart::Image {
                    source: relais_core::ImageSource::Url("http://x/y.png".into()),
                    detail: None,
                }],
                name: None,
            }],
            ..ChatRequest::default()
        };
        let err = r.chat(&req).await.err().unwrap();
        assert_eq!(err.error.kind, ErrorKind::Unsupported);
        assert!(
            err.error.message.contains("images"),
            "{}",
            err.error.message
        );
        assert!(
            providers
                .iter()
                .all(|p| p.calls.load(Ordering::SeqCst) == 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_deadline_bounds_retries_and_backoff() {
        let failing = scripted(vec![Err(Error::upstream(ErrorKind::Server, "down"))]);
        let r = route_with(vec![failing.clone()], Strategy::Failover, |r| {
            r.retry.max_attempts = 100;
            r.retry.backoff_base = Duration::from_secs(1);
            r.retry.backoff_max = Duration::from_secs(1);
            r.timeouts.request = Some(Duration::from_secs(3));
        });
        let t0 = Instant::now();
        let err = r.chat(&ChatRequest::default()).await.err().unwrap();
        assert_eq!(err.error.kind, ErrorKind::Server);
        assert!(t0.elapsed() <= Duration::from_secs(3));
        assert!(failing.calls.load(Ordering::SeqCst) < 100);
    }
}
