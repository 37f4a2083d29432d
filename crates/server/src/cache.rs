//! The response cache: exact-match answers, so an identical request is not paid for twice.
//!
//! The key is a SHA-256 of the canonical request (after the client's dialect is read: route
//! name, messages, tools, response format, sampling parameters and the fields relais passes
//! through; never `user`, `metadata` or how the answer is delivered), of the route and of the
//! scope that may see the entry (the caller's team by default, or its key, or everyone on a
//! `shared` route). The same question asked through the OpenAI, Anthropic, Responses or Gemini
//! APIs is the same canonical request, so it finds the same entry, and the entry, a folded
//! [`ChatResponse`], is rendered in whichever dialect asks, as JSON or replayed as a stream.
//!
//! Admission (keys, limits) runs before the cache: a hit is a request like any other for RPM,
//! but it costs nothing upstream, is settled with zero tokens and zero cost (budgets are not
//! charged), and its ledger row has category `cache` with the tokens and the dollars it saved.
//! Identical misses in flight at once send one upstream request: the first leads and records
//! the answer, the others wait for it and are served from it (request coalescing). A client
//! opts out with `cache-control: no-store` (neither read nor written) or `no-cache` (not read;
//! the fresh answer replaces the entry). Requests sampled with `temperature > 0` and no `seed`
//! are not cached unless the route says `sampled = true`.
//!
//! A route may also match by meaning ([`semantic`]): on an exact miss, its last user message
//! is embedded and compared with earlier questions of the same context.

pub(crate) mod semantic;
pub(crate) mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use relais_core::{ChatRequest, ChatResponse, Collector, StreamEvent};
use relais_router::Deployment;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::caller::Caller;
use crate::clock::now_ms;
use crate::config::{CacheBackendSetting, CacheScopeSetting, RouteCacheConfig};

/// A cached answer and where it came from.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub response: ChatResponse,
    /// When it was stored (Unix ms): a hit's `age`.
    pub stored_ms: i64,
    /// What the answer cost when it was made (pico-USD): what each hit saves.
    pub cost_pusd: u64,
    pub deployment: String,
    pub provider: String,
    pub vendor: String,
    pub model: String,
}

/// A route's cache settings, validated.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub redis: bool,
    pub ttl: Duration,
    pub scope: CacheScopeSetting,
    pub sampled: bool,
    /// Hits are charged to budgets.
    pub charge: bool,
    pub semantic: Option<semantic::Semantic>,
}

impl From<&RouteCacheConfig> for Policy {
    fn from(c: &RouteCacheConfig) -> Self {
        Self {
            redis: c.backend == CacheBackendSetting::Redis,
            ttl: Duration::from_secs(c.ttl_secs.max(1)),
            scope: c.scope,
            sampled: c.sampled,
            charge: c.charge_budget,
            semantic: None,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub(crate) struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bypasses: AtomicU64,
    /// Hits served from another request's answer while it was in flight.
    pub coalesced: AtomicU64,
    /// What hits would have cost upstream, pico-USD.
    pub saved_pusd: AtomicU64,
    pub stored: AtomicU64,
    /// Store calls that failed (the request was answered without the cache).
    pub errors: AtomicU64,
    /// Hits found by meaning (counted in `hits` too).
    pub semantic_hits: AtomicU64,
    /// Questions embedded for the semantic cache, and embeddings that failed.
    pub embedded: AtomicU64,
    pub embed_errors: AtomicU64,
}

/// The stores and the requests in flight.
pub(crate) struct ResponseCache {
    pub memory: store::Memory,
    redis: Option<store::Redis>,
    max_entry: usize,
    /// Misses being answered, by key: followers wait on the leader's answer.
    flights: Mutex<HashMap<String, watch::Sender<Option<Arc<Entry>>>>>,
    /// The semantic indexes, by route (searched on a blocking thread: a large one takes
    /// milliseconds to scan).
    indexes: Arc<RwLock<HashMap<String, semantic::Index>>>,
    pub stats: Stats,
}

/// How long a follower waits for the leader's answer before asking upstream itself.
const FOLLOW_FOR: Duration = Duration::from_secs(120);
/// A replayed stream's text comes in pieces of this many bytes.
const PIECE: usize = 64;

/// What the cache did for a request.
pub(crate) enum Lookup {
    Hit(Arc<Entry>),
    /// Not found: the answer is recorded (and followers told) by the [`Recorder`].
    Miss(Box<Recorder>),
    /// Not read (`no-cache`: the fresh answer is still recorded; `no-store` and sampled
    /// requests: nothing is).
    Bypass(Option<Box<Recorder>>),
}

impl Lookup {
    /// `x-relais-cache: which` (`hit`, `miss` or `bypass`) and, on a hit, `age` (whole seconds
    /// since the entry was stored).
    pub(crate) fn headers(which: &'static str, age: Option<i64>, resp: &mut Response) {
        let h = resp.headers_mut();
        h.insert(
            HeaderName::from_static("x-relais-cache"),
            HeaderValue::from_static(which),
        );
        if let Some(a) = age {
            if let Ok(v) = HeaderValue::from_str(&a.max(0).to_string()) {
                h.insert(axum::http::header::AGE, v);
            }
        }
    }
}

impl ResponseCache {
    pub(crate) fn new(memory_bytes: usize, max_entry: usize, redis: Option<store::Redis>) -> Self {
        Self {
            memory: store::Memory::new(memory_bytes),
            redis,
            max_entry,
            flights: Mutex::default(),
            indexes: Arc::default(),
            stats: Stats::default(),
        }
    }

    async fn get(&self, key: &str, policy: &Policy) -> Option<Arc<Entry>> {
        if !policy.redis {
            return self.memory.get(key);
        }
        let redis = self.redis.as_ref()?;
        match redis.get(key).await {
            Ok(e) => e.map(Arc::new),
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "response cache: read failed; answering from upstream");
                None
            }
        }
    }

    /// Look `req` up for `caller` on `route`; with [`Lookup::Miss`] this request leads: its
    /// answer is recorded and given to identical requests that arrive meanwhile.
    pub(crate) async fn lookup(
        self: &Arc<Self>,
        policy: &Policy,
        caller: &Caller<'_>,
        headers: &HeaderMap,
        req: &ChatRequest,
        allow: Option<relais_router::Allow<'_>>,
    ) -> Lookup {
        let (no_store, no_cache) = directives(headers);
        let sampled = req.temperature.is_some_and(|t| t > 0.0) && req.seed.is_none();
        if no_store || (sampled && !policy.sampled) {
            self.stats.bypasses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Bypass(None);
        }
        let key = key(policy, caller, req);
        if no_cache {
            self.stats.bypasses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Bypass(Some(Box::new(self.recorder(key, policy, false))));
        }
        if let Some(e) = self.get(&key, policy).await {
            self.hit(&e);
            return Lookup::Hit(e);
        }
        let mut probe = None;
        if let Some(sem) = &policy.semantic {
            match self.by_meaning(sem, (policy, caller, allow), req).await {
                Ok(e) => {
                    self.stats.semantic_hits.fetch_add(1, Ordering::Relaxed);
                    self.hit(&e);
                    return Lookup::Hit(e);
                }
                Err(p) => probe = p,
            }
        }
        let follow = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(&key) {
                Some(tx) => Some(tx.subscribe()),
                None => {
                    flights.insert(key.clone(), watch::channel(None).0);
                    None
                }
            }
        };
        let Some(mut rx) = follow else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            let mut r = self.recorder(key, policy, true);
            r.probe = probe;
            return Lookup::Miss(Box::new(r));
        };
        // Another request is asking upstream for the same answer: wait for it. If it fails,
        // this one asks on its own.
        let waited = tokio::time::timeout(FOLLOW_FOR, rx.wait_for(Option::is_some)).await;
        if let Ok(Ok(v)) = waited {
            if let Some(e) = v.clone() {
                self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                self.hit(&e);
                return Lookup::Hit(e);
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let mut r = self.recorder(key, policy, false);
        r.probe = probe;
        Lookup::Miss(Box::new(r))
    }

    /// The semantic cache: an entry whose question means the same, or what this question's
    /// answer is indexed under once stored (nothing when it cannot be embedded).
    /// The question is embedded only where the request itself may go (`allow`: the caller's
    /// vendors and data classes, the classes the guardrails found).
    async fn by_meaning(
        &self,
        sem: &semantic::Semantic,
        (policy, caller, allow): (&Policy, &Caller<'_>, Option<relais_router::Allow<'_>>),
        req: &ChatRequest,
    ) -> Result<Arc<Entry>, Option<semantic::Probe>> {
        let question = semantic::question(req).ok_or(None)?;
        let n = req.messages.len().saturating_sub(1);
        let context = digest(&scope(policy, caller), req, &req.messages[..n], "semantic");
        self.stats.embedded.fetch_add(1, Ordering::Relaxed);
        let Some(vector) = sem.embed(question, allow).await else {
            self.stats.embed_errors.fetch_add(1, Ordering::Relaxed);
            return Err(None);
        };
        // Up to `max_entries` dot products (10,000 of 1,536 dimensions: milliseconds): off
        // the async workers.
        let (indexes, route, threshold) = (self.indexes.clone(), sem.route.clone(), sem.threshold);
        let (found, vector) = tokio::task::spawn_blocking(move || {
            let found = indexes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&route)
                .and_then(|ix| ix.nearest(&context, &vector, threshold));
            (found, vector)
        })
        .await
        .map_err(|_| None)?;
        if let Some((_, key)) = found {
            if let Some(e) = self.get(&key, policy).await {
                return Ok(e);
            }
            // Gone from the store (expired, evicted): gone from the index.
            if let Some(ix) = self
                .indexes
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(&sem.route)
            {
                ix.remove(&context, &key);
            }
        }
        Err(Some(semantic::Probe { context, vector }))
    }

    /// Questions in the semantic indexes, all routes together.
    pub(crate) fn indexed(&self) -> usize {
        self.indexes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(semantic::Index::len)
            .sum()
    }

    fn hit(&self, e: &Entry) {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .saved_pusd
            .fetch_add(e.cost_pusd, Ordering::Relaxed);
    }

    fn recorder(self: &Arc<Self>, key: String, policy: &Policy, leads: bool) -> Recorder {
        Recorder {
            cache: self.clone(),
            key,
            policy: policy.clone(),
            leads,
            collector: Some(Collector::new()),
            bytes: 0,
            probe: None,
        }
    }

    /// The leader is done (`entry`: its answer, or nothing): followers wake.
    fn land(&self, key: &str, entry: Option<Arc<Entry>>) {
        let tx = self
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        if let (Some(tx), Some(e)) = (tx, entry) {
            let _ = tx.send(Some(e));
        }
    }
}

/// `cache-control` request directives: (`no-store`, `no-cache`).
fn directives(headers: &HeaderMap) -> (bool, bool) {
    let mut out = (false, false);
    for v in headers.get_all(axum::http::header::CACHE_CONTROL) {
        for d in v.to_str().unwrap_or("").split(',') {
            match d.trim().to_ascii_lowercase().as_str() {
                "no-store" => out.0 = true,
                "no-cache" => out.1 = true,
                _ => {}
            }
        }
    }
    out
}

/// Who may see an entry: the caller's team (a static key is its own team), its key, or all.
fn scope(policy: &Policy, caller: &Caller<'_>) -> String {
    let payer = caller.payer();
    match policy.scope {
        CacheScopeSetting::Shared => "shared".to_owned(),
        CacheScopeSetting::Key => format!("key:{}", payer.key.unwrap_or("-")),
        CacheScopeSetting::Team => match (payer.team, payer.key) {
            (Some(t), _) => format!("team:{t}"),
            (None, Some(k)) => format!("key:{k}"),
            (None, None) => "open".to_owned(),
        },
    }
}

/// The entry's key: SHA-256 of the scope and the request in canonical form without what does
/// not change the answer (`user`, `metadata`, how the answer is delivered). The canonical types
/// print every field in a fixed order (maps are sorted), so their debug form is a stable
/// serialization; it is written straight into the digest, field by field, with no copy of
/// the request.
pub(crate) fn key(policy: &Policy, caller: &Caller<'_>, req: &ChatRequest) -> String {
    let d = digest(&scope(policy, caller), req, &req.messages, "exact");
    relais_core::hex(&d)
}

/// SHA-256 of `scope`, `what` the digest is for, and `req` with `messages` in place of its own
/// (the semantic cache's context leaves the question out).
fn digest(
    scope: &str,
    req: &ChatRequest,
    messages: &[relais_core::Message],
    what: &str,
) -> [u8; 32] {
    use std::fmt::Write as _;
    // Every field named: a field added to the request must be placed in or out of the key here.
    let ChatRequest {
        model,
        messages: _,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        max_output_tokens,
        temperature,
        top_p,
        top_k,
        stop,
        seed,
        reasoning,
        extra,
        extra_family,
        vendor_beta,
        stream: _,
        stream_include_usage: _,
        passthrough: _,
        user: _,
        metadata: _,
        responses_body: _,
    } = req;
    let family = if extra.is_empty() {
        None
    } else {
        *extra_family
    };
    let mut d = Digest(ring::digest::Context::new(&ring::digest::SHA256));
    let _ = write!(
        d,
        "{scope}\n{what}\n{model:?}|{messages:?}|{tools:?}|{tool_choice:?}|{parallel_tool_calls:?}|\
         {response_format:?}|{max_output_tokens:?}|{temperature:?}|{top_p:?}|{top_k:?}|{stop:?}|\
         {seed:?}|{reasoning:?}|{extra:?}|{family:?}|{vendor_beta:?}",
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(d.0.finish().as_ref());
    out
}

/// A digest that text is formatted into.
struct Digest(ring::digest::Context);

impl std::fmt::Write for Digest {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// Records a miss's answer as it passes, and stores it once the request ends well.
pub(crate) struct Recorder {
    cache: Arc<ResponseCache>,
    key: String,
    policy: Policy,
    /// Whether identical requests wait on this one.
    leads: bool,
    /// `None` once the answer is too large, or cannot be folded: served, not stored.
    collector: Option<Collector>,
    bytes: usize,
    /// The question's place in the semantic index, once the answer is stored.
    probe: Option<semantic::Probe>,
}

impl Recorder {
    /// An event on its way to the client.
    pub(crate) fn observe(&mut self, ev: &StreamEvent) {
        let Some(c) = &mut self.collector else {
            return;
        };
        self.bytes += match ev {
            StreamEvent::TextDelta(t) | StreamEvent::RefusalDelta(t) => t.len(),
            StreamEvent::ReasoningDelta { text, .. } => text.len(),
            StreamEvent::ToolCallDelta { arguments, .. } => arguments.len(),
            _ => 16,
        };
        if self.bytes > self.cache.max_entry || c.push(ev).is_err() {
            self.collector = None;
        }
    }

    /// The answer reached the client whole from `deployment`, costing `cost_pusd`: keep it
    /// and hand it to the followers.
    pub(crate) fn store(mut self: Box<Self>, deployment: &Deployment, cost_pusd: u64) {
        let Some(c) = self.collector.take() else {
            return;
        };
        let entry = Arc::new(Entry {
            response: c.finish(),
            stored_ms: now_ms(),
            cost_pusd,
            deployment: deployment.id.clone(),
            provider: deployment.provider_name.clone(),
            vendor: deployment.vendor.clone(),
            model: deployment.model.clone(),
        });
        let cache = self.cache.clone();
        cache.stats.stored.fetch_add(1, Ordering::Relaxed);
        if self.leads {
            self.leads = false;
            cache.land(&self.key, Some(entry.clone()));
        }
        if let (Some(probe), Some(sem)) = (self.probe.take(), &self.policy.semantic) {
            let (route, key, max) = (sem.route.clone(), self.key.clone(), sem.max_entries);
            let insert = move |ix: &mut HashMap<String, semantic::Index>| {
                ix.entry(route).or_default().insert(probe, &key, max);
            };
            match cache.indexes.try_write() {
                Ok(mut ix) => insert(&mut ix),
                // A search holds the index (milliseconds, on a blocking thread): wait there.
                Err(_) => {
                    let indexes = cache.indexes.clone();
                    tokio::task::spawn_blocking(move || {
                        insert(&mut indexes.write().unwrap_or_else(PoisonError::into_inner));
                    });
                }
            }
        }
        let (key, ttl) = (std::mem::take(&mut self.key), self.policy.ttl);
        if !self.policy.redis {
            let bytes = self.bytes + 512;
            cache.memory.put(key, entry, bytes, ttl);
            return;
        }
        // Off the request's path: the answer has left already.
        tokio::spawn(async move {
            if let Some(redis) = &cache.redis {
                if let Err(e) = redis.put(&key, &entry, ttl).await {
                    cache.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "response cache: write failed");
                }
            }
        });
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Ended without an answer to keep: the followers ask upstream themselves.
        if self.leads {
            self.cache.land(&self.key, None);
        }
    }
}

/// The events a hit replays.
pub(crate) fn replay(entry: &Entry) -> Vec<StreamEvent> {
    entry.response.replay(PIECE)
}
