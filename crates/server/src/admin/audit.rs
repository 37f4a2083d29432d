//! The audit log of admin changes: who (the credential's name and role), from where, what, on
//! what, the object before and after, when. Kept in the governance store (every instance
//! writes to and reads the same log), or in memory without one (the newest
//! [`MEMORY_ENTRIES`]). Objects are logged as the admin API shows them, so a key appears by its
//! prefix and never by its secret.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use axum::http::{StatusCode, Uri};
use axum::response::Response;
use relais_core::Error;
use relais_state::AuditEntry;

use super::common::{Admin, admin_answer, query_params};

/// Entries kept without a store.
const MEMORY_ENTRIES: usize = 1_000;
/// Entries one call returns at most.
const MAX_PAGE: u32 = 500;

/// The audit log without a store.
#[derive(Default)]
pub(crate) struct AuditMemory(Mutex<VecDeque<AuditEntry>>);

/// Record a change made by the caller of `admin`: `action` (`key.update`, ...) on `target`.
/// A log that cannot be written is itself logged (the change is made; refusing it now would
/// not undo it) and counted.
pub(crate) async fn record(
    admin: &Admin,
    action: &str,
    target: &str,
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
) {
    let mut id = [0u8; 12];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
    let entry = AuditEntry {
        id: format!(
            "aud_{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        at_ms: crate::clock::now_ms(),
        actor: admin.who.name.clone(),
        role: admin.who.role.as_str().to_owned(),
        address: admin.who.address.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        before: before.map(serde_json::Value::to_string),
        after: after.map(serde_json::Value::to_string),
    };
    tracing::info!(actor = %entry.actor, role = %entry.role, address = entry.address.as_deref().unwrap_or("-"),
        action, target, "admin change");
    match &admin.live.runtime.keyring {
        Some(ring) => {
            if let Err(e) = ring.audit(&entry).await {
                admin
                    .app
                    .global
                    .audit_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error = %e.message, action, target, "cannot write the audit log");
            }
        }
        None => {
            let mut log = admin
                .app
                .audit
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if log.len() >= MEMORY_ENTRIES {
                log.pop_front();
            }
            log.push_back(entry);
        }
    }
}

fn entry_json(e: &AuditEntry) -> serde_json::Value {
    let parse = |v: &Option<String>| {
        v.as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
    };
    serde_json::json!({"id": e.id, "at_ms": e.at_ms, "actor": e.actor, "role": e.role,
        "address": e.address, "action": e.action, "target": e.target,
        "before": parse(&e.before), "after": parse(&e.after)})
}

/// `GET /admin/audit?limit=100&before=<ms>`: the newest changes first.
pub(crate) async fn admin_audit(admin: Admin, uri: Uri) -> Response {
    admin_answer(&admin.headers, async {
        let params = query_params(uri.query().unwrap_or(""));
        let number = |k: &str| -> Result<Option<i64>, Error> {
            params
                .get(k)
                .map(|v| {
                    v.parse::<i64>().map_err(|_| {
                        Error::bad_request(format!("{k} must be an integer")).with_param(k)
                    })
                })
                .transpose()
        };
        let limit = number("limit")?.map_or(100, |n| {
            u32::try_from(n.clamp(1, i64::from(MAX_PAGE))).unwrap_or(MAX_PAGE)
        });
        let before = number("before")?;
        let entries = match &admin.live.runtime.keyring {
            Some(ring) => ring.audit_log(limit, before).await?,
            None => {
                let log = admin
                    .app
                    .audit
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                log.iter()
                    .rev()
                    .filter(|e| before.is_none_or(|b| e.at_ms < b))
                    .take(limit as usize)
                    .cloned()
                    .collect()
            }
        };
        let list: Vec<_> = entries.iter().map(entry_json).collect();
        Ok((StatusCode::OK, serde_json::json!({ "entries": list })))
    })
    .await
}
