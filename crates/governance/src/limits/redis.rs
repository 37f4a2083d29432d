//! The same limits as [`super::Limiter`], counted in Redis for every instance together. Each
//! admission is one Lua script run atomically by Redis with Redis's own clock (no instance's
//! clock matters), checking and recording key and team in one step. A request in flight holds
//! a lease, so the slots of an instance that dies come back when the lease ends.
//!
//! When Redis cannot be reached, admission fails closed (503) unless configured to fail open;
//! either way it is logged, never silent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use relais_core::{Error, ErrorKind, Side};

use relais_state::LedgerStore;

use super::budget::spend_in_ledger;
use super::subject::{Period, Subject, refuse, refuse_budget};
use crate::calendar::{day_of, month_of};
use crate::money::PICO_PER_NANO;

/// How long one Redis call may take before the store counts as down. A Redis that answers
/// at all answers in well under a millisecond; this bounds only a hung one. 500 ms was too
/// tight: six debug-build instances and 60 clients on two cores saw calls of over 500 ms and
/// refused healthy traffic with 503s.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the watcher checks Redis (connects, or pings), with or without traffic.
const WATCH_EVERY: Duration = Duration::from_secs(1);

pub struct RedisLimiter {
    client: redis::Client,
    /// `None` until a first connection succeeds: an instance starts while Redis is down and
    /// the watcher connects when it comes back (the manager itself reconnects after that).
    conn: std::sync::Mutex<Option<ConnectionManager>>,
    /// Whether the last call or health check reached Redis (for `/readyz` and metrics).
    up: std::sync::atomic::AtomicBool,
    prefix: String,
    lease: Duration,
    fail_open: bool,
    /// Distinguishes this instance's request ids from the others'.
    instance: String,
    next: AtomicU64,
    admit: Script,
    finish: Script,
    seed: Script,
    /// Where a subject's spend is read from when Redis does not have it yet.
    ledger: Option<Arc<dyn LedgerStore>>,
}

fn none_or(v: Option<u64>) -> i64 {
    v.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// A budget in nano-USD, rounded down (never more room than configured).
fn budget_nano(v: Option<u64>) -> i64 {
    none_or(v.map(|p| p / PICO_PER_NANO))
}

/// A cost in nano-USD, rounded up (never less spend than incurred).
fn cost_nano(pico: u64) -> u64 {
    pico.div_ceil(PICO_PER_NANO)
}

impl RedisLimiter {
    /// Connect to `url` (`redis://127.0.0.1:6379`); keys live under `prefix:`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        lease: Duration,
        fail_open: bool,
        ledger: Option<Arc<dyn LedgerStore>>,
    ) -> Result<Arc<Self>, Error> {
        let unavailable = |e: String| Error::new(ErrorKind::Unavailable, Side::Gateway, e);
        let client =
            redis::Client::open(url).map_err(|e| unavailable(format!("not a Redis URL: {e}")))?;
        let mut buf = [0u8; 6];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
            .map_err(|_| Error::internal("the operating system's random source failed"))?;
        let instance: String = buf.iter().map(|b| format!("{b:02x}")).collect();
        let limiter = Arc::new(Self {
            client,
            conn: std::sync::Mutex::new(None),
            up: std::sync::atomic::AtomicBool::new(false),
            prefix: prefix.to_owned(),
            lease,
            fail_open,
            instance,
            next: AtomicU64::new(0),
            admit: Script::new(include_str!("../lua/admit.lua")),
            finish: Script::new(include_str!("../lua/finish.lua")),
            seed: Script::new(include_str!("../lua/seed.lua")),
            ledger,
        });
        if !limiter.try_connect().await {
            tracing::warn!(
                "Redis is unreachable at start; limited keys follow governance.when_redis_down until it answers"
            );
        }
        tokio::spawn(watch(Arc::downgrade(&limiter)));
        Ok(limiter)
    }

    /// Whether the last call reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The connection, or `None` while there is none (the watcher is trying to make one; a
    /// request never waits for that).
    fn connection(&self) -> Option<ConnectionManager> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// One connection attempt; on success the connection is kept (and the manager reconnects
    /// by itself from then on).
    async fn try_connect(&self) -> bool {
        let fresh = tokio::time::timeout(
            Duration::from_secs(2),
            ConnectionManager::new(self.client.clone()),
        )
        .await;
        match fresh {
            Ok(Ok(c)) => {
                tracing::info!("connected to Redis");
                self.up.store(true, Ordering::Relaxed);
                *self
                    .conn
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c);
                true
            }
            _ => {
                self.up.store(false, Ordering::Relaxed);
                false
            }
        }
    }

    fn key(&self, subject: &str, part: &str) -> String {
        format!("{}:{subject}:{part}", self.prefix)
    }

    /// The spend HASH of a subject since its last budget reset: a reset starts a new one,
    /// seeded from the ledger without what came before (the old one is left behind: a few
    /// bytes per reset).
    fn spend_key(&self, subject: &str, reset_ms: Option<i64>) -> String {
        match reset_ms {
            None => self.key(subject, "spend"),
            Some(at) => format!("{}:{subject}:spend@{at}", self.prefix),
        }
    }

    pub(crate) async fn admit(
        self: &Arc<Self>,
        subjects: &[Subject<'_>],
        tokens: u64,
        cost: u64,
    ) -> Result<Option<RedisTicket>, Error> {
        let id = format!(
            "{}-{}",
            self.instance,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let mut inv = self.admit.prepare_invoke();
        for (sid, _, l) in subjects {
            inv.key(self.key(sid, "log"))
                .key(self.key(sid, "tok"))
                .key(self.key(sid, "cur"))
                .key(self.spend_key(sid, l.budget_reset_ms))
                .key(self.key(sid, "res"));
        }
        inv.arg(&id)
            .arg(tokens)
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
            .arg(cost_nano(cost));
        for (_, _, l) in subjects {
            inv.arg(none_or(l.rpm))
                .arg(none_or(l.tpm))
                .arg(none_or(l.max_concurrent))
                .arg(budget_nano(l.budget_day))
                .arg(budget_nano(l.budget_month))
                .arg(budget_nano(l.budget_total));
        }
        let mut result = self.call(&inv).await;
        // A subject with a budget Redis has not seen (a new subject, or Redis lost its data):
        // read its spend from the ledger, seed it, and ask again, at most once per subject.
        let mut seeded = 0;
        while let Ok(r) = &result {
            if r.get(1) != Some(&6) || seeded >= subjects.len() {
                break;
            }
            let index = r.first().and_then(|i| usize::try_from(*i).ok());
            let Some((sid, _, limits)) = index.and_then(|i| subjects.get(i)) else {
                break;
            };
            self.seed_spend(sid, limits).await?;
            seeded += 1;
            result = self.call(&inv).await;
        }
        self.up.store(result.is_ok(), Ordering::Relaxed);
        let r = match result {
            Ok(r) => r,
            Err(e) if self.fail_open => {
                tracing::warn!(error = %e, "Redis is unreachable: admitting without limits (governance.when_redis_down = \"open\")");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis is unreachable: refusing requests of limited keys (governance.when_redis_down = \"closed\")");
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    Side::Gateway,
                    "the limit store is unreachable; try again shortly",
                ));
            }
        };
        let (index, reason, wait) = (
            r.first().copied().unwrap_or(-1),
            r.get(1).copied().unwrap_or(0),
            r.get(2).copied().unwrap_or(0),
        );
        if index < 0 {
            let ids = subjects
                .iter()
                .map(|(s, _, l)| ((*s).to_owned(), l.budget_reset_ms))
                .collect();
            return Ok(Some(RedisTicket {
                limiter: self.clone(),
                id,
                subjects: ids,
                used: AtomicU64::new(u64::MAX),
                spent: AtomicU64::new(0),
            }));
        }
        let (_, who, limits) = usize::try_from(index)
            .ok()
            .and_then(|i| subjects.get(i))
            .ok_or_else(|| Error::internal("the limit script named no subject"))?;
        let wait = u64::try_from(wait).ok().map(Duration::from_millis);
        if reason == 5 {
            let period = Period::from_code(r.get(2).copied().unwrap_or(3));
            let used = u64::try_from(r.get(3).copied().unwrap_or(0)).unwrap_or(0);
            return Err(refuse_budget(
                who,
                period,
                period.limit(limits).unwrap_or(0),
                used.saturating_mul(PICO_PER_NANO),
            ));
        }
        if reason == 6 {
            return Err(Error::new(
                ErrorKind::Unavailable,
                Side::Gateway,
                "budgets could not be read; try again shortly",
            ));
        }
        Err(match reason {
            1 => refuse(
                who,
                format!(
                    "limit of {} requests at once",
                    limits.max_concurrent.unwrap_or(0)
                ),
                wait,
            ),
            2 => refuse(
                who,
                format!("{} requests per minute", limits.rpm.unwrap_or(0)),
                wait,
            ),
            3 => refuse(
                who,
                format!("{} tokens per minute", limits.tpm.unwrap_or(0)),
                wait,
            ),
            _ => refuse(
                who,
                format!(
                    "{} tokens per minute: this request alone may use {tokens} (prompt plus max_tokens); lower max_tokens",
                    limits.tpm.unwrap_or(0)
                ),
                None,
            ),
        })
    }

    async fn call(self: &Arc<Self>, inv: &redis::ScriptInvocation<'_>) -> Result<Vec<i64>, String> {
        match self.connection() {
            None => Err("not connected".to_owned()),
            Some(mut conn) => {
                match tokio::time::timeout(CALL_TIMEOUT, inv.invoke_async(&mut conn)).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {} ms", CALL_TIMEOUT.as_millis())),
                }
            }
        }
    }

    /// Seed a subject's spend in Redis from the ledger store.
    async fn seed_spend(
        self: &Arc<Self>,
        subject: &str,
        limits: &relais_state::Limits,
    ) -> Result<(), Error> {
        let unreadable = |what: String| {
            tracing::warn!(error = %what, "cannot seed a budget's spend; refusing its requests until it can");
            Error::new(
                ErrorKind::Unavailable,
                Side::Gateway,
                "the ledger store is unreachable, so budgets cannot be checked; try again shortly",
            )
        };
        let now = crate::calendar::unix_secs();
        let spend = match &self.ledger {
            None => relais_state::Spend::default(),
            Some(store) => spend_in_ledger(store.as_ref(), subject, limits, now)
                .await
                .map_err(|e| unreadable(e.to_string()))?,
        };
        let day = day_of(now);
        let mut inv = self.seed.prepare_invoke();
        inv.key(self.spend_key(subject, limits.budget_reset_ms))
            .arg(cost_nano(spend.total))
            .arg(cost_nano(spend.day))
            .arg(day)
            .arg(cost_nano(spend.month))
            .arg(month_of(day));
        let Some(mut conn) = self.connection() else {
            return Err(unreadable("Redis is not connected".to_owned()));
        };
        match tokio::time::timeout(CALL_TIMEOUT, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unreadable(e.to_string())),
            Err(_) => Err(unreadable("Redis did not answer".to_owned())),
        }
    }

    /// The request ended: free its place in flight and its budget reservation and, when the
    /// usage is known (tokens, cost in pico-USD), count it instead of the reservation. One
    /// call, off the request's path.
    pub(crate) fn finish(
        &self,
        id: &str,
        subjects: &[(String, Option<i64>)],
        used: Option<(u64, u64)>,
    ) {
        let keys = subjects
            .iter()
            .flat_map(|(s, reset)| {
                [
                    self.key(s, "tok"),
                    self.key(s, "cur"),
                    self.spend_key(s, *reset),
                    self.key(s, "res"),
                ]
            })
            .collect();
        let (tokens, cost) = used.map_or((-1, -1), |(t, c)| {
            (
                i64::try_from(t).unwrap_or(i64::MAX),
                i64::try_from(cost_nano(c)).unwrap_or(i64::MAX),
            )
        });
        self.spawn(
            &self.finish,
            keys,
            vec![id.to_owned(), tokens.to_string(), cost.to_string()],
            "finish",
        );
    }

    fn spawn(&self, script: &Script, keys: Vec<String>, args: Vec<String>, what: &'static str) {
        // Outside a runtime (a ticket dropped during shutdown) the lease frees the slot.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut conn) = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        else {
            return;
        };
        let script = script.clone();
        handle.spawn(async move {
            let mut inv = script.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            for a in &args {
                inv.arg(a);
            }
            let r = tokio::time::timeout(CALL_TIMEOUT, inv.invoke_async::<i64>(&mut conn)).await;
            if !matches!(r, Ok(Ok(_))) {
                tracing::warn!(
                    what,
                    "Redis call failed; the entry expires with its lease or its minute"
                );
            }
        });
    }
}

/// Every [`WATCH_EVERY`]: connect while there is no connection, else ping, so `is_up` (and so
/// `/readyz` and `relais_limit_store_up`) follows Redis even when no limited request arrives,
/// and an instance a balancer took out of rotation comes back on its own. Ends when the
/// limiter is dropped.
async fn watch(limiter: std::sync::Weak<RedisLimiter>) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(l) = limiter.upgrade() else {
            return;
        };
        let Some(mut conn) = l.connection() else {
            l.try_connect().await;
            continue;
        };
        let ping = redis::cmd("PING");
        let ok = matches!(
            tokio::time::timeout(CALL_TIMEOUT, ping.query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        );
        if l.up.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("Redis answers again");
            } else {
                tracing::warn!(
                    "Redis does not answer; limited keys follow governance.when_redis_down"
                );
            }
        }
    }
}

/// A request's lease in Redis: released, with the usage reported at settlement, when dropped
/// (one Redis call per request end instead of two).
pub(crate) struct RedisTicket {
    limiter: Arc<RedisLimiter>,
    id: String,
    /// Subject ids, each with the budget reset its spend counts from.
    subjects: Vec<(String, Option<i64>)>,
    /// Tokens reported at settlement; `u64::MAX` until settled.
    used: AtomicU64,
    /// Cost at settlement, pico-USD.
    spent: AtomicU64,
}

impl RedisTicket {
    /// Keep what the request used, to send with the release; settling twice keeps the first.
    pub(crate) fn settle(&self, tokens: u64, cost: u64) {
        if self.used.load(Ordering::Relaxed) == u64::MAX {
            self.spent.store(cost, Ordering::Relaxed);
            self.used.store(tokens, Ordering::Relaxed);
        }
    }
}

impl Drop for RedisTicket {
    fn drop(&mut self) {
        let used = self.used.load(Ordering::Relaxed);
        let spent = self.spent.load(Ordering::Relaxed);
        self.limiter.finish(
            &self.id,
            &self.subjects,
            (used != u64::MAX).then_some((used, spent)),
        );
    }
}
