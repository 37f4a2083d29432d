//! The Anthropic Messages dialect: `/v1/messages` and `/v1/messages/count_tokens`.
//!
//! Shapes follow Anthropic's published spec so the official SDKs work by changing only the base
//! URL. What relais models (text, images, PDFs, thinking with its signature, tool use and
//! results, cache breakpoints) maps to canonical parts; blocks it does not model travel as
//! opaque `anthropic` parts that only an Anthropic upstream may receive. Anything that could
//! neither be mapped nor kept is refused with a 400 naming the field, never dropped.

mod error;
mod request;
mod response;

pub use error::{error_body, error_status, stream_error_event};
pub use request::{parse_count_tokens, parse_messages};
pub use response::{MessagesStreamEncoder, render_count_tokens, render_message};
