//! The admin API under `/admin/`: keys and teams, usage and the ledger, readiness, promotion,
//! drills, the dependency index, the routes' live state and the OpenAPI document. Its own
//! router, with the admin credential checked once in front of every endpoint
//! (`admin.key`, and a client certificate when `admin.require_client_cert` is set).
//!
//! Depends on live, state, reports, reload (promotions) and planb; never on the pipeline.

mod keys;
mod openapi;
mod planb;
mod routes;
mod usage;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use relais_core::{Error, ErrorKind, Side};

use crate::http::{ADMIN_BODY, Ctx, bearer, constant_time_eq, header_str, plain, read_body};
use crate::live::Live;
use crate::state::AppState;
use keys::{admin_key_action, admin_keys, admin_teams};
use openapi::admin_openapi;
use planb::{
    admin_dependency, admin_drill, admin_drill_stop, admin_drills, admin_promote, admin_readiness,
};
use routes::admin_routes;
use usage::{admin_ledger, admin_usage};

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
            serde_json::from_str(include_str!("../../../../docs/admin-openapi.json")).unwrap();
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
