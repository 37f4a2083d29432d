//! The Gemini API dialect: `models/{model}:generateContent`, `:streamGenerateContent`
//! (`alt=sse`, or a streamed JSON array), `:countTokens` and the model list. The path's model
//! segment is the route name; errors have Google's shape.
//!
//! What has no canonical form is refused with a 400 naming it: hosted tools (Google Search,
//! code execution), more than one candidate, audio and other non-image, non-PDF inline data,
//! output modalities other than text. `safetySettings` and `cachedContent` travel only to a
//! Gemini upstream (the server refuses them on a route that has another).

mod request;
mod response;

pub use request::{GEMINI_ONLY, json_schema, parse_count_tokens, parse_generate};
pub use response::{
    GeminiStreamEncoder, error_body, error_status, model_entry, render_count_tokens,
    render_generate,
};
