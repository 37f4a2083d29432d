//! UTC calendar arithmetic for budgets and reports: days since 1970-01-01, civil dates, and the
//! starts of the current day and month. No time zone but UTC.

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
