//! What the guardrails' detectors cost per KB of prompt (run by `bench/guardrails`): every
//! detector on, over prompts of 2 KB and 16 KB of realistic prose, with and without sensitive
//! values in them. Prints one line per case.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "a benchmark's report"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use relais_governance::guard::{CustomDetector, Detectors};

const PROSE: &str = "The quarterly review covers the migration of the billing service to the new \
    cluster, the on-call rotation for December, and the open questions about data retention. \
    Customers reported slower invoices during the week of the 14th; the team traced it to a \
    missing index on the ledger table (version 2.4.1 fixed it, build 20241205.3). ";

const VALUES: &str = "Contact jane.doe@example.com or +33 6 12 34 56 78; refund card 4111 1111 1111 1111 \
    to IBAN DE89 3704 0044 0532 0130 00 (SSN 123-45-6789, host 10.0.12.7, key AKIAIOSFODNN7EXAMPLE). ";

fn prompt(kb: usize, with_values: bool) -> String {
    let mut s = String::new();
    while s.len() < kb * 1024 {
        s.push_str(PROSE);
        if with_values && s.len() % 3 == 0 {
            s.push_str(VALUES);
        }
    }
    if with_values {
        s.push_str(VALUES);
    }
    s
}

fn main() {
    let detectors = Detectors::new(&[CustomDetector {
        class: "employee_id".into(),
        pattern: r"\bEMP-\d{6}\b".into(),
    }])
    .unwrap();
    println!("| prompt | found | us per scan | us per KB | MB/s |");
    println!("|---|---|---|---|---|");
    for (kb, with_values) in [(2, false), (2, true), (16, false), (16, true)] {
        let text = prompt(kb, with_values);
        let found = detectors.scan(&text).len();
        // Warm, then measure for about a second.
        for _ in 0..50 {
            black_box(detectors.scan(black_box(&text)));
        }
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_secs(1) {
            black_box(detectors.scan(black_box(&text)));
            n += 1;
        }
        let per = start.elapsed().as_secs_f64() / f64::from(n);
        let kbs = text.len() as f64 / 1024.0;
        println!(
            "| {kbs:.1} KB, {} | {found} | {:.1} | {:.2} | {:.0} |",
            if with_values {
                "with values"
            } else {
                "prose only"
            },
            per * 1e6,
            per * 1e6 / kbs,
            text.len() as f64 / per / 1e6
        );
    }
}
