use relais_core::{
    CacheControl, ChatRequest, ContentPart, Error, ImageSource, Message, Reasoning, ResponseFormat,
    Role, Tool, ToolCall, ToolChoice,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::parse_json;

/// The request body of `/v1/messages` (and `/v1/messages/count_tokens`). Deserialized by hand
/// (below) rather than with `#[serde(flatten)]` for the unknown fields: flatten makes serde
/// buffer the whole body into its private content tree and decode it a second time.
///
/// `model`, `messages` and `max_tokens` are optional here so that a missing one is reported by
/// [`parse`] with its name as `param`, and so that count_tokens can share the type.
#[derive(Default)]
struct AnthropicMessagesRequest {
    model: Option<String>,
    messages: Option<Vec<AnthropicMessage>>,
    max_tokens: Option<u32>,
    /// A string or an array of text blocks; walked by hand to keep cache breakpoints.
    system: Option<Value>,
    metadata: Option<AnthropicMetadata>,
    stop_sequences: Option<Vec<String>>,
    stream: Option<bool>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u32>,
    thinking: Option<AnthropicThinking>,
    tool_choice: Option<AnthropicToolChoice>,
    tools: Option<Vec<AnthropicTool>>,
    output_config: Option<AnthropicOutputConfig>,
    /// Fields relais does not interpret (`service_tier`, `container`, top-level
    /// `cache_control`, ...), passed to an Anthropic upstream as they came.
    extra: Map<String, Value>,
}

impl<'de> Deserialize<'de> for AnthropicMessagesRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error as _, MapAccess, Visitor};

        struct Body;
        impl<'de> Visitor<'de> for Body {
            type Value = AnthropicMessagesRequest;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a messages request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut r = AnthropicMessagesRequest::default();
                // `null` reads as absent, as it does for the derived optional fields.
                macro_rules! set {
                    ($field:ident, $name:literal) => {{
                        if r.$field.is_some() {
                            return Err(A::Error::duplicate_field($name));
                        }
                        r.$field = map.next_value()?;
                    }};
                }
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Model => set!(model, "model"),
                        Key::Messages => set!(messages, "messages"),
                        Key::MaxTokens => set!(max_tokens, "max_tokens"),
                        Key::System => set!(system, "system"),
                        Key::Metadata => set!(metadata, "metadata"),
                        Key::StopSequences => set!(stop_sequences, "stop_sequences"),
                        Key::Stream => set!(stream, "stream"),
                        Key::Temperature => set!(temperature, "temperature"),
                        Key::TopP => set!(top_p, "top_p"),
                        Key::TopK => set!(top_k, "top_k"),
                        Key::Thinking => set!(thinking, "thinking"),
                        Key::ToolChoice => set!(tool_choice, "tool_choice"),
                        Key::Tools => set!(tools, "tools"),
                        Key::OutputConfig => set!(output_config, "output_config"),
                        Key::Other(name) => {
                            let v: Value = map.next_value()?;
                            r.extra.insert(name, v);
                        }
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(Body)
    }
}

/// A top-level key of the request body: the known ones without allocating.
enum Key {
    Model,
    Messages,
    MaxTokens,
    System,
    Metadata,
    StopSequences,
    Stream,
    Temperature,
    TopP,
    TopK,
    Thinking,
    ToolChoice,
    Tools,
    OutputConfig,
    Other(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "model" => Key::Model,
                    "messages" => Key::Messages,
                    "max_tokens" => Key::MaxTokens,
                    "system" => Key::System,
                    "metadata" => Key::Metadata,
                    "stop_sequences" => Key::StopSequences,
                    "stream" => Key::Stream,
                    "temperature" => Key::Temperature,
                    "top_p" => Key::TopP,
                    "top_k" => Key::TopK,
                    "thinking" => Key::Thinking,
                    "tool_choice" => Key::ToolChoice,
                    "tools" => Key::Tools,
                    "output_config" => Key::OutputConfig,
                    other => Key::Other(other.to_owned()),
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum AnthropicRole {
    User,
    Assistant,
    /// A system message at its place in the conversation (the `mid-conversation-system`
    /// beta; Claude Code sends one for models outside its built-in list): text only.
    System,
}

/// One input message. `content` stays a `Value` and is walked by hand: blocks relais does not
/// model must reach an Anthropic upstream verbatim, and errors must name the exact block.
#[derive(Deserialize)]
struct AnthropicMessage {
    role: AnthropicRole,
    content: Option<Value>,
}

/// Anthropic's metadata has one field; an unknown one is refused as the API refuses it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnthropicMetadata {
    user_id: Option<String>,
}

/// Small objects: serde's tagged-enum buffering costs nothing worth avoiding here.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum AnthropicThinking {
    Enabled { budget_tokens: u32 },
    Disabled,
    Adaptive,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum AnthropicToolChoice {
    Auto {
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: String,
        disable_parallel_tool_use: Option<bool>,
    },
    /// Named apart from `Option::None` so the two never read alike.
    #[serde(rename = "none")]
    NoTools,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnthropicOutputConfig {
    effort: Option<String>,
    format: Option<AnthropicOutputFormat>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicOutputFormat {
    JsonSchema { schema: Value },
}

/// A tool definition. Every field is optional so that a server tool (`web_search_...`, which
/// has no `input_schema`) is refused with its type named rather than with "missing field".
#[derive(Deserialize)]
struct AnthropicTool {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    description: Option<String>,
    input_schema: Option<Value>,
    strict: Option<bool>,
    cache_control: Option<Value>,
    input_examples: Option<Vec<Value>>,
    allowed_callers: Option<Vec<Value>>,
    defer_loading: Option<bool>,
}

/// The block types relais maps to canonical parts; every other type is kept opaque.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockType {
    Text,
    Image,
    Document,
    Thinking,
    ToolUse,
    ToolResult,
    Other,
}

impl BlockType {
    fn of(name: &str) -> Self {
        match name {
            "text" => Self::Text,
            "image" => Self::Image,
            "document" => Self::Document,
            "thinking" => Self::Thinking,
            "tool_use" => Self::ToolUse,
            "tool_result" => Self::ToolResult,
            _ => Self::Other,
        }
    }
}

/// The wire family of blocks relais keeps verbatim; only an Anthropic upstream may forward them.
const FAMILY: &str = "anthropic";

/// Decode a `/v1/messages` body into the canonical request.
pub fn parse_messages(body: &[u8]) -> Result<ChatRequest, Error> {
    parse(body, true)
}

/// Decode a `/v1/messages/count_tokens` body: the same shape, without `max_tokens`.
pub fn parse_count_tokens(body: &[u8]) -> Result<ChatRequest, Error> {
    parse(body, false)
}

fn parse(body: &[u8], require_max_tokens: bool) -> Result<ChatRequest, Error> {
    let raw: AnthropicMessagesRequest = parse_json(body)?;
    let model = raw.model.ok_or_else(|| invalid("model", "is required"))?;
    let raw_messages = raw
        .messages
        .ok_or_else(|| invalid("messages", "is required"))?;
    if require_max_tokens && raw.max_tokens.is_none() {
        return Err(invalid("max_tokens", "is required"));
    }
    if raw_messages.is_empty() {
        return Err(invalid("messages", "must not be empty"));
    }
    if let Some(t) = raw.temperature {
        if !(0.0..=1.0).contains(&t) {
            return Err(invalid("temperature", "must be between 0 and 1"));
        }
    }
    if let Some(p) = raw.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(invalid("top_p", "must be between 0 and 1"));
        }
    }

    let mut messages = Vec::with_capacity(raw_messages.len() + 1);
    if let Some(system) = raw.system {
        push_system(&mut messages, system, "system")?;
    }
    for (i, m) in raw_messages.into_iter().enumerate() {
        push_message(&mut messages, i, m)?;
    }

    let tools = match raw.tools {
        None => Vec::new(),
        Some(tools) => tools
            .into_iter()
            .enumerate()
            .map(|(i, t)| tool(i, t))
            .collect::<Result<Vec<_>, _>>()?,
    };

    let (tool_choice, disable_parallel) = match raw.tool_choice {
        None => (None, None),
        Some(AnthropicToolChoice::Auto {
            disable_parallel_tool_use,
        }) => (Some(ToolChoice::Auto), disable_parallel_tool_use),
        Some(AnthropicToolChoice::Any {
            disable_parallel_tool_use,
        }) => (Some(ToolChoice::Required), disable_parallel_tool_use),
        Some(AnthropicToolChoice::Tool {
            name,
            disable_parallel_tool_use,
        }) => {
            if !tools.iter().any(|t| t.name == name) {
                return Err(Error::bad_request(format!(
                    "'tool_choice.name' names '{name}', which is not in 'tools'"
                ))
                .with_param("tool_choice.name"));
            }
            (Some(ToolChoice::Tool(name)), disable_parallel_tool_use)
        }
        Some(AnthropicToolChoice::NoTools) => (Some(ToolChoice::None), None),
    };
    // Only an explicit `true` says anything: `false` is Anthropic's default, and sending
    // `parallel_tool_calls` to an upstream that never asked for it can be refused there.
    let parallel_tool_calls = disable_parallel.filter(|d| *d).map(|_| false);

    let (effort, format) = match raw.output_config {
        Some(c) => (c.effort, c.format),
        None => (None, None),
    };
    if let Some(e) = &effort {
        if !matches!(e.as_str(), "low" | "medium" | "high" | "xhigh" | "max") {
            return Err(Error::bad_request(format!(
                "'output_config.effort' must be one of low, medium, high, xhigh, max, not '{e}'"
            ))
            .with_param("output_config.effort"));
        }
    }
    // Anthropic's `effort` bounds all token spend, thinking included: the closest canonical
    // meaning is the reasoning effort. Without a `thinking` field it still travels, as effort
    // alone (an OpenAI upstream reads it as `reasoning_effort`). With thinking explicitly
    // disabled the client's "no thinking" wins: upstreams read any reasoning effort as a
    // request to reason, so the effort hint is not carried.
    let reasoning = match raw.thinking {
        Some(AnthropicThinking::Enabled { budget_tokens }) => {
            if budget_tokens < 1024 {
                return Err(invalid("thinking.budget_tokens", "must be at least 1024"));
            }
            Some(Reasoning {
                effort,
                budget_tokens: Some(budget_tokens),
            })
        }
        Some(AnthropicThinking::Adaptive) => Some(Reasoning {
            effort,
            budget_tokens: None,
        }),
        Some(AnthropicThinking::Disabled) => None,
        None => effort.map(|e| Reasoning {
            effort: Some(e),
            budget_tokens: None,
        }),
    };
    // Anthropic's format has no name and no strict switch (it is always enforced). The name is
    // only a label upstreams require; `strict` stays unset because asserting it would hold the
    // schema to OpenAI's narrower strict subset, which Anthropic does not.
    let response_format =
        format.map(
            |AnthropicOutputFormat::JsonSchema { schema }| ResponseFormat::JsonSchema {
                name: "response".to_owned(),
                schema: Some(schema),
                strict: None,
                description: None,
            },
        );

    let stream = raw.stream.unwrap_or(false);
    Ok(ChatRequest {
        model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format,
        max_output_tokens: raw.max_tokens,
        temperature: raw.temperature,
        top_p: raw.top_p,
        top_k: raw.top_k,
        stop: raw.stop_sequences.unwrap_or_default(),
        seed: None,
        stream,
        // Anthropic streams always end with usage (`message_delta`), so ask every upstream
        // for it whenever the client streams.
        stream_include_usage: stream,
        passthrough: false,
        reasoning,
        user: raw.metadata.and_then(|m| m.user_id),
        metadata: None,
        extra: raw.extra,
        extra_family: Some(FAMILY),
        vendor_beta: None,
        responses_body: None,
    })
}

/// A 400 naming the field at fault, in the message (for people) and in `param` (for programs).
fn invalid(path: &str, problem: &str) -> Error {
    Error::bad_request(format!("'{path}' {problem}")).with_param(path)
}

/// Remove a required string field of a block.
fn take_string(obj: &mut Map<String, Value>, at: &str, key: &str) -> Result<String, Error> {
    match obj.remove(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(invalid(&format!("{at}.{key}"), "is required")),
        Some(_) => Err(invalid(&format!("{at}.{key}"), "must be a string")),
    }
}

/// The `cache_control` of the object at `at`, if it has one.
fn cache_control(at: &str, v: Option<&Value>) -> Result<Option<CacheControl>, Error> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(invalid(&format!("{at}.cache_control"), "must be an object"));
        }
    };
    if obj.get("type").and_then(Value::as_str) != Some("ephemeral") {
        return Err(invalid(
            &format!("{at}.cache_control.type"),
            "must be \"ephemeral\"",
        ));
    }
    let ttl = match obj.get("ttl") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "5m" || s == "1h" => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                &format!("{at}.cache_control.ttl"),
                "must be \"5m\" or \"1h\"",
            ));
        }
    };
    Ok(Some(CacheControl { ttl }))
}

/// `system` becomes one `Role::System` message per text block, each followed by its cache
/// breakpoint: separate messages keep the block boundaries under every upstream, and an
/// Anthropic upstream can fold consecutive system messages back into one `system` array.
fn push_system(out: &mut Vec<Message>, system: Value, path: &str) -> Result<(), Error> {
    match system {
        Value::String(s) => {
            if !s.is_empty() {
                out.push(Message::text(Role::System, s));
            }
            Ok(())
        }
        Value::Array(blocks) => {
            for (j, block) in blocks.into_iter().enumerate() {
                let at = format!("{path}[{j}]");
                let Value::Object(mut obj) = block else {
                    return Err(invalid(&at, "must be a text block object"));
                };
                if obj.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(invalid(&format!("{at}.type"), "must be \"text\""));
                }
                let cache = cache_control(&at, obj.get("cache_control"))?;
                let mut content = vec![ContentPart::Text(take_string(&mut obj, &at, "text")?)];
                if let Some(c) = cache {
                    content.push(ContentPart::CacheBreakpoint(c));
                }
                out.push(Message {
                    role: Role::System,
                    content,
                    name: None,
                });
            }
            Ok(())
        }
        _ => Err(invalid(path, "must be a string or an array of text blocks")),
    }
}

/// Convert one input message. A user message may hold tool results among its blocks; each
/// becomes its own `Role::Tool` message, so one input message can yield several, in order.
fn push_message(out: &mut Vec<Message>, i: usize, m: AnthropicMessage) -> Result<(), Error> {
    let path = format!("messages[{i}].content");
    let role = match m.role {
        AnthropicRole::User => Role::User,
        AnthropicRole::Assistant => Role::Assistant,
        AnthropicRole::System => {
            // Kept at its position: an upstream that takes system messages anywhere gets it
            // there, the others fold it into their system instructions.
            let content = m.content.ok_or_else(|| invalid(&path, "is required"))?;
            return push_system(out, content, &path);
        }
    };
    let blocks = match m.content {
        Some(Value::String(s)) => {
            out.push(Message::text(role, s));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        None | Some(Value::Null) => return Err(invalid(&path, "is required")),
        Some(_) => {
            return Err(invalid(
                &path,
                "must be a string or an array of content blocks",
            ));
        }
    };
    let first = out.len();
    let mut parts = Vec::with_capacity(blocks.len());
    for (j, item) in blocks.into_iter().enumerate() {
        let at = format!("{path}[{j}]");
        let Value::Object(obj) = item else {
            return Err(invalid(&at, "must be a content block object"));
        };
        let kind = match obj.get("type") {
            Some(Value::String(s)) => BlockType::of(s),
            _ => {
                return Err(invalid(
                    &format!("{at}.type"),
                    "must be a string naming the block type",
                ));
            }
        };
        match (kind, m.role) {
            (BlockType::ToolResult, AnthropicRole::User) => {
                if !parts.is_empty() {
                    out.push(Message {
                        role,
                        content: std::mem::take(&mut parts),
                        name: None,
                    });
                }
                out.push(tool_result(&at, obj)?);
            }
            (BlockType::ToolResult, AnthropicRole::Assistant) => {
                return Err(invalid(
                    &format!("{at}.type"),
                    "is \"tool_result\", which only a user message may hold",
                ));
            }
            (BlockType::ToolUse, AnthropicRole::User) => {
                return Err(invalid(
                    &format!("{at}.type"),
                    "is \"tool_use\", which only an assistant message may hold",
                ));
            }
            _ => block(&at, kind, obj, &mut parts)?,
        }
    }
    // An empty block array still keeps its turn, for the upstream to judge.
    if !parts.is_empty() || out.len() == first {
        out.push(Message {
            role,
            content: parts,
            name: None,
        });
    }
    Ok(())
}

/// Convert one block (not a tool result) and its cache breakpoint.
fn block(
    at: &str,
    kind: BlockType,
    mut obj: Map<String, Value>,
    parts: &mut Vec<ContentPart>,
) -> Result<(), Error> {
    let cache = match kind {
        // An opaque block keeps its own `cache_control` inside, verbatim.
        BlockType::Other => None,
        _ => cache_control(at, obj.get("cache_control"))?,
    };
    let part = match kind {
        // `citations` on a text block in history are references the model made earlier; the
        // text is the content, and the API accepts it without them.
        BlockType::Text => ContentPart::Text(take_string(&mut obj, at, "text")?),
        BlockType::Image => image(at, &mut obj)?,
        BlockType::Document => document(at, obj)?,
        BlockType::Thinking => {
            let text = take_string(&mut obj, at, "thinking")?;
            // The signature is what lets Anthropic accept the block back: never drop it.
            let signature = match obj.remove("signature") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s),
                Some(_) => {
                    return Err(invalid(&format!("{at}.signature"), "must be a string"));
                }
            };
            ContentPart::Reasoning { text, signature }
        }
        BlockType::ToolUse => {
            let id = take_string(&mut obj, at, "id")?;
            let name = take_string(&mut obj, at, "name")?;
            let arguments = match obj.get("input") {
                Some(input @ Value::Object(_)) => input.to_string(),
                _ => return Err(invalid(&format!("{at}.input"), "must be an object")),
            };
            ContentPart::ToolCall(ToolCall {
                id,
                name,
                arguments,
            })
        }
        // `redacted_thinking`, `server_tool_use`, `search_result`, web search and code
        // execution results, ...: only an Anthropic upstream can take them back.
        BlockType::Other => ContentPart::Opaque {
            family: FAMILY,
            value: Value::Object(obj),
        },
        BlockType::ToolResult => {
            return Err(Error::internal(
                "tool_result reached the generic block path",
            ));
        }
    };
    let opaque = matches!(part, ContentPart::Opaque { .. });
    parts.push(part);
    if let Some(c) = cache.filter(|_| !opaque) {
        parts.push(ContentPart::CacheBreakpoint(c));
    }
    Ok(())
}

fn image(at: &str, obj: &mut Map<String, Value>) -> Result<ContentPart, Error> {
    let source_at = format!("{at}.source");
    let Some(Value::Object(mut source)) = obj.remove("source") else {
        return Err(invalid(&source_at, "must be an object with a 'type'"));
    };
    let kind = source
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let source = match kind.as_deref() {
        Some("base64") => ImageSource::Base64 {
            media_type: take_string(&mut source, &source_at, "media_type")?,
            data: take_string(&mut source, &source_at, "data")?,
        },
        Some("url") => ImageSource::Url(take_string(&mut source, &source_at, "url")?),
        _ => {
            return Err(invalid(
                &format!("{source_at}.type"),
                "must be \"base64\" or \"url\"",
            ));
        }
    };
    Ok(ContentPart::Image {
        source,
        detail: None,
    })
}

/// A base64 PDF without citations or context is what every vendor understands as a document;
/// it becomes `ContentPart::Document` with a data URL and the title as file name. Plain-text,
/// content and URL sources, and documents asking for citations, are Anthropic features: they
/// stay opaque so that only an Anthropic upstream receives them, unchanged.
fn document(at: &str, mut obj: Map<String, Value>) -> Result<ContentPart, Error> {
    let portable = {
        let Some(Value::Object(source)) = obj.get("source") else {
            return Err(invalid(
                &format!("{at}.source"),
                "must be an object with a 'type'",
            ));
        };
        if source.get("type").and_then(Value::as_str).is_none() {
            return Err(invalid(&format!("{at}.source.type"), "is required"));
        }
        let base64_pdf = source.get("type").and_then(Value::as_str) == Some("base64")
            && source.get("media_type").and_then(Value::as_str) == Some("application/pdf")
            && source.get("data").is_some_and(Value::is_string);
        let cited = obj
            .get("citations")
            .and_then(|c| c.get("enabled"))
            .and_then(Value::as_bool)
            == Some(true);
        let context = obj.get("context").is_some_and(|c| !c.is_null());
        base64_pdf && !cited && !context
    };
    if !portable {
        return Ok(ContentPart::Opaque {
            family: FAMILY,
            value: Value::Object(obj),
        });
    }
    let data = match obj.remove("source") {
        Some(Value::Object(mut source)) => {
            take_string(&mut source, &format!("{at}.source"), "data")?
        }
        _ => return Err(invalid(&format!("{at}.source"), "must be an object")),
    };
    let filename = match obj.remove("title") {
        Some(Value::String(t)) => Some(t),
        _ => None,
    };
    Ok(ContentPart::Document {
        data: Some(format!("data:application/pdf;base64,{data}")),
        file_id: None,
        filename,
    })
}

/// A `tool_result` block becomes a `Role::Tool` message. Its content is text only: canonical
/// tool results are strings, and an image (or document) inside one would be lost on the way,
/// so it is refused by name instead of dropped.
fn tool_result(at: &str, mut obj: Map<String, Value>) -> Result<Message, Error> {
    let call_id = take_string(&mut obj, at, "tool_use_id")?;
    let is_error = match obj.get("is_error") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid(&format!("{at}.is_error"), "must be a boolean")),
    };
    let mut cache = cache_control(at, obj.get("cache_control"))?;
    let content = match obj.remove("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(Value::Array(items)) => {
            let mut text = String::new();
            for (k, item) in items.into_iter().enumerate() {
                let item_at = format!("{at}.content[{k}]");
                let Value::Object(mut item) = item else {
                    return Err(invalid(&item_at, "must be a content block object"));
                };
                let kind = item.get("type").and_then(Value::as_str).map(str::to_owned);
                match kind.as_deref() {
                    Some("text") => {
                        // A breakpoint inside the result can only sit after the whole result.
                        if let Some(c) = cache_control(&item_at, item.get("cache_control"))? {
                            cache = Some(c);
                        }
                        let t = take_string(&mut item, &item_at, "text")?;
                        // Separate blocks read as separate lines, not as one run-on word.
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(&t);
                    }
                    Some(other) => {
                        return Err(Error::unsupported(format!(
                            "'{item_at}' is a '{other}' block inside a tool_result; relais \
                             carries only text in tool results. Send the {other} as its own \
                             block of the same user message instead"
                        ))
                        .with_param(item_at));
                    }
                    None => return Err(invalid(&format!("{item_at}.type"), "is required")),
                }
            }
            text
        }
        Some(_) => {
            return Err(invalid(
                &format!("{at}.content"),
                "must be a string or an array of content blocks",
            ));
        }
    };
    let mut parts = vec![ContentPart::ToolResult {
        call_id,
        content,
        is_error,
    }];
    if let Some(c) = cache {
        parts.push(ContentPart::CacheBreakpoint(c));
    }
    Ok(Message {
        role: Role::Tool,
        content: parts,
        name: None,
    })
}

fn tool(i: usize, t: AnthropicTool) -> Result<Tool, Error> {
    let at = format!("tools[{i}]");
    match t.kind.as_deref() {
        None | Some("custom") => {}
        Some(other) => {
            return Err(Error::unsupported(format!(
                "tool type '{other}' is not supported; relais forwards custom tools (with an \
                 'input_schema') only"
            ))
            .with_param(format!("{at}.type")));
        }
    }
    let name = t
        .name
        .ok_or_else(|| invalid(&format!("{at}.name"), "is required"))?;
    let valid_name = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_name {
        return Err(invalid(
            &format!("{at}.name"),
            "must be 1 to 128 characters of letters, digits, '_' or '-'",
        ));
    }
    let parameters = match t.input_schema {
        Some(schema @ Value::Object(_)) => schema,
        None | Some(Value::Null) => {
            return Err(invalid(&format!("{at}.input_schema"), "is required"));
        }
        Some(_) => {
            return Err(invalid(&format!("{at}.input_schema"), "must be an object"));
        }
    };
    // Anthropic-only tool features that change what the model sees or may do: refused by name
    // rather than dropped, since no other upstream could honour them.
    let unsupported = if t.input_examples.as_ref().is_some_and(|v| !v.is_empty()) {
        Some("input_examples")
    } else if t
        .allowed_callers
        .as_ref()
        .is_some_and(|v| v.iter().any(|c| c.as_str() != Some("direct")))
    {
        Some("allowed_callers")
    } else if t.defer_loading == Some(true) {
        Some("defer_loading")
    } else {
        None
    };
    if let Some(field) = unsupported {
        return Err(
            Error::unsupported(format!("'{at}.{field}' is not supported by relais"))
                .with_param(format!("{at}.{field}")),
        );
    }
    Ok(Tool {
        name,
        description: t.description,
        parameters: Some(parameters),
        strict: t.strict,
        cache: cache_control(&at, t.cache_control.as_ref())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_request() {
        let body = br#"{
            "model": "claude-sonnet-4-5",
            "max_tokens": 2048,
            "system": [
                {"type": "text", "text": "You are terse."},
                {"type": "text", "text": "Long reference text.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}, "title": "report.pdf", "cache_control": {"type": "ephemeral"}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain"}, "citations": {"enabled": true}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Let me look.", "signature": "sig-abc"},
                    {"type": "redacted_thinking", "data": "opaque-bytes"},
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"what": "cat"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "look", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                     "content": [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2", "cache_control": {"type": "ephemeral", "ttl": "5m"}}]},
                    {"type": "text", "text": "and now?"}
                ]}
            ],
            "tools": [
                {"name": "look", "description": "Look at a thing", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
                {"type": "custom", "name": "other-tool_2", "input_schema": {"type": "object", "properties": {}}, "strict": true}
            ],
            "tool_choice": {"type": "tool", "name": "look", "disable_parallel_tool_use": true},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}},
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "top_k": 5,
            "stream": true,
            "metadata": {"user_id": "u-42"},
            "service_tier": "auto"
        }"#;
        let r = parse_messages(body).unwrap();
        assert_eq!(r.model, "claude-sonnet-4-5");
        assert_eq!(r.max_output_tokens, Some(2048));

        // system: one message per block, the breakpoint after the block that carried it.
        assert_eq!(r.messages[0], Message::text(Role::System, "You are terse."));
        assert_eq!(r.messages[1].role, Role::System);
        assert_eq!(
            r.messages[1].content,
            vec![
                ContentPart::Text("Long reference text.".into()),
                ContentPart::CacheBreakpoint(CacheControl {
                    ttl: Some("1h".into())
                }),
            ]
        );

        let user = &r.messages[2];
        assert_eq!(user.role, Role::User);
        assert!(r.has_images());
        assert_eq!(
            user.content[1],
            ContentPart::Image {
                source: ImageSource::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBOR".into()
                },
                detail: None
            }
        );
        assert_eq!(
            user.content[2],
            ContentPart::Image {
                source: ImageSource::Url("https://example.com/cat.png".into()),
                detail: None
            }
        );
        assert_eq!(
            user.content[3],
            ContentPart::Document {
                data: Some("data:application/pdf;base64,JVBER".into()),
                file_id: None,
                filename: Some("report.pdf".into())
            }
        );
        assert_eq!(
            user.content[4],
            ContentPart::CacheBreakpoint(CacheControl { ttl: None })
        );
        assert!(matches!(
            &user.content[5],
            ContentPart::Opaque { family: "anthropic", value } if value["source"]["type"] == "text"
        ));
        assert_eq!(user.content.len(), 6);

        let assistant = &r.messages[3];
        assert_eq!(assistant.role, Role::Assistant);
        assert_eq!(
            assistant.content[0],
            ContentPart::Reasoning {
                text: "Let me look.".into(),
                signature: Some("sig-abc".into())
            }
        );
        assert!(matches!(
            &assistant.content[1],
            ContentPart::Opaque { family: "anthropic", value } if value["type"] == "redacted_thinking"
        ));
        assert_eq!(assistant.content[2], ContentPart::Text("Looking.".into()));
        let ContentPart::ToolCall(call) = &assistant.content[3] else {
            panic!("expected a tool call, got {:?}", assistant.content[3]);
        };
        assert_eq!(call.id, "toolu_1");
        assert_eq!(call.name, "look");
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(args, serde_json::json!({"what": "cat"}));
        assert!(matches!(&assistant.content[4], ContentPart::ToolCall(c) if c.arguments == "{}"));

        // Tool results: one Role::Tool message each, in order, then the trailing user text.
        assert_eq!(r.messages[4].role, Role::Tool);
        assert_eq!(
            r.messages[4].content,
            vec![ContentPart::ToolResult {
                call_id: "toolu_1".into(),
                content: "a cat".into(),
                is_error: false
            }]
        );
        assert_eq!(
            r.messages[5].content,
            vec![
                ContentPart::ToolResult {
                    call_id: "toolu_2".into(),
                    content: "line 1\nline 2".into(),
                    is_error: true
                },
                ContentPart::CacheBreakpoint(CacheControl {
                    ttl: Some("5m".into())
                }),
            ]
        );
        assert_eq!(r.messages[6], Message::text(Role::User, "and now?"));
        assert_eq!(r.messages.len(), 7);

        assert_eq!(r.tools.len(), 2);
        assert_eq!(r.tools[0].name, "look");
        assert_eq!(r.tools[0].description.as_deref(), Some("Look at a thing"));
        assert_eq!(r.tools[0].cache, Some(CacheControl { ttl: None }));
        assert_eq!(r.tools[1].strict, Some(true));
        assert_eq!(r.tools[1].cache, None);
        assert_eq!(r.tool_choice, Some(ToolChoice::Tool("look".into())));
        assert_eq!(r.parallel_tool_calls, Some(false));
        assert_eq!(
            r.reasoning,
            Some(Reasoning {
                effort: Some("high".into()),
                budget_tokens: Some(1024)
            })
        );
        assert!(matches!(
            &r.response_format,
            Some(ResponseFormat::JsonSchema { schema: Some(s), .. }) if s["type"] == "object"
        ));
        assert_eq!(r.stop, vec!["END"]);
        assert_eq!(r.temperature, Some(0.5));
        assert_eq!(r.top_k, Some(5));
        assert!(r.stream && r.stream_include_usage);
        assert_eq!(r.user.as_deref(), Some("u-42"));
        assert_eq!(r.extra.get("service_tier"), Some(&Value::from("auto")));
        assert!(!r.extra.contains_key("metadata"));
    }

    #[test]
    fn issue19_system_messages_inside_messages_keep_their_place() {
        // Claude Code with a model outside its built-in list (beta mid-conversation-system).
        let r = parse_messages(
            br#"{"model":"custom-route","max_tokens":10,"system":"top","messages":[
                {"role":"user","content":"hi"},
                {"role":"system","content":"now be terse"},
                {"role":"assistant","content":"ok"},
                {"role":"system","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}},{"type":"text","text":"b"}]},
                {"role":"user","content":"go"}]}"#,
        )
        .unwrap();
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        use Role::{Assistant, System, User};
        assert_eq!(
            roles,
            [System, User, System, Assistant, System, System, User]
        );
        assert_eq!(r.messages[2], Message::text(System, "now be terse"));
        assert_eq!(r.messages[4].content[0], ContentPart::Text("a".into()));
        assert!(matches!(
            r.messages[4].content[1],
            ContentPart::CacheBreakpoint(_)
        ));
        assert_eq!(r.messages[5], Message::text(System, "b"));
        // Only text: anything else is refused with the path of the block.
        let e = parse_messages(
            br#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"},
                {"role":"system","content":[{"type":"image","source":{}}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[1].content[0].type"),
            "{e:?}"
        );
        let e = parse_messages(br#"{"model":"m","max_tokens":10,"messages":[{"role":"system"}]}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{e:?}");
    }

    #[test]
    fn minimal_request_and_choices() {
        let r = parse_messages(
            br#"{"model":"m","max_tokens":10,"system":"be brief","messages":[{"role":"user","content":"hi"}],
                "tool_choice":{"type":"any"},"tools":[{"name":"f","input_schema":{"type":"object"}}],
                "thinking":{"type":"adaptive"}}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0], Message::text(Role::System, "be brief"));
        assert_eq!(r.messages[1], Message::text(Role::User, "hi"));
        assert_eq!(r.tool_choice, Some(ToolChoice::Required));
        assert_eq!(r.parallel_tool_calls, None);
        assert_eq!(r.reasoning, Some(Reasoning::default()));
        assert!(!r.stream && !r.stream_include_usage);

        let r = parse_messages(
            br#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}],
                "tool_choice":{"type":"none"},"thinking":{"type":"disabled"},
                "output_config":{"effort":"low"}}"#,
        )
        .unwrap();
        assert_eq!(r.tool_choice, Some(ToolChoice::None));
        assert_eq!(r.reasoning, None);

        let r = parse_messages(
            br#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}],
                "tool_choice":{"type":"auto","disable_parallel_tool_use":false}}"#,
        )
        .unwrap();
        assert_eq!(r.tool_choice, Some(ToolChoice::Auto));
        assert_eq!(r.parallel_tool_calls, None);

        let r = parse_messages(
            br#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}],
                "output_config":{"effort":"low"}}"#,
        )
        .unwrap();
        assert_eq!(
            r.reasoning,
            Some(Reasoning {
                effort: Some("low".into()),
                budget_tokens: None
            })
        );
    }

    #[test]
    fn count_tokens_needs_no_max_tokens() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let r = parse_count_tokens(body).unwrap();
        assert_eq!(r.max_output_tokens, None);
        let e = parse_messages(body).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }

    /// Each case: a body, and the `param` its error must name.
    #[test]
    fn rejects_bad_shapes_with_param() {
        let msg = |content: &str| {
            format!(
                r#"{{"model":"m","max_tokens":5,"messages":[{{"role":"user","content":"hi"}},{{"role":"assistant","content":"ok"}},{content}]}}"#
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (r#"{"max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#.into(), "model"),
            (r#"{"model":"m","max_tokens":5}"#.into(), "messages"),
            (r#"{"model":"m","max_tokens":5,"messages":[]}"#.into(), "messages"),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#.into(), "max_tokens"),
            (r#"{"model":"m","max_tokens":"many","messages":[{"role":"user","content":"x"}]}"#.into(), "max_tokens"),
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"temperature":1.5}"#.into(), "temperature"),
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"top_p":-1}"#.into(), "top_p"),
            // `system` is a role since issue 19 (mid-conversation system messages); others are not.
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"tool","content":"x"}]}"#.into(), "messages[0].role"),
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"user"}]}"#.into(), "messages[0].content"),
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":7}]}"#.into(), "messages[0].content"),
            (msg(r#"{"role":"user","content":["text"]}"#), "messages[2].content[0]"),
            (msg(r#"{"role":"user","content":[{"text":"x"}]}"#), "messages[2].content[0].type"),
            (msg(r#"{"role":"user","content":[{"type":"text"}]}"#), "messages[2].content[0].text"),
            (msg(r#"{"role":"user","content":[{"type":"image"}]}"#), "messages[2].content[0].source"),
            (msg(r#"{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"f"}}]}"#), "messages[2].content[0].source.type"),
            (msg(r#"{"role":"user","content":[{"type":"image","source":{"type":"base64","data":"x"}}]}"#), "messages[2].content[0].source.media_type"),
            (msg(r#"{"role":"user","content":[{"type":"document"}]}"#), "messages[2].content[0].source"),
            (msg(r#"{"role":"user","content":[{"type":"text","text":"x","cache_control":{"type":"forever"}}]}"#), "messages[2].content[0].cache_control.type"),
            (msg(r#"{"role":"user","content":[{"type":"text","text":"x","cache_control":{"type":"ephemeral","ttl":"2d"}}]}"#), "messages[2].content[0].cache_control.ttl"),
            (msg(r#"{"role":"user","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]}"#), "messages[2].content[0].type"),
            (msg(r#"{"role":"assistant","content":[{"type":"tool_result","tool_use_id":"t"}]}"#), "messages[2].content[0].type"),
            (msg(r#"{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":"{}"}]}"#), "messages[2].content[0].input"),
            (msg(r#"{"role":"assistant","content":[{"type":"thinking","signature":"s"}]}"#), "messages[2].content[0].thinking"),
            (msg(r#"{"role":"user","content":[{"type":"tool_result"}]}"#), "messages[2].content[0].tool_use_id"),
            (msg(r#"{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"image","source":{"type":"url","url":"u"}}]}]}"#), "messages[2].content[0].content[0]"),
            (msg(r#"{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","is_error":"yes"}]}"#), "messages[2].content[0].is_error"),
            (r#"{"model":"m","max_tokens":5,"system":[{"type":"image"}],"messages":[{"role":"user","content":"x"}]}"#.into(), "system[0].type"),
            (r#"{"model":"m","max_tokens":5,"system":5,"messages":[{"role":"user","content":"x"}]}"#.into(), "system"),
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"has space","input_schema":{"type":"object"}}]}"#.into(), "tools[0].name"),
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f"}]}"#.into(), "tools[0].input_schema"),
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search_20250305","name":"web_search"}]}"#.into(), "tools[0].type"),
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f","input_schema":{"type":"object"},"defer_loading":true}]}"#.into(), "tools[0].defer_loading"),
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f","input_schema":{"type":"object"}}],"tool_choice":{"type":"tool","name":"g"}}"#.into(), "tool_choice.name"),
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"thinking":{"type":"enabled","budget_tokens":10}}"#.into(), "thinking.budget_tokens"),
            (r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"output_config":{"effort":"extreme"}}"#.into(), "output_config.effort"),
        ];
        for (body, param) in cases {
            let e = parse_messages(body.as_bytes()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert!(
                matches!(
                    e.kind,
                    relais_core::ErrorKind::BadRequest | relais_core::ErrorKind::Unsupported
                ),
                "{body}: {e:?}"
            );
        }
    }

    #[test]
    fn unsupported_features_say_what() {
        let e = parse_messages(
            br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[
                {"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"see"},
                 {"type":"image","source":{"type":"base64","media_type":"image/png","data":"x"}}]}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.kind, relais_core::ErrorKind::Unsupported);
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].content[0].content[1]")
        );
        assert!(e.message.contains("image"), "{}", e.message);

        let e = parse_messages(
            br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],
                "tools":[{"type":"bash_20250124","name":"bash"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.kind, relais_core::ErrorKind::Unsupported);
        assert!(e.message.contains("bash_20250124"), "{}", e.message);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse_messages(b"{\"model\": \"m\",\n \"max_tokens\": 5,}").unwrap_err();
        assert!(e.message.contains("line 2"), "{}", e.message);
        assert_eq!(e.code.as_deref(), Some("invalid_json"));
    }

    #[test]
    fn unknown_blocks_and_fields_pass_through() {
        let r = parse_messages(
            br#"{"model":"m","max_tokens":5,"container":"c1","cache_control":{"type":"ephemeral"},
                "messages":[{"role":"assistant","content":[
                    {"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{"query":"x"},"cache_control":{"type":"ephemeral"}}
                ]}]}"#,
        )
        .unwrap();
        assert_eq!(r.extra.len(), 2);
        assert!(r.extra.contains_key("container") && r.extra.contains_key("cache_control"));
        // The opaque block keeps its own cache_control; no canonical breakpoint is added.
        assert_eq!(r.messages[0].content.len(), 1);
        assert!(matches!(
            &r.messages[0].content[0],
            ContentPart::Opaque { family: "anthropic", value }
                if value["type"] == "server_tool_use" && value["cache_control"]["type"] == "ephemeral"
        ));
    }
}
