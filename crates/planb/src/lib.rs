//! Plan B (DESIGN.md §8), the parts without I/O: how a backup's answer compares with the
//! primary's ([`compare`]), what many comparisons say about a backup ([`readiness`]), and how
//! concentrated a route's traffic is on one vendor ([`concentration`]). The gateway feeds them
//! shadow samples and ledger totals; everything here is plain functions over plain data, so
//! the scores are tested on constructed cases.

pub mod compare;
pub mod concentration;
pub mod readiness;
pub mod schema;

pub use compare::{Features, Outcome, Scores, compare};
pub use concentration::{Share, hhi, shares};
pub use readiness::{Axis, BackupFacts, Readiness, Thresholds, Verdict, assess};
