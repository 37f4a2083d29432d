//! The admin API described.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use crate::http::plain;

/// `GET /admin/openapi.json`: the admin API described (docs/admin-openapi.json, built in).
pub(crate) async fn admin_openapi(headers: HeaderMap) -> Response {
    plain(
        &headers,
        StatusCode::OK,
        "application/json",
        include_str!("../../../../docs/admin-openapi.json").to_owned(),
    )
}
