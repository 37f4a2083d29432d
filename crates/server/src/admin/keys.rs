//! Keys and teams: list (with spend against budgets), create, edit, revoke, rotate, reset a
//! budget. Every change is written to the audit log with the object before and after, as
//! listed here (a key by its prefix, never its secret). A `team_admin` sees and changes only
//! its own team's keys, and never the team itself.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use relais_core::{Error, ErrorKind, Side};
use serde_json::{Map, Value};

use super::audit::record;
use super::common::{Admin, admin_answer, admin_request, keyring, string_field, string_list};

type Body_ = Map<String, Value>;

pub(crate) fn limits_json(l: &relais_governance::Limits) -> Value {
    let usd = |v: Option<u64>| v.map(relais_governance::usd_plain);
    serde_json::json!({"rpm": l.rpm, "tpm": l.tpm, "max_concurrent": l.max_concurrent,
        "budget_day": usd(l.budget_day), "budget_month": usd(l.budget_month),
        "budget_total": usd(l.budget_total), "budget_reset_at_ms": l.budget_reset_ms})
}

pub(crate) fn team_json(t: &relais_state::Team) -> Value {
    serde_json::json!({"id": t.id, "name": t.name, "routes": t.routes, "created_at": t.created_at,
        "limits": limits_json(&t.limits), "vendors": t.reach.vendors,
        "data_classes": t.reach.data_classes, "guardrails": t.reach.guardrails})
}

/// A key as listed: never its secret or hash, only the prefix that recognises it.
pub(crate) fn key_json(k: &relais_state::StoredKey) -> Value {
    serde_json::json!({
        "id": k.id, "name": k.name, "team_id": k.team_id, "prefix": k.prefix,
        "routes": k.routes, "created_at": k.created_at, "revoked_at": k.revoked_at,
        "expires_at": k.expires_at, "limits": limits_json(&k.limits), "vendors": k.reach.vendors,
        "data_classes": k.reach.data_classes, "guardrails": k.reach.guardrails,
    })
}

/// The fields of a key or team an admin body may set.
const LIMIT_FIELDS: [&str; 6] = [
    "rpm",
    "tpm",
    "max_concurrent",
    "budget_day",
    "budget_month",
    "budget_total",
];

/// Set the limits present in `body` on `l` (`null` removes one): `rpm`, `tpm`,
/// `max_concurrent` are positive integers; budgets are USD as a string ("12.50") or a number.
fn patch_limits(body: &Body_, l: &mut relais_governance::Limits) -> Result<(), Error> {
    for field in LIMIT_FIELDS {
        let Some(v) = body.get(field) else {
            continue;
        };
        let value = if v.is_null() {
            None
        } else if field.starts_with("budget") {
            let text = match v {
                Value::String(t) => t.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            Some(
                relais_governance::parse_usd(&text)
                    .map_err(|e| Error::bad_request(format!("{field}: {e}")).with_param(field))?,
            )
        } else {
            Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                Error::bad_request(format!("{field} must be a positive integer")).with_param(field)
            })?)
        };
        let slot = match field {
            "rpm" => &mut l.rpm,
            "tpm" => &mut l.tpm,
            "max_concurrent" => &mut l.max_concurrent,
            "budget_day" => &mut l.budget_day,
            "budget_month" => &mut l.budget_month,
            _ => &mut l.budget_total,
        };
        *slot = value;
    }
    Ok(())
}

/// The fields of a key's or team's reach an admin body may set.
const REACH_FIELDS: [&str; 4] = ["routes", "vendors", "data_classes", "guardrails"];

/// Set `routes`, `vendors`, `data_classes` and `guardrails` when present (`null`:
/// unrestricted); a guardrail policy names classes the gateway detects and known actions.
fn patch_lists(
    admin: &Admin,
    body: &Body_,
    routes: &mut Option<Vec<String>>,
    reach: &mut relais_governance::Reach,
) -> Result<(), Error> {
    for (field, slot) in [
        ("routes", routes),
        ("vendors", &mut reach.vendors),
        ("data_classes", &mut reach.data_classes),
    ] {
        if body.contains_key(field) {
            *slot = string_list(body, field)?;
        }
    }
    if let Some(v) = body.get("guardrails") {
        let bad = |why: String| Error::bad_request(why).with_param("guardrails");
        reach.guardrails = match v {
            Value::Null => None,
            Value::Object(policy) => {
                let mut out = std::collections::BTreeMap::new();
                for (class, action) in policy {
                    let action = action
                        .as_str()
                        .filter(|a| crate::config::GuardAction::parse(a).is_some())
                        .ok_or_else(|| {
                            bad(format!(
                                "guardrails.{class}: the action is one of allow, mask, route, block"
                            ))
                        })?;
                    if !admin.live.runtime.guardrails.knows(class) {
                        return Err(bad(format!(
                            "guardrails.{class}: not a class relais detects (built in: {}; or add it under [guardrails] custom)",
                            relais_governance::guard::CLASSES.join(", ")
                        )));
                    }
                    out.insert(class.clone(), action.to_owned());
                }
                Some(out)
            }
            _ => {
                return Err(bad(
                    "guardrails must be an object of class = action".to_owned()
                ));
            }
        };
    }
    Ok(())
}

/// `expires_at`: Unix seconds, or a UTC date or time (`2026-12-31`, `2026-12-31T18:00`,
/// `2026-12-31T18:00:00Z`); `null` never expires.
fn expiry_of(v: &Value) -> Result<Option<i64>, Error> {
    let bad = || {
        Error::bad_request(
            "expires_at must be Unix seconds or a UTC date or time (2026-12-31, 2026-12-31T18:00Z)",
        )
        .with_param("expires_at")
    };
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_i64().filter(|n| *n > 0).map(Some).ok_or_else(bad),
        Value::String(t) => {
            let t = t.trim().trim_end_matches('Z');
            let (date, time) = t.split_once('T').unwrap_or((t, "00:00"));
            let day_ms = relais_governance::parse_date(date).map_err(|_| bad())?;
            let mut hms = time.split(':').map(str::parse::<i64>);
            let (h, m, s) = (
                hms.next().and_then(Result::ok).ok_or_else(bad)?,
                hms.next().and_then(Result::ok).ok_or_else(bad)?,
                hms.next().transpose().map_err(|_| bad())?.unwrap_or(0),
            );
            if !(0..24).contains(&h) || !(0..60).contains(&m) || !(0..60).contains(&s) {
                return Err(bad());
            }
            Ok(Some(day_ms / 1000 + h * 3600 + m * 60 + s))
        }
        _ => Err(bad()),
    }
}

/// Refuse fields an admin body may not carry (a typo must not pass for a change).
fn only(body: &Body_, allowed: &[&str]) -> Result<(), Error> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Error::bad_request(format!(
            "unknown or unchangeable field '{k}' (allowed: {})",
            allowed.join(", ")
        ))
        .with_param(k.as_str())),
        None => Ok(()),
    }
}

fn check_routes(admin: &Admin, routes: &Option<Vec<String>>) -> Result<(), Error> {
    match routes
        .iter()
        .flatten()
        .find(|r| !admin.live.runtime.routes.contains_key(*r))
    {
        Some(unknown) => {
            Err(Error::bad_request(format!("no route named '{unknown}'")).with_param("routes"))
        }
        None => Ok(()),
    }
}

fn not_found(what: &str, id: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        Side::Client,
        format!("no {what} '{id}'"),
    )
}

/// Spend against budgets (USD, as the budgets count it: since the last reset) of each subject
/// in `items` that has one, in place, as `spend: {day, month, total}`.
async fn with_spend(
    admin: &Admin,
    items: &mut [Value],
    subjects: impl Iterator<Item = (String, relais_governance::Limits)>,
) -> Result<(), Error> {
    let Ok(ledger) = admin.live.ledger() else {
        return Ok(());
    };
    ledger.flush().await?;
    let now = i64::try_from(crate::clock::unix_secs()).unwrap_or(i64::MAX);
    for (item, (id, limits)) in items.iter_mut().zip(subjects) {
        if !limits.has_budget() {
            continue;
        }
        let s = relais_governance::spend_in_ledger(ledger.store().as_ref(), &id, &limits, now)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    Side::Gateway,
                    format!("ledger store: {e}"),
                )
            })?;
        let usd = relais_governance::usd_plain;
        item["spend"] =
            serde_json::json!({"day": usd(s.day), "month": usd(s.month), "total": usd(s.total)});
    }
    Ok(())
}

/// `GET /admin/teams`, `POST /admin/teams` (`{"name", "routes"?, limits, vendors,
/// data_classes}`).
pub(crate) async fn admin_teams(admin: Admin, method: Method, body: Body) -> Response {
    admin_answer(&admin.headers.clone(), async {
        let (ring, body) = admin_request(&admin.live, &admin.headers, &method, body).await?;
        let Some(body) = body else {
            let own = admin.own_team().await?;
            let teams: Vec<_> = ring
                .teams()
                .await?
                .into_iter()
                .filter(|t| own.as_ref().is_none_or(|o| o.id == t.id))
                .collect();
            let mut list: Vec<_> = teams.iter().map(team_json).collect();
            with_spend(
                &admin,
                &mut list,
                teams.iter().map(|t| (t.id.clone(), t.limits)),
            )
            .await?;
            return Ok((StatusCode::OK, serde_json::json!({ "teams": list })));
        };
        let mut fields = vec!["name"];
        fields.extend(REACH_FIELDS);
        fields.extend(LIMIT_FIELDS);
        only(&body, &fields)?;
        let (mut routes, mut reach, mut limits) = (None, Default::default(), Default::default());
        patch_lists(&admin, &body, &mut routes, &mut reach)?;
        patch_limits(&body, &mut limits)?;
        check_routes(&admin, &routes)?;
        let team = ring
            .create_team(string_field(&body, "name")?, routes, limits, reach)
            .await?;
        let after = team_json(&team);
        record(&admin, "team.create", &team.id, None, Some(&after)).await;
        Ok((StatusCode::CREATED, after))
    })
    .await
}

/// `PATCH /admin/teams/{id}`: name, routes, vendors, data classes, limits and budgets; a field
/// left out stays, `null` lifts a restriction.
pub(crate) async fn admin_team(admin: Admin, Path(id): Path<String>, body: Body) -> Response {
    admin_answer(&admin.headers.clone(), async {
        let (ring, body) = admin_request(&admin.live, &admin.headers, &Method::PATCH, body).await?;
        let body = body.unwrap_or_default();
        let mut fields = vec!["name"];
        fields.extend(REACH_FIELDS);
        fields.extend(LIMIT_FIELDS);
        only(&body, &fields)?;
        let old = ring.team(&id).await?;
        let mut team = old.clone();
        if body.contains_key("name") {
            team.name = string_field(&body, "name")?.to_owned();
        }
        patch_lists(&admin, &body, &mut team.routes, &mut team.reach)?;
        patch_limits(&body, &mut team.limits)?;
        check_routes(&admin, &team.routes)?;
        ring.update_team(&team).await?;
        let (before, after) = (team_json(&old), team_json(&team));
        record(&admin, "team.update", &team.id, Some(&before), Some(&after)).await;
        Ok((StatusCode::OK, after))
    })
    .await
}

/// `POST /admin/teams/{id}/reset-budget`: the team's spend before now no longer counts
/// against its budgets (on every instance within the key refresh interval).
pub(crate) async fn admin_team_action(
    admin: Admin,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    admin_answer(&admin.headers.clone(), async {
        let ring = keyring(&admin.live)?;
        if action != "reset-budget" {
            return Err(not_found("team action", &action));
        }
        let old = ring.team(&id).await?;
        let mut team = old.clone();
        team.limits.budget_reset_ms = Some(crate::clock::now_ms());
        ring.update_team(&team).await?;
        let (before, after) = (team_json(&old), team_json(&team));
        record(
            &admin,
            "team.reset_budget",
            &team.id,
            Some(&before),
            Some(&after),
        )
        .await;
        Ok((StatusCode::OK, after))
    })
    .await
}

/// `GET /admin/keys`, `POST /admin/keys` (`{"team", "name", "routes"?, limits, vendors,
/// data_classes, expires_at}`): the new key's secret is in this answer and nowhere else, ever.
pub(crate) async fn admin_keys(admin: Admin, method: Method, body: Body) -> Response {
    admin_answer(&admin.headers.clone(), async {
        let (ring, body) = admin_request(&admin.live, &admin.headers, &method, body).await?;
        let own = admin.own_team().await?;
        let Some(body) = body else {
            let keys: Vec<_> = ring
                .keys()
                .await?
                .into_iter()
                .filter(|k| own.as_ref().is_none_or(|o| o.id == k.team_id))
                .collect();
            let mut list: Vec<_> = keys.iter().map(key_json).collect();
            with_spend(
                &admin,
                &mut list,
                keys.iter().map(|k| (k.id.clone(), k.limits)),
            )
            .await?;
            return Ok((StatusCode::OK, serde_json::json!({ "keys": list })));
        };
        let mut fields = vec!["team", "name", "expires_at"];
        fields.extend(REACH_FIELDS);
        fields.extend(LIMIT_FIELDS);
        only(&body, &fields)?;
        let team = match (&own, body.get("team")) {
            (Some(o), None) => o.id.clone(),
            (_, _) => string_field(&body, "team")?.to_owned(),
        };
        if let Some(o) = &own {
            if team != o.id && team != o.name {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    Side::Client,
                    format!(
                        "a team_admin of '{}' creates keys in that team only",
                        o.name
                    ),
                )
                .with_param("team"));
            }
        }
        let mut grant = relais_governance::Grant::default();
        patch_lists(&admin, &body, &mut grant.routes, &mut grant.reach)?;
        patch_limits(&body, &mut grant.limits)?;
        let expires_at = body.get("expires_at").map_or(Ok(None), expiry_of)?;
        let issued = ring
            .create_key(&team, string_field(&body, "name")?, grant, expires_at)
            .await?;
        let listed = key_json(&issued.stored);
        record(&admin, "key.create", &issued.stored.id, None, Some(&listed)).await;
        let mut value = listed;
        value["key"] = issued.key.expose().into();
        Ok((StatusCode::CREATED, value))
    })
    .await
}

/// The key `id`, when the caller may manage it.
async fn managed_key(admin: &Admin, id: &str) -> Result<relais_state::StoredKey, Error> {
    let key = keyring(&admin.live)?.key(id).await?;
    match admin.own_team().await? {
        Some(own) if own.id != key.team_id => Err(not_found("key", id)),
        _ => Ok(key),
    }
}

/// `PATCH /admin/keys/{id}`: name, routes, vendors, data classes, limits, budgets and expiry,
/// held within the key's team; a field left out stays, `null` lifts a restriction.
pub(crate) async fn admin_key(admin: Admin, Path(id): Path<String>, body: Body) -> Response {
    admin_answer(&admin.headers.clone(), async {
        let (ring, body) = admin_request(&admin.live, &admin.headers, &Method::PATCH, body).await?;
        let body = body.unwrap_or_default();
        let mut fields = vec!["name", "expires_at"];
        fields.extend(REACH_FIELDS);
        fields.extend(LIMIT_FIELDS);
        only(&body, &fields)?;
        let old = managed_key(&admin, &id).await?;
        let mut key = old.clone();
        if body.contains_key("name") {
            key.name = string_field(&body, "name")?.to_owned();
        }
        patch_lists(&admin, &body, &mut key.routes, &mut key.reach)?;
        patch_limits(&body, &mut key.limits)?;
        if let Some(v) = body.get("expires_at") {
            key.expires_at = expiry_of(v)?;
        }
        check_routes(&admin, &key.routes)?;
        ring.update_key(&key).await?;
        let (before, after) = (key_json(&old), key_json(&key));
        record(&admin, "key.update", &key.id, Some(&before), Some(&after)).await;
        Ok((StatusCode::OK, after))
    })
    .await
}

/// `POST /admin/keys/{id}/revoke`, `.../rotate` (the new secret is in the answer; the old one
/// stops working) and `.../reset-budget` (spend before now no longer counts against the key's
/// budgets).
pub(crate) async fn admin_key_action(
    admin: Admin,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    admin_answer(&admin.headers.clone(), async {
        let ring = keyring(&admin.live)?;
        let old = managed_key(&admin, &id).await?;
        let before = key_json(&old);
        match action.as_str() {
            "revoke" => {
                ring.revoke_key(&id).await?;
                let after = key_json(&ring.key(&id).await?);
                record(&admin, "key.revoke", &id, Some(&before), Some(&after)).await;
                Ok((
                    StatusCode::OK,
                    serde_json::json!({"id": id, "revoked": true}),
                ))
            }
            "rotate" => {
                let issued = ring.rotate_key(&id).await?;
                let listed = key_json(&issued.stored);
                record(&admin, "key.rotate", &id, Some(&before), Some(&listed)).await;
                let mut value = listed;
                value["key"] = issued.key.expose().into();
                Ok((StatusCode::OK, value))
            }
            "reset-budget" => {
                let mut key = old;
                key.limits.budget_reset_ms = Some(crate::clock::now_ms());
                ring.update_key(&key).await?;
                let after = key_json(&key);
                record(&admin, "key.reset_budget", &id, Some(&before), Some(&after)).await;
                Ok((StatusCode::OK, after))
            }
            other => Err(not_found(
                "key action",
                &format!("{other}' (revoke, rotate, reset-budget)"),
            )),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_reads_seconds_dates_and_times() {
        assert_eq!(expiry_of(&Value::Null).unwrap(), None);
        assert_eq!(
            expiry_of(&serde_json::json!(1_800_000_000)).unwrap(),
            Some(1_800_000_000)
        );
        // 2026-11-23 is day 20,780.
        let day = 20_780 * 86_400;
        assert_eq!(expiry_of(&"2026-11-23".into()).unwrap(), Some(day));
        assert_eq!(
            expiry_of(&"2026-11-23T18:30".into()).unwrap(),
            Some(day + 66_600)
        );
        assert_eq!(
            expiry_of(&"2026-11-23T18:30:05Z".into()).unwrap(),
            Some(day + 66_605)
        );
        for bad in ["tomorrow", "2026-11-23T25:00", "2026-02-30", "2026-11-23T1"] {
            assert!(expiry_of(&bad.into()).is_err(), "{bad}");
        }
        assert!(expiry_of(&serde_json::json!(-5)).is_err());
    }

    #[test]
    fn patches_set_and_lift_limits() {
        let mut l = relais_governance::Limits {
            rpm: Some(5),
            budget_day: Some(1),
            ..Default::default()
        };
        let body: Body_ =
            serde_json::from_str(r#"{"rpm": null, "tpm": 100, "budget_day": "2.50"}"#).unwrap();
        patch_limits(&body, &mut l).unwrap();
        assert_eq!((l.rpm, l.tpm), (None, Some(100)));
        assert_eq!(l.budget_day, Some(2_500_000_000_000));
        let bad: Body_ = serde_json::from_str(r#"{"max_concurrent": 0}"#).unwrap();
        assert!(patch_limits(&bad, &mut l).is_err());
        assert!(only(&body, &["rpm"]).is_err());
    }
}
