//! What a backup's shadow samples say about it: per axis a rate or mean with a 95% confidence
//! interval, the cost and latency deltas against the primary, capability gaps, whether its
//! limits can take the primary's peak, and a verdict with its reasons.

use serde::{Deserialize, Serialize};

use crate::compare::{Features, Scores};

/// When a backup counts as ready. Rates are fractions in [0, 1], ratios backup over primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Fewer samples than this: not ready (not enough evidence).
    pub min_samples: u64,
    /// Success rate below this: not ready.
    pub min_success: f64,
    /// Share of the backup's tool calls valid against the tool's schema below this: not ready.
    pub min_tool_args_valid: f64,
    /// Share of JSON answers that parse (and conform) below this: not ready.
    pub min_json_valid: f64,
    /// Below these: ready with caveats.
    pub min_tool_agreement: f64,
    pub min_finish_agreement: f64,
    pub min_similarity: f64,
    /// Refusals where the primary answered, as a share of samples: above this, a caveat.
    pub max_extra_refusals: f64,
    /// Median latency and cost, backup over primary: above these, a caveat.
    pub max_latency_ratio: f64,
    pub max_cost_ratio: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_samples: 30,
            min_success: 0.95,
            min_tool_args_valid: 0.95,
            min_json_valid: 0.95,
            min_tool_agreement: 0.8,
            min_finish_agreement: 0.8,
            min_similarity: 0.5,
            max_extra_refusals: 0.05,
            max_latency_ratio: 2.0,
            max_cost_ratio: 2.0,
        }
    }
}

/// What the backup can serve and carry, and the primary's peak load, from the config and the
/// ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackupFacts {
    pub tools: bool,
    pub images: bool,
    pub json_schema: bool,
    /// The backup's configured limits (`None`: none configured).
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// The route's busiest minute in the window: requests and tokens.
    pub peak_rpm: u64,
    pub peak_tpm: u64,
}

/// One axis: the observed value over the samples it applies to, with a 95% interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Axis {
    pub n: u64,
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ready,
    ReadyWithCaveats,
    NotReady,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::ReadyWithCaveats => "ready_with_caveats",
            Self::NotReady => "not_ready",
        }
    }
}

/// Percentiles of a latency, microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latencies {
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Readiness {
    pub samples: u64,
    pub success: Option<Axis>,
    pub finish_agreement: Option<Axis>,
    pub tool_agreement: Option<Axis>,
    pub tool_args_valid: Option<Axis>,
    pub json_valid: Option<Axis>,
    /// Backup refused where the primary did not.
    pub extra_refusals: Option<Axis>,
    pub similarity: Option<Axis>,
    /// Mean output length, backup over primary.
    pub length_ratio: Option<Axis>,
    /// Over samples where both answered.
    pub latency: Latencies,
    pub live_latency: Latencies,
    pub ttft: Latencies,
    pub live_ttft: Latencies,
    /// Median latency, backup over primary.
    pub latency_ratio: Option<f64>,
    /// Total cost over the same samples, backup over primary (`None` when the primary cost
    /// nothing).
    pub cost_ratio: Option<f64>,
    /// Mean cost per request, pico-USD.
    pub cost_per_request_pusd: u64,
    pub live_cost_per_request_pusd: u64,
    /// Features the primary's traffic used that the backup lacks.
    pub capability_gaps: Vec<String>,
    pub limits: BackupFacts,
    pub verdict: Verdict,
    /// Why it is not ready, or its caveats; empty when ready.
    pub reasons: Vec<String>,
    /// Facts worth knowing that do not change the verdict.
    pub notes: Vec<String>,
}

/// Wilson score interval for `k` successes in `n` trials (z = 1.96).
pub fn wilson(k: u64, n: u64) -> Axis {
    if n == 0 {
        return Axis {
            n,
            value: 0.0,
            low: 0.0,
            high: 1.0,
        };
    }
    let (k, nf) = (k as f64, n as f64);
    let z = 1.96f64;
    let p = k / nf;
    let denom = 1.0 + z * z / nf;
    let center = (p + z * z / (2.0 * nf)) / denom;
    let half = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / denom;
    Axis {
        n,
        value: p,
        low: (center - half).max(0.0),
        high: (center + half).min(1.0),
    }
}

/// Mean with a normal-approximation 95% interval.
pub fn mean_ci(xs: &[f64]) -> Option<Axis> {
    let n = xs.len();
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let mean = xs.iter().sum::<f64>() / nf;
    let half = if n > 1 {
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (nf - 1.0);
        1.96 * (var / nf).sqrt()
    } else {
        f64::INFINITY
    };
    Some(Axis {
        n: n as u64,
        value: mean,
        low: mean - half,
        high: mean + half,
    })
}

fn rate(samples: &[&Scores], f: impl Fn(&Scores) -> Option<bool>) -> Option<Axis> {
    let vals: Vec<bool> = samples.iter().filter_map(|s| f(s)).collect();
    let n = vals.len() as u64;
    (n > 0).then(|| wilson(vals.iter().filter(|v| **v).count() as u64, n))
}

fn percentiles(mut xs: Vec<u64>) -> Latencies {
    if xs.is_empty() {
        return Latencies::default();
    }
    xs.sort_unstable();
    let at = |q: f64| {
        let i = ((xs.len() as f64 * q).ceil() as usize).clamp(1, xs.len()) - 1;
        xs[i]
    };
    Latencies {
        p50_us: at(0.5),
        p95_us: at(0.95),
        p99_us: at(0.99),
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Assess a backup from its samples (newest last or in any order).
pub fn assess(samples: &[Scores], facts: &BackupFacts, t: &Thresholds) -> Readiness {
    let all: Vec<&Scores> = samples.iter().collect();
    // Quality axes compare answers, so they count only samples where the primary answered.
    let paired: Vec<&Scores> = all.iter().copied().filter(|s| s.live_ok).collect();
    let both: Vec<&Scores> = paired.iter().copied().filter(|s| s.ok).collect();
    let success = rate(&all, |s| Some(s.ok));
    let mut r = Readiness {
        samples: all.len() as u64,
        success: success.clone(),
        finish_agreement: rate(&both, |s| s.finish_agree),
        tool_agreement: rate(&both, |s| s.tools_agree),
        tool_args_valid: rate(&all, |s| s.tool_args_valid),
        json_valid: rate(&all, |s| s.json_valid),
        extra_refusals: rate(&both, |s| Some(s.refusal && !s.live_refusal)),
        similarity: mean_ci(&both.iter().filter_map(|s| s.similarity).collect::<Vec<_>>()),
        length_ratio: mean_ci(
            &both
                .iter()
                .filter_map(|s| s.length_ratio)
                .collect::<Vec<_>>(),
        ),
        latency: percentiles(both.iter().map(|s| s.latency_us).collect()),
        live_latency: percentiles(both.iter().map(|s| s.live_latency_us).collect()),
        ttft: percentiles(both.iter().filter_map(|s| s.ttft_us).collect()),
        live_ttft: percentiles(both.iter().filter_map(|s| s.live_ttft_us).collect()),
        latency_ratio: None,
        cost_ratio: None,
        cost_per_request_pusd: 0,
        live_cost_per_request_pusd: 0,
        capability_gaps: Vec::new(),
        limits: facts.clone(),
        verdict: Verdict::Ready,
        reasons: Vec::new(),
        notes: Vec::new(),
    };
    if r.live_latency.p50_us > 0 {
        r.latency_ratio = Some(r.latency.p50_us as f64 / r.live_latency.p50_us as f64);
    }
    let cost: u64 = both.iter().map(|s| s.cost_pusd).sum();
    let live_cost: u64 = both.iter().map(|s| s.live_cost_pusd).sum();
    if !both.is_empty() {
        r.cost_per_request_pusd = cost / both.len() as u64;
        r.live_cost_per_request_pusd = live_cost / both.len() as u64;
    }
    r.cost_ratio = (live_cost > 0).then(|| cost as f64 / live_cost as f64);

    let used = all.iter().fold(Features::default(), |acc, s| Features {
        tools: acc.tools || s.features.tools,
        images: acc.images || s.features.images,
        json_schema: acc.json_schema || s.features.json_schema,
        stream: acc.stream || s.features.stream,
    });
    for (needed, has, name) in [
        (used.tools, facts.tools, "tools"),
        (used.images, facts.images, "images"),
        (used.json_schema, facts.json_schema, "json_schema"),
    ] {
        if needed && !has {
            r.capability_gaps.push(name.to_owned());
        }
    }

    let mut blocking = Vec::new();
    let mut caveats = Vec::new();
    if r.samples < t.min_samples {
        blocking.push(format!(
            "only {} samples (at least {} needed)",
            r.samples, t.min_samples
        ));
    }
    for gap in &r.capability_gaps {
        blocking.push(format!(
            "the primary's traffic uses {gap}, which the backup lacks"
        ));
    }
    fn below(axis: &Option<Axis>, min: f64) -> Option<&Axis> {
        axis.as_ref().filter(|a| a.value < min)
    }
    if let Some(a) = below(&success, t.min_success) {
        blocking.push(format!(
            "success rate {} (below {})",
            pct(a.value),
            pct(t.min_success)
        ));
    }
    if let Some(a) = below(&r.tool_args_valid, t.min_tool_args_valid) {
        blocking.push(format!(
            "valid tool calls {} (below {})",
            pct(a.value),
            pct(t.min_tool_args_valid)
        ));
    }
    if let Some(a) = below(&r.json_valid, t.min_json_valid) {
        blocking.push(format!(
            "valid JSON {} (below {})",
            pct(a.value),
            pct(t.min_json_valid)
        ));
    }
    match facts.rpm {
        Some(rpm) if rpm < facts.peak_rpm => blocking.push(format!(
            "its limit of {rpm} requests/min is below the primary's peak of {}/min",
            facts.peak_rpm
        )),
        None => r
            .notes
            .push("no requests/min limit configured for the backup: headroom unknown".to_owned()),
        _ => {}
    }
    match facts.tpm {
        Some(tpm) if tpm < facts.peak_tpm => blocking.push(format!(
            "its limit of {tpm} tokens/min is below the primary's peak of {}/min",
            facts.peak_tpm
        )),
        None => r
            .notes
            .push("no tokens/min limit configured for the backup: headroom unknown".to_owned()),
        _ => {}
    }
    if let Some(a) = below(&r.tool_agreement, t.min_tool_agreement) {
        caveats.push(format!(
            "same tool calls as the primary in {} (below {})",
            pct(a.value),
            pct(t.min_tool_agreement)
        ));
    }
    if let Some(a) = below(&r.finish_agreement, t.min_finish_agreement) {
        caveats.push(format!(
            "same finish reason in {} (below {})",
            pct(a.value),
            pct(t.min_finish_agreement)
        ));
    }
    if let Some(a) = below(&r.similarity, t.min_similarity) {
        caveats.push(format!(
            "text similarity {:.2} (below {:.2})",
            a.value, t.min_similarity
        ));
    }
    if let Some(a) = r
        .extra_refusals
        .as_ref()
        .filter(|a| a.value > t.max_extra_refusals)
    {
        caveats.push(format!(
            "refuses where the primary answers in {} (above {})",
            pct(a.value),
            pct(t.max_extra_refusals)
        ));
    }
    if let Some(x) = r.latency_ratio.filter(|x| *x > t.max_latency_ratio) {
        caveats.push(format!(
            "median latency {x:.2}x the primary's (above {:.2}x)",
            t.max_latency_ratio
        ));
    }
    if let Some(x) = r.cost_ratio.filter(|x| *x > t.max_cost_ratio) {
        caveats.push(format!(
            "costs {x:.2}x the primary (above {:.2}x)",
            t.max_cost_ratio
        ));
    }
    r.verdict = if !blocking.is_empty() {
        Verdict::NotReady
    } else if !caveats.is_empty() {
        Verdict::ReadyWithCaveats
    } else {
        Verdict::Ready
    };
    r.reasons = blocking;
    r.reasons.extend(caveats);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn good() -> Scores {
        Scores {
            ok: true,
            live_ok: true,
            latency_us: 120_000,
            live_latency_us: 100_000,
            ttft_us: Some(50_000),
            live_ttft_us: Some(40_000),
            cost_pusd: 500,
            live_cost_pusd: 1_000,
            length_ratio: Some(1.1),
            finish_agree: Some(true),
            similarity: Some(0.8),
            ..Scores::default()
        }
    }

    fn facts() -> BackupFacts {
        BackupFacts {
            tools: true,
            images: true,
            json_schema: true,
            rpm: Some(1000),
            tpm: Some(1_000_000),
            peak_rpm: 100,
            peak_tpm: 50_000,
        }
    }

    #[test]
    fn wilson_matches_reference_values() {
        // 95% Wilson interval for 8/10: [0.4902, 0.9433] (standard tables).
        let a = wilson(8, 10);
        assert!(
            (a.low - 0.4902).abs() < 1e-3 && (a.high - 0.9433).abs() < 1e-3,
            "{a:?}"
        );
        let all = wilson(50, 50);
        assert_eq!(all.value, 1.0);
        assert!(all.low > 0.92 && all.high == 1.0);
    }

    #[test]
    fn healthy_backup_is_ready_and_flips_when_it_fails() {
        let t = Thresholds::default();
        let samples = vec![good(); 40];
        let r = assess(&samples, &facts(), &t);
        assert_eq!(r.verdict, Verdict::Ready, "{:?}", r.reasons);
        assert_eq!(r.cost_ratio, Some(0.5));
        assert_eq!(r.latency_ratio, Some(1.2));
        assert_eq!(r.cost_per_request_pusd, 500);
        // The backup starts failing: 10 of the last 50 samples are errors.
        let mut failing = samples.clone();
        failing.extend(std::iter::repeat_n(
            Scores {
                ok: false,
                error_class: Some("unavailable".into()),
                live_ok: true,
                ..Scores::default()
            },
            10,
        ));
        let r = assess(&failing, &facts(), &t);
        assert_eq!(r.verdict, Verdict::NotReady);
        assert!(
            r.reasons[0].contains("success rate 80.0%"),
            "{:?}",
            r.reasons
        );
        assert!(r.success.as_ref().unwrap().high < 0.95);
    }

    #[test]
    fn capability_gap_and_limits_block() {
        let with_tools = Scores {
            features: Features {
                tools: true,
                ..Features::default()
            },
            ..good()
        };
        let samples = vec![with_tools; 40];
        let no_tools = BackupFacts {
            tools: false,
            ..facts()
        };
        let r = assess(&samples, &no_tools, &Thresholds::default());
        assert_eq!(r.verdict, Verdict::NotReady);
        assert_eq!(r.capability_gaps, vec!["tools".to_owned()]);
        let small = BackupFacts {
            rpm: Some(50),
            ..facts()
        };
        let r = assess(&samples, &small, &Thresholds::default());
        assert_eq!(r.verdict, Verdict::NotReady);
        assert!(
            r.reasons.iter().any(|x| x.contains("50 requests/min")),
            "{:?}",
            r.reasons
        );
        let unknown = BackupFacts {
            rpm: None,
            tpm: None,
            ..facts()
        };
        let r = assess(&samples, &unknown, &Thresholds::default());
        assert_eq!(r.verdict, Verdict::Ready);
        assert_eq!(r.notes.len(), 2);
    }

    #[test]
    fn caveats_and_too_few_samples() {
        let slow = Scores {
            latency_us: 300_000,
            cost_pusd: 3_000,
            similarity: Some(0.2),
            ..good()
        };
        let r = assess(&vec![slow; 40], &facts(), &Thresholds::default());
        assert_eq!(r.verdict, Verdict::ReadyWithCaveats);
        assert_eq!(r.reasons.len(), 3, "{:?}", r.reasons);
        let r = assess(&vec![good(); 5], &facts(), &Thresholds::default());
        assert_eq!(r.verdict, Verdict::NotReady);
        assert!(r.reasons[0].contains("only 5 samples"));
    }
}
