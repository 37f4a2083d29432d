//! What a route knows, live, about each of its deployments: its circuit breaker, a cool-down a
//! vendor asked for, a latency estimate, the requests in flight and the counts shown in metrics
//! and `/admin/routes`.
//!
//! State changes happen under a short `std::sync::Mutex` that is never held across an await;
//! in-flight counts and counters are atomics so reading them never blocks a request.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use relais_core::{Error, ErrorKind};
use tokio::time::Instant;

use crate::window::Window;

/// When a deployment is taken out of rotation, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive failures that eject a deployment (0: never on a count).
    pub consecutive_failures: u32,
    /// Failure share over `window` that ejects it (0: never on a rate) ...
    pub failure_rate: f64,
    /// ... once at least this many attempts were seen in the window.
    pub min_requests: u32,
    pub window: Duration,
    /// The first ejection lasts this long; each further one doubles it, up to `max_ejection`.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Never eject more than this share of a route's deployments at once.
    pub max_ejected_share: f64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(30),
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.5,
        }
    }
}

/// Peak-EWMA latency estimation, as in linkerd and Finagle: a slower sample replaces the
/// estimate at once (react to trouble fast), a faster one moves it gradually, and with no
/// samples it decays toward zero, so a deployment that was slow is tried again after a while
/// instead of being starved forever.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyPolicy {
    /// Estimate for a deployment never measured. Not zero: an unmeasured deployment would
    /// otherwise win every comparison.
    pub default_rtt: Duration,
    /// Time constant of the decay.
    pub decay: Duration,
}

impl Default for LatencyPolicy {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(300),
            decay: Duration::from_secs(10),
        }
    }
}

/// What the vendor contract allows one deployment, so traffic spreads before it answers 429.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeploymentLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrent: Option<u32>,
}

/// Whether a deployment can take an attempt now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Ready,
    /// Its ejection ran out: the next attempt is the half-open probe.
    Probe,
    /// Half-open with a probe already out.
    Probing,
    Ejected {
        until: Instant,
    },
    /// A vendor's `retry-after` or a 429/529.
    Cooling {
        until: Instant,
    },
    /// At a configured RPM/TPM/concurrency limit.
    AtLimit {
        until: Instant,
    },
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "healthy",
            Self::Probe | Self::Probing => "half_open",
            Self::Ejected { .. } => "ejected",
            Self::Cooling { .. } => "cooling_down",
            Self::AtLimit { .. } => "at_limit",
        }
    }
}

#[derive(Debug)]
struct State {
    consecutive: u32,
    /// Successes and failures.
    outcomes: Window,
    ejected_until: Option<Instant>,
    /// Ejections in a row, for the growing backoff; forgotten after `max_ejection` of health.
    ejections_in_row: u32,
    recovered_at: Option<Instant>,
    probe_out: bool,
    cooling_until: Option<Instant>,
    /// Peak-EWMA estimate in seconds, and when it was last updated; `None` until measured.
    rtt: Option<(f64, Instant)>,
    /// Requests and tokens, over one minute.
    usage: Window,
    /// When this health record began: an unmeasured deployment's default estimate decays from
    /// here like a measured one, so a deployment that never got a first request is tried.
    born: Instant,
}

/// Live health of one deployment. Shared (`Arc`) so a reloaded config keeps it for a
/// deployment that is still there.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    inflight: AtomicU32,
    pub attempts: AtomicU64,
    pub failures: AtomicU64,
    /// Attempts that were retries of a request that had already failed elsewhere or here.
    pub retries: AtomicU64,
    /// Failed attempts after which the request moved on to another deployment.
    pub failovers: AtomicU64,
    pub ejections: AtomicU64,
}

/// A read-only view, for `/admin/routes`.
#[derive(Debug, Clone)]
pub struct HealthSnapshot {
    pub state: &'static str,
    /// Until it is tried again (ejected, cooling down or at its limit).
    pub unavailable_for: Option<Duration>,
    pub consecutive_failures: u32,
    pub window_successes: u64,
    pub window_failures: u64,
    pub latency_estimate: Option<Duration>,
    pub inflight: u32,
    pub attempts: u64,
    pub failures: u64,
    pub retries: u64,
    pub failovers: u64,
    pub ejections: u64,
    pub minute_requests: u64,
    pub minute_tokens: u64,
}

/// How an attempt ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted as a failure; `true` when the breaker wants the deployment ejected.
    Failure { eject: bool },
    /// A vendor asked us to slow down: cooled down, not counted against health.
    CooledDown,
    /// Not the deployment's fault (a client error): nothing recorded.
    Neutral,
}

/// Cool-down after a 429 or 529 that named no `retry-after`.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(1);
/// Upper bound on a vendor's `retry-after`, so a bogus header cannot park a deployment for days.
const MAX_COOLDOWN: Duration = Duration::from_secs(600);

impl Health {
    pub fn new(now: Instant, breaker: &BreakerPolicy) -> Self {
        Self {
            state: Mutex::new(State {
                consecutive: 0,
                outcomes: Window::new(breaker.window, now),
                ejected_until: None,
                ejections_in_row: 0,
                recovered_at: None,
                probe_out: false,
                cooling_until: None,
                rtt: None,
                usage: Window::new(Duration::from_secs(60), now),
                born: now,
            }),
            inflight: AtomicU32::new(0),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain counters: a panic elsewhere cannot leave it inconsistent enough
        // to matter, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether an attempt may go here now. `tokens` is the request's estimated size, checked
    /// only when a TPM limit is set.
    pub fn availability(
        &self,
        now: Instant,
        limits: &DeploymentLimits,
        tokens: impl FnOnce() -> u64,
    ) -> Availability {
        let s = self.lock();
        if let Some(until) = s.ejected_until {
            if until > now {
                return Availability::Ejected { until };
            }
            return if s.probe_out {
                Availability::Probing
            } else {
                Availability::Probe
            };
        }
        if let Some(until) = s.cooling_until.filter(|u| *u > now) {
            return Availability::Cooling { until };
        }
        if let Some(max) = limits.concurrent {
            if self.inflight() >= max {
                // Frees when a request ends; a short pause is the honest retry hint.
                return Availability::AtLimit {
                    until: now + Duration::from_millis(100),
                };
            }
        }
        if limits.rpm.is_some() || limits.tpm.is_some() {
            let (requests, used) = s.usage.sum(now);
            let over_rpm = limits.rpm.is_some_and(|max| requests >= max);
            let over_tpm = limits.tpm.is_some_and(|max| used + tokens() > max);
            if over_rpm || over_tpm {
                return Availability::AtLimit {
                    until: now + s.usage.oldest_expiry(now).max(Duration::from_millis(100)),
                };
            }
        }
        Availability::Ready
    }

    /// Claim the half-open probe; `false` when another request already holds it.
    pub fn try_probe(&self, now: Instant) -> bool {
        let mut s = self.lock();
        match s.ejected_until {
            Some(until) if until <= now && !s.probe_out => {
                s.probe_out = true;
                true
            }
            _ => false,
        }
    }

    /// An attempt starts: count it, in flight and against the deployment's limits.
    pub fn begin(&self, now: Instant, tokens: u64, retry: bool) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if retry {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        self.lock().usage.add(now, 1, tokens);
    }

    pub(crate) fn end(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request sent here outside the router (a shadow copy): counted against the RPM and
    /// TPM window, so the deployment's limits hold for routed and copied traffic together.
    pub fn count_external(&self, now: Instant, tokens: u64) {
        self.lock().usage.add(now, 1, tokens);
    }

    /// Output tokens reported at the end of a response, for the TPM window.
    pub fn add_tokens(&self, now: Instant, tokens: u64) {
        if tokens > 0 {
            self.lock().usage.add(now, 0, tokens);
        }
    }

    /// The attempt produced its first event after `latency`: healthy, and a latency sample.
    pub fn success(&self, now: Instant, latency: Duration, policy: &LatencyPolicy) {
        let mut s = self.lock();
        s.consecutive = 0;
        s.outcomes.add(now, 1, 0);
        if s.ejected_until.is_some() {
            // The probe came back: close the breaker.
            s.ejected_until = None;
            s.probe_out = false;
            s.recovered_at = Some(now);
            s.outcomes = Window::new(s.outcomes.len(), now);
        }
        let sample = latency.as_secs_f64();
        s.rtt = Some(match s.rtt {
            None => (sample, now),
            Some((prev, at)) => {
                let decayed = decay(prev, now.saturating_duration_since(at), policy.decay);
                if sample > decayed {
                    (sample, now)
                } else {
                    let w = (-now.saturating_duration_since(at).as_secs_f64()
                        / policy.decay.as_secs_f64().max(1e-9))
                    .exp();
                    (decayed * w + sample * (1.0 - w), now)
                }
            }
        });
    }

    /// Record a failed attempt and say what the breaker makes of it.
    pub fn failure(&self, now: Instant, err: &Error, policy: &BreakerPolicy) -> Verdict {
        match err.kind {
            ErrorKind::RateLimited | ErrorKind::Overloaded
                if err.kind == ErrorKind::RateLimited || err.retry_after().is_some() =>
            {
                let wait = err
                    .retry_after()
                    .unwrap_or(DEFAULT_COOLDOWN)
                    .min(MAX_COOLDOWN);
                let mut s = self.lock();
                let until = now + wait;
                s.cooling_until = Some(s.cooling_until.map_or(until, |u| u.max(until)));
                if s.ejected_until.is_some() && s.probe_out {
                    // A probe answered "slow down": it is alive. Close, but cool down.
                    s.ejected_until = None;
                    s.probe_out = false;
                    s.recovered_at = Some(now);
                }
                Verdict::CooledDown
            }
            ErrorKind::Server
            | ErrorKind::Overloaded
            | ErrorKind::Timeout
            | ErrorKind::Connect
            | ErrorKind::Protocol
            | ErrorKind::Auth
            | ErrorKind::Internal => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let mut s = self.lock();
                s.consecutive = s.consecutive.saturating_add(1);
                s.outcomes.add(now, 0, 1);
                if s.ejected_until.is_some() {
                    // The half-open probe failed: straight back out, for longer.
                    return Verdict::Failure { eject: true };
                }
                let (ok, failed) = s.outcomes.sum(now);
                let by_count =
                    policy.consecutive_failures > 0 && s.consecutive >= policy.consecutive_failures;
                let total = ok + failed;
                let by_rate = policy.failure_rate > 0.0
                    && total >= u64::from(policy.min_requests.max(1))
                    && failed as f64 >= policy.failure_rate * total as f64;
                Verdict::Failure {
                    eject: by_count || by_rate,
                }
            }
            _ => Verdict::Neutral,
        }
    }

    /// Whether the deployment is ejected right now (half-open counts as ejected).
    pub fn is_ejected(&self) -> bool {
        self.lock().ejected_until.is_some()
    }

    /// Take the deployment out of rotation for a backoff that doubles with each ejection in a
    /// row.
    pub fn eject(&self, now: Instant, policy: &BreakerPolicy) -> Duration {
        self.ejections.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        let healthy_long = s
            .recovered_at
            .is_some_and(|at| now.saturating_duration_since(at) >= policy.max_ejection);
        if healthy_long {
            s.ejections_in_row = 0;
        }
        s.ejections_in_row = s.ejections_in_row.saturating_add(1);
        let factor = 2u32.saturating_pow(s.ejections_in_row.saturating_sub(1).min(20));
        let wait = policy
            .base_ejection
            .saturating_mul(factor)
            .min(policy.max_ejection);
        s.ejected_until = Some(now + wait);
        s.probe_out = false;
        s.consecutive = 0;
        s.outcomes = Window::new(policy.window, now);
        wait
    }

    /// A probe that ended neither way (the client left): let the next request probe.
    pub fn release_probe(&self) {
        self.lock().probe_out = false;
    }

    /// Latency estimate in seconds now, decayed since its last sample.
    pub fn latency(&self, now: Instant, policy: &LatencyPolicy) -> f64 {
        let s = self.lock();
        let (v, at) = s.rtt.unwrap_or((policy.default_rtt.as_secs_f64(), s.born));
        decay(v, now.saturating_duration_since(at), policy.decay)
    }

    pub fn snapshot(
        &self,
        now: Instant,
        limits: &DeploymentLimits,
        latency: &LatencyPolicy,
    ) -> HealthSnapshot {
        let availability = self.availability(now, limits, || 0);
        let s = self.lock();
        let (ok, failed) = s.outcomes.sum(now);
        let (requests, tokens) = s.usage.sum(now);
        let unavailable_for = match availability {
            Availability::Ejected { until }
            | Availability::Cooling { until }
            | Availability::AtLimit { until } => Some(until.saturating_duration_since(now)),
            _ => None,
        };
        HealthSnapshot {
            state: availability.as_str(),
            unavailable_for,
            consecutive_failures: s.consecutive,
            window_successes: ok,
            window_failures: failed,
            latency_estimate: s.rtt.map(|(v, at)| {
                Duration::from_secs_f64(decay(v, now.saturating_duration_since(at), latency.decay))
            }),
            inflight: self.inflight(),
            attempts: self.attempts.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failovers: self.failovers.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            minute_requests: requests,
            minute_tokens: tokens,
        }
    }
}

fn decay(value: f64, elapsed: Duration, tau: Duration) -> f64 {
    value * (-elapsed.as_secs_f64() / tau.as_secs_f64().max(1e-9)).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use relais_core::Retry;

    fn server_error() -> Error {
        Error::upstream(ErrorKind::Server, "boom").with_status(500)
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_the_probe_brings_it_back() {
        let policy = BreakerPolicy {
            consecutive_failures: 3,
            failure_rate: 0.0,
            ..BreakerPolicy::default()
        };
        let now = Instant::now();
        let h = Health::new(now, &policy);
        let limits = DeploymentLimits::default();
        for i in 0..3 {
            let v = h.failure(now, &server_error(), &policy);
            assert_eq!(v, Verdict::Failure { eject: i == 2 });
        }
        assert_eq!(h.eject(now, &policy), Duration::from_secs(10));
        assert!(matches!(
            h.availability(now + Duration::from_secs(9), &limits, || 0),
            Availability::Ejected { .. }
        ));
        let later = now + Duration::from_secs(10);
        assert_eq!(h.availability(later, &limits, || 0), Availability::Probe);
        assert!(h.try_probe(later));
        assert!(!h.try_probe(later), "one probe at a time");
        assert_eq!(h.availability(later, &limits, || 0), Availability::Probing);
        // The probe fails: ejected again, for twice as long.
        assert_eq!(
            h.failure(later, &server_error(), &policy),
            Verdict::Failure { eject: true }
        );
        assert_eq!(h.eject(later, &policy), Duration::from_secs(20));
        let later = later + Duration::from_secs(20);
        assert!(h.try_probe(later));
        h.success(later, Duration::from_millis(5), &LatencyPolicy::default());
        assert_eq!(h.availability(later, &limits, || 0), Availability::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_ejects_only_past_the_minimum() {
        let policy = BreakerPolicy {
            consecutive_failures: 0,
            failure_rate: 0.5,
            min_requests: 10,
            ..BreakerPolicy::default()
        };
        let now = Instant::now();
        let h = Health::new(now, &policy);
        for _ in 0..4 {
            h.success(now, Duration::from_millis(1), &LatencyPolicy::default());
            assert_eq!(
                h.failure(now, &server_error(), &policy),
                Verdict::Failure { eject: false }
            );
        }
        h.success(now, Duration::from_millis(1), &LatencyPolicy::default());
        // 5 ok, 5 failed: the tenth attempt reaches the minimum at a 50% failure rate.
        assert_eq!(
            h.failure(now, &server_error(), &policy),
            Verdict::Failure { eject: true }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_cool_down_without_counting_as_failures() {
        let policy = BreakerPolicy::default();
        let now = Instant::now();
        let h = Health::new(now, &policy);
        let limited = Error::upstream(ErrorKind::RateLimited, "slow down")
            .with_retry(Retry::After(Duration::from_secs(7)));
        for _ in 0..10 {
            assert_eq!(h.failure(now, &limited, &policy), Verdict::CooledDown);
        }
        let limits = DeploymentLimits::default();
        assert_eq!(
            h.availability(now, &limits, || 0),
            Availability::Cooling {
                until: now + Duration::from_secs(7)
            }
        );
        assert_eq!(
            h.availability(now + Duration::from_secs(7), &limits, || 0),
            Availability::Ready
        );
        assert_eq!(h.failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let policy = LatencyPolicy {
            default_rtt: Duration::from_millis(300),
            decay: Duration::from_secs(10),
        };
        let now = Instant::now();
        let h = Health::new(now, &BreakerPolicy::default());
        assert!((h.latency(now, &policy) - 0.3).abs() < 1e-9);
        // Unmeasured, the default decays too: a deployment never picked gets picked.
        let idle = h.latency(now + Duration::from_secs(10), &policy);
        assert!((idle - 0.3 / std::f64::consts::E).abs() < 1e-6, "{idle}");
        h.success(now, Duration::from_millis(20), &policy);
        h.success(now, Duration::from_millis(500), &policy);
        assert!(
            (h.latency(now, &policy) - 0.5).abs() < 1e-9,
            "a peak replaces"
        );
        let later = now + Duration::from_secs(10);
        let decayed = h.latency(later, &policy);
        assert!(
            (decayed - 0.5 / std::f64::consts::E).abs() < 1e-6,
            "{decayed}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limits_hold_traffic_until_the_minute_frees() {
        let now = Instant::now();
        let h = Health::new(now, &BreakerPolicy::default());
        let limits = DeploymentLimits {
            rpm: Some(2),
            tpm: Some(1000),
            concurrent: Some(1),
        };
        h.begin(now, 100, false);
        assert!(matches!(
            h.availability(now, &limits, || 100),
            Availability::AtLimit { .. }
        ));
        h.end();
        assert_eq!(h.availability(now, &limits, || 100), Availability::Ready);
        assert!(matches!(
            h.availability(now, &limits, || 950),
            Availability::AtLimit { .. }
        ));
        h.begin(now, 100, false);
        h.end();
        match h.availability(now + Duration::from_secs(30), &limits, || 1) {
            Availability::AtLimit { until } => {
                assert_eq!(until, now + Duration::from_secs(60));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            h.availability(now + Duration::from_secs(60), &limits, || 1),
            Availability::Ready
        );
    }
}
