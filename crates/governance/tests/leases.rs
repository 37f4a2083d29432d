//! Cluster limits with leases, against the real Redis (127.0.0.1:6379): three limiters (three
//! instances) admit requests of random sizes for one subject as fast as they can, each binding
//! limit in turn, while a sampler reads the counts in Redis. No limit is ever passed, what
//! Redis counts at the end equals what the requests reported, and most admissions were local.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test: a failure is a failed test"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relais_core::ErrorKind;
use relais_governance::{Holder, Limits, RateLimits, RedisLimiter};

const URL: &str = "redis://127.0.0.1:6379";
const SUBJECT: &str = "team_lease";

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must run on 127.0.0.1:6379 (.ci/run starts it)")
}

/// What Redis counts for the subject: requests in the minute, tokens in the minute, requests in
/// flight, budget reserved, spend in total (nano-USD).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    requests: u64,
    tokens: u64,
    in_flight: u64,
    reserved: u64,
    spent: u64,
}

async fn counts(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Counts {
    let k = |p: &str| format!("{prefix}:{SUBJECT}:{p}");
    let (log, cur): (u64, u64) = redis::pipe()
        .zcard(k("log"))
        .zcard(k("cur"))
        .query_async(conn)
        .await
        .unwrap();
    let [r, kk, tok, res, spent]: [Option<u64>; 5] = redis::pipe()
        .hget(k("lw"), "_r")
        .hget(k("lw"), "_k")
        .hget(k("tok"), "_total")
        .hget(k("res"), "_total")
        .hget(k("spend"), "t")
        .query_async(conn)
        .await
        .unwrap();
    Counts {
        requests: log + r.unwrap_or(0),
        tokens: tok.unwrap_or(0),
        in_flight: cur + kk.unwrap_or(0),
        reserved: res.unwrap_or(0),
        spent: spent.unwrap_or(0),
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Seen {
    admitted: AtomicU64,
    refused: AtomicU64,
    tokens: AtomicU64,
    /// Nano-USD, each request's cost rounded up as Redis counts it.
    nano: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

/// Three instances, 8 clients each, asking for `secs` seconds: requests reserve 50 to 200
/// tokens and $0.0001 to $0.0004, hold 0 to 3 ms and report 40% to 100% of the reservation.
/// Returns what the clients saw, the highest counts sampled and the counts after every
/// instance closed its leases, and the admissions (leased, asked).
async fn hammer(limits: Limits, secs: f64) -> (Seen, Counts, Counts, (u64, u64)) {
    let prefix = format!("relais_leases_{}_{}", std::process::id(), fastrand_u64());
    let mut instances = Vec::new();
    for _ in 0..3 {
        let r = RedisLimiter::connect(
            URL,
            &prefix,
            (Duration::from_secs(30), Duration::from_millis(500)),
            false,
            None,
        )
        .await
        .unwrap();
        instances.push(RateLimits::Redis(r));
    }
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut conn = redis().await;
    let sampler = {
        let (stop, prefix, mut conn) = (stop.clone(), prefix.clone(), conn.clone());
        tokio::spawn(async move {
            let mut peak = Counts::default();
            while !stop.load(Ordering::Relaxed) {
                let c = counts(&mut conn, &prefix).await;
                peak.requests = peak.requests.max(c.requests);
                peak.tokens = peak.tokens.max(c.tokens);
                peak.in_flight = peak.in_flight.max(c.in_flight);
                peak.reserved = peak.reserved.max(c.reserved + c.spent);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            peak
        })
    };
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut clients = Vec::new();
    for (i, limits_at) in instances.iter().enumerate() {
        for c in 0..8u64 {
            let (limits_at, seen) = (limits_at.clone(), seen.clone());
            let mut rng = (i as u64 * 8 + c + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            clients.push(tokio::spawn(async move {
                let mut next = move |n: u64| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % n
                };
                while Instant::now() < end {
                    let tokens = 50 + next(151);
                    let cost = 100_000_000 * (1 + next(4));
                    let subjects = [(SUBJECT, Holder::Team { name: "lease" }, limits)];
                    match limits_at.admit(&subjects, tokens, cost).await {
                        Ok(Some(ticket)) => {
                            let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            seen.peak_in_flight.fetch_max(now, Ordering::SeqCst);
                            seen.admitted.fetch_add(1, Ordering::SeqCst);
                            let hold = next(4);
                            if hold > 0 {
                                tokio::time::sleep(Duration::from_millis(hold)).await;
                            }
                            let used = tokens * (40 + next(61)) / 100;
                            let spent = cost * (40 + next(61)) / 100;
                            ticket.settle(used, spent);
                            seen.tokens.fetch_add(used, Ordering::SeqCst);
                            seen.nano.fetch_add(spent.div_ceil(1000), Ordering::SeqCst);
                            seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                            drop(ticket);
                        }
                        Ok(None) => panic!("admitted without a ticket: Redis is down"),
                        Err(e) => {
                            assert!(
                                matches!(
                                    e.kind,
                                    ErrorKind::RateLimited | ErrorKind::BudgetExceeded
                                ),
                                "refused: {:?} {}",
                                e.kind,
                                e.message
                            );
                            seen.refused.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    for c in clients {
        c.await.unwrap();
    }
    // The figures settle a moment after the last request ends (exact requests report off the
    // request's path); then every instance stops and reports its leases.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut admissions = (0, 0);
    for i in &instances {
        i.close().await;
        let (l, a) = i.admissions().unwrap();
        admissions = (admissions.0 + l, admissions.1 + a);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    let after = counts(&mut conn, &prefix).await;
    let _: () = redis::cmd("EVAL")
        .arg(format!(
            "for _, k in ipairs(redis.call('KEYS', '{prefix}:*')) do redis.call('DEL', k) end return 0"
        ))
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap_or(());
    let seen = Arc::into_inner(seen).unwrap();
    (seen, peak, after, admissions)
}

fn fastrand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into()
}

/// Every case: nothing left in flight or reserved, Redis counts exactly what was admitted,
/// used and spent, and most admissions were local.
fn check_books(what: &str, seen: &Seen, after: Counts, (leased, asked): (u64, u64)) {
    let admitted = seen.admitted.load(Ordering::SeqCst);
    eprintln!(
        "figures: {what}: {admitted} admitted ({leased} under leases, {asked} by asking Redis), {} refused; \
         after: {after:?}; clients: {} tokens, {} nano-USD",
        seen.refused.load(Ordering::SeqCst),
        seen.tokens.load(Ordering::SeqCst),
        seen.nano.load(Ordering::SeqCst)
    );
    assert_eq!(leased + asked, admitted);
    assert!(
        leased * 2 > admitted,
        "{what}: only {leased} of {admitted} under leases"
    );
    assert_eq!(after.requests, admitted, "{what}: requests counted");
    assert_eq!(
        after.tokens,
        seen.tokens.load(Ordering::SeqCst),
        "{what}: tokens counted"
    );
    assert_eq!(after.in_flight, 0, "{what}: in flight after the end");
    assert_eq!(after.reserved, 0, "{what}: reserved after the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_rpm_exact_across_three_instances() {
    let limits = Limits {
        rpm: Some(3000),
        ..Limits::default()
    };
    let (seen, peak, after, admissions) = hammer(limits, 2.5).await;
    check_books("rpm 3000", &seen, after, admissions);
    let admitted = seen.admitted.load(Ordering::SeqCst);
    assert!(peak.requests <= 3000, "{} requests counted", peak.requests);
    assert!(admitted <= 3000, "{admitted} admitted past 3000");
    assert!(admitted >= 2970, "only {admitted} of 3000 admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_tpm_exact_across_three_instances() {
    let limits = Limits {
        tpm: Some(300_000),
        ..Limits::default()
    };
    let (seen, peak, after, admissions) = hammer(limits, 2.5).await;
    check_books("tpm 300000", &seen, after, admissions);
    let used = seen.tokens.load(Ordering::SeqCst);
    assert!(peak.tokens <= 300_000, "{} tokens counted", peak.tokens);
    assert!(used <= 300_000, "{used} tokens used past 300000");
    // Reservations are worst cases that settle at 40-100%: the minute fills with what was
    // reported plus what is reserved, so the used tokens reach most of the limit.
    assert!(used >= 250_000, "only {used} of 300000 tokens used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_budgets_and_concurrency_exact_across_three_instances() {
    // $0.40 in total: about 1,600 requests at $0.0001-0.0004 reserved, 40-100% spent; the 24
    // clients never reach 96 at once, but every lease carries places in flight, which must
    // all come back.
    let limits = Limits {
        budget_total: Some(400_000_000_000),
        max_concurrent: Some(96),
        ..Limits::default()
    };
    let (seen, peak, after, admissions) = hammer(limits, 2.5).await;
    check_books("budget $0.40, 96 at once", &seen, after, admissions);
    let nano = seen.nano.load(Ordering::SeqCst);
    assert_eq!(after.spent, nano, "spend counted");
    assert!(nano <= 400_000_000, "{nano} nano-USD spent past $0.40");
    assert!(
        peak.reserved <= 400_000_000,
        "{} nano-USD spent or reserved",
        peak.reserved
    );
    assert!(
        nano >= 300_000_000,
        "only {nano} of 400000000 nano-USD spent"
    );
    assert!(peak.in_flight <= 96, "{} in flight", peak.in_flight);
}
