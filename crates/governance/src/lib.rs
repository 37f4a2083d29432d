//! Governance (DESIGN.md §6): who may spend what on which vendor. Virtual keys and teams
//! ([`KeyRing`]), rate limits and USD budgets counted in process or in Redis ([`RateLimits`]),
//! the ledger's write path ([`Ledger`]), all stored through `relais-state`, and the data
//! guardrails' detectors ([`guard`]).
//!
//! This crate must never depend on the server or on any wire format.

mod calendar;
pub mod guard;
mod keys;
mod ledger;
mod limits;
mod money;

pub use calendar::{date_of_day, parse_date, period_starts};
pub use keys::{Access, Grant, IssuedKey, KEY_PREFIX, KeyRing, hash_key};
pub use ledger::{Ledger, LedgerStats};
pub use limits::{Holder, Limiter, RateLimits, RedisLimiter, Subject, Ticket, spend_in_ledger};
pub use money::{parse_usd, usd, usd_plain};
pub use relais_state::{LedgerRow, Limits, Reach};
