//! Readiness of each shadowed backup (from its samples and the route's peak traffic) and the
//! forecast of a promotion.

use relais_core::Error;
use relais_governance::Ledger;
use relais_planb::Scores;
use relais_router::Deployment;

use super::store_error;
use crate::clock::now_ms;
use crate::live::Live;

/// The route's busiest minute in `[from_ms, to_ms)`: requests and tokens of live traffic.
async fn peak_minute(
    ledger: &Ledger,
    route: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<(u64, u64), Error> {
    let q =
        relais_state::UsageQuery::live_route(relais_state::GroupBy::Minute, route, from_ms, to_ms);
    let lines = ledger.store().usage(&q).await.map_err(store_error)?;
    Ok(lines.iter().fold((0, 0), |(r, t), l| {
        (
            r.max(l.requests),
            t.max(l.input_tokens.saturating_add(l.output_tokens)),
        )
    }))
}

/// One backup's readiness, as the admin API and `relais readiness` show it.
#[derive(serde::Serialize)]
pub struct BackupReadiness {
    pub route: String,
    pub primary: String,
    pub backup: String,
    pub vendor: String,
    #[serde(flatten)]
    pub readiness: relais_planb::Readiness,
    /// Samples and success rate per UTC day, oldest first.
    pub days: Vec<serde_json::Value>,
}

/// Readiness of every shadowed backup of `route` (of every shadowed route when `None`).
pub async fn readiness(live: &Live, route: Option<&str>) -> Result<Vec<BackupReadiness>, Error> {
    let ledger = live.ledger()?;
    if let Some(r) = route {
        if !live.runtime.shadows.contains_key(r) {
            return Err(Error::new(
                relais_core::ErrorKind::NotFound,
                relais_core::Side::Client,
                format!("route '{r}' has no shadow traffic configured (routes.{r}.shadow)"),
            )
            .with_param("route"));
        }
    }
    ledger.flush().await?;
    let s = &live.runtime.plan_b;
    let now = now_ms();
    let since = now - i64::from(s.window_days) * 86_400_000;
    let mut out = Vec::new();
    for (name, shadow) in &live.runtime.shadows {
        if route.is_some_and(|r| r != name) {
            continue;
        }
        let Some(entry) = live.entries.get(name) else {
            continue;
        };
        let (peak_rpm, peak_tpm) = peak_minute(&ledger, name, since, now + 1).await?;
        for d in &shadow.backups {
            let rows = ledger
                .store()
                .samples(name, Some(&d.id), since, s.window_samples)
                .await
                .map_err(store_error)?;
            let mut scores: Vec<(i64, Scores)> = rows
                .iter()
                .filter_map(|r| serde_json::from_str(&r.scores).ok().map(|sc| (r.at_ms, sc)))
                .collect();
            scores.reverse(); // oldest first
            let facts = relais_planb::BackupFacts {
                tools: d.capabilities.tools,
                images: d.capabilities.images,
                json_schema: d.capabilities.json_schema,
                rpm: d.limits.rpm,
                tpm: d.limits.tpm,
                peak_rpm,
                peak_tpm,
            };
            let only: Vec<Scores> = scores.iter().map(|(_, sc)| sc.clone()).collect();
            let readiness = relais_planb::assess(&only, &facts, &s.thresholds);
            let mut days: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
            for (at, sc) in &scores {
                let e = days.entry(at.div_euclid(86_400_000)).or_default();
                e.0 += 1;
                e.1 += u64::from(sc.ok);
            }
            out.push(BackupReadiness {
                route: name.clone(),
                primary: entry
                    .route
                    .primary()
                    .map(|d| d.id.clone())
                    .unwrap_or_default(),
                backup: d.id.clone(),
                vendor: d.vendor.clone(),
                readiness,
                days: days
                    .into_iter()
                    .map(|(day, (n, ok))| {
                        serde_json::json!({
                            "date": relais_governance::date_of_day(day),
                            "samples": n,
                            "success_rate": ok as f64 / n.max(1) as f64,
                        })
                    })
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// The deployment `to` of `route`: one of its deployments or a shadow-only backup.
pub(crate) fn target<'a>(live: &'a Live, route: &str, to: &str) -> Result<&'a Deployment, Error> {
    let entry = live.entries.get(route).ok_or_else(|| {
        Error::bad_request(format!("no route named '{route}'")).with_param("route")
    })?;
    entry
        .route
        .deployments
        .iter()
        .chain(
            live.runtime
                .shadows
                .get(route)
                .into_iter()
                .flat_map(|s| s.backups.iter()),
        )
        .find(|d| d.id == to)
        .ok_or_else(|| {
            Error::bad_request(format!(
                "route '{route}' has no deployment or shadow backup '{to}'"
            ))
            .with_param("to")
        })
}

/// What making `to` the primary of `route` would change, from the last `window_days` of the
/// ledger and the shadow samples: traffic per day, cost per day now and at `to`'s prices for
/// the same tokens, the shadow-measured latency and cost ratio, capability gaps and limits.
pub async fn forecast(live: &Live, route: &str, to: &str) -> Result<serde_json::Value, Error> {
    let d = target(live, route, to)?;
    let primary = live.entries[route]
        .route
        .primary()
        .ok_or_else(|| Error::internal("a route without deployments"))?;
    let ledger = live.ledger()?;
    ledger.flush().await?;
    let s = &live.runtime.plan_b;
    let now = now_ms();
    let from_ms = now - i64::from(s.window_days) * 86_400_000;
    let q =
        relais_state::UsageQuery::live_route(relais_state::GroupBy::Day, route, from_ms, now + 1);
    let days = ledger.store().usage(&q).await.map_err(store_error)?;
    let n_days = days.len().max(1) as u64;
    let sum = |f: fn(&relais_state::UsageLine) -> u64| days.iter().map(f).sum::<u64>();
    let tokens = relais_core::Usage {
        input_tokens: sum(|l| l.input_tokens),
        output_tokens: sum(|l| l.output_tokens),
        cache_read_tokens: sum(|l| l.cache_read_tokens),
        cache_write_tokens: sum(|l| l.cache_write_tokens),
        reasoning_tokens: sum(|l| l.reasoning_tokens),
    };
    let requests = sum(|l| l.requests);
    let cost_now = sum(|l| l.cost_pusd);
    let cost_at_target = d.price.map(|_| crate::bill::cost_at(d, &tokens));
    let shadow = readiness(live, Some(route))
        .await
        .ok()
        .and_then(|all| all.into_iter().find(|b| b.backup == to));
    let usd = |p: u64| relais_governance::usd_plain(p);
    Ok(serde_json::json!({
        "route": route,
        "from": primary.id,
        "to": d.id,
        "window_days": s.window_days,
        "days_with_traffic": days.len(),
        "requests": requests,
        "requests_per_day": requests / n_days,
        "tokens": {
            "input": tokens.input_tokens,
            "output": tokens.output_tokens,
            "cache_read": tokens.cache_read_tokens,
        },
        "cost_per_day_pusd": cost_now / n_days,
        "cost_per_day_usd": usd(cost_now / n_days),
        // The same tokens at the new primary's prices (None: it has no price).
        "forecast_cost_per_day_pusd": cost_at_target.map(|c| c / n_days),
        "forecast_cost_per_day_usd": cost_at_target.map(|c| usd(c / n_days)),
        // As measured by shadow traffic (answers of other lengths included).
        "shadow_cost_ratio": shadow.as_ref().and_then(|b| b.readiness.cost_ratio),
        "latency": shadow.as_ref().map(|b| serde_json::json!({
            "now": b.readiness.live_latency,
            "forecast": b.readiness.latency,
            "ttft_now": b.readiness.live_ttft,
            "ttft_forecast": b.readiness.ttft,
        })),
        "capability_gaps": shadow.as_ref().map(|b| b.readiness.capability_gaps.clone()),
        "limits": {
            "rpm": d.limits.rpm,
            "tpm": d.limits.tpm,
            "peak_rpm": shadow.as_ref().map(|b| b.readiness.limits.peak_rpm),
            "peak_tpm": shadow.as_ref().map(|b| b.readiness.limits.peak_tpm),
        },
        "readiness": shadow.as_ref().map(|b| serde_json::json!({
            "verdict": b.readiness.verdict,
            "samples": b.readiness.samples,
            "reasons": b.readiness.reasons,
        })),
    }))
}
