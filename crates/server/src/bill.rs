//! What a request cost and who pays: its worst case for admission, its real cost for settlement,
//! and its ledger rows (one for the request as the client saw it, one per upstream attempt).
//!
//! Depends on live, caller and clock only.

use std::sync::Arc;
use std::time::Duration;

use relais_core::{Error, Usage};
use relais_governance::{Ledger, LedgerRow};
use relais_router::{Deployment, FailedAttempt, Route};

use crate::caller::Payer;
use crate::clock::{Instant, now_ms, us};
use crate::live::Live;

/// Cost of `usage` at a deployment's price, pico-USD; 0 when it has no price.
pub(crate) fn cost_at(d: &Deployment, usage: &Usage) -> u64 {
    d.price
        .map_or(0, |p| u64::try_from(p.cost(usage)).unwrap_or(u64::MAX))
}

/// The most a request of `input` prompt tokens and up to `output` generated ones can cost on
/// any deployment of `route` (the router may pick any of them, and fall back).
pub(crate) fn worst_cost(route: &Route, input: u64, output: u64) -> u64 {
    let usage = Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    };
    route
        .deployments
        .iter()
        .map(|d| cost_at(d, &usage))
        .max()
        .unwrap_or(0)
}

/// Where the request went: the route and deployment index that served it.
pub(crate) struct Served {
    pub route: Arc<Route>,
    pub deployment: usize,
    pub usage: Option<Usage>,
    pub ttft: Option<Duration>,
}

/// The ledger rows of one request, started when it is admitted and recorded once when it ends.
pub(crate) struct Bill {
    ledger: Arc<Ledger>,
    base: LedgerRow,
    start: Instant,
    recorded: bool,
}

/// A ledger row id: 12 hex digits of the Unix time in milliseconds, then 20 random ones (80
/// bits). Ids made later sort later, so the stores' primary-key index grows at its right edge
/// instead of taking each insert at a random place: measured at ~24,000 rows/s into SQLite,
/// random ids dirtied pages all over the index, and the commit and checkpoint of those pages
/// were the largest cost of the ledger.
pub(crate) fn row_id(at_ms: i64) -> String {
    let ms = u64::try_from(at_ms).unwrap_or(0) & 0xffff_ffff_ffff;
    format!("{ms:012x}{:020x}", fastrand::u128(..) >> 48)
}

/// Who and what a shadow copy bills.
pub(crate) struct ShadowBill<'a> {
    pub request_id: &'a str,
    pub at_ms: i64,
    pub payer: Payer<'a>,
    pub route: &'a str,
    pub stream: bool,
}

/// The ledger row of one shadow copy: category `shadow`, so it never counts against a key's
/// or team's budget and usage reports keep it apart from live traffic.
pub(crate) fn shadow_row(
    b: &ShadowBill<'_>,
    d: &Deployment,
    usage: Option<&Usage>,
    latency: Duration,
    ttft: Option<Duration>,
    error: Option<&Error>,
) -> LedgerRow {
    let mut row = LedgerRow {
        id: row_id(b.at_ms),
        attempt: 0,
        request_id: b.request_id.to_owned(),
        at_ms: b.at_ms,
        category: "shadow".to_owned(),
        key_id: b.payer.key.map(str::to_owned),
        team_id: b.payer.team.map(str::to_owned),
        route: b.route.to_owned(),
        stream: b.stream,
        latency_us: us(latency),
        ttft_us: ttft.map(us),
        status: error.map_or(200, |e| e.upstream_status.unwrap_or(0)),
        error_class: error.map(|e| e.kind.as_str().to_owned()),
        ..LedgerRow::default()
    };
    fill(&mut row, d);
    if let Some(u) = usage {
        set_usage(&mut row, u, cost_at(d, u));
    }
    row
}

fn fill(row: &mut LedgerRow, d: &Deployment) {
    row.deployment = Some(d.id.clone());
    row.provider = Some(d.provider_name.clone());
    row.vendor = Some(d.vendor.clone());
    row.model = Some(d.model.clone());
}

fn set_usage(row: &mut LedgerRow, u: &Usage, cost: u64) {
    row.input_tokens = u.input_tokens;
    row.output_tokens = u.output_tokens;
    row.cache_read_tokens = u.cache_read_tokens;
    row.cache_write_tokens = u.cache_write_tokens;
    row.reasoning_tokens = u.reasoning_tokens;
    row.cost_pusd = cost;
}

impl Bill {
    /// `None` when there is no ledger (no `[governance]`). Boxed: a request's settlement moves
    /// a few times before it ends, and its ledger row is the largest part of it.
    pub(crate) fn start(
        live: &Live,
        request_id: &str,
        payer: Payer<'_>,
        route: &str,
        stream: bool,
        start: Instant,
    ) -> Option<Box<Self>> {
        let ledger = live.runtime.ledger.clone()?;
        let at_ms = now_ms();
        Some(Box::new(Self {
            ledger,
            base: LedgerRow {
                id: row_id(at_ms),
                attempt: 0,
                request_id: request_id.to_owned(),
                at_ms,
                category: "live".to_owned(),
                key_id: payer.key.map(str::to_owned),
                team_id: payer.team.map(str::to_owned),
                route: route.to_owned(),
                stream,
                ..LedgerRow::default()
            },
            start,
            recorded: false,
        }))
    }

    /// The classes of data the request carried (declared and found), for its rows.
    pub(crate) fn set_data_classes(&mut self, classes: String) {
        self.base.data_classes = Some(classes);
    }

    /// Mark the request's rows as part of a failover drill.
    pub(crate) fn set_drill(&mut self, id: &str) {
        self.base.drill = Some(id.to_owned());
    }

    /// When the request arrived, Unix milliseconds.
    pub(crate) fn at_ms(&self) -> i64 {
        self.base.at_ms
    }

    /// A request answered from the response cache: one row, category `cache`, with the
    /// tokens and the cost (what was saved) of the answer it replayed, and the deployment that
    /// first made it.
    pub(crate) fn record_hit(
        &mut self,
        entry: &crate::cache::Entry,
        usage: Option<&Usage>,
        (status, charged): (u16, bool),
        elapsed: Duration,
    ) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let mut row = self.base.clone();
        // A charged hit's cost counts against budgets (the spend query reads it), and as a
        // saving like any hit.
        row.category = if charged { "cache_charged" } else { "cache" }.to_owned();
        row.deployment = Some(entry.deployment.clone());
        row.provider = Some(entry.provider.clone());
        row.vendor = Some(entry.vendor.clone());
        row.model = Some(entry.model.clone());
        if let Some(u) = usage {
            set_usage(&mut row, u, entry.cost_pusd);
        }
        row.latency_us = us(elapsed);
        row.status = status;
        if status == 499 {
            row.error_class = Some("canceled".to_owned());
        }
        self.ledger.record(&[row]);
    }

    /// Write the rows: each failed attempt, the attempt that served (if any), and the request
    /// with its totals, the status the client got and its error as (class, upstream status)
    /// (a stream the client closed is `canceled`, which no [`Error`] is). Only the first call
    /// writes.
    pub(crate) fn record(
        &mut self,
        live: &Live,
        failed: &[FailedAttempt],
        served: Option<&Served>,
        status: u16,
        error: Option<(&str, Option<u16>)>,
    ) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let mut rows = Vec::with_capacity(failed.len() + 2);
        let mut attempt = 0;
        for f in failed {
            attempt += 1;
            let mut row = self.base.clone();
            row.attempt = attempt;
            row.route.clone_from(&f.route);
            if let Some(d) = live
                .entries
                .get(&f.route)
                .and_then(|e| e.route.deployments.get(f.deployment))
            {
                fill(&mut row, d);
            }
            row.latency_us = us(f.elapsed);
            row.status = f.error.upstream_status.unwrap_or(0);
            row.error_class = Some(f.error.kind.as_str().to_owned());
            rows.push(row);
        }
        let mut total = self.base.clone();
        total.latency_us = us(self.start.elapsed());
        total.status = status;
        total.error_class = error.map(|(class, _)| class.to_owned());
        if let Some(s) = served {
            if let Some(d) = s.route.deployments.get(s.deployment) {
                attempt += 1;
                let mut row = self.base.clone();
                row.attempt = attempt;
                row.route.clone_from(&s.route.name);
                fill(&mut row, d);
                fill(&mut total, d);
                if let Some(u) = &s.usage {
                    let cost = cost_at(d, u);
                    set_usage(&mut row, u, cost);
                    set_usage(&mut total, u, cost);
                }
                row.ttft_us = s.ttft.map(us);
                total.ttft_us = row.ttft_us;
                row.latency_us = total.latency_us;
                // The upstream answered 200 and streamed; a later failure may carry its own.
                row.status = error.and_then(|(_, s)| s).unwrap_or(200);
                row.error_class.clone_from(&total.error_class);
                rows.push(row);
            }
        }
        rows.push(total);
        self.ledger.record(&rows);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::row_id;

    #[test]
    fn row_ids_sort_by_time_and_stay_unique() {
        let t = 1_764_633_600_000; // 2025-12-02
        let a = row_id(t);
        let b = row_id(t + 1);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(a < b, "{a} !< {b}");
        assert!(a.starts_with(&format!("{t:012x}")));
        let same: std::collections::HashSet<String> = (0..1000).map(|_| row_id(t)).collect();
        assert_eq!(same.len(), 1000);
    }
}
