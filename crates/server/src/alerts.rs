//! Alerts: the conditions worth waking someone for, each shown three ways: the
//! `relais_alert_active` gauge (and `relais_alerts_fired_total`), one structured log line when
//! it fires and one when it clears, and, with `[alerts] webhook_url`, a JSON POST for each.
//!
//! | alert | fires when | clears when |
//! |---|---|---|
//! | `budget` | a key's or team's spend reaches 80% / 100% of a daily, monthly or total budget | spend falls below (a new period, a reset, a raised budget) |
//! | `breaker_open` | a deployment's circuit breaker takes it out of rotation | it is back in rotation |
//! | `backup_readiness_lost` | a route that had a ready backup has none left | a backup is ready again |
//! | `dependency` | Plan B's dependency alert: one vendor carries a route with no backup ready | the dependency check says otherwise |
//! | `store_down` | the limit store (Redis) or the ledger store stopped answering | it answers again |
//!
//! A check every `[alerts] check_secs` compares what holds now with what held before, so each
//! alert fires once while it lasts (deduplicated by its id), and one that clears and comes back
//! within `repeat_secs` updates the gauge and the log but is not posted again. Webhook
//! deliveries go through a bounded queue to one sender task: retried with backoff (0.5 s,
//! doubling, at most 30 s apart) on a transport error, 408, 429 or 5xx, never redirected, and
//! dropped and counted when the queue is full.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::live::Live;
use crate::metrics::{Prom, labels};
use crate::state::AppState;

/// The kinds of alert, in the order `/metrics` lists them.
pub(crate) const KINDS: [&str; 5] = [
    "budget",
    "breaker_open",
    "backup_readiness_lost",
    "dependency",
    "store_down",
];

/// One condition that holds now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Alert {
    pub(crate) kind: &'static str,
    /// Stable while the condition lasts: `budget:key_ab12:day:80`.
    pub(crate) id: String,
    /// What it is about (`key app`, `route gpt-4o-mini`, ...), the gauge's `subject` label.
    pub(crate) subject: String,
    pub(crate) summary: String,
    pub(crate) details: Value,
}

#[derive(Debug, Clone)]
struct Active {
    alert: Alert,
    since_ms: i64,
}

/// What the webhook sender is given.
struct Delivery {
    body: Vec<u8>,
    id: String,
}

/// Alert state; outlives reloads (in [`AppState`]).
pub(crate) struct Alerting {
    active: Mutex<BTreeMap<String, Active>>,
    /// When each alert last cleared, to hold back a repeat within `repeat_secs`.
    cleared: Mutex<BTreeMap<String, Instant>>,
    /// Breaker ejections counted at the last check, per deployment series.
    ejections: Mutex<BTreeMap<String, u64>>,
    /// Routes that had a ready backup at the last check.
    had_ready: Mutex<BTreeMap<String, bool>>,
    fired: [AtomicU64; KINDS.len()],
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    tx: Mutex<Option<mpsc::Sender<Delivery>>>,
}

impl Default for Alerting {
    fn default() -> Self {
        Self {
            active: Mutex::default(),
            cleared: Mutex::default(),
            ejections: Mutex::default(),
            had_ready: Mutex::default(),
            fired: Default::default(),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            tx: Mutex::new(None),
        }
    }
}

/// Webhook deliveries waiting; more are dropped and counted.
const QUEUE: usize = 256;

impl Alerting {
    /// The alerts of `kinds` that hold now, from one check: new ones fire, absent ones clear.
    pub(crate) fn update(&self, state: &AppState, kinds: &[&str], holding: Vec<Alert>) {
        let live = state.live();
        let cfg = &live.runtime.alerts;
        let now_ms = crate::clock::now_ms();
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cleared = self.cleared.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget clearances older than the repeat window: the map stays as small as the alerts
        // that could still be held back.
        let repeat = Duration::from_secs(cfg.repeat_secs);
        cleared.retain(|_, at| at.elapsed() < repeat);
        let holding: BTreeMap<String, Alert> =
            holding.into_iter().map(|a| (a.id.clone(), a)).collect();
        let gone: Vec<String> = active
            .iter()
            .filter(|(id, a)| kinds.contains(&a.alert.kind) && !holding.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(a) = active.remove(&id) {
                tracing::info!(
                    alert = a.alert.kind,
                    id = %id,
                    subject = %a.alert.subject,
                    state = "resolved",
                    "alert resolved: {}",
                    a.alert.summary
                );
                cleared.insert(id.clone(), Instant::now());
                self.post(&live, &a.alert, "resolved", a.since_ms, now_ms);
            }
        }
        for (id, alert) in holding {
            if let Some(a) = active.get_mut(&id) {
                // Still holding: keep the latest figures for the gauge and the next message.
                a.alert = alert;
                continue;
            }
            let repeated = cleared.contains_key(&id);
            if let Some(i) = KINDS.iter().position(|k| *k == alert.kind) {
                self.fired[i].fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(
                alert = alert.kind,
                id = %id,
                subject = %alert.subject,
                state = "firing",
                details = %alert.details,
                "alert: {}",
                alert.summary
            );
            if !repeated {
                self.post(&live, &alert, "firing", now_ms, now_ms);
            }
            active.insert(
                id,
                Active {
                    alert,
                    since_ms: now_ms,
                },
            );
        }
    }

    /// Queue the webhook POST of `alert` entering `status`, when a webhook is configured.
    fn post(&self, live: &Live, alert: &Alert, status: &str, since_ms: i64, now_ms: i64) {
        if live.runtime.alerts.webhook_url.is_none() {
            return;
        }
        let body = json!({
            "source": "relais",
            "instance": live.runtime.listen.to_string(),
            "alert": alert.kind,
            "status": status,
            "id": alert.id,
            "subject": alert.subject,
            "summary": alert.summary,
            "details": alert.details,
            "started_at_ms": since_ms,
            "at_ms": now_ms,
        });
        let delivery = Delivery {
            body: serde_json::to_vec(&body).unwrap_or_default(),
            id: format!("{}:{status}:{since_ms}", alert.id),
        };
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let queued = tx.as_ref().is_some_and(|tx| tx.try_send(delivery).is_ok());
        if !queued {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(id = %alert.id, "alert webhook queue full: delivery dropped");
        }
    }

    /// The alerts firing now, oldest first, as `GET /admin/alerts` lists them.
    pub(crate) fn list(&self) -> Vec<Value> {
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<&Active> = active.values().collect();
        list.sort_by_key(|a| a.since_ms);
        list.iter()
            .map(|a| {
                json!({"alert": a.alert.kind, "id": a.alert.id, "subject": a.alert.subject,
                    "summary": a.alert.summary, "details": a.alert.details,
                    "started_at_ms": a.since_ms})
            })
            .collect()
    }

    pub(crate) fn render(&self, p: &mut Prom) {
        p.family(
            "relais_alert_active",
            "gauge",
            "Alerts firing now (1), by kind and subject.",
        );
        for a in self
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            let l = labels(&[("alert", a.alert.kind), ("subject", &a.alert.subject)]);
            p.sample("relais_alert_active", &l, 1);
        }
        p.family(
            "relais_alerts_fired_total",
            "counter",
            "Alerts that started firing, by kind.",
        );
        for (i, k) in KINDS.iter().enumerate() {
            p.sample(
                "relais_alerts_fired_total",
                &labels(&[("alert", k)]),
                self.fired[i].load(Ordering::Relaxed),
            );
        }
        p.family(
            "relais_alert_webhook_deliveries_total",
            "counter",
            "Alert webhook POSTs by outcome: sent, failed (after every retry), dropped (queue full).",
        );
        for (outcome, n) in [
            ("sent", &self.sent),
            ("failed", &self.failed),
            ("dropped", &self.dropped),
        ] {
            p.sample(
                "relais_alert_webhook_deliveries_total",
                &labels(&[("outcome", outcome)]),
                n.load(Ordering::Relaxed),
            );
        }
    }
}

/// Check every `[alerts] check_secs` (read at each tick, so a reload changes it), and send the
/// webhook deliveries; runs for the server's life.
pub(crate) async fn watch(state: Arc<AppState>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    *state
        .alerting
        .tx
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(tx);
    let sender = tokio::spawn(deliver(state.clone(), rx));
    let _stop = crate::background::AbortOnDrop(Some(sender));
    loop {
        let every = state.live().runtime.alerts.check_secs.max(1);
        tokio::time::sleep(Duration::from_secs(every)).await;
        check(&state).await;
    }
}

/// One round of checks.
pub(crate) async fn check(state: &AppState) {
    let live = state.live();
    let a = &state.alerting;
    a.update(state, &["breaker_open"], breakers(&live, a));
    a.update(state, &["store_down"], stores(&live));
    a.update(state, &["dependency"], dependency(state));
    match budgets(&live).await {
        Ok(holding) => a.update(state, &["budget"], holding),
        Err(e) => tracing::debug!(error = %e, "budget alerts: check skipped"),
    }
    if let Some(holding) = readiness(&live, a).await {
        a.update(state, &["backup_readiness_lost"], holding);
    }
}

/// Deployments out of rotation now, or ejected since the last check (a breaker that opened and
/// closed between two checks still fires, and clears at the next).
fn breakers(live: &Live, a: &Alerting) -> Vec<Alert> {
    let mut seen = a.ejections.lock().unwrap_or_else(PoisonError::into_inner);
    // Rebuilt each check: deployments a reload removed are forgotten.
    let last = std::mem::take(&mut *seen);
    let mut out = Vec::new();
    for (name, entry) in &live.entries {
        for d in &entry.route.deployments {
            let key = format!("{name}/{}", d.id);
            let count = d.health.ejections.load(Ordering::Relaxed);
            let before = last.get(&key).copied();
            seen.insert(key.clone(), count);
            let new_ejection = before.is_some_and(|b| count > b) || (before.is_none() && count > 0);
            if d.health.is_ejected() || new_ejection {
                out.push(Alert {
                    kind: "breaker_open",
                    id: format!("breaker_open:{key}"),
                    subject: format!("route {name} deployment {}", d.id),
                    summary: format!(
                        "the circuit breaker took {} out of rotation on route {name}",
                        d.id
                    ),
                    details: json!({"route": name, "deployment": d.id, "vendor": d.vendor,
                        "ejections": count, "ejected": d.health.is_ejected()}),
                });
            }
        }
    }
    out
}

fn stores(live: &Live) -> Vec<Alert> {
    let mut out = Vec::new();
    let limits = &live.runtime.rate_limits;
    if !limits.is_up() {
        out.push(Alert {
            kind: "store_down",
            id: "store_down:limits".into(),
            subject: "limit store".into(),
            summary: format!(
                "the limit store ({}) is not answering: limits are counted in this process only",
                limits.kind()
            ),
            details: json!({"store": "limits", "kind": limits.kind()}),
        });
    }
    if let Some(l) = &live.runtime.ledger {
        if !l.store_up() {
            out.push(Alert {
                kind: "store_down",
                id: "store_down:ledger".into(),
                subject: "ledger store".into(),
                summary: "the ledger store is not answering: rows wait on local disk".into(),
                details: json!({"store": "ledger"}),
            });
        }
    }
    out
}

fn dependency(state: &AppState) -> Vec<Alert> {
    state
        .planb
        .alerts
        .firing()
        .into_iter()
        .map(|(route, vendor, share)| Alert {
            kind: "dependency",
            id: format!("dependency:{route}"),
            subject: format!("route {route}"),
            summary: format!(
                "{vendor} carries {share:.1}% of route {route} and no backup is ready"
            ),
            details: json!({"route": route, "vendor": vendor, "share_percent": share}),
        })
        .collect()
}

/// Keys and teams at 80% or 100% of a budget.
async fn budgets(live: &Live) -> Result<Vec<Alert>, String> {
    let (Some(ring), Some(ledger)) = (&live.runtime.keyring, &live.runtime.ledger) else {
        return Ok(Vec::new());
    };
    let now = i64::try_from(crate::clock::unix_secs()).unwrap_or(i64::MAX);
    let mut subjects = Vec::new();
    for t in ring.teams().await.map_err(|e| e.message)? {
        subjects.push(("team", t.id, t.name, t.limits));
    }
    for k in ring.keys().await.map_err(|e| e.message)? {
        if k.revoked_at.is_none() {
            subjects.push(("key", k.id, k.name, k.limits));
        }
    }
    let mut out = Vec::new();
    for (what, id, name, limits) in subjects {
        if !limits.has_budget() {
            continue;
        }
        let spend = relais_governance::spend_in_ledger(ledger.store().as_ref(), &id, &limits, now)
            .await
            .map_err(|e| e.to_string())?;
        for (period, budget, spent) in [
            ("day", limits.budget_day, spend.day),
            ("month", limits.budget_month, spend.month),
            ("total", limits.budget_total, spend.total),
        ] {
            let Some(budget) = budget.filter(|b| *b > 0) else {
                continue;
            };
            let percent = spent as f64 * 100.0 / budget as f64;
            // At 100% the 80% alert holds too (a warning and a critical, as pagers expect).
            for threshold in [80u32, 100]
                .into_iter()
                .filter(|t| percent >= f64::from(*t))
            {
                let usd = relais_governance::usd_plain;
                out.push(Alert {
                kind: "budget",
                id: format!("budget:{id}:{period}:{threshold}"),
                subject: format!("{what} {name}"),
                summary: format!(
                    "{what} '{name}' is at {threshold}% of its {} budget: USD {} of {} spent ({percent:.0}%)",
                    match period {
                        "day" => "daily",
                        "month" => "monthly",
                        _ => "total",
                    },
                    usd(spent),
                    usd(budget)
                ),
                details: json!({"subject_kind": what, "subject_id": id, "name": name,
                    "period": period, "threshold_percent": threshold,
                    "spent_usd": usd(spent), "budget_usd": usd(budget)}),
            });
            }
        }
    }
    Ok(out)
}

/// Routes whose last ready backup stopped being ready. `None` when readiness cannot be read
/// (no ledger, no shadowed route): nothing is concluded then.
async fn readiness(live: &Live, a: &Alerting) -> Option<Vec<Alert>> {
    if live.runtime.shadows.is_empty() || live.runtime.ledger.is_none() {
        return None;
    }
    let all = crate::planb::readiness(live, None).await.ok()?;
    let mut ready: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in &all {
        let list = ready.entry(b.route.clone()).or_default();
        if b.readiness.verdict != relais_planb::Verdict::NotReady {
            list.push(b.backup.clone());
        }
    }
    let mut had = a.had_ready.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = Vec::new();
    for (route, backups) in &ready {
        let had_one = had.get(route).copied().unwrap_or(false);
        if backups.is_empty() && had_one {
            let lost: Vec<&str> = all
                .iter()
                .filter(|b| &b.route == route)
                .map(|b| b.backup.as_str())
                .collect();
            out.push(Alert {
                kind: "backup_readiness_lost",
                id: format!("backup_readiness_lost:{route}"),
                subject: format!("route {route}"),
                summary: format!("route {route} has no ready backup left (see relais readiness)"),
                details: json!({"route": route, "backups": lost}),
            });
            // Stays firing until a backup is ready again.
            continue;
        }
        had.insert(route.clone(), !backups.is_empty());
    }
    Some(out)
}

/// Send queued deliveries, one at a time, with retries.
async fn deliver(state: Arc<AppState>, mut rx: mpsc::Receiver<Delivery>) {
    while let Some(d) = rx.recv().await {
        let live = state.live();
        let cfg = live.runtime.alerts.clone();
        let Some(url) = cfg.webhook_url.as_ref() else {
            continue;
        };
        let client = live.runtime.http.clone();
        let mut wait = Duration::from_millis(500);
        let mut delivered = false;
        for attempt in 1..=cfg.webhook_attempts.max(1) {
            let mut rb = client
                .post(url.expose())
                .timeout(Duration::from_secs(10))
                .header("content-type", "application/json")
                .header("idempotency-key", d.id.as_str());
            for (k, v) in &cfg.webhook_headers {
                rb = rb.header(k.as_str(), v.expose());
            }
            let retry = match rb.body(d.body.clone()).send().await {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(r) => {
                    let s = r.status().as_u16();
                    tracing::warn!(id = %d.id, status = s, attempt, "alert webhook refused the delivery");
                    s == 408 || s == 429 || s >= 500
                }
                Err(e) => {
                    tracing::warn!(id = %d.id, attempt, error = %relais_core::redact(&e.to_string(), &[url]), "alert webhook unreachable");
                    true
                }
            };
            if !retry {
                break;
            }
            if attempt < cfg.webhook_attempts {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
        if delivered {
            state.alerting.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            state.alerting.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(id = %d.id, "alert webhook delivery failed after retries");
        }
    }
}
