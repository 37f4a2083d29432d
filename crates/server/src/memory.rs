//! Giving memory back after a spike. glibc's malloc keeps what a burst of large requests took
//! (measured: 880 MiB of a 990 MiB peak still resident minutes later, see docs/benchmarks.md),
//! because freed chunks stay in its arenas. After a large body was admitted, relais asks it to
//! return free pages to the OS (`malloc_trim`) once a second for a short while, off the request
//! path; with only small requests it never runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// When the last large body was admitted, in seconds since the process started (0: never).
static LAST_LARGE: AtomicU64 = AtomicU64::new(0);

/// How long after the last large body trimming goes on: long enough for its request to end.
const TRIM_FOR: Duration = Duration::from_secs(30);

fn uptime_secs() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
        + 1
}

/// A body large enough to count against the decoding budget was admitted.
pub(crate) fn large_body_seen() {
    LAST_LARGE.store(uptime_secs(), Ordering::Relaxed);
}

/// Runs for the life of the server.
pub(crate) async fn trim_after_spikes() {
    let _ = uptime_secs();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let last = LAST_LARGE.load(Ordering::Relaxed);
        if last == 0 || uptime_secs().saturating_sub(last) > TRIM_FOR.as_secs() {
            continue;
        }
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "the one libc call that returns freed heap memory to the OS"
)]
fn trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim takes no pointers and is safe to call from any thread at any time;
    // it only returns free memory held by glibc's allocator to the OS.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
