//! The retry budget: retries may add at most a share of a route's traffic (plus a small floor,
//! so a quiet route can still retry), counted over a sliding window. When every upstream is
//! failing, this is what keeps the gateway from multiplying the load on them: a fixed "retry
//! three times" would quadruple it exactly when they can least take it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::window::Window;

#[derive(Debug, Clone, PartialEq)]
pub struct BudgetPolicy {
    /// Retries allowed per first attempt, over the window (0.2: at most 20% extra load).
    pub ratio: f64,
    /// Retries always allowed per second of window, whatever the traffic.
    pub min_per_sec: f64,
    pub window: Duration,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 1.0,
            window: Duration::from_secs(10),
        }
    }
}

/// One route's budget: first attempts and retries over the window.
#[derive(Debug)]
pub struct RetryBudget {
    policy: BudgetPolicy,
    counts: Mutex<Window>,
}

impl RetryBudget {
    pub fn new(policy: BudgetPolicy, now: Instant) -> Self {
        let counts = Mutex::new(Window::new(policy.window, now));
        Self { policy, counts }
    }

    pub fn policy(&self) -> &BudgetPolicy {
        &self.policy
    }

    /// A request arrived (its first attempt is always allowed).
    pub fn deposit(&self, now: Instant) {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(now, 1, 0);
    }

    /// Take one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut w = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let (requests, retries) = w.sum(now);
        let allowed =
            self.policy.ratio * requests as f64 + self.policy.min_per_sec * w.len().as_secs_f64();
        if (retries as f64) < allowed {
            w.add(now, 0, 1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_ratio_plus_floor() {
        let now = Instant::now();
        let b = RetryBudget::new(
            BudgetPolicy {
                ratio: 0.2,
                min_per_sec: 0.5,
                window: Duration::from_secs(10),
            },
            now,
        );
        let mut granted = 0;
        for _ in 0..1000 {
            b.deposit(now);
            if b.withdraw(now) {
                granted += 1;
            }
        }
        // 20% of 1000 plus 0.5/s over 10 s.
        assert_eq!(granted, 205);
        // The window forgets: later traffic gets its own budget.
        let later = now + Duration::from_secs(11);
        b.deposit(later);
        assert!(b.withdraw(later));
    }
}
