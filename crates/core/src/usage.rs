use serde::{Deserialize, Serialize};

/// Token counts of one response, normalised once in each provider adapter.
///
/// Conventions (OpenAI's, because most clients speak them): `input_tokens` counts *every* prompt
/// token, cached or not, so `cache_read_tokens` and `cache_write_tokens` are subsets of it;
/// `output_tokens` counts every generated token, so `reasoning_tokens` is a subset of it.
/// An adapter whose vendor counts differently (Anthropic excludes cache reads from input, some
/// OpenAI-compatible servers exclude reasoning from output) converts here, never later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Merge a later usage report into this one. Vendors that report usage more than once per
    /// stream report running totals, so the larger figure of each kind wins.
    pub fn merge(&mut self, later: &Usage) {
        self.input_tokens = self.input_tokens.max(later.input_tokens);
        self.output_tokens = self.output_tokens.max(later.output_tokens);
        self.cache_read_tokens = self.cache_read_tokens.max(later.cache_read_tokens);
        self.cache_write_tokens = self.cache_write_tokens.max(later.cache_write_tokens);
        self.reasoning_tokens = self.reasoning_tokens.max(later.reasoning_tokens);
    }
}

/// What one upstream model charges, in pico-US-dollars (10⁻¹² USD) per token, which is the same
/// number as micro-dollars per million tokens: exact for every published price (they have at
/// most six decimals in USD per million tokens) and summed in integers, never floats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    /// Cached prompt tokens read; `input` when the vendor has no separate price.
    pub cache_read: Option<u64>,
    /// Prompt tokens written to a cache; `input` when the vendor has no separate price.
    pub cache_write: Option<u64>,
    /// Reasoning tokens; `output` when the vendor has no separate price.
    pub reasoning: Option<u64>,
}

impl Price {
    /// Parse a price in USD per million tokens ("0.15", "2.5", "3") exactly.
    pub fn parse_usd_per_mtok(text: &str) -> Result<u64, String> {
        let text = text.trim();
        let bad = || format!("'{text}' is not a price in USD per million tokens, like \"0.15\"");
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() && frac.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        if frac.len() > 6 {
            return Err(format!(
                "'{text}' has more than six decimals (the unit is 10⁻⁶ USD per million tokens)"
            ));
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let frac_units: u64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
        whole
            .checked_mul(1_000_000)
            .and_then(|w| w.checked_add(frac_units))
            .ok_or_else(bad)
    }

    /// Cost of `usage` in pico-USD. Cache and reasoning tokens are subsets of input and output
    /// (see [`Usage`]), so each token is priced once, at its own kind's price.
    pub fn cost(&self, usage: &Usage) -> u128 {
        let cache_read = usage.cache_read_tokens.min(usage.input_tokens);
        let cache_write = usage
            .cache_write_tokens
            .min(usage.input_tokens - cache_read);
        let plain_in = usage.input_tokens - cache_read - cache_write;
        let reasoning = usage.reasoning_tokens.min(usage.output_tokens);
        let plain_out = usage.output_tokens - reasoning;
        let p = |tokens: u64, price: u64| u128::from(tokens) * u128::from(price);
        p(plain_in, self.input)
            + p(cache_read, self.cache_read.unwrap_or(self.input))
            + p(cache_write, self.cache_write.unwrap_or(self.input))
            + p(plain_out, self.output)
            + p(reasoning, self.reasoning.unwrap_or(self.output))
    }
}

#[cfg(test)]
mod price_tests {
    use super::*;

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(Price::parse_usd_per_mtok("0.15"), Ok(150_000));
        assert_eq!(Price::parse_usd_per_mtok("2.5"), Ok(2_500_000));
        assert_eq!(Price::parse_usd_per_mtok("3"), Ok(3_000_000));
        assert_eq!(Price::parse_usd_per_mtok(".000001"), Ok(1));
        assert!(Price::parse_usd_per_mtok("0.0000001").is_err());
        assert!(Price::parse_usd_per_mtok("-1").is_err());
        assert!(Price::parse_usd_per_mtok("1e3").is_err());
        assert!(Price::parse_usd_per_mtok("").is_err());
        assert!(Price::parse_usd_per_mtok(".").is_err());
    }

    #[test]
    fn every_token_is_priced_once_at_its_kind() {
        let price = Price {
            input: 3_000_000,
            output: 15_000_000,
            cache_read: Some(300_000),
            cache_write: Some(3_750_000),
            reasoning: None,
        };
        let usage = Usage {
            input_tokens: 1000,
            output_tokens: 200,
            cache_read_tokens: 600,
            cache_write_tokens: 100,
            reasoning_tokens: 50,
        };
        let expected = 300 * 3_000_000 + 600 * 300_000 + 100 * 3_750_000 + 200 * 15_000_000;
        assert_eq!(price.cost(&usage), expected);
    }
}
