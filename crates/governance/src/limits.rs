//! Per-key and per-team rate limits and budgets: requests per minute, tokens per minute and
//! requests at once, over an exact sliding minute (a log of what was admitted, not buckets), so
//! no minute-long window ever holds more than the limit.
//!
//! Admission reserves the worst case: the prompt estimate plus the request's output cap (or the
//! configured default cap); settlement replaces the reservation with the tokens the upstream
//! reported, so concurrent requests can never overrun a TPM limit, and a short answer gives
//! the unused part back. A shared store for many instances (Redis) builds on the same
//! [`Ticket`] contract.
//!
//! This file is the facade: [`RateLimits`] (in process, [`local`], or in Redis, [`redis`]) and
//! the [`Ticket`] either hands out. [`subject`] holds the vocabulary both share and
//! [`budget`] the spend of one subject.

pub(crate) mod budget;
pub(crate) mod lease;
pub(crate) mod local;
pub(crate) mod redis;
pub(crate) mod subject;

use std::sync::Arc;

use relais_core::Error;

pub use budget::spend_in_ledger;
pub use local::Limiter;
pub use redis::RedisLimiter;
pub use subject::{Holder, Subject};

/// An admitted request's place under its limits: it holds the concurrency slots until dropped,
/// and [`Ticket::settle`] replaces the reserved tokens with the real ones.
pub struct Ticket {
    inner: TicketInner,
}

enum TicketInner {
    Local(local::LocalTicket),
    Redis(redis::RedisTicket),
}

impl Ticket {
    /// The upstream reported what the request really used (`tokens`, costing `cost` pico-USD):
    /// count that instead of the reservation. Settling twice counts the first. Dropping the
    /// ticket releases its slots (and, never settled, its reservation).
    pub fn settle(&self, tokens: u64, cost: u64) {
        match &self.inner {
            TicketInner::Local(t) => t.settle(tokens, cost),
            TicketInner::Redis(t) => t.settle(tokens, cost),
        }
    }
}

/// Where limits are counted: in this process, or in Redis for every instance together.
#[derive(Clone)]
pub enum RateLimits {
    Local(Arc<Limiter>),
    Redis(Arc<RedisLimiter>),
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::Local(Arc::default())
    }
}

impl RateLimits {
    /// Admit a request using up to `tokens` and costing up to `cost` pico-USD under every
    /// subject's limits and budgets, all or nothing. `Ok(None)`: admitted without a ticket
    /// (Redis down and configured to fail open).
    pub async fn admit(
        &self,
        subjects: &[Subject<'_>],
        tokens: u64,
        cost: u64,
    ) -> Result<Option<Ticket>, Error> {
        match self {
            Self::Local(l) => {
                l.seed(subjects).await?;
                let t = l.admit(subjects, tokens, cost)?;
                Ok(Some(Ticket {
                    inner: TicketInner::Local(t),
                }))
            }
            Self::Redis(r) => Ok(r.admit(subjects, tokens, cost).await?.map(|t| Ticket {
                inner: TicketInner::Redis(t),
            })),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Redis(_) => "redis",
        }
    }

    /// Requests admitted under this instance's leases and through the store since start (in
    /// process: none leased; the store's count is not kept).
    pub fn admissions(&self) -> Option<(u64, u64)> {
        match self {
            Self::Local(_) => None,
            Self::Redis(r) => Some(r.admissions()),
        }
    }

    /// The instance stops: give back what it holds in a shared store.
    pub async fn close(&self) {
        if let Self::Redis(r) = self {
            r.close().await;
        }
    }

    /// Whether the counts can be kept: always in process; with Redis, whether it answered last.
    pub fn is_up(&self) -> bool {
        match self {
            Self::Local(_) => true,
            Self::Redis(r) => r.is_up(),
        }
    }
}
