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
