//! The HTTP surface: authentication, body limits, dialect decoding, routing, and rendering of
//! answers, streams and errors. Every path of the pipeline in DESIGN.md §1 runs through here once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
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

/// Room held in the decoding budget while a body is read and parsed; given back on drop.
pub(crate) type Decoding = Option<tokio::sync::OwnedSemaphorePermit>;

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

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = header_str(headers, "authorization")?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The client's `x-request-id` when it is sane, otherwise a fresh random one.
fn request_id(headers: &HeaderMap) -> String {
    match header_str(headers, "x-request-id") {
        Some(id) if id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_owned(),
        _ => format!("{:032x}", fastrand::u128(..)),
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
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/routes", get(admin_routes))
        .route("/admin/teams", get(admin_teams).post(admin_teams))
        .route("/admin/keys", get(admin_keys).post(admin_keys))
        .route("/admin/keys/{id}/{action}", post(admin_key_action))
        .route("/admin/usage", get(admin_usage))
        .route("/admin/readiness", get(admin_readiness))
        .route("/admin/promote", post(admin_promote))
        .route("/admin/drills", get(admin_drills).post(admin_drills))
        .route("/admin/drills/{id}", get(admin_drill))
        .route("/admin/drills/{id}/stop", post(admin_drill_stop))
        .route("/admin/dependency", get(admin_dependency))
        .route("/admin/ledger/{id}", get(admin_ledger))
        .route("/admin/openapi.json", get(admin_openapi))
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

/// Per-request bookkeeping that ends in the response headers.
struct Ctx {
    start: Instant,
    id: String,
    /// The client's API: errors are rendered in its shape.
    dialect: Dialect,
}

impl Ctx {
    fn new(headers: &HeaderMap) -> Self {
        Self::for_dialect(headers, Dialect::OpenAi)
    }

    fn for_dialect(headers: &HeaderMap, dialect: Dialect) -> Self {
        Self {
            start: Instant::now(),
            id: request_id(headers),
            dialect,
        }
    }

    fn headers(&self, resp: &mut Response, upstream: Duration) {
        let overhead = self.start.elapsed().saturating_sub(upstream);
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.id) {
            // Anthropic's SDKs read their own header name for the request id.
            if self.dialect == Dialect::Anthropic {
                h.insert(HeaderName::from_static("request-id"), v.clone());
            }
            h.insert(HeaderName::from_static("x-request-id"), v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1000.0)) {
            h.insert(HeaderName::from_static("x-relais-overhead-ms"), v);
        }
    }

    fn error(&self, err: &Error, upstream: Duration) -> Response {
        let status = StatusCode::from_u16(self.dialect.error_status(err))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.dialect.error_body(err, &self.id)).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            HeaderName::from_static("x-relais-error-class"),
            HeaderValue::from_static(err.kind.as_str()),
        );
        if let Some(after) = err.retry_after() {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                h.insert(header::RETRY_AFTER, v);
            }
        }
        self.headers(&mut resp, upstream);
        resp
    }
}

/// Bytes in whole KiB, rounded up (the decoding budget's unit).
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Parsing a body costs several times its size (300k tiny messages in 9 MB made ~65 MiB of
/// canonical request): the budget bounds how many bytes are being read and decoded at once,
/// and a request past it is turned away at once with 503 and `retry-after`, not queued.
fn take_decoding(
    budget: &Arc<tokio::sync::Semaphore>,
    bytes: usize,
    held: &mut Decoding,
) -> Result<(), Error> {
    let want = kib(bytes).saturating_sub(held.as_ref().map_or(0, |p| p.num_permits() as u32));
    if want == 0 {
        return Ok(());
    }
    match budget.clone().try_acquire_many_owned(want) {
        Ok(p) => {
            crate::memory::large_body_seen();
            match held {
                Some(h) => h.merge(p),
                None => *held = Some(p),
            }
            Ok(())
        }
        Err(_) => Err(Error::new(
            ErrorKind::Overloaded,
            Side::Gateway,
            "too many large request bodies are being decoded at once; retry shortly",
        )
        .with_retry(relais_core::Retry::After(Duration::from_secs(1)))),
    }
}

/// Read the body up to `limit`, refusing early when `content-length` already says too much,
/// and holding its size in the decoding budget (released when the returned guard drops, after
/// the caller parsed it).
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    budget: Option<&Arc<tokio::sync::Semaphore>>,
) -> Result<(Bytes, Decoding), Error> {
    let mut decoding: Decoding = None;
    let too_large = || {
        Error::new(
            ErrorKind::PayloadTooLarge,
            Side::Client,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    if let Some(len) = header_str(headers, "content-length").and_then(|v| v.parse::<u64>().ok()) {
        if len > limit as u64 {
            return Err(too_large());
        }
        // Small bodies (most) cost the budget nothing worth counting.
        if let Some(budget) = budget.filter(|_| len > SMALL_BODY as u64) {
            if let Err(e) = take_decoding(budget, len as usize, &mut decoding) {
                // Read and drop the body (no memory, bounded by the body timeout) so the client
                // reads this 503 instead of a broken pipe, and retries.
                let mut stream = body.into_data_stream();
                while let Some(Ok(_)) = stream.next().await {}
                return Err(e);
            }
        }
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let timed_out = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<crate::listen::BodyTimedOut>())
                || e.into_inner().is::<crate::listen::BodyTimedOut>();
            if timed_out {
                Error::new(
                    ErrorKind::Timeout,
                    Side::Client,
                    "the request body was not received in time",
                )
            } else {
                Error::bad_request("could not read the request body")
            }
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        if let Some(budget) = budget.filter(|_| buf.len() + chunk.len() > SMALL_BODY) {
            take_decoding(budget, buf.len() + chunk.len(), &mut decoding)?;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(buf), decoding))
}

/// The largest admin API body; admin bodies are small and not counted against the budget.
const ADMIN_BODY: usize = 64 * 1024;

/// Bodies up to this size are not counted against the decoding budget.
const SMALL_BODY: usize = 64 * 1024;

fn record_failed(live: &Live, failed: &[FailedAttempt]) {
    for f in failed {
        if let Some(s) = live.series_of(&f.route, f.deployment) {
            s.failed_attempt(f.error.kind);
        }
    }
}

/// A request every deployment failed: count it against the last one tried.
fn record_exhausted(live: &Live, ex: &Exhausted, elapsed: Option<Duration>) {
    record_failed(live, &ex.failed);
    if let Some(last) = ex
        .failed
        .last()
        .and_then(|f| live.series_of(&f.route, f.deployment))
    {
        last.error(ex.error.kind);
        if let Some(d) = elapsed {
            last.duration.observe(d);
        }
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
            record_exhausted(&live, &ex, Some(ctx.start.elapsed()));
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
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&deployment.id) {
        h.insert(HeaderName::from_static("x-relais-deployment"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&attempts.to_string()) {
        h.insert(HeaderName::from_static("x-relais-attempts"), v);
    }
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
            out
        }
        Err(ex) => {
            record_exhausted(&live, &ex, None);
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

/// A small JSON or text answer with the headers every response carries.
fn plain(
    headers: &HeaderMap,
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response {
    let ctx = Ctx::new(headers);
    let mut resp = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
    ctx.headers(&mut resp, Duration::ZERO);
    resp
}

async fn healthz(headers: HeaderMap) -> Response {
    plain(
        &headers,
        StatusCode::OK,
        "application/json",
        r#"{"status":"ok"}"#.to_owned(),
    )
}

/// `/readyz`: 503 while draining, and while the limit store (Redis) is unreachable when
/// limited keys fail closed, since such an instance refuses their requests; 200 otherwise, with
/// what is degraded named.
async fn readyz(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (status, body) = if app.draining.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "draining"}),
        )
    } else {
        let live = app.live();
        let limits = &live.runtime.rate_limits;
        let fail_open = live
            .runtime
            .governance
            .as_ref()
            .is_some_and(|g| g.when_redis_down == "open");
        let mut body = serde_json::json!({"status": "ready"});
        let mut status = StatusCode::OK;
        match (limits.is_up(), fail_open) {
            (true, _) => {}
            (false, true) => {
                body["limits"] = "unreachable: admitting without limits".into();
            }
            (false, false) => {
                status = StatusCode::SERVICE_UNAVAILABLE;
                body["limits"] = "unreachable: refusing limited keys".into();
            }
        }
        // Neither stops this instance from serving: keys loaded last stay in force, ledger
        // rows wait on disk. Named so that an operator sees it.
        if live.runtime.keyring.as_ref().is_some_and(|r| !r.store_up()) {
            body["keys"] = "store unreachable: the keys loaded last stay in force".into();
        }
        if live.runtime.ledger.as_ref().is_some_and(|l| !l.store_up()) {
            body["ledger"] = "store unreachable: rows wait on disk".into();
        }
        if body.as_object().is_some_and(|o| o.len() > 1) {
            body["status"] = "degraded".into();
        }
        (status, body)
    };
    plain(&headers, status, "application/json", body.to_string())
}

async fn metrics(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let live = app.live();
    // Optional: the figures tell an attacker which vendors and routes exist and how busy they are.
    if let Some(key) = &live.runtime.metrics_key {
        let presented = bearer(&headers);
        let admin = live.runtime.admin_key.as_ref();
        let ok = presented.is_some_and(|p| {
            constant_time_eq(key.expose().as_bytes(), p.as_bytes())
                || admin.is_some_and(|a| constant_time_eq(a.expose().as_bytes(), p.as_bytes()))
        });
        if !ok {
            let e = Error::new(
                ErrorKind::Auth,
                Side::Client,
                "invalid or missing metrics key: send it as 'Authorization: Bearer <key>'",
            );
            return Ctx::new(&headers).error(&e, Duration::ZERO);
        }
    }
    let mut body = crate::metrics::render(&app.global, live.series());
    let limits = &live.runtime.rate_limits;
    body.push_str(&format!(
        "# HELP relais_limit_store_up Whether key and team limits can be counted (1) or not (0).\n# TYPE relais_limit_store_up gauge\nrelais_limit_store_up{{kind=\"{}\"}} {}\n",
        limits.kind(),
        u8::from(limits.is_up())
    ));
    if let Some(ring) = &live.runtime.keyring {
        body.push_str(&format!(
            "# HELP relais_key_store_up Whether the last key refresh reached the store.\n# TYPE relais_key_store_up gauge\nrelais_key_store_up{{kind=\"{}\"}} {}\n",
            ring.store_kind(),
            u8::from(ring.store_up())
        ));
    }
    if let Some(l) = &live.runtime.ledger {
        let st = &l.stats;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        body.push_str(&format!(
            "# HELP relais_ledger_rows_total Ledger rows appended to the write-ahead file (recorded) and accepted by the store (stored).\n# TYPE relais_ledger_rows_total counter\nrelais_ledger_rows_total{{state=\"recorded\"}} {}\nrelais_ledger_rows_total{{state=\"stored\"}} {}\n# HELP relais_ledger_write_errors_total Appends to the write-ahead file that failed (rows kept in memory).\n# TYPE relais_ledger_write_errors_total counter\nrelais_ledger_write_errors_total {}\n# HELP relais_ledger_backlog_segments Closed write-ahead segments waiting for the store.\n# TYPE relais_ledger_backlog_segments gauge\nrelais_ledger_backlog_segments {}\n# HELP relais_ledger_backlog_bytes Bytes of ledger rows on local disk not yet in the store.\n# TYPE relais_ledger_backlog_bytes gauge\nrelais_ledger_backlog_bytes {}\n# HELP relais_ledger_store_up Whether the last shipment reached the ledger store.\n# TYPE relais_ledger_store_up gauge\nrelais_ledger_store_up {}\n",
            n(&st.recorded),
            n(&st.stored),
            n(&st.write_errors),
            n(&st.backlog),
            n(&st.backlog_bytes),
            u8::from(l.store_up())
        ));
    }
    app.shadower.stats.render(&mut body);
    app.dependency_alerts.render(&mut body);
    plain(&headers, StatusCode::OK, "text/plain; version=0.0.4", body)
}

/// The admin API's own credential, compared in constant time. Off (404) without one.
fn admin_auth(live: &Live, headers: &HeaderMap) -> Result<(), Error> {
    let Some(admin) = &live.runtime.admin_key else {
        return Err(Error::new(
            ErrorKind::NotFound,
            Side::Client,
            "the admin API is off: set admin.key in the config",
        ));
    };
    if live.runtime.admin_client_cert
        && header_str(headers, crate::listen::CLIENT_CERT_HEADER) != Some("verified")
    {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            Side::Client,
            "the admin API needs a client certificate signed by server.tls.client_ca_file",
        ));
    }
    let presented = bearer(headers).or_else(|| header_str(headers, "x-api-key"));
    if presented.is_some_and(|p| constant_time_eq(admin.expose().as_bytes(), p.as_bytes())) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Auth,
            Side::Client,
            "invalid or missing admin key",
        ))
    }
}

/// The key ring, for the key and team endpoints.
fn keyring(live: &Live) -> Result<Arc<relais_governance::KeyRing>, Error> {
    live.runtime.keyring.clone().ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            Side::Client,
            "virtual keys are off: add a [governance] section to the config",
        )
    })
}

fn limits_json(l: &relais_governance::Limits) -> serde_json::Value {
    let usd =
        |v: Option<u64>| v.map(|p| relais_governance::usd(p).trim_start_matches('$').to_owned());
    serde_json::json!({"rpm": l.rpm, "tpm": l.tpm, "max_concurrent": l.max_concurrent,
        "budget_day": usd(l.budget_day), "budget_month": usd(l.budget_month),
        "budget_total": usd(l.budget_total)})
}

fn team_json(t: &relais_state::Team) -> serde_json::Value {
    serde_json::json!({"id": t.id, "name": t.name, "routes": t.routes, "created_at": t.created_at,
        "limits": limits_json(&t.limits), "vendors": t.reach.vendors,
        "data_classes": t.reach.data_classes})
}

/// `rpm`, `tpm`, `max_concurrent` from an admin body: positive integers when present;
/// `budget_day`, `budget_month`, `budget_total`: USD as a string ("12.50") or a number.
fn limits_of(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<relais_governance::Limits, Error> {
    let one = |field: &str| match body.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v.as_u64().filter(|n| *n > 0).map(Some).ok_or_else(|| {
            Error::bad_request(format!("{field} must be a positive integer")).with_param(field)
        }),
    };
    let money = |field: &str| {
        let text = match body.get(field) {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(_) => String::new(),
        };
        relais_governance::parse_usd(&text)
            .map(Some)
            .map_err(|e| Error::bad_request(format!("{field}: {e}")).with_param(field))
    };
    Ok(relais_governance::Limits {
        rpm: one("rpm")?,
        tpm: one("tpm")?,
        max_concurrent: one("max_concurrent")?,
        budget_day: money("budget_day")?,
        budget_month: money("budget_month")?,
        budget_total: money("budget_total")?,
    })
}

/// `vendors` and `data_classes` from an admin body: lists of strings when present.
fn reach_of(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<relais_governance::Reach, Error> {
    Ok(relais_governance::Reach {
        vendors: string_list(body, "vendors")?,
        data_classes: string_list(body, "data_classes")?,
    })
}

/// A key as listed: never its secret or hash, only the prefix that recognises it.
fn key_json(k: &relais_state::StoredKey) -> serde_json::Value {
    serde_json::json!({
        "id": k.id, "name": k.name, "team_id": k.team_id, "prefix": k.prefix,
        "routes": k.routes, "created_at": k.created_at, "revoked_at": k.revoked_at,
        "limits": limits_json(&k.limits), "vendors": k.reach.vendors,
        "data_classes": k.reach.data_classes,
    })
}

/// What every key and team call starts with: the admin credential, the key ring, and for a
/// POST its JSON body (`None` for a GET).
async fn admin_request(
    live: &Live,
    headers: &HeaderMap,
    method: &Method,
    body: Body,
) -> Result<
    (
        Arc<relais_governance::KeyRing>,
        Option<serde_json::Map<String, serde_json::Value>>,
    ),
    Error,
> {
    admin_auth(live, headers)?;
    let ring = keyring(live)?;
    if *method == Method::GET {
        return Ok((ring, None));
    }
    let (bytes, _) = read_body(body, headers, ADMIN_BODY, None).await?;
    Ok((ring, Some(admin_body(&bytes)?)))
}

/// The admin body: a JSON object, or a 400 that says what is wrong.
fn admin_body(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::bad_request("the body must be a JSON object")),
        Err(e) => Err(Error::bad_request(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

fn string_list(
    body: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<Option<Vec<String>>, Error> {
    let bad = || Error::bad_request(format!("{field} must be a list of strings")).with_param(field);
    match body.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

fn string_field<'a>(
    body: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<&'a str, Error> {
    body.get(field)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Error::bad_request(format!("{field} is required")).with_param(field))
}

/// Run an admin operation and answer with its JSON, or with the error in OpenAI's shape.
async fn admin_answer(
    headers: &HeaderMap,
    op: impl std::future::Future<Output = Result<(StatusCode, serde_json::Value), Error>>,
) -> Response {
    match op.await {
        Ok((status, value)) => plain(headers, status, "application/json", value.to_string()),
        Err(e) => Ctx::new(headers).error(&e, Duration::ZERO),
    }
}

/// `GET /admin/teams`, `POST /admin/teams` (`{"name", "routes"?}`).
async fn admin_teams(
    State(app): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let (ring, body) = admin_request(&live, &headers, &method, body).await?;
        let Some(body) = body else {
            let list: Vec<_> = ring.teams().await?.iter().map(team_json).collect();
            return Ok((StatusCode::OK, serde_json::json!({ "teams": list })));
        };
        let routes = string_list(&body, "routes")?;
        if let Some(unknown) = routes
            .iter()
            .flatten()
            .find(|r| !live.runtime.routes.contains_key(*r))
        {
            return Err(
                Error::bad_request(format!("no route named '{unknown}'")).with_param("routes")
            );
        }
        let team = ring
            .create_team(
                string_field(&body, "name")?,
                routes,
                limits_of(&body)?,
                reach_of(&body)?,
            )
            .await?;
        Ok((StatusCode::CREATED, team_json(&team)))
    })
    .await
}

/// `GET /admin/keys`, `POST /admin/keys` (`{"team", "name", "routes"?}`): the new key's secret
/// is in this answer and nowhere else, ever.
async fn admin_keys(
    State(app): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let (ring, body) = admin_request(&live, &headers, &method, body).await?;
        let Some(body) = body else {
            let list: Vec<_> = ring.keys().await?.iter().map(key_json).collect();
            return Ok((StatusCode::OK, serde_json::json!({ "keys": list })));
        };
        let issued = ring
            .create_key(
                string_field(&body, "team")?,
                string_field(&body, "name")?,
                string_list(&body, "routes")?,
                limits_of(&body)?,
                reach_of(&body)?,
            )
            .await?;
        let mut value = key_json(&issued.stored);
        value["key"] = issued.key.expose().into();
        Ok((StatusCode::CREATED, value))
    })
    .await
}

/// `POST /admin/keys/{id}/revoke` and `POST /admin/keys/{id}/rotate` (the new secret is in the
/// answer; the old one stops working).
async fn admin_key_action(
    State(app): State<Arc<AppState>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        admin_auth(&live, &headers)?;
        let ring = keyring(&live)?;
        match action.as_str() {
            "revoke" => {
                ring.revoke_key(&id).await?;
                Ok((
                    StatusCode::OK,
                    serde_json::json!({"id": id, "revoked": true}),
                ))
            }
            "rotate" => {
                let issued = ring.rotate_key(&id).await?;
                let mut value = key_json(&issued.stored);
                value["key"] = issued.key.expose().into();
                Ok((StatusCode::OK, value))
            }
            other => Err(Error::new(
                ErrorKind::NotFound,
                Side::Client,
                format!("unknown key action '{other}' (revoke, rotate)"),
            )),
        }
    })
    .await
}

/// `GET /admin/routes`: every route's strategy and, per deployment, the router's live view:
/// breaker state, cool-downs, latency estimate, in-flight and counters. Behind `admin.key`.
/// `GET /admin/usage?by=key&from=2026-11-01&to=2026-11-23&key=..&team=..&route=..`: spend
/// and tokens from the ledger, grouped; every row recorded before the call is counted (the
/// write-ahead file is shipped first).
async fn admin_usage(State(app): State<Arc<AppState>>, uri: Uri, headers: HeaderMap) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        admin_auth(&live, &headers)?;
        let ledger = ledger_of(&live)?;
        let q = usage_query_of(&uri, None)?;
        ledger.flush().await?;
        let lines = ledger.store().usage(&q).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                Side::Gateway,
                format!("ledger store: {e}"),
            )
        })?;
        Ok((StatusCode::OK, crate::bill::usage_json(&q, &lines)))
    })
    .await
}

/// `GET /admin/readiness[?route=R]`: every shadowed backup's readiness (DESIGN.md §8).
async fn admin_readiness(
    State(app): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        admin_auth(&live, &headers)?;
        let params = query_params(uri.query().unwrap_or(""));
        let backups =
            crate::planb::readiness(&live, params.get("route").map(String::as_str)).await?;
        Ok((
            StatusCode::OK,
            serde_json::json!({
                "window_days": live.runtime.plan_b.window_days,
                "window_samples": live.runtime.plan_b.window_samples,
                "backups": backups,
            }),
        ))
    })
    .await
}

/// `POST /admin/promote` with `{"route", "to", "by", "dry_run"}` makes `to` the route's
/// primary (a dry run only forecasts), or with `{"route", "undo": true, "by"}` undoes it.
async fn admin_promote(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        admin_auth(&live, &headers)?;
        let (bytes, _) = read_body(body, &headers, ADMIN_BODY, None).await?;
        let body = admin_body(&bytes)?;
        let route = string_field(&body, "route")?;
        let flag = |k: &str| {
            body.get(k)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        if flag("undo") {
            let by = string_field(&body, "by")?;
            return Ok((
                StatusCode::OK,
                crate::planb::promote(&app, route, None, by).await?,
            ));
        }
        let to = string_field(&body, "to")?;
        let forecast = crate::planb::forecast(&live, route, to).await?;
        if flag("dry_run") {
            return Ok((
                StatusCode::OK,
                serde_json::json!({"dry_run": true, "forecast": forecast}),
            ));
        }
        let by = string_field(&body, "by")?;
        let mut done = crate::planb::promote(&app, route, Some(to), by).await?;
        done["forecast"] = forecast;
        Ok((StatusCode::OK, done))
    })
    .await
}

/// `POST /admin/drills` starts a drill; `GET` lists this instance's drills.
async fn admin_drills(
    State(app): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        admin_auth(&live, &headers)?;
        if method == Method::GET {
            let list: Vec<_> = app.drills.list().iter().map(|d| d.json()).collect();
            return Ok((StatusCode::OK, serde_json::json!({ "drills": list })));
        }
        let (bytes, _) = read_body(body, &headers, ADMIN_BODY, None).await?;
        let req: crate::planb::DrillRequest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_request(format!("invalid drill: {e}")))?;
        let drill = app.drills.start(&live, req)?;
        crate::planb::record_drill(&live, &drill).await;
        // Ends it at its time (unless it was aborted or stopped first) and records the end.
        let (app2, d) = (app.clone(), drill.clone());
        tokio::spawn(async move {
            while d.state() == crate::planb::DrillState::Running
                && crate::bill::now_ms() < d.ends_at_ms
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if d.end(crate::planb::DrillState::Completed) {
                tracing::info!(drill = %d.id, "drill completed");
            }
            crate::planb::record_drill(&app2.live(), &d).await;
        });
        Ok((StatusCode::CREATED, drill.json()))
    })
    .await
}

fn no_drill(id: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        Side::Client,
        format!("no drill '{id}' on this instance"),
    )
}

/// `GET /admin/drills/{id}`: the drill's report, its counters beside the ledger's rows.
async fn admin_drill(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        admin_auth(&live, &headers)?;
        let d = app.drills.get(&id).ok_or_else(|| no_drill(&id))?;
        Ok((StatusCode::OK, crate::planb::drill_report(&live, &d).await?))
    })
    .await
}

/// `POST /admin/drills/{id}/stop` (body `{"by": "..."}`): end a drill early.
async fn admin_drill_stop(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        admin_auth(&live, &headers)?;
        let d = app.drills.get(&id).ok_or_else(|| no_drill(&id))?;
        let (bytes, _) = read_body(body, &headers, ADMIN_BODY, None).await?;
        let by = if bytes.is_empty() {
            "admin".to_owned()
        } else {
            string_field(&admin_body(&bytes)?, "by")?.to_owned()
        };
        d.end(crate::planb::DrillState::Stopped { by });
        crate::planb::record_drill(&live, &d).await;
        Ok((StatusCode::OK, d.json()))
    })
    .await
}

/// `GET /admin/dependency[?from&to&route&team&key]`: each vendor's share of requests and
/// spend, and the concentration (HHI), overall, per route, per team and per day.
async fn admin_dependency(
    State(app): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        admin_auth(&live, &headers)?;
        let q = usage_query_of(&uri, Some("vendor"))?;
        Ok((StatusCode::OK, crate::planb::dependency(&live, q).await?))
    })
    .await
}

/// `GET /admin/ledger/{id}`: every ledger row of a request, by the gateway's id or the
/// `x-request-id` the client saw (attempt 0 is the request, 1.. its upstream attempts).
async fn admin_ledger(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        admin_auth(&live, &headers)?;
        let ledger = ledger_of(&live)?;
        ledger.flush().await?;
        let rows = ledger.store().rows_of(&id).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                Side::Gateway,
                format!("ledger store: {e}"),
            )
        })?;
        Ok((StatusCode::OK, serde_json::json!({ "rows": rows })))
    })
    .await
}

/// `GET /admin/openapi.json`: the admin API described (docs/admin-openapi.json, built in).
async fn admin_openapi(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let live = app.live();
    match admin_auth(&live, &headers) {
        Ok(()) => plain(
            &headers,
            StatusCode::OK,
            "application/json",
            include_str!("../../../docs/admin-openapi.json").to_owned(),
        ),
        Err(e) => Ctx::new(&headers).error(&e, Duration::ZERO),
    }
}

/// A usage query from the URL's `by` (unless `by` is fixed), `from`, `to`, `key`, `team` and
/// `route` parameters.
fn usage_query_of(uri: &Uri, by: Option<&str>) -> Result<relais_state::UsageQuery, Error> {
    let params = query_params(uri.query().unwrap_or(""));
    let get = |k: &str| params.get(k).map(String::as_str);
    crate::bill::usage_query(
        by.or(get("by")).unwrap_or("key"),
        get("from"),
        get("to"),
        [
            get("key").map(str::to_owned),
            get("team").map(str::to_owned),
            get("route").map(str::to_owned),
        ],
    )
}

pub(crate) fn ledger_of(live: &Live) -> Result<Arc<relais_governance::Ledger>, Error> {
    live.runtime.ledger.clone().ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            Side::Client,
            "no ledger: configure [governance]",
        )
    })
}

/// `a=1&b=x%20y` as a map (the last value of a repeated name wins).
fn query_params(query: &str) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match std::str::from_utf8(&bytes[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn admin_routes(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let ctx = Ctx::new(&headers);
    let live = app.live();
    if let Err(e) = admin_auth(&live, &headers) {
        return ctx.error(&e, Duration::ZERO);
    }
    let now = tokio::time::Instant::now();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let routes: serde_json::Map<String, serde_json::Value> = live
        .runtime
        .routes
        .iter()
        .map(|(name, r)| {
            let deployments: Vec<serde_json::Value> = r
                .deployments
                .iter()
                .map(|d| {
                    let h = d.health.snapshot(now, &d.limits, &r.latency);
                    serde_json::json!({
                        "id": d.id,
                        "provider": d.provider_name,
                        "model": d.model,
                        "weight": d.weight,
                        "state": h.state,
                        "unavailable_for_ms": h.unavailable_for.map(ms),
                        "latency_estimate_ms": h.latency_estimate.map(ms),
                        "inflight": h.inflight,
                        "consecutive_failures": h.consecutive_failures,
                        "window": {"successes": h.window_successes, "failures": h.window_failures},
                        "last_minute": {"requests": h.minute_requests, "tokens": h.minute_tokens},
                        "limits": {"rpm": d.limits.rpm, "tpm": d.limits.tpm, "max_concurrent": d.limits.concurrent},
                        "attempts": h.attempts,
                        "failures": h.failures,
                        "retries": h.retries,
                        "failovers": h.failovers,
                        "ejections": h.ejections,
                    })
                })
                .collect();
            let value = serde_json::json!({
                "kind": r.kind.as_str(),
                "strategy": r.strategy.as_str(),
                "deployments": deployments,
                "fallbacks": {
                    "context_window": r.fallbacks.context_window.as_ref().map(|f| f.name.as_str()),
                    "content_filter": r.fallbacks.content_filter.as_ref().map(|f| f.name.as_str()),
                },
            });
            (name.clone(), value)
        })
        .collect();
    let body = serde_json::json!({ "routes": routes }).to_string();
    plain(&headers, StatusCode::OK, "application/json", body)
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
