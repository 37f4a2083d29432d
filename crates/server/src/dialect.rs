//! The client APIs the server speaks, behind one small enum so the chat pipeline (admit, route,
//! stream or collect, settle) is written once and only the wire shapes differ.

use axum::http::HeaderMap;
use relais_core::{BoxFuture, ChatRequest, ChatResponse, Error, StreamEvent};
use relais_dialects::{anthropic, gemini, openai, responses};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `/v1/chat/completions` (and Azure's deployment paths).
    OpenAi,
    /// `/v1/messages`.
    Anthropic,
    /// `/v1/responses`: OpenAI's errors; answers through a [`Turn`].
    Responses,
    /// `/v1beta/models/{model}:generateContent` and its stream, over SSE or as a JSON array.
    Gemini { sse: bool },
}

impl Dialect {
    /// The request, with what the dialect's headers add to it (Anthropic's `anthropic-beta`).
    pub(crate) fn parse_chat(self, body: &[u8], headers: &HeaderMap) -> Result<ChatRequest, Error> {
        match self {
            Self::OpenAi => openai::parse_chat(body),
            Self::Responses => responses::parse_responses(body).map(|r| r.chat),
            // The model and the streaming come from the path: the handler parses it.
            Self::Gemini { .. } => gemini::parse_generate(body, "", false),
            Self::Anthropic => {
                let mut req = anthropic::parse_messages(body)?;
                req.vendor_beta = headers
                    .get("anthropic-beta")
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|b| !b.is_empty())
                    .map(str::to_owned);
                Ok(req)
            }
        }
    }

    pub(crate) fn error_status(self, err: &Error) -> u16 {
        match self {
            Self::OpenAi | Self::Responses => openai::error_status(err),
            Self::Gemini { .. } => gemini::error_status(err),
            Self::Anthropic => anthropic::error_status(err),
        }
    }

    pub(crate) fn error_body(self, err: &Error, request_id: &str) -> Vec<u8> {
        match self {
            Self::OpenAi | Self::Responses => openai::error_body(err),
            Self::Gemini { .. } => gemini::error_body(err),
            Self::Anthropic => anthropic::error_body(err, request_id),
        }
    }

    /// The id of a response, in the shape the dialect's own vendor uses.
    pub(crate) fn response_id(self, request_id: &str) -> String {
        match self {
            Self::OpenAi => format!("chatcmpl-{request_id}"),
            Self::Anthropic => format!("msg_{request_id}"),
            Self::Responses => format!("resp_{request_id}"),
            Self::Gemini { .. } => request_id.to_owned(),
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
            Self::Gemini { .. } => gemini::render_generate(resp, model, id),
            Self::Responses => {
                let meta = plain_meta(id, model, created);
                responses::render_response(&meta, resp)
                    .to_string()
                    .into_bytes()
            }
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
            Self::Gemini { sse } => {
                Encoder::Gemini(gemini::GeminiStreamEncoder::new(model, id, sse))
            }
            Self::Responses => Turn {
                meta: plain_meta(&id, &model, created),
                keep: None,
            }
            .encoder(),
        }
    }
}

/// A response object's identity when the handler gave no [`Turn`].
fn plain_meta(id: &str, model: &str, created: u64) -> responses::ResponseMeta {
    responses::ResponseMeta {
        id: id.to_owned(),
        model: model.to_owned(),
        created_at: created,
        ..responses::ResponseMeta::default()
    }
}

/// Keeps a finished Responses API response, given its object: at once where the next turn looks
/// first, and the returned future does the rest (the store write). See `crate::responses`.
pub(crate) type Keep = Box<dyn FnOnce(&serde_json::Value) -> BoxFuture<'static, ()> + Send>;

/// One Responses API turn on its way through the pipeline: how its answer is written (the
/// response object's identity and echoed settings) and, unless `store: false`, how it is kept
/// once it ends.
pub(crate) struct Turn {
    pub(crate) meta: responses::ResponseMeta,
    pub(crate) keep: Option<Keep>,
}

impl Turn {
    /// The whole answer's response object, kept (unless `store: false`) before it is sent.
    pub(crate) async fn answer(self, resp: &ChatResponse) -> Vec<u8> {
        let object = responses::render_response(&self.meta, resp);
        if let Some(keep) = self.keep {
            keep(&object).await;
        }
        object.to_string().into_bytes()
    }

    pub(crate) fn encoder(self) -> Encoder {
        Encoder::Responses(Box::new(ResponsesOut {
            encoder: responses::ResponsesStreamEncoder::new(self.meta),
            keep: self.keep,
        }))
    }
}

/// The Responses event stream, and how its response is kept when it ends.
pub(crate) struct ResponsesOut {
    encoder: responses::ResponsesStreamEncoder,
    keep: Option<Keep>,
}

/// Writes canonical events as one dialect's SSE frames.
pub(crate) enum Encoder {
    OpenAi(openai::ChatStreamEncoder),
    Anthropic(anthropic::MessagesStreamEncoder),
    Responses(Box<ResponsesOut>),
    Gemini(gemini::GeminiStreamEncoder),
}

impl Encoder {
    pub(crate) fn event(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        match self {
            Self::OpenAi(e) => e.event(ev, out),
            Self::Anthropic(e) => e.event(ev, out),
            Self::Responses(e) => e.encoder.event(ev, out),
            Self::Gemini(e) => e.event(ev, out),
        }
    }

    pub(crate) fn end(&mut self, out: &mut Vec<u8>) {
        match self {
            Self::OpenAi(e) => e.end(out),
            Self::Anthropic(e) => e.end(out),
            Self::Gemini(e) => e.end(out),
            Self::Responses(e) => {
                e.encoder.end(out);
                // Kept in memory before the last event leaves, so a next turn sent the moment
                // the client has it finds it; the store write goes on in the background.
                if let Some(keep) = e.keep.take().filter(|_| e.encoder.completed()) {
                    tokio::spawn(keep(&e.encoder.final_object()));
                }
            }
        }
    }

    pub(crate) fn error(&mut self, err: &Error, out: &mut Vec<u8>) {
        match self {
            Self::OpenAi(e) => e.error(err, out),
            Self::Anthropic(e) => e.error(err, out),
            Self::Responses(e) => e.encoder.error(err, out),
            Self::Gemini(e) => e.error(err, out),
        }
    }
}
