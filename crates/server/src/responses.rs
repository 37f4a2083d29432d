//! Responses API conversation state: stored responses, so a later turn continues one with
//! `previous_response_id` whatever vendor served it, and its creator can read, list or delete
//! it. Without `[governance]` they live in memory (bounded in bytes, the oldest evicted first).
//! With it they are written to its store (SQLite or PostgreSQL), where every instance finds them
//! until the retention period ends, and memory holds a response only until its write is done (so
//! a next turn sent the moment a stream ends finds it here; a delete made on another instance is
//! never hidden by a stale copy).
//!
//! Only the key (and team) that made a response may see it: any other caller gets the same 404
//! as for an id that never existed.
//!
//! Depends on live and caller; the pipeline sees only the [`crate::dialect::Turn`] it is
//! handed, which keeps a response through [`Save::into_keep`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use relais_core::{Error, ErrorKind, Side};
use relais_state::{LedgerStore, StoredResponse};
use serde_json::Value;

use crate::caller::Payer;
use crate::clock::now_ms as unix_ms;
use crate::config::ResponsesConfig;
use crate::live::Live;

/// The stored responses: memory in front, the governance store behind.
pub struct Conversations {
    memory: Mutex<Memory>,
    limit_bytes: usize,
    /// A WebSocket's own: memory only, never the store (so `store: false` turns chain on it).
    socket: bool,
}

/// Responses a WebSocket session keeps for its next turns (the newest).
const SOCKET_RESPONSES: usize = 4;

#[derive(Default)]
struct Memory {
    map: HashMap<String, Arc<StoredResponse>>,
    /// Ids, oldest first: the first to go when memory is full.
    order: VecDeque<String>,
    bytes: usize,
}

fn size(r: &StoredResponse) -> usize {
    r.items.len() + r.response.len() + r.route.len() + 128
}

/// The answer for a response this caller may not see or that does not exist.
pub(crate) fn not_found(id: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        Side::Client,
        format!("Response with id '{id}' not found."),
    )
}

fn owned_by(r: &StoredResponse, payer: Payer<'_>) -> bool {
    r.key_id.as_deref() == payer.key && r.team_id.as_deref() == payer.team
}

fn persistent(live: &Live) -> Option<Arc<dyn LedgerStore>> {
    live.runtime.ledger.as_ref().map(|l| l.store().clone())
}

fn store_error(e: &relais_state::StoreError) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        Side::Gateway,
        format!("the response store is unavailable: {e}"),
    )
}

impl Conversations {
    pub fn new(config: &ResponsesConfig) -> Self {
        let mib = usize::try_from(config.memory_mib).unwrap_or(usize::MAX);
        Self {
            memory: Mutex::default(),
            limit_bytes: mib.saturating_mul(1 << 20),
            socket: false,
        }
    }

    /// A WebSocket session's conversations: its responses, stored or not, for as long as the
    /// socket lives, so a turn continues the one before with `previous_response_id` even with
    /// `store: false` (as OpenAI's WebSocket mode allows).
    pub(crate) fn socket(config: &ResponsesConfig) -> Self {
        Self {
            socket: true,
            ..Self::new(config)
        }
    }

    fn store(&self, live: &Live) -> Option<Arc<dyn LedgerStore>> {
        if self.socket { None } else { persistent(live) }
    }

    fn remember(&self, r: Arc<StoredResponse>) {
        let n = size(&r);
        if n > self.limit_bytes {
            return;
        }
        let mut m = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        // A response stored again (a background response's answer) takes its old place's room.
        if let Some(replaced) = m.map.remove(&r.id) {
            m.bytes -= size(&replaced);
            m.order.retain(|i| *i != r.id);
        }
        // A socket continues from its latest responses: it keeps only a few (each holds the
        // whole conversation before it), so many open sockets cannot pile up old turns.
        let most = if self.socket {
            SOCKET_RESPONSES
        } else {
            usize::MAX
        };
        while m.bytes + n > self.limit_bytes || m.map.len() >= most {
            let Some(old) = m.order.pop_front() else {
                break;
            };
            if let Some(gone) = m.map.remove(&old) {
                m.bytes -= size(&gone);
            }
        }
        m.bytes += n;
        m.order.push_back(r.id.clone());
        m.map.insert(r.id.clone(), r);
    }

    fn forget(&self, id: &str) -> bool {
        let mut m = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(gone) = m.map.remove(id) else {
            return false;
        };
        m.bytes -= size(&gone);
        m.order.retain(|i| i != id);
        true
    }

    /// A response the caller made, unexpired.
    pub(crate) async fn get(
        &self,
        live: &Live,
        id: &str,
        payer: Payer<'_>,
    ) -> Result<Arc<StoredResponse>, Error> {
        let now = unix_ms();
        let in_memory = || {
            self.memory
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .map
                .get(id)
                .cloned()
        };
        let found = match self.store(live) {
            None => in_memory(),
            Some(store) => match store.get_response(id, now).await {
                Ok(Some(r)) => Some(Arc::new(r)),
                // Not written yet (or the store is down): this instance's copy, if any.
                Ok(None) => in_memory(),
                Err(e) => Some(in_memory().ok_or_else(|| store_error(&e))?),
            },
        };
        found
            .filter(|r| r.expires_ms > now && owned_by(r, payer))
            .ok_or_else(|| not_found(id))
    }

    /// Delete a response the caller made.
    pub(crate) async fn delete(
        &self,
        live: &Live,
        id: &str,
        payer: Payer<'_>,
    ) -> Result<(), Error> {
        self.get(live, id, payer).await?;
        let in_memory = self.forget(id);
        let in_store = match self.store(live) {
            Some(store) => store
                .delete_response(id)
                .await
                .map_err(|e| store_error(&e))?,
            None => false,
        };
        if in_memory || in_store {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    /// Delete the expired responses from memory and from the store.
    pub(crate) async fn purge(&self, live: &Live) {
        let now = unix_ms();
        {
            let mut m = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
            let expired: Vec<String> = m
                .map
                .values()
                .filter(|r| r.expires_ms <= now)
                .map(|r| r.id.clone())
                .collect();
            for id in expired {
                if let Some(gone) = m.map.remove(&id) {
                    m.bytes -= size(&gone);
                }
            }
            let Memory { map, order, .. } = &mut *m;
            order.retain(|i| map.contains_key(i));
        }
        if let Some(store) = persistent(live) {
            match store.purge_responses(now).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "expired responses deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot delete expired responses"),
            }
        }
    }
}

/// Keeps a finished response: in memory at once (so the next turn, on this instance, finds it
/// the moment the client has the answer), then in the store.
pub(crate) struct Save {
    pub(crate) conversations: Arc<Conversations>,
    pub(crate) store: Option<Arc<dyn LedgerStore>>,
    /// A WebSocket's conversations, which keep it too.
    pub(crate) socket: Option<Arc<Conversations>>,
    /// The record without its `response`, filled by [`Save::keep`].
    pub(crate) record: StoredResponse,
}

impl Save {
    pub(crate) fn new(
        conversations: Arc<Conversations>,
        live: &Live,
        record: StoredResponse,
    ) -> Self {
        Self {
            store: conversations.store(live),
            conversations,
            socket: None,
            record,
        }
    }

    /// Kept by a WebSocket's conversations as well.
    pub(crate) fn also_in(mut self, socket: Arc<Conversations>) -> Self {
        self.socket = Some(socket);
        self
    }

    /// As the pipeline takes it (see [`crate::dialect::Turn`]).
    pub(crate) fn into_keep(self) -> crate::dialect::Keep {
        Box::new(move |response| Box::pin(self.keep(response)))
    }

    /// Keep the response: in memory now, in the store by the returned future (which then
    /// drops the memory copy: the store is the truth for every instance).
    fn keep(self, response: &Value) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut record = self.record;
        record.response = response.to_string();
        let record = Arc::new(record);
        self.conversations.remember(record.clone());
        if let Some(socket) = &self.socket {
            socket.remember(record.clone());
        }
        let (store, conversations) = (self.store, self.conversations);
        async move {
            let Some(store) = store else {
                return;
            };
            match store.put_response(&record).await {
                Ok(()) => {
                    conversations.forget(&record.id);
                }
                Err(e) => {
                    tracing::warn!(response = %record.id, error = %e, "cannot store the response; it is kept in this instance's memory only");
                }
            }
        }
    }
}

/// A fresh response id: random, never the client's request id (which a client may reuse).
pub(crate) fn new_response_id() -> String {
    format!("resp_{:032x}", fastrand::u128(..))
}

/// The record of a turn about to be answered: the conversation's items so far (`history`,
/// then this turn's input, each given an id if it had none).
pub(crate) fn record(
    id: &str,
    route: &str,
    payer: Payer<'_>,
    retention_secs: u64,
    history: Vec<Value>,
    input: &[Value],
) -> StoredResponse {
    let at_ms = unix_ms();
    let items = relais_dialects::responses::conversation_items(history, input, id);
    let retention = i64::try_from(retention_secs.saturating_mul(1_000)).unwrap_or(i64::MAX);
    StoredResponse {
        id: id.to_owned(),
        at_ms,
        expires_ms: at_ms.saturating_add(retention),
        key_id: payer.key.map(str::to_owned),
        team_id: payer.team.map(str::to_owned),
        route: route.to_owned(),
        items: Value::Array(items).to_string(),
        response: String::new(),
    }
}

/// The conversation a stored response continues with: its items, then its output.
pub(crate) fn history(r: &StoredResponse) -> Result<Vec<Value>, Error> {
    relais_dialects::responses::continuation(&r.items, &r.response)
        .ok_or_else(|| Error::internal(format!("stored response '{}' cannot be read", r.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, key: Option<&str>, bytes: usize) -> Arc<StoredResponse> {
        Arc::new(StoredResponse {
            id: id.into(),
            expires_ms: i64::MAX,
            key_id: key.map(str::to_owned),
            items: "x".repeat(bytes),
            response: "{}".into(),
            ..StoredResponse::default()
        })
    }

    #[test]
    fn memory_is_bounded_and_evicts_the_oldest() {
        let c = Conversations {
            memory: Mutex::default(),
            limit_bytes: 3_000,
            socket: false,
        };
        for i in 0..5 {
            c.remember(stored(&format!("r{i}"), None, 800));
        }
        let m = c.memory.lock().unwrap();
        assert!(m.bytes <= 3_000);
        assert!(!m.map.contains_key("r0") && m.map.contains_key("r4"));
        assert_eq!(m.order.len(), m.map.len());
        drop(m);
        let socket = Conversations {
            memory: Mutex::default(),
            limit_bytes: usize::MAX,
            socket: true,
        };
        for i in 0..10 {
            socket.remember(stored(&format!("s{i}"), None, 10));
        }
        let m = socket.memory.lock().unwrap();
        assert_eq!(m.map.len(), SOCKET_RESPONSES);
        assert!(m.map.contains_key("s9") && !m.map.contains_key("s5"));
    }

    #[test]
    fn only_the_maker_owns_a_response() {
        let r = stored("r", Some("k1"), 1);
        let mine = Payer {
            key: Some("k1"),
            team: None,
        };
        let other = Payer {
            key: Some("k2"),
            team: None,
        };
        assert!(owned_by(&r, mine));
        assert!(!owned_by(&r, other));
        assert!(!owned_by(&r, Payer::default()));
    }

    #[test]
    fn a_record_gives_every_input_item_an_id_and_history_appends_the_output() {
        let mut r = record(
            "resp_abc",
            "route",
            Payer::default(),
            3_600,
            vec![serde_json::json!({"id": "old", "type": "message"})],
            &[serde_json::json!({"role": "user", "content": "hi"})],
        );
        r.response = serde_json::json!({"output": [{"id": "msg_out"}]}).to_string();
        let h = history(&r).unwrap();
        let ids: Vec<&str> = h.iter().map(|v| v["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["old", "msg_abc_in0", "msg_out"]);
        assert_eq!(r.expires_ms - r.at_ms, 3_600_000);
    }
}
