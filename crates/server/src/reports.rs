//! Usage and concentration reports, shared by the admin API (`GET /admin/usage`) and the CLI
//! (`relais usage`): queries from their parameters, and lines for people (dates, exact USD).
//!
//! Depends on clock, money helpers and Plan B's concentration; never on the pipeline.

use relais_core::Error;
use relais_governance::{date_of_day, period_starts, usd_plain};
use relais_state::{GroupBy, UsageLine, UsageQuery};

use crate::clock::DAY_MS;

/// A usage query from the admin API's or the CLI's parameters: group by one of
/// [`GroupBy::NAMES`], dates `YYYY-MM-DD` (from: the first of this month by default; to:
/// inclusive, today by default).
pub fn usage_query(
    by: &str,
    from: Option<&str>,
    to: Option<&str>,
    filters: [Option<String>; 3],
) -> Result<UsageQuery, Error> {
    let group_by = GroupBy::parse(by).ok_or_else(|| {
        Error::bad_request(format!("by: '{by}' is not one of: {}", GroupBy::NAMES)).with_param("by")
    })?;
    let (today, month) = period_starts(crate::clock::now_ms() / 1000);
    let date = |v: Option<&str>, field: &str, default: i64| {
        v.map_or(Ok(default), |t| {
            relais_governance::parse_date(t)
                .map_err(|e| Error::bad_request(format!("{field}: {e}")).with_param(field))
        })
    };
    let from_ms = date(from, "from", month)?;
    let to_ms = date(to, "to", today)? + DAY_MS;
    let [key_id, team_id, route] = filters;
    Ok(UsageQuery {
        group_by,
        from_ms,
        to_ms,
        category: "live".to_owned(),
        key_id,
        team_id,
        route,
        drill: None,
    })
}

/// The same query over the response cache's hits (ledger category `cache`): what they would
/// have cost is what the cache saved.
pub fn savings_query(q: &UsageQuery) -> UsageQuery {
    UsageQuery {
        category: "cache".to_owned(),
        ..q.clone()
    }
}

/// A usage line for people: days as dates, money in USD (exact) and pico-USD; with each group's
/// response-cache hits and what they saved (`hits`: the lines of [`savings_query`]).
pub fn usage_json(q: &UsageQuery, lines: &[UsageLine], hits: &[UsageLine]) -> serde_json::Value {
    let saved_of = |group: &str| hits.iter().find(|h| h.group == group);
    let mut all: Vec<UsageLine> = lines.to_vec();
    for h in hits {
        if !lines.iter().any(|l| l.group == h.group) {
            all.push(UsageLine {
                group: h.group.clone(),
                ..UsageLine::default()
            });
        }
    }
    let rows: Vec<_> = all
        .iter()
        .map(|l| {
            let hit = saved_of(&l.group);
            let group = match q.group_by {
                GroupBy::Day => l
                    .group
                    .parse::<i64>()
                    .map_or_else(|_| l.group.clone(), date_of_day),
                _ => l.group.clone(),
            };
            serde_json::json!({
                "group": group,
                "requests": l.requests,
                "errors": l.errors,
                "input_tokens": l.input_tokens,
                "output_tokens": l.output_tokens,
                "cache_read_tokens": l.cache_read_tokens,
                "cache_write_tokens": l.cache_write_tokens,
                "reasoning_tokens": l.reasoning_tokens,
                "cost_usd": usd_plain(l.cost_pusd),
                "cost_pusd": l.cost_pusd,
                "cache_hits": hit.map_or(0, |h| h.requests),
                "saved_usd": usd_plain(hit.map_or(0, |h| h.cost_pusd)),
                "saved_pusd": hit.map_or(0, |h| h.cost_pusd),
            })
        })
        .collect();
    let total: u64 = lines.iter().map(|l| l.cost_pusd).sum();
    let saved: u64 = hits.iter().map(|l| l.cost_pusd).sum();
    let mut v = serde_json::json!({
        "from": date_of_day(q.from_ms.div_euclid(DAY_MS)),
        "to": date_of_day((q.to_ms - 1).div_euclid(DAY_MS)),
        "usage": rows,
        "total_cost_usd": usd_plain(total),
        "total_cost_pusd": total,
        "total_saved_usd": usd_plain(saved),
        "total_saved_pusd": saved,
    });
    if q.group_by == GroupBy::Vendor {
        // The dependency index: each vendor's share and how concentrated they are.
        let totals: Vec<(String, u64, u64)> = lines
            .iter()
            .map(|l| (l.group.clone(), l.requests, l.cost_pusd))
            .collect();
        v["concentration"] = crate::planb::concentration_json(&totals);
    }
    v
}
