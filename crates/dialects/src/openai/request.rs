use relais_core::{
    ChatRequest, ContentPart, EmbedRequest, Error, ImageSource, Message, Reasoning, ResponseFormat,
    Role, Tool, ToolCall, ToolChoice,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::parse_json;

/// The request body. Deserialized by hand (below) rather than with `#[serde(flatten)]` for the
/// unknown fields: flatten makes serde buffer the whole body into its private content tree and
/// decode it a second time, the largest cost of parsing a request.
#[derive(Default)]
struct OpenAiChatRequest {
    model: Option<String>,
    messages: Option<Vec<OpenAiMessage>>,
    tools: Option<Vec<OpenAiTool>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<OpenAiResponseFormat>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u32>,
    stop: Option<OneOrMany>,
    seed: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<OpenAiStreamOptions>,
    reasoning_effort: Option<String>,
    user: Option<String>,
    metadata: Option<Map<String, Value>>,
    n: Option<u32>,
    /// Fields relais does not interpret, passed to the upstream as they came.
    extra: Map<String, Value>,
}

impl<'de> Deserialize<'de> for OpenAiChatRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error as _, MapAccess, Visitor};

        struct Body;
        impl<'de> Visitor<'de> for Body {
            type Value = OpenAiChatRequest;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a chat completion request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut r = OpenAiChatRequest::default();
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
                        Key::Tools => set!(tools, "tools"),
                        Key::ToolChoice => set!(tool_choice, "tool_choice"),
                        Key::ParallelToolCalls => set!(parallel_tool_calls, "parallel_tool_calls"),
                        Key::ResponseFormat => set!(response_format, "response_format"),
                        Key::MaxTokens => set!(max_tokens, "max_tokens"),
                        Key::MaxCompletionTokens => {
                            set!(max_completion_tokens, "max_completion_tokens");
                        }
                        Key::Temperature => set!(temperature, "temperature"),
                        Key::TopP => set!(top_p, "top_p"),
                        Key::TopK => set!(top_k, "top_k"),
                        Key::Stop => set!(stop, "stop"),
                        Key::Seed => set!(seed, "seed"),
                        Key::Stream => set!(stream, "stream"),
                        Key::StreamOptions => set!(stream_options, "stream_options"),
                        Key::ReasoningEffort => set!(reasoning_effort, "reasoning_effort"),
                        Key::User => set!(user, "user"),
                        Key::Metadata => set!(metadata, "metadata"),
                        Key::N => set!(n, "n"),
                        Key::Other(name) => {
                            let v: Value = map.next_value()?;
                            r.extra.insert(name, v);
                        }
                    }
                }
                if r.model.is_none() {
                    return Err(A::Error::missing_field("model"));
                }
                if r.messages.is_none() {
                    return Err(A::Error::missing_field("messages"));
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
    Tools,
    ToolChoice,
    ParallelToolCalls,
    ResponseFormat,
    MaxTokens,
    MaxCompletionTokens,
    Temperature,
    TopP,
    TopK,
    Stop,
    Seed,
    Stream,
    StreamOptions,
    ReasoningEffort,
    User,
    Metadata,
    N,
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
                    "tools" => Key::Tools,
                    "tool_choice" => Key::ToolChoice,
                    "parallel_tool_calls" => Key::ParallelToolCalls,
                    "response_format" => Key::ResponseFormat,
                    "max_tokens" => Key::MaxTokens,
                    "max_completion_tokens" => Key::MaxCompletionTokens,
                    "temperature" => Key::Temperature,
                    "top_p" => Key::TopP,
                    "top_k" => Key::TopK,
                    "stop" => Key::Stop,
                    "seed" => Key::Seed,
                    "stream" => Key::Stream,
                    "stream_options" => Key::StreamOptions,
                    "reasoning_effort" => Key::ReasoningEffort,
                    "user" => Key::User,
                    "metadata" => Key::Metadata,
                    "n" => Key::N,
                    other => Key::Other(other.to_owned()),
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
struct OpenAiStreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum OpenAiRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// One message, every role's fields together. A plain struct rather than an enum tagged by
/// `role`: serde decodes a tagged enum by first buffering the whole message into its private
/// content tree, a second pass over every message of every request.
#[derive(Deserialize)]
struct OpenAiMessage {
    role: OpenAiRole,
    content: Option<Value>,
    name: Option<String>,
    tool_calls: Option<Vec<OpenAiToolCall>>,
    tool_call_id: Option<String>,
    refusal: Option<String>,
    reasoning_content: Option<String>,
}

#[derive(Deserialize)]
struct OpenAiToolCall {
    id: String,
    function: OpenAiFunctionCall,
}

#[derive(Deserialize)]
struct OpenAiFunctionCall {
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
struct OpenAiTool {
    #[serde(rename = "type")]
    kind: String,
    function: Option<OpenAiFunction>,
}

#[derive(Deserialize)]
struct OpenAiFunction {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
    strict: Option<bool>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OpenAiResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: OpenAiJsonSchema },
}

#[derive(Deserialize)]
struct OpenAiJsonSchema {
    name: String,
    schema: Option<Value>,
    strict: Option<bool>,
    description: Option<String>,
}

/// Decode a `/v1/chat/completions` body into the canonical request.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, Error> {
    let raw: OpenAiChatRequest = parse_json(body)?;
    if raw.n.is_some_and(|n| n != 1) {
        return Err(Error::unsupported("n other than 1 is not supported").with_param("n"));
    }
    let (Some(model), Some(raw_messages)) = (raw.model, raw.messages) else {
        return Err(Error::internal("request parsed without model or messages"));
    };
    if raw_messages.is_empty() {
        return Err(Error::bad_request("'messages' must not be empty").with_param("messages"));
    }
    if let (Some(a), Some(b)) = (raw.max_tokens, raw.max_completion_tokens) {
        if a != b {
            return Err(Error::bad_request(
                "set either 'max_tokens' or 'max_completion_tokens', not both with different values",
            )
            .with_param("max_completion_tokens"));
        }
    }
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, m) in raw_messages.into_iter().enumerate() {
        messages.push(message(i, m)?);
    }
    let tools = match raw.tools {
        None => Vec::new(),
        Some(tools) => tools
            .into_iter()
            .enumerate()
            .map(|(i, t)| tool(i, t))
            .collect::<Result<_, _>>()?,
    };
    let tool_choice = raw.tool_choice.map(tool_choice).transpose()?;
    if let Some(ToolChoice::Tool(name)) = &tool_choice {
        if !tools.iter().any(|t| &t.name == name) {
            return Err(Error::bad_request(format!(
                "tool_choice names '{name}', which is not in 'tools'"
            ))
            .with_param("tool_choice"));
        }
    }
    let response_format = raw.response_format.map(|f| match f {
        OpenAiResponseFormat::Text => ResponseFormat::Text,
        OpenAiResponseFormat::JsonObject => ResponseFormat::JsonObject,
        OpenAiResponseFormat::JsonSchema { json_schema } => ResponseFormat::JsonSchema {
            name: json_schema.name,
            schema: json_schema.schema,
            strict: json_schema.strict,
            description: json_schema.description,
        },
    });
    if let Some(t) = raw.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(Error::bad_request("'temperature' must be between 0 and 2")
                .with_param("temperature"));
        }
    }
    if let Some(p) = raw.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::bad_request("'top_p' must be between 0 and 1").with_param("top_p"));
        }
    }
    Ok(ChatRequest {
        model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: raw.parallel_tool_calls,
        response_format,
        max_output_tokens: raw.max_completion_tokens.or(raw.max_tokens),
        temperature: raw.temperature,
        top_p: raw.top_p,
        top_k: raw.top_k,
        stop: raw.stop.map(OneOrMany::into_vec).unwrap_or_default(),
        seed: raw.seed,
        stream: raw.stream.unwrap_or(false),
        stream_include_usage: raw
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        // The client reads OpenAI chunks: an OpenAI-family upstream's may go through as they are.
        passthrough: raw.stream.unwrap_or(false),
        reasoning: raw.reasoning_effort.map(|effort| Reasoning {
            effort: Some(effort),
            budget_tokens: None,
        }),
        user: raw.user,
        metadata: raw.metadata,
        extra: raw.extra,
        extra_family: Some("openai"),
        vendor_beta: None,
        responses_body: None,
    })
}

fn message(i: usize, m: OpenAiMessage) -> Result<Message, Error> {
    let at = |what: &str| format!("messages[{i}].{what}");
    let required = |content: Option<Value>| {
        content.ok_or_else(|| {
            Error::bad_request(format!("'{}' is required", at("content"))).with_param(at("content"))
        })
    };
    let plain = |role: Role, content: Option<Value>, name: Option<String>| {
        Ok::<_, Error>(Message {
            role,
            content: parts(&at("content"), required(content)?)?,
            name,
        })
    };
    match m.role {
        OpenAiRole::System => plain(Role::System, m.content, m.name),
        OpenAiRole::Developer => plain(Role::Developer, m.content, m.name),
        OpenAiRole::User => plain(Role::User, m.content, m.name),
        OpenAiRole::Assistant => {
            let mut out = Vec::new();
            if let Some(r) = m.reasoning_content.filter(|r| !r.is_empty()) {
                out.push(ContentPart::Reasoning {
                    text: r,
                    signature: None,
                });
            }
            if let Some(c) = m.content {
                out.extend(parts(&at("content"), c)?);
            }
            if let Some(r) = m.refusal {
                out.push(ContentPart::Text(r));
            }
            for call in m.tool_calls.unwrap_or_default() {
                out.push(ContentPart::ToolCall(ToolCall {
                    id: call.id,
                    name: call.function.name,
                    arguments: call.function.arguments,
                }));
            }
            Ok(Message {
                role: Role::Assistant,
                content: out,
                name: m.name,
            })
        }
        OpenAiRole::Tool => {
            let call_id = m.tool_call_id.ok_or_else(|| {
                Error::bad_request(format!("'{}' is required", at("tool_call_id")))
                    .with_param(at("tool_call_id"))
            })?;
            let text: String = parts(&at("content"), required(m.content)?)?
                .into_iter()
                .filter_map(|p| match p {
                    ContentPart::Text(t) => Some(t),
                    _ => None,
                })
                .collect();
            Ok(Message {
                role: Role::Tool,
                content: vec![ContentPart::ToolResult {
                    call_id,
                    content: text,
                    is_error: false,
                }],
                name: None,
            })
        }
    }
}

/// Message content is a string or an array of typed parts.
fn parts(path: &str, content: Value) -> Result<Vec<ContentPart>, Error> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![ContentPart::Text(s)]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(j, item)| part(&format!("{path}[{j}]"), item))
            .collect(),
        _ => Err(
            Error::bad_request(format!("'{path}' must be a string or an array of parts"))
                .with_param(path),
        ),
    }
}

fn part(path: &str, item: Value) -> Result<ContentPart, Error> {
    let Value::Object(mut obj) = item else {
        return Err(Error::bad_request(format!("'{path}' must be an object")).with_param(path));
    };
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let str_field = |obj: &Map<String, Value>, key: &str| -> Result<String, Error> {
        obj.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::bad_request(format!("'{path}.{key}' must be a string"))
                    .with_param(format!("{path}.{key}"))
            })
    };
    match kind.as_str() {
        "text" => Ok(ContentPart::Text(str_field(&obj, "text")?)),
        "refusal" => Ok(ContentPart::Text(str_field(&obj, "refusal")?)),
        "image_url" => {
            let image = match obj.remove("image_url") {
                Some(Value::String(url)) => {
                    let mut m = Map::new();
                    m.insert("url".into(), Value::String(url));
                    m
                }
                Some(Value::Object(m)) => m,
                _ => {
                    return Err(Error::bad_request(format!(
                        "'{path}.image_url' must be an object with a 'url'"
                    ))
                    .with_param(format!("{path}.image_url")));
                }
            };
            let url = image.get("url").and_then(Value::as_str).ok_or_else(|| {
                Error::bad_request(format!("'{path}.image_url.url' must be a string"))
                    .with_param(format!("{path}.image_url.url"))
            })?;
            let detail = image
                .get("detail")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok(ContentPart::Image {
                source: image_source(path, url)?,
                detail,
            })
        }
        "file" => {
            let file = obj.get("file").and_then(Value::as_object).ok_or_else(|| {
                Error::bad_request(format!("'{path}.file' must be an object"))
                    .with_param(format!("{path}.file"))
            })?;
            let get = |k: &str| file.get(k).and_then(Value::as_str).map(str::to_owned);
            Ok(ContentPart::Document {
                data: get("file_data"),
                file_id: get("file_id"),
                filename: get("filename"),
            })
        }
        "" => Err(Error::bad_request(format!("'{path}.type' is missing"))
            .with_param(format!("{path}.type"))),
        _ => Ok(ContentPart::Opaque {
            family: "openai",
            value: Value::Object(obj),
        }),
    }
}

/// `data:` URLs carry inline bytes; anything else is fetched by the vendor.
pub(crate) fn image_source(path: &str, url: &str) -> Result<ImageSource, Error> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(ImageSource::Url(url.to_owned()));
    };
    let (meta, data) = rest.split_once(',').ok_or_else(|| {
        Error::bad_request(format!(
            "'{path}.image_url.url' is a data URL without a comma"
        ))
        .with_param(format!("{path}.image_url.url"))
    })?;
    let media_type = meta.strip_suffix(";base64").ok_or_else(|| {
        Error::bad_request(format!("'{path}.image_url.url' must be a base64 data URL"))
            .with_param(format!("{path}.image_url.url"))
    })?;
    Ok(ImageSource::Base64 {
        media_type: media_type.to_owned(),
        data: data.to_owned(),
    })
}

fn tool(i: usize, t: OpenAiTool) -> Result<Tool, Error> {
    if t.kind != "function" {
        return Err(Error::unsupported(format!(
            "tool type '{}' is not supported; use 'function'",
            t.kind
        ))
        .with_param(format!("tools[{i}].type")));
    }
    let f = t.function.ok_or_else(|| {
        Error::bad_request(format!("'tools[{i}].function' is missing"))
            .with_param(format!("tools[{i}].function"))
    })?;
    if f.name.is_empty() {
        return Err(
            Error::bad_request(format!("'tools[{i}].function.name' is empty"))
                .with_param(format!("tools[{i}].function.name")),
        );
    }
    Ok(Tool {
        name: f.name,
        description: f.description,
        parameters: f.parameters,
        strict: f.strict,
        cache: None,
    })
}

fn tool_choice(v: Value) -> Result<ToolChoice, Error> {
    let bad = || {
        Error::bad_request(
            "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}",
        )
        .with_param("tool_choice")
    };
    match &v {
        Value::String(s) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        },
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Tool(n.to_owned()))
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

#[derive(Deserialize)]
struct OpenAiEmbedRequest {
    model: String,
    input: Value,
    dimensions: Option<u32>,
    user: Option<String>,
    encoding_format: Option<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// Decode a `/v1/embeddings` body. Only text input is accepted: token-array input is tied to
/// one vendor's tokenizer and cannot be routed to another.
pub fn parse_embeddings(body: &[u8]) -> Result<(EmbedRequest, bool), Error> {
    let raw: OpenAiEmbedRequest = parse_json(body)?;
    let input = match raw.input {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(Error::unsupported(format!(
                    "'input[{i}]' must be a string; token arrays are not supported"
                ))
                .with_param(format!("input[{i}]"))),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(
                Error::bad_request("'input' must be a string or an array of strings")
                    .with_param("input"),
            );
        }
    };
    if input.is_empty() {
        return Err(Error::bad_request("'input' must not be empty").with_param("input"));
    }
    let base64 = match raw.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::bad_request(format!(
                "'encoding_format' must be 'float' or 'base64', not '{other}'"
            ))
            .with_param("encoding_format"));
        }
    };
    Ok((
        EmbedRequest {
            model: raw.model,
            input,
            dimensions: raw.dimensions,
            user: raw.user,
            extra: raw.extra,
        },
        base64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_request() {
        let body = br#"{
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}
            ],
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "look"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}},
            "max_tokens": 50,
            "stop": "END",
            "seed": 7,
            "stream": true,
            "stream_options": {"include_usage": true},
            "logit_bias": {"50256": -100},
            "reasoning_effort": "low"
        }"#;
        let r = parse_chat(body).unwrap();
        assert_eq!(r.model, "gpt-4o-mini");
        assert_eq!(r.messages.len(), 4);
        assert_eq!(r.messages[0].role, Role::Developer);
        assert!(r.has_images());
        assert!(matches!(
            &r.messages[1].content[1],
            ContentPart::Image { source: ImageSource::Base64 { media_type, .. }, detail: Some(d) }
                if media_type == "image/png" && d == "low"
        ));
        assert!(matches!(&r.messages[2].content[0], ContentPart::ToolCall(c) if c.id == "call_1"));
        assert!(
            matches!(&r.messages[3].content[0], ContentPart::ToolResult { call_id, content, .. }
            if call_id == "call_1" && content == "a cat")
        );
        assert_eq!(r.tool_choice, Some(ToolChoice::Tool("look".into())));
        assert!(matches!(
            r.response_format,
            Some(ResponseFormat::JsonSchema {
                strict: Some(true),
                ..
            })
        ));
        assert_eq!(r.max_output_tokens, Some(50));
        assert_eq!(r.stop, vec!["END"]);
        assert!(r.stream && r.stream_include_usage);
        assert!(r.extra.contains_key("logit_bias"));
        assert_eq!(r.reasoning.unwrap().effort.as_deref(), Some("low"));
    }

    #[test]
    fn rejects_bad_shapes_with_param() {
        let e = parse_chat(br#"{"model":"m","messages":"hi"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse_chat(br#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#)
            .unwrap_err();
        assert!(e.message.contains("wizard"), "{}", e.message);
        let e = parse_chat(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse_chat(br#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap_err();
        assert!(e.message.contains("model"), "{}", e.message);
        let e = parse_chat(br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png,xx"}}]}]}"#)
            .unwrap_err();
        assert!(e.message.contains("base64"), "{}", e.message);
    }

    #[test]
    fn embeddings_accept_string_or_list() {
        let (r, b64) = parse_embeddings(br#"{"model":"e","input":"hi"}"#).unwrap();
        assert_eq!(r.input, vec!["hi"]);
        assert!(!b64);
        let (r, _) =
            parse_embeddings(br#"{"model":"e","input":["a","b"],"dimensions":8}"#).unwrap();
        assert_eq!(r.input.len(), 2);
        assert_eq!(r.dimensions, Some(8));
        assert!(parse_embeddings(br#"{"model":"e","input":[[1,2]]}"#).is_err());
    }
}
