//! Shadow traffic: a sampled live request is copied to each of its route's backups after it
//! ends, off the live path.
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

use crate::caller::OwnedPayer;
use crate::clock::{us, utc_day};
use crate::config::ShadowRoute;
use crate::live::Live;
use crate::metrics::{Prom, labels};

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

    pub fn render(&self, p: &mut Prom) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let name = "relais_shadow_requests_total";
        p.family(
            name,
            "counter",
            "Shadow copies of live requests, by what became of them.",
        );
        for (state, v) in [
            ("sampled", n(&self.sampled)),
            ("dropped_queue_full", n(&self.dropped)),
            ("skipped_budget", n(&self.over_budget)),
            ("skipped_policy", n(&self.policy)),
            ("skipped_backup_limits", n(&self.at_limit)),
            ("answered", n(&self.answered)),
            ("failed", n(&self.failed)),
        ] {
            p.sample(name, &labels(&[("state", state)]), v);
        }
        let name = "relais_shadow_store_errors_total";
        p.family(name, "counter", "Shadow samples the store did not take.");
        p.sample(name, "", n(&self.store_errors));
    }
}

/// What a copy needs beside the request: who sent the original, when, and how it went.
pub(crate) struct Job {
    pub sampled: Sampled,
    pub req: ChatRequest,
    pub live: Outcome,
    pub request_id: String,
    pub at_ms: i64,
    pub payer: OwnedPayer,
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

/// Embedding similarity of the two texts through the configured embeddings route.
async fn embedding_similarity(config: &Live, route: &str, a: &str, b: &str) -> Option<f64> {
    let entry = config.entries.get(route)?;
    let req = EmbedRequest {
        model: route.to_owned(),
        input: vec![a.to_owned(), b.to_owned()],
        ..EmbedRequest::default()
    };
    let (_, resp, ..) = entry.route.embed(&req, None).await.ok()?;
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
        payer,
        ledger,
        config,
    } = job;
    // The copy is folded, never forwarded: its answer is decoded, whatever the client spoke.
    req.decode_answer();
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
                payer: payer.borrow(),
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
