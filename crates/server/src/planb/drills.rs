//! Failover drills: for a bounded time a share of a route's requests treat one deployment as
//! down, so the failover path runs in production, with an automatic abort.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use relais_core::Error;

use super::store_error;
use crate::clock::{now_ms, us};
use crate::live::Live;

/// How a drill stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DrillState {
    Running,
    Completed,
    Aborted { reason: String },
    Stopped { by: String },
}

/// A failover drill: for a bounded time, `share` of a route's requests treat `deployment` as
/// down, so the failover path runs in production. It stops itself when the route's error rate
/// during the drill rises above `abort_error_rate`.
pub struct Drill {
    pub id: String,
    pub route: String,
    pub deployment: String,
    pub share: f64,
    pub started_at_ms: i64,
    pub ends_at_ms: i64,
    pub started_by: String,
    pub abort_error_rate: f64,
    pub min_requests: u64,
    /// Requests of the drilled share, those another deployment served, and those that failed.
    pub drilled: AtomicU64,
    pub failovers: AtomicU64,
    pub drilled_errors: AtomicU64,
    /// Every request of the route while the drill ran, and those that failed.
    pub route_requests: AtomicU64,
    pub route_errors: AtomicU64,
    /// Latency sums (microseconds) of drilled and other requests, for the delta.
    pub drilled_latency_us: AtomicU64,
    pub other_latency_us: AtomicU64,
    state: Mutex<DrillState>,
    ended_at_ms: AtomicU64,
}

/// A request's part in a drill: which drill, and whether it is in the drilled share.
pub(crate) struct InDrill {
    pub drill: Arc<Drill>,
    pub drilled: bool,
}

impl InDrill {
    /// Count how the request ended: served by `served` (a deployment id) or failed.
    pub(crate) fn outcome(&self, served: Option<&str>, latency: Duration) {
        let d = &self.drill;
        let failed = served.is_none();
        d.route_requests.fetch_add(1, Ordering::Relaxed);
        d.route_errors
            .fetch_add(u64::from(failed), Ordering::Relaxed);
        let us = us(latency);
        if self.drilled {
            d.drilled.fetch_add(1, Ordering::Relaxed);
            d.drilled_errors
                .fetch_add(u64::from(failed), Ordering::Relaxed);
            d.failovers.fetch_add(
                u64::from(served.is_some_and(|s| s != d.deployment)),
                Ordering::Relaxed,
            );
            d.drilled_latency_us.fetch_add(us, Ordering::Relaxed);
        } else {
            d.other_latency_us.fetch_add(us, Ordering::Relaxed);
        }
        let n = d.route_requests.load(Ordering::Relaxed);
        let errors = d.route_errors.load(Ordering::Relaxed);
        if n >= d.min_requests && errors as f64 > d.abort_error_rate * n as f64 {
            d.end(DrillState::Aborted {
                reason: format!(
                    "the route's error rate reached {:.1}% ({errors} of {n} requests), above the abort threshold of {:.1}%",
                    errors as f64 * 100.0 / n as f64,
                    d.abort_error_rate * 100.0
                ),
            });
        }
    }
}

impl Drill {
    pub fn state(&self) -> DrillState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn running(&self, now_ms: i64) -> bool {
        now_ms < self.ends_at_ms && self.state() == DrillState::Running
    }

    /// End the drill (once); whoever ends it first decides how.
    pub fn end(&self, how: DrillState) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *s != DrillState::Running {
            return false;
        }
        if let DrillState::Aborted { reason } = &how {
            tracing::warn!(drill = %self.id, route = %self.route, %reason, "drill aborted");
        }
        *s = how;
        self.ended_at_ms
            .store(u64::try_from(now_ms()).unwrap_or(0), Ordering::Relaxed);
        true
    }

    /// The drill as the admin API shows it, with its counters (not the ledger's view).
    pub fn json(&self) -> serde_json::Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mean = |sum: u64, count: u64| sum.checked_div(count).unwrap_or(0);
        let drilled = n(&self.drilled);
        let others = n(&self.route_requests).saturating_sub(drilled);
        let ended = n(&self.ended_at_ms);
        serde_json::json!({
            "id": self.id,
            "route": self.route,
            "deployment": self.deployment,
            "share": self.share,
            "started_by": self.started_by,
            "started_at": self.started_at_ms,
            "ends_at": self.ends_at_ms,
            "ended_at": (ended > 0).then_some(ended),
            "abort_error_rate": self.abort_error_rate,
            "min_requests": self.min_requests,
            "status": self.state(),
            "observed": {
                "route_requests": n(&self.route_requests),
                "route_errors": n(&self.route_errors),
                "drilled_requests": drilled,
                "failovers": n(&self.failovers),
                "drilled_errors": n(&self.drilled_errors),
                "drilled_mean_latency_us": mean(n(&self.drilled_latency_us), drilled),
                "other_mean_latency_us": mean(n(&self.other_latency_us), others),
            },
        })
    }
}

/// The drills of this process: running ones are consulted on every request of their route.
#[derive(Default)]
pub struct Drills {
    all: Mutex<Vec<Arc<Drill>>>,
    /// Whether any drill may be running: the live path reads only this when none is.
    any: std::sync::atomic::AtomicBool,
}

/// What a drill is asked to do (`POST /admin/drills`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillRequest {
    pub route: String,
    pub deployment: String,
    /// Share of the route's requests, in (0, 1].
    pub share: f64,
    pub duration_secs: u64,
    /// Default 0.2.
    pub abort_error_rate: Option<f64>,
    /// Requests before the abort threshold applies (default 10).
    pub min_requests: Option<u64>,
    /// Who started it (recorded).
    pub started_by: String,
}

impl Drills {
    /// The request's part in a running drill of `route`, if one runs.
    pub(crate) fn join(&self, route: &str) -> Option<InDrill> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let now = now_ms();
        let all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(drill) = all.iter().find(|d| d.route == route && d.running(now)) else {
            // Once every drill has ended, requests stop taking this lock (`start` sets the
            // flag again under the same lock).
            if !all.iter().any(|d| d.running(now)) {
                self.any.store(false, Ordering::Relaxed);
            }
            return None;
        };
        let drilled = fastrand::f64() < drill.share;
        Some(InDrill {
            drill: drill.clone(),
            drilled,
        })
    }

    pub fn get(&self, id: &str) -> Option<Arc<Drill>> {
        let all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        all.iter().find(|d| d.id == id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Drill>> {
        self.all
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Start a drill after checking it against the config: the route and deployment exist,
    /// another deployment can take the drilled share, no other drill runs on the route.
    pub fn start(&self, live: &Live, r: DrillRequest) -> Result<Arc<Drill>, Error> {
        let bad = |m: String| Error::bad_request(m);
        let entry = live
            .entries
            .get(&r.route)
            .ok_or_else(|| bad(format!("no route named '{}'", r.route)).with_param("route"))?;
        if entry.route.kind != relais_router::RouteKind::Chat {
            return Err(bad(format!(
                "route '{}' is not a chat route; drills exercise chat failover",
                r.route
            ))
            .with_param("route"));
        }
        if !entry.route.deployments.iter().any(|d| d.id == r.deployment) {
            let ids: Vec<&str> = entry
                .route
                .deployments
                .iter()
                .map(|d| d.id.as_str())
                .collect();
            return Err(bad(format!(
                "route '{}' has no deployment '{}' (it has: {})",
                r.route,
                r.deployment,
                ids.join(", ")
            ))
            .with_param("deployment"));
        }
        if entry.route.deployments.len() < 2 {
            return Err(bad(format!(
                "route '{}' has one deployment: there is nothing to fail over to",
                r.route
            )));
        }
        if !(r.share > 0.0 && r.share <= 1.0) {
            return Err(bad("share must be within (0, 1]".into()).with_param("share"));
        }
        if r.duration_secs == 0 || r.duration_secs > 86_400 {
            return Err(
                bad("duration_secs must be within [1, 86400]".into()).with_param("duration_secs")
            );
        }
        let abort = r.abort_error_rate.unwrap_or(0.2);
        if !(0.0..=1.0).contains(&abort) {
            return Err(
                bad("abort_error_rate must be within [0, 1]".into()).with_param("abort_error_rate")
            );
        }
        if r.started_by.trim().is_empty() {
            return Err(bad("started_by: say who starts the drill".into()).with_param("started_by"));
        }
        let now = now_ms();
        let mut all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = all.iter().find(|d| d.route == r.route && d.running(now)) {
            return Err(bad(format!(
                "drill {} is already running on route '{}'",
                d.id, r.route
            )));
        }
        let drill = Arc::new(Drill {
            id: format!("drill_{}", &crate::bill::row_id(now)[..20]),
            route: r.route,
            deployment: r.deployment,
            share: r.share,
            started_at_ms: now,
            ends_at_ms: now + i64::try_from(r.duration_secs).unwrap_or(86_400) * 1000,
            started_by: r.started_by,
            abort_error_rate: abort,
            min_requests: r.min_requests.unwrap_or(10).max(1),
            drilled: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            drilled_errors: AtomicU64::new(0),
            route_requests: AtomicU64::new(0),
            route_errors: AtomicU64::new(0),
            drilled_latency_us: AtomicU64::new(0),
            other_latency_us: AtomicU64::new(0),
            state: Mutex::new(DrillState::Running),
            ended_at_ms: AtomicU64::new(0),
        });
        // Finished drills are kept for their reports; the newest 100.
        if all.len() >= 100 {
            all.remove(0);
        }
        all.push(drill.clone());
        self.any.store(true, Ordering::Relaxed);
        tracing::info!(drill = %drill.id, route = %drill.route, deployment = %drill.deployment, share = drill.share, by = %drill.started_by, "drill started");
        Ok(drill)
    }
}

/// The drill's report: its own counters and the ledger's rows of its requests, so the two can
/// be checked against each other.
pub async fn drill_report(live: &Live, d: &Drill) -> Result<serde_json::Value, Error> {
    let mut v = d.json();
    if let Some(ledger) = &live.runtime.ledger {
        ledger.flush().await?;
        let end = match d.ended_at_ms.load(Ordering::Relaxed) {
            0 => d.ends_at_ms.min(now_ms()),
            e => i64::try_from(e).unwrap_or(i64::MAX),
        };
        let q = relais_state::UsageQuery {
            drill: Some(d.id.clone()),
            ..relais_state::UsageQuery::live_route(
                relais_state::GroupBy::Deployment,
                &d.route,
                d.started_at_ms,
                end + 1,
            )
        };
        let lines = ledger.store().usage(&q).await.map_err(store_error)?;
        let requests: u64 = lines.iter().map(|l| l.requests).sum();
        let errors: u64 = lines.iter().map(|l| l.errors).sum();
        let cost: u64 = lines.iter().map(|l| l.cost_pusd).sum();
        let by: serde_json::Map<String, serde_json::Value> = lines
            .iter()
            .map(|l| (l.group.clone(), l.requests.into()))
            .collect();
        v["ledger"] = serde_json::json!({
            "drilled_requests": requests,
            "drilled_errors": errors,
            "served_by": by,
            "cost_pusd": cost,
        });
    }
    Ok(v)
}

/// Write a drill (settings, state, counters) to the store's events.
pub async fn record_drill(live: &Live, d: &Drill) {
    let Some(ledger) = &live.runtime.ledger else {
        return;
    };
    let event = relais_state::PlanEvent {
        id: d.id.clone(),
        at_ms: d.started_at_ms,
        kind: "drill".to_owned(),
        route: d.route.clone(),
        body: d.json().to_string(),
    };
    if let Err(e) = ledger.store().put_event(&event).await {
        tracing::warn!(drill = %d.id, error = %e, "the drill could not be recorded in the store");
    }
}
