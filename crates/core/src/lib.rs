//! Canonical types of relais: the one vocabulary every dialect and every provider translates to.
//!
//! A client's API shape never leaves `relais-dialects`, a vendor's never leaves `relais-providers`;
//! the two meet only here. This crate does no I/O and must never depend on tokio, axum or reqwest,
//! so that the types stay cheap to build and test on their own.

mod env;
mod error;
mod event;
mod provider;
mod request;
mod secret;
pub mod trace;
mod usage;

pub use env::{EnvString, expand_env};
pub use error::{Error, ErrorKind, Retry, Side};
pub use event::{ChatResponse, Collector, FinishReason, RawChunk, StreamEvent, ToolCall};
pub use provider::{
    BoxFuture, Capabilities, EmbedRequest, EmbedResponse, EventStream, ModelInfo, Provider,
};
pub use request::{
    CacheControl, ChatRequest, ContentPart, ImageSource, Message, Reasoning, ResponseFormat, Role,
    Tool, ToolChoice,
};
pub use secret::{Secret, clip, hex, redact, redact_error};
pub use usage::{Price, Usage};
