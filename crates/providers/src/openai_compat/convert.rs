//! Canonical request → OpenAI request body.

use relais_core::{
    ChatRequest, ContentPart, Error, ImageSource, Message, ResponseFormat, Role, ToolChoice,
};
use serde_json::{Map, Value, json};

use std::borrow::Cow;

use super::config::{MaxTokensField, ToolCallIds};
use super::wire::{OpenAiFunction, OpenAiMessage, OpenAiRequest, OpenAiTool};

pub(crate) struct EncodeOptions<'a> {
    /// `None` when the model is named by the URL (Azure deployments).
    pub model: Option<&'a str>,
    pub stream: bool,
    pub stream_usage: bool,
    pub max_tokens_field: MaxTokensField,
    pub tool_call_ids: ToolCallIds,
}

pub(crate) fn encode_request<'a>(
    req: &'a ChatRequest,
    opts: &EncodeOptions<'a>,
) -> Result<OpenAiRequest<'a>, Error> {
    crate::drop_vendor_beta(req, "openai_compat");
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        messages.push(message(m, opts.tool_call_ids)?);
    }
    let tools = req
        .tools
        .iter()
        .map(|t| OpenAiTool {
            kind: "function",
            function: OpenAiFunction {
                name: &t.name,
                description: t.description.as_deref(),
                parameters: t.parameters.as_ref(),
                strict: t.strict,
            },
        })
        .collect();
    let tool_choice = req.tool_choice.as_ref().map(|c| match c {
        ToolChoice::None => json!("none"),
        ToolChoice::Auto => json!("auto"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
    });
    let response_format = req.response_format.as_ref().map(|f| match f {
        ResponseFormat::Text => json!({"type": "text"}),
        ResponseFormat::JsonObject => json!({"type": "json_object"}),
        ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
            description,
        } => {
            let mut s = json!({"name": name});
            if let Some(map) = s.as_object_mut() {
                if let Some(schema) = schema {
                    map.insert("schema".into(), schema.clone());
                }
                if let Some(strict) = strict {
                    map.insert("strict".into(), Value::Bool(*strict));
                }
                if let Some(d) = description {
                    map.insert("description".into(), Value::String(d.clone()));
                }
            }
            json!({"type": "json_schema", "json_schema": s})
        }
    });
    let (max_tokens, max_completion_tokens) = match opts.max_tokens_field {
        MaxTokensField::MaxTokens => (req.max_output_tokens, None),
        MaxTokensField::MaxCompletionTokens => (None, req.max_output_tokens),
    };
    Ok(OpenAiRequest {
        model: opts.model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: req.parallel_tool_calls,
        response_format,
        max_tokens,
        max_completion_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop: &req.stop,
        seed: req.seed,
        stream: opts.stream,
        stream_options: (opts.stream && (opts.stream_usage || req.stream_include_usage))
            .then(|| json!({"include_usage": true})),
        reasoning_effort: req.reasoning.as_ref().and_then(|r| r.effort.as_deref()),
        user: req.user.as_deref(),
        metadata: req.metadata.as_ref(),
        extra: passed_through(req),
    })
}

/// Every top-level field relais writes or decides itself, whatever the client's dialect: a
/// client's extra field of the same name would be a second copy in the body (an upstream that
/// keeps the last one would obey the client: `stream_options` switching usage reports, hence
/// metering, off; a second token cap; `n` answers billed once).
const CONTROLLED: [&str; 24] = [
    "model",
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "reasoning_effort",
    "user",
    "metadata",
    "n",
    "functions",
    "function_call",
    "best_of",
    "echo",
    "suffix",
];

/// The client's extra fields that may reach an OpenAI-family upstream: only fields of the
/// OpenAI family (an Anthropic client's `context_management` or `container` means nothing
/// here), and never one relais controls. Borrowed as they are in the common case.
fn passed_through(req: &ChatRequest) -> Cow<'_, Map<String, Value>> {
    if req.extra_family != Some("openai") {
        if !req.extra.is_empty() {
            tracing::debug!(
                fields = req.extra.len(),
                "request fields dropped: another API's fields are not sent to an OpenAI-family upstream"
            );
        }
        return Cow::Owned(Map::new());
    }
    if !req.extra.keys().any(|k| CONTROLLED.contains(&k.as_str())) {
        return Cow::Borrowed(&req.extra);
    }
    let kept = req
        .extra
        .iter()
        .filter(|(k, _)| {
            let controlled = CONTROLLED.contains(&k.as_str());
            if controlled {
                tracing::debug!(field = %k, "request field dropped: relais sets it");
            }
            !controlled
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Cow::Owned(kept)
}

/// A tool-call id in the form the upstream accepts (see [`ToolCallIds`]).
fn call_id(id: &str, style: ToolCallIds) -> Cow<'_, str> {
    match style {
        ToolCallIds::AsIs => Cow::Borrowed(id),
        ToolCallIds::Mistral if id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Cow::Borrowed(id)
        }
        ToolCallIds::Mistral => {
            // FNV-1a over the original id: stable across requests (a call and its result, sent
            // in later turns, must agree) and 62^9 ≈ 1.3e16 values, ample for one conversation.
            const ALPHABET: &[u8; 62] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in id.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            let mut out = String::with_capacity(9);
            for _ in 0..9 {
                out.push(char::from(ALPHABET[(h % 62) as usize]));
                h /= 62;
            }
            Cow::Owned(out)
        }
    }
}

fn message(m: &Message, ids: ToolCallIds) -> Result<OpenAiMessage<'_>, Error> {
    let mut tool_calls = Vec::new();
    let mut parts = Vec::new();
    let mut tool_call_id = None;
    let mut text_only = true;
    for p in &m.content {
        match p {
            ContentPart::Text(t) => parts.push(json!({"type": "text", "text": t})),
            ContentPart::Image { source, detail } => {
                text_only = false;
                let url = match source {
                    ImageSource::Url(u) => u.clone(),
                    ImageSource::Base64 { media_type, data } => {
                        format!("data:{media_type};base64,{data}")
                    }
                };
                let mut image = json!({"url": url});
                if let (Some(d), Some(map)) = (detail, image.as_object_mut()) {
                    map.insert("detail".into(), Value::String(d.clone()));
                }
                parts.push(json!({"type": "image_url", "image_url": image}));
            }
            ContentPart::ToolCall(c) => tool_calls.push(json!({
                "id": call_id(&c.id, ids),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })),
            ContentPart::ToolResult {
                call_id, content, ..
            } => {
                tool_call_id = Some(self::call_id(call_id, ids));
                parts.push(json!({"type": "text", "text": content}));
            }
            // OpenAI's API takes no reasoning back in history; dropping it is what its own SDKs do.
            ContentPart::Reasoning { .. } => {}
            ContentPart::Document {
                data,
                file_id,
                filename,
            } => {
                text_only = false;
                let mut file = serde_json::Map::new();
                if let Some(d) = data {
                    file.insert("file_data".into(), Value::String(d.clone()));
                }
                if let Some(f) = file_id {
                    file.insert("file_id".into(), Value::String(f.clone()));
                }
                if let Some(f) = filename {
                    file.insert("filename".into(), Value::String(f.clone()));
                }
                parts.push(json!({"type": "file", "file": file}));
            }
            // OpenAI caches prompt prefixes on its own; the hint has no field there.
            ContentPart::CacheBreakpoint(_) => {}
            ContentPart::Opaque { family, value } => {
                if *family != "openai" {
                    return Err(Error::unsupported(format!(
                        "a {family} content part cannot be sent to an OpenAI-compatible upstream"
                    )));
                }
                text_only = false;
                parts.push(value.clone());
            }
        }
    }
    // Plain strings are the most widely understood form: use them whenever no part needs a type.
    let content = if text_only {
        let texts: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        if texts.is_empty() && !tool_calls.is_empty() {
            Value::Null
        } else {
            Value::String(texts.concat())
        }
    } else {
        Value::Array(parts)
    };
    Ok(OpenAiMessage {
        role: match m.role {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        },
        content,
        name: m.name.as_deref(),
        tool_calls,
        tool_call_id,
    })
}
