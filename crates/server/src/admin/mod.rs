//! The admin API under `/admin/`: keys and teams, usage and the ledger, readiness, promotion,
//! drills, the dependency index, the routes' live state and the OpenAPI document. Its own
//! router, with the admin credential checked once in front of every endpoint
//! (`admin.key`, and a client certificate when `admin.require_client_cert` is set).
//!
//! Depends on live, state, reports, reload (promotions) and planb; never on the pipeline.

mod common;
mod keys;
mod openapi;
mod planb;
mod routes;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use relais_core::{Error, ErrorKind, Side};

use crate::http::{Ctx, bearer, constant_time_eq, header_str};
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

#[cfg(test)]
mod tests {
    //! The admin API as a handler, without a socket (`Router::oneshot`).

    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;
    use axum::body::Body;
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
