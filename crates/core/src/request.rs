use serde_json::{Map, Value};

/// One chat request in canonical form: what every dialect decodes to and every provider encodes
/// from. Fields a client sent that have no canonical meaning travel in `extra`, untouched, and
/// only providers of the same wire family may forward them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// The route name the client asked for (its "model").
    pub model: String,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub stream: bool,
    /// The client asked for a usage report at the end of its stream.
    pub stream_include_usage: bool,
    /// The client streams OpenAI Chat Completions chunks, so an upstream of the OpenAI family
    /// may forward its content chunks as they came ([`crate::StreamEvent::Raw`]) instead of
    /// decoding them into events that are encoded again. Whoever needs the answer's text
    /// (a fold, a comparison) leaves it false.
    pub passthrough: bool,
    pub reasoning: Option<Reasoning>,
    pub user: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    /// Fields relais does not interpret, passed through to same-family upstreams.
    pub extra: Map<String, Value>,
    /// The wire family (`openai`, `anthropic`) whose fields `extra` holds: a provider forwards
    /// them whole only to an upstream of that family, never another vendor's fields to it.
    pub extra_family: Option<&'static str>,
    /// The client's opt-in to beta features of its own API family (Anthropic's
    /// `anthropic-beta` header): forwarded only to an upstream of `extra_family`, dropped with a
    /// debug log for the others.
    pub vendor_beta: Option<String>,
    /// A Responses API client's own request (its conversation expanded into `input`), for an
    /// upstream that speaks the Responses API natively
    /// ([`crate::Provider::speaks_responses`]): that upstream gets it whole, hosted tools
    /// included, and answers with [`crate::StreamEvent::Native`] events. Every other upstream
    /// reads the canonical fields. Whoever needs the answer's text (a fold, a comparison)
    /// clears it.
    pub responses_body: Option<std::sync::Arc<Map<String, Value>>>,
}

impl ChatRequest {
    /// The answer must arrive as decoded events (folded, recorded or rewritten by the
    /// gateway): no same-dialect pass-through chunks, no native Responses API body.
    pub fn decode_answer(&mut self) {
        self.passthrough = false;
        self.responses_body = None;
    }

    /// Whether any message carries an image (a capability check for fallback and validation).
    pub fn has_images(&self) -> bool {
        self.messages
            .iter()
            .flat_map(|m| m.content.iter())
            .any(|p| matches!(p, ContentPart::Image { .. }))
    }

    /// All text of the request, for rough token estimates and mocks.
    pub fn text_len(&self) -> usize {
        self.messages
            .iter()
            .flat_map(|m| m.content.iter())
            .map(|p| match p {
                ContentPart::Text(t) => t.len(),
                ContentPart::ToolResult { content, .. } => content.len(),
                ContentPart::ToolCall(c) => c.arguments.len(),
                _ => 0,
            })
            .sum()
    }

    /// A rough prompt-size estimate where no tokenizer is at hand (`count_tokens`, context-window
    /// checks, rate-limit reservations): about four bytes of English text per token, plus a few
    /// tokens of framing per message and per tool. It errs high, which those checks want.
    pub fn estimate_input_tokens(&self) -> u64 {
        let text = self.text_len() as u64;
        let tools: u64 = self
            .tools
            .iter()
            .map(|t| {
                (t.name.len()
                    + t.description.as_ref().map_or(0, String::len)
                    + t.parameters.as_ref().map_or(0, json_len)) as u64
            })
            .sum();
        let framing = 4 * self.messages.len() as u64 + 8 * self.tools.len() as u64;
        (text + tools).div_ceil(4) + framing + 3
    }
}

/// The length of a value's JSON text, counted without building the text.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing to a counter cannot fail; a value that could not be written counts as empty.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    /// OpenAI's newer name for system instructions; providers without it treat it as system.
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Developer => "developer",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<ContentPart>,
    pub name: Option<String>,
}

impl Message {
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![ContentPart::Text(text.into())],
            name: None,
        }
    }

    /// The concatenated text parts of this message.
    pub fn joined_text(&self) -> String {
        let mut out = String::new();
        for part in &self.content {
            match part {
                ContentPart::Text(t) => out.push_str(t),
                ContentPart::ToolResult { content, .. } => out.push_str(content),
                _ => {}
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    Url(String),
    /// Inline bytes, base64 as received (no need to decode to pass them on).
    Base64 {
        media_type: String,
        data: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    Text(String),
    Image {
        source: ImageSource,
        detail: Option<String>,
    },
    /// A call the assistant made (in history sent back by the client).
    ToolCall(crate::ToolCall),
    /// The result of a tool call, sent back by the client.
    ToolResult {
        call_id: String,
        content: String,
        is_error: bool,
    },
    Reasoning {
        text: String,
        signature: Option<String>,
    },
    Document {
        data: Option<String>,
        file_id: Option<String>,
        filename: Option<String>,
    },
    /// A part type relais does not model (audio input, ...), kept verbatim with the name of the
    /// dialect it came from; only a provider of that wire family can forward it.
    Opaque {
        family: &'static str,
        value: Value,
    },
    /// A prompt-caching breakpoint: everything up to and including the part before it may be
    /// cached. A hint only: providers that cache on their own (OpenAI) or not at all skip it.
    CacheBreakpoint(CacheControl),
}

impl ContentPart {
    /// A short name for error messages ("a document cannot be sent to ...").
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Text(_) => "text",
            Self::Image { .. } => "image",
            Self::ToolCall(_) => "tool call",
            Self::ToolResult { .. } => "tool result",
            Self::Reasoning { .. } => "reasoning",
            Self::Document { .. } => "document",
            Self::Opaque { .. } => "opaque",
            Self::CacheBreakpoint(_) => "cache breakpoint",
        }
    }
}

/// Anthropic-style explicit prompt caching (`{"type":"ephemeral","ttl":"5m"}`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheControl {
    /// `5m` or `1h` as the client said it; `None` is the vendor's default.
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments.
    pub parameters: Option<Value>,
    pub strict: Option<bool>,
    /// A caching breakpoint after this tool's definition (the tools prefix may be cached).
    pub cache: Option<CacheControl>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Tool(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Option<Value>,
        strict: Option<bool>,
        description: Option<String>,
    },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reasoning {
    /// `minimal`, `low`, `medium`, `high` as the client said it.
    pub effort: Option<String>,
    pub budget_tokens: Option<u32>,
}
