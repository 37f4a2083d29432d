//! The OpenAI Chat Completions dialect: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`.
//!
//! Shapes follow OpenAI's published spec so the official SDKs work by changing only the base URL.

mod error;
mod request;
mod response;

pub(crate) use error::error_object;
pub use error::{error_body, error_status, stream_error_chunk};
pub(crate) use request::image_source;
pub use request::{parse_chat, parse_embeddings};
pub use response::{ChatStreamEncoder, ModelEntry, render_chat, render_embeddings, render_models};
