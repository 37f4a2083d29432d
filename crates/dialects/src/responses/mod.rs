//! The OpenAI Responses API dialect: `/v1/responses`. Requests become canonical chat requests
//! (input items to messages, function and custom tools to tools); answers are response objects
//! and the typed event stream (`response.created` ... `response.completed`, each with its
//! `sequence_number`). Errors have the OpenAI shape (see [`crate::openai::error_body`]).
//!
//! What has no canonical form is refused with a 400 naming it: hosted tools (the server refuses
//! them unless an upstream speaks Responses natively), `conversation`, `truncation: auto`,
//! logprobs, item references.

mod request;
mod response;

pub use request::{
    ResponsesRequest, continuation, conversation_items, native_body, parse_responses, with_history,
};
pub use response::{End, ResponseMeta, ResponsesStreamEncoder, output_items, render_response};
