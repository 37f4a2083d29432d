//! Outbound providers: one folder per vendor wire format, each turning canonical requests into
//! canonical events. Nothing outside this crate names a vendor; a vendor's JSON never leaves its
//! folder. `registry.rs` is the one place that lists them.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
mod claude;
#[cfg(test)]
mod fuzz;
pub mod gemini;
mod http;
pub mod openai_compat;
mod redacting;
mod registry;
mod sse;

pub use http::{DEFAULT_MAX_STREAM_BYTES, HttpSettings, set_max_stream_bytes, shared_client};
pub use registry::{ProviderConfig, build_provider};
/// The shared upstream HTTP client every provider is built with.
pub use reqwest::Client as HttpClient;
pub use sse::{SseEvent, SseParser};

/// A client's vendor beta names (Anthropic's `anthropic-beta`) mean nothing to another vendor:
/// dropped, with a debug line saying so.
pub(crate) fn drop_vendor_beta(req: &relais_core::ChatRequest, provider: &str) {
    if let Some(beta) = &req.vendor_beta {
        tracing::debug!(%beta, provider, "vendor beta dropped: not this provider's API");
    }
}
