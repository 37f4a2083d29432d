//! Keys and teams: list, create, revoke, rotate.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use relais_core::{Error, ErrorKind, Side};

use super::common::{Admin, admin_answer, admin_request, keyring, string_field, string_list};

pub(crate) fn limits_json(l: &relais_governance::Limits) -> serde_json::Value {
    let usd = |v: Option<u64>| v.map(relais_governance::usd_plain);
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

/// `GET /admin/teams`, `POST /admin/teams` (`{"name", "routes"?}`).
pub(crate) async fn admin_teams(
    Admin { live, headers, .. }: Admin,
    method: Method,
    body: Body,
) -> Response {
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
    Admin { live, headers, .. }: Admin,
    method: Method,
    body: Body,
) -> Response {
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
    Admin { live, headers, .. }: Admin,
    Path((id, action)): Path<(String, String)>,
) -> Response {
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
