//! Canonical request → Anthropic Messages request body.
//!
//! Where the two models differ:
//! - System and developer messages, wherever they stand, become the top-level `system` blocks.
//! - Anthropic wants strictly alternating turns, with tool results inside the user turn that
//!   follows the assistant's tool calls: tool messages become user turns, and consecutive turns
//!   of one role are merged into one message.
//! - A cache breakpoint marks the end of a cached prefix, so it becomes `cache_control` on the
//!   block right before it, wherever that block landed.
//! - Output is capped on every request (`max_tokens` is required), and thinking is a token budget.

use std::borrow::Cow;

use relais_core::{
    CacheControl, ChatRequest, ContentPart, Error, ImageSource, Message, ResponseFormat, Role,
    Tool, ToolChoice,
};
use serde_json::{Map, Value, json};

use super::wire::{
    AnthropicMessage, AnthropicMetadata, AnthropicOutputConfig, AnthropicOutputFormat,
    AnthropicRequest, AnthropicThinking, AnthropicTool,
};

/// Fields of Anthropic's request that relais has no canonical meaning for, forwarded from
/// `extra`. `extra` holds whatever the client's dialect did not model, and nothing says which
/// dialect that was, so only names that no other vendor's API uses are listed: a field meant for
/// another vendor (`logit_bias`, `logprobs`, `safe_prompt`, ...) can then never reach Anthropic,
/// whose request schema rejects unknown fields. Everything else in `extra` is dropped.
const FORWARDED_EXTRAS: [&str; 3] = ["cache_control", "container", "inference_geo"];

/// Fields forwarded only from a client that speaks Anthropic's API (with its `anthropic-beta`
/// header, which only such a client sends).
const FAMILY_EXTRAS: [&str; 1] = ["context_management"];

/// The wire family whose extras and beta names this provider takes.
pub(crate) const FAMILY: &str = "anthropic";

/// `service_tier` exists at OpenAI too, with other values (`flex`, `priority`, `default`): it is
/// forwarded only when its value is one of Anthropic's.
const ANTHROPIC_SERVICE_TIERS: [&str; 2] = ["auto", "standard_only"];

pub(crate) struct EncodeOptions<'a> {
    pub model: &'a str,
    /// `max_tokens` when the request names no output cap (Anthropic requires one).
    pub default_max_tokens: u32,
}

pub(crate) fn encode_request<'a>(
    req: &'a ChatRequest,
    opts: &EncodeOptions<'a>,
) -> Result<AnthropicRequest<'a>, Error> {
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<AnthropicMessage> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role {
            Role::System | Role::Developer => {
                system_blocks(m, &mut system)?;
                continue;
            }
            Role::Assistant => "assistant",
            Role::User | Role::Tool => "user",
        };
        let blocks = turn_blocks(m, &mut messages, &mut system)?;
        // A turn left empty (only an unsigned reasoning part, only empty text) is not sent:
        // Anthropic rejects empty content, and its neighbours then merge.
        if blocks.is_empty() {
            continue;
        }
        if messages.last().is_some_and(|last| last.role == role) {
            if let Some(last) = messages.last_mut() {
                last.content.extend(blocks);
            }
        } else {
            messages.push(AnthropicMessage {
                role,
                content: blocks,
            });
        }
    }
    // Tool results must open their user turn; text a client put before them moves after them.
    for m in &mut messages {
        if m.role == "user" && m.content.iter().any(is_tool_result) {
            m.content.sort_by_key(|b| !is_tool_result(b));
        }
    }

    let (max_tokens, budget) =
        crate::claude::thinking_budget(req, Some(opts.default_max_tokens), "anthropic")?;
    let max_tokens = max_tokens.unwrap_or(opts.default_max_tokens);
    let thinking = budget.map(|budget_tokens| AnthropicThinking {
        kind: "enabled",
        budget_tokens,
    });
    let output_config = match &req.response_format {
        None | Some(ResponseFormat::Text) => None,
        // Anthropic has no "any JSON object" mode; only a schema constrains its output.
        Some(ResponseFormat::JsonObject) => {
            return Err(Error::unsupported(
                "response_format json_object is not supported by the anthropic provider; \
                 use json_schema with a schema",
            ));
        }
        // `output_config.format` (the successor of the deprecated `output_format`) takes the
        // schema alone: the name and description have no field, and decoding is always strict.
        Some(ResponseFormat::JsonSchema {
            schema: Some(schema),
            ..
        }) => Some(AnthropicOutputConfig {
            format: AnthropicOutputFormat {
                kind: "json_schema",
                schema,
            },
        }),
        Some(ResponseFormat::JsonSchema { schema: None, .. }) => {
            return Err(Error::unsupported(
                "response_format json_schema without a schema is not supported by the anthropic \
                 provider",
            ));
        }
    };

    // OpenAI documents `seed` as best effort ("determinism is not guaranteed"), so no client can
    // rely on it; refusing it would fail every seeded request that fails over to Anthropic, and
    // a backup must be able to take over. Anthropic has no equivalent: the hint is dropped, and
    // the debug log says so.
    if req.seed.is_some() {
        tracing::debug!(
            field = "seed",
            "request field dropped: the anthropic provider has no equivalent"
        );
    }
    let mut extra = Map::new();
    for (key, value) in &req.extra {
        let forwarded = FORWARDED_EXTRAS.contains(&key.as_str())
            || (FAMILY_EXTRAS.contains(&key.as_str()) && req.extra_family == Some(FAMILY))
            || (key == "service_tier"
                && value
                    .as_str()
                    .is_some_and(|v| ANTHROPIC_SERVICE_TIERS.contains(&v)));
        if forwarded {
            extra.insert(key.clone(), value.clone());
        } else {
            tracing::debug!(field = %key, "request field dropped: not an Anthropic request field");
        }
    }

    // Anthropic's metadata takes only `user_id`; OpenAI-style metadata is a bag of labels for
    // the vendor's dashboard, with no effect on the answer, so its other keys are not sent.
    let user_id = req.user.as_deref().or_else(|| {
        req.metadata
            .as_ref()
            .and_then(|m| m.get("user_id"))
            .and_then(Value::as_str)
    });

    Ok(AnthropicRequest {
        model: opts.model,
        max_tokens,
        system,
        messages,
        tools: req.tools.iter().map(tool).collect(),
        tool_choice: tool_choice(req),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop_sequences: &req.stop,
        stream: req.stream,
        metadata: user_id.map(|user_id| AnthropicMetadata { user_id }),
        thinking,
        output_config,
        extra,
    })
}

fn tool(t: &Tool) -> AnthropicTool<'_> {
    AnthropicTool {
        name: &t.name,
        description: t.description.as_deref(),
        input_schema: input_schema(t.parameters.as_ref()),
        strict: t.strict,
        cache_control: t.cache.as_ref().map(cache_control),
    }
}

/// Anthropic requires an object schema with `"type": "object"`; OpenAI clients may send none, or
/// `{}` for a tool without arguments.
fn input_schema(parameters: Option<&Value>) -> Cow<'_, Value> {
    match parameters {
        Some(p) if p.get("type").is_some() => Cow::Borrowed(p),
        Some(Value::Object(map)) => {
            let mut map = map.clone();
            map.insert("type".to_owned(), Value::String("object".to_owned()));
            Cow::Owned(Value::Object(map))
        }
        _ => Cow::Owned(json!({"type": "object"})),
    }
}

fn tool_choice(req: &ChatRequest) -> Option<Value> {
    let serial = req.parallel_tool_calls == Some(false);
    // Anthropic rejects a tool_choice without tools; for these choices leaving it out means the
    // same. A forced choice without tools is the client's error and goes up for Anthropic to say.
    if req.tools.is_empty()
        && matches!(
            req.tool_choice,
            None | Some(ToolChoice::Auto | ToolChoice::None)
        )
    {
        return None;
    }
    let mut choice = match &req.tool_choice {
        None if !serial => return None,
        None | Some(ToolChoice::Auto) => json!({"type": "auto"}),
        Some(ToolChoice::Required) => json!({"type": "any"}),
        Some(ToolChoice::Tool(name)) => json!({"type": "tool", "name": name}),
        // `none` takes no `disable_parallel_tool_use`: with no calls there is nothing to serialise.
        Some(ToolChoice::None) => return Some(json!({"type": "none"})),
    };
    if serial {
        if let Some(map) = choice.as_object_mut() {
            map.insert("disable_parallel_tool_use".to_owned(), Value::Bool(true));
        }
    }
    Some(choice)
}

/// Blocks of a system or developer message, appended to the top-level `system`.
fn system_blocks(m: &Message, system: &mut Vec<Value>) -> Result<(), Error> {
    for part in &m.content {
        match part {
            ContentPart::CacheBreakpoint(cc) => {
                mark_last_cacheable(system.iter_mut().rev(), &cache_control(cc));
            }
            ContentPart::Text(_) | ContentPart::Opaque { .. } => {
                if let Some(block) = content_block(part)? {
                    system.push(block);
                }
            }
            other => {
                return Err(Error::unsupported(format!(
                    "a {} part in a {} message is not supported by the anthropic provider, \
                     whose system prompt holds only text",
                    other.kind_name(),
                    m.role.as_str()
                )));
            }
        }
    }
    Ok(())
}

/// Blocks of a user, assistant or tool message. A cache breakpoint marks the block before it:
/// in this message, else in the turns already built, else in the system prompt.
fn turn_blocks(
    m: &Message,
    messages: &mut [AnthropicMessage],
    system: &mut [Value],
) -> Result<Vec<Value>, Error> {
    let mut blocks: Vec<Value> = Vec::with_capacity(m.content.len());
    for part in &m.content {
        if let ContentPart::CacheBreakpoint(cc) = part {
            let earlier = blocks
                .iter_mut()
                .rev()
                .chain(
                    messages
                        .iter_mut()
                        .rev()
                        .flat_map(|turn| turn.content.iter_mut().rev()),
                )
                .chain(system.iter_mut().rev());
            mark_last_cacheable(earlier, &cache_control(cc));
        } else if let Some(block) = content_block(part)? {
            blocks.push(block);
        }
    }
    Ok(blocks)
}

/// One canonical part as an Anthropic content block; `None` for parts that are not sent.
fn content_block(part: &ContentPart) -> Result<Option<Value>, Error> {
    Ok(Some(match part {
        // Anthropic rejects empty text blocks.
        ContentPart::Text(t) if t.is_empty() => return Ok(None),
        ContentPart::Text(t) => json!({"type": "text", "text": t}),
        // `detail` (OpenAI's resolution hint) has no Anthropic counterpart; the image is the same.
        ContentPart::Image { source, .. } => match source {
            ImageSource::Url(url) => {
                json!({"type": "image", "source": {"type": "url", "url": url}})
            }
            ImageSource::Base64 { media_type, data } => json!({
                "type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data},
            }),
        },
        ContentPart::ToolCall(call) => {
            let input = Value::Object(call.arguments_object()?);
            json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input})
        }
        ContentPart::ToolResult {
            call_id,
            content,
            is_error,
        } => {
            let mut block = Map::new();
            block.insert("type".to_owned(), Value::from("tool_result"));
            block.insert("tool_use_id".to_owned(), Value::from(call_id.as_str()));
            // `content` is optional, and an empty string is not a useful one.
            if !content.is_empty() {
                block.insert("content".to_owned(), Value::from(content.as_str()));
            }
            if *is_error {
                block.insert("is_error".to_owned(), Value::Bool(true));
            }
            Value::Object(block)
        }
        // Anthropic verifies the signature of every thinking block sent back and rejects a block
        // without one. Reasoning without a signature comes from another vendor (an OpenAI client's
        // `reasoning_content`, say): it cannot be replayed as thinking, and sending it as text
        // would put words in the assistant's mouth, so it is left out.
        ContentPart::Reasoning {
            text,
            signature: Some(signature),
        } if !signature.is_empty() => json!({
            "type": "thinking",
            "thinking": text,
            "signature": signature,
        }),
        ContentPart::Reasoning { .. } => return Ok(None),
        ContentPart::Document {
            data,
            file_id,
            filename,
        } => document(data.as_deref(), file_id.as_deref(), filename.as_deref())?,
        ContentPart::Opaque { family, value } => {
            if *family != "anthropic" {
                return Err(Error::unsupported(format!(
                    "a {family} content part is not supported by the anthropic provider"
                )));
            }
            value.clone()
        }
        // Placed by the caller on the block before it.
        ContentPart::CacheBreakpoint(_) => return Ok(None),
    }))
}

/// A document as a base64 PDF source, the one inline binary form Anthropic takes (plain text
/// would need decoding here, and Anthropic's file ids are a beta of its own: neither an OpenAI
/// file id nor a text file can be passed on as they are).
fn document(
    data: Option<&str>,
    file_id: Option<&str>,
    filename: Option<&str>,
) -> Result<Value, Error> {
    let Some(data) = data else {
        let what = file_id.map_or_else(String::new, |id| format!(" '{id}'"));
        return Err(Error::unsupported(format!(
            "a document given by file id{what} is not supported by the anthropic provider; \
             send its data"
        )));
    };
    // A `data:` URL names its type; bare base64 is taken for a PDF.
    let (media_type, payload) = match data.strip_prefix("data:") {
        Some(rest) => {
            let (meta, payload) = rest.split_once(',').ok_or_else(|| {
                Error::bad_request("a document's data URL has no comma before its data")
            })?;
            let media_type = meta.strip_suffix(";base64").ok_or_else(|| {
                Error::bad_request("a document's data URL must be base64 encoded")
            })?;
            (media_type, payload)
        }
        None => ("application/pdf", data),
    };
    if media_type != "application/pdf" {
        return Err(Error::unsupported(format!(
            "a document of type '{media_type}' is not supported by the anthropic provider, \
             which takes inline documents as PDF"
        )));
    }
    let mut block = json!({
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": payload},
    });
    if let (Some(name), Some(map)) = (filename, block.as_object_mut()) {
        map.insert("title".to_owned(), Value::from(name));
    }
    Ok(block)
}

fn cache_control(cc: &CacheControl) -> Value {
    match &cc.ttl {
        Some(ttl) => json!({"type": "ephemeral", "ttl": ttl}),
        None => json!({"type": "ephemeral"}),
    }
}

/// Put `cache_control` on the first block of `blocks` (walked backwards from the breakpoint)
/// that accepts one. Thinking blocks do not: a breakpoint right after one moves to the block
/// before it, which caches a slightly shorter prefix instead of failing the request. A
/// breakpoint with nothing before it marks nothing.
fn mark_last_cacheable<'v>(blocks: impl Iterator<Item = &'v mut Value>, cc: &Value) -> bool {
    for block in blocks {
        let Some(map) = block.as_object_mut() else {
            continue;
        };
        if matches!(
            map.get("type").and_then(Value::as_str),
            Some("thinking" | "redacted_thinking")
        ) {
            continue;
        }
        map.insert("cache_control".to_owned(), cc.clone());
        return true;
    }
    false
}

fn is_tool_result(block: &Value) -> bool {
    block.get("type").and_then(Value::as_str) == Some("tool_result")
}
