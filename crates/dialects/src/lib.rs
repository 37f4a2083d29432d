//! Inbound API dialects: each turns a client's wire format into canonical types and renders
//! canonical responses, streams and errors back in that client's own shape.
//!
//! A dialect knows nothing of vendors or of HTTP servers; it maps bytes to `relais-core` types
//! and back, so the server crate stays free of every wire format.

pub mod anthropic;
pub mod gemini;
mod json;
pub mod openai;
pub mod responses;

pub use json::parse_json;
