//! Console sign-in and sign-out, and `GET /admin/session` (who is signed in, the CSRF token
//! the console sends with each change).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::auth::{CSRF_HEADER, Principal, session_cookie};
use super::common::{admin_answer, admin_body, string_field};
use crate::http::{ADMIN_BODY, read_body};
use crate::listen::Peer;
use crate::state::AppState;

/// The session of a request made with the console's cookie: its CSRF token and expiry.
#[derive(Debug, Clone)]
pub(crate) struct Current(pub (String, u64));

fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `POST /admin/sign-in` (`{"key": "<an admin credential>"}`): a session cookie (HttpOnly,
/// SameSite=Strict, Secure over TLS) and, in the answer, who signed in and the CSRF token.
pub(crate) async fn sign_in(
    State(app): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = app.live();
    let tls = peer.is_some_and(|Extension(p)| p.tls);
    let mut cookie = None;
    let resp = admin_answer(&headers, async {
        super::gate(&live.runtime.admin, &headers)?;
        let (bytes, _) = read_body(body, &headers, ADMIN_BODY, None).await?;
        let body = admin_body(&bytes)?;
        let now = crate::clock::unix_secs();
        let (value, csrf, who) =
            app.sessions
                .sign_in(&live.runtime.admin, string_field(&body, "key")?, now)?;
        cookie = Some(session_cookie(&value, live.runtime.admin.session, tls));
        let expires = now + live.runtime.admin.session.as_secs();
        tracing::info!(name = %who.name, role = who.role.as_str(), "console sign-in");
        Ok((
            StatusCode::OK,
            serde_json::json!({"name": who.name, "role": who.role.as_str(), "team": who.team,
                "csrf": csrf, "csrf_header": CSRF_HEADER, "expires_at": expires}),
        ))
    })
    .await;
    match cookie {
        Some(c) => with_cookie(resp, &c),
        None => resp,
    }
}

/// `POST /admin/sign-out`: the browser forgets the cookie, and this instance refuses it.
pub(crate) async fn sign_out(
    State(app): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let live = app.live();
    app.sessions
        .sign_out(&live.runtime.admin, &headers, crate::clock::unix_secs());
    let tls = peer.is_some_and(|Extension(p)| p.tls);
    let resp = crate::http::plain(
        &headers,
        StatusCode::OK,
        "application/json",
        "{\"signed_out\":true}".to_owned(),
    );
    with_cookie(resp, &session_cookie("", std::time::Duration::ZERO, tls))
}

/// `GET /admin/session`: who the caller is, and for a console session its CSRF token.
pub(crate) async fn admin_session(
    State(app): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    current: Option<Extension<Current>>,
    headers: HeaderMap,
) -> Response {
    admin_answer(&headers, async {
        let live = app.live();
        // What the console can show: pages over the ledger need `[governance]`.
        let features = serde_json::json!({"governance": live.runtime.keyring.is_some(),
            "shadow": !live.runtime.shadows.is_empty()});
        let mut value = serde_json::json!({"name": who.name, "role": who.role.as_str(),
            "team": who.team, "features": features});
        if let Some(Extension(Current((csrf, expires)))) = current {
            value["csrf"] = csrf.into();
            value["csrf_header"] = CSRF_HEADER.into();
            value["expires_at"] = expires.into();
        }
        Ok((StatusCode::OK, value))
    })
    .await
}
