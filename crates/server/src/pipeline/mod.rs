//! The request pipeline of DESIGN.md §1, one stage a file, in the order a request meets them:
//!
//! | stage | file | may | may not |
//! |---|---|---|---|
//! | 1. admit | [`admit`] | refuse (draining, key, body, route, data class, limits); create the [`Settlement`] | call an upstream |
//! | 2. route | [`route`] | try deployments, fail over, until the first event | write to the client, settle |
//! | 3. respond | [`respond`] (+ [`sse`]) | render the answer, stream events, pass each to the settlement | bill, count or tell Plan B by itself |
//! | 4. settle | [`settle`] | settle the reservation, write the ledger rows, count metrics, tell Plan B, release the slot | fail: it runs once, however the request ended |
//!
//! A handler in [`crate::api`] calls the stages in this order. Plan B is reached only through
//! the [`crate::planb::RequestTap`] that admission may attach to the settlement.
//!
//! Depends on live, caller, bill, metrics, planb and http; never on the API or the admin API.

pub(crate) mod admit;
pub(crate) mod respond;
pub(crate) mod route;
pub(crate) mod settle;
pub(crate) mod sse;

pub(crate) use settle::{End, Settlement};
