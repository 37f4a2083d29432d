//! Usage from the ledger, one request's ledger rows.

use axum::extract::Path;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use relais_core::{Error, ErrorKind, Side};

use super::common::{Admin, admin_answer, usage_query_of};

/// `GET /admin/usage?by=key&from=2026-11-01&to=2026-11-23&key=..&team=..&route=..`: spend
/// and tokens from the ledger, grouped; every row recorded before the call is counted (the
/// write-ahead file is shipped first).
pub(crate) async fn admin_usage(admin: Admin, uri: Uri) -> Response {
    let Admin { live, headers, .. } = &admin;
    admin_answer(headers, async {
        let ledger = live.ledger()?;
        let mut q = usage_query_of(&uri, None)?;
        // A team_admin reads its own team's usage, whatever the URL says.
        if let Some(own) = admin.own_team().await? {
            q.team_id = Some(own.id);
        }
        ledger.flush().await?;
        let unreadable = |e: relais_state::StoreError| {
            Error::new(
                ErrorKind::Unavailable,
                Side::Gateway,
                format!("ledger store: {e}"),
            )
        };
        let lines = ledger.store().usage(&q).await.map_err(unreadable)?;
        let hits = ledger
            .store()
            .usage(&crate::reports::savings_query(&q))
            .await
            .map_err(unreadable)?;
        Ok((
            StatusCode::OK,
            crate::reports::usage_json(&q, &lines, &hits),
        ))
    })
    .await
}

/// `GET /admin/ledger/{id}`: every ledger row of a request, by the gateway's id or the
/// `x-request-id` the client saw (attempt 0 is the request, 1.. its upstream attempts).
pub(crate) async fn admin_ledger(admin: Admin, Path(id): Path<String>) -> Response {
    let Admin { live, headers, .. } = &admin;
    admin_answer(headers, async {
        let ledger = live.ledger()?;
        ledger.flush().await?;
        let mut rows = ledger.store().rows_of(&id).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                Side::Gateway,
                format!("ledger store: {e}"),
            )
        })?;
        if let Some(own) = admin.own_team().await? {
            rows.retain(|r| r.team_id.as_deref() == Some(own.id.as_str()));
        }
        Ok((StatusCode::OK, serde_json::json!({ "rows": rows })))
    })
    .await
}
