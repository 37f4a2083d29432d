//! Per-key and per-team rate limits, in this process: requests per minute, tokens per minute and
//! requests at once, over an exact sliding minute (a log of what was admitted, not buckets), so
//! no minute-long window ever holds more than the limit.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use relais_core::{Error, ErrorKind, Side};
use relais_state::LedgerStore;
use tokio::time::Instant;

use super::budget::{Spent, spend_in_ledger};
use super::subject::{Subject, refuse, refuse_budget};
use crate::calendar::unix_secs;

const MINUTE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Tally {
    /// Admitted requests of the last minute, oldest first: when, ticket id (increasing, so a
    /// ticket is found by binary search), tokens counted. Kept only for subjects with an RPM or
    /// TPM limit; its length is the traffic of one minute.
    admitted: VecDeque<(Instant, u64, u64)>,
    /// Sum of the tokens in `admitted`, kept as entries come, go and settle: admission must
    /// not walk the minute (at thousands of requests per second it holds hundreds of thousands).
    tokens: u64,
    inflight: u64,
    /// Spend against budgets; `None` until the subject is first seen with a budget.
    spent: Option<Spent>,
}

impl Tally {
    fn prune(&mut self, now: Instant) {
        while let Some(&(t, _, n)) = self.admitted.front() {
            if now.saturating_duration_since(t) < MINUTE {
                break;
            }
            self.tokens -= n;
            self.admitted.pop_front();
        }
    }

    fn tokens(&self) -> u64 {
        self.tokens
    }

    /// When enough of the minute's entries have left for `fits` to hold.
    fn wait_until(&self, now: Instant, fits: impl Fn(usize, u64) -> bool) -> Duration {
        let mut count = self.admitted.len();
        let mut tokens = self.tokens();
        for (t, _, n) in &self.admitted {
            count -= 1;
            tokens -= n;
            if fits(count, tokens) {
                return (*t + MINUTE).saturating_duration_since(now);
            }
        }
        MINUTE
    }
}

/// Limits per subject (`key:ID`, `team:ID`) in this process.
#[derive(Default)]
pub struct Limiter {
    subjects: Mutex<HashMap<String, Tally>>,
    next_id: AtomicU64,
    /// Where a subject's spend so far is read from the first time it is seen with a budget.
    ledger: Option<Arc<dyn LedgerStore>>,
}

/// A request's place under the limits of this process: it holds the concurrency slots until
/// dropped; [`LocalTicket::settle`] replaces the reservation with what was used.
pub(crate) struct LocalTicket {
    limiter: Arc<Limiter>,
    id: u64,
    subjects: Vec<String>,
    /// Worst-case cost reserved against budgets, pico-USD.
    cost: u64,
    settled: AtomicBool,
}

impl Limiter {
    /// A limiter that reads a subject's spend so far from `ledger` the first time it is seen
    /// with a budget (a restart keeps counting where the last run stopped).
    pub fn with_ledger(ledger: Arc<dyn LedgerStore>) -> Self {
        Self {
            ledger: Some(ledger),
            ..Self::default()
        }
    }

    /// Read the spend of subjects seen for the first time with a budget, or whose budgets were
    /// reset since. Two requests racing here both read; the first to come back seeds, which is
    /// the same number (no request of an unseeded subject can have been admitted).
    pub(crate) async fn seed(&self, subjects: &[Subject<'_>]) -> Result<(), Error> {
        for (id, _, limits) in subjects {
            if !limits.has_budget() {
                continue;
            }
            let known = self
                .subjects
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(*id)
                .and_then(|t| t.spent.as_ref())
                .is_some_and(|s| s.current(limits));
            if known {
                continue;
            }
            let now = unix_secs();
            let spend = match &self.ledger {
                None => relais_state::Spend::default(),
                Some(store) => spend_in_ledger(store.as_ref(), id, limits, now).await.map_err(|e| {
                    tracing::warn!(error = %e, "cannot read spend from the ledger; refusing requests with budgets until it answers");
                    Error::new(
                        ErrorKind::Unavailable,
                        Side::Gateway,
                        "the ledger store is unreachable, so budgets cannot be checked; try again shortly",
                    )
                })?,
            };
            let mut map = self.subjects.lock().unwrap_or_else(PoisonError::into_inner);
            let tally = map.entry((*id).to_owned()).or_default();
            if !tally.spent.as_ref().is_some_and(|s| s.current(limits)) {
                // Requests in flight keep their reservations across a reset.
                let reserved = tally.spent.as_ref().map_or(0, |s| s.reserved);
                let mut fresh = Spent::seeded(spend, now, limits.budget_reset_ms);
                fresh.reserved = reserved;
                tally.spent = Some(fresh);
            }
        }
        Ok(())
    }

    /// Admit a request using up to `tokens` and costing up to `cost` pico-USD under every
    /// subject's limits and budgets, all or nothing. `subjects`: (subject id, what to call it
    /// in an error, its limits).
    pub(crate) fn admit(
        self: &Arc<Self>,
        subjects: &[Subject<'_>],
        tokens: u64,
        cost: u64,
    ) -> Result<LocalTicket, Error> {
        let now = Instant::now();
        let secs = unix_secs();
        let mut map = self.subjects.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, who, limits) in subjects {
            // Look up without allocating; a subject's first request inserts it.
            if !map.contains_key(*id) {
                map.insert((*id).to_owned(), Tally::default());
            }
            let Some(s) = map.get_mut(*id) else {
                continue;
            };
            s.prune(now);
            if let Some(max) = limits.max_concurrent {
                if s.inflight >= max {
                    return Err(refuse(
                        who,
                        format!("limit of {max} requests at once"),
                        Some(Duration::from_secs(1)),
                    ));
                }
            }
            if let Some(rpm) = limits.rpm {
                if s.admitted.len() as u64 >= rpm {
                    let wait = s.wait_until(now, |count, _| (count as u64) < rpm);
                    return Err(refuse(
                        who,
                        format!("{rpm} requests per minute"),
                        Some(wait),
                    ));
                }
            }
            if let Some(tpm) = limits.tpm {
                if tokens > tpm {
                    return Err(refuse(
                        who,
                        format!(
                            "{tpm} tokens per minute: this request alone may use {tokens} (prompt plus max_tokens); lower max_tokens"
                        ),
                        None,
                    ));
                }
                if s.tokens() + tokens > tpm {
                    let wait = s.wait_until(now, |_, used| used + tokens <= tpm);
                    return Err(refuse(who, format!("{tpm} tokens per minute"), Some(wait)));
                }
            }
            if limits.has_budget() {
                let spent = s.spent.get_or_insert_with(Spent::default);
                if let Some((period, used)) = spent.over(limits, cost, secs) {
                    let limit = period.limit(limits).unwrap_or(0);
                    return Err(refuse_budget(who, period, limit, used));
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        for (sid, _, limits) in subjects {
            let Some(s) = map.get_mut(*sid) else {
                continue;
            };
            if limits.rpm.is_some() || limits.tpm.is_some() {
                s.admitted.push_back((now, id, tokens));
                s.tokens += tokens;
            }
            s.inflight += 1;
            if let Some(spent) = &mut s.spent {
                spent.reserved += cost;
            }
        }
        Ok(LocalTicket {
            limiter: self.clone(),
            id,
            subjects: subjects.iter().map(|(s, _, _)| (*s).to_owned()).collect(),
            cost,
            settled: AtomicBool::new(false),
        })
    }
}

impl LocalTicket {
    /// Count `tokens` and `cost` instead of the reservation; settling twice counts the first.
    pub(crate) fn settle(&self, tokens: u64, cost: u64) {
        if self.settled.swap(true, Ordering::Relaxed) {
            return;
        }
        let secs = unix_secs();
        self.each_tally(|s| {
            if let Ok(i) = s.admitted.binary_search_by_key(&self.id, |(_, i, _)| *i) {
                let old = std::mem::replace(&mut s.admitted[i].2, tokens);
                s.tokens = s.tokens - old + tokens;
            }
            if let Some(spent) = &mut s.spent {
                spent.reserved = spent.reserved.saturating_sub(self.cost);
                spent.add(cost, secs);
            }
        });
    }

    /// Run `f` on the tally of each of the ticket's subjects, under the limiter's lock.
    fn each_tally(&self, mut f: impl FnMut(&mut Tally)) {
        let mut map = self
            .limiter
            .subjects
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for sid in &self.subjects {
            if let Some(s) = map.get_mut(sid) {
                f(s);
            }
        }
    }
}

impl Drop for LocalTicket {
    fn drop(&mut self) {
        let unsettled = !self.settled.load(Ordering::Relaxed);
        let cost = self.cost;
        self.each_tally(|s| {
            s.inflight = s.inflight.saturating_sub(1);
            // Never settled (the request failed before any usage): free the reservation,
            // charge nothing.
            if let (true, Some(spent)) = (unsettled, &mut s.spent) {
                spent.reserved = spent.reserved.saturating_sub(cost);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::subject::Holder;
    use relais_state::Limits;

    const KEY_A: Holder<'static> = Holder::Key {
        name: "a",
        prefix: "rk-0123456",
    };

    fn limits(rpm: Option<u64>, tpm: Option<u64>, max_concurrent: Option<u64>) -> Limits {
        Limits {
            rpm,
            tpm,
            max_concurrent,
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_over_an_exact_sliding_minute() {
        let l = Arc::new(Limiter::default());
        let key = vec![("key_a", KEY_A, limits(Some(3), None, None))];
        for _ in 0..3 {
            drop(l.admit(&key, 1, 0).unwrap());
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        // At t=30 s: three in the last minute; the first leaves at t=60 s.
        let e = l.admit(&key, 1, 0).err().unwrap();
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(l.admit(&key, 1, 0).is_ok());
        assert!(l.admit(&key, 1, 0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_reserved_then_settled() {
        let l = Arc::new(Limiter::default());
        let key = vec![("key_a", KEY_A, limits(None, Some(100), None))];
        let first = l.admit(&key, 85, 0).unwrap();
        assert!(
            l.admit(&key, 85, 0).is_err(),
            "the reservation holds the room"
        );
        first.settle(10, 0);
        let second = l.admit(&key, 85, 0).unwrap();
        drop((first, second));
        let e = l.admit(&key, 101, 0).err().unwrap();
        assert_eq!(
            e.retry_after(),
            None,
            "too big on its own: waiting will not help"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_admits_only_what_it_can_pay_for_in_the_worst_case() {
        let l = Arc::new(Limiter::default());
        let team = vec![(
            "team_t",
            Holder::Team { name: "t" },
            Limits {
                budget_day: Some(5_000),
                ..Limits::default()
            },
        )];
        // 64 requests at once, each reserving 1000: five fit.
        let admitted: Vec<_> = (0..64)
            .filter_map(|_| l.admit(&team, 10, 1_000).ok())
            .collect();
        assert_eq!(admitted.len(), 5);
        let e = l.admit(&team, 10, 1_000).err().unwrap();
        assert_eq!(e.kind, ErrorKind::BudgetExceeded);
        assert!(e.message.contains("daily budget"), "{}", e.message);
        // Settling for less gives the difference back; dropping unsettled gives all back.
        admitted[0].settle(10, 400);
        drop(admitted);
        let left: Vec<_> = (0..64)
            .filter_map(|_| l.admit(&team, 10, 1_000).ok())
            .collect();
        assert_eq!(left.len(), 4, "400 spent: 4600 left");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_and_all_or_nothing_across_key_and_team() {
        let l = Arc::new(Limiter::default());
        let both = vec![
            ("key_a", KEY_A, limits(None, None, Some(5))),
            (
                "team_t",
                Holder::Team { name: "t" },
                limits(None, None, Some(1)),
            ),
        ];
        let held = l.admit(&both, 0, 0).unwrap();
        let e = l.admit(&both, 0, 0).err().unwrap();
        assert!(e.message.contains("team 't'"), "{}", e.message);
        // The refused request took no slot from the key either.
        assert_eq!(
            l.subjects.lock().unwrap()["key_a"].inflight,
            1,
            "only the held ticket"
        );
        drop(held);
        assert!(l.admit(&both, 0, 0).is_ok());
    }
}
