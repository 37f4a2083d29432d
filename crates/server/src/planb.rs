//! Plan B in the gateway (DESIGN.md §8): shadow traffic and what is read from it.
//!
//! On the live path only [`Shadower::sample`] runs: a random draw, a budget check and a policy
//! filter, no allocation unless the request is sampled. A sampled request's answer is folded as
//! it is served; when it ends, a job (the request, the live outcome) goes into a bounded queue
//! with `try_send`, so a full queue drops the copy and counts it instead of slowing the client.
//! A dispatcher hands jobs to at most `max_concurrent` tasks, which send the copy to each
//! backup directly (no failover, no retries, no cache), bill it to the ledger under category
//! `shadow`, score it against the live answer and store the sample.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use relais_core::{ChatRequest, Collector, EmbedRequest, Error, StreamEvent};
use relais_governance::Ledger;
use relais_planb::{Outcome, Scores};
use relais_router::Deployment;
use relais_state::ShadowSample;
use tokio::sync::{Semaphore, mpsc};

use crate::app::Live;

/// Settings shared by every route (`[plan_b]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub max_concurrent: usize,
    pub queue: usize,
    pub window_samples: u32,
    pub window_days: u32,
    pub similarity_route: Option<String>,
    pub alert_percent: f64,
    pub check_every: Duration,
    pub thresholds: relais_planb::Thresholds,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            queue: 64,
            window_samples: 500,
            window_days: 7,
            similarity_route: None,
            alert_percent: 90.0,
            check_every: Duration::from_secs(60),
            thresholds: relais_planb::Thresholds::default(),
        }
    }
}

/// One route's shadow traffic.
pub struct ShadowRoute {
    pub route: String,
    pub backups: Vec<Deployment>,
    pub sample_rate: f64,
    /// Pico-USD per UTC day, all backups together.
    pub budget_per_day: Option<u64>,
    pub timeout: Duration,
}

/// A live request chosen for copying, and the backups its policy lets it go to.
pub(crate) struct Sampled {
    pub shadow: Arc<ShadowRoute>,
    pub backups: Vec<usize>,
}

/// Counters for `/metrics`, all routes together.
#[derive(Default)]
pub struct ShadowStats {
    /// Live requests chosen for copying.
    pub sampled: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Not copied: the route's budget for the day is spent.
    pub over_budget: AtomicU64,
    /// Not copied: the request's vendor or data-class policy allows none of the backups.
    pub policy: AtomicU64,
    /// Copies not sent to a backup at its configured rpm, tpm or concurrency limit (copies
    /// count against those limits with the routed traffic, so they never eat a backup's
    /// quota that failover may need).
    pub at_limit: AtomicU64,
    /// Copies answered by a backup, and copies that failed.
    pub answered: AtomicU64,
    pub failed: AtomicU64,
    /// Samples not stored: the store refused them, or too many were waiting for it.
    pub store_errors: AtomicU64,
    /// (UTC day, spend per route in pico-USD that day).
    spend: Mutex<(i64, HashMap<String, u64>)>,
}

impl ShadowStats {
    fn spent_today(&self, route: &str) -> u64 {
        let mut s = self.spend.lock().unwrap_or_else(PoisonError::into_inner);
        let today = utc_day();
        if s.0 != today {
            *s = (today, HashMap::new());
        }
        s.1.get(route).copied().unwrap_or(0)
    }

    fn spend(&self, route: &str, pusd: u64) {
        let mut s = self.spend.lock().unwrap_or_else(PoisonError::into_inner);
        let today = utc_day();
        if s.0 != today {
            *s = (today, HashMap::new());
        }
        *s.1.entry(route.to_owned()).or_default() += pusd;
    }

    pub fn render(&self, out: &mut String) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP relais_shadow_requests_total Shadow copies of live requests, by what became of them.\n# TYPE relais_shadow_requests_total counter\n");
        for (state, v) in [
            ("sampled", n(&self.sampled)),
            ("dropped_queue_full", n(&self.dropped)),
            ("skipped_budget", n(&self.over_budget)),
            ("skipped_policy", n(&self.policy)),
            ("skipped_backup_limits", n(&self.at_limit)),
            ("answered", n(&self.answered)),
            ("failed", n(&self.failed)),
        ] {
            out.push_str(&format!(
                "relais_shadow_requests_total{{state=\"{state}\"}} {v}\n"
            ));
        }
        out.push_str(&format!(
            "# HELP relais_shadow_store_errors_total Shadow samples the store did not take.\n# TYPE relais_shadow_store_errors_total counter\nrelais_shadow_store_errors_total {}\n",
            n(&self.store_errors)
        ));
    }
}

fn utc_day() -> i64 {
    crate::bill::now_ms().div_euclid(86_400_000)
}

/// What a copy needs beside the request: who sent the original, when, and how it went.
pub(crate) struct Job {
    pub sampled: Sampled,
    pub req: ChatRequest,
    pub live: Outcome,
    pub request_id: String,
    pub at_ms: i64,
    pub who: (Option<String>, Option<String>),
    pub ledger: Arc<Ledger>,
    /// The config the live request ran on (for the similarity route).
    pub config: Arc<Live>,
}

/// The queue and the workers behind it; one per process, kept across reloads.
pub struct Shadower {
    tx: mpsc::Sender<Job>,
    pub stats: Arc<ShadowStats>,
}

impl Shadower {
    /// Start the dispatcher. Needs a Tokio runtime.
    pub fn start(max_concurrent: usize, queue: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
        let stats = Arc::new(ShadowStats::default());
        let slots = Arc::new(Semaphore::new(max_concurrent.max(1)));
        let samples = spawn_sample_writer(stats.clone());
        let st = stats.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (st, samples) = (st.clone(), samples.clone());
                tokio::spawn(async move {
                    run(job, &st, &samples).await;
                    drop(permit);
                });
            }
        });
        Self { tx, stats }
    }

    /// Whether this live request is copied, and to which backups. `allow` is the request's
    /// own vendor and data-class policy: a copy goes nowhere the request itself could not.
    pub(crate) fn sample(
        &self,
        shadow: &Arc<ShadowRoute>,
        allow: impl Fn(&Deployment) -> bool,
    ) -> Option<Sampled> {
        if shadow.sample_rate <= 0.0 || fastrand::f64() >= shadow.sample_rate {
            return None;
        }
        if let Some(budget) = shadow.budget_per_day {
            if self.stats.spent_today(&shadow.route) >= budget {
                self.stats.over_budget.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let backups: Vec<usize> = (0..shadow.backups.len())
            .filter(|i| allow(&shadow.backups[*i]))
            .collect();
        if backups.is_empty() {
            self.stats.policy.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.stats.sampled.fetch_add(1, Ordering::Relaxed);
        Some(Sampled {
            shadow: shadow.clone(),
            backups,
        })
    }

    /// Queue a copy; when the queue is full it is dropped and counted, never waited for.
    pub(crate) fn submit(&self, job: Job) {
        if self.tx.try_send(job).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type SampleSender = mpsc::Sender<(ShadowSample, Arc<Ledger>)>;

/// Most samples written in one transaction, and the pause between transactions: at a high
/// sample rate one transaction per sample cost the live path's core more than the copies did.
const SAMPLE_BATCH: usize = 256;
const SAMPLE_PAUSE: Duration = Duration::from_millis(100);

/// The task that stores samples in batches; a full buffer drops a sample and counts it.
fn spawn_sample_writer(stats: Arc<ShadowStats>) -> SampleSender {
    let (tx, mut rx) = mpsc::channel::<(ShadowSample, Arc<Ledger>)>(SAMPLE_BATCH * 16);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(SAMPLE_BATCH);
        while let Some((first, ledger)) = rx.recv().await {
            batch.push(first);
            while batch.len() < SAMPLE_BATCH {
                match rx.try_recv() {
                    Ok((s, _)) => batch.push(s),
                    Err(_) => break,
                }
            }
            if let Err(e) = ledger.store().insert_samples(&batch).await {
                stats
                    .store_errors
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::warn!(error = %e, samples = batch.len(), "shadow samples could not be stored");
            }
            batch.clear();
            tokio::time::sleep(SAMPLE_PAUSE).await;
        }
    });
    tx
}

/// Whether an event is content (for time to first token).
fn is_content(ev: &StreamEvent) -> bool {
    !matches!(
        ev,
        StreamEvent::Start { .. } | StreamEvent::Usage(_) | StreamEvent::Finish(_)
    )
}

/// Send one copy to `d` and fold its answer.
async fn copy_to(
    d: &Deployment,
    req: &ChatRequest,
    timeout: Duration,
) -> (
    Result<relais_core::ChatResponse, Error>,
    Duration,
    Option<Duration>,
) {
    let start = Instant::now();
    let mut ttft = None;
    let run = async {
        let mut stream = d.provider.chat(&d.model, req).await?;
        let mut c = Collector::new();
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            if ttft.is_none() && is_content(&ev) {
                ttft = Some(start.elapsed());
            }
            c.push(&ev)?;
        }
        Ok(c.finish())
    };
    let result = match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(Error::upstream(
            relais_core::ErrorKind::Timeout,
            format!("the shadow copy took longer than {} s", timeout.as_secs()),
        )),
    };
    (result, start.elapsed(), ttft)
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Embedding similarity of the two texts through the configured embeddings route.
async fn embedding_similarity(config: &Live, route: &str, a: &str, b: &str) -> Option<f64> {
    let entry = config.entries.get(route)?;
    let req = EmbedRequest {
        model: route.to_owned(),
        input: vec![a.to_owned(), b.to_owned()],
        ..EmbedRequest::default()
    };
    let (_, resp, _, _) = entry.route.embed(&req, None).await.ok()?;
    match resp.embeddings.as_slice() {
        [x, y] => relais_planb::compare::cosine(x, y),
        _ => None,
    }
}

async fn run(job: Job, stats: &ShadowStats, samples: &SampleSender) {
    let Job {
        sampled,
        mut req,
        live,
        request_id,
        at_ms,
        who,
        ledger,
        config,
    } = job;
    // The copy is folded, never forwarded.
    req.passthrough = false;
    let shadow = &sampled.shadow;
    for &i in &sampled.backups {
        let Some(d) = shadow.backups.get(i) else {
            continue;
        };
        let now = tokio::time::Instant::now();
        let prompt = req.estimate_input_tokens();
        let worst = prompt + req.max_output_tokens.map_or(0, u64::from);
        if matches!(
            d.health.availability(now, &d.limits, || worst),
            relais_router::Availability::AtLimit { .. }
        ) {
            stats.at_limit.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        d.health.count_external(now, prompt);
        let (result, latency, ttft) = copy_to(d, &req, shadow.timeout).await;
        let usage = result.as_ref().ok().and_then(|r| r.usage);
        if let Some(u) = &usage {
            d.health
                .add_tokens(tokio::time::Instant::now(), u.output_tokens);
        }
        let cost = usage.as_ref().map_or(0, |u| crate::bill::cost_at(d, u));
        stats.spend(&shadow.route, cost);
        match &result {
            Ok(_) => stats.answered.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.failed.fetch_add(1, Ordering::Relaxed),
        };
        let err = result.as_ref().err();
        ledger.record(&[crate::bill::shadow_row(
            &crate::bill::ShadowBill {
                request_id: &request_id,
                at_ms,
                who: (who.0.as_deref(), who.1.as_deref()),
                route: &shadow.route,
                stream: req.stream,
            },
            d,
            usage.as_ref(),
            latency,
            ttft,
            err,
        )]);
        let outcome = Outcome {
            result: result.map_err(|e| e.kind.as_str().to_owned()),
            latency_us: us(latency),
            ttft_us: ttft.map(us),
            cost_pusd: cost,
        };
        let mut scores: Scores = relais_planb::compare(&req, &live, &outcome);
        if let (Some(route), Ok(a), Ok(b)) = (
            &config.runtime.plan_b.similarity_route,
            &live.result,
            &outcome.result,
        ) {
            if let Some(sim) = embedding_similarity(&config, route, &a.text, &b.text).await {
                scores.similarity = Some(sim);
            }
        }
        let sample = ShadowSample {
            id: crate::bill::row_id(at_ms),
            at_ms,
            route: shadow.route.clone(),
            backup: d.id.clone(),
            vendor: d.vendor.clone(),
            ok: scores.ok,
            scores: serde_json::to_string(&scores).unwrap_or_default(),
        };
        if samples.try_send((sample, ledger.clone())).is_err() {
            stats.store_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn store_error(e: relais_state::StoreError) -> Error {
    Error::new(
        relais_core::ErrorKind::Unavailable,
        relais_core::Side::Gateway,
        format!("ledger store: {e}"),
    )
}

/// The route's busiest minute in `[from_ms, to_ms)`: requests and tokens of live traffic.
async fn peak_minute(
    ledger: &Ledger,
    route: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<(u64, u64), Error> {
    let q = relais_state::UsageQuery {
        group_by: relais_state::GroupBy::Minute,
        from_ms,
        to_ms,
        category: "live".to_owned(),
        key_id: None,
        team_id: None,
        route: Some(route.to_owned()),
        drill: None,
    };
    let lines = ledger.store().usage(&q).await.map_err(store_error)?;
    Ok(lines.iter().fold((0, 0), |(r, t), l| {
        (
            r.max(l.requests),
            t.max(l.input_tokens.saturating_add(l.output_tokens)),
        )
    }))
}

/// One backup's readiness, as the admin API and `relais readiness` show it.
#[derive(serde::Serialize)]
pub struct BackupReadiness {
    pub route: String,
    pub primary: String,
    pub backup: String,
    pub vendor: String,
    #[serde(flatten)]
    pub readiness: relais_planb::Readiness,
    /// Samples and success rate per UTC day, oldest first.
    pub days: Vec<serde_json::Value>,
}

/// Readiness of every shadowed backup of `route` (of every shadowed route when `None`).
pub async fn readiness(live: &Live, route: Option<&str>) -> Result<Vec<BackupReadiness>, Error> {
    let ledger = crate::admin::ledger_of(live)?;
    if let Some(r) = route {
        if !live.runtime.shadows.contains_key(r) {
            return Err(Error::new(
                relais_core::ErrorKind::NotFound,
                relais_core::Side::Client,
                format!("route '{r}' has no shadow traffic configured (routes.{r}.shadow)"),
            )
            .with_param("route"));
        }
    }
    ledger.flush().await?;
    let s = &live.runtime.plan_b;
    let now = crate::bill::now_ms();
    let since = now - i64::from(s.window_days) * 86_400_000;
    let mut out = Vec::new();
    for (name, shadow) in &live.runtime.shadows {
        if route.is_some_and(|r| r != name) {
            continue;
        }
        let Some(entry) = live.entries.get(name) else {
            continue;
        };
        let (peak_rpm, peak_tpm) = peak_minute(&ledger, name, since, now + 1).await?;
        for d in &shadow.backups {
            let rows = ledger
                .store()
                .samples(name, Some(&d.id), since, s.window_samples)
                .await
                .map_err(store_error)?;
            let mut scores: Vec<(i64, Scores)> = rows
                .iter()
                .filter_map(|r| serde_json::from_str(&r.scores).ok().map(|sc| (r.at_ms, sc)))
                .collect();
            scores.reverse(); // oldest first
            let facts = relais_planb::BackupFacts {
                tools: d.capabilities.tools,
                images: d.capabilities.images,
                json_schema: d.capabilities.json_schema,
                rpm: d.limits.rpm,
                tpm: d.limits.tpm,
                peak_rpm,
                peak_tpm,
            };
            let only: Vec<Scores> = scores.iter().map(|(_, sc)| sc.clone()).collect();
            let readiness = relais_planb::assess(&only, &facts, &s.thresholds);
            let mut days: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
            for (at, sc) in &scores {
                let e = days.entry(at.div_euclid(86_400_000)).or_default();
                e.0 += 1;
                e.1 += u64::from(sc.ok);
            }
            out.push(BackupReadiness {
                route: name.clone(),
                primary: entry.route.deployments[0].id.clone(),
                backup: d.id.clone(),
                vendor: d.vendor.clone(),
                readiness,
                days: days
                    .into_iter()
                    .map(|(day, (n, ok))| {
                        serde_json::json!({
                            "date": relais_governance::date_of_day(day),
                            "samples": n,
                            "success_rate": ok as f64 / n.max(1) as f64,
                        })
                    })
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// Vendor shares and their concentration for one set of (vendor, requests, cost) totals.
pub(crate) fn concentration_json(totals: &[(String, u64, u64)]) -> serde_json::Value {
    let shares = relais_planb::shares(totals);
    serde_json::json!({
        "hhi_requests": relais_planb::hhi(shares.iter().map(|s| s.request_share)),
        "hhi_spend": relais_planb::hhi(shares.iter().map(|s| s.spend_share)),
        "vendors": shares,
    })
}

async fn vendor_totals(
    ledger: &Ledger,
    q: &relais_state::UsageQuery,
) -> Result<Vec<(String, u64, u64)>, Error> {
    let lines = ledger.store().usage(q).await.map_err(store_error)?;
    Ok(lines
        .into_iter()
        .map(|l| (l.group, l.requests, l.cost_pusd))
        .collect())
}

/// The dependency index over `[q.from_ms, q.to_ms)`: overall, per route, per team and per
/// day, each with every vendor's share of requests and spend and the HHI of both. `q`'s
/// filters (key, team, route) narrow everything.
pub async fn dependency(
    live: &Live,
    base: relais_state::UsageQuery,
) -> Result<serde_json::Value, Error> {
    use relais_state::GroupBy;
    let ledger = crate::admin::ledger_of(live)?;
    ledger.flush().await?;
    let with =
        |group_by: GroupBy, route: Option<String>, team: Option<String>| relais_state::UsageQuery {
            group_by,
            route: route.or_else(|| base.route.clone()),
            team_id: team.or_else(|| base.team_id.clone()),
            ..base.clone()
        };
    let overall = vendor_totals(&ledger, &with(GroupBy::Vendor, None, None)).await?;
    let mut routes = serde_json::Map::new();
    for r in vendor_totals(&ledger, &with(GroupBy::Route, None, None)).await? {
        let totals =
            vendor_totals(&ledger, &with(GroupBy::Vendor, Some(r.0.clone()), None)).await?;
        routes.insert(r.0, concentration_json(&totals));
    }
    let mut teams = serde_json::Map::new();
    for t in vendor_totals(&ledger, &with(GroupBy::Team, None, None)).await? {
        if t.0.is_empty() {
            continue; // requests without a virtual key
        }
        let totals =
            vendor_totals(&ledger, &with(GroupBy::Vendor, None, Some(t.0.clone()))).await?;
        teams.insert(t.0, concentration_json(&totals));
    }
    let mut by_day: std::collections::BTreeMap<i64, Vec<(String, u64, u64)>> = Default::default();
    for (group, requests, cost) in
        vendor_totals(&ledger, &with(GroupBy::DayVendor, None, None)).await?
    {
        let Some((day, vendor)) = group.split_once(':') else {
            continue;
        };
        if let Ok(day) = day.parse::<i64>() {
            by_day
                .entry(day)
                .or_default()
                .push((vendor.to_owned(), requests, cost));
        }
    }
    let days: Vec<serde_json::Value> = by_day
        .into_iter()
        .map(|(day, totals)| {
            let mut v = concentration_json(&totals);
            v["date"] = relais_governance::date_of_day(day).into();
            v
        })
        .collect();
    Ok(serde_json::json!({
        "from": relais_governance::date_of_day(base.from_ms.div_euclid(86_400_000)),
        "to": relais_governance::date_of_day((base.to_ms - 1).div_euclid(86_400_000)),
        "overall": concentration_json(&overall),
        "routes": routes,
        "teams": teams,
        "days": days,
    }))
}

/// The latest dependency check of one route.
#[derive(Debug, Clone, PartialEq)]
struct RouteCheck {
    hhi: u32,
    top_vendor: String,
    top_share: f64,
    alert: bool,
}

/// Dependency checks per route, for `/metrics` and the log.
#[derive(Default)]
pub struct Alerts {
    routes: Mutex<std::collections::BTreeMap<String, RouteCheck>>,
}

impl Alerts {
    pub fn render(&self, out: &mut String) {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if routes.is_empty() {
            return;
        }
        out.push_str("# HELP relais_dependency_hhi Concentration of a route's live requests on vendors over the last 24 hours (Herfindahl-Hirschman index, 0-10000).\n# TYPE relais_dependency_hhi gauge\n");
        for (r, c) in routes.iter() {
            out.push_str(&format!(
                "relais_dependency_hhi{{route=\"{r}\"}} {}\n",
                c.hhi
            ));
        }
        out.push_str("# HELP relais_dependency_alert 1 when one vendor carries more than plan_b.dependency_alert_percent of a route's requests and no backup of the route is ready.\n# TYPE relais_dependency_alert gauge\n");
        for (r, c) in routes.iter() {
            out.push_str(&format!(
                "relais_dependency_alert{{route=\"{r}\",vendor=\"{}\"}} {}\n",
                c.top_vendor,
                u8::from(c.alert)
            ));
        }
    }

    /// Whether `route` is alerting now (for tests and the CLI).
    pub fn alerting(&self, route: &str) -> Option<bool> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.get(route).map(|c| c.alert)
    }
}

/// Check every route's vendor concentration over the last 24 hours of live traffic: alert
/// (a warning in the log when it starts, and the `relais_dependency_alert` gauge) when one
/// vendor carries more than `plan_b.dependency_alert_percent` of its requests and none of its
/// backups is ready (shadowed and judged ready or ready with caveats).
pub async fn check_dependency(live: &Live, alerts: &Alerts) -> Result<(), Error> {
    let Some(ledger) = live.runtime.ledger.clone() else {
        return Ok(());
    };
    let now = crate::bill::now_ms();
    let mut checks = std::collections::BTreeMap::new();
    let ready = readiness(live, None).await.unwrap_or_default();
    for name in live.entries.keys() {
        let q = relais_state::UsageQuery {
            group_by: relais_state::GroupBy::Vendor,
            from_ms: now - 86_400_000,
            to_ms: now + 1,
            category: "live".to_owned(),
            key_id: None,
            team_id: None,
            route: Some(name.clone()),
            drill: None,
        };
        let totals = vendor_totals(&ledger, &q).await?;
        let shares = relais_planb::shares(&totals);
        let Some(top) = shares.first() else {
            continue;
        };
        let has_ready = ready.iter().any(|b| {
            &b.route == name
                && b.vendor != top.vendor
                && b.readiness.verdict != relais_planb::Verdict::NotReady
        });
        let alert = top.request_share > live.runtime.plan_b.alert_percent && !has_ready;
        checks.insert(
            name.clone(),
            RouteCheck {
                hhi: relais_planb::hhi(shares.iter().map(|s| s.request_share)),
                top_vendor: top.vendor.clone(),
                top_share: top.request_share,
                alert,
            },
        );
    }
    let mut routes = alerts.routes.lock().unwrap_or_else(PoisonError::into_inner);
    for (name, c) in &checks {
        let was = routes.get(name).is_some_and(|o| o.alert);
        if c.alert && !was {
            tracing::warn!(
                route = %name,
                vendor = %c.top_vendor,
                share = format!("{:.1}%", c.top_share),
                hhi = c.hhi,
                "dependency alert: one vendor carries the route and no backup is ready (see relais readiness)"
            );
        } else if !c.alert && was {
            tracing::info!(route = %name, "dependency alert over");
        }
    }
    *routes = checks;
    Ok(())
}

/// How a drill stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DrillState {
    Running,
    Completed,
    Aborted { reason: String },
    Stopped { by: String },
}

/// A failover drill: for a bounded time, `share` of a route's requests treat `deployment` as
/// down, so the failover path runs in production. It stops itself when the route's error rate
/// during the drill rises above `abort_error_rate`.
pub struct Drill {
    pub id: String,
    pub route: String,
    pub deployment: String,
    pub share: f64,
    pub started_at_ms: i64,
    pub ends_at_ms: i64,
    pub started_by: String,
    pub abort_error_rate: f64,
    pub min_requests: u64,
    /// Requests of the drilled share, those another deployment served, and those that failed.
    pub drilled: AtomicU64,
    pub failovers: AtomicU64,
    pub drilled_errors: AtomicU64,
    /// Every request of the route while the drill ran, and those that failed.
    pub route_requests: AtomicU64,
    pub route_errors: AtomicU64,
    /// Latency sums (microseconds) of drilled and other requests, for the delta.
    pub drilled_latency_us: AtomicU64,
    pub other_latency_us: AtomicU64,
    state: Mutex<DrillState>,
    ended_at_ms: AtomicU64,
}

/// A request's part in a drill: which drill, and whether it is in the drilled share.
pub(crate) struct InDrill {
    pub drill: Arc<Drill>,
    pub drilled: bool,
}

impl InDrill {
    /// Count how the request ended: served by `served` (a deployment id) or failed.
    pub(crate) fn outcome(&self, served: Option<&str>, latency: Duration) {
        let d = &self.drill;
        let failed = served.is_none();
        d.route_requests.fetch_add(1, Ordering::Relaxed);
        d.route_errors
            .fetch_add(u64::from(failed), Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if self.drilled {
            d.drilled.fetch_add(1, Ordering::Relaxed);
            d.drilled_errors
                .fetch_add(u64::from(failed), Ordering::Relaxed);
            d.failovers.fetch_add(
                u64::from(served.is_some_and(|s| s != d.deployment)),
                Ordering::Relaxed,
            );
            d.drilled_latency_us.fetch_add(us, Ordering::Relaxed);
        } else {
            d.other_latency_us.fetch_add(us, Ordering::Relaxed);
        }
        let n = d.route_requests.load(Ordering::Relaxed);
        let errors = d.route_errors.load(Ordering::Relaxed);
        if n >= d.min_requests && errors as f64 > d.abort_error_rate * n as f64 {
            d.end(DrillState::Aborted {
                reason: format!(
                    "the route's error rate reached {:.1}% ({errors} of {n} requests), above the abort threshold of {:.1}%",
                    errors as f64 * 100.0 / n as f64,
                    d.abort_error_rate * 100.0
                ),
            });
        }
    }
}

impl Drill {
    pub fn state(&self) -> DrillState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn running(&self, now_ms: i64) -> bool {
        now_ms < self.ends_at_ms && self.state() == DrillState::Running
    }

    /// End the drill (once); whoever ends it first decides how.
    pub fn end(&self, how: DrillState) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *s != DrillState::Running {
            return false;
        }
        if let DrillState::Aborted { reason } = &how {
            tracing::warn!(drill = %self.id, route = %self.route, %reason, "drill aborted");
        }
        *s = how;
        self.ended_at_ms.store(
            u64::try_from(crate::bill::now_ms()).unwrap_or(0),
            Ordering::Relaxed,
        );
        true
    }

    /// The drill as the admin API shows it, with its counters (not the ledger's view).
    pub fn json(&self) -> serde_json::Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mean = |sum: u64, count: u64| sum.checked_div(count).unwrap_or(0);
        let drilled = n(&self.drilled);
        let others = n(&self.route_requests).saturating_sub(drilled);
        let ended = n(&self.ended_at_ms);
        serde_json::json!({
            "id": self.id,
            "route": self.route,
            "deployment": self.deployment,
            "share": self.share,
            "started_by": self.started_by,
            "started_at": self.started_at_ms,
            "ends_at": self.ends_at_ms,
            "ended_at": (ended > 0).then_some(ended),
            "abort_error_rate": self.abort_error_rate,
            "min_requests": self.min_requests,
            "status": self.state(),
            "observed": {
                "route_requests": n(&self.route_requests),
                "route_errors": n(&self.route_errors),
                "drilled_requests": drilled,
                "failovers": n(&self.failovers),
                "drilled_errors": n(&self.drilled_errors),
                "drilled_mean_latency_us": mean(n(&self.drilled_latency_us), drilled),
                "other_mean_latency_us": mean(n(&self.other_latency_us), others),
            },
        })
    }
}

/// The drills of this process: running ones are consulted on every request of their route.
#[derive(Default)]
pub struct Drills {
    all: Mutex<Vec<Arc<Drill>>>,
    /// Whether any drill may be running: the live path reads only this when none is.
    any: std::sync::atomic::AtomicBool,
}

/// What a drill is asked to do (`POST /admin/drills`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillRequest {
    pub route: String,
    pub deployment: String,
    /// Share of the route's requests, in (0, 1].
    pub share: f64,
    pub duration_secs: u64,
    /// Default 0.2.
    pub abort_error_rate: Option<f64>,
    /// Requests before the abort threshold applies (default 10).
    pub min_requests: Option<u64>,
    /// Who started it (recorded).
    pub started_by: String,
}

impl Drills {
    /// The request's part in a running drill of `route`, if one runs.
    pub(crate) fn join(&self, route: &str) -> Option<InDrill> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let now = crate::bill::now_ms();
        let all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(drill) = all.iter().find(|d| d.route == route && d.running(now)) else {
            // Once every drill has ended, requests stop taking this lock (`start` sets the
            // flag again under the same lock).
            if !all.iter().any(|d| d.running(now)) {
                self.any.store(false, Ordering::Relaxed);
            }
            return None;
        };
        let drilled = fastrand::f64() < drill.share;
        Some(InDrill {
            drill: drill.clone(),
            drilled,
        })
    }

    pub fn get(&self, id: &str) -> Option<Arc<Drill>> {
        let all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        all.iter().find(|d| d.id == id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Drill>> {
        self.all
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Start a drill after checking it against the config: the route and deployment exist,
    /// another deployment can take the drilled share, no other drill runs on the route.
    pub fn start(&self, live: &Live, r: DrillRequest) -> Result<Arc<Drill>, Error> {
        let bad = |m: String| Error::bad_request(m);
        let entry = live
            .entries
            .get(&r.route)
            .ok_or_else(|| bad(format!("no route named '{}'", r.route)).with_param("route"))?;
        if entry.route.kind != relais_router::RouteKind::Chat {
            return Err(bad(format!(
                "route '{}' is not a chat route; drills exercise chat failover",
                r.route
            ))
            .with_param("route"));
        }
        if !entry.route.deployments.iter().any(|d| d.id == r.deployment) {
            let ids: Vec<&str> = entry
                .route
                .deployments
                .iter()
                .map(|d| d.id.as_str())
                .collect();
            return Err(bad(format!(
                "route '{}' has no deployment '{}' (it has: {})",
                r.route,
                r.deployment,
                ids.join(", ")
            ))
            .with_param("deployment"));
        }
        if entry.route.deployments.len() < 2 {
            return Err(bad(format!(
                "route '{}' has one deployment: there is nothing to fail over to",
                r.route
            )));
        }
        if !(r.share > 0.0 && r.share <= 1.0) {
            return Err(bad("share must be within (0, 1]".into()).with_param("share"));
        }
        if r.duration_secs == 0 || r.duration_secs > 86_400 {
            return Err(
                bad("duration_secs must be within [1, 86400]".into()).with_param("duration_secs")
            );
        }
        let abort = r.abort_error_rate.unwrap_or(0.2);
        if !(0.0..=1.0).contains(&abort) {
            return Err(
                bad("abort_error_rate must be within [0, 1]".into()).with_param("abort_error_rate")
            );
        }
        if r.started_by.trim().is_empty() {
            return Err(bad("started_by: say who starts the drill".into()).with_param("started_by"));
        }
        let now = crate::bill::now_ms();
        let mut all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = all.iter().find(|d| d.route == r.route && d.running(now)) {
            return Err(bad(format!(
                "drill {} is already running on route '{}'",
                d.id, r.route
            )));
        }
        let drill = Arc::new(Drill {
            id: format!("drill_{}", &crate::bill::row_id(now)[..20]),
            route: r.route,
            deployment: r.deployment,
            share: r.share,
            started_at_ms: now,
            ends_at_ms: now + i64::try_from(r.duration_secs).unwrap_or(86_400) * 1000,
            started_by: r.started_by,
            abort_error_rate: abort,
            min_requests: r.min_requests.unwrap_or(10).max(1),
            drilled: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            drilled_errors: AtomicU64::new(0),
            route_requests: AtomicU64::new(0),
            route_errors: AtomicU64::new(0),
            drilled_latency_us: AtomicU64::new(0),
            other_latency_us: AtomicU64::new(0),
            state: Mutex::new(DrillState::Running),
            ended_at_ms: AtomicU64::new(0),
        });
        // Finished drills are kept for their reports; the newest 100.
        if all.len() >= 100 {
            all.remove(0);
        }
        all.push(drill.clone());
        self.any.store(true, Ordering::Relaxed);
        tracing::info!(drill = %drill.id, route = %drill.route, deployment = %drill.deployment, share = drill.share, by = %drill.started_by, "drill started");
        Ok(drill)
    }
}

/// The drill's report: its own counters and the ledger's rows of its requests, so the two can
/// be checked against each other.
pub async fn drill_report(live: &Live, d: &Drill) -> Result<serde_json::Value, Error> {
    let mut v = d.json();
    if let Some(ledger) = &live.runtime.ledger {
        ledger.flush().await?;
        let end = match d.ended_at_ms.load(Ordering::Relaxed) {
            0 => d.ends_at_ms.min(crate::bill::now_ms()),
            e => i64::try_from(e).unwrap_or(i64::MAX),
        };
        let q = relais_state::UsageQuery {
            group_by: relais_state::GroupBy::Deployment,
            from_ms: d.started_at_ms,
            to_ms: end + 1,
            category: "live".to_owned(),
            key_id: None,
            team_id: None,
            route: Some(d.route.clone()),
            drill: Some(d.id.clone()),
        };
        let lines = ledger.store().usage(&q).await.map_err(store_error)?;
        let requests: u64 = lines.iter().map(|l| l.requests).sum();
        let errors: u64 = lines.iter().map(|l| l.errors).sum();
        let cost: u64 = lines.iter().map(|l| l.cost_pusd).sum();
        let by: serde_json::Map<String, serde_json::Value> = lines
            .iter()
            .map(|l| (l.group.clone(), l.requests.into()))
            .collect();
        v["ledger"] = serde_json::json!({
            "drilled_requests": requests,
            "drilled_errors": errors,
            "served_by": by,
            "cost_pusd": cost,
        });
    }
    Ok(v)
}

/// Write a drill (settings, state, counters) to the store's events.
pub async fn record_drill(live: &Live, d: &Drill) {
    let Some(ledger) = &live.runtime.ledger else {
        return;
    };
    let event = relais_state::PlanEvent {
        id: d.id.clone(),
        at_ms: d.started_at_ms,
        kind: "drill".to_owned(),
        route: d.route.clone(),
        body: d.json().to_string(),
    };
    if let Err(e) = ledger.store().put_event(&event).await {
        tracing::warn!(drill = %d.id, error = %e, "the drill could not be recorded in the store");
    }
}

/// The deployment `to` of `route`: one of its deployments or a shadow-only backup.
fn target<'a>(live: &'a Live, route: &str, to: &str) -> Result<&'a Deployment, Error> {
    let entry = live.entries.get(route).ok_or_else(|| {
        Error::bad_request(format!("no route named '{route}'")).with_param("route")
    })?;
    entry
        .route
        .deployments
        .iter()
        .chain(
            live.runtime
                .shadows
                .get(route)
                .into_iter()
                .flat_map(|s| s.backups.iter()),
        )
        .find(|d| d.id == to)
        .ok_or_else(|| {
            Error::bad_request(format!(
                "route '{route}' has no deployment or shadow backup '{to}'"
            ))
            .with_param("to")
        })
}

/// What making `to` the primary of `route` would change, from the last `window_days` of the
/// ledger and the shadow samples: traffic per day, cost per day now and at `to`'s prices for
/// the same tokens, the shadow-measured latency and cost ratio, capability gaps and limits.
pub async fn forecast(live: &Live, route: &str, to: &str) -> Result<serde_json::Value, Error> {
    let d = target(live, route, to)?;
    let primary = &live.entries[route].route.deployments[0];
    let ledger = crate::admin::ledger_of(live)?;
    ledger.flush().await?;
    let s = &live.runtime.plan_b;
    let now = crate::bill::now_ms();
    let q = relais_state::UsageQuery {
        group_by: relais_state::GroupBy::Day,
        from_ms: now - i64::from(s.window_days) * 86_400_000,
        to_ms: now + 1,
        category: "live".to_owned(),
        key_id: None,
        team_id: None,
        route: Some(route.to_owned()),
        drill: None,
    };
    let days = ledger.store().usage(&q).await.map_err(store_error)?;
    let n_days = days.len().max(1) as u64;
    let sum = |f: fn(&relais_state::UsageLine) -> u64| days.iter().map(f).sum::<u64>();
    let tokens = relais_core::Usage {
        input_tokens: sum(|l| l.input_tokens),
        output_tokens: sum(|l| l.output_tokens),
        cache_read_tokens: sum(|l| l.cache_read_tokens),
        cache_write_tokens: sum(|l| l.cache_write_tokens),
        reasoning_tokens: sum(|l| l.reasoning_tokens),
    };
    let requests = sum(|l| l.requests);
    let cost_now = sum(|l| l.cost_pusd);
    let cost_at_target = d.price.map(|_| crate::bill::cost_at(d, &tokens));
    let shadow = readiness(live, Some(route))
        .await
        .ok()
        .and_then(|all| all.into_iter().find(|b| b.backup == to));
    let usd = |p: u64| relais_governance::usd(p).trim_start_matches('$').to_owned();
    Ok(serde_json::json!({
        "route": route,
        "from": primary.id,
        "to": d.id,
        "window_days": s.window_days,
        "days_with_traffic": days.len(),
        "requests": requests,
        "requests_per_day": requests / n_days,
        "tokens": {
            "input": tokens.input_tokens,
            "output": tokens.output_tokens,
            "cache_read": tokens.cache_read_tokens,
        },
        "cost_per_day_pusd": cost_now / n_days,
        "cost_per_day_usd": usd(cost_now / n_days),
        // The same tokens at the new primary's prices (None: it has no price).
        "forecast_cost_per_day_pusd": cost_at_target.map(|c| c / n_days),
        "forecast_cost_per_day_usd": cost_at_target.map(|c| usd(c / n_days)),
        // As measured by shadow traffic (answers of other lengths included).
        "shadow_cost_ratio": shadow.as_ref().and_then(|b| b.readiness.cost_ratio),
        "latency": shadow.as_ref().map(|b| serde_json::json!({
            "now": b.readiness.live_latency,
            "forecast": b.readiness.latency,
            "ttft_now": b.readiness.live_ttft,
            "ttft_forecast": b.readiness.ttft,
        })),
        "capability_gaps": shadow.as_ref().map(|b| b.readiness.capability_gaps.clone()),
        "limits": {
            "rpm": d.limits.rpm,
            "tpm": d.limits.tpm,
            "peak_rpm": shadow.as_ref().map(|b| b.readiness.limits.peak_rpm),
            "peak_tpm": shadow.as_ref().map(|b| b.readiness.limits.peak_tpm),
        },
        "readiness": shadow.as_ref().map(|b| serde_json::json!({
            "verdict": b.readiness.verdict,
            "samples": b.readiness.samples,
            "reasons": b.readiness.reasons,
        })),
    }))
}

/// Build the running config again with `promoted` in force, the way a reload does.
fn build_with(
    app: &crate::app::AppState,
    promoted: &std::collections::BTreeMap<String, String>,
) -> Result<crate::config::Runtime, Error> {
    let live = app.live();
    let rt = &live.runtime;
    crate::config::parse(&rt.source, &rt.origin)
        .and_then(|mut raw| {
            crate::config::apply_promotions(&mut raw, promoted, &rt.origin)?;
            crate::config::rebuild(&raw, &rt.source, &rt.origin, rt)
        })
        .map_err(|e| Error::bad_request(format!("the promoted config does not build: {e}")))
}

/// [`build_with`], then swap it in.
fn rebuild_with(
    app: &crate::app::AppState,
    promoted: &std::collections::BTreeMap<String, String>,
) -> Result<(), Error> {
    app.install(build_with(app, promoted)?);
    Ok(())
}

/// Make `to` the primary of `route` (or undo the route's promotion when `to` is `None`):
/// recorded with who did it, in force until undone, across reloads and restarts.
pub async fn promote(
    app: &crate::app::AppState,
    route: &str,
    to: Option<&str>,
    by: &str,
) -> Result<serde_json::Value, Error> {
    let live = app.live();
    let before = live
        .entries
        .get(route)
        .ok_or_else(|| Error::bad_request(format!("no route named '{route}'")).with_param("route"))?
        .route
        .deployments[0]
        .id
        .clone();
    let mut promoted = app.promotions();
    match to {
        Some(to) => {
            target(&live, route, to)?;
            if before == to {
                return Err(Error::bad_request(format!(
                    "'{to}' is already the primary of route '{route}'"
                )));
            }
            promoted.insert(route.to_owned(), to.to_owned());
        }
        None => {
            if promoted.remove(route).is_none() {
                return Err(Error::bad_request(format!(
                    "route '{route}' has no promotion to undo"
                )));
            }
        }
    }
    // Built first (a promotion that does not build changes nothing), recorded next (other
    // instances, and this one's own sync, read the store), swapped in last.
    let runtime = build_with(app, &promoted)?;
    let after = runtime
        .routes
        .get(route)
        .map(|r| r.deployments[0].id.clone())
        .unwrap_or_default();
    let now = crate::bill::now_ms();
    let body = serde_json::json!({
        "route": route,
        "from": before,
        "to": after,
        "undo": to.is_none(),
        "by": by,
        "at": now,
    });
    if let Some(ledger) = &live.runtime.ledger {
        let event = relais_state::PlanEvent {
            id: format!("promotion_{}", crate::bill::row_id(now)),
            at_ms: now,
            kind: "promotion".to_owned(),
            route: route.to_owned(),
            body: body.to_string(),
        };
        ledger
            .store()
            .put_event(&event)
            .await
            .map_err(store_error)?;
    }
    app.install(runtime);
    *app.promoted.lock().unwrap_or_else(PoisonError::into_inner) = promoted;
    tracing::warn!(%route, from = %before, to = %after, %by, undo = to.is_none(), "route primary changed by promotion");
    Ok(body)
}

/// The promotions in force according to the store: the newest event of each route decides
/// (an undo clears it); one that no longer fits the config is logged and skipped.
async fn recorded_promotions(live: &Live) -> Option<std::collections::BTreeMap<String, String>> {
    let ledger = live.runtime.ledger.as_ref()?;
    let events = match ledger.store().events("promotion", None, 10_000).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "promotions could not be read from the store");
            return None;
        }
    };
    let mut promoted = std::collections::BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in events {
        if !seen.insert(e.route.clone()) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&e.body) else {
            continue;
        };
        if v["undo"] == true {
            continue;
        }
        if let Some(to) = v["to"].as_str() {
            if target(live, &e.route, to).is_ok() {
                promoted.insert(e.route.clone(), to.to_owned());
            } else {
                tracing::warn!(route = %e.route, %to, "a recorded promotion no longer fits the config; skipped");
            }
        }
    }
    Some(promoted)
}

/// Bring this instance's promotions in line with the store: at start, and then every
/// `check_secs`, so a promotion (or undo) made on one instance of a cluster reaches the others.
pub async fn sync_promotions(app: &crate::app::AppState) {
    let live = app.live();
    let Some(promoted) = recorded_promotions(&live).await else {
        return;
    };
    if promoted == app.promotions() {
        return;
    }
    match rebuild_with(app, &promoted) {
        Ok(()) => {
            tracing::info!(routes = promoted.len(), "promotions from the store applied");
            *app.promoted.lock().unwrap_or_else(PoisonError::into_inner) = promoted;
        }
        Err(e) => {
            tracing::warn!(error = %e.message, "promotions from the store could not be applied")
        }
    }
}
