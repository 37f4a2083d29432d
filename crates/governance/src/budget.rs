//! USD budgets per UTC day, UTC month and in total, for keys and teams. Money is integer
//! pico-USD (10⁻¹² USD) here; Redis counts nano-USD (its Lua numbers are doubles, exact to 2⁵³:
//! $9M in nano-USD, only $9k in pico-USD), rounding costs up and budgets down so rounding can
//! never let spend pass a budget.
//!
//! Admission reserves the request's worst-case cost (prompt estimate and output cap at the
//! route's dearest deployment); a budget admits a request only when spent + reserved + this
//! reservation fits, so no number of concurrent requests can overrun it. Settlement adds the
//! real cost to the period it ends in and frees the reservation.

use relais_core::{Error, ErrorKind, Side};
use relais_state::{Limits, Spend};

use crate::limits::Holder;

pub(crate) const PICO_PER_NANO: u64 = 1000;

/// Days since 1970-01-01 (UTC) of a Unix time in seconds.
pub(crate) fn day_of(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(86_400)
}

/// (year, month 1-12, day 1-31) of a day number (days since 1970-01-01): H. Hinnant's civil
/// calendar algorithm, also in `lua/admit.lua` so Redis computes the same months.
pub(crate) fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil`]).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix milliseconds of the start (00:00 UTC) of a date written `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Result<i64, String> {
    let bad = || format!("'{text}' is not a date like 2026-11-23");
    let mut parts = text.trim().splitn(3, '-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d))) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let days = days_from_civil(y, m, d);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || civil(days) != (y, m, d) {
        return Err(bad());
    }
    Ok(days * 86_400_000)
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
pub fn date_of_day(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A month as one number: year × 12 + (month − 1).
pub(crate) fn month_of(days: i64) -> i64 {
    let (y, m, _) = civil(days);
    y * 12 + m - 1
}

/// Unix milliseconds of the start of the UTC day and month holding `unix_secs`.
pub fn period_starts(unix_secs: i64) -> (i64, i64) {
    let day = day_of(unix_secs);
    let (_, _, d) = civil(day);
    (day * 86_400_000, (day - (d - 1)) * 86_400_000)
}

pub(crate) fn unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `$1.234567` (micro-dollar precision, rounded down), for messages.
pub fn usd(pico: u64) -> String {
    let micro = pico / 1_000_000;
    format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

/// Parse an amount in USD ("5", "12.50", "0.000001") exactly, to pico-USD. At most six
/// decimals; at most $9,000,000 (a budget in Redis is exact to that).
pub fn parse_usd(text: &str) -> Result<u64, String> {
    let t = text.trim().trim_start_matches('$');
    let bad = || format!("'{text}' is not an amount in USD, like \"25\" or \"12.50\"");
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 6 {
        return Err(format!("'{text}' has more than six decimals"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    if whole > 9_000_000 {
        return Err(format!("'{text}' is above the largest budget, $9,000,000"));
    }
    let micro: u64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    Ok((whole * 1_000_000 + micro) * 1_000_000)
}

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
}

impl Spent {
    pub(crate) fn seeded(s: Spend, now_secs: i64) -> Self {
        let day = day_of(now_secs);
        Self {
            day,
            month: month_of(day),
            spent_day: s.day,
            spent_month: s.month,
            spent_total: s.total,
            reserved: 0,
        }
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
