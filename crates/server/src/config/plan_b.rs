//! Plan B's part of the config: shadow traffic per route and the shared settings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use relais_core::Price;
use relais_router::{Deployment, Health, Route, RouteKind};

use super::ConfigError;
use super::deployment::{Providers, build_deployment, secs};
use super::raw::*;

/// Shadow traffic per route and the shared Plan B settings.
pub(super) fn build_plan_b(
    raw: &RawConfig,
    origin: &str,
    routes: &BTreeMap<String, Arc<Route>>,
    providers: &Providers,
    prices: &BTreeMap<String, Price>,
    at: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
) -> Result<(BTreeMap<String, Arc<ShadowRoute>>, PlanBSettings), ConfigError> {
    let err = |field: String, msg: &str| ConfigError(format!("{origin}: {field}: {msg}"));
    let pb = &raw.plan_b;
    let defaults = PlanBSettings::default();
    let similarity_route = match &pb.similarity_route {
        Some(r) => match routes.get(r) {
            Some(route) if route.kind == RouteKind::Embeddings => Some(r.clone()),
            Some(_) => {
                return Err(err(
                    "plan_b.similarity_route".into(),
                    "must name an embeddings route",
                ));
            }
            None => {
                return Err(err(
                    "plan_b.similarity_route".into(),
                    &format!("no route named '{r}'"),
                ));
            }
        },
        None => None,
    };
    let alert = pb
        .dependency_alert_percent
        .unwrap_or(defaults.alert_percent);
    if !(0.0..=100.0).contains(&alert) {
        return Err(err(
            "plan_b.dependency_alert_percent".into(),
            "must be within [0, 100]",
        ));
    }
    let settings = PlanBSettings {
        max_concurrent: pb
            .max_concurrent
            .unwrap_or(defaults.max_concurrent)
            .clamp(1, 1024),
        queue: pb.queue.unwrap_or(defaults.queue).clamp(1, 1 << 20),
        window_samples: pb
            .window_samples
            .unwrap_or(defaults.window_samples)
            .clamp(1, 100_000),
        window_days: pb.window_days.unwrap_or(defaults.window_days).clamp(1, 366),
        similarity_route,
        alert_percent: alert,
        check_every: Duration::from_secs(pb.check_secs.unwrap_or(60).clamp(1, 86_400)),
        thresholds: pb.thresholds.clone(),
    };
    let mut shadows = BTreeMap::new();
    for (name, rc) in &raw.routes {
        let Some(sc) = &rc.shadow else {
            continue;
        };
        let f = |x: &str| format!("routes.{name}.shadow.{x}");
        let Some(route) = routes.get(name) else {
            continue;
        };
        if route.kind != RouteKind::Chat {
            return Err(err(f("deployments"), "shadow traffic is for chat routes"));
        }
        if raw.governance.is_none() {
            return Err(err(
                format!("routes.{name}.shadow"),
                "needs [governance]: samples and the shadow ledger are kept in its store",
            ));
        }
        if !(0.0..=1.0).contains(&sc.sample_rate) {
            return Err(err(f("sample_rate"), "must be within [0, 1]"));
        }
        let backups = match &sc.deployments {
            Some(list) => {
                let mut out: Vec<Deployment> = Vec::with_capacity(list.len());
                for (i, d) in list.iter().enumerate() {
                    let field = f(&format!("deployments[{i}]"));
                    // A backup that is also in the route shares its health record; one that
                    // is only shadowed gets its own.
                    let health = |id: &str| {
                        route.deployments.iter().find(|x| x.id == id).map_or_else(
                            || Arc::new(Health::new(tokio::time::Instant::now(), &route.breaker)),
                            |x| x.health.clone(),
                        )
                    };
                    let dep = build_deployment(d, &field, providers, prices, health, at)?;
                    if out.iter().any(|x| x.id == dep.id) {
                        return Err(err(field, &format!("'{}' is listed twice", dep.id)));
                    }
                    out.push(dep);
                }
                out
            }
            None => route.deployments.iter().skip(1).cloned().collect(),
        };
        if backups.is_empty() {
            return Err(err(
                f("deployments"),
                "no backup to shadow: list shadow.deployments or give the route a second deployment",
            ));
        }
        let primary = route.primary().map(|d| d.id.as_str());
        if let Some(b) = backups.iter().find(|b| Some(b.id.as_str()) == primary) {
            return Err(err(
                f("deployments"),
                &format!(
                    "'{}' is the route's primary; shadow it to its backups",
                    b.id
                ),
            ));
        }
        let budget_per_day = match &sc.budget_per_day_usd {
            None => None,
            Some(v) => {
                let text = match v {
                    PriceValue::Number(n) => format!("{n}"),
                    PriceValue::Text(t) => t.clone(),
                };
                Some(
                    relais_governance::parse_usd(&text)
                        .map_err(|e| err(f("budget_per_day_usd"), &e))?,
                )
            }
        };
        let timeout = secs(sc.timeout_secs, Some(120.0), &f("timeout_secs"), origin)?
            .unwrap_or(Duration::from_secs(120));
        shadows.insert(
            name.clone(),
            Arc::new(ShadowRoute {
                route: name.clone(),
                backups,
                sample_rate: sc.sample_rate,
                budget_per_day,
                timeout,
            }),
        );
    }
    Ok((shadows, settings))
}

/// Settings shared by every route (`[plan_b]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanBSettings {
    pub max_concurrent: usize,
    pub queue: usize,
    pub window_samples: u32,
    pub window_days: u32,
    pub similarity_route: Option<String>,
    pub alert_percent: f64,
    pub check_every: Duration,
    pub thresholds: relais_planb::Thresholds,
}

impl Default for PlanBSettings {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            queue: 64,
            window_samples: 500,
            window_days: 7,
            similarity_route: None,
            alert_percent: 90.0,
            check_every: Duration::from_secs(60),
            thresholds: relais_planb::Thresholds::default(),
        }
    }
}

/// One route's shadow traffic.
pub struct ShadowRoute {
    pub route: String,
    pub backups: Vec<Deployment>,
    pub sample_rate: f64,
    /// Pico-USD per UTC day, all backups together.
    pub budget_per_day: Option<u64>,
    pub timeout: Duration,
}
