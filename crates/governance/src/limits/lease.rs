//! Leases: slices of a subject's limits that Redis grants one instance, so that a busy subject's
//! requests are admitted in this process, with no Redis call on their path, while the sum of
//! every instance's leases and requests never passes a limit.
//!
//! A subject becomes busy here after [`HOT`] admissions within a second; the leaser (one task
//! per limiter) then asks `lease.lua` for a slice sized to twice what the last lease's span
//! used, and renews it before it runs low or ends. Requests that a lease does not cover (too
//! large for what is left, limits changed, no lease yet) take the exact path, `admit.lua`.
//! A lease that is replaced, or ends, is reported to Redis with what it really holds
//! (`shrink.lua`): requests admitted, their tokens, those still in flight and the spend of the
//! ones that ended, until nothing of it is in flight. An instance that dies loses nothing but
//! its leases' unused room, which Redis takes back when they end (the minute's counts) and when
//! their hold ends (places in flight; their budget reservations are then charged as spent).
//!
//! The book below is what this instance knows: per subject, its demand and its current lease;
//! per lease, what is left of it and what it holds. One mutex guards it, taken once per
//! admission and once per request end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use relais_state::Limits;
use tokio::time::Instant;

use super::subject::Subject;

/// Admissions within a second that make a subject worth a lease.
pub(crate) const HOT: u64 = 32;
/// The fewest requests a lease is asked for.
const LEAST: u64 = 32;

/// A lease as granted, and what became of it.
#[derive(Debug)]
pub(crate) struct Lease {
    /// Its member in Redis (`L<instance>-<n>`).
    pub(crate) id: String,
    pub(crate) subject: String,
    pub(crate) limits: Limits,
    end: Instant,
    /// No longer admits: replaced, ended or its limits changed. Reported until it holds nothing.
    pub(crate) closed: bool,
    granted: Grant,
    requests_left: u64,
    tokens_left: i64,
    nano_left: i64,
    /// Requests admitted under it.
    pub(crate) admitted: u64,
    pub(crate) in_flight: u64,
    pub(crate) tokens_in_flight: u64,
    pub(crate) tokens_settled: u64,
    pub(crate) nano_in_flight: u64,
    /// Spend of requests that ended, not yet reported to Redis.
    pub(crate) nano_unsent: u64,
    /// Changed since last reported.
    pub(crate) dirty: bool,
}

/// What a lease covers: requests, tokens, requests at once, budget (nano-USD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) requests: u64,
    pub(crate) tokens: u64,
    pub(crate) slots: u64,
    pub(crate) nano: u64,
}

impl Lease {
    fn covers(&self, limits: &Limits, tokens: u64, nano: u64, now: Instant) -> bool {
        !self.closed
            && now < self.end
            && self.limits == *limits
            && (limits.rpm.is_none() || self.requests_left > 0)
            && (limits.tpm.is_none() || self.tokens_left >= tokens as i64)
            && (limits.max_concurrent.is_none() || self.in_flight < self.granted.slots)
            && (!limits.has_budget() || self.nano_left >= nano as i64)
    }

    /// Whether to ask for the next lease: half of it used, or half of its time gone.
    fn low(&self, now: Instant, span: Duration) -> bool {
        let g = &self.granted;
        let half_time = self.end.saturating_duration_since(now) < span / 2;
        let limits = &self.limits;
        half_time
            || (limits.rpm.is_some() && self.requests_left < g.requests / 2)
            || (limits.tpm.is_some() && self.tokens_left < (g.tokens / 2) as i64)
            || (limits.has_budget() && self.nano_left < (g.nano / 2) as i64)
    }

    /// What Redis should hold for it now: requests, tokens, in flight, budget reserved.
    pub(crate) fn holds(&self) -> Grant {
        Grant {
            requests: self.admitted,
            tokens: self.tokens_settled + self.tokens_in_flight,
            slots: self.in_flight,
            nano: self.nano_in_flight,
        }
    }
}

/// A subject's demand here, and its current lease.
#[derive(Debug)]
struct Demand {
    current: Option<u64>,
    /// Admissions (either path) since `since`, their tokens and cost.
    since: Instant,
    count: u64,
    tokens: u64,
    nano: u64,
    /// Requests per second over the last whole second, and their average size.
    rate: u64,
    avg_tokens: u64,
    avg_nano: u64,
    /// The most requests in flight at once seen since `since`.
    peak: u64,
    /// The last admission.
    last: Instant,
    limits: Limits,
    /// Redis refused a lease: not asked again before this.
    quiet_until: Option<Instant>,
}

impl Demand {
    fn new(now: Instant, limits: Limits) -> Self {
        Self {
            current: None,
            since: now,
            count: 0,
            tokens: 0,
            nano: 0,
            rate: 0,
            avg_tokens: 0,
            avg_nano: 0,
            peak: 0,
            last: now,
            limits,
            quiet_until: None,
        }
    }

    fn note(&mut self, now: Instant, tokens: u64, nano: u64) {
        self.roll(now);
        self.last = now;
        self.count += 1;
        self.tokens += tokens;
        self.nano += nano;
    }

    /// Close the second: its figures become the rate and sizes leases are cut to.
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < Duration::from_secs(1) {
            return;
        }
        self.rate = (self.count as f64 / elapsed.as_secs_f64()) as u64;
        if self.count > 0 {
            self.avg_tokens = self.tokens.div_ceil(self.count);
            self.avg_nano = self.nano.div_ceil(self.count);
        }
        self.since = now;
        (self.count, self.tokens, self.nano, self.peak) = (0, 0, 0, 0);
    }

    fn hot(&self) -> bool {
        self.rate >= HOT || self.count >= HOT
    }
}

/// A lease wanted for a subject: what to ask for.
pub(crate) struct Want {
    pub(crate) subject: String,
    pub(crate) limits: Limits,
    pub(crate) grant: Grant,
    /// One request's tokens and cost, so the lease covers sixteen of them.
    pub(crate) unit_tokens: u64,
    pub(crate) unit_nano: u64,
}

#[derive(Default)]
struct Book {
    subjects: HashMap<String, Demand>,
    leases: HashMap<u64, Lease>,
    next: u64,
}

/// This instance's leases.
pub(crate) struct Leases {
    book: Mutex<Book>,
    /// Wakes the leaser: a subject became busy, or its lease runs low.
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) span: Duration,
    /// Requests admitted under a lease, and through Redis.
    pub(crate) local: AtomicU64,
    pub(crate) exact: AtomicU64,
}

/// The leases one admitted request took, one per limited subject.
pub(crate) type Taken = Vec<u64>;

impl Leases {
    pub(crate) fn new(span: Duration) -> Self {
        Self {
            book: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            span,
            local: AtomicU64::new(0),
            exact: AtomicU64::new(0),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admit under this instance's leases, all subjects or none; `None`: take the exact path.
    pub(crate) fn admit(&self, subjects: &[Subject<'_>], tokens: u64, nano: u64) -> Option<Taken> {
        let now = Instant::now();
        let mut guard = self.book();
        let book = &mut *guard;
        let mut taken = Vec::with_capacity(subjects.len());
        let mut wake = false;
        for (sid, _, limits) in subjects {
            if *limits == Limits::default() {
                continue;
            }
            let lease = book
                .subjects
                .get(*sid)
                .and_then(|d| d.current)
                .and_then(|n| book.leases.get(&n).map(|l| (n, l)));
            match lease {
                Some((n, l)) if l.covers(limits, tokens, nano, now) => {
                    wake |= l.low(now, self.span);
                    taken.push(n);
                }
                _ => return None,
            }
        }
        for (n, (sid, _, _)) in taken
            .iter()
            .zip(subjects.iter().filter(|s| s.2 != Limits::default()))
        {
            if let Some(l) = book.leases.get_mut(n) {
                l.requests_left = l.requests_left.saturating_sub(1);
                l.tokens_left -= tokens as i64;
                l.nano_left -= nano as i64;
                l.admitted += 1;
                l.in_flight += 1;
                l.tokens_in_flight += tokens;
                l.nano_in_flight += nano;
                let in_flight = l.in_flight;
                if let Some(d) = book.subjects.get_mut(*sid) {
                    d.note(now, tokens, nano);
                    d.peak = d.peak.max(in_flight);
                }
            }
        }
        drop(guard);
        if wake {
            self.wake.notify_one();
        }
        self.local.fetch_add(1, Ordering::Relaxed);
        Some(taken)
    }

    /// A request admitted through Redis: counted toward its subjects' demand, which may make
    /// them worth a lease.
    pub(crate) fn note_exact(&self, subjects: &[Subject<'_>], tokens: u64, nano: u64) {
        self.exact.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut wake = false;
        let mut book = self.book();
        for (sid, _, limits) in subjects {
            if *limits == Limits::default() {
                continue;
            }
            let book = &mut *book;
            if !book.subjects.contains_key(*sid) {
                book.subjects
                    .insert((*sid).to_owned(), Demand::new(now, *limits));
            }
            let Some(d) = book.subjects.get_mut(*sid) else {
                continue;
            };
            d.limits = *limits;
            d.note(now, tokens, nano);
            let lease = d.current.and_then(|n| book.leases.get(&n));
            wake |= d.hot()
                && d.quiet_until.is_none_or(|t| now >= t)
                && lease.is_none_or(|l| l.closed || l.low(now, self.span));
        }
        drop(book);
        if wake {
            self.wake.notify_one();
        }
    }

    /// A request under leases ended: `used` (tokens, nano-USD) when the upstream reported it,
    /// else its reservation stays counted and nothing is charged.
    pub(crate) fn finish(&self, taken: &Taken, tokens: u64, nano: u64, used: Option<(u64, u64)>) {
        let (t, c) = used.unwrap_or((tokens, 0));
        let mut book = self.book();
        for n in taken {
            let Some(l) = book.leases.get_mut(n) else {
                continue;
            };
            l.in_flight -= 1;
            l.tokens_in_flight -= tokens;
            l.nano_in_flight -= nano;
            l.tokens_settled += t;
            l.nano_unsent += c;
            if !l.closed {
                l.tokens_left += tokens as i64 - t as i64;
                l.nano_left += nano as i64 - c as i64;
            }
            l.dirty = true;
        }
    }

    /// The leaser's step, under the lock: close leases that ended or whose subject's limits
    /// changed, forget quiet subjects, and say which subjects want a (new) lease.
    pub(crate) fn plan(&self, now: Instant) -> Vec<Want> {
        let mut book = self.book();
        let book = &mut *book;
        let mut wants = Vec::new();
        book.subjects.retain(|sid, d| {
            d.roll(now);
            let mut current = d.current.and_then(|n| book.leases.get_mut(&n));
            if let Some(l) = current.as_deref_mut() {
                if now >= l.end || l.limits != d.limits {
                    l.closed = true;
                    l.dirty = true;
                    d.current = None;
                    current = None;
                }
            }
            if !d.hot() {
                // Quiet: its lease runs out on its own; forgotten once it has none.
                return d.current.is_some() || d.last + Duration::from_secs(10) > now;
            }
            let needed = current.is_none_or(|l| l.low(now, self.span));
            if needed && d.quiet_until.is_none_or(|t| now >= t) {
                let per_span = (d.rate.max(d.count) as f64 * self.span.as_secs_f64()) as u64;
                let requests = (2 * per_span).max(LEAST);
                let unit_tokens = d.avg_tokens.max(d.tokens.div_ceil(d.count.max(1))).max(1);
                let unit_nano = d.avg_nano.max(d.nano.div_ceil(d.count.max(1)));
                wants.push(Want {
                    subject: sid.clone(),
                    limits: d.limits,
                    grant: Grant {
                        requests,
                        tokens: requests * unit_tokens,
                        slots: (2 * d.peak).max(8),
                        nano: requests * unit_nano,
                    },
                    unit_tokens,
                    unit_nano,
                });
            }
            true
        });
        wants
    }

    /// A number for the next lease.
    pub(crate) fn number(&self) -> u64 {
        let mut book = self.book();
        book.next += 1;
        book.next
    }

    /// Redis granted `grant` to lease `n` (`id`) for `want`: it becomes the subject's current
    /// lease, and the one it replaces is closed.
    pub(crate) fn install(&self, n: u64, id: String, want: &Want, grant: Grant, asked: Instant) {
        let mut book = self.book();
        let book = &mut *book;
        let Some(d) = book.subjects.get_mut(&want.subject) else {
            return;
        };
        if let Some(old) = d.current.and_then(|o| book.leases.get_mut(&o)) {
            old.closed = true;
            old.dirty = true;
        }
        d.current = Some(n);
        d.quiet_until = None;
        book.leases.insert(
            n,
            Lease {
                id,
                subject: want.subject.clone(),
                limits: want.limits,
                // Redis dates the lease from when it ran the script, after `asked`.
                end: asked + self.span,
                closed: false,
                granted: grant,
                requests_left: grant.requests,
                tokens_left: grant.tokens as i64,
                nano_left: grant.nano as i64,
                admitted: 0,
                in_flight: 0,
                tokens_in_flight: 0,
                tokens_settled: 0,
                nano_in_flight: 0,
                nano_unsent: 0,
                dirty: false,
            },
        );
    }

    /// Redis refused a lease for `subject`: exact path for a second.
    pub(crate) fn refused(&self, subject: &str, now: Instant) {
        if let Some(d) = self.book().subjects.get_mut(subject) {
            d.quiet_until = Some(now + Duration::from_secs(1));
        }
    }

    /// Close every lease (the instance stops).
    pub(crate) fn close_all(&self) {
        let mut book = self.book();
        for d in book.subjects.values_mut() {
            d.current = None;
            d.quiet_until = Some(Instant::now() + Duration::from_secs(3600));
        }
        for l in book.leases.values_mut() {
            l.closed = true;
            l.dirty = true;
        }
    }

    /// Closed leases with something to report: (number, id, subject, limits, what it holds,
    /// spend to add). Marked clean; [`Leases::reported`] settles the spend or marks them dirty
    /// again.
    pub(crate) fn reports(&self) -> Vec<(u64, String, String, Limits, Grant, u64)> {
        let mut book = self.book();
        let mut out = Vec::new();
        for (n, l) in &mut book.leases {
            if l.closed && l.dirty {
                l.dirty = false;
                out.push((
                    *n,
                    l.id.clone(),
                    l.subject.clone(),
                    l.limits,
                    l.holds(),
                    l.nano_unsent,
                ));
            }
        }
        out
    }

    /// A report reached Redis (`ok`) or not; a lease that holds nothing any more is forgotten.
    pub(crate) fn reported(&self, n: u64, spent: u64, ok: bool) {
        let mut book = self.book();
        let Some(l) = book.leases.get_mut(&n) else {
            return;
        };
        if !ok {
            l.dirty = true;
            return;
        }
        l.nano_unsent -= spent;
        if l.in_flight == 0 && l.nano_unsent == 0 && !l.dirty {
            book.leases.remove(&n);
        }
    }

    /// Leases open or still reported (for tests and metrics).
    pub(crate) fn count(&self) -> usize {
        self.book().leases.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::subject::Holder;

    fn team(limits: Limits) -> [Subject<'static>; 1] {
        [("team_t", Holder::Team { name: "t" }, limits)]
    }

    /// Busy, then leased: admits what the lease covers and no more; a replaced lease reports
    /// what its requests really used, and is forgotten once nothing of it is in flight.
    #[tokio::test(start_paused = true)]
    async fn a_lease_admits_what_it_covers_and_reports_what_was_used() {
        let leases = Leases::new(Duration::from_secs(1));
        let limits = Limits {
            rpm: Some(10_000),
            tpm: Some(1_000_000),
            budget_day: Some(1_000_000_000_000),
            ..Limits::default()
        };
        let subjects = team(limits);
        assert!(leases.admit(&subjects, 100, 5).is_none(), "no lease yet");
        for _ in 0..HOT {
            leases.note_exact(&subjects, 100, 5);
        }
        let wants = leases.plan(Instant::now());
        assert_eq!(wants.len(), 1, "busy: a lease is wanted");
        let want = &wants[0];
        assert_eq!((want.unit_tokens, want.unit_nano), (100, 5));
        let grant = Grant {
            requests: 3,
            tokens: 250,
            slots: 8,
            nano: 1000,
        };
        let n = leases.number();
        leases.install(n, "L1".into(), want, grant, Instant::now());
        let a = leases.admit(&subjects, 100, 5).unwrap();
        let b = leases.admit(&subjects, 100, 5).unwrap();
        assert!(
            leases.admit(&subjects, 100, 5).is_none(),
            "250 tokens cover two"
        );
        // One ends using 30 tokens: 70 come back, enough for a third request.
        leases.finish(&a, 100, 5, Some((30, 2)));
        let c = leases.admit(&subjects, 100, 5).unwrap();
        assert!(
            leases.admit(&subjects, 1, 5).is_none(),
            "three requests granted"
        );
        let other = Limits {
            rpm: Some(20_000),
            ..limits
        };
        assert!(
            leases.admit(&team(other), 1, 5).is_none(),
            "limits changed: the lease does not apply"
        );
        // Replaced: closed, and reported with what it holds.
        let n2 = leases.number();
        leases.install(n2, "L2".into(), want, grant, Instant::now());
        let reports = leases.reports();
        assert_eq!(reports.len(), 1);
        let (rn, id, _, _, holds, spent) = &reports[0];
        assert_eq!((*rn, id.as_str(), *spent), (n, "L1", 2));
        assert_eq!(
            *holds,
            Grant {
                requests: 3,
                tokens: 30 + 200,
                slots: 2,
                nano: 10
            }
        );
        leases.reported(n, 2, true);
        leases.finish(&b, 100, 5, Some((40, 3)));
        leases.finish(&c, 100, 5, None);
        let reports = leases.reports();
        assert_eq!(
            reports[0].4.tokens,
            30 + 40 + 100,
            "unreported: reservation kept"
        );
        assert_eq!(
            (reports[0].4.slots, reports[0].4.nano, reports[0].5),
            (0, 0, 3)
        );
        leases.reported(n, 3, true);
        assert_eq!(leases.count(), 1, "only the current lease is left");
        // Its time ends: closed at the next step, and quiet subjects ask for nothing.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(leases.plan(Instant::now()).is_empty());
        assert!(leases.admit(&subjects, 1, 0).is_none());
        let reports = leases.reports();
        assert_eq!(
            reports[0].4,
            Grant::default(),
            "unused: all of it given back"
        );
    }
}
