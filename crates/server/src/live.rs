//! The config in force: the validated [`Runtime`] and one metric series per (route, deployment),
//! built once per config. A reload builds a new [`Live`] and swaps it in; requests already
//! running keep the one they started with.
//!
//! Depends on config and metrics only; never on the pipeline, the API or Plan B.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use relais_core::{Error, ErrorKind, Side};
use relais_router::{Exhausted, FailedAttempt, Route, RouteKind};

use crate::caller::Caller;
use crate::config::Runtime;
use crate::http::{bearer, constant_time_eq, header_str};
use crate::metrics::Series;

/// A route with its metric series, one per deployment, built once per config.
pub struct RouteEntry {
    pub route: Arc<Route>,
    pub series: Vec<Arc<Series>>,
}

/// One config as the server runs it: the validated runtime and its routes' metric series.
pub struct Live {
    pub runtime: Runtime,
    pub entries: BTreeMap<String, RouteEntry>,
}

impl Live {
    /// Build the entries, taking over the series of `previous` for every (route, deployment)
    /// still configured, so counters run on across reloads.
    pub(crate) fn new(runtime: Runtime, previous: Option<&Live>) -> Self {
        let entries = runtime
            .routes
            .iter()
            .map(|(name, route)| {
                let old = previous.and_then(|p| p.entries.get(name));
                let series = route
                    .deployments
                    .iter()
                    .map(|d| {
                        old.and_then(|o| o.series.iter().find(|s| s.is_for(name, &d.id)))
                            .cloned()
                            .unwrap_or_else(|| {
                                Arc::new(Series::new(
                                    name,
                                    &d.id,
                                    &d.provider_name,
                                    d.health.clone(),
                                ))
                            })
                    })
                    .collect();
                (
                    name.clone(),
                    RouteEntry {
                        route: route.clone(),
                        series,
                    },
                )
            })
            .collect();
        Self { runtime, entries }
    }

    /// All metric series, for `/metrics`.
    pub fn series(&self) -> impl Iterator<Item = &Series> + Clone {
        self.entries
            .values()
            .flat_map(|e| e.series.iter().map(|s| &**s))
    }

    /// Output tokens reserved for a request that sets no `max_tokens`.
    pub(crate) fn default_max_tokens(&self) -> u64 {
        self.runtime
            .governance
            .as_ref()
            .map_or(4096, |g| g.default_max_tokens)
    }

    pub(crate) fn series_of(&self, route: &str, deployment: usize) -> Option<&Arc<Series>> {
        self.entries.get(route)?.series.get(deployment)
    }

    /// Count each failed attempt against the deployment that failed it.
    pub(crate) fn record_failed(&self, failed: &[FailedAttempt]) {
        for f in failed {
            if let Some(s) = self.series_of(&f.route, f.deployment) {
                s.failed_attempt(f.error.kind);
            }
        }
    }

    /// A request every deployment failed: count it, with its duration, against the last one
    /// tried.
    pub(crate) fn record_exhausted(&self, ex: &Exhausted, elapsed: std::time::Duration) {
        self.record_failed(&ex.failed);
        if let Some(last) = ex
            .failed
            .last()
            .and_then(|f| self.series_of(&f.route, f.deployment))
        {
            last.error(ex.error.kind);
            last.duration.observe(elapsed);
        }
    }

    /// The ledger, or the error an endpoint that needs it answers without one.
    pub(crate) fn ledger(&self) -> Result<Arc<relais_governance::Ledger>, Error> {
        self.runtime.ledger.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                Side::Client,
                "no ledger: configure [governance]",
            )
        })
    }

    /// Who is calling: a virtual key (checked against the key ring), a static key from the
    /// config (compared in constant time), or nobody when no key exists at all.
    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller<'_>, Error> {
        let presented = bearer(headers)
            .or_else(|| header_str(headers, "api-key"))
            .or_else(|| header_str(headers, "x-api-key"))
            .or_else(|| header_str(headers, "x-goog-api-key"));
        let ring = self.runtime.keyring.as_ref();
        if let (Some(ring), Some(p)) = (ring, presented) {
            if let Some(access) = ring.authenticate(p).await? {
                return Ok(Caller::Virtual(access));
            }
        }
        if self.runtime.keys.is_empty() && !ring.is_some_and(|r| r.has_active_keys()) {
            return Ok(Caller::Open);
        }
        let Some(presented) = presented else {
            return Err(Error::new(
                ErrorKind::Auth,
                Side::Client,
                "missing API key: send it as 'Authorization: Bearer <key>'",
            ));
        };
        // Compare against every key so the time taken does not depend on which one matched.
        let mut found = None;
        for k in &self.runtime.keys {
            if constant_time_eq(k.key.expose().as_bytes(), presented.as_bytes()) {
                found = Some(k);
            }
        }
        found
            .map(Caller::Static)
            .ok_or_else(|| Error::new(ErrorKind::Auth, Side::Client, "invalid API key"))
    }

    /// The route `name` of `kind`, if the caller may use it.
    pub(crate) fn entry(
        &self,
        caller: &Caller<'_>,
        name: &str,
        kind: RouteKind,
    ) -> Result<&RouteEntry, Error> {
        let entry = self
            .entries
            .get(name)
            .filter(|_| caller.allows(name))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    Side::Client,
                    format!("The model '{name}' does not exist or you do not have access to it."),
                )
                .with_param("model")
            })?;
        if entry.route.kind != kind {
            return Err(Error::bad_request(format!(
                "the model '{name}' serves {}, not {}",
                entry.route.kind.as_str(),
                kind.as_str()
            ))
            .with_param("model"));
        }
        Ok(entry)
    }
}
