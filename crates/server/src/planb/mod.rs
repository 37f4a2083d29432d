//! Plan B in the gateway (DESIGN.md §8): shadow traffic, readiness and forecasts, the
//! dependency index and its alerts, and failover drills. Judgement lives in the pure
//! `relais-planb` crate; this module does the I/O around it.
//!
//! The pipeline knows Plan B only through [`PlanB::tap`] and the [`RequestTap`] it returns.
//! Promotions are installed by [`crate::reload`], the one way a config is swapped in.
//!
//! Depends on live, caller, bill and clock; never on the pipeline, the API or the admin API.

mod dependency;
mod drills;
mod readiness;
mod shadow;
mod tap;

use relais_core::Error;

pub use crate::config::{PlanBSettings, ShadowRoute};
pub(crate) use dependency::concentration_json;
pub use dependency::{Alerts, check_dependency, dependency};
pub use drills::{Drill, DrillRequest, DrillState, Drills, drill_report, record_drill};
pub(crate) use readiness::target;
pub use readiness::{BackupReadiness, forecast, readiness};
pub use shadow::{ShadowStats, Shadower};
pub(crate) use tap::{Admission, RequestTap, TapEnd, TapOutcome};

/// Plan B's state in a running server: kept across reloads.
pub struct PlanB {
    /// Shadow copies' queue and workers, sized at start.
    pub shadower: Shadower,
    /// The latest dependency check per route (see [`check_dependency`]).
    pub alerts: Alerts,
    /// Failover drills, running and recent.
    pub drills: Drills,
}

impl PlanB {
    /// Start the shadow workers. Needs a Tokio runtime.
    pub fn start(settings: &PlanBSettings) -> Self {
        Self {
            shadower: Shadower::start(settings.max_concurrent, settings.queue),
            alerts: Alerts::default(),
            drills: Drills::default(),
        }
    }
}

pub(crate) fn store_error(e: relais_state::StoreError) -> Error {
    Error::new(
        relais_core::ErrorKind::Unavailable,
        relais_core::Side::Gateway,
        format!("ledger store: {e}"),
    )
}
