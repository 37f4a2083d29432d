//! The ledger's requests for the console: the list (`GET /admin/requests`) and the time series
//! its charts draw (`GET /admin/series`: requests, errors, p50/p99 latency and spend per time
//! bucket, by vendor, route, team or key). Both read attempt-0 rows; a `team_admin` sees its
//! team's only.

use std::collections::BTreeMap;

use axum::http::{StatusCode, Uri};
use axum::response::Response;
use relais_core::{Error, ErrorKind, Side};
use relais_state::{LedgerRow, RowQuery};

use super::common::{Admin, admin_answer, query_params};

/// Rows one list call returns at most.
const MAX_LIST: u32 = 1_000;
/// Rows a series is computed from at most (the newest); past it the answer says `truncated`.
const MAX_SERIES_ROWS: u32 = 200_000;
/// Groups a series keeps (the busiest); the rest are summed as `other`.
const MAX_GROUPS: usize = 8;

/// A time from the URL: Unix milliseconds, or a UTC date (`2026-12-05`).
fn time_param(params: &BTreeMap<String, String>, field: &str) -> Result<Option<i64>, Error> {
    params
        .get(field)
        .map(|v| {
            v.parse::<i64>()
                .or_else(|_| relais_governance::parse_date(v))
                .map_err(|_| {
                    Error::bad_request(format!(
                        "{field} must be Unix milliseconds or a date (YYYY-MM-DD)"
                    ))
                    .with_param(field)
                })
        })
        .transpose()
}

/// The row query of a request's URL: `from`/`to` (the last 24 hours by default), `key`,
/// `team`, `route`, `vendor`, `errors=1`; a `team_admin` is held to its team.
async fn row_query(admin: &Admin, uri: &Uri, limit: u32) -> Result<RowQuery, Error> {
    let params = query_params(uri.query().unwrap_or(""));
    let now = crate::clock::now_ms();
    let to_ms = time_param(&params, "to")?.unwrap_or(now + 1);
    let from_ms = time_param(&params, "from")?.unwrap_or(to_ms - crate::clock::DAY_MS);
    if from_ms >= to_ms {
        return Err(Error::bad_request("from must be before to").with_param("from"));
    }
    let text = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
    let mut team_id = text("team");
    if let Some(own) = admin.own_team().await? {
        team_id = Some(own.id);
    }
    let limit = match params.get("limit") {
        None => limit,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| {
                Error::bad_request("limit must be a positive integer").with_param("limit")
            })?
            .clamp(1, limit),
    };
    Ok(RowQuery {
        from_ms,
        to_ms,
        category: "live".to_owned(),
        key_id: text("key"),
        team_id,
        route: text("route"),
        vendor: text("vendor"),
        errors: params
            .get("errors")
            .is_some_and(|v| v == "1" || v == "true"),
        limit,
    })
}

async fn rows(admin: &Admin, q: &RowQuery) -> Result<Vec<LedgerRow>, Error> {
    let ledger = admin.live.ledger()?;
    ledger.flush().await?;
    ledger.store().requests(q).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            Side::Gateway,
            format!("ledger store: {e}"),
        )
    })
}

/// `GET /admin/requests?from&to&key&team&route&vendor&errors=1&limit=100`: the newest
/// requests first (attempt-0 rows; `GET /admin/ledger/{id}` has a request's attempts).
pub(crate) async fn admin_requests(admin: Admin, uri: Uri) -> Response {
    admin_answer(&admin.headers.clone(), async {
        let q = row_query(&admin, &uri, MAX_LIST).await?;
        let list = rows(&admin, &q).await?;
        Ok((StatusCode::OK, serde_json::json!({ "requests": list })))
    })
    .await
}

/// One time bucket of one group.
#[derive(Default)]
struct Bucket {
    requests: u64,
    errors: u64,
    cost_pusd: u64,
    input_tokens: u64,
    output_tokens: u64,
    latencies_us: Vec<u64>,
}

impl Bucket {
    fn add(&mut self, r: &LedgerRow) {
        self.requests += 1;
        self.errors += u64::from(r.status >= 400);
        self.cost_pusd += r.cost_pusd;
        self.input_tokens += r.input_tokens;
        self.output_tokens += r.output_tokens;
        self.latencies_us.push(r.latency_us);
    }

    fn json(&mut self, t: i64) -> serde_json::Value {
        self.latencies_us.sort_unstable();
        let pct = |p: usize| {
            let n = self.latencies_us.len();
            (n > 0).then(|| self.latencies_us[((n * p).div_ceil(100)).clamp(1, n) - 1] as f64 / 1e3)
        };
        serde_json::json!({"t": t, "requests": self.requests, "errors": self.errors,
            "cost_usd": relais_governance::usd_plain(self.cost_pusd),
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "p50_ms": pct(50), "p99_ms": pct(99)})
    }
}

/// `GET /admin/series?from&to&bucket=minute|hour|day&by=vendor|route|team|key|none` (and the
/// filters of `/admin/requests`): per bucket, requests, errors, spend, tokens and p50/p99
/// latency, for the busiest groups and in total.
pub(crate) async fn admin_series(admin: Admin, uri: Uri) -> Response {
    admin_answer(&admin.headers.clone(), async {
        let params = query_params(uri.query().unwrap_or(""));
        let q = row_query(&admin, &uri, MAX_SERIES_ROWS).await?;
        let span = q.to_ms - q.from_ms;
        let bucket_ms: i64 = match params.get("bucket").map(String::as_str) {
            Some("minute") => 60_000,
            Some("hour") => 3_600_000,
            Some("day") => crate::clock::DAY_MS,
            None if span <= 3 * 3_600_000 => 60_000,
            None if span <= 3 * crate::clock::DAY_MS => 3_600_000,
            None => crate::clock::DAY_MS,
            Some(other) => {
                return Err(Error::bad_request(format!(
                    "bucket: '{other}' is not one of: minute, hour, day"
                ))
                .with_param("bucket"));
            }
        };
        if span / bucket_ms > 10_000 {
            return Err(
                Error::bad_request("more than 10,000 buckets: choose a larger bucket")
                    .with_param("bucket"),
            );
        }
        let by = params.get("by").map_or("vendor", String::as_str);
        let group_of = |r: &LedgerRow| -> String {
            let v = match by {
                "route" => Some(&r.route),
                "team" => r.team_id.as_ref(),
                "key" => r.key_id.as_ref(),
                _ => r.vendor.as_ref(),
            };
            v.cloned().unwrap_or_else(|| "-".to_owned())
        };
        if !matches!(by, "vendor" | "route" | "team" | "key" | "none") {
            return Err(Error::bad_request(format!(
                "by: '{by}' is not one of: vendor, route, team, key, none"
            ))
            .with_param("by"));
        }
        let rows = rows(&admin, &q).await?;
        let truncated = rows.len() as u64 >= u64::from(q.limit);
        // Busiest groups first; the rest are `other`.
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        if by != "none" {
            for r in &rows {
                *counts.entry(group_of(r)).or_default() += 1;
            }
        }
        let mut order: Vec<_> = counts.into_iter().collect();
        order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let kept: Vec<String> = order
            .iter()
            .take(MAX_GROUPS)
            .map(|(g, _)| g.clone())
            .collect();
        let mut groups: BTreeMap<String, BTreeMap<i64, Bucket>> = BTreeMap::new();
        let mut total: BTreeMap<i64, Bucket> = BTreeMap::new();
        for r in &rows {
            let t = r.at_ms.div_euclid(bucket_ms) * bucket_ms;
            total.entry(t).or_default().add(r);
            if by != "none" {
                let g = group_of(r);
                let g = if kept.contains(&g) {
                    g
                } else {
                    "other".to_owned()
                };
                groups.entry(g).or_default().entry(t).or_default().add(r);
            }
        }
        let points = |m: &mut BTreeMap<i64, Bucket>| -> Vec<serde_json::Value> {
            m.iter_mut().map(|(t, b)| b.json(*t)).collect()
        };
        let mut series: Vec<_> = groups
            .iter_mut()
            .map(|(g, m)| serde_json::json!({"group": g, "points": points(m)}))
            .collect();
        series.sort_by_key(|s| {
            let g = s["group"].as_str().unwrap_or_default().to_owned();
            kept.iter().position(|k| *k == g).unwrap_or(usize::MAX)
        });
        Ok((
            StatusCode::OK,
            serde_json::json!({"from_ms": q.from_ms, "to_ms": q.to_ms, "bucket_ms": bucket_ms,
                "by": by, "rows": rows.len(), "truncated": truncated,
                "total": points(&mut total), "series": series}),
        ))
    })
    .await
}
