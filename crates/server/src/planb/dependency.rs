//! The dependency index: how concentrated each route's traffic is on one vendor, and the alert
//! when one vendor carries a route that has no ready backup.

use std::sync::{Mutex, PoisonError};

use relais_core::Error;
use relais_governance::Ledger;

use super::readiness::readiness;
use super::store_error;
use crate::clock::now_ms;
use crate::live::Live;
use crate::metrics::{Prom, labels};

/// Vendor shares and their concentration for one set of (vendor, requests, cost) totals.
pub(crate) fn concentration_json(totals: &[(String, u64, u64)]) -> serde_json::Value {
    let shares = relais_planb::shares(totals);
    serde_json::json!({
        "hhi_requests": relais_planb::hhi(shares.iter().map(|s| s.request_share)),
        "hhi_spend": relais_planb::hhi(shares.iter().map(|s| s.spend_share)),
        "vendors": shares,
    })
}

async fn vendor_totals(
    ledger: &Ledger,
    q: &relais_state::UsageQuery,
) -> Result<Vec<(String, u64, u64)>, Error> {
    let lines = ledger.store().usage(q).await.map_err(store_error)?;
    Ok(lines
        .into_iter()
        .map(|l| (l.group, l.requests, l.cost_pusd))
        .collect())
}

/// The dependency index over `[q.from_ms, q.to_ms)`: overall, per route, per team and per
/// day, each with every vendor's share of requests and spend and the HHI of both. `q`'s
/// filters (key, team, route) narrow everything.
pub async fn dependency(
    live: &Live,
    base: relais_state::UsageQuery,
) -> Result<serde_json::Value, Error> {
    use relais_state::GroupBy;
    let ledger = live.ledger()?;
    ledger.flush().await?;
    let with =
        |group_by: GroupBy, route: Option<String>, team: Option<String>| relais_state::UsageQuery {
            group_by,
            route: route.or_else(|| base.route.clone()),
            team_id: team.or_else(|| base.team_id.clone()),
            ..base.clone()
        };
    let overall = vendor_totals(&ledger, &with(GroupBy::Vendor, None, None)).await?;
    let mut routes = serde_json::Map::new();
    for r in vendor_totals(&ledger, &with(GroupBy::Route, None, None)).await? {
        let totals =
            vendor_totals(&ledger, &with(GroupBy::Vendor, Some(r.0.clone()), None)).await?;
        routes.insert(r.0, concentration_json(&totals));
    }
    let mut teams = serde_json::Map::new();
    for t in vendor_totals(&ledger, &with(GroupBy::Team, None, None)).await? {
        if t.0.is_empty() {
            continue; // requests without a virtual key
        }
        let totals =
            vendor_totals(&ledger, &with(GroupBy::Vendor, None, Some(t.0.clone()))).await?;
        teams.insert(t.0, concentration_json(&totals));
    }
    let mut by_day: std::collections::BTreeMap<i64, Vec<(String, u64, u64)>> = Default::default();
    for (group, requests, cost) in
        vendor_totals(&ledger, &with(GroupBy::DayVendor, None, None)).await?
    {
        let Some((day, vendor)) = group.split_once(':') else {
            continue;
        };
        if let Ok(day) = day.parse::<i64>() {
            by_day
                .entry(day)
                .or_default()
                .push((vendor.to_owned(), requests, cost));
        }
    }
    let days: Vec<serde_json::Value> = by_day
        .into_iter()
        .map(|(day, totals)| {
            let mut v = concentration_json(&totals);
            v["date"] = relais_governance::date_of_day(day).into();
            v
        })
        .collect();
    Ok(serde_json::json!({
        "from": relais_governance::date_of_day(base.from_ms.div_euclid(86_400_000)),
        "to": relais_governance::date_of_day((base.to_ms - 1).div_euclid(86_400_000)),
        "overall": concentration_json(&overall),
        "routes": routes,
        "teams": teams,
        "days": days,
    }))
}

/// The latest dependency check of one route.
#[derive(Debug, Clone, PartialEq)]
struct RouteCheck {
    hhi: u32,
    top_vendor: String,
    top_share: f64,
    alert: bool,
}

/// Dependency checks per route, for `/metrics` and the log.
#[derive(Default)]
pub struct Alerts {
    routes: Mutex<std::collections::BTreeMap<String, RouteCheck>>,
}

impl Alerts {
    pub fn render(&self, p: &mut Prom) {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if routes.is_empty() {
            return;
        }
        let name = "relais_dependency_hhi";
        p.family(
            name,
            "gauge",
            "Concentration of a route's live requests on vendors over the last 24 hours (Herfindahl-Hirschman index, 0-10000).",
        );
        for (r, c) in routes.iter() {
            p.sample(name, &labels(&[("route", r)]), c.hhi);
        }
        let name = "relais_dependency_alert";
        p.family(
            name,
            "gauge",
            "1 when one vendor carries more than plan_b.dependency_alert_percent of a route's requests and no backup of the route is ready.",
        );
        for (r, c) in routes.iter() {
            let l = labels(&[("route", r), ("vendor", &c.top_vendor)]);
            p.sample(name, &l, u8::from(c.alert));
        }
    }

    /// Routes alerting now: route, top vendor, its share in percent.
    pub(crate) fn firing(&self) -> Vec<(String, String, f64)> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes
            .iter()
            .filter(|(_, c)| c.alert)
            .map(|(r, c)| (r.clone(), c.top_vendor.clone(), c.top_share))
            .collect()
    }

    /// Whether `route` is alerting now (for tests and the CLI).
    pub fn alerting(&self, route: &str) -> Option<bool> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.get(route).map(|c| c.alert)
    }
}

/// Check every route's vendor concentration over the last 24 hours of live traffic: alert
/// (a warning in the log when it starts, and the `relais_dependency_alert` gauge) when one
/// vendor carries more than `plan_b.dependency_alert_percent` of its requests and none of its
/// backups is ready (shadowed and judged ready or ready with caveats).
pub async fn check_dependency(live: &Live, alerts: &Alerts) -> Result<(), Error> {
    let Some(ledger) = live.runtime.ledger.clone() else {
        return Ok(());
    };
    let now = now_ms();
    let mut checks = std::collections::BTreeMap::new();
    let ready = readiness(live, None).await.unwrap_or_default();
    for name in live.entries.keys() {
        let q = relais_state::UsageQuery::live_route(
            relais_state::GroupBy::Vendor,
            name,
            now - 86_400_000,
            now + 1,
        );
        let totals = vendor_totals(&ledger, &q).await?;
        let shares = relais_planb::shares(&totals);
        let Some(top) = shares.first() else {
            continue;
        };
        let has_ready = ready.iter().any(|b| {
            &b.route == name
                && b.vendor != top.vendor
                && b.readiness.verdict != relais_planb::Verdict::NotReady
        });
        let alert = top.request_share > live.runtime.plan_b.alert_percent && !has_ready;
        checks.insert(
            name.clone(),
            RouteCheck {
                hhi: relais_planb::hhi(shares.iter().map(|s| s.request_share)),
                top_vendor: top.vendor.clone(),
                top_share: top.request_share,
                alert,
            },
        );
    }
    let mut routes = alerts.routes.lock().unwrap_or_else(PoisonError::into_inner);
    for (name, c) in &checks {
        let was = routes.get(name).is_some_and(|o| o.alert);
        if c.alert && !was {
            tracing::warn!(
                route = %name,
                vendor = %c.top_vendor,
                share = format!("{:.1}%", c.top_share),
                hhi = c.hhi,
                "dependency alert: one vendor carries the route and no backup is ready (see relais readiness)"
            );
        } else if !c.alert && was {
            tracing::info!(route = %name, "dependency alert over");
        }
    }
    *routes = checks;
    Ok(())
}
