//! Plan B: readiness, promotion (with its dry-run forecast), drills, the dependency index.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use relais_core::{Error, ErrorKind, Side};

use super::audit::record;
use super::common::{Admin, admin_answer, admin_body, query_params, string_field, usage_query_of};
use crate::http::{ADMIN_BODY, read_body};

/// `GET /admin/readiness[?route=R]`: every shadowed backup's readiness (DESIGN.md §8).
pub(crate) async fn admin_readiness(Admin { live, headers, .. }: Admin, uri: Uri) -> Response {
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

/// `POST /admin/promote` with `{"route", "to", "dry_run"}` makes `to` the route's primary (a
/// dry run only forecasts), or with `{"route", "undo": true}` undoes it. `by` (optional) is
/// recorded with the promotion; the audit log has the caller whatever it says.
pub(crate) async fn admin_promote(admin: Admin, body: Body) -> Response {
    let Admin {
        app, live, headers, ..
    } = &admin;
    admin_answer(headers, async {
        let (bytes, _) = read_body(body, headers, ADMIN_BODY, None).await?;
        let body = admin_body(&bytes)?;
        let route = string_field(&body, "route")?;
        let flag = |k: &str| {
            body.get(k)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        let by = match body.get("by") {
            None => admin.who.name.clone(),
            Some(_) => string_field(&body, "by")?.to_owned(),
        };
        let before = serde_json::json!({"primary": app.promotions().get(route)});
        if flag("undo") {
            let done = crate::reload::promote(app, route, None, &by).await?;
            record(
                &admin,
                "route.promote_undo",
                route,
                Some(&before),
                Some(&done),
            )
            .await;
            return Ok((StatusCode::OK, done));
        }
        let to = string_field(&body, "to")?;
        let forecast = crate::planb::forecast(live, route, to).await?;
        if flag("dry_run") {
            return Ok((
                StatusCode::OK,
                serde_json::json!({"dry_run": true, "forecast": forecast}),
            ));
        }
        let mut done = crate::reload::promote(app, route, Some(to), &by).await?;
        record(&admin, "route.promote", route, Some(&before), Some(&done)).await;
        done["forecast"] = forecast;
        Ok((StatusCode::OK, done))
    })
    .await
}

/// `POST /admin/drills` starts a drill; `GET` lists this instance's drills.
pub(crate) async fn admin_drills(admin: Admin, method: Method, body: Body) -> Response {
    let Admin {
        app, live, headers, ..
    } = &admin;
    admin_answer(headers, async {
        if method == Method::GET {
            let list: Vec<_> = app.planb.drills.list().iter().map(|d| d.json()).collect();
            return Ok((StatusCode::OK, serde_json::json!({ "drills": list })));
        }
        let (bytes, _) = read_body(body, headers, ADMIN_BODY, None).await?;
        let req: crate::planb::DrillRequest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_request(format!("invalid drill: {e}")))?;
        let drill = app.planb.drills.start(live, req)?;
        crate::planb::record_drill(live, &drill).await;
        record(&admin, "drill.start", &drill.id, None, Some(&drill.json())).await;
        // Ends it at its time (unless it was aborted or stopped first) and records the end.
        let (app2, d) = (app.clone(), drill.clone());
        tokio::spawn(async move {
            while d.state() == crate::planb::DrillState::Running
                && crate::clock::now_ms() < d.ends_at_ms
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
    Admin {
        app, live, headers, ..
    }: Admin,
    Path(id): Path<String>,
) -> Response {
    admin_answer(&headers, async {
        let d = app.planb.drills.get(&id).ok_or_else(|| no_drill(&id))?;
        Ok((StatusCode::OK, crate::planb::drill_report(&live, &d).await?))
    })
    .await
}

/// `POST /admin/drills/{id}/stop` (body `{"by": "..."}`): end a drill early.
pub(crate) async fn admin_drill_stop(admin: Admin, Path(id): Path<String>, body: Body) -> Response {
    let Admin {
        app, live, headers, ..
    } = &admin;
    admin_answer(headers, async {
        let d = app.planb.drills.get(&id).ok_or_else(|| no_drill(&id))?;
        let (bytes, _) = read_body(body, headers, ADMIN_BODY, None).await?;
        let by = if bytes.is_empty() {
            admin.who.name.clone()
        } else {
            string_field(&admin_body(&bytes)?, "by")?.to_owned()
        };
        let before = d.json();
        d.end(crate::planb::DrillState::Stopped { by });
        crate::planb::record_drill(live, &d).await;
        let after = d.json();
        record(&admin, "drill.stop", &id, Some(&before), Some(&after)).await;
        Ok((StatusCode::OK, after))
    })
    .await
}

/// `GET /admin/dependency[?from&to&route&team&key]`: each vendor's share of requests and
/// spend, and the concentration (HHI), overall, per route, per team and per day.
pub(crate) async fn admin_dependency(Admin { live, headers, .. }: Admin, uri: Uri) -> Response {
    admin_answer(&headers, async {
        let q = usage_query_of(&uri, Some("vendor"))?;
        Ok((StatusCode::OK, crate::planb::dependency(&live, q).await?))
    })
    .await
}
