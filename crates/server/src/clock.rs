//! The one place the server reads time. Wall-clock time (Unix seconds, milliseconds, the UTC
//! day) for ledger rows, periods and ids; durations as the microseconds the ledger and Plan B
//! store. Monotonic time is Tokio's ([`Instant`]), so a test with a paused clock controls it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use tokio::time::Instant;

/// Milliseconds in a day, the unit of UTC days.
pub(crate) const DAY_MS: i64 = 86_400_000;

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Unix seconds now.
pub(crate) fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    i64::try_from(since_epoch().as_millis()).unwrap_or(i64::MAX)
}

/// Today's UTC day number (days since 1970-01-01).
pub(crate) fn utc_day() -> i64 {
    now_ms().div_euclid(DAY_MS)
}

/// A duration in whole microseconds, saturating.
pub(crate) fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
