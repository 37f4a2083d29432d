//! Store work yields the CPU to requests. The ledger's shipments (reading a segment back,
//! inserting a thousand rows, SQLite's commits and WAL checkpoints) run on tokio's blocking
//! threads, which share the cores with the request workers. At equal priority the scheduler
//! let a shipment run for up to 4.5 ms while a worker with requests waited (measured with
//! `perf sched` on one core at 5,000 req/s: 17 of 23 worker delays over 1 ms in 20 s followed a
//! shipment). A thread that does store work is lowered to nice 10 for good: a woken worker
//! then preempts it at once, and it still gets about a tenth of a contended core, so shipments
//! keep up with any rate the gateway sustains for long.

use std::cell::Cell;

/// The niceness of threads that do store work (0 is a request worker's).
const BACKGROUND_NICE: i32 = 10;

/// Lower the calling thread's priority, once per thread (Linux: nice applies per thread). The
/// blocking threads of the pool are reused, so other blocking work that lands on a lowered
/// thread runs at the same priority: all of it is background or bulk work.
pub fn background_thread() {
    thread_local! {
        static LOWERED: Cell<bool> = const { Cell::new(false) };
    }
    if !LOWERED.replace(true) {
        lower();
    }
}

#[cfg(target_os = "linux")]
#[expect(unsafe_code, reason = "setpriority on the calling thread, a libc call")]
fn lower() {
    // SAFETY: setpriority takes plain integers; with PRIO_PROCESS and who = 0 Linux applies it
    // to the calling thread only. Raising one's own niceness needs no privilege; on failure the
    // thread keeps its priority, which only costs latency.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) };
    if rc != 0 {
        tracing::debug!("could not lower a store thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    #[expect(unsafe_code, reason = "reads the calling thread's niceness")]
    fn a_store_thread_runs_at_nice_10_and_others_are_untouched() {
        let other = std::thread::spawn(|| {
            // SAFETY: getpriority takes plain integers and reads the calling thread's nice.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        });
        std::thread::spawn(|| {
            super::background_thread();
            super::background_thread();
            // SAFETY: as above.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            assert_eq!(nice, super::BACKGROUND_NICE);
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
        assert_eq!(
            other
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            0
        );
    }
}
