//! The same limits as [`super::Limiter`], counted in Redis for every instance together. Each
//! admission is one Lua script run atomically by Redis with Redis's own clock (no instance's
//! clock matters), checking and recording key and team in one step. A request in flight holds
//! its place for a while (`lease_secs`), so the slots of an instance that dies come back then.
//! A busy subject's requests skip Redis: the instance admits them under a slice of the limits
//! that Redis leased it ([`super::lease`]).
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
use super::lease::{Grant, Leases, Taken, Want};
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

/// A script with the shared prelude (clock, calendar, upkeep of a subject's keys) in front.
macro_rules! with_prelude {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("../lua/prelude.lua"),
            include_str!(concat!("../lua/", $file))
        ))
    };
}

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
    lease_script: Script,
    shrink: Script,
    /// Slices of busy subjects' limits leased to this instance; `None`: every request asks Redis.
    leases: Option<Arc<Leases>>,
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
    /// Connect to `url` (`redis://127.0.0.1:6379`); keys live under `prefix:`. `lease`: how
    /// long a place in flight is held for an instance that may have died; `span`: how long a
    /// busy subject's limits are leased to this instance at a time (zero: never).
    pub async fn connect(
        url: &str,
        prefix: &str,
        (lease, span): (Duration, Duration),
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
            admit: with_prelude!("admit.lua"),
            finish: with_prelude!("finish.lua"),
            seed: Script::new(include_str!("../lua/seed.lua")),
            lease_script: with_prelude!("lease.lua"),
            shrink: with_prelude!("shrink.lua"),
            leases: (!span.is_zero()).then(|| Arc::new(Leases::new(span))),
            ledger,
        });
        if !limiter.try_connect().await {
            tracing::warn!(
                "Redis is unreachable at start; limited keys follow governance.when_redis_down until it answers"
            );
        }
        tokio::spawn(watch(Arc::downgrade(&limiter)));
        if let Some(leases) = &limiter.leases {
            tokio::spawn(leaser(Arc::downgrade(&limiter), leases.clone()));
        }
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

    /// Requests admitted under leases and through Redis since start.
    pub fn admissions(&self) -> (u64, u64) {
        self.leases.as_ref().map_or((0, 0), |l| {
            (
                l.local.load(Ordering::Relaxed),
                l.exact.load(Ordering::Relaxed),
            )
        })
    }

    /// The instance stops: report every lease, so that Redis holds only what its requests
    /// really used (an unreported lease is charged its whole budget reservation when its hold
    /// ends). Bounded by a few seconds.
    pub async fn close(&self) {
        let Some(leases) = &self.leases else {
            return;
        };
        leases.close_all();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while leases.count() > 0 && tokio::time::Instant::now() < deadline {
            self.report(leases).await;
            if leases.count() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// The six keys of a subject (see prelude.lua).
    fn keys<'i>(&self, inv: &mut redis::ScriptInvocation<'i>, subject: &str, reset: Option<i64>) {
        inv.key(self.key(subject, "log"))
            .key(self.key(subject, "tok"))
            .key(self.key(subject, "cur"))
            .key(self.spend_key(subject, reset))
            .key(self.key(subject, "res"))
            .key(self.key(subject, "lw"));
    }

    /// Ask Redis for a lease: what it granted, or `None`.
    async fn ask(self: &Arc<Self>, id: &str, want: &Want) -> Result<Option<Grant>, String> {
        let l = &want.limits;
        let mut inv = self.lease_script.prepare_invoke();
        self.keys(&mut inv, &want.subject, l.budget_reset_ms);
        let span = self.leases.as_ref().map_or(Duration::ZERO, |l| l.span);
        inv.arg(id)
            .arg(u64::try_from(span.as_millis()).unwrap_or(u64::MAX))
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
            .arg(want.grant.requests)
            .arg(want.grant.tokens)
            .arg(want.grant.slots)
            .arg(want.grant.nano)
            .arg(want.unit_tokens)
            .arg(want.unit_nano)
            .arg(none_or(l.rpm))
            .arg(none_or(l.tpm))
            .arg(none_or(l.max_concurrent))
            .arg(budget_nano(l.budget_day))
            .arg(budget_nano(l.budget_month))
            .arg(budget_nano(l.budget_total));
        let r = self.call(&inv).await?;
        let n = |i: usize| r.get(i).and_then(|v| u64::try_from(*v).ok()).unwrap_or(0);
        Ok((r.len() == 4).then(|| Grant {
            requests: n(0),
            tokens: n(1),
            slots: n(2),
            nano: n(3),
        }))
    }

    /// One step of the leaser: ask for the leases busy subjects want, then report the closed
    /// ones.
    async fn renew(self: &Arc<Self>, leases: &Leases) {
        for want in leases.plan(tokio::time::Instant::now()) {
            let n = leases.number();
            let id = format!("L{}-{n}", self.instance);
            let asked = tokio::time::Instant::now();
            match self.ask(&id, &want).await {
                Ok(Some(grant)) => leases.install(n, id, &want, grant, asked),
                Ok(None) => leases.refused(&want.subject, asked),
                Err(e) => {
                    tracing::debug!(error = %e, "no lease from Redis; requests ask it one by one");
                    leases.refused(&want.subject, asked);
                }
            }
        }
        self.report(leases).await;
    }

    /// Tell Redis what each closed lease holds now.
    async fn report(&self, leases: &Leases) {
        for (n, id, subject, limits, holds, spent) in leases.reports() {
            let mut inv = self.shrink.prepare_invoke();
            self.keys(&mut inv, &subject, limits.budget_reset_ms);
            inv.arg(&id)
                .arg(holds.requests)
                .arg(holds.tokens)
                .arg(holds.slots)
                .arg(holds.nano)
                .arg(spent)
                .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX));
            let ok = match self.connection() {
                None => false,
                Some(mut conn) => matches!(
                    tokio::time::timeout(CALL_TIMEOUT, inv.invoke_async::<i64>(&mut conn)).await,
                    Ok(Ok(_))
                ),
            };
            leases.reported(n, spent, ok);
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
        let nano = cost_nano(cost);
        if let Some(leases) = &self.leases {
            if let Some(taken) = leases.admit(subjects, tokens, nano) {
                return Ok(Some(RedisTicket {
                    limiter: self.clone(),
                    held: Held::Leased {
                        taken,
                        tokens,
                        nano,
                    },
                    used: AtomicU64::new(u64::MAX),
                    spent: AtomicU64::new(0),
                }));
            }
        }
        let id = format!(
            "{}-{}",
            self.instance,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let mut inv = self.admit.prepare_invoke();
        for (sid, _, l) in subjects {
            self.keys(&mut inv, sid, l.budget_reset_ms);
        }
        inv.arg(&id)
            .arg(tokens)
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
            .arg(nano);
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
            if let Some(leases) = &self.leases {
                leases.note_exact(subjects, tokens, nano);
            }
            let ids = subjects
                .iter()
                .map(|(s, _, l)| ((*s).to_owned(), l.budget_reset_ms))
                .collect();
            return Ok(Some(RedisTicket {
                limiter: self.clone(),
                held: Held::Exact { id, subjects: ids },
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

/// The leaser: asks for leases as subjects get busy or their leases run low (woken by them, or
/// every eighth of a lease's span) and reports closed ones. Ends when the limiter is dropped.
async fn leaser(limiter: std::sync::Weak<RedisLimiter>, leases: Arc<Leases>) {
    let tick = leases.span / 8;
    loop {
        tokio::select! {
            () = leases.wake.notified() => {}
            () = tokio::time::sleep(tick) => {}
        }
        let Some(l) = limiter.upgrade() else {
            return;
        };
        if l.is_up() {
            l.renew(&leases).await;
        }
    }
}

/// A request's place in Redis, or under this instance's leases: released, with the usage
/// reported at settlement, when dropped (one Redis call per request end instead of two, none
/// under leases).
pub(crate) struct RedisTicket {
    limiter: Arc<RedisLimiter>,
    held: Held,
    /// Tokens reported at settlement; `u64::MAX` until settled.
    used: AtomicU64,
    /// Cost at settlement, pico-USD.
    spent: AtomicU64,
}

enum Held {
    /// Admitted by Redis as `id`; subject ids, each with the budget reset its spend counts from.
    Exact {
        id: String,
        subjects: Vec<(String, Option<i64>)>,
    },
    /// Admitted under leases, reserving `tokens` and `nano` nano-USD of each.
    Leased {
        taken: Taken,
        tokens: u64,
        nano: u64,
    },
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
        let used = (used != u64::MAX).then_some((used, spent));
        match &self.held {
            Held::Exact { id, subjects } => self.limiter.finish(id, subjects, used),
            Held::Leased {
                taken,
                tokens,
                nano,
            } => {
                if let Some(leases) = &self.limiter.leases {
                    leases.finish(taken, *tokens, *nano, used.map(|(t, c)| (t, cost_nano(c))));
                }
            }
        }
    }
}
