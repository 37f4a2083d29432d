//! The ledger's write path: a row is appended to a local write-ahead file before the client
//! receives the end of its response, and a background task ships the file to the store.
//!
//! - **Append** ([`Ledger::record`]): the rows of one request are serialised (JSON lines) and
//!   written with one `write` call under a mutex. The kernel holds the bytes from then on: a
//!   `kill -9` of the gateway a microsecond later loses nothing. Writing to a file in the page
//!   cache takes a few microseconds, so it is done on the request's task rather than through a
//!   channel and another wake-up (measured in bench/: cheaper than a hop to a writer task).
//! - **Group commit** (the shipper, every `ship_interval`): the current segment is closed and a
//!   new one opened; the closed one is read back [`SHIP_BATCH`] rows at a time, each batch
//!   inserted into the store, and the file is deleted once the store committed. Reading back
//!   what was written keeps one path for normal shipping and for the replay after a crash, and
//!   reading it in batches keeps memory flat however large a segment grew while the store was
//!   down or slow. (Keeping a copy of the rows in memory instead was tried: no measurable gain,
//!   and a gateway at saturation, whose shipper falls behind, held tens of MB of rows.)
//! - **Sync**: when the store took the rows, they are durable there and the file is deleted
//!   unsynced; when it did not, the segment and the current file are synced to disk (one
//!   `fdatasync` each) before the next try, so rows that wait for the store survive a power
//!   loss.
//! - **Replay**: at start, segments left by a previous run are shipped first. Rows are keyed by
//!   (request id, attempt) and inserted with `ON CONFLICT DO NOTHING`, so a segment shipped
//!   twice (a crash between the store's commit and the file's deletion) adds nothing.
//! - **Store down**: segments stay on disk and the shipper retries with backoff; the current
//!   segment keeps growing until [`SEGMENT_MAX`] and only then rotates, so an outage makes a few
//!   big files, not thousands of small ones. A failed append (disk full) keeps the rows in
//!   memory for the shipper to insert directly, and is logged and counted.
//!
//! A power loss (not a process crash) can lose the rows that neither the store nor the disk had
//! yet: at most one `ship_interval` of traffic (plus one shipment) while the store answers.
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
    /// Bytes of rows on disk not yet in the store: closed segments plus the current one. Grows
    /// steadily while the store is down (segments rotate only at [`SEGMENT_MAX`] then).
    pub backlog_bytes: AtomicU64,
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
    /// Held for as long as the ledger lives.
    _lock: DirLock,
}

/// Directories held by ledgers of this process.
static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// One ledger per directory: a `LOCK` file holding the owner's pid, taken over when that
/// process is gone (a `kill -9` leaves it behind), plus a list for ledgers of this process.
/// (The MSRV predates `File::try_lock`.)
struct DirLock {
    dir: PathBuf,
}

impl DirLock {
    fn take(dir: &Path) -> Result<Self, Error> {
        let dir = dir
            .canonicalize()
            .map_err(|e| io_error("resolve", dir, e))?;
        let in_use = || {
            Error::internal(format!(
                "ledger: {} is in use by another relais process; give each instance its own governance.ledger_dir",
                dir.display()
            ))
        };
        let mut held = HELD.lock().unwrap_or_else(PoisonError::into_inner);
        if held.contains(&dir) {
            return Err(in_use());
        }
        let path = dir.join("LOCK");
        let me = std::process::id();
        if let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            if pid != me && Path::new(&format!("/proc/{pid}")).exists() {
                return Err(in_use());
            }
        }
        std::fs::write(&path, me.to_string()).map_err(|e| io_error("write", &path, e))?;
        held.push(dir.clone());
        Ok(Self { dir })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        HELD.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|d| *d != self.dir);
        let _ = std::fs::remove_file(self.dir.join("LOCK"));
    }
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

/// Reads a segment's rows a batch at a time. A line that does not parse is the torn tail of a
/// write the machine did not finish (a power loss): it is skipped and counted, never fatal.
struct SegmentReader {
    lines: std::io::Split<std::io::BufReader<File>>,
    path: PathBuf,
    torn: usize,
}

impl SegmentReader {
    fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|e| io_error("open", path, e))?;
        Ok(Self {
            lines: std::io::BufReader::new(file).split(b'\n'),
            path: path.to_owned(),
            torn: 0,
        })
    }

    /// Up to `n` rows; empty at the end of the file.
    fn next_batch(&mut self, n: usize) -> Result<Vec<LedgerRow>, Error> {
        let mut rows = Vec::with_capacity(n.min(1024));
        while rows.len() < n {
            // Step aside now and then, as the store's inserts do: on a busy core the
            // requests' threads run between short runs of parsing.
            if (rows.len() + self.torn) % 16 == 15 {
                std::thread::yield_now();
            }
            let Some(line) = self.lines.next() else { break };
            let line = line.map_err(|e| io_error("read", &self.path, e))?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<LedgerRow>(&line) {
                Ok(r) => rows.push(r),
                Err(_) => self.torn += 1,
            }
        }
        Ok(rows)
    }
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
        let lock = DirLock::take(dir)?;
        let old = existing_segments(dir)?;
        let next = old.last().map_or(1, |(seq, _)| seq + 1);
        let current = open_segment(dir, next)?;
        let backlog = old.len() as u64;
        let old_bytes: u64 = old
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
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
        ledger
            .stats
            .backlog_bytes
            .store(old_bytes, Ordering::Relaxed);
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
                    .backlog_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
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
        let spilled = {
            let mut wal = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
            let rotate = wal.current.bytes > 0
                && (wal.closed.is_empty() || wal.current.bytes >= SEGMENT_MAX);
            if rotate {
                // When no new segment can be made (a full disk), the current one stays open
                // and the rows kept in memory are still shipped below.
                match open_segment(&self.dir, wal.current.seq + 1) {
                    Ok(next) => {
                        let old = std::mem::replace(&mut wal.current, next);
                        wal.closed.push(old.path.clone());
                        self.stats
                            .backlog
                            .store(wal.closed.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::error!(message = %e.message, "ledger: cannot rotate the write-ahead file");
                    }
                }
            }
            std::mem::take(&mut wal.spilled)
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
        loop {
            let Some(path) = self
                .wal
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .closed
                .first()
                .cloned()
            else {
                return Ok(());
            };
            let mut reader = Some(SegmentReader::open(&path)?);
            loop {
                let Some(mut r) = reader.take() else { break };
                let (r, batch) = tokio::task::spawn_blocking(move || {
                    relais_state::background_thread();
                    let batch = r.next_batch(SHIP_BATCH);
                    (r, batch)
                })
                .await
                .map_err(|e| Error::internal(format!("ledger: read task failed: {e}")))?;
                let batch = batch?;
                if batch.is_empty() {
                    if r.torn > 0 {
                        tracing::warn!(
                            segment = %path.display(),
                            lines = r.torn,
                            "ledger: skipped lines that were cut short (a write the machine did not finish)"
                        );
                    }
                    break;
                }
                if let Err(e) = self.insert(&batch).await {
                    // The rows wait on disk for the next try: make them durable, and the
                    // current file's too.
                    let current = self
                        .wal
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .current
                        .path
                        .clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        for p in [path, current] {
                            if let Ok(f) = File::open(&p) {
                                let _ = f.sync_data();
                            }
                        }
                    })
                    .await;
                    return Err(e);
                }
                reader = Some(r);
            }
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            std::fs::remove_file(&path).map_err(|e| io_error("remove", &path, e))?;
            let _ =
                self.stats
                    .backlog_bytes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                        Some(b.saturating_sub(size))
                    });
            let mut wal = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
            wal.closed.retain(|p| *p != path);
            self.stats
                .backlog
                .store(wal.closed.len() as u64, Ordering::Relaxed);
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use relais_state::SqliteStore;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("relais-wal-{name}-{:x}", fastrand_u64()))
    }

    fn fastrand_u64() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(u64::from(std::process::id()));
        h.finish()
    }

    fn row(id: &str, attempt: u32) -> LedgerRow {
        LedgerRow {
            id: id.to_owned(),
            attempt,
            request_id: id.to_owned(),
            category: "live".to_owned(),
            route: "r".to_owned(),
            cost_pusd: 7,
            status: 200,
            ..LedgerRow::default()
        }
    }

    async fn store(dir: &Path) -> Arc<SqliteStore> {
        Arc::new(SqliteStore::open(&dir.join("relais.db")).await.unwrap())
    }

    #[tokio::test]
    async fn rows_reach_the_store_and_segments_are_removed() {
        let dir = temp("ship");
        let s = store(&dir).await;
        let ledger = Ledger::open(&dir.join("wal"), s.clone(), Duration::from_secs(3600)).unwrap();
        ledger.record(&[row("a", 1), row("a", 0)]);
        ledger.record(&[row("b", 0)]);
        ledger.flush().await.unwrap();
        assert_eq!(s.rows_of("a").await.unwrap().len(), 2);
        assert_eq!(s.rows_of("b").await.unwrap(), vec![row("b", 0)]);
        assert_eq!(ledger.stats.stored.load(Ordering::Relaxed), 3);
        // Only the fresh, empty segment is left.
        let left = existing_segments(&dir.join("wal")).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(std::fs::metadata(&left[0].1).unwrap().len(), 0);
        // A second process cannot take the same directory.
        let e = Ledger::open(&dir.join("wal"), s, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(
            e.message.contains("in use by another relais"),
            "{}",
            e.message
        );
        drop(ledger);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_crash_loses_nothing_and_a_replay_adds_nothing() {
        let dir = temp("replay");
        let s = store(&dir).await;
        let wal = dir.join("wal");
        {
            // Rows written, never shipped; then a segment that was shipped but not deleted
            // (the crash fell between the store's commit and the removal), and a torn line.
            let ledger = Ledger::open(&wal, s.clone(), Duration::from_secs(3600)).unwrap();
            ledger.record(&[row("c", 0)]);
            ledger.record(&[row("d", 0)]);
        }
        s.insert_rows(&[row("d", 0)]).await.unwrap();
        std::fs::write(
            segment_path(&wal, 999),
            format!(
                "{}\n{{\"id\":\"torn",
                serde_json::to_string(&row("e", 0)).unwrap()
            ),
        )
        .unwrap();
        let ledger = Ledger::open(&wal, s.clone(), Duration::from_secs(3600)).unwrap();
        ledger.flush().await.unwrap();
        for id in ["c", "d", "e"] {
            assert_eq!(s.rows_of(id).await.unwrap().len(), 1, "{id}");
        }
        assert_eq!(
            ledger.stats.stored.load(Ordering::Relaxed),
            2,
            "d was there already"
        );
        drop(ledger);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A store that fails until told otherwise.
    struct Flaky {
        inner: Arc<SqliteStore>,
        down: AtomicBool,
    }

    impl LedgerStore for Flaky {
        fn insert_rows<'a>(
            &'a self,
            rows: &'a [LedgerRow],
        ) -> relais_core::BoxFuture<'a, Result<u64, relais_state::StoreError>> {
            if self.down.load(Ordering::Relaxed) {
                return Box::pin(async {
                    Err(relais_state::StoreError::Backend("down".to_owned()))
                });
            }
            self.inner.insert_rows(rows)
        }
        fn usage<'a>(
            &'a self,
            q: &'a relais_state::UsageQuery,
        ) -> relais_core::BoxFuture<
            'a,
            Result<Vec<relais_state::UsageLine>, relais_state::StoreError>,
        > {
            self.inner.usage(q)
        }
        fn spend<'a>(
            &'a self,
            subject: &'a str,
            day_ms: i64,
            month_ms: i64,
            since_ms: i64,
        ) -> relais_core::BoxFuture<'a, Result<relais_state::Spend, relais_state::StoreError>>
        {
            self.inner.spend(subject, day_ms, month_ms, since_ms)
        }
        fn requests<'a>(
            &'a self,
            q: &'a relais_state::RowQuery,
        ) -> relais_core::BoxFuture<'a, Result<Vec<LedgerRow>, relais_state::StoreError>> {
            self.inner.requests(q)
        }
        fn rows_of<'a>(
            &'a self,
            id: &'a str,
        ) -> relais_core::BoxFuture<'a, Result<Vec<LedgerRow>, relais_state::StoreError>> {
            self.inner.rows_of(id)
        }
        fn insert_samples<'a>(
            &'a self,
            samples: &'a [relais_state::ShadowSample],
        ) -> relais_core::BoxFuture<'a, Result<u64, relais_state::StoreError>> {
            self.inner.insert_samples(samples)
        }
        fn samples<'a>(
            &'a self,
            route: &'a str,
            backup: Option<&'a str>,
            since_ms: i64,
            limit: u32,
        ) -> relais_core::BoxFuture<
            'a,
            Result<Vec<relais_state::ShadowSample>, relais_state::StoreError>,
        > {
            self.inner.samples(route, backup, since_ms, limit)
        }
        fn put_event<'a>(
            &'a self,
            e: &'a relais_state::PlanEvent,
        ) -> relais_core::BoxFuture<'a, Result<(), relais_state::StoreError>> {
            self.inner.put_event(e)
        }
        fn events<'a>(
            &'a self,
            kind: &'a str,
            route: Option<&'a str>,
            limit: u32,
        ) -> relais_core::BoxFuture<
            'a,
            Result<Vec<relais_state::PlanEvent>, relais_state::StoreError>,
        > {
            self.inner.events(kind, route, limit)
        }
        fn put_response<'a>(
            &'a self,
            r: &'a relais_state::StoredResponse,
        ) -> relais_core::BoxFuture<'a, Result<(), relais_state::StoreError>> {
            self.inner.put_response(r)
        }
        fn get_response<'a>(
            &'a self,
            id: &'a str,
            now_ms: i64,
        ) -> relais_core::BoxFuture<
            'a,
            Result<Option<relais_state::StoredResponse>, relais_state::StoreError>,
        > {
            self.inner.get_response(id, now_ms)
        }
        fn delete_response<'a>(
            &'a self,
            id: &'a str,
        ) -> relais_core::BoxFuture<'a, Result<bool, relais_state::StoreError>> {
            self.inner.delete_response(id)
        }
        fn purge_responses(
            &self,
            now_ms: i64,
        ) -> relais_core::BoxFuture<'_, Result<u64, relais_state::StoreError>> {
            self.inner.purge_responses(now_ms)
        }
    }

    #[tokio::test]
    async fn rows_wait_on_disk_while_the_store_is_down() {
        let dir = temp("down");
        let inner = store(&dir).await;
        let flaky = Arc::new(Flaky {
            inner: inner.clone(),
            down: AtomicBool::new(true),
        });
        let ledger =
            Ledger::open(&dir.join("wal"), flaky.clone(), Duration::from_secs(3600)).unwrap();
        ledger.record(&[row("f", 0)]);
        assert!(ledger.flush().await.is_err());
        assert!(!ledger.store_up());
        ledger.record(&[row("g", 0)]);
        assert!(ledger.flush().await.is_err());
        // One closed segment waits; the second batch went on growing the current one.
        assert_eq!(ledger.stats.backlog.load(Ordering::Relaxed), 1);
        flaky.down.store(false, Ordering::Relaxed);
        ledger.flush().await.unwrap();
        ledger.flush().await.unwrap();
        assert!(ledger.store_up());
        assert_eq!(inner.rows_of("f").await.unwrap().len(), 1);
        assert_eq!(inner.rows_of("g").await.unwrap().len(), 1);
        assert_eq!(ledger.stats.backlog.load(Ordering::Relaxed), 0);
        drop(ledger);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
