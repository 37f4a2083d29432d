//! The dependency index: how much of a route's (a team's, everyone's) traffic and spend rests on
//! each vendor, and the Herfindahl-Hirschman index of those shares: the sum of the squared
//! percentage shares, 10,000 for a single vendor, 5,000 for two equal ones, 10,000/n for n
//! equal ones. Competition authorities read above 2,500 as highly concentrated.

use serde::Serialize;

/// One vendor's part of a total.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Share {
    pub vendor: String,
    pub requests: u64,
    pub cost_pusd: u64,
    /// Percent of requests, 0-100.
    pub request_share: f64,
    /// Percent of spend, 0-100 (0 for all when nothing was spent).
    pub spend_share: f64,
}

/// Shares of each vendor from (vendor, requests, cost) totals, largest request share first.
pub fn shares(totals: &[(String, u64, u64)]) -> Vec<Share> {
    let requests: u64 = totals.iter().map(|t| t.1).sum();
    let cost: u64 = totals.iter().map(|t| t.2).sum();
    let pct = |x: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            x as f64 * 100.0 / total as f64
        }
    };
    let mut out: Vec<Share> = totals
        .iter()
        .filter(|t| t.1 > 0 || t.2 > 0)
        .map(|(vendor, r, c)| Share {
            vendor: vendor.clone(),
            requests: *r,
            cost_pusd: *c,
            request_share: pct(*r, requests),
            spend_share: pct(*c, cost),
        })
        .collect();
    out.sort_by(|a, b| {
        b.request_share
            .total_cmp(&a.request_share)
            .then_with(|| a.vendor.cmp(&b.vendor))
    });
    out
}

/// The Herfindahl-Hirschman index of percentage shares (which should add up to 100), rounded
/// to a whole number; 0 when there is nothing.
pub fn hhi(percent_shares: impl IntoIterator<Item = f64>) -> u32 {
    let sum: f64 = percent_shares.into_iter().map(|s| s * s).sum();
    sum.round().clamp(0.0, 10_000.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &str, r: u64, c: u64) -> (String, u64, u64) {
        (v.to_owned(), r, c)
    }

    #[test]
    fn matches_hand_computations() {
        // One vendor: 100² = 10,000.
        let one = shares(&[t("openai", 40, 900)]);
        assert_eq!(hhi(one.iter().map(|s| s.request_share)), 10_000);
        assert_eq!(hhi(one.iter().map(|s| s.spend_share)), 10_000);
        // Two equal: 50² + 50² = 5,000.
        let two = shares(&[t("openai", 10, 5), t("anthropic", 10, 5)]);
        assert_eq!(hhi(two.iter().map(|s| s.request_share)), 5_000);
        // Four equal: 4 × 25² = 2,500.
        let four: Vec<_> = ["a", "b", "c", "d"].iter().map(|v| t(v, 3, 0)).collect();
        assert_eq!(hhi(shares(&four).iter().map(|s| s.request_share)), 2_500);
        // 70/20/10: 4,900 + 400 + 100 = 5,400; spend 50/50/0 (a free local model): 5,000.
        let mixed = shares(&[t("openai", 70, 5), t("anthropic", 20, 5), t("local", 10, 0)]);
        assert_eq!(hhi(mixed.iter().map(|s| s.request_share)), 5_400);
        assert_eq!(hhi(mixed.iter().map(|s| s.spend_share)), 5_000);
        assert_eq!(mixed[0].vendor, "openai");
        assert_eq!(mixed[2].spend_share, 0.0);
        // Nothing at all.
        assert_eq!(hhi(shares(&[]).iter().map(|s| s.request_share)), 0);
    }
}
