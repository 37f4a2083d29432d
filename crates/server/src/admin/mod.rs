//! The admin API under `/admin/`: keys and teams, usage and the ledger, readiness, promotion,
//! drills, the dependency index, the routes' live state, the alerts firing and the OpenAPI
//! document. Its own
//! router, with the admin credential checked once in front of every endpoint
//! (`admin.key`, and a client certificate when `admin.require_client_cert` is set).
//!
//! Depends on live, state, reports, reload (promotions) and planb; never on the pipeline.

mod audit;
pub(crate) mod auth;
mod common;
mod keys;
mod openapi;
mod planb;
mod requests;
mod routes;
mod session;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use relais_core::{Error, ErrorKind, Side};

pub(crate) use audit::AuditMemory;
pub(crate) use auth::Sessions;

use crate::http::{Ctx, header_str};
use crate::listen::Peer;
use crate::state::AppState;
use audit::admin_audit;
use keys::{admin_key, admin_key_action, admin_keys, admin_team, admin_team_action, admin_teams};
use openapi::admin_openapi;
use planb::{
    admin_dependency, admin_drill, admin_drill_stop, admin_drills, admin_promote, admin_readiness,
};
use requests::{admin_requests, admin_series};
use routes::{admin_alerts, admin_routes};
use session::{admin_session, sign_in, sign_out};
use usage::{admin_ledger, admin_usage};

/// The admin API's routes. The caller is established once, by a layer in front of all of
/// them but sign-in and sign-out, before any handler runs or any body is read: no endpoint can
/// forget it. Every path is in the OpenAPI document (a test compares the two).
pub(crate) fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let guarded = Router::new()
        .route("/admin/session", get(admin_session))
        .route("/admin/routes", get(admin_routes))
        .route("/admin/alerts", get(admin_alerts))
        .route("/admin/teams", get(admin_teams).post(admin_teams))
        .route("/admin/teams/{id}", axum::routing::patch(admin_team))
        .route("/admin/teams/{id}/{action}", post(admin_team_action))
        .route("/admin/keys", get(admin_keys).post(admin_keys))
        .route("/admin/keys/{id}", axum::routing::patch(admin_key))
        .route("/admin/keys/{id}/{action}", post(admin_key_action))
        .route("/admin/usage", get(admin_usage))
        .route("/admin/requests", get(admin_requests))
        .route("/admin/series", get(admin_series))
        .route("/admin/audit", get(admin_audit))
        .route("/admin/readiness", get(admin_readiness))
        .route("/admin/promote", post(admin_promote))
        .route("/admin/drills", get(admin_drills).post(admin_drills))
        .route("/admin/drills/{id}", get(admin_drill))
        .route("/admin/drills/{id}/stop", post(admin_drill_stop))
        .route("/admin/dependency", get(admin_dependency))
        .route("/admin/ledger/{id}", get(admin_ledger))
        .route("/admin/openapi.json", get(admin_openapi))
        .route_layer(axum::middleware::from_fn_with_state(state, require_admin));
    Router::new()
        .route("/admin/sign-in", post(sign_in))
        .route("/admin/sign-out", post(sign_out))
        .merge(guarded)
}

/// The layer of [`router`]: the request goes on only from a known caller whose role allows
/// it, with the [`auth::Principal`] (and, for a session, its CSRF token) on the request.
async fn require_admin(
    State(app): State<Arc<AppState>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let live = app.live();
    let headers = request.headers();
    let address = request
        .extensions()
        .get::<Peer>()
        .map(|p| p.addr.ip().to_string());
    let checked = gate(&live.runtime.admin, headers).and_then(|()| {
        let (who, session) = app.sessions.principal(
            &live.runtime.admin,
            request.method(),
            headers,
            address,
            crate::clock::unix_secs(),
        )?;
        auth::allowed(who.role, request.method(), request.uri().path())?;
        Ok((who, session))
    });
    match checked {
        Ok((who, session)) => {
            request.extensions_mut().insert(who);
            if let Some(s) = session {
                request.extensions_mut().insert(session::Current(s));
            }
            next.run(request).await
        }
        Err(e) => Ctx::new(request.headers()).error(&e, Duration::ZERO),
    }
}

/// What comes before any credential: the admin API is on, and the client certificate is there
/// when one is required.
pub(super) fn gate(access: &crate::config::AdminAccess, headers: &HeaderMap) -> Result<(), Error> {
    if !access.is_on() {
        return Err(Error::new(
            ErrorKind::NotFound,
            Side::Client,
            "the admin API is off: set admin.key in the config",
        ));
    }
    if access.client_cert
        && header_str(headers, crate::listen::CLIENT_CERT_HEADER) != Some("verified")
    {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            Side::Client,
            "the admin API needs a client certificate signed by server.tls.client_ca_file",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
