//! The ledger's write path: a row is appended to a local write-ahead file before the client
//! receives the end of its response, and a background task ships the file to the store.
//!
//! - **Append** ([`Ledger::record`]): the rows of one request are serialised (JSON lines) and
//!   written with one `write` call under a mutex. The kernel holds the bytes from then on: a
//!   `kill -9` of the gateway a microsecond later loses nothing. Writing to a file in the page
//!   cache takes a few microseconds, so it is done on the request's task rather than through a
//!   channel and another wake-up (measured in bench/: cheaper than a hop to a writer task).
//! - **Group commit** (the shipper, every `ship_interval`): the current segment is closed and a
//!   new one opened, the closed one is synced to disk (one `fdatasync` for every row written
//!   since the last), read back, inserted into the store in batches, and deleted once the store
//!   committed. Reading back what was written keeps one path for normal shipping and for the
//!   replay after a crash.
//! - **Replay**: at start, segments left by a previous run are shipped first. Rows are keyed by
//!   (request id, attempt) and inserted with `ON CONFLICT DO NOTHING`, so a segment shipped
//!   twice (a crash between the store's commit and the file's deletion) adds nothing.
//! - **Store down**: segments stay on disk and the shipper retries with backoff; the current
//!   segment keeps growing until [`SEGMENT_MAX`] and only then rotates, so an outage makes a few
//!   big files, not thousands of small ones. A failed append (disk full) keeps the rows in
//!   memory for the shipper to insert directly, and is logged and counted.
//!
//! A power loss (not a process crash) can lose the rows of the current segment that the OS had
//! not written back yet: at most one `ship_interval` of traffic.
//!
//! One gateway process per directory: the directory is locked while a ledger has it open.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use relais_core::Error;
use relais_state::{LedgerRow, LedgerStore};
use tokio::sync::Notify;

/// A segment rotates at this size even when earlier ones are still waiting for the store.
const SEGMENT_MAX: u64 = 64 * 1024 * 1024;
/// Rows per store insert when shipping.
const SHIP_BATCH: usize = 1000;

/// Counters for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Rows appended to the write-ahead file.
    pub recorded: AtomicU64,
    /// Rows the store accepted (replays of rows it had are not counted twice).
    pub stored: AtomicU64,
    /// Appends that failed (the rows were kept in memory instead).
    pub write_errors: AtomicU64,
    /// Failed attempts to ship to the store.
    pub ship_errors: AtomicU64,
    /// Whether the last shipment reached the store.
    pub store_up: AtomicBool,
    /// Closed segments waiting for the store.
    pub backlog: AtomicU64,
}

struct Segment {
    file: File,
    path: PathBuf,
    seq: u64,
    bytes: u64,
}

struct Wal {
    current: Segment,
    /// Closed segments not yet in the store, oldest first.
    closed: Vec<PathBuf>,
    /// Rows whose append failed; inserted directly by the shipper.
    spilled: Vec<LedgerRow>,
}

pub struct Ledger {
    dir: PathBuf,
    wal: Mutex<Wal>,
    store: Arc<dyn LedgerStore>,
    wake: Arc<Notify>,
    /// Serialises shipments (the background task, [`Ledger::flush`]).
    shipping: tokio::sync::Mutex<()>,
    interval: Duration,
    pub stats: LedgerStats,
    /// Held (with its lock) for as long as the ledger lives.
    _lock: File,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::internal(format!("ledger: cannot {what} {}: {e}", path.display()))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("ledger-{seq:016}.wal"))
}

fn open_segment(dir: &Path, seq: u64) -> Result<Segment, Error> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_error("create", &path, e))?;
    Ok(Segment {
        file,
        path,
        seq,
        bytes: 0,
    })
}

/// Segments in `dir`, oldest first, with their sequence numbers.
fn existing_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("read", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ledger-"))
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((seq, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Parse a segment. A line that does not parse is the torn tail of a write the machine did not
/// finish (a power loss): it is skipped and counted, never fatal.
fn read_segment(path: &Path) -> Result<(Vec<LedgerRow>, usize), Error> {
    let file = File::open(path).map_err(|e| io_error("open", path, e))?;
    let mut rows = Vec::new();
    let mut torn = 0;
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| io_error("read", path, e))?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<LedgerRow>(&line) {
            Ok(r) => rows.push(r),
            Err(_) => torn += 1,
        }
    }
    Ok((rows, torn))
}

impl Ledger {
    /// Open the write-ahead directory (created if needed, locked for this process), queue the
    /// segments a previous run left for shipping, and start the shipper. Call
    /// [`Ledger::flush`] to wait for the replay.
    pub fn open(
        dir: &Path,
        store: Arc<dyn LedgerStore>,
        interval: Duration,
    ) -> Result<Arc<Self>, Error> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error("open", &lock_path, e))?;
        lock.try_lock().map_err(|_| {
            Error::internal(format!(
                "ledger: {} is in use by another relais process; give each instance its own governance.ledger_dir",
                dir.display()
            ))
        })?;
        let old = existing_segments(dir)?;
        let next = old.last().map_or(1, |(seq, _)| seq + 1);
        let current = open_segment(dir, next)?;
        let backlog = old.len() as u64;
        let ledger = Arc::new(Self {
            dir: dir.to_owned(),
            wal: Mutex::new(Wal {
                current,
                closed: old.into_iter().map(|(_, p)| p).collect(),
                spilled: Vec::new(),
            }),
            store,
            wake: Arc::new(Notify::new()),
            shipping: tokio::sync::Mutex::new(()),
            interval,
            stats: LedgerStats::default(),
            _lock: lock,
        });
        ledger.stats.backlog.store(backlog, Ordering::Relaxed);
        ledger.stats.store_up.store(true, Ordering::Relaxed);
        let weak = Arc::downgrade(&ledger);
        let wake = ledger.wake.clone();
        tokio::spawn(async move { ship_forever(weak, wake).await });
        Ok(ledger)
    }

    /// Append the rows of one request. Never fails the request: when the file cannot be
    /// written the rows are kept in memory for the store, and the failure is logged.
    pub fn record(&self, rows: &[LedgerRow]) {
        let mut buf = Vec::with_capacity(512 * rows.len());
        for r in rows {
            if serde_json::to_writer(&mut buf, r).is_ok() {
                buf.push(b'\n');
            }
        }
        let mut wal = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
        match wal.current.file.write_all(&buf) {
            Ok(()) => {
                wal.current.bytes += buf.len() as u64;
                self.stats
                    .recorded
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                wal.spilled.extend_from_slice(rows);
                drop(wal);
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, dir = %self.dir.display(), "ledger: cannot append to the write-ahead file; rows kept in memory until the store takes them");
            }
        }
    }

    /// Ship everything recorded so far to the store and wait for it (tests, shutdown).
    pub async fn flush(&self) -> Result<(), Error> {
        self.ship().await
    }

    /// Wake the shipper now instead of at its next tick.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Close the current segment (when it has rows, and either nothing older waits or it
    /// reached its maximum size) and ship every closed one, oldest first. Stops at the first
    /// store error; what is left is tried next time.
    async fn ship(&self) -> Result<(), Error> {
        let _one = self.shipping.lock().await;
        let (closed, spilled) = {
            let mut wal = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
            let rotate = wal.current.bytes > 0
                && (wal.closed.is_empty() || wal.current.bytes >= SEGMENT_MAX);
            if rotate {
                let next = open_segment(&self.dir, wal.current.seq + 1)?;
                let old = std::mem::replace(&mut wal.current, next);
                wal.closed.push(old.path.clone());
                // The closed file is synced below, off the request path.
                drop(old.file);
            }
            (wal.closed.clone(), std::mem::take(&mut wal.spilled))
        };
        if !spilled.is_empty() {
            if let Err(e) = self.insert(&spilled).await {
                let mut wal = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
                let mut back = spilled;
                back.append(&mut wal.spilled);
                wal.spilled = back;
                return Err(e);
            }
        }
        for path in closed {
            let p = path.clone();
            let read = tokio::task::spawn_blocking(move || {
                // One sync for every row of the segment: the group commit.
                if let Ok(f) = File::open(&p) {
                    let _ = f.sync_data();
                }
                read_segment(&p)
            })
            .await
            .map_err(|e| Error::internal(format!("ledger: read task failed: {e}")))??;
            let (rows, torn) = read;
            if torn > 0 {
                tracing::warn!(
                    segment = %path.display(),
                    lines = torn,
                    "ledger: skipped lines that were cut short (a write the machine did not finish)"
                );
            }
            for batch in rows.chunks(SHIP_BATCH) {
                self.insert(batch).await?;
            }
            std::fs::remove_file(&path).map_err(|e| io_error("remove", &path, e))?;
            let mut wal = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
            wal.closed.retain(|p| *p != path);
            self.stats
                .backlog
                .store(wal.closed.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn insert(&self, rows: &[LedgerRow]) -> Result<(), Error> {
        match self.store.insert_rows(rows).await {
            Ok(n) => {
                self.stats.stored.fetch_add(n, Ordering::Relaxed);
                self.stats.store_up.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.stats.ship_errors.fetch_add(1, Ordering::Relaxed);
                self.stats.store_up.store(false, Ordering::Relaxed);
                Err(Error::internal(format!(
                    "ledger: the store refused rows: {e}"
                )))
            }
        }
    }

    /// The store the rows go to (for usage queries).
    pub fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.store
    }

    /// Whether the store took the last shipment.
    pub fn store_up(&self) -> bool {
        self.stats.store_up.load(Ordering::Relaxed)
    }
}

/// The shipper: every `interval` (or when nudged), ship; after a failure, back off up to 30 s
/// between tries. Ends when the ledger is dropped.
async fn ship_forever(ledger: std::sync::Weak<Ledger>, wake: Arc<Notify>) {
    let mut delay = None::<Duration>;
    loop {
        let Some(wait) = ledger.upgrade().map(|l| delay.unwrap_or(l.interval)) else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
        let Some(l) = ledger.upgrade() else {
            return;
        };
        match l.ship().await {
            Ok(()) => delay = None,
            Err(e) => {
                let next = delay.map_or(Duration::from_millis(500), |d| {
                    (d * 2).min(Duration::from_secs(30))
                });
                if delay.is_none() {
                    tracing::warn!(message = %e.message, "ledger: shipping to the store failed; rows wait on disk and are retried");
                }
                delay = Some(next);
            }
        }
    }
}
