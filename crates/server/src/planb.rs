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
    /// Copies answered by a backup, and copies that failed.
    pub answered: AtomicU64,
    pub failed: AtomicU64,
    /// Samples the store did not take.
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
        let st = stats.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    run(job, &st).await;
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

async fn run(job: Job, stats: &ShadowStats) {
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
        let (result, latency, ttft) = copy_to(d, &req, shadow.timeout).await;
        let usage = result.as_ref().ok().and_then(|r| r.usage);
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
        if let Err(e) = ledger.store().insert_samples(&[sample]).await {
            stats.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, route = %shadow.route, "a shadow sample could not be stored");
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
    let ledger = live.runtime.ledger.clone().ok_or_else(|| {
        Error::new(
            relais_core::ErrorKind::NotFound,
            relais_core::Side::Client,
            "no ledger: configure [governance]",
        )
    })?;
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
    let ledger = live.runtime.ledger.clone().ok_or_else(|| {
        Error::new(
            relais_core::ErrorKind::NotFound,
            relais_core::Side::Client,
            "no ledger: configure [governance]",
        )
    })?;
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
