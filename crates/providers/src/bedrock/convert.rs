//! Canonical request → Bedrock Converse request body.
//!
//! Where the two models differ, and what was decided:
//! - System and developer messages, wherever they stand, become the top-level `system` blocks.
//! - Converse wants alternating turns, with tool results inside the user turn that follows the
//!   assistant's tool calls: tool messages become user turns, consecutive turns of one role are
//!   merged, and tool results open their turn (Claude requires it).
//! - A cache breakpoint becomes a `cachePoint` block right after the block before it, wherever
//!   that block landed (system, an earlier turn, or tools), with the client's TTL.
//! - Images and documents travel inline as base64 (`source.bytes`); image URLs cannot (Converse
//!   takes only bytes or S3 locations) and are refused.
//! - Converse has no member for `top_k` nor for thinking: for Claude models (a model id naming
//!   `anthropic.claude`, which base ids, cross-region profiles and their ARNs do) they go in
//!   `additionalModelRequestFields` as Anthropic's `top_k` and `thinking`, which Bedrock passes
//!   to the model; for any other model they are refused, since each family spells them
//!   differently and a wrong guess is a 400 from Bedrock at best.
//! - Converse's tool choices are `auto`, `any` and `tool`; it has no `none`. A `none` choice is
//!   sent as no tools at all, which means the same, unless the conversation already holds tool
//!   calls or results: Bedrock then requires the tools, so it is refused. It has no way to
//!   forbid parallel calls either: `parallel_tool_calls: false` is refused.
//! - Structured output: `json_schema` maps exactly to `outputConfig.textFormat`; `json_object`
//!   has no equivalent and is refused.

use std::borrow::Cow;

use relais_core::{
    CacheControl, ChatRequest, ContentPart, Error, ImageSource, Message, ResponseFormat, Role,
    ToolChoice,
};
use serde_json::{Map, Value, json};

use super::wire::{
    BedrockInferenceConfig, BedrockInputSchema, BedrockMessage, BedrockRequest, BedrockTool,
    BedrockToolConfig, BedrockToolSpec,
};

/// Members of Converse's request that relais has no canonical meaning for, forwarded from
/// `extra` (an OpenAI client's `extra_body`, say). Only camelCase names no other vendor uses are
/// listed, so a field meant for another vendor never reaches Bedrock, which rejects unknown
/// members. `additionalModelRequestFields` is merged with the fields relais sets there.
const FORWARDED_EXTRAS: [&str; 5] = [
    "guardrailConfig",
    "performanceConfig",
    "requestMetadata",
    "additionalModelResponseFieldPaths",
    "serviceTier",
];
const ADDITIONAL_FIELDS: &str = "additionalModelRequestFields";

pub(crate) struct EncodeOptions<'a> {
    /// The Bedrock model id (or ARN), which decides the model-specific fields.
    pub model: &'a str,
    /// `maxTokens` when the request names no output cap; `None` leaves it to Bedrock.
    pub default_max_tokens: Option<u32>,
}

pub(crate) fn encode_request<'a>(
    req: &'a ChatRequest,
    opts: &EncodeOptions<'_>,
) -> Result<BedrockRequest<'a>, Error> {
    crate::drop_vendor_beta(req, "bedrock");
    let claude = is_claude(opts.model);
    let mut system: Vec<Value> = Vec::new();
    let mut messages: Vec<BedrockMessage> = Vec::with_capacity(req.messages.len());
    let mut names = DocumentNames::default();
    for m in &req.messages {
        let role = match m.role {
            Role::System | Role::Developer => {
                system_blocks(m, &mut system)?;
                continue;
            }
            Role::Assistant => "assistant",
            Role::User | Role::Tool => "user",
        };
        let blocks = turn_blocks(m, &mut messages, &mut system, &mut names)?;
        // A turn left empty (only an unsigned reasoning part, only blank text) is not sent:
        // Bedrock rejects empty content, and its neighbours then merge.
        if blocks.is_empty() {
            continue;
        }
        if messages.last().is_some_and(|last| last.role == role) {
            if let Some(last) = messages.last_mut() {
                last.content.extend(blocks);
            }
        } else {
            messages.push(BedrockMessage {
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

    let mut additional = Map::new();
    if let Some(Value::Object(fields)) = req.extra.get(ADDITIONAL_FIELDS) {
        additional.extend(fields.clone());
    }
    let (max_tokens, thinking) =
        crate::claude::thinking_budget(req, opts.default_max_tokens, "bedrock")?;
    if let Some(budget_tokens) = thinking {
        if !claude {
            return Err(needs_claude("reasoning", opts.model).with_param("reasoning_effort"));
        }
        additional.insert(
            "thinking".to_owned(),
            json!({"type": "enabled", "budget_tokens": budget_tokens}),
        );
    }
    if let Some(top_k) = req.top_k {
        if !claude {
            return Err(needs_claude("top_k", opts.model).with_param("top_k"));
        }
        additional.insert("top_k".to_owned(), Value::from(top_k));
    }

    // OpenAI documents `seed` as best effort, so no client can rely on it, and refusing it would
    // fail every seeded request that fails over to Bedrock. Converse has no equivalent: the hint
    // is dropped, and the debug log says so. `user` and `metadata` label a request for the
    // vendor's dashboard and change nothing in the answer; Converse's `requestMetadata` has a
    // restricted alphabet, so they are not sent (a client may send `requestMetadata` itself).
    for (field, present) in [
        ("seed", req.seed.is_some()),
        ("user", req.user.is_some()),
        ("metadata", req.metadata.is_some()),
    ] {
        if present {
            tracing::debug!(
                field,
                "request field dropped: the bedrock provider has no equivalent"
            );
        }
    }
    let mut extra = Map::new();
    for (key, value) in &req.extra {
        if FORWARDED_EXTRAS.contains(&key.as_str()) {
            extra.insert(key.clone(), value.clone());
        } else if key != ADDITIONAL_FIELDS {
            tracing::debug!(field = %key, "request field dropped: not a Converse request field");
        }
    }

    let inference = BedrockInferenceConfig {
        max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop_sequences: &req.stop,
    };
    Ok(BedrockRequest {
        messages,
        system,
        inference_config: (!inference.is_empty()).then_some(inference),
        tool_config: tool_config(req)?,
        additional_model_request_fields: additional,
        output_config: output_config(req.response_format.as_ref())?,
        extra,
    })
}

/// Whether `model` names an Anthropic Claude model: a base model id
/// (`anthropic.claude-sonnet-4-...`), a cross-region inference profile
/// (`us.anthropic.claude-...`, `global.anthropic.claude-...`) or an ARN of either. An
/// application inference profile's ARN does not say which model it serves, so it is not one.
pub(crate) fn is_claude(model: &str) -> bool {
    model.contains("anthropic.claude")
}

fn needs_claude(feature: &str, model: &str) -> Error {
    Error::unsupported(format!(
        "{feature} is supported by the bedrock provider only for Anthropic Claude models (a model \
         id naming anthropic.claude); '{model}' is not one"
    ))
}

fn tool_config(req: &ChatRequest) -> Result<Option<BedrockToolConfig<'_>>, Error> {
    if req.tools.is_empty() {
        // `toolConfig` needs at least one tool; a forced choice without any is the client's
        // error, said here more clearly than Bedrock would.
        if matches!(
            req.tool_choice,
            Some(ToolChoice::Required | ToolChoice::Tool(_))
        ) {
            return Err(Error::bad_request(
                "tool_choice forces a tool call, but the request has no tools",
            )
            .with_param("tool_choice"));
        }
        return Ok(None);
    }
    let choice = match &req.tool_choice {
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"auto": {}})),
        Some(ToolChoice::Required) => Some(json!({"any": {}})),
        Some(ToolChoice::Tool(name)) => Some(json!({"tool": {"name": name}})),
        Some(ToolChoice::None) => {
            if has_tool_history(req) {
                return Err(Error::unsupported(
                    "tool_choice none is not supported by the bedrock provider when the \
                     conversation holds tool calls: Converse has no 'none' choice and requires \
                     the tools with tool history",
                )
                .with_param("tool_choice"));
            }
            // Tools the model may not call are tools it is not offered.
            return Ok(None);
        }
    };
    if req.parallel_tool_calls == Some(false) {
        return Err(Error::unsupported(
            "parallel_tool_calls false is not supported by the bedrock provider: Converse cannot \
             limit a response to one tool call",
        )
        .with_param("parallel_tool_calls"));
    }
    let mut tools = Vec::with_capacity(req.tools.len());
    for t in &req.tools {
        tools.push(BedrockTool::ToolSpec(BedrockToolSpec {
            name: &t.name,
            // Converse rejects an empty description.
            description: t.description.as_deref().filter(|d| !d.is_empty()),
            input_schema: BedrockInputSchema {
                json: input_schema(t.parameters.as_ref()),
            },
            strict: t.strict,
        }));
        if let Some(cc) = &t.cache {
            tools.push(BedrockTool::CachePoint(cache_point_body(cc)));
        }
    }
    Ok(Some(BedrockToolConfig {
        tools,
        tool_choice: choice,
    }))
}

fn has_tool_history(req: &ChatRequest) -> bool {
    req.messages
        .iter()
        .flat_map(|m| m.content.iter())
        .any(|p| matches!(p, ContentPart::ToolCall(_) | ContentPart::ToolResult { .. }))
}

/// Claude requires an object schema with `"type": "object"`; OpenAI clients may send none, or
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

fn output_config(format: Option<&ResponseFormat>) -> Result<Option<Value>, Error> {
    match format {
        None | Some(ResponseFormat::Text) => Ok(None),
        Some(ResponseFormat::JsonObject) => Err(Error::unsupported(
            "response_format json_object is not supported by the bedrock provider; use \
             json_schema with a schema",
        )
        .with_param("response_format")),
        Some(ResponseFormat::JsonSchema { schema: None, .. }) => Err(Error::unsupported(
            "response_format json_schema without a schema is not supported by the bedrock \
             provider",
        )
        .with_param("response_format")),
        Some(ResponseFormat::JsonSchema {
            name,
            schema: Some(schema),
            description,
            ..
        }) => {
            let mut definition = Map::new();
            // Converse takes the schema as JSON text, not as an object. Decoding is always
            // constrained, so `strict` has nothing to add.
            definition.insert("schema".to_owned(), Value::String(schema.to_string()));
            if !name.is_empty() {
                definition.insert("name".to_owned(), Value::from(name.as_str()));
            }
            if let Some(d) = description.as_deref().filter(|d| !d.is_empty()) {
                definition.insert("description".to_owned(), Value::from(d));
            }
            Ok(Some(json!({
                "textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}
            })))
        }
    }
}

/// Blocks of a system or developer message, appended to the top-level `system`.
fn system_blocks(m: &Message, system: &mut Vec<Value>) -> Result<(), Error> {
    for part in &m.content {
        match part {
            // Converse rejects blank text.
            ContentPart::Text(t) if t.trim().is_empty() => {}
            ContentPart::Text(t) => system.push(json!({"text": t})),
            ContentPart::CacheBreakpoint(cc) => {
                place_cache_point(system, cc);
            }
            other => {
                return Err(Error::unsupported(format!(
                    "a {} part in a {} message is not supported by the bedrock provider, whose \
                     system prompt holds only text",
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
    messages: &mut [BedrockMessage],
    system: &mut Vec<Value>,
    names: &mut DocumentNames,
) -> Result<Vec<Value>, Error> {
    let mut blocks: Vec<Value> = Vec::with_capacity(m.content.len());
    for part in &m.content {
        if let ContentPart::CacheBreakpoint(cc) = part {
            let placed = place_cache_point(&mut blocks, cc)
                || messages
                    .iter_mut()
                    .rev()
                    .any(|turn| place_cache_point(&mut turn.content, cc));
            if !placed {
                place_cache_point(system, cc);
            }
        } else if let Some(block) = content_block(part, names)? {
            blocks.push(block);
        }
    }
    Ok(blocks)
}

/// One canonical part as a Converse content block; `None` for parts that are not sent.
fn content_block(part: &ContentPart, names: &mut DocumentNames) -> Result<Option<Value>, Error> {
    Ok(Some(match part {
        // Converse rejects blank text.
        ContentPart::Text(t) if t.trim().is_empty() => return Ok(None),
        ContentPart::Text(t) => json!({"text": t}),
        // `detail` (OpenAI's resolution hint) has no counterpart; the image is the same.
        ContentPart::Image { source, .. } => image(source)?,
        ContentPart::ToolCall(call) => {
            let input = Value::Object(call.arguments_object()?);
            json!({"toolUse": {"toolUseId": call.id, "name": call.name, "input": input}})
        }
        ContentPart::ToolResult {
            call_id,
            content,
            is_error,
        } => {
            let mut result = Map::new();
            result.insert("toolUseId".to_owned(), Value::from(call_id.as_str()));
            // `content` is required, but a blank text block is rejected: an empty result is an
            // empty list.
            let blocks = if content.trim().is_empty() {
                Vec::new()
            } else {
                vec![json!({"text": content})]
            };
            result.insert("content".to_owned(), Value::Array(blocks));
            // `status` exists only for Claude and Nova; it is sent only when it says something.
            if *is_error {
                result.insert("status".to_owned(), Value::from("error"));
            }
            json!({"toolResult": result})
        }
        // Claude verifies the signature of every reasoning block sent back and rejects one
        // without it. Reasoning without a signature comes from another vendor: it cannot be
        // replayed as reasoning, and sending it as text would put words in the assistant's
        // mouth, so it is left out.
        ContentPart::Reasoning {
            text,
            signature: Some(signature),
        } if !signature.is_empty() => json!({
            "reasoningContent": {"reasoningText": {"text": text, "signature": signature}}
        }),
        ContentPart::Reasoning { .. } => return Ok(None),
        ContentPart::Document {
            data,
            file_id,
            filename,
        } => document(
            data.as_deref(),
            file_id.as_deref(),
            filename.as_deref(),
            names,
        )?,
        ContentPart::Opaque { family, .. } => {
            return Err(Error::unsupported(format!(
                "a {family} content part is not supported by the bedrock provider"
            )));
        }
        // Placed by the caller after the block before it.
        ContentPart::CacheBreakpoint(_) => return Ok(None),
    }))
}

fn image(source: &ImageSource) -> Result<Value, Error> {
    match source {
        ImageSource::Url(_) => Err(Error::unsupported(
            "image URLs are not supported by the bedrock provider, which takes images inline; \
             send the image as base64 data",
        )),
        ImageSource::Base64 { media_type, data } => {
            let format = match media_type.to_ascii_lowercase().as_str() {
                "image/png" => "png",
                "image/jpeg" | "image/jpg" => "jpeg",
                "image/gif" => "gif",
                "image/webp" => "webp",
                other => {
                    return Err(Error::unsupported(format!(
                        "an image of type '{other}' is not supported by the bedrock provider; \
                         use png, jpeg, gif or webp"
                    )));
                }
            };
            Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
        }
    }
}

/// A document as inline bytes. A `data:` URL names its type; bare base64 is taken for a PDF.
fn document(
    data: Option<&str>,
    file_id: Option<&str>,
    filename: Option<&str>,
    names: &mut DocumentNames,
) -> Result<Value, Error> {
    let Some(data) = data else {
        let what = file_id.map_or_else(String::new, |id| format!(" '{id}'"));
        return Err(Error::unsupported(format!(
            "a document given by file id{what} is not supported by the bedrock provider; send \
             its data"
        )));
    };
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
    let format = document_format(media_type).ok_or_else(|| {
        Error::unsupported(format!(
            "a document of type '{media_type}' is not supported by the bedrock provider; use \
             pdf, csv, doc, docx, xls, xlsx, html, txt or md"
        ))
    })?;
    Ok(json!({
        "document": {"format": format, "name": names.name_for(filename), "source": {"bytes": payload}}
    }))
}

/// Converse's `DocumentFormat` for a media type.
fn document_format(media_type: &str) -> Option<&'static str> {
    Some(match media_type.to_ascii_lowercase().as_str() {
        "application/pdf" => "pdf",
        "text/csv" => "csv",
        "application/msword" => "doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "application/vnd.ms-excel" => "xls",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
        "text/html" => "html",
        "text/plain" => "txt",
        "text/markdown" => "md",
        _ => return None,
    })
}

/// Document names given so far in one request.
#[derive(Default)]
struct DocumentNames {
    used: Vec<String>,
}

impl DocumentNames {
    /// A name Converse accepts (ASCII letters and digits, single spaces, `-()[]`, at most 200
    /// characters), from the file name without its extension, unique within the request.
    fn name_for(&mut self, filename: Option<&str>) -> String {
        let stem = filename
            .map(|f| match f.rsplit_once('.') {
                Some((stem, _)) if !stem.is_empty() => stem,
                _ => f,
            })
            .unwrap_or_default();
        let mut name = String::with_capacity(stem.len());
        for c in stem.chars() {
            if c.is_whitespace() {
                if !name.is_empty() && !name.ends_with(' ') {
                    name.push(' ');
                }
            } else if c.is_ascii_alphanumeric() || matches!(c, '-' | '(' | ')' | '[' | ']') {
                name.push(c);
            } else {
                name.push('-');
            }
        }
        // Room for a " (NN)" suffix below the limit of 200.
        let mut name: String = name.trim_end().chars().take(190).collect();
        let kept = name.trim_end().len();
        name.truncate(kept);
        if name.is_empty() {
            name.push_str("document");
        }
        let mut unique = name.clone();
        let mut n = 2;
        while self.used.contains(&unique) {
            unique = format!("{name} ({n})");
            n += 1;
        }
        self.used.push(unique.clone());
        unique
    }
}

fn cache_point_body(cc: &CacheControl) -> Value {
    match &cc.ttl {
        Some(ttl) => json!({"type": "default", "ttl": ttl}),
        None => json!({"type": "default"}),
    }
}

/// Insert a `cachePoint` after the last block of `blocks` that can end a cached prefix.
/// Reasoning blocks cannot (Claude takes no cache marker on thinking): a breakpoint right after
/// one moves before it, which caches a slightly shorter prefix instead of failing the request.
/// `false` when no block qualifies.
fn place_cache_point(blocks: &mut Vec<Value>, cc: &CacheControl) -> bool {
    let Some(pos) = blocks.iter().rposition(is_cacheable) else {
        return false;
    };
    // A point right after that block already marks the same prefix.
    if !blocks.get(pos + 1).is_some_and(is_cache_point) {
        blocks.insert(pos + 1, json!({"cachePoint": cache_point_body(cc)}));
    }
    true
}

fn is_cacheable(block: &Value) -> bool {
    block.get("reasoningContent").is_none() && !is_cache_point(block)
}

fn is_cache_point(block: &Value) -> bool {
    block.get("cachePoint").is_some()
}

fn is_tool_result(block: &Value) -> bool {
    block.get("toolResult").is_some()
}
