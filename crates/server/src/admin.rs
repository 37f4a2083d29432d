//! The admin API under `/admin/`: keys and teams, usage and the ledger, readiness, promotion,
//! drills, the dependency index, the routes' live state and the OpenAPI document. Every endpoint
//! checks the admin credential first (`admin.key`, and a client certificate when
//! `admin.require_client_cert` is set).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use relais_core::{Error, ErrorKind, Side};

use crate::app::{AppState, Live};
use crate::http::{ADMIN_BODY, Ctx, bearer, constant_time_eq, header_str, plain, read_body};

/// The admin API's own credential, compared in constant time. Off (404) without one.
/// The admin API's routes. The credential is checked once, by a layer in front of all of them,
/// before any handler runs or any body is read: no endpoint can forget it.
pub(crate) fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/routes", get(admin_routes))
        .route("/admin/teams", get(admin_teams).post(admin_teams))
        .route("/admin/keys", get(admin_keys).post(admin_keys))
        .route("/admin/keys/{id}/{action}", post(admin_key_action))
        .route("/admin/usage", get(admin_usage))
        .route("/admin/readiness", get(admin_readiness))
        .route("/admin/promote", post(admin_promote))
        .route("/admin/drills", get(admin_drills).post(admin_drills))
        .route("/admin/drills/{id}", get(admin_drill))
        .route("/admin/drills/{id}/stop", post(admin_drill_stop))
        .route("/admin/dependency", get(admin_dependency))
        .route("/admin/ledger/{id}", get(admin_ledger))
        .route("/admin/openapi.json", get(admin_openapi))
        .route_layer(axum::middleware::from_fn_with_state(state, require_admin))
}

/// The layer of [`router`]: the request goes on only with the admin credential.
async fn require_admin(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match admin_auth(&app.live(), &headers) {
        Ok(()) => next.run(request).await,
        Err(e) => Ctx::new(&headers).error(&e, Duration::ZERO),
    }
}

fn admin_auth(live: &Live, headers: &HeaderMap) -> Result<(), Error> {
    let Some(admin) = &live.runtime.admin_key else {
        return Err(Error::new(
            ErrorKind::NotFound,
            Side::Client,
            "the admin API is off: set admin.key in the config",
        ));
    };
    if live.runtime.admin_client_cert
        && header_str(headers, crate::listen::CLIENT_CERT_HEADER) != Some("verified")
    {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            Side::Client,
            "the admin API needs a client certificate signed by server.tls.client_ca_file",
        ));
    }
    let presented = bearer(headers).or_else(|| header_str(headers, "x-api-key"));
    if presented.is_some_and(|p| constant_time_eq(admin.expose().as_bytes(), p.as_bytes())) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Auth,
            Side::Client,
            "invalid or missing admin key",
        ))
    }
}

/// The key ring, for the key and team endpoints.
pub(crate) fn keyring(live: &Live) -> Result<Arc<relais_governance::KeyRing>, Error> {
    live.runtime.keyring.clone().ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            Side::Client,
            "virtual keys are off: add a [governance] section to the config",
        )
    })
}

pub(crate) fn limits_json(l: &relais_governance::Limits) -> serde_json::Value {
    let usd =
        |v: Option<u64>| v.map(|p| relais_governance::usd(p).trim_start_matches('$').to_owned());
    serde_json::json!({"rpm": l.rpm, "tpm": l.tpm, "max_concurrent": l.max_concurrent,
        "budget_day": usd(l.budget_day), "budget_month": usd(l.budget_month),
        "budget_total": usd(l.budget_total)})
}

pub(crate) fn team_json(t: &relais_state::Team) -> serde_json::Value {
    serde_json::json!({"id": t.id, "name": t.name, "routes": t.routes, "created_at": t.created_at,
        "limits": limits_json(&t.limits), "vendors": t.reach.vendors,
        "data_classes": t.reach.data_classes})
}

/// `rpm`, `tpm`, `max_concurrent` from an admin body: positive integers when present;
/// `budget_day`, `budget_month`, `budget_total`: USD as a string ("12.50") or a number.
pub(crate) fn limits_of(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<relais_governance::Limits, Error> {
    let one = |field: &str| match body.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v.as_u64().filter(|n| *n > 0).map(Some).ok_or_else(|| {
            Error::bad_request(format!("{field} must be a positive integer")).with_param(field)
        }),
    };
    let money = |field: &str| {
        let text = match body.get(field) {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(_) => String::new(),
        };
        relais_governance::parse_usd(&text)
            .map(Some)
            .map_err(|e| Error::bad_request(format!("{field}: {e}")).with_param(field))
    };
    Ok(relais_governance::Limits {
        rpm: one("rpm")?,
        tpm: one("tpm")?,
        max_concurrent: one("max_concurrent")?,
        budget_day: money("budget_day")?,
        budget_month: money("budget_month")?,
        budget_total: money("budget_total")?,
    })
}

/// `vendors` and `data_classes` from an admin body: lists of strings when present.
pub(crate) fn reach_of(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<relais_governance::Reach, Error> {
    Ok(relais_governance::Reach {
        vendors: string_list(body, "vendors")?,
        data_classes: string_list(body, "data_classes")?,
    })
}

/// A key as listed: never its secret or hash, only the prefix that recognises it.
pub(crate) fn key_json(k: &relais_state::StoredKey) -> serde_json::Value {
    serde_json::json!({
        "id": k.id, "name": k.name, "team_id": k.team_id, "prefix": k.prefix,
        "routes": k.routes, "created_at": k.created_at, "revoked_at": k.revoked_at,
        "limits": limits_json(&k.limits), "vendors": k.reach.vendors,
        "data_classes": k.reach.data_classes,
    })
}

/// What every key and team call starts with: the key ring, and for a POST its JSON body
/// (`None` for a GET).
pub(crate) async fn admin_request(
    live: &Live,
    headers: &HeaderMap,
    method: &Method,
    body: Body,
) -> Result<
    (
        Arc<relais_governance::KeyRing>,
        Option<serde_json::Map<String, serde_json::Value>>,
    ),
    Error,
> {
    let ring = keyring(live)?;
    if *method == Method::GET {
        return Ok((ring, None));
    }
    let (bytes, _) = read_body(body, headers, ADMIN_BODY, None).await?;
    Ok((ring, Some(admin_body(&bytes)?)))
}

/// The admin body: a JSON object, or a 400 that says what is wrong.
pub(crate) fn admin_body(
    bytes: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::bad_request("the body must be a JSON object")),
        Err(e) => Err(Error::bad_request(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

pub(crate) fn string_list(
    body: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<Option<Vec<String>>, Error> {
    let bad = || Error::bad_request(format!("{field} must be a list of strings")).with_param(field);
    match body.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

pub(crate) fn string_field<'a>(
    body: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<&'a str, Error> {
    body.get(field)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| Error::bad_request(format!("{field} is required")).with_param(field))
}

/// Run an admin operation and answer with its JSON, or with the error in OpenAI's shape.
pub(crate) async fn admin_answer(
    headers: &HeaderMap,
    op: impl std::future::Future<Output = Result<(StatusCode, serde_json::Value), Error>>,
) -> Response {
    match op.await {
        Ok((status, value)) => plain(headers, status, "application/json", value.to_string()),
        Err(e) => Ctx::new(headers).error(&e, Duration::ZERO),
    }
}

/// `GET /admin/teams`, `POST /admin/teams` (`{"name", "routes"?}`).
pub(crate) async fn admin_teams(
    State(app): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let (ring, body) = admin_request(&live, &headers, &method, body).await?;
        let Some(body) = body else {
            let list: Vec<_> = ring.teams().await?.iter().map(team_json).collect();
            return Ok((StatusCode::OK, serde_json::json!({ "teams": list })));
        };
        let routes = string_list(&body, "routes")?;
        if let Some(unknown) = routes
            .iter()
            .flatten()
            .find(|r| !live.runtime.routes.contains_key(*r))
        {
            return Err(
                Error::bad_request(format!("no route named '{unknown}'")).with_param("routes")
            );
        }
        let team = ring
            .create_team(
                string_field(&body, "name")?,
                routes,
                limits_of(&body)?,
                reach_of(&body)?,
            )
            .await?;
        Ok((StatusCode::CREATED, team_json(&team)))
    })
    .await
}

/// `GET /admin/keys`, `POST /admin/keys` (`{"team", "name", "routes"?}`): the new key's secret
/// is in this answer and nowhere else, ever.
pub(crate) async fn admin_keys(
    State(app): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let (ring, body) = admin_request(&live, &headers, &method, body).await?;
        let Some(body) = body else {
            let list: Vec<_> = ring.keys().await?.iter().map(key_json).collect();
            return Ok((StatusCode::OK, serde_json::json!({ "keys": list })));
        };
        let issued = ring
            .create_key(
                string_field(&body, "team")?,
                string_field(&body, "name")?,
                string_list(&body, "routes")?,
                limits_of(&body)?,
                reach_of(&body)?,
            )
            .await?;
        let mut value = key_json(&issued.stored);
        value["key"] = issued.key.expose().into();
        Ok((StatusCode::CREATED, value))
    })
    .await
}

/// `POST /admin/keys/{id}/revoke` and `POST /admin/keys/{id}/rotate` (the new secret is in the
/// answer; the old one stops working).
pub(crate) async fn admin_key_action(
    State(app): State<Arc<AppState>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let ring = keyring(&live)?;
        match action.as_str() {
            "revoke" => {
                ring.revoke_key(&id).await?;
                Ok((
                    StatusCode::OK,
                    serde_json::json!({"id": id, "revoked": true}),
                ))
            }
            "rotate" => {
                let issued = ring.rotate_key(&id).await?;
                let mut value = key_json(&issued.stored);
                value["key"] = issued.key.expose().into();
                Ok((StatusCode::OK, value))
            }
            other => Err(Error::new(
                ErrorKind::NotFound,
                Side::Client,
                format!("unknown key action '{other}' (revoke, rotate)"),
            )),
        }
    })
    .await
}

/// `GET /admin/routes`: every route's strategy and, per deployment, the router's live view:
/// breaker state, cool-downs, latency estimate, in-flight and counters. Behind `admin.key`.
/// `GET /admin/usage?by=key&from=2026-11-01&to=2026-11-23&key=..&team=..&route=..`: spend
/// and tokens from the ledger, grouped; every row recorded before the call is counted (the
/// write-ahead file is shipped first).
pub(crate) async fn admin_usage(
    State(app): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let ledger = ledger_of(&live)?;
        let q = usage_query_of(&uri, None)?;
        ledger.flush().await?;
        let lines = ledger.store().usage(&q).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                Side::Gateway,
                format!("ledger store: {e}"),
            )
        })?;
        Ok((StatusCode::OK, crate::bill::usage_json(&q, &lines)))
    })
    .await
}

/// `GET /admin/readiness[?route=R]`: every shadowed backup's readiness (DESIGN.md §8).
pub(crate) async fn admin_readiness(
    State(app): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let params = query_params(uri.query().unwrap_or(""));
        let backups =
            crate::planb::readiness(&live, params.get("route").map(String::as_str)).await?;
        Ok((
            StatusCode::OK,
            serde_json::json!({
                "window_days": live.runtime.plan_b.window_days,
                "window_samples": live.runtime.plan_b.window_samples,
                "backups": backups,
            }),
        ))
    })
    .await
}

/// `POST /admin/promote` with `{"route", "to", "by", "dry_run"}` makes `to` the route's
/// primary (a dry run only forecasts), or with `{"route", "undo": true, "by"}` undoes it.
pub(crate) async fn admin_promote(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let (bytes, _) = read_body(body, &headers, ADMIN_BODY, None).await?;
        let body = admin_body(&bytes)?;
        let route = string_field(&body, "route")?;
        let flag = |k: &str| {
            body.get(k)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        if flag("undo") {
            let by = string_field(&body, "by")?;
            return Ok((
                StatusCode::OK,
                crate::planb::promote(&app, route, None, by).await?,
            ));
        }
        let to = string_field(&body, "to")?;
        let forecast = crate::planb::forecast(&live, route, to).await?;
        if flag("dry_run") {
            return Ok((
                StatusCode::OK,
                serde_json::json!({"dry_run": true, "forecast": forecast}),
            ));
        }
        let by = string_field(&body, "by")?;
        let mut done = crate::planb::promote(&app, route, Some(to), by).await?;
        done["forecast"] = forecast;
        Ok((StatusCode::OK, done))
    })
    .await
}

/// `POST /admin/drills` starts a drill; `GET` lists this instance's drills.
pub(crate) async fn admin_drills(
    State(app): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        if method == Method::GET {
            let list: Vec<_> = app.drills.list().iter().map(|d| d.json()).collect();
            return Ok((StatusCode::OK, serde_json::json!({ "drills": list })));
        }
        let (bytes, _) = read_body(body, &headers, ADMIN_BODY, None).await?;
        let req: crate::planb::DrillRequest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_request(format!("invalid drill: {e}")))?;
        let drill = app.drills.start(&live, req)?;
        crate::planb::record_drill(&live, &drill).await;
        // Ends it at its time (unless it was aborted or stopped first) and records the end.
        let (app2, d) = (app.clone(), drill.clone());
        tokio::spawn(async move {
            while d.state() == crate::planb::DrillState::Running
                && crate::bill::now_ms() < d.ends_at_ms
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if d.end(crate::planb::DrillState::Completed) {
                tracing::info!(drill = %d.id, "drill completed");
            }
            crate::planb::record_drill(&app2.live(), &d).await;
        });
        Ok((StatusCode::CREATED, drill.json()))
    })
    .await
}

pub(crate) fn no_drill(id: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        Side::Client,
        format!("no drill '{id}' on this instance"),
    )
}

/// `GET /admin/drills/{id}`: the drill's report, its counters beside the ledger's rows.
pub(crate) async fn admin_drill(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let d = app.drills.get(&id).ok_or_else(|| no_drill(&id))?;
        Ok((StatusCode::OK, crate::planb::drill_report(&live, &d).await?))
    })
    .await
}

/// `POST /admin/drills/{id}/stop` (body `{"by": "..."}`): end a drill early.
pub(crate) async fn admin_drill_stop(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let d = app.drills.get(&id).ok_or_else(|| no_drill(&id))?;
        let (bytes, _) = read_body(body, &headers, ADMIN_BODY, None).await?;
        let by = if bytes.is_empty() {
            "admin".to_owned()
        } else {
            string_field(&admin_body(&bytes)?, "by")?.to_owned()
        };
        d.end(crate::planb::DrillState::Stopped { by });
        crate::planb::record_drill(&live, &d).await;
        Ok((StatusCode::OK, d.json()))
    })
    .await
}

/// `GET /admin/dependency[?from&to&route&team&key]`: each vendor's share of requests and
/// spend, and the concentration (HHI), overall, per route, per team and per day.
pub(crate) async fn admin_dependency(
    State(app): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let q = usage_query_of(&uri, Some("vendor"))?;
        Ok((StatusCode::OK, crate::planb::dependency(&live, q).await?))
    })
    .await
}

/// `GET /admin/ledger/{id}`: every ledger row of a request, by the gateway's id or the
/// `x-request-id` the client saw (attempt 0 is the request, 1.. its upstream attempts).
pub(crate) async fn admin_ledger(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    admin_answer(&headers, async {
        let ledger = ledger_of(&live)?;
        ledger.flush().await?;
        let rows = ledger.store().rows_of(&id).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                Side::Gateway,
                format!("ledger store: {e}"),
            )
        })?;
        Ok((StatusCode::OK, serde_json::json!({ "rows": rows })))
    })
    .await
}

/// `GET /admin/openapi.json`: the admin API described (docs/admin-openapi.json, built in).
pub(crate) async fn admin_openapi(headers: HeaderMap) -> Response {
    plain(
        &headers,
        StatusCode::OK,
        "application/json",
        include_str!("../../../docs/admin-openapi.json").to_owned(),
    )
}

/// A usage query from the URL's `by` (unless `by` is fixed), `from`, `to`, `key`, `team` and
/// `route` parameters.
pub(crate) fn usage_query_of(
    uri: &Uri,
    by: Option<&str>,
) -> Result<relais_state::UsageQuery, Error> {
    let params = query_params(uri.query().unwrap_or(""));
    let get = |k: &str| params.get(k).map(String::as_str);
    crate::bill::usage_query(
        by.or(get("by")).unwrap_or("key"),
        get("from"),
        get("to"),
        [
            get("key").map(str::to_owned),
            get("team").map(str::to_owned),
            get("route").map(str::to_owned),
        ],
    )
}

pub(crate) fn ledger_of(live: &Live) -> Result<Arc<relais_governance::Ledger>, Error> {
    live.runtime.ledger.clone().ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            Side::Client,
            "no ledger: configure [governance]",
        )
    })
}

/// `a=1&b=x%20y` as a map (the last value of a repeated name wins).
pub(crate) fn query_params(query: &str) -> BTreeMap<String, String> {
    pub(crate) fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match std::str::from_utf8(&bytes[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

pub(crate) async fn admin_routes(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let live = app.live();
    let now = tokio::time::Instant::now();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let routes: serde_json::Map<String, serde_json::Value> = live
        .runtime
        .routes
        .iter()
        .map(|(name, r)| {
            let deployments: Vec<serde_json::Value> = r
                .deployments
                .iter()
                .map(|d| {
                    let h = d.health.snapshot(now, &d.limits, &r.latency);
                    serde_json::json!({
                        "id": d.id,
                        "provider": d.provider_name,
                        "model": d.model,
                        "weight": d.weight,
                        "state": h.state,
                        "unavailable_for_ms": h.unavailable_for.map(ms),
                        "latency_estimate_ms": h.latency_estimate.map(ms),
                        "inflight": h.inflight,
                        "consecutive_failures": h.consecutive_failures,
                        "window": {"successes": h.window_successes, "failures": h.window_failures},
                        "last_minute": {"requests": h.minute_requests, "tokens": h.minute_tokens},
                        "limits": {"rpm": d.limits.rpm, "tpm": d.limits.tpm, "max_concurrent": d.limits.concurrent},
                        "attempts": h.attempts,
                        "failures": h.failures,
                        "retries": h.retries,
                        "failovers": h.failovers,
                        "ejections": h.ejections,
                    })
                })
                .collect();
            let value = serde_json::json!({
                "kind": r.kind.as_str(),
                "strategy": r.strategy.as_str(),
                "deployments": deployments,
                "fallbacks": {
                    "context_window": r.fallbacks.context_window.as_ref().map(|f| f.name.as_str()),
                    "content_filter": r.fallbacks.content_filter.as_ref().map(|f| f.name.as_str()),
                },
            });
            (name.clone(), value)
        })
        .collect();
    let body = serde_json::json!({ "routes": routes }).to_string();
    plain(&headers, StatusCode::OK, "application/json", body)
}

#[cfg(test)]
mod tests {
    //! The admin API as a handler, without a socket (`Router::oneshot`).

    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;
    use tower::ServiceExt;

    const KEY: &str = "admin-key-0123456789abcdef";

    fn app(admin: bool) -> Router {
        let mut text = String::from(
            "[providers.up]\ntype = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\n[routes.r]\ndeployments = [{ provider = \"up\", model = \"m\" }]\n",
        );
        if admin {
            text.push_str(&format!("[admin]\nkey = \"{KEY}\"\n"));
        }
        let raw = crate::config::parse(&text, "t.toml").unwrap();
        let runtime = crate::config::build(&raw, &text, "t.toml").unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        crate::app::router(Arc::new(AppState::new(runtime, rx)))
    }

    async fn status(app: &Router, method: &str, path: &str, key: Option<&str>) -> u16 {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req.body(Body::from("{}")).unwrap();
        app.clone().oneshot(req).await.unwrap().status().as_u16()
    }

    /// Every path and method the OpenAPI document lists, with its parameters filled in, and the
    /// Plan B endpoints it does not list yet.
    fn documented() -> Vec<(String, String)> {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/admin-openapi.json")).unwrap();
        let mut out = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            let path = path.replace("{id}", "x").replace("{action}", "revoke");
            for method in ops.as_object().unwrap().keys() {
                if ["get", "post"].contains(&method.as_str()) {
                    out.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        for (method, path) in [
            ("GET", "/admin/readiness"),
            ("POST", "/admin/promote"),
            ("GET", "/admin/drills"),
            ("POST", "/admin/drills"),
            ("GET", "/admin/drills/x"),
            ("POST", "/admin/drills/x/stop"),
            ("GET", "/admin/dependency"),
        ] {
            out.push((method.to_owned(), path.to_owned()));
        }
        assert_eq!(out.len(), 17, "{out:?}");
        out
    }

    #[tokio::test]
    async fn issue18_no_admin_endpoint_answers_without_the_key() {
        let app = app(true);
        for (method, path) in documented() {
            assert_eq!(
                status(&app, &method, &path, None).await,
                401,
                "{method} {path}"
            );
            assert_eq!(
                status(&app, &method, &path, Some("wrong-key-0123456789abc")).await,
                401,
                "{method} {path}"
            );
        }
        assert_eq!(status(&app, "GET", "/admin/routes", Some(KEY)).await, 200);
        assert_eq!(
            status(&app, "GET", "/admin/openapi.json", Some(KEY)).await,
            200
        );
        // With the key, a call that needs governance says it is off, not unauthorized.
        assert_eq!(status(&app, "GET", "/admin/keys", Some(KEY)).await, 404);
    }

    #[tokio::test]
    async fn issue18_the_admin_api_is_off_without_a_key_in_the_config() {
        let app = app(false);
        for (method, path) in documented() {
            assert_eq!(
                status(&app, &method, &path, Some(KEY)).await,
                404,
                "{method} {path}"
            );
        }
    }
}
