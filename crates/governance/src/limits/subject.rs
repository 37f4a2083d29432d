//! The vocabulary every limiter shares: a subject of admission (its id, its [`Holder`] and
//! limits), the budget [`Period`]s, and the refusals a client reads. A leaf: it depends on no
//! other part of the limits.

use std::time::Duration;

use relais_core::{Error, ErrorKind, Retry, Side};
use relais_state::Limits;

use crate::money::usd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Period {
    Day,
    Month,
    Total,
}

impl Period {
    fn describe(self) -> &'static str {
        match self {
            Self::Day => "daily budget (resets at 00:00 UTC)",
            Self::Month => "monthly budget (resets on the 1st, 00:00 UTC)",
            Self::Total => "total budget",
        }
    }

    pub(crate) fn from_code(code: i64) -> Self {
        match code {
            1 => Self::Day,
            2 => Self::Month,
            _ => Self::Total,
        }
    }

    pub(crate) fn limit(self, l: &Limits) -> Option<u64> {
        match self {
            Self::Day => l.budget_day,
            Self::Month => l.budget_month,
            Self::Total => l.budget_total,
        }
    }
}

pub(crate) fn refuse_budget(who: &Holder<'_>, period: Period, limit: u64, used: u64) -> Error {
    Error::new(
        ErrorKind::BudgetExceeded,
        Side::Client,
        format!(
            "{who} has used or reserved {} of its {} of {}; this request could cost more than what is left",
            usd(used),
            period.describe(),
            usd(limit)
        ),
    )
    .with_code("budget_exceeded")
}

/// Whose limit a subject is: named only when a request is refused, so admission formats nothing.
#[derive(Debug, Clone, Copy)]
pub enum Holder<'a> {
    Key { name: &'a str, prefix: &'a str },
    Team { name: &'a str },
}

impl std::fmt::Display for Holder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key { name, prefix } => write!(f, "key '{name}' ({prefix}...)"),
            Self::Team { name } => write!(f, "team '{name}'"),
        }
    }
}

/// One subject of an admission: its id (a key's or team's id, distinct by their prefixes),
/// whose it is, and its limits.
pub type Subject<'a> = (&'a str, Holder<'a>, Limits);

pub(crate) fn refuse(who: &Holder<'_>, what: String, wait: Option<Duration>) -> Error {
    let mut e = Error::new(
        ErrorKind::RateLimited,
        Side::Client,
        format!("{who} is over its {what}"),
    )
    .with_code("rate_limit_exceeded");
    if let Some(w) = wait {
        e = e.with_retry(Retry::After(w.max(Duration::from_secs(1))));
    }
    e
}
