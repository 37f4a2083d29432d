//! Giving memory back after a spike. An allocator keeps what a burst of large requests took:
//! glibc's malloc kept 880 MiB of a 990 MiB peak resident minutes later (docs/benchmarks.md),
//! because freed chunks stay in its arenas; mimalloc (the binary's default allocator) keeps
//! freed pages in the heap of the thread that used them until that thread collects. After a
//! large body was admitted, relais asks for free memory to be returned to the OS once a second
//! for a short while, off the request path: glibc's `malloc_trim` on a blocking thread (it is
//! process-wide; C libraries such as SQLite allocate there whatever the Rust allocator is), and
//! the global allocator's own collection ([`set_allocator_trim`]) on that thread and on each
//! runtime worker the next time it parks ([`worker_parked`]). With only small requests none of
//! it runs.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bumped each time free memory is to be returned; a worker collects when it parks and sees a
/// value it has not collected for.
static TRIM_EPOCH: AtomicU64 = AtomicU64::new(0);

/// The global allocator's "return this thread's free memory" (set by the binary that chose it).
static ALLOCATOR_TRIM: OnceLock<fn()> = OnceLock::new();

/// Register how the global allocator returns the calling thread's free memory to the OS.
pub fn set_allocator_trim(collect: fn()) {
    let _ = ALLOCATOR_TRIM.set(collect);
}

/// A runtime worker thread is about to park (`on_thread_park`): collect its allocator's free
/// memory if a trim was asked for since it last did. Otherwise one atomic load.
pub fn worker_parked() {
    thread_local! {
        static SEEN: Cell<u64> = const { Cell::new(0) };
    }
    let epoch = TRIM_EPOCH.load(Ordering::Relaxed);
    if SEEN.get() != epoch {
        SEEN.set(epoch);
        if let Some(collect) = ALLOCATOR_TRIM.get() {
            collect();
        }
    }
}

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
        TRIM_EPOCH.fetch_add(1, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(|| {
            if let Some(collect) = ALLOCATOR_TRIM.get() {
                collect();
            }
            trim();
        })
        .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Collections made on this thread (a trim elsewhere in the test binary counts there).
        static COLLECTED: Cell<u64> = const { Cell::new(0) };
    }

    fn count() {
        COLLECTED.set(COLLECTED.get() + 1);
    }

    /// A worker collects once per trim it has not seen; parking again without a new trim
    /// costs only the check. (Another test may start a trim meanwhile: the last assertion
    /// allows for the epoch moving.)
    #[test]
    fn a_parking_worker_collects_once_per_trim() {
        set_allocator_trim(count);
        let worker = std::thread::spawn(|| {
            worker_parked();
            let before = COLLECTED.get();
            TRIM_EPOCH.fetch_add(1, Ordering::Relaxed);
            let epoch = TRIM_EPOCH.load(Ordering::Relaxed);
            worker_parked();
            assert_eq!(
                COLLECTED.get(),
                before + 1,
                "the first park after a trim collects"
            );
            worker_parked();
            worker_parked();
            if TRIM_EPOCH.load(Ordering::Relaxed) == epoch {
                assert_eq!(COLLECTED.get(), before + 1, "no new trim, no collection");
            }
        });
        worker
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }
}
