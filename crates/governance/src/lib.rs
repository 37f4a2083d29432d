//! Governance (DESIGN.md §6): who may spend what on which vendor. Today: virtual keys and teams,
//! issued and checked here, stored through `relais-state`. Limits, budgets and the ledger build
//! on the same [`Access`].
//!
//! This crate must never depend on the server or on any wire format.

mod keys;
mod limits;
mod redis_limits;

pub use keys::{Access, IssuedKey, KEY_PREFIX, KeyRing, hash_key};
pub use limits::{Holder, Limiter, RateLimits, Subject, Ticket};
pub use redis_limits::RedisLimiter;
pub use relais_state::Limits;
