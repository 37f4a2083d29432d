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
mod tests;
