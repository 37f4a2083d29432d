//! Prometheus metrics with no locks on the request path: every (route, deployment) series is
//! created when the config is built, and requests only touch atomics.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use relais_core::{ErrorKind, Usage};
use relais_router::Health;

const KINDS: usize = ErrorKind::ALL.len();

/// A router series shown per deployment: metric name, type, help text, how to read it.
type RouterSeries = (&'static str, &'static str, &'static str, fn(&Health) -> u64);

/// Latency bucket bounds in seconds: from sub-millisecond gateway work to multi-minute streams.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(crate::clock::us(d), Ordering::Relaxed);
    }

    fn render(&self, p: &mut Prom, name: &str, labels: &str) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            p.sample(&bucket, &with(labels, "le", &b.to_string()), cumulative);
        }
        let count = self.count.load(Ordering::Relaxed);
        p.sample(&bucket, &with(labels, "le", "+Inf"), count);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        p.sample(&format!("{name}_sum"), labels, sum);
        p.sample(&format!("{name}_count"), labels, count);
    }
}

/// Everything measured for one deployment of one route.
pub struct Series {
    route: String,
    deployment: String,
    provider: String,
    pub ok: AtomicU64,
    errors: [AtomicU64; KINDS],
    failed_attempts: [AtomicU64; KINDS],
    pub canceled: AtomicU64,
    pub duration: Histogram,
    pub ttft: Histogram,
    tokens: [AtomicU64; 5],
    /// The router's live view of the deployment (attempts, retries, ejections, breaker).
    health: Arc<Health>,
}

impl Series {
    pub fn new(route: &str, deployment: &str, provider: &str, health: Arc<Health>) -> Self {
        Self {
            route: route.to_owned(),
            deployment: deployment.to_owned(),
            provider: provider.to_owned(),
            ok: AtomicU64::new(0),
            errors: Default::default(),
            failed_attempts: Default::default(),
            canceled: AtomicU64::new(0),
            duration: Histogram::default(),
            ttft: Histogram::default(),
            tokens: Default::default(),
            health,
        }
    }

    /// The same series, for a reloaded deployment with the same route and id.
    pub fn is_for(&self, route: &str, deployment: &str) -> bool {
        self.route == route && self.deployment == deployment
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed_attempt(&self, kind: ErrorKind) {
        self.failed_attempts[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn tokens(&self, u: &Usage) {
        for (i, n) in [
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
        ]
        .into_iter()
        .enumerate()
        {
            if n > 0 {
                self.tokens[i].fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn labels(&self) -> String {
        labels(&[
            ("route", &self.route),
            ("deployment", &self.deployment),
            ("provider", &self.provider),
        ])
    }
}

/// The one writer of the Prometheus text exposition format: metric families with their help
/// and type, samples with escaped labels. Every `/metrics` figure goes through it.
#[derive(Default)]
pub struct Prom(String);

impl Prom {
    /// A family's `# HELP` and `# TYPE` lines (`kind`: counter, gauge, histogram).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` as [`labels`] renders them (empty: none).
    pub fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    /// The text.
    pub fn finish(self) -> String {
        self.0
    }
}

/// Labels as the text format writes them, `a="x",b="y"`, values escaped.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out
}

/// `base` with one more label.
fn with(base: &str, key: &str, value: &str) -> String {
    let extra = labels(&[(key, value)]);
    if base.is_empty() {
        extra
    } else {
        format!("{base},{extra}")
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Process-wide counters that do not belong to a route.
#[derive(Default)]
pub struct Global {
    pub inflight: AtomicI64,
    /// Requests refused before reaching a route (bad input, auth, unknown route), by class.
    rejected: [AtomicU64; KINDS],
    /// Admin changes made whose audit entry could not be written.
    pub audit_failures: AtomicU64,
}

impl Global {
    pub fn rejected(&self, kind: ErrorKind) {
        self.rejected[kind.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Render the gateway's own series into `p`.
pub fn render<'a>(p: &mut Prom, global: &Global, series: impl Iterator<Item = &'a Series> + Clone) {
    p.family(
        "relais_inflight_requests",
        "gauge",
        "Requests being served now.",
    );
    p.sample(
        "relais_inflight_requests",
        "",
        global.inflight.load(Ordering::Relaxed),
    );
    p.family(
        "relais_audit_write_failures_total",
        "counter",
        "Admin changes made whose audit log entry could not be written to the store.",
    );
    p.sample(
        "relais_audit_write_failures_total",
        "",
        global.audit_failures.load(Ordering::Relaxed),
    );
    p.family(
        "relais_rejected_total",
        "counter",
        "Requests refused before routing, by error class.",
    );
    for k in ErrorKind::ALL {
        let n = global.rejected[k.index()].load(Ordering::Relaxed);
        if n > 0 {
            p.sample(
                "relais_rejected_total",
                &labels(&[("class", k.as_str())]),
                n,
            );
        }
    }
    p.family(
        "relais_requests_total",
        "counter",
        "Routed requests by outcome (ok, error class, canceled).",
    );
    for s in series.clone() {
        let l = s.labels();
        let name = "relais_requests_total";
        p.sample(
            name,
            &with(&l, "outcome", "ok"),
            s.ok.load(Ordering::Relaxed),
        );
        p.sample(
            name,
            &with(&l, "outcome", "canceled"),
            s.canceled.load(Ordering::Relaxed),
        );
        for k in ErrorKind::ALL {
            let n = s.errors[k.index()].load(Ordering::Relaxed);
            if n > 0 {
                p.sample(name, &with(&l, "outcome", k.as_str()), n);
            }
        }
    }
    for (name, help, counts) in [
        (
            "relais_errors_total",
            "Failed requests by error class.",
            (|s: &Series| &s.errors) as fn(&Series) -> &[AtomicU64; KINDS],
        ),
        (
            "relais_failed_attempts_total",
            "Upstream attempts that failed and were failed over or returned, by class.",
            |s: &Series| &s.failed_attempts,
        ),
    ] {
        p.family(name, "counter", help);
        for s in series.clone() {
            let l = s.labels();
            for k in ErrorKind::ALL {
                let n = counts(s)[k.index()].load(Ordering::Relaxed);
                if n > 0 {
                    p.sample(name, &with(&l, "class", k.as_str()), n);
                }
            }
        }
    }
    p.family(
        "relais_tokens_total",
        "counter",
        "Tokens by kind, as reported by the upstream.",
    );
    for s in series.clone() {
        let l = s.labels();
        for (i, kind) in ["input", "output", "cache_read", "cache_write", "reasoning"]
            .iter()
            .enumerate()
        {
            p.sample(
                "relais_tokens_total",
                &with(&l, "kind", kind),
                s.tokens[i].load(Ordering::Relaxed),
            );
        }
    }
    let router: [RouterSeries; 6] = [
        (
            "relais_attempts_total",
            "counter",
            "Upstream attempts, first tries and retries.",
            |h| h.attempts.load(Ordering::Relaxed),
        ),
        (
            "relais_retries_total",
            "counter",
            "Attempts that retried a request that had already failed once.",
            |h| h.retries.load(Ordering::Relaxed),
        ),
        (
            "relais_failovers_total",
            "counter",
            "Failed attempts after which the request moved to another deployment.",
            |h| h.failovers.load(Ordering::Relaxed),
        ),
        (
            "relais_ejections_total",
            "counter",
            "Times the circuit breaker took the deployment out of rotation.",
            |h| h.ejections.load(Ordering::Relaxed),
        ),
        (
            "relais_deployment_ejected",
            "gauge",
            "Whether the breaker holds the deployment out of rotation (1) or not (0).",
            |h| u64::from(h.is_ejected()),
        ),
        (
            "relais_deployment_inflight",
            "gauge",
            "Attempts in flight on the deployment.",
            |h| u64::from(h.inflight()),
        ),
    ];
    for (name, kind, help, read) in router {
        p.family(name, kind, help);
        for s in series.clone() {
            p.sample(name, &s.labels(), read(&s.health));
        }
    }
    p.family(
        "relais_request_duration_seconds",
        "histogram",
        "Whole request time, upstream included.",
    );
    for s in series.clone() {
        s.duration
            .render(p, "relais_request_duration_seconds", &s.labels());
    }
    p.family(
        "relais_time_to_first_token_seconds",
        "histogram",
        "Time until the first event of a response.",
    );
    for s in series {
        s.ttft
            .render(p, "relais_time_to_first_token_seconds", &s.labels());
    }
}
