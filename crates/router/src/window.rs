//! Counters over a sliding time window, in fixed buckets: the retry budget, the breaker's failure
//! rate and the per-deployment RPM/TPM limits all count "how many in the last N seconds".
//!
//! Buckets trade precision for a fixed size: a window of `BUCKETS` buckets forgets its oldest
//! bucket whole, so a count can be up to one bucket (a tenth of the window) stale. That is fine
//! for spreading load and for ratios; exact limits that hold across replicas are the governance
//! layer's job, not this one's.

use std::time::Duration;

use tokio::time::Instant;

/// Buckets per window.
const BUCKETS: usize = 10;

/// Two counters (for example successes and failures) over the last `window`.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    origin: Instant,
    bucket: Duration,
    /// Per bucket: the bucket's epoch (its index since `origin`) and the two counts.
    slots: [(u64, u64, u64); BUCKETS],
}

impl Window {
    pub(crate) fn new(window: Duration, now: Instant) -> Self {
        let bucket = (window / BUCKETS as u32).max(Duration::from_millis(1));
        Self {
            origin: now,
            bucket,
            // Epoch u64::MAX marks a slot as never used.
            slots: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    /// The window's length.
    pub(crate) fn len(&self) -> Duration {
        self.bucket * BUCKETS as u32
    }

    fn epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        u64::try_from(since.as_nanos() / self.bucket.as_nanos().max(1)).unwrap_or(u64::MAX - 1)
    }

    /// Add to the counters of the current bucket.
    pub(crate) fn add(&mut self, now: Instant, a: u64, b: u64) {
        let epoch = self.epoch(now);
        let slot = &mut self.slots[(epoch % BUCKETS as u64) as usize];
        if slot.0 != epoch {
            *slot = (epoch, 0, 0);
        }
        slot.1 = slot.1.saturating_add(a);
        slot.2 = slot.2.saturating_add(b);
    }

    /// Both counters summed over the buckets still inside the window.
    pub(crate) fn sum(&self, now: Instant) -> (u64, u64) {
        let epoch = self.epoch(now);
        let oldest = epoch.saturating_sub(BUCKETS as u64 - 1);
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 >= oldest && s.0 <= epoch)
            .fold((0, 0), |(a, b), s| (a + s.1, b + s.2))
    }

    /// When the oldest count still inside the window leaves it (for a `retry-after`).
    pub(crate) fn oldest_expiry(&self, now: Instant) -> Duration {
        let epoch = self.epoch(now);
        let oldest = epoch.saturating_sub(BUCKETS as u64 - 1);
        let first = self
            .slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 >= oldest && s.0 <= epoch && (s.1 > 0 || s.2 > 0))
            .map(|s| s.0)
            .min()
            .unwrap_or(epoch);
        let leaves =
            self.origin + self.bucket * u32::try_from(first + BUCKETS as u64).unwrap_or(u32::MAX);
        leaves.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_slide_out_of_the_window() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), now);
        w.add(now, 3, 1);
        w.add(now + Duration::from_secs(5), 2, 0);
        assert_eq!(w.sum(now + Duration::from_secs(5)), (5, 1));
        // The first bucket leaves once ten buckets (10 s) have passed since it began.
        assert_eq!(w.sum(now + Duration::from_secs(10)), (2, 0));
        assert_eq!(w.sum(now + Duration::from_secs(16)), (0, 0));
        // A slot reused by a later epoch starts from zero.
        w.add(now + Duration::from_secs(20), 1, 1);
        assert_eq!(w.sum(now + Duration::from_secs(20)), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn oldest_expiry_points_at_the_first_count() {
        let now = Instant::now();
        let mut w = Window::new(Duration::from_secs(60), now);
        w.add(now + Duration::from_secs(1), 1, 0);
        let left = w.oldest_expiry(now + Duration::from_secs(30));
        assert_eq!(left, Duration::from_secs(30));
    }
}
