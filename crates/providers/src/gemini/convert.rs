//! Canonical request → Gemini `GenerateContentRequest`, and embeddings both ways.
//!
//! Where the two models differ:
//! - System and developer messages, wherever they stand, become the one `systemInstruction`.
//! - Turns are `user` and `model`; tool results are `functionResponse` parts of a user turn, and
//!   Gemini wants all the responses to one model turn's calls together, so consecutive turns of
//!   one role are merged and the responses open their turn.
//! - A `functionResponse` names its function, not a call id: the name is found from the call with
//!   that id earlier in the history (nearest first).
//! - Thought signatures. Gemini signs its reasoning and wants the signature back on the part it
//!   came with (required on function calls by Gemini 3, which answers 400 without it). The decoder
//!   turns a signature into a signed reasoning part right before its part (see `stream.rs`), so
//!   here a signed reasoning part gives its signature to the part after it in the same message,
//!   or, when none follows (a streamed text's signature arrives after the text), to the part
//!   before it. The reasoning text is not sent: Gemini's thought summaries are for reading, and
//!   the signature carries what the model needs. A model turn whose function calls carry no
//!   signature at all (history from another vendor, or from a client API without signatures)
//!   gets Google's documented placeholder `skip_thought_signature_validator` on its first call,
//!   which Gemini 3 accepts in place of a real one and earlier models ignore.
//! - Cache breakpoints are skipped: Gemini caches prompt prefixes on its own, and reports the
//!   cached tokens in usage.

use std::borrow::Cow;

use relais_core::{
    ChatRequest, ContentPart, EmbedRequest, Error, ImageSource, Message, Reasoning, ResponseFormat,
    Role, ToolCall, ToolChoice,
};
use serde_json::{Map, Value, json};

use super::wire::{
    GeminiContent, GeminiFunctionDeclaration, GeminiGenerationConfig, GeminiRequest,
    GeminiThinkingConfig, GeminiTool,
};

/// Google's documented stand-in for a thought signature on a function call Gemini did not make.
pub(crate) const PLACEHOLDER_SIGNATURE: &str = "skip_thought_signature_validator";

/// Gemini's own request fields that relais has no canonical meaning for, forwarded from `extra`.
/// Their camelCase names belong to no other vendor's API, so a field meant for another vendor
/// cannot reach Gemini, whose request schema rejects unknown fields. Everything else in `extra`
/// is dropped.
const FORWARDED_EXTRAS: [&str; 2] = ["safetySettings", "cachedContent"];
/// Vertex also takes billing `labels`; AI Studio rejects the field.
const FORWARDED_EXTRAS_VERTEX: [&str; 1] = ["labels"];

/// Whether `field` of `extra` reaches a Gemini upstream (Vertex's or AI Studio's).
pub(crate) fn forwards(field: &str, vertex: bool) -> bool {
    FORWARDED_EXTRAS.contains(&field) || (vertex && FORWARDED_EXTRAS_VERTEX.contains(&field))
}

pub(crate) struct EncodeOptions {
    /// Vertex AI rather than AI Studio.
    pub vertex: bool,
}

pub(crate) fn encode_request<'a>(
    req: &'a ChatRequest,
    opts: &EncodeOptions,
) -> Result<GeminiRequest<'a>, Error> {
    crate::drop_vendor_beta(req, "gemini");
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<GeminiContent> = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role {
            Role::System | Role::Developer => {
                system_parts(m, &mut system)?;
                continue;
            }
            Role::Assistant => "model",
            Role::User | Role::Tool => "user",
        };
        let earlier = req.messages.get(..i).unwrap_or_default();
        let parts = if role == "model" {
            model_parts(m)?
        } else {
            user_parts(m, earlier)?
        };
        // A turn left empty (only unsigned reasoning, only empty text) is not sent: Gemini
        // rejects a content without parts, and its neighbours then merge.
        if parts.is_empty() {
            continue;
        }
        if contents.last().is_some_and(|last| last.role == Some(role)) {
            if let Some(last) = contents.last_mut() {
                last.parts.extend(parts);
            }
        } else {
            contents.push(GeminiContent {
                role: Some(role),
                parts,
            });
        }
    }
    for content in &mut contents {
        if content.role == Some("user") && content.parts.iter().any(is_function_response) {
            // Stable: the responses keep their order, and so does the text after them.
            content.parts.sort_by_key(|p| !is_function_response(p));
        }
        if content.role == Some("model") {
            sign_unsigned_calls(&mut content.parts);
        }
    }

    let (response_mime_type, response_json_schema) = match &req.response_format {
        None | Some(ResponseFormat::Text) => (None, None),
        Some(ResponseFormat::JsonObject) => (Some("application/json"), None),
        // Name, description and strictness have no field: Gemini's schema decoding is always
        // constrained.
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            (Some("application/json"), schema.as_ref())
        }
    };
    if req.parallel_tool_calls == Some(false) {
        // Gemini has no switch for it; the model decides how many calls a turn makes.
        tracing::debug!(
            field = "parallel_tool_calls",
            "request field dropped: the gemini provider has no equivalent"
        );
    }
    let generation_config = GeminiGenerationConfig {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        max_output_tokens: req.max_output_tokens,
        stop_sequences: &req.stop,
        // Gemini's seed is 32-bit; a wider one keeps its low bits, which still makes the same
        // request repeatable.
        seed: req.seed.map(|s| s as i32),
        response_mime_type,
        response_json_schema,
        thinking_config: thinking(req.reasoning.as_ref())?,
    };

    let mut extra = Map::new();
    for (key, value) in &req.extra {
        if forwards(key, opts.vertex) {
            extra.insert(key.clone(), value.clone());
        } else {
            tracing::debug!(field = %key, "request field dropped: not a Gemini request field");
        }
    }

    let system_instruction = if system.is_empty() {
        None
    } else {
        Some(GeminiContent {
            role: None,
            parts: system,
        })
    };
    Ok(GeminiRequest {
        contents,
        system_instruction,
        tools: tools(req),
        tool_config: tool_config(req),
        generation_config,
        extra,
    })
}

/// Thinking from the canonical reasoning options. Gemini takes a token budget (0 turns thinking
/// off, -1 lets the model choose); `includeThoughts` asks for the thought summaries, which come
/// back as reasoning.
fn thinking(reasoning: Option<&Reasoning>) -> Result<Option<GeminiThinkingConfig>, Error> {
    let Some(r) = reasoning else {
        return Ok(None);
    };
    let budget = match (r.budget_tokens, r.effort.as_deref()) {
        (Some(tokens), _) => i32::try_from(tokens).unwrap_or(i32::MAX),
        (None, Some(effort)) => effort_budget(effort)?,
        // Reasoning asked for with no size (Anthropic's adaptive thinking): the model decides.
        (None, None) => -1,
    };
    Ok(Some(GeminiThinkingConfig {
        thinking_budget: budget,
        include_thoughts: budget != 0,
    }))
}

/// Thinking budget for an effort level: the levels Google's own OpenAI-compatible endpoint maps
/// `reasoning_effort` to (low 1024, medium 8192, high 24576, the largest budget every 2.5 model
/// accepts); `minimal` gets the smallest of them and `none` turns thinking off.
fn effort_budget(effort: &str) -> Result<i32, Error> {
    Ok(match effort {
        "none" => 0,
        "minimal" | "low" => 1024,
        "medium" => 8192,
        "high" | "xhigh" | "max" => 24_576,
        other => {
            return Err(Error::unsupported(format!(
                "reasoning effort '{other}' is not supported by the gemini provider; \
                 use none, minimal, low, medium, high, xhigh or max"
            )));
        }
    })
}

fn tools(req: &ChatRequest) -> Vec<GeminiTool<'_>> {
    if req.tools.is_empty() {
        return Vec::new();
    }
    let function_declarations = req
        .tools
        .iter()
        .map(|t| GeminiFunctionDeclaration {
            name: &t.name,
            description: t.description.as_deref().filter(|d| !d.is_empty()),
            parameters_json_schema: parameters(t.parameters.as_ref()),
        })
        .collect();
    vec![GeminiTool {
        function_declarations,
    }]
}

/// A function's parameters as the object schema Gemini requires, or none for a function without
/// parameters (OpenAI clients send `{}` for those).
fn parameters(parameters: Option<&Value>) -> Option<Cow<'_, Value>> {
    match parameters {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) if map.is_empty() => None,
        Some(p) if p.get("type").is_some() => Some(Cow::Borrowed(p)),
        Some(Value::Object(map)) => {
            let mut map = map.clone();
            map.insert("type".to_owned(), Value::String("object".to_owned()));
            Some(Cow::Owned(Value::Object(map)))
        }
        Some(other) => Some(Cow::Borrowed(other)),
    }
}

fn tool_config(req: &ChatRequest) -> Option<Value> {
    // Without tools, automatic and no calls both mean what leaving the config out means. A forced
    // choice without tools is the client's error, left for Gemini to explain.
    if req.tools.is_empty()
        && matches!(
            req.tool_choice,
            None | Some(ToolChoice::Auto | ToolChoice::None)
        )
    {
        return None;
    }
    let config = match req.tool_choice.as_ref()? {
        ToolChoice::Auto => json!({"mode": "AUTO"}),
        ToolChoice::Required => json!({"mode": "ANY"}),
        ToolChoice::None => json!({"mode": "NONE"}),
        ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    };
    Some(json!({"functionCallingConfig": config}))
}

/// Parts of a system or developer message, appended to the system instruction.
fn system_parts(m: &Message, system: &mut Vec<Value>) -> Result<(), Error> {
    for part in &m.content {
        match part {
            ContentPart::Text(t) if t.is_empty() => {}
            ContentPart::Text(t) => system.push(json!({"text": t})),
            ContentPart::CacheBreakpoint(_) => {}
            other => {
                return Err(Error::unsupported(format!(
                    "a {} part in a {} message is not supported by the gemini provider, whose \
                     system instruction holds only text",
                    other.kind_name(),
                    m.role.as_str()
                )));
            }
        }
    }
    Ok(())
}

/// Parts of a user or tool message. `earlier` is the history before it, where tool results find
/// the name of their call.
fn user_parts(m: &Message, earlier: &[Message]) -> Result<Vec<Value>, Error> {
    let mut parts = Vec::with_capacity(m.content.len());
    for part in &m.content {
        match part {
            ContentPart::ToolResult {
                call_id,
                content,
                is_error,
            } => parts.push(function_response(call_id, content, *is_error, earlier)?),
            // Reasoning in a user turn has no meaning upstream.
            ContentPart::Reasoning { .. } | ContentPart::CacheBreakpoint(_) => {}
            ContentPart::ToolCall(call) => {
                return Err(Error::bad_request(format!(
                    "tool call '{}' ({}) is in a {} message; only assistant messages make calls",
                    call.id,
                    call.name,
                    m.role.as_str()
                )));
            }
            other => {
                if let Some(value) = common_part(other)? {
                    parts.push(value);
                }
            }
        }
    }
    Ok(parts)
}

/// Parts of an assistant message, with thought signatures put back on their parts.
fn model_parts(m: &Message) -> Result<Vec<Value>, Error> {
    let mut parts: Vec<Value> = Vec::with_capacity(m.content.len());
    // A signature waiting for the part after it.
    let mut signature: Option<&str> = None;
    for part in &m.content {
        let value = match part {
            ContentPart::Reasoning {
                signature: Some(s), ..
            } if !s.is_empty() => {
                // Two signatures in a row: the first had no part after it, so it belongs to
                // the one before it (a streamed text's signature, then a call's).
                if let Some(earlier) = signature.replace(s.as_str()) {
                    sign_last_unsigned(&mut parts, earlier);
                }
                continue;
            }
            ContentPart::Reasoning { .. } | ContentPart::CacheBreakpoint(_) => continue,
            ContentPart::ToolCall(call) => function_call(call)?,
            ContentPart::ToolResult { call_id, .. } => {
                return Err(Error::bad_request(format!(
                    "the result of tool call '{call_id}' is in an assistant message; results \
                     belong in tool messages"
                )));
            }
            other => match common_part(other)? {
                Some(value) => value,
                None => continue,
            },
        };
        parts.push(value);
        if let Some(s) = signature.take() {
            set_signature(parts.last_mut(), s);
        }
    }
    // A streamed text's signature comes after the text: it belongs to the part before it.
    if let Some(s) = signature {
        sign_last_unsigned(&mut parts, s);
    }
    Ok(parts)
}

/// Give `signature` to the last part, unless that part already has one.
fn sign_last_unsigned(parts: &mut [Value], signature: &str) {
    if parts
        .last()
        .is_some_and(|p| p.get("thoughtSignature").is_none())
    {
        set_signature(parts.last_mut(), signature);
    }
}

fn set_signature(part: Option<&mut Value>, signature: &str) {
    if let Some(Value::Object(map)) = part {
        map.insert(
            "thoughtSignature".to_owned(),
            Value::String(signature.to_owned()),
        );
    }
}

/// Give the first function call of a model turn the placeholder signature when no call of the
/// turn carries a real one (see the module docs).
fn sign_unsigned_calls(parts: &mut [Value]) {
    let signed = parts
        .iter()
        .any(|p| is_function_call(p) && p.get("thoughtSignature").is_some());
    if signed {
        return;
    }
    if let Some(first) = parts.iter_mut().find(|p| is_function_call(p)) {
        set_signature(Some(first), PLACEHOLDER_SIGNATURE);
    }
}

/// Text, image and document parts, the same in every turn; `None` for parts that are not sent.
fn common_part(part: &ContentPart) -> Result<Option<Value>, Error> {
    Ok(Some(match part {
        // Gemini rejects empty text parts.
        ContentPart::Text(t) if t.is_empty() => return Ok(None),
        ContentPart::Text(t) => json!({"text": t}),
        // `detail` (OpenAI's resolution hint) has no per-part counterpart; the image is the same.
        ContentPart::Image { source, .. } => image(source)?,
        ContentPart::Document {
            data,
            file_id,
            filename: _,
        } => document(data.as_deref(), file_id.as_deref())?,
        ContentPart::Opaque { family, .. } => {
            return Err(Error::unsupported(format!(
                "a {family} content part is not supported by the gemini provider"
            )));
        }
        ContentPart::CacheBreakpoint(_) | ContentPart::Reasoning { .. } => return Ok(None),
        ContentPart::ToolCall(_) | ContentPart::ToolResult { .. } => {
            return Err(Error::internal(
                "gemini: tool parts are encoded by the turn, not as common parts",
            ));
        }
    }))
}

fn inline_data(mime_type: &str, data: &str) -> Value {
    json!({"inlineData": {"mimeType": mime_type, "data": data}})
}

/// An image: inline bytes as `inlineData`; a URL as `fileData`, which Gemini fetches itself, only
/// when Google can reach it (`gs://`, `https://`) and its type can be told from its name, because
/// `fileData` needs a MIME type and guessing one wrong fails the request.
fn image(source: &ImageSource) -> Result<Value, Error> {
    let url = match source {
        ImageSource::Base64 { media_type, data } => return Ok(inline_data(media_type, data)),
        ImageSource::Url(url) => url,
    };
    if url.starts_with("data:") {
        let (mime_type, data) = data_url(url, "an image")?;
        return Ok(inline_data(mime_type, data));
    }
    let reachable = url.starts_with("gs://") || url.starts_with("https://");
    match (reachable, image_mime_type(url)) {
        (true, Some(mime_type)) => Ok(json!({"fileData": {"mimeType": mime_type, "fileUri": url}})),
        _ => Err(Error::unsupported(
            "an image URL is supported by the gemini provider only when it is gs:// or https:// \
             and ends in .png, .jpg, .jpeg, .webp, .heic or .heif; send other images inline \
             (base64)",
        )),
    }
}

/// The MIME type of an image URL, from the extension of its path.
pub(crate) fn image_mime_type(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or(path);
    let (_, extension) = name.rsplit_once('.')?;
    Some(match extension.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => return None,
    })
}

/// A document given inline, as a `data:` URL or bare base64 (taken for a PDF). Gemini reads PDFs
/// and text documents from `inlineData`; a file id belongs to another vendor's file store.
fn document(data: Option<&str>, file_id: Option<&str>) -> Result<Value, Error> {
    let Some(data) = data else {
        let what = file_id.map_or_else(String::new, |id| format!(" '{id}'"));
        return Err(Error::unsupported(format!(
            "a document given by file id{what} is not supported by the gemini provider; send \
             its data"
        )));
    };
    if data.starts_with("data:") {
        let (mime_type, payload) = data_url(data, "a document")?;
        return Ok(inline_data(mime_type, payload));
    }
    Ok(inline_data("application/pdf", data))
}

/// The MIME type and base64 payload of a `data:` URL.
fn data_url<'u>(url: &'u str, what: &str) -> Result<(&'u str, &'u str), Error> {
    let rest = url.strip_prefix("data:").unwrap_or(url);
    let (meta, payload) = rest
        .split_once(',')
        .ok_or_else(|| Error::bad_request(format!("{what}'s data URL has no comma")))?;
    let mime_type = meta
        .strip_suffix(";base64")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            Error::bad_request(format!("{what}'s data URL must be base64 with a MIME type"))
        })?;
    Ok((mime_type, payload))
}

/// A call the model made, as history: `functionCall` with its arguments object. Ids are not
/// sent: Vertex's `FunctionCall` has no such field, and Gemini matches calls to responses by
/// order and name.
fn function_call(call: &ToolCall) -> Result<Value, Error> {
    if call.name.is_empty() {
        return Err(Error::bad_request(format!(
            "tool call '{}' has no function name",
            call.id
        )));
    }
    let mut fc = Map::new();
    fc.insert("name".to_owned(), Value::String(call.name.clone()));
    // Some clients send "" for a call without arguments; Gemini sends such calls without `args`.
    let args = call.arguments_object()?;
    if !args.is_empty() {
        fc.insert("args".to_owned(), Value::Object(args));
    }
    Ok(json!({"functionCall": Value::Object(fc)}))
}

/// A tool result as `functionResponse`: `{"output": ...}`, or `{"error": ...}` for a failed call,
/// the keys Gemini's documentation names. A result that is JSON (an object or an array) is sent
/// as JSON so the model sees its structure; anything else as the text it is.
fn function_response(
    call_id: &str,
    content: &str,
    is_error: bool,
    earlier: &[Message],
) -> Result<Value, Error> {
    let name = earlier
        .iter()
        .rev()
        .flat_map(|m| m.content.iter().rev())
        .find_map(|p| match p {
            ContentPart::ToolCall(call) if call.id == call_id => Some(call.name.as_str()),
            _ => None,
        })
        .ok_or_else(|| {
            Error::bad_request(format!(
                "tool result '{call_id}' answers no earlier tool call; the gemini provider needs \
                 the call to name the function"
            ))
        })?;
    let value = match serde_json::from_str::<Value>(content) {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => v,
        _ => Value::String(content.to_owned()),
    };
    let key = if is_error { "error" } else { "output" };
    let mut response = Map::new();
    response.insert(key.to_owned(), value);
    Ok(json!({"functionResponse": {"name": name, "response": Value::Object(response)}}))
}

fn is_function_call(part: &Value) -> bool {
    part.get("functionCall").is_some()
}

fn is_function_response(part: &Value) -> bool {
    part.get("functionResponse").is_some()
}

/// The task an embedding is for (`RETRIEVAL_QUERY`, `RETRIEVAL_DOCUMENT`, ...), when a client
/// named one in `extra`.
fn task_type(req: &EmbedRequest) -> Option<&str> {
    ["taskType", "task_type"]
        .iter()
        .find_map(|k| req.extra.get(*k).and_then(Value::as_str))
}

/// AI Studio's `batchEmbedContents` body: one request per input.
pub(crate) fn studio_embed_body(model: &str, req: &EmbedRequest) -> Value {
    let requests: Vec<Value> = req
        .input
        .iter()
        .map(|text| {
            let mut r = Map::new();
            r.insert("model".to_owned(), Value::String(format!("models/{model}")));
            r.insert("content".to_owned(), json!({"parts": [{"text": text}]}));
            if let Some(task) = task_type(req) {
                r.insert("taskType".to_owned(), Value::String(task.to_owned()));
            }
            if let Some(d) = req.dimensions {
                r.insert("outputDimensionality".to_owned(), Value::from(d));
            }
            Value::Object(r)
        })
        .collect();
    json!({"requests": requests})
}

/// Vertex's `predict` body for a text-embedding model: one instance per input.
pub(crate) fn vertex_embed_body(req: &EmbedRequest) -> Value {
    let instances: Vec<Value> = req
        .input
        .iter()
        .map(|text| match task_type(req) {
            Some(task) => json!({"content": text, "task_type": task}),
            None => json!({"content": text}),
        })
        .collect();
    match req.dimensions {
        Some(d) => json!({"instances": instances, "parameters": {"outputDimensionality": d}}),
        None => json!({"instances": instances}),
    }
}
