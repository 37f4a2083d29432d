//! Where cached answers live: in this process (bounded by bytes, least recently used out
//! first) or in Redis (shared by every instance, values compressed, expiry kept by Redis).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::Entry;

/// The in-process store.
pub(crate) struct Memory {
    inner: Mutex<Lru>,
    capacity: usize,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<String, Slot>,
    /// Use order: tick -> key; the smallest tick is the least recently used.
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
}

struct Slot {
    entry: Arc<Entry>,
    expires: Instant,
    bytes: usize,
    tick: u64,
}

impl Memory {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity,
        }
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let mut lru = self.lru();
        let lru = &mut *lru;
        let now = Instant::now();
        let slot = lru.entries.get_mut(key)?;
        if slot.expires <= now {
            let bytes = slot.bytes;
            let tick = slot.tick;
            lru.entries.remove(key);
            lru.order.remove(&tick);
            lru.bytes -= bytes;
            return None;
        }
        lru.tick += 1;
        lru.order.remove(&slot.tick);
        slot.tick = lru.tick;
        lru.order.insert(lru.tick, key.to_owned());
        Some(slot.entry.clone())
    }

    /// Keep `entry` (about `bytes` large) for `ttl`, making room by dropping the least
    /// recently used entries.
    pub(crate) fn put(&self, key: String, entry: Arc<Entry>, bytes: usize, ttl: Duration) {
        if bytes > self.capacity {
            return;
        }
        let mut lru = self.lru();
        let lru = &mut *lru;
        if let Some(old) = lru.entries.remove(&key) {
            lru.order.remove(&old.tick);
            lru.bytes -= old.bytes;
        }
        while lru.bytes + bytes > self.capacity {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(old) = lru.entries.remove(&oldest) {
                lru.bytes -= old.bytes;
            }
        }
        lru.tick += 1;
        lru.order.insert(lru.tick, key.clone());
        lru.bytes += bytes;
        let slot = Slot {
            entry,
            expires: Instant::now() + ttl,
            bytes,
            tick: lru.tick,
        };
        lru.entries.insert(key, slot);
    }

    /// Entries and bytes held now.
    pub(crate) fn size(&self) -> (usize, usize) {
        let lru = self.lru();
        (lru.entries.len(), lru.bytes)
    }
}

/// How long one Redis call may take before the cache is skipped for that request (a miss is
/// always a correct answer).
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// The shared store.
pub(crate) struct Redis {
    client: redis::Client,
    conn: OnceCell<redis::aio::ConnectionManager>,
    prefix: String,
}

impl Redis {
    pub(crate) fn new(url: &str, prefix: &str) -> Result<Self, String> {
        Ok(Self {
            client: redis::Client::open(url).map_err(|e| format!("not a Redis URL: {e}"))?,
            conn: OnceCell::new(),
            prefix: prefix.to_owned(),
        })
    }

    async fn conn(&self) -> Option<redis::aio::ConnectionManager> {
        let made = self
            .conn
            .get_or_try_init(|| async {
                match tokio::time::timeout(
                    CALL_TIMEOUT * 4,
                    redis::aio::ConnectionManager::new(self.client.clone()),
                )
                .await
                {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer".to_owned()),
                }
            })
            .await;
        match made {
            Ok(c) => Some(c.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "response cache: Redis unreachable; answering without it");
                None
            }
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Entry>, String> {
        let Some(mut conn) = self.conn().await else {
            return Err("not connected".to_owned());
        };
        let cmd = redis::cmd("GET").arg(self.key(key)).clone();
        let raw: Option<Vec<u8>> =
            match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut conn)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("no answer".to_owned()),
            };
        let Some(raw) = raw else {
            return Ok(None);
        };
        let json = lz4_flex::decompress_size_prepended(&raw).map_err(|e| e.to_string())?;
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Keep `entry` for `ttl` (its JSON, LZ4-compressed).
    pub(crate) async fn put(&self, key: &str, entry: &Entry, ttl: Duration) -> Result<(), String> {
        let json = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
        let value = lz4_flex::compress_prepend_size(&json);
        let Some(mut conn) = self.conn().await else {
            return Err("not connected".to_owned());
        };
        let cmd = redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .clone();
        match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> Arc<Entry> {
        Arc::new(Entry {
            response: relais_core::ChatResponse {
                text: text.to_owned(),
                ..Default::default()
            },
            ..Entry::default()
        })
    }

    /// Bounded by bytes: the least recently used entry leaves first; an expired one is gone.
    #[tokio::test(start_paused = true)]
    async fn memory_keeps_the_most_recently_used_within_its_bytes() {
        let m = Memory::new(300);
        let ttl = Duration::from_secs(60);
        m.put("a".into(), entry("a"), 100, ttl);
        m.put("b".into(), entry("b"), 100, ttl);
        m.put("c".into(), entry("c"), 100, ttl);
        assert!(m.get("a").is_some(), "a used again: b is now the oldest");
        m.put("d".into(), entry("d"), 100, ttl);
        assert!(m.get("b").is_none());
        assert!(m.get("a").is_some() && m.get("c").is_some() && m.get("d").is_some());
        assert_eq!(m.size(), (3, 300));
        m.put("huge".into(), entry("x"), 301, ttl);
        assert!(m.get("huge").is_none(), "larger than the store: not kept");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(m.get("a").is_none(), "expired");
        assert_eq!(m.size().0, 2);
    }
}
