//! One route from its config: kind, strategy, deployments, breaker, timeouts, retries, the
//! latency estimate and fallbacks, with the warnings a config author should read.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use relais_core::Price;
use relais_router::{
    BreakerPolicy, BudgetPolicy, Deployment, Fallbacks, Health, LatencyPolicy, RetryBudget,
    RetryPolicy, Route, RouteKind, Strategy, Timeouts,
};
use toml::Spanned;

use super::deployment::{Providers, build_deployment, capability_loss, secs, share};
use super::raw::RouteConfig;
use super::{ConfigError, Runtime};

/// What routes are built from: the providers and prices built already, the routes built so
/// far (a route's fallbacks are built before it), the running config (its deployments keep
/// their health), one clock reading, and how errors are located.
pub(super) struct RouteParts<'a> {
    pub origin: &'a str,
    pub providers: &'a Providers,
    pub prices: &'a BTreeMap<String, Price>,
    pub built: &'a BTreeMap<String, Arc<Route>>,
    pub previous: Option<&'a Runtime>,
    pub now: tokio::time::Instant,
    pub at: &'a dyn Fn(Range<usize>, &str, String) -> ConfigError,
}

/// Build route `name`; warnings go to `warnings`.
pub(super) fn build_route(
    name: &str,
    rc: &RouteConfig,
    parts: &RouteParts<'_>,
    warnings: &mut Vec<String>,
) -> Result<Route, ConfigError> {
    let RouteParts {
        origin,
        providers,
        prices,
        built,
        previous,
        now,
        at,
    } = *parts;
    let kind = RouteKind::from(rc.kind);
    let strategy = match &rc.strategy {
        None => Strategy::Failover,
        Some(s) => Strategy::parse(s.get_ref()).ok_or_else(|| {
            at(
                s.span(),
                &format!("routes.{name}.strategy"),
                format!("'{}' is not one of: {}", s.get_ref(), Strategy::NAMES),
            )
        })?,
    };
    if rc.deployments.is_empty() {
        return Err(ConfigError(format!(
            "{origin}: routes.{name}.deployments: at least one deployment is required"
        )));
    }
    if rc.deployments.len() > 64 {
        return Err(ConfigError(format!(
            "{origin}: routes.{name}.deployments: at most 64 deployments per route"
        )));
    }
    let f = |field: &str| format!("routes.{name}.breaker.{field}");
    let breaker_defaults = BreakerPolicy::default();
    let bc = &rc.breaker;
    let breaker = BreakerPolicy {
        consecutive_failures: bc
            .consecutive_failures
            .unwrap_or(breaker_defaults.consecutive_failures),
        failure_rate: share(
            bc.failure_rate,
            breaker_defaults.failure_rate,
            &f("failure_rate"),
            origin,
        )?,
        min_requests: bc.min_requests.unwrap_or(breaker_defaults.min_requests),
        window: secs(bc.window_secs, None, &f("window_secs"), origin)?
            .unwrap_or(breaker_defaults.window),
        base_ejection: secs(
            bc.base_ejection_secs,
            None,
            &f("base_ejection_secs"),
            origin,
        )?
        .unwrap_or(breaker_defaults.base_ejection),
        max_ejection: secs(bc.max_ejection_secs, None, &f("max_ejection_secs"), origin)?
            .unwrap_or(breaker_defaults.max_ejection),
        max_ejected_share: share(
            bc.max_ejected_percent.map(|p| p / 100.0),
            breaker_defaults.max_ejected_share,
            &f("max_ejected_percent"),
            origin,
        )?,
    };
    let prev_route = previous.and_then(|p| p.routes.get(name));
    let mut deployments = Vec::with_capacity(rc.deployments.len());
    for (i, d) in rc.deployments.iter().enumerate() {
        let field = format!("routes.{name}.deployments[{i}]");
        let health = |id: &str| {
            prev_route
                .and_then(|r| r.deployments.iter().find(|x| x.id == id))
                .map_or_else(
                    || Arc::new(Health::new(now, &breaker)),
                    |x| x.health.clone(),
                )
        };
        let dep = build_deployment(d, &field, providers, prices, health, at)?;
        if deployments.iter().any(|x: &Deployment| x.id == dep.id) {
            return Err(at(
                d.provider.span(),
                &field,
                format!("'{}' is listed twice", dep.id),
            ));
        }
        deployments.push(dep);
    }
    if strategy == Strategy::Weighted && deployments.iter().all(|d| d.weight == 0) {
        return Err(ConfigError(format!(
            "{origin}: routes.{name}.deployments: every weight is 0; nothing could be chosen"
        )));
    }
    for d in deployments.iter().filter(|d| d.price.is_none()) {
        warnings.push(if strategy == Strategy::LeastCost {
            format!(
                "routes.{name}: least_cost, but no [prices.\"{}\"] for {}: it is chosen last",
                d.model, d.id
            )
        } else {
            format!(
                "routes.{name}: no [prices.\"{}\"] for {}: its requests cost $0 in the ledger and in budgets",
                d.model, d.id
            )
        });
    }
    // A backup that lacks what the primary has fails the requests that use it.
    // (The config checked above that there is at least one deployment.)
    if let [primary, backups @ ..] = deployments.as_slice() {
        for d in backups {
            for lost in capability_loss(&primary.capabilities, &d.capabilities) {
                warnings.push(format!(
                    "routes.{name}: {} lacks {lost} that the primary {} has; requests that use it skip this deployment",
                    d.id, primary.id
                ));
            }
        }
    }
    let first = |field: &str, v: Option<f64>, default: Option<f64>| {
        secs(v, default, &format!("routes.{name}.{field}"), origin)
    };
    let timeouts = Timeouts {
        first_event: first(
            "first_token_timeout_secs",
            rc.first_token_timeout_secs,
            Some(120.0),
        )?
        .unwrap_or(Duration::from_secs(120)),
        idle: first("idle_timeout_secs", rc.idle_timeout_secs, Some(120.0))?,
        attempt: first("attempt_timeout_secs", rc.attempt_timeout_secs, None)?,
        request: first("request_timeout_secs", rc.request_timeout_secs, None)?,
    };
    let mut retry = RetryPolicy::for_deployments(deployments.len());
    if let Some(n) = rc.retry.attempts {
        if n == 0 {
            return Err(ConfigError(format!(
                "{origin}: routes.{name}.retry.attempts: must be at least 1"
            )));
        }
        retry.max_attempts = n;
    }
    if let Some(ms) = rc.retry.backoff_base_ms {
        retry.backoff_base = Duration::from_millis(ms);
    }
    if let Some(ms) = rc.retry.backoff_max_ms {
        retry.backoff_max = Duration::from_millis(ms);
    }
    let budget_defaults = BudgetPolicy::default();
    let budget = BudgetPolicy {
        ratio: share(
            rc.retry.budget_ratio,
            budget_defaults.ratio,
            &format!("routes.{name}.retry.budget_ratio"),
            origin,
        )?,
        min_per_sec: match rc.retry.budget_min_per_sec {
            Some(v) if !(0.0..=10_000.0).contains(&v) => {
                return Err(ConfigError(format!(
                    "{origin}: routes.{name}.retry.budget_min_per_sec: must be within [0, 10000]"
                )));
            }
            v => v.unwrap_or(budget_defaults.min_per_sec),
        },
        window: budget_defaults.window,
    };
    let latency_defaults = LatencyPolicy::default();
    let latency = LatencyPolicy {
        default_rtt: match rc.latency.default_ms {
            Some(ms) if ms > 0.0 && ms <= 600_000.0 => Duration::from_secs_f64(ms / 1000.0),
            Some(_) => {
                return Err(ConfigError(format!(
                    "{origin}: routes.{name}.latency.default_ms: must be within (0, 600000]"
                )));
            }
            None => latency_defaults.default_rtt,
        },
        decay: first("latency.decay_secs", rc.latency.decay_secs, None)?
            .unwrap_or(latency_defaults.decay),
    };
    let fallback =
        |t: &Option<Spanned<String>>| t.as_ref().and_then(|t| built.get(t.get_ref()).cloned());
    let fallbacks = Fallbacks {
        context_window: fallback(&rc.fallbacks.context_window),
        content_filter: fallback(&rc.fallbacks.content_filter),
    };
    Ok(Route {
        name: name.to_owned(),
        kind,
        deployments,
        strategy,
        timeouts,
        retry,
        budget: RetryBudget::new(budget, now),
        breaker,
        latency,
        fallbacks,
    })
}
