//! The client APIs the server speaks, behind one small enum so the chat pipeline (admit, route,
//! stream or collect, settle) is written once and only the wire shapes differ.

use axum::http::HeaderMap;
use relais_core::{ChatRequest, ChatResponse, Error, StreamEvent};
use relais_dialects::{anthropic, openai};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `/v1/chat/completions` (and Azure's deployment paths).
    OpenAi,
    /// `/v1/messages`.
    Anthropic,
}

impl Dialect {
    /// The request, with what the dialect's headers add to it (Anthropic's `anthropic-beta`).
    pub(crate) fn parse_chat(self, body: &[u8], headers: &HeaderMap) -> Result<ChatRequest, Error> {
        match self {
            Self::OpenAi => openai::parse_chat(body),
            Self::Anthropic => {
                let mut req = anthropic::parse_messages(body)?;
                req.vendor_beta =
                    crate::http::header_str(headers, "anthropic-beta").map(str::to_owned);
                Ok(req)
            }
        }
    }

    pub(crate) fn error_status(self, err: &Error) -> u16 {
        match self {
            Self::OpenAi => openai::error_status(err),
            Self::Anthropic => anthropic::error_status(err),
        }
    }

    pub(crate) fn error_body(self, err: &Error, request_id: &str) -> Vec<u8> {
        match self {
            Self::OpenAi => openai::error_body(err),
            Self::Anthropic => anthropic::error_body(err, request_id),
        }
    }

    /// The id of a response, in the shape the dialect's own vendor uses.
    pub(crate) fn response_id(self, request_id: &str) -> String {
        match self {
            Self::OpenAi => format!("chatcmpl-{request_id}"),
            Self::Anthropic => format!("msg_{request_id}"),
        }
    }

    pub(crate) fn render(
        self,
        resp: &ChatResponse,
        id: &str,
        model: &str,
        created: u64,
    ) -> Vec<u8> {
        match self {
            Self::OpenAi => openai::render_chat(resp, id, model, created),
            Self::Anthropic => anthropic::render_message(resp, id, model),
        }
    }

    pub(crate) fn stream_encoder(
        self,
        id: String,
        model: String,
        created: u64,
        include_usage: bool,
    ) -> Encoder {
        match self {
            Self::OpenAi => Encoder::OpenAi(openai::ChatStreamEncoder::new(
                id,
                model,
                created,
                include_usage,
            )),
            Self::Anthropic => Encoder::Anthropic(anthropic::MessagesStreamEncoder::new(id, model)),
        }
    }
}

/// Writes canonical events as one dialect's SSE frames.
pub(crate) enum Encoder {
    OpenAi(openai::ChatStreamEncoder),
    Anthropic(anthropic::MessagesStreamEncoder),
}

impl Encoder {
    pub(crate) fn event(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        match self {
            Self::OpenAi(e) => e.event(ev, out),
            Self::Anthropic(e) => e.event(ev, out),
        }
    }

    pub(crate) fn end(&mut self, out: &mut Vec<u8>) {
        match self {
            Self::OpenAi(e) => e.end(out),
            Self::Anthropic(e) => e.end(out),
        }
    }

    pub(crate) fn error(&mut self, err: &Error, out: &mut Vec<u8>) {
        match self {
            Self::OpenAi(e) => e.error(err, out),
            Self::Anthropic(e) => e.error(err, out),
        }
    }
}
