//! [`AppState`]: what outlives a reload. The config in force ([`Live`]) is swapped whole by
//! [`crate::reload`]; the counters, the drain flag, Plan B's workers and drills, the promotions
//! in force and the decoding budget stay.
//!
//! Depends on live, metrics and planb; never on the pipeline or the API.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::{Semaphore, watch};

use crate::clock::unix_secs;
use crate::config::Runtime;
use crate::http::kib;
use crate::live::Live;
use crate::metrics::Global;
use crate::planb::PlanB;
use crate::responses::Conversations;

/// Shared state of the server.
pub struct AppState {
    live: RwLock<Arc<Live>>,
    pub global: Global,
    pub draining: AtomicBool,
    /// Flipped to true at the drain deadline: open streams end with an error event.
    pub abort_streams: watch::Receiver<bool>,
    pub started_at: u64,
    /// Shadow workers, dependency alerts and drills (sized at start; a reload keeps them).
    pub planb: PlanB,
    /// Promotions in force: route name to the deployment id made its primary. Written only by
    /// [`crate::reload`].
    pub(crate) promoted: Mutex<BTreeMap<String, String>>,
    /// Request bodies being read and decoded at once, in KiB (sized at start).
    pub(crate) decoding: Arc<Semaphore>,
    /// Stored Responses API responses (the memory part sized at start).
    pub(crate) responses: Arc<Conversations>,
    /// Console sessions signed out here, and the sign-in throttle.
    pub(crate) sessions: crate::admin::Sessions,
    /// The audit log when there is no governance store.
    pub(crate) audit: crate::admin::AuditMemory,
    /// Alerts firing, and the webhook's queue.
    pub(crate) alerting: crate::alerts::Alerting,
}

impl AppState {
    pub fn new(runtime: Runtime, abort_streams: watch::Receiver<bool>) -> Self {
        let planb = PlanB::start(&runtime.plan_b);
        let budget = runtime.max_decoding_bytes.max(runtime.max_body_bytes);
        let decoding = Arc::new(Semaphore::new(kib(budget) as usize));
        let responses = Arc::new(Conversations::new(&runtime.responses));
        Self {
            responses,
            sessions: crate::admin::Sessions::default(),
            audit: crate::admin::AuditMemory::default(),
            alerting: crate::alerts::Alerting::default(),
            decoding,
            planb,
            promoted: Mutex::default(),
            live: RwLock::new(Arc::new(Live::new(runtime, None))),
            global: Global::default(),
            draining: AtomicBool::new(false),
            abort_streams,
            started_at: unix_secs(),
        }
    }

    /// Promotions in force (route name to deployment id).
    pub fn promotions(&self) -> BTreeMap<String, String> {
        self.promoted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The config in force now. Cheap: a read lock held for one reference-count increment.
    pub fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Swap in a new config; requests in flight finish on the one they started with. Only
    /// [`crate::reload`] calls it.
    pub(crate) fn swap(&self, runtime: Runtime) {
        let mut slot = self.live.write().unwrap_or_else(PoisonError::into_inner);
        let next = Arc::new(Live::new(runtime, Some(&slot)));
        *slot = next;
    }
}
