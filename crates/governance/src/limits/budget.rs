//! USD budgets per UTC day, UTC month and in total, for keys and teams. Money is integer
//! pico-USD (10⁻¹² USD) here; Redis counts nano-USD (its Lua numbers are doubles, exact to 2⁵³:
//! $9M in nano-USD, only $9k in pico-USD), rounding costs up and budgets down so rounding can
//! never let spend pass a budget.
//!
//! Admission reserves the request's worst-case cost (prompt estimate and output cap at the
//! route's dearest deployment); a budget admits a request only when spent + reserved + this
//! reservation fits, so no number of concurrent requests can overrun it. Settlement adds the
//! real cost to the period it ends in and frees the reservation.

use relais_state::{LedgerStore, Limits, Spend, StoreError};

use super::subject::Period;
use crate::calendar::{day_of, month_of, period_starts};

/// A subject's spend in the ledger as its budgets count it: since the start of the UTC day, of
/// the month and ever, none of it before the subject's last budget reset.
pub async fn spend_in_ledger(
    store: &dyn LedgerStore,
    subject: &str,
    limits: &Limits,
    now_secs: i64,
) -> Result<Spend, StoreError> {
    let (day, month) = period_starts(now_secs);
    let since = limits.budget_reset_ms.unwrap_or(0);
    store
        .spend(subject, day.max(since), month.max(since), since)
        .await
}

/// A subject's spend in this process: seeded from the ledger the first time the subject is
/// seen with a budget, then kept up to date by settlements.
#[derive(Debug, Default)]
pub(crate) struct Spent {
    day: i64,
    month: i64,
    spent_day: u64,
    spent_month: u64,
    spent_total: u64,
    /// Worst-case cost of the subject's requests in flight.
    pub(crate) reserved: u64,
    /// The budget reset this spend counts from (`Limits::budget_reset_ms` when seeded): a newer
    /// reset makes it stale.
    reset_ms: Option<i64>,
}

impl Spent {
    pub(crate) fn seeded(s: Spend, now_secs: i64, reset_ms: Option<i64>) -> Self {
        let day = day_of(now_secs);
        Self {
            day,
            month: month_of(day),
            spent_day: s.day,
            spent_month: s.month,
            spent_total: s.total,
            reserved: 0,
            reset_ms,
        }
    }

    /// Whether this spend counts from the reset in force (else it must be read again).
    pub(crate) fn current(&self, l: &Limits) -> bool {
        self.reset_ms == l.budget_reset_ms
    }

    /// A new day or month starts from zero.
    fn roll(&mut self, now_secs: i64) {
        let day = day_of(now_secs);
        if day != self.day {
            self.day = day;
            self.spent_day = 0;
            let month = month_of(day);
            if month != self.month {
                self.month = month;
                self.spent_month = 0;
            }
        }
    }

    /// The first budget that `cost` more would pass, with what is used of it.
    pub(crate) fn over(&mut self, l: &Limits, cost: u64, now_secs: i64) -> Option<(Period, u64)> {
        self.roll(now_secs);
        for (p, spent) in [
            (Period::Day, self.spent_day),
            (Period::Month, self.spent_month),
            (Period::Total, self.spent_total),
        ] {
            if let Some(limit) = p.limit(l) {
                let used = spent.saturating_add(self.reserved);
                if used.saturating_add(cost) > limit {
                    return Some((p, used));
                }
            }
        }
        None
    }

    pub(crate) fn add(&mut self, cost: u64, now_secs: i64) {
        self.roll(now_secs);
        self.spent_day = self.spent_day.saturating_add(cost);
        self.spent_month = self.spent_month.saturating_add(cost);
        self.spent_total = self.spent_total.saturating_add(cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::*;
    use crate::money::*;

    #[test]
    fn calendar_matches_known_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        // 2026-11-23 is day 20,780; 2024-02-29 exists; 2000-03-01 follows a leap day.
        assert_eq!(civil(20_780), (2026, 11, 23));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(11_017), (2000, 3, 1));
        assert_eq!(month_of(20_780), 2026 * 12 + 10);
        let (day, month) = period_starts(20_780 * 86_400 + 3_600);
        assert_eq!(day, 20_780 * 86_400_000);
        assert_eq!(month, (20_780 - 22) * 86_400_000);
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_date("2026-11-23"), Ok(20_780 * 86_400_000));
        assert_eq!(date_of_day(20_780), "2026-11-23");
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert!(parse_date("2026-02-30").is_err());
        assert!(parse_date("2026-13-01").is_err());
        assert!(parse_date("yesterday").is_err());
    }

    #[test]
    fn budgets_count_reservations_and_reset_by_period() {
        let l = Limits {
            budget_day: Some(100),
            budget_total: Some(250),
            ..Limits::default()
        };
        let t0 = 20_415 * 86_400;
        let mut s = Spent::seeded(
            Spend {
                day: 40,
                month: 40,
                total: 200,
            },
            t0,
            None,
        );
        s.reserved = 10;
        assert_eq!(s.over(&l, 40, t0), None);
        assert_eq!(s.over(&l, 41, t0), Some((Period::Total, 210)));
        s.reserved = 0;
        s.add(45, t0);
        assert_eq!(s.over(&l, 16, t0), Some((Period::Day, 85)));
        // Next day: the daily budget is fresh, the total is not.
        assert_eq!(s.over(&l, 5, t0 + 86_400), None);
        assert_eq!(s.over(&l, 6, t0 + 86_400), Some((Period::Total, 245)));
    }

    #[test]
    fn dollars_parse_exactly() {
        assert_eq!(parse_usd("5"), Ok(5_000_000_000_000));
        assert_eq!(parse_usd("$12.50"), Ok(12_500_000_000_000));
        assert_eq!(parse_usd("0.000001"), Ok(1_000_000));
        assert!(parse_usd("0.0000001").is_err());
        assert!(parse_usd("-1").is_err());
        assert!(parse_usd("1e3").is_err());
        assert!(parse_usd("9000001").is_err());
        assert_eq!(usd(parse_usd("4.99").unwrap()), "$4.990000");
    }

    #[test]
    fn dollars_print_exactly() {
        assert_eq!(usd(0), "$0.000000");
        assert_eq!(usd(1_500_000_000_000), "$1.500000");
        assert_eq!(usd(15_000_000), "$0.000015");
    }
}
