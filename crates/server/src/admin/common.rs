//! What the admin endpoints share: reading an admin body, answering in JSON, the key ring,
//! query parameters and usage queries. A leaf of the admin API.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use relais_core::{Error, ErrorKind, Side};

use super::auth::Principal;
use crate::config::Role;
pub(crate) use crate::http::query_params;
use crate::http::{ADMIN_BODY, Ctx, plain, read_body};
use crate::live::Live;
use crate::state::AppState;

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

/// What every admin handler starts from, taken from the request: the server's state, the config
/// in force and the headers (for an error's request id and the body's length). The credential
/// is not checked here: the router's layer checked it before any extractor ran.
pub(crate) struct Admin {
    pub app: Arc<AppState>,
    pub live: Arc<Live>,
    pub headers: HeaderMap,
    /// Who is calling (the layer established it).
    pub who: Principal,
}

impl Admin {
    /// The team a `team_admin` is confined to, as stored (`None` for the other roles).
    pub(crate) async fn own_team(&self) -> Result<Option<relais_state::Team>, Error> {
        match (&self.who.role, &self.who.team) {
            (Role::TeamAdmin, Some(team)) => Ok(Some(keyring(&self.live)?.team(team).await?)),
            _ => Ok(None),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        // Never missing behind the layer; were it, the caller would get the least rights.
        let who = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .unwrap_or(Principal {
                name: "unknown".to_owned(),
                role: Role::Viewer,
                team: None,
                address: None,
            });
        Ok(Self {
            app: app.clone(),
            live: app.live(),
            headers: parts.headers.clone(),
            who,
        })
    }
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

/// A usage query from the URL's `by` (unless `by` is fixed), `from`, `to`, `key`, `team` and
/// `route` parameters.
pub(crate) fn usage_query_of(
    uri: &Uri,
    by: Option<&str>,
) -> Result<relais_state::UsageQuery, Error> {
    let params = query_params(uri.query().unwrap_or(""));
    let get = |k: &str| params.get(k).map(String::as_str);
    crate::reports::usage_query(
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
