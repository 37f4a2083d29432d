//! The HTTP surface: authentication, body limits, dialect decoding, routing, and rendering of
//! answers, streams and errors. Every path of the pipeline in DESIGN.md §1 runs through here once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use relais_core::{Collector, Error, ErrorKind, EventStream, Side, StreamEvent, Usage};
use relais_dialects::openai;
use relais_router::{Exhausted, FailedAttempt, Route, RouteKind};
use tokio::sync::watch;

use crate::bill::Bill;
use crate::config::{ClientKey, Runtime};
use crate::dialect::{Dialect, Encoder};
use crate::http::{Ctx, Decoding, bearer, constant_time_eq, header_str, kib, read_body, unix_now};
use crate::metrics::{Global, Series};

/// A route with its metric series, one per deployment, built once per config.
pub struct RouteEntry {
    pub route: Arc<Route>,
    pub series: Vec<Arc<Series>>,
}

/// One config as the server runs it: the validated runtime and its routes' metric series. A
/// reload builds a new one and swaps it in; requests already running keep the one they started
/// with.
pub struct Live {
    pub runtime: Runtime,
    pub entries: BTreeMap<String, RouteEntry>,
}

impl Live {
    /// Build the entries, taking over the series of `previous` for every (route, deployment)
    /// still configured, so counters run on across reloads.
    fn new(runtime: Runtime, previous: Option<&Live>) -> Self {
        let entries = runtime
            .routes
            .iter()
            .map(|(name, route)| {
                let old = previous.and_then(|p| p.entries.get(name));
                let series = route
                    .deployments
                    .iter()
                    .map(|d| {
                        old.and_then(|o| o.series.iter().find(|s| s.is_for(name, &d.id)))
                            .cloned()
                            .unwrap_or_else(|| {
                                Arc::new(Series::new(
                                    name,
                                    &d.id,
                                    &d.provider_name,
                                    d.health.clone(),
                                ))
                            })
                    })
                    .collect();
                (
                    name.clone(),
                    RouteEntry {
                        route: route.clone(),
                        series,
                    },
                )
            })
            .collect();
        Self { runtime, entries }
    }

    /// All metric series, for `/metrics`.
    pub fn series(&self) -> impl Iterator<Item = &Series> + Clone {
        self.entries
            .values()
            .flat_map(|e| e.series.iter().map(|s| &**s))
    }

    /// Output tokens reserved for a request that sets no `max_tokens`.
    fn default_max_tokens(&self) -> u64 {
        self.runtime
            .governance
            .as_ref()
            .map_or(4096, |g| g.default_max_tokens)
    }

    fn series_of(&self, route: &str, deployment: usize) -> Option<&Arc<Series>> {
        self.entries.get(route)?.series.get(deployment)
    }

    /// Who is calling: a virtual key (checked against the key ring), a static key from the
    /// config (compared in constant time), or nobody when no key exists at all.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller<'_>, Error> {
        let presented = bearer(headers)
            .or_else(|| header_str(headers, "api-key"))
            .or_else(|| header_str(headers, "x-api-key"));
        let ring = self.runtime.keyring.as_ref();
        if let (Some(ring), Some(p)) = (ring, presented) {
            if let Some(access) = ring.authenticate(p).await? {
                return Ok(Caller::Virtual(access));
            }
        }
        if self.runtime.keys.is_empty() && !ring.is_some_and(|r| r.has_active_keys()) {
            return Ok(Caller::Open);
        }
        let Some(presented) = presented else {
            return Err(Error::new(
                ErrorKind::Auth,
                Side::Client,
                "missing API key: send it as 'Authorization: Bearer <key>'",
            ));
        };
        // Compare against every key so the time taken does not depend on which one matched.
        let mut found = None;
        for k in &self.runtime.keys {
            if constant_time_eq(k.key.expose().as_bytes(), presented.as_bytes()) {
                found = Some(k);
            }
        }
        found
            .map(Caller::Static)
            .ok_or_else(|| Error::new(ErrorKind::Auth, Side::Client, "invalid API key"))
    }

    fn entry(
        &self,
        caller: &Caller<'_>,
        name: &str,
        kind: RouteKind,
    ) -> Result<&RouteEntry, Error> {
        let entry = self
            .entries
            .get(name)
            .filter(|_| caller.allows(name))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    Side::Client,
                    format!("The model '{name}' does not exist or you do not have access to it."),
                )
                .with_param("model")
            })?;
        if entry.route.kind != kind {
            return Err(Error::bad_request(format!(
                "the model '{name}' serves {}, not {}",
                entry.route.kind.as_str(),
                kind.as_str()
            ))
            .with_param("model"));
        }
        Ok(entry)
    }
}

/// Who is calling.
pub(crate) enum Caller<'a> {
    /// No key is configured or issued: the gateway is open.
    Open,
    /// A key from `[auth] keys`.
    Static(&'a ClientKey),
    /// A virtual key from the governance store.
    Virtual(relais_governance::Access),
}

impl Caller<'_> {
    /// Who pays, for the ledger: (key, team). Static keys are named by their config name.
    fn payer(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Self::Open => (None, None),
            Self::Static(k) => (Some(&k.name), None),
            Self::Virtual(a) => (Some(&a.key.id), Some(&a.team.id)),
        }
    }

    /// Reserve room under the key's and its team's limits and budgets for a request that may
    /// use up to `worst().0` tokens costing up to `worst().1` pico-USD (estimated only when
    /// there are limits to keep); `None` when there are none.
    async fn admit(
        &self,
        limits: &relais_governance::RateLimits,
        worst: impl FnOnce() -> (u64, u64),
    ) -> Result<Option<relais_governance::Ticket>, Error> {
        let Self::Virtual(access) = self else {
            return Ok(None);
        };
        let (k, t) = (&access.key, &access.team);
        if k.limits == relais_governance::Limits::default()
            && t.limits == relais_governance::Limits::default()
        {
            return Ok(None);
        }
        // Key and team ids are distinct by their prefixes (key_..., team_...).
        let subjects = [
            (
                k.id.as_str(),
                relais_governance::Holder::Key {
                    name: &k.name,
                    prefix: &k.prefix,
                },
                k.limits,
            ),
            (
                t.id.as_str(),
                relais_governance::Holder::Team { name: &t.name },
                t.limits,
            ),
        ];
        let (tokens, cost) = worst();
        limits.admit(&subjects, tokens, cost).await
    }

    /// The data class of the request (`x-relais-data-class`, else the key's default), checked
    /// against what the key may send.
    fn data_class<'h>(&'h self, headers: &'h HeaderMap) -> Result<Option<&'h str>, Error> {
        let declared = header_str(headers, "x-relais-data-class");
        match self {
            Self::Virtual(a) => a.data_class(declared),
            _ => Ok(declared),
        }
    }

    /// Whether this caller's request of data class `class` may go to deployment `d`.
    fn may_use(&self, d: &relais_router::Deployment, class: Option<&str>) -> bool {
        d.accepts_class(class)
            && match self {
                Self::Virtual(a) => a.allows_vendor(&d.vendor),
                _ => true,
            }
    }

    /// Whether a policy applies at all (so the router need not call a filter that passes all).
    fn restricts(&self, class: Option<&str>) -> bool {
        class.is_some()
            || matches!(self, Self::Virtual(a) if a.key.reach.vendors.is_some() || a.team.reach.vendors.is_some())
    }

    fn allows(&self, route: &str) -> bool {
        match self {
            Self::Open => true,
            Self::Static(k) => k
                .routes
                .as_ref()
                .is_none_or(|allowed| allowed.iter().any(|r| r == route)),
            Self::Virtual(access) => access.allows_route(route),
        }
    }
}

/// Shared state of the server.
pub struct AppState {
    live: RwLock<Arc<Live>>,
    pub global: Global,
    pub draining: AtomicBool,
    /// Flipped to true at the drain deadline: open streams end with an error event.
    pub abort_streams: watch::Receiver<bool>,
    pub started_at: u64,
    /// Shadow copies' queue and workers, sized at start (a reload keeps them).
    pub shadower: crate::planb::Shadower,
    /// The latest dependency check per route (see [`crate::planb::check_dependency`]).
    pub dependency_alerts: crate::planb::Alerts,
    /// Failover drills, running and recent.
    pub drills: crate::planb::Drills,
    /// Promotions in force: route name to the deployment id made its primary.
    pub promoted: std::sync::Mutex<BTreeMap<String, String>>,
    /// Request bodies being read and decoded at once, in KiB (sized at start).
    decoding: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(runtime: Runtime, abort_streams: watch::Receiver<bool>) -> Self {
        let shadower =
            crate::planb::Shadower::start(runtime.plan_b.max_concurrent, runtime.plan_b.queue);
        let budget = runtime.max_decoding_bytes.max(runtime.max_body_bytes);
        let decoding = Arc::new(tokio::sync::Semaphore::new(kib(budget) as usize));
        Self {
            decoding,
            shadower,
            dependency_alerts: crate::planb::Alerts::default(),
            drills: crate::planb::Drills::default(),
            promoted: std::sync::Mutex::default(),
            live: RwLock::new(Arc::new(Live::new(runtime, None))),
            global: Global::default(),
            draining: AtomicBool::new(false),
            abort_streams,
            started_at: unix_now(),
        }
    }

    /// Promotions in force (route name to deployment id).
    pub fn promotions(&self) -> BTreeMap<String, String> {
        self.promoted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The config in force now. Cheap: a read lock held for one reference-count increment.
    pub fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Swap in a new config; requests in flight finish on the one they started with.
    pub fn install(&self, runtime: Runtime) {
        let mut slot = self.live.write().unwrap_or_else(PoisonError::into_inner);
        let next = Arc::new(Live::new(runtime, Some(&slot)));
        *slot = next;
    }

    /// Everything a request must pass before its body is parsed: not draining, a valid key, a
    /// body within the limit.
    async fn admit<'a>(
        &self,
        live: &'a Live,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Caller<'a>, Bytes, Decoding), Error> {
        if self.draining.load(Ordering::Relaxed) {
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
            Some(&self.decoding),
        )
        .await?;
        Ok((caller, bytes, decoding))
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(azure_chat),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(azure_embeddings),
        )
        .route("/healthz", get(crate::ops::healthz))
        .route("/readyz", get(crate::ops::readyz))
        .route("/metrics", get(crate::ops::metrics))
        .merge(crate::admin::router(state.clone()))
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

fn record_failed(live: &Live, failed: &[FailedAttempt]) {
    for f in failed {
        if let Some(s) = live.series_of(&f.route, f.deployment) {
            s.failed_attempt(f.error.kind);
        }
    }
}

/// A request every deployment failed: count it against the last one tried.
fn record_exhausted(live: &Live, ex: &Exhausted, elapsed: Duration) {
    record_failed(live, &ex.failed);
    if let Some(last) = ex
        .failed
        .last()
        .and_then(|f| live.series_of(&f.route, f.deployment))
    {
        last.error(ex.error.kind);
        last.duration.observe(elapsed);
    }
}

/// `x-relais-deployment` and `x-relais-attempts`, on every routed answer (chat and embeddings).
fn routed_headers(resp: &mut Response, deployment: &str, attempts: usize) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(deployment) {
        h.insert(HeaderName::from_static("x-relais-deployment"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&attempts.to_string()) {
        h.insert(HeaderName::from_static("x-relais-attempts"), v);
    }
}

fn log_error(route: &str, id: &str, err: &Error) {
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

/// Counts a request in flight for as long as it lives.
struct Inflight(Arc<AppState>);

impl Inflight {
    fn new(app: &Arc<AppState>) -> Self {
        app.global.inflight.fetch_add(1, Ordering::Relaxed);
        Self(app.clone())
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.global.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn chat(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    chat_with(app, headers, body, None, Dialect::OpenAi).await
}

async fn messages(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    chat_with(app, headers, body, None, Dialect::Anthropic).await
}

/// `/v1/messages/count_tokens`: the route must exist and be visible to the key; the count is
/// an estimate (see [`relais_core::ChatRequest::estimate_input_tokens`]), since no upstream is
/// called for it.
async fn count_tokens(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ctx = Ctx::for_dialect(&headers, Dialect::Anthropic);
    let live = app.live();
    let counted = async {
        let (key, bytes, _decoding) = app.admit(&live, &headers, body).await?;
        let req = relais_dialects::anthropic::parse_count_tokens(&bytes)?;
        live.entry(&key, &req.model, RouteKind::Chat)?;
        Ok::<_, Error>(req.estimate_input_tokens())
    }
    .await;
    match counted {
        Ok(n) => {
            let body = relais_dialects::anthropic::render_count_tokens(n);
            let mut resp = Response::new(Body::from(body));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            ctx.headers(&mut resp, Duration::ZERO);
            resp
        }
        Err(e) => {
            app.global.rejected(e.kind);
            ctx.error(&e, Duration::ZERO)
        }
    }
}

async fn azure_chat(
    State(app): State<Arc<AppState>>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    chat_with(app, headers, body, Some(deployment), Dialect::OpenAi).await
}

async fn chat_with(
    app: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    model: Option<String>,
    dialect: Dialect,
) -> Response {
    let ctx = Ctx::for_dialect(&headers, dialect);
    let live = app.live();
    let admitted = async {
        let (key, bytes, _decoding) = app.admit(&live, &headers, body).await?;
        let mut req = dialect.parse_chat(&bytes)?;
        if let Some(m) = &model {
            req.model.clone_from(m);
        }
        let entry = live.entry(&key, &req.model, RouteKind::Chat)?;
        let class = key.data_class(&headers)?.map(str::to_owned);
        let worst = || {
            let input = req.estimate_input_tokens();
            let output = req
                .max_output_tokens
                .map_or(live.default_max_tokens(), u64::from);
            (
                input + output,
                crate::bill::worst_cost(&entry.route, input, output),
            )
        };
        let ticket = key.admit(&live.runtime.rate_limits, worst).await?;
        let bill = Bill::start(
            &live,
            &ctx.id,
            key.payer(),
            &req.model,
            req.stream,
            ctx.start,
        );
        Ok::<_, Error>((key, req, entry, ticket, bill, class))
    }
    .await;
    let (key, mut req, entry, ticket, mut bill, class) = match admitted {
        Ok(r) => r,
        Err(e) => {
            app.global.rejected(e.kind);
            log_error("", &ctx.id, &e);
            return ctx.error(&e, Duration::ZERO);
        }
    };
    let inflight = Inflight::new(&app);
    let class = class.as_deref();
    let allow = |d: &relais_router::Deployment| key.may_use(d, class);
    // Plan B: a sampled request's answer is folded while it is served, for the comparison.
    let mut tap = match (live.runtime.shadows.get(&entry.route.name), &bill) {
        (Some(shadow), Some(b)) => app.shadower.sample(shadow, allow).map(|sampled| {
            req.passthrough = false;
            ShadowTap {
                sampled,
                req: req.clone(),
                request_id: ctx.id.clone(),
                at_ms: b.at_ms(),
                who: {
                    let (k, t) = key.payer();
                    (k.map(str::to_owned), t.map(str::to_owned))
                },
                collector: Collector::new(),
            }
        }),
        _ => None,
    };
    // Plan B: a drill on this route treats its deployment as down for the drilled share.
    let drill = app.drills.join(&entry.route.name);
    let down = drill
        .as_ref()
        .filter(|x| x.drilled)
        .map(|x| x.drill.deployment.clone());
    if let (Some(x), Some(b)) = (drill.as_ref().filter(|x| x.drilled), &mut bill) {
        b.set_drill(&x.drill.id);
    }
    let allow_drilled =
        |d: &relais_router::Deployment| allow(d) && down.as_deref() != Some(d.id.as_str());
    let policy = (key.restricts(class) || down.is_some())
        .then_some(&allow_drilled as relais_router::Allow<'_>);
    let routed = match entry.route.chat_within(&req, policy).await {
        Ok(r) => r,
        Err(ex) => {
            record_exhausted(&live, &ex, ctx.start.elapsed());
            log_error(&req.model, &ctx.id, &ex.error);
            if let Some(b) = &mut bill {
                let status = ctx.dialect.error_status(&ex.error);
                b.record(&live, &ex.failed, None, status, Some(&ex.error));
            }
            if let Some(x) = &drill {
                x.outcome(None, ctx.start.elapsed());
            }
            if let Some(t) = tap.take() {
                let failed = LiveEnd {
                    result: Err(ex.error.kind.as_str().to_owned()),
                    latency: ctx.start.elapsed(),
                    ttft: None,
                    cost_pusd: 0,
                };
                t.submit(&app, &live, failed);
            }
            return ctx.error(&ex.error, ex.upstream_wait);
        }
    };
    record_failed(&live, &routed.failed);
    let Some(series) = live
        .series_of(&routed.route.name, routed.deployment)
        .cloned()
    else {
        return ctx.error(&Error::internal("deployment vanished"), Duration::ZERO);
    };
    let ttft = ctx.start.elapsed();
    series.ttft.observe(ttft);
    let deployment = &routed.route.deployments[routed.deployment];
    let attempts = routed.failed.len() + 1;
    let response_id = dialect.response_id(&ctx.id);
    let created = unix_now();
    let mut resp = if req.stream {
        let encoder = dialect.stream_encoder(
            response_id,
            req.model.clone(),
            created,
            req.stream_include_usage,
        );
        let guard = StreamGuard {
            series,
            start: ctx.start,
            usage: None,
            finished: false,
            ticket,
            bill: bill.map(|b| (b, live.clone(), routed.failed)),
            served: (routed.route.clone(), routed.deployment),
            ttft,
            tap: tap.map(|t| (t, app.clone())),
            drill,
            _inflight: inflight,
        };
        let body = stream_body(routed.stream, encoder, guard, app.abort_streams.clone());
        let mut resp = Response::new(body);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        ctx.headers(&mut resp, routed.upstream_wait);
        resp
    } else {
        let collect_start = Instant::now();
        let collected = collect(routed.stream).await;
        let upstream = routed.upstream_wait + collect_start.elapsed();
        let usage = collected.as_ref().ok().and_then(|r| r.usage);
        let cost = usage
            .as_ref()
            .map_or(0, |u| crate::bill::cost_at(deployment, u));
        if let (Some(t), Some(u)) = (&ticket, &usage) {
            t.settle(u.total_tokens(), cost);
        }
        if let Some(x) = &drill {
            let served = collected.is_ok().then_some(deployment.id.as_str());
            x.outcome(served, ctx.start.elapsed());
        }
        if let Some(t) = tap.take() {
            let end = LiveEnd {
                result: collected.clone().map_err(|e| e.kind.as_str().to_owned()),
                latency: ctx.start.elapsed(),
                ttft: Some(ttft),
                cost_pusd: cost,
            };
            t.submit(&app, &live, end);
        }
        drop((inflight, ticket));
        if let Some(b) = &mut bill {
            let served = crate::bill::Served {
                route: routed.route.clone(),
                deployment: routed.deployment,
                usage,
                ttft: Some(ttft),
            };
            let err = collected.as_ref().err();
            let status = err.map_or(200, |e| ctx.dialect.error_status(e));
            b.record(&live, &routed.failed, Some(&served), status, err);
        }
        series.duration.observe(ctx.start.elapsed());
        match collected {
            Ok(r) => {
                series.ok.fetch_add(1, Ordering::Relaxed);
                if let Some(u) = &r.usage {
                    series.tokens(u);
                }
                let body = dialect.render(&r, &response_id, &req.model, created);
                let mut resp = Response::new(Body::from(body));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                ctx.headers(&mut resp, upstream);
                resp
            }
            Err(e) => {
                series.error(e.kind);
                log_error(&req.model, &ctx.id, &e);
                return ctx.error(&e, upstream);
            }
        }
    };
    routed_headers(&mut resp, &deployment.id, attempts);
    resp
}

/// A live request sampled for shadowing: what its copies need, and its answer as it is folded.
struct ShadowTap {
    sampled: crate::planb::Sampled,
    req: relais_core::ChatRequest,
    request_id: String,
    at_ms: i64,
    who: (Option<String>, Option<String>),
    collector: Collector,
}

/// How the live request ended, for the comparison.
struct LiveEnd {
    result: Result<relais_core::ChatResponse, String>,
    latency: Duration,
    ttft: Option<Duration>,
    cost_pusd: u64,
}

impl ShadowTap {
    fn submit(self, app: &AppState, live: &Arc<Live>, end: LiveEnd) {
        let Some(ledger) = live.runtime.ledger.clone() else {
            return;
        };
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        app.shadower.submit(crate::planb::Job {
            sampled: self.sampled,
            req: self.req,
            live: relais_planb::Outcome {
                result: end.result,
                latency_us: us(end.latency),
                ttft_us: end.ttft.map(us),
                cost_pusd: end.cost_pusd,
            },
            request_id: self.request_id,
            at_ms: self.at_ms,
            who: self.who,
            ledger,
            config: live.clone(),
        });
    }
}

async fn collect(mut stream: EventStream) -> Result<relais_core::ChatResponse, Error> {
    let mut c = Collector::new();
    while let Some(ev) = stream.next().await {
        c.push(&ev?)?;
    }
    Ok(c.finish())
}

/// Records the outcome of a stream when it ends, however it ends (a client that disconnects
/// drops the body, and with it this guard and the upstream request).
struct StreamGuard {
    series: Arc<Series>,
    start: Instant,
    usage: Option<Usage>,
    finished: bool,
    /// The request's place under its key's limits, settled with the streamed usage at the end.
    ticket: Option<relais_governance::Ticket>,
    /// The ledger rows, written before the stream's last bytes leave (or when the client
    /// goes away), with the config and the failed attempts they describe.
    bill: Option<(Bill, Arc<Live>, Vec<FailedAttempt>)>,
    served: (Arc<relais_router::Route>, usize),
    ttft: Duration,
    /// Plan B: the answer folded for a shadow comparison, when the request was sampled.
    tap: Option<(ShadowTap, Arc<AppState>)>,
    /// Plan B: the drill this request is counted in.
    drill: Option<crate::planb::InDrill>,
    _inflight: Inflight,
}

impl StreamGuard {
    fn observe(&mut self, ev: &StreamEvent) {
        if let StreamEvent::Usage(u) = ev {
            match &mut self.usage {
                Some(x) => x.merge(u),
                None => self.usage = Some(*u),
            }
        }
        if let Some((t, _)) = &mut self.tap {
            // A fold that fails (events out of order) leaves the stream as it is; the
            // comparison then sees what was folded.
            let _ = t.collector.push(ev);
        }
    }

    fn end(&mut self, err: Option<&Error>) {
        self.finished = true;
        match err {
            None => {
                self.series.ok.fetch_add(1, Ordering::Relaxed);
            }
            Some(e) => self.series.error(e.kind),
        }
        self.settle(200, err.map(|e| (e.kind.as_str(), e.upstream_status)));
        if let Some(x) = self.drill.take() {
            let (route, deployment) = &self.served;
            let served = route.deployments.get(*deployment).map(|d| d.id.as_str());
            x.outcome(served.filter(|_| err.is_none()), self.start.elapsed());
        }
        if let Some((mut t, app)) = self.tap.take() {
            let (route, deployment) = &self.served;
            let cost = match (&self.usage, route.deployments.get(*deployment)) {
                (Some(u), Some(d)) => crate::bill::cost_at(d, u),
                _ => 0,
            };
            let collected = std::mem::take(&mut t.collector).finish();
            let end = LiveEnd {
                result: match err {
                    None => Ok(collected),
                    Some(e) => Err(e.kind.as_str().to_owned()),
                },
                latency: self.start.elapsed(),
                ttft: Some(self.ttft),
                cost_pusd: cost,
            };
            let live = app.live();
            t.submit(&app, &live, end);
        }
    }

    /// Settle the reservation and write the ledger rows, once.
    fn settle(&mut self, status: u16, err: Option<(&str, Option<u16>)>) {
        let (route, deployment) = &self.served;
        if let (Some(t), Some(u), Some(d)) = (
            &self.ticket,
            &self.usage,
            route.deployments.get(*deployment),
        ) {
            t.settle(u.total_tokens(), crate::bill::cost_at(d, u));
        }
        if let Some((bill, live, failed)) = &mut self.bill {
            let served = crate::bill::Served {
                route: route.clone(),
                deployment: *deployment,
                usage: self.usage,
                ttft: Some(self.ttft),
            };
            bill.record_class(live, failed, Some(&served), status, err);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.series.canceled.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(u) = &self.usage {
            self.series.tokens(u);
        }
        if !self.finished {
            // The client went away mid-stream (499, nginx's "client closed request").
            self.settle(499, Some(("canceled", None)));
            // A drill counts it as the ledger does: an error (status 499).
            if let Some(x) = self.drill.take() {
                x.outcome(None, self.start.elapsed());
            }
        }
        self.series.duration.observe(self.start.elapsed());
    }
}

async fn aborted(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

struct BodyState {
    stream: EventStream,
    encoder: Encoder,
    guard: StreamGuard,
    abort: watch::Receiver<bool>,
    done: bool,
    /// The first write left: later writes may step aside to gather a burst.
    started: bool,
}

/// Largest write assembled from events that were ready at once.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Yields in a row that bring no event before a write leaves. One is not enough: the chunk is
/// often two scheduler turns away (measured with strace: one yield left 24 writes per 23-event
/// stream, three left 3).
const COALESCE_YIELDS: u32 = 3;

/// Encode events as SSE as they arrive, never waiting to batch them.
fn stream_body(
    stream: EventStream,
    encoder: Encoder,
    guard: StreamGuard,
    abort: watch::Receiver<bool>,
) -> Body {
    let state = BodyState {
        stream,
        encoder,
        guard,
        abort,
        done: false,
        started: false,
    };
    let frames = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let mut out = Vec::new();
        let mut fruitless = 0;
        let gather = std::mem::replace(&mut st.started, true);
        loop {
            // Wait for the first event of a write; after it, take whatever is already decoded
            // without waiting, so events that arrived together leave in one write (one syscall,
            // one chunk) instead of one each. Nothing is ever held back for later.
            let next = if out.is_empty() {
                tokio::select! {
                    biased;
                    () = aborted(&mut st.abort) => Err(Error::new(
                        ErrorKind::Unavailable,
                        Side::Gateway,
                        "gateway is shutting down; the stream was cut at the drain deadline",
                    )),
                    item = st.stream.next() => Ok(item),
                }
            } else if out.len() >= COALESCE_LIMIT {
                return Some((Ok::<_, std::convert::Infallible>(Bytes::from(out)), st));
            } else {
                match st.stream.next().now_or_never() {
                    Some(item) => Ok(item),
                    None if gather && fruitless < COALESCE_YIELDS => {
                        // The upstream's next chunk may already have arrived, a task hop or two
                        // away (hyper's client connection task hands over one chunk per turn).
                        // Step aside so it can run: tokio resumes a yielded task after the
                        // tasks already queued and a non-blocking I/O poll, so this waits for
                        // nothing that has not arrived. A few yields in a row that bring
                        // nothing send the write. A burst then leaves in one write instead of
                        // one per event (measured: 23-event streams went from 23 writes to 3
                        // and from ~4,000 to ~8,000 streams/s on one core); tokens that come
                        // apart pay a few yields each. The first write never waits: time to
                        // first byte comes first.
                        fruitless += 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    None => return Some((Ok(Bytes::from(out)), st)),
                }
            };
            match next {
                Ok(Some(Ok(ev))) => {
                    fruitless = 0;
                    st.guard.observe(&ev);
                    st.encoder.event(&ev, &mut out);
                }
                Ok(None) => {
                    st.encoder.end(&mut out);
                    st.guard.end(None);
                    st.done = true;
                    return Some((Ok(Bytes::from(out)), st));
                }
                Ok(Some(Err(e))) | Err(e) => {
                    tracing::warn!(class = e.kind.as_str(), message = %e.message, "stream failed after the first event");
                    st.encoder.error(&e, &mut out);
                    st.guard.end(Some(&e));
                    st.done = true;
                    return Some((Ok(Bytes::from(out)), st));
                }
            }
        }
    });
    Body::from_stream(frames)
}

async fn embeddings(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    embeddings_with(app, headers, body, None).await
}

async fn azure_embeddings(
    State(app): State<Arc<AppState>>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    embeddings_with(app, headers, body, Some(deployment)).await
}

async fn embeddings_with(
    app: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    model: Option<String>,
) -> Response {
    let ctx = Ctx::new(&headers);
    let live = app.live();
    let admitted = async {
        let (key, bytes, _decoding) = app.admit(&live, &headers, body).await?;
        let (mut req, base64) = openai::parse_embeddings(&bytes)?;
        if let Some(m) = &model {
            req.model.clone_from(m);
        }
        let entry = live.entry(&key, &req.model, RouteKind::Embeddings)?;
        let class = key.data_class(&headers)?.map(str::to_owned);
        let worst = || {
            let tokens = req
                .input
                .iter()
                .map(|s| s.len() as u64)
                .sum::<u64>()
                .div_ceil(4);
            (tokens, crate::bill::worst_cost(&entry.route, tokens, 0))
        };
        let ticket = key.admit(&live.runtime.rate_limits, worst).await?;
        let bill = Bill::start(&live, &ctx.id, key.payer(), &req.model, false, ctx.start);
        Ok::<_, Error>((key, req, base64, entry, ticket, bill, class))
    }
    .await;
    let (key, req, base64, entry, ticket, mut bill, class) = match admitted {
        Ok(r) => r,
        Err(e) => {
            app.global.rejected(e.kind);
            log_error("", &ctx.id, &e);
            return ctx.error(&e, Duration::ZERO);
        }
    };
    let _inflight = Inflight::new(&app);
    let class = class.as_deref();
    let allow = |d: &relais_router::Deployment| key.may_use(d, class);
    let policy = key
        .restricts(class)
        .then_some(&allow as relais_router::Allow<'_>);
    match entry.route.embed(&req, policy).await {
        Ok((i, resp, failed, waited)) => {
            if let (Some(t), Some(d)) = (&ticket, entry.route.deployments.get(i)) {
                t.settle(
                    resp.usage.total_tokens(),
                    crate::bill::cost_at(d, &resp.usage),
                );
            }
            if let Some(b) = &mut bill {
                let served = crate::bill::Served {
                    route: entry.route.clone(),
                    deployment: i,
                    usage: Some(resp.usage),
                    ttft: None,
                };
                b.record(&live, &failed, Some(&served), 200, None);
            }
            record_failed(&live, &failed);
            if let Some(s) = entry.series.get(i) {
                s.ok.fetch_add(1, Ordering::Relaxed);
                s.tokens(&resp.usage);
                s.duration.observe(ctx.start.elapsed());
            }
            let body = openai::render_embeddings(&resp, &req.model, base64);
            let mut out = Response::new(Body::from(body));
            out.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            ctx.headers(&mut out, waited);
            if let Some(d) = entry.route.deployments.get(i) {
                routed_headers(&mut out, &d.id, failed.len() + 1);
            }
            out
        }
        Err(ex) => {
            record_exhausted(&live, &ex, ctx.start.elapsed());
            log_error(&req.model, &ctx.id, &ex.error);
            if let Some(b) = &mut bill {
                let status = ctx.dialect.error_status(&ex.error);
                b.record(&live, &ex.failed, None, status, Some(&ex.error));
            }
            ctx.error(&ex.error, ex.upstream_wait)
        }
    }
}

async fn models(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let ctx = Ctx::new(&headers);
    let live = app.live();
    let key = match live.authenticate(&headers).await {
        Ok(k) => k,
        Err(e) => {
            app.global.rejected(e.kind);
            return ctx.error(&e, Duration::ZERO);
        }
    };
    let list: Vec<openai::ModelEntry> = live
        .entries
        .iter()
        .filter(|(name, _)| key.allows(name))
        .map(|(name, e)| {
            let primary = e.route.deployments.first();
            let info = primary
                .map(|d| d.provider.model_info(&d.model))
                .unwrap_or_default();
            let mut details = serde_json::Map::new();
            details.insert("kind".into(), e.route.kind.as_str().into());
            if let Some(ctx_len) = info.context_length {
                details.insert("context_length".into(), ctx_len.into());
            }
            details.extend(info.details);
            openai::ModelEntry {
                id: name.clone(),
                object: "model",
                created: app.started_at,
                owned_by: info.owned_by,
                details,
            }
        })
        .collect();
    let mut resp = Response::new(Body::from(openai::render_models(&list)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    ctx.headers(&mut resp, Duration::ZERO);
    resp
}

async fn unknown_path(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let ctx = Ctx::new(&headers);
    let err = Error::new(
        ErrorKind::NotFound,
        Side::Client,
        format!("unknown path: {method} {}", uri.path()),
    )
    .with_code("unknown_url");
    ctx.error(&err, Duration::ZERO)
}

async fn wrong_method(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let ctx = Ctx::new(&headers);
    let err = Error::bad_request(format!("method {method} is not allowed on {}", uri.path()))
        .with_code("method_not_allowed");
    let mut resp = ctx.error(&err, Duration::ZERO);
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}
