//! Reading a `POST /v1/responses` body: the request's parameters onto [`ChatRequest`], its input
//! items (kept as JSON, for the stored conversation) onto canonical messages.

use relais_core::{
    ChatRequest, ContentPart, Error, Message, Reasoning, ResponseFormat, Role, Tool, ToolCall,
    ToolChoice,
};
use serde_json::{Map, Value, json};

use crate::openai::image_source;
use crate::parse_json;

/// A Responses request: the canonical chat request plus what only this API has.
#[derive(Debug, Clone, Default)]
pub struct ResponsesRequest {
    /// The request; its messages are the instructions (if any) and this turn's input. The
    /// history of `previous_response_id` is put in front of the input by [`with_history`].
    pub chat: ChatRequest,
    /// This turn's input as items (a string input becomes one user message item), as stored
    /// for `previous_response_id` and listed by `input_items`.
    pub input: Vec<Value>,
    pub previous_response_id: Option<String>,
    /// Store the response (the default) so a later turn or a `GET` can find it.
    pub store: bool,
    /// `background: true` (only a Responses upstream runs a response in the background).
    pub background: bool,
    /// Tools of the hosted kinds (web search, file search, code interpreter, computer use, ...),
    /// by type: only an upstream speaking Responses natively can run them.
    pub hosted_tools: Vec<String>,
    /// Names of the `custom` (free-form) tools: offered to the model as a function with one
    /// string argument `input`, and answered as `custom_tool_call` items.
    pub custom_tools: Vec<String>,
    /// Tools of a `namespace` tool, offered by a qualified name (`{namespace}__{name}`), as
    /// (qualified, namespace, name); their calls are answered with `namespace` and `name`.
    pub namespaced: Vec<(String, String, String)>,
    /// The request's settings echoed in the response object (instructions, tools, text,
    /// reasoning, sampling, metadata, ...), as the client sent them.
    pub echo: Map<String, Value>,
}

/// The request for an upstream that speaks the Responses API natively: the client's body
/// whole (hosted tools and all), its conversation expanded (`history`, the stored items, then
/// this turn's input) in place of `previous_response_id`, which that upstream does not hold.
/// The ids relais gave stored input items are left out (a stateless upstream would look them
/// up); every other id (the upstream's own, the client's) stays, as items are sent back whole.
///
/// `raw` is the request body as the client sent it (read again from its bytes, only for a route
/// that has such an upstream), `req` the same request parsed.
pub fn native_body(
    raw: &[u8],
    req: &ResponsesRequest,
    history: &[Value],
) -> Result<Map<String, Value>, Error> {
    let mut body: Map<String, Value> = parse_json(raw)?;
    for key in [
        "previous_response_id",
        "store",
        "stream",
        "stream_options",
        "background",
    ] {
        body.remove(key);
    }
    let mut input: Vec<Value> = history
        .iter()
        .map(|item| {
            let mut item = item.clone();
            if let Value::Object(m) = &mut item {
                if m.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(given_by_relais)
                {
                    m.remove("id");
                }
            }
            item
        })
        .collect();
    input.extend(req.input.iter().cloned());
    body.insert("input".into(), Value::Array(input));
    Ok(body)
}

/// The request fields echoed in the response object when the client sent them.
const ECHOED: &[&str] = &[
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "previous_response_id",
    "prompt_cache_key",
    "reasoning",
    "safety_identifier",
    "service_tier",
    "store",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
    "user",
];

/// Include values whose data relais has or that concern hosted tools it never runs (so the
/// items they add never occur); any other is refused.
const INCLUDES: &[&str] = &[
    "reasoning.encrypted_content",
    "message.input_image.image_url",
    "web_search_call.action.sources",
    "web_search_call.results",
    "file_search_call.results",
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
];

/// The argument schema a `custom` tool is offered with to a model that only knows functions.
pub(crate) fn custom_tool_parameters() -> Value {
    json!({
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The tool's whole input, as free text."}},
        "required": ["input"],
        "additionalProperties": false
    })
}

fn bad(param: &str, msg: impl Into<String>) -> Error {
    Error::bad_request(msg).with_param(param)
}

fn unsupported(param: &str, msg: impl Into<String>) -> Error {
    Error::unsupported(msg).with_param(param)
}

/// Decode a `/v1/responses` body (or `/v1/responses/input_tokens`'s, where `model` may be absent
/// and `stream` means nothing).
pub fn parse_responses(body: &[u8]) -> Result<ResponsesRequest, Error> {
    let Value::Object(mut body) = parse_json::<Value>(body)? else {
        return Err(bad("", "the request body must be a JSON object"));
    };
    let mut out = ResponsesRequest {
        store: true,
        ..ResponsesRequest::default()
    };
    for key in ECHOED {
        if let Some(v) = body.get(*key).filter(|v| !v.is_null()) {
            out.echo.insert((*key).to_owned(), v.clone());
        }
    }
    let mut chat = ChatRequest {
        extra_family: Some("openai"),
        ..ChatRequest::default()
    };
    let mut instructions = None;
    let mut input = Value::Null;
    let mut tool_choice = None;
    for (key, value) in std::mem::take(&mut body) {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" => chat.model = string(&key, value)?,
            "input" => input = value,
            "instructions" => instructions = Some(string(&key, value)?),
            "previous_response_id" => out.previous_response_id = Some(string(&key, value)?),
            "tools" => {
                let Value::Array(tools) = value else {
                    return Err(bad("tools", "'tools' must be an array"));
                };
                for (i, t) in tools.into_iter().enumerate() {
                    tool(i, t, &mut chat.tools, &mut out)?;
                }
            }
            "tool_choice" => tool_choice = Some(value),
            "parallel_tool_calls" => chat.parallel_tool_calls = Some(boolean(&key, &value)?),
            "text" => chat.response_format = text_format(value)?,
            "reasoning" => chat.reasoning = reasoning(value)?,
            "max_output_tokens" => chat.max_output_tokens = Some(count(&key, &value)?),
            "temperature" => {
                let t = number(&key, &value)?;
                if !(0.0..=2.0).contains(&t) {
                    return Err(bad(&key, "'temperature' must be between 0 and 2"));
                }
                chat.temperature = Some(t);
            }
            "top_p" => {
                let p = number(&key, &value)?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(bad(&key, "'top_p' must be between 0 and 1"));
                }
                chat.top_p = Some(p);
            }
            "top_logprobs" => {
                if count(&key, &value)? > 0 {
                    return Err(unsupported(&key, "'top_logprobs' is not supported"));
                }
            }
            "metadata" => {
                let Value::Object(m) = value else {
                    return Err(bad(&key, "'metadata' must be an object"));
                };
                if m.len() > 16 || m.values().any(|v| !v.is_string()) {
                    return Err(bad(
                        &key,
                        "'metadata' holds at most 16 pairs, each value a string",
                    ));
                }
            }
            "user" => {
                let u = string(&key, value)?;
                chat.user.get_or_insert(u);
            }
            // The newer name wins over `user`.
            "safety_identifier" => chat.user = Some(string(&key, value)?),
            "store" => out.store = boolean(&key, &value)?,
            "stream" => chat.stream = boolean(&key, &value)?,
            // Options of the transport, and what a client says about itself (Codex's
            // installation and session ids): nothing an upstream answers differently for.
            "stream_options" | "client_metadata" => {}
            "background" => out.background = boolean(&key, &value)?,
            "include" => {
                let Value::Array(items) = value else {
                    return Err(bad(&key, "'include' must be an array of strings"));
                };
                for (i, v) in items.iter().enumerate() {
                    let s = v.as_str().unwrap_or_default();
                    if !INCLUDES.contains(&s) {
                        return Err(unsupported(
                            &format!("include[{i}]"),
                            format!("include value '{s}' is not supported"),
                        ));
                    }
                }
            }
            "truncation" => match value.as_str() {
                Some("disabled") => {}
                _ => {
                    return Err(unsupported(
                        &key,
                        "truncation other than 'disabled' is not supported: relais does not cut a conversation to fit",
                    ));
                }
            },
            // Chat Completions has the same fields, so an OpenAI-family upstream takes them.
            "prompt_cache_key" | "service_tier" | "prompt_cache_retention" => {
                chat.extra.insert(key, value);
            }
            "max_tool_calls" => {
                return Err(unsupported(&key, "'max_tool_calls' is not supported"));
            }
            "conversation" => {
                return Err(unsupported(
                    &key,
                    "the Conversations API is not supported; chain turns with 'previous_response_id'",
                ));
            }
            "prompt" => {
                return Err(unsupported(
                    &key,
                    "stored prompt templates are not supported",
                ));
            }
            _ => return Err(bad(&key, format!("Unknown parameter: '{key}'."))),
        }
    }
    if let Some(choice) = tool_choice {
        chat.tool_choice = Some(parse_tool_choice(choice, &chat.tools, &out)?);
    }
    out.input = match input {
        Value::Null => Vec::new(),
        Value::String(s) => vec![json!({"type": "message", "role": "user", "content": s})],
        Value::Array(items) => items,
        _ => {
            return Err(bad(
                "input",
                "'input' must be a string or an array of items",
            ));
        }
    };
    if out.input.is_empty() && out.previous_response_id.is_none() {
        return Err(bad("input", "'input' is required"));
    }
    if let Some(text) = instructions {
        chat.messages.push(Message::text(Role::System, text));
    }
    chat.messages.extend(messages(&out.input, "input")?);
    out.chat = chat;
    Ok(out)
}

/// Put the stored conversation (`items`: the earlier turns' input and output) in front of this
/// turn's input; instructions stay first, as they are not carried over from turn to turn.
pub fn with_history(req: &mut ResponsesRequest, items: &[Value]) -> Result<(), Error> {
    // A hosted tool's record (a web search an upstream ran) reaches a Responses upstream whole
    // (see `native_body`); in the canonical conversation, for any other vendor, it has no
    // form, and the answer built on it stays.
    let items: Vec<Value> = items
        .iter()
        .filter(|i| {
            let kind = i.get("type").and_then(Value::as_str).unwrap_or("message");
            matches!(
                kind,
                "message"
                    | "function_call"
                    | "function_call_output"
                    | "custom_tool_call"
                    | "custom_tool_call_output"
                    | "reasoning"
            )
        })
        .cloned()
        .collect();
    let history = messages(&items, "previous_response_id").map_err(|mut e| {
        e.message = format!("the stored conversation cannot be read: {}", e.message);
        e
    })?;
    let at = usize::from(req.echo.contains_key("instructions"));
    req.chat.messages.splice(at..at, history);
    Ok(())
}

fn string(key: &str, v: Value) -> Result<String, Error> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(bad(key, format!("'{key}' must be a string"))),
    }
}

fn boolean(key: &str, v: &Value) -> Result<bool, Error> {
    v.as_bool()
        .ok_or_else(|| bad(key, format!("'{key}' must be a boolean")))
}

fn number(key: &str, v: &Value) -> Result<f64, Error> {
    v.as_f64()
        .ok_or_else(|| bad(key, format!("'{key}' must be a number")))
}

fn count(key: &str, v: &Value) -> Result<u32, Error> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad(key, format!("'{key}' must be a non-negative integer")))
}

fn field<'v>(obj: &'v Map<String, Value>, path: &str, key: &str) -> Result<&'v str, Error> {
    obj.get(key).and_then(Value::as_str).ok_or_else(|| {
        bad(
            &format!("{path}.{key}"),
            format!("'{path}.{key}' must be a string"),
        )
    })
}

/// The name a namespaced tool is offered under: `{namespace}__{name}` (a name every vendor
/// accepts: letters, digits, `_` and `-`).
pub(crate) fn qualified(namespace: &str, name: &str) -> String {
    format!("{namespace}__{name}")
}

fn tool(
    i: usize,
    t: Value,
    tools: &mut Vec<Tool>,
    out: &mut ResponsesRequest,
) -> Result<(), Error> {
    tool_at(&format!("tools[{i}]"), t, None, tools, out)
}

fn tool_at(
    path: &str,
    t: Value,
    namespace: Option<&str>,
    tools: &mut Vec<Tool>,
    out: &mut ResponsesRequest,
) -> Result<(), Error> {
    let Value::Object(obj) = t else {
        return Err(bad(path, format!("'{path}' must be an object")));
    };
    let kind = field(&obj, path, "type")?;
    if kind == "namespace" && namespace.is_none() {
        let ns = field(&obj, path, "name")?;
        let Some(Value::Array(inner)) = obj.get("tools") else {
            return Err(bad(
                &format!("{path}.tools"),
                format!("'{path}.tools' must be an array"),
            ));
        };
        for (j, t) in inner.iter().enumerate() {
            tool_at(
                &format!("{path}.tools[{j}]"),
                t.clone(),
                Some(ns),
                tools,
                out,
            )?;
        }
        return Ok(());
    }
    if !matches!(kind, "function" | "custom") {
        out.hosted_tools.push(kind.to_owned());
        return Ok(());
    }
    let n = field(&obj, path, "name")?;
    if n.is_empty() {
        return Err(bad(
            &format!("{path}.name"),
            format!("'{path}.name' is empty"),
        ));
    }
    let name = match namespace {
        None => n.to_owned(),
        Some(ns) => {
            let q = qualified(ns, n);
            if q.len() > 64 {
                return Err(unsupported(
                    &format!("{path}.name"),
                    format!(
                        "'{ns}.{n}' is longer than the 64 characters a tool name may have once qualified as '{q}'"
                    ),
                ));
            }
            out.namespaced
                .push((q.clone(), ns.to_owned(), n.to_owned()));
            q
        }
    };
    let description = obj
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (parameters, strict) = if kind == "custom" {
        out.custom_tools.push(name.clone());
        (Some(custom_tool_parameters()), None)
    } else {
        (
            obj.get("parameters").filter(|v| !v.is_null()).cloned(),
            obj.get("strict").and_then(Value::as_bool),
        )
    };
    tools.push(Tool {
        name,
        description,
        parameters,
        strict,
        cache: None,
    });
    Ok(())
}

fn parse_tool_choice(
    v: Value,
    tools: &[Tool],
    req: &ResponsesRequest,
) -> Result<ToolChoice, Error> {
    let choice = match &v {
        Value::String(s) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => {
                return Err(bad(
                    "tool_choice",
                    "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\":\"function\",\"name\":...}",
                ));
            }
        },
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function" | "custom") => {
                ToolChoice::Tool(field(o, "tool_choice", "name")?.to_owned())
            }
            Some(other) if req.hosted_tools.iter().any(|t| t == other) => ToolChoice::Required,
            Some(other) => {
                return Err(unsupported(
                    "tool_choice",
                    format!("tool_choice of type '{other}' is not supported"),
                ));
            }
            None => return Err(bad("tool_choice.type", "'tool_choice.type' is missing")),
        },
        _ => {
            return Err(bad(
                "tool_choice",
                "'tool_choice' must be a string or an object",
            ));
        }
    };
    if let ToolChoice::Tool(name) = &choice {
        if !tools.iter().any(|t| &t.name == name) {
            return Err(bad(
                "tool_choice",
                format!("tool_choice names '{name}', which is not in 'tools'"),
            ));
        }
    }
    Ok(choice)
}

fn text_format(v: Value) -> Result<Option<ResponseFormat>, Error> {
    let Value::Object(text) = v else {
        return Err(bad("text", "'text' must be an object"));
    };
    if let Some(verbosity) = text.get("verbosity").and_then(Value::as_str) {
        if !matches!(verbosity, "low" | "medium" | "high") {
            return Err(bad(
                "text.verbosity",
                "'text.verbosity' must be low, medium or high",
            ));
        }
    }
    let Some(Value::Object(f)) = text.get("format") else {
        return Ok(None);
    };
    Ok(Some(match f.get("type").and_then(Value::as_str) {
        Some("text") => ResponseFormat::Text,
        Some("json_object") => ResponseFormat::JsonObject,
        Some("json_schema") => ResponseFormat::JsonSchema {
            name: field(f, "text.format", "name")?.to_owned(),
            schema: f.get("schema").cloned(),
            strict: f.get("strict").and_then(Value::as_bool),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
        _ => {
            return Err(bad(
                "text.format.type",
                "'text.format.type' must be text, json_object or json_schema",
            ));
        }
    }))
}

fn reasoning(v: Value) -> Result<Option<Reasoning>, Error> {
    let Value::Object(r) = v else {
        return Err(bad("reasoning", "'reasoning' must be an object"));
    };
    Ok(r.get("effort")
        .and_then(Value::as_str)
        .map(|effort| Reasoning {
            effort: Some(effort.to_owned()),
            budget_tokens: None,
        }))
}

/// Items to canonical messages. Consecutive assistant-side items (reasoning, an assistant
/// message, tool calls) make one assistant message; each tool output is a tool message.
pub(crate) fn messages(items: &[Value], at: &str) -> Result<Vec<Message>, Error> {
    let mut out: Vec<Message> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("{at}[{i}]");
        let Value::Object(obj) = item else {
            return Err(bad(&path, format!("'{path}' must be an object")));
        };
        let kind = match obj.get("type").and_then(Value::as_str) {
            Some(k) => k,
            None if obj.contains_key("role") => "message",
            None => return Err(bad(&path, format!("'{path}.type' is missing"))),
        };
        let assistant_part = match kind {
            "message" => {
                let role = match field(obj, &path, "role")? {
                    "user" => Role::User,
                    "system" => Role::System,
                    "developer" => Role::Developer,
                    "assistant" => Role::Assistant,
                    other => {
                        return Err(bad(
                            &format!("{path}.role"),
                            format!("'{path}.role' '{other}' is not a message role"),
                        ));
                    }
                };
                let content = parts(obj.get("content"), &format!("{path}.content"))?;
                if role != Role::Assistant {
                    out.push(Message {
                        role,
                        content,
                        name: None,
                    });
                    continue;
                }
                content
            }
            "function_call" => vec![ContentPart::ToolCall(ToolCall {
                id: field(obj, &path, "call_id")?.to_owned(),
                name: call_name(obj, &path)?,
                arguments: field(obj, &path, "arguments")?.to_owned(),
            })],
            "custom_tool_call" => vec![ContentPart::ToolCall(ToolCall {
                id: field(obj, &path, "call_id")?.to_owned(),
                name: call_name(obj, &path)?,
                arguments: json!({"input": field(obj, &path, "input")?}).to_string(),
            })],
            "reasoning" => {
                let texts = |key: &str| -> String {
                    obj.get(key)
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|p| p.get("text").and_then(Value::as_str))
                                .collect::<Vec<_>>()
                                .join("\n\n")
                        })
                        .unwrap_or_default()
                };
                let mut text = texts("content");
                if text.is_empty() {
                    text = texts("summary");
                }
                let signature = reasoning_signature(obj);
                if text.is_empty() && signature.is_none() {
                    continue;
                }
                vec![ContentPart::Reasoning { text, signature }]
            }
            "function_call_output" | "custom_tool_call_output" => {
                let content = match obj.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => parts(Some(v), &format!("{path}.output"))?
                        .iter()
                        .filter_map(|p| match p {
                            ContentPart::Text(t) => Some(t.as_str()),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => {
                        return Err(bad(
                            &format!("{path}.output"),
                            format!("'{path}.output' must be a string or an array of parts"),
                        ));
                    }
                };
                out.push(Message {
                    role: Role::Tool,
                    content: vec![ContentPart::ToolResult {
                        call_id: field(obj, &path, "call_id")?.to_owned(),
                        content,
                        is_error: false,
                    }],
                    name: None,
                });
                continue;
            }
            "item_reference" => {
                return Err(unsupported(
                    &path,
                    format!(
                        "'{path}' is an item_reference, which is not supported; send the item itself or use previous_response_id"
                    ),
                ));
            }
            other => {
                return Err(unsupported(
                    &format!("{path}.type"),
                    format!(
                        "input item type '{other}' is not supported (it belongs to a tool relais does not run)"
                    ),
                ));
            }
        };
        match out.last_mut() {
            Some(m) if m.role == Role::Assistant => m.content.extend(assistant_part),
            _ => out.push(Message {
                role: Role::Assistant,
                content: assistant_part,
                name: None,
            }),
        }
    }
    Ok(out)
}

/// A reasoning item's canonical signature: its `encrypted_content`. OpenAI's own (a Fernet
/// token, `gAAAAA...`) is tied to its item id, which the Responses upstream needs back: it
/// travels as `{id}:{encrypted_content}`, the form that provider reads and writes. Any other
/// (another vendor's signature, or one relais already paired) is kept as it is.
fn reasoning_signature(obj: &Map<String, Value>) -> Option<String> {
    let enc = obj.get("encrypted_content").and_then(Value::as_str)?;
    match obj.get("id").and_then(Value::as_str) {
        Some(id) if id.starts_with("rs_") && enc.starts_with("gAAAA") => {
            Some(format!("{id}:{enc}"))
        }
        _ => Some(enc.to_owned()),
    }
}

/// The conversation to store with a response: the items before this turn, then this turn's
/// input, each input item without an id given one (`{msg,fco,item}_<response>_in<n>`, the form
/// [`given_by_relais`] knows), so `input_items` can list them.
pub fn conversation_items(history: Vec<Value>, input: &[Value], response_id: &str) -> Vec<Value> {
    let base = response_id.strip_prefix("resp_").unwrap_or(response_id);
    let mut items = history;
    for (n, item) in input.iter().enumerate() {
        let mut item = item.clone();
        if let Value::Object(m) = &mut item {
            if !m.contains_key("id") {
                let prefix = match m.get("type").and_then(Value::as_str) {
                    None | Some("message") => "msg",
                    Some("function_call_output") => "fco",
                    Some(_) => "item",
                };
                m.insert("id".into(), Value::String(format!("{prefix}_{base}_in{n}")));
            }
        }
        items.push(item);
    }
    items
}

/// The conversation a stored response continues with: its stored items, then the output of
/// its response object (both JSON text); `None` when either cannot be read.
pub fn continuation(items: &str, response: &str) -> Option<Vec<Value>> {
    let mut items: Vec<Value> = serde_json::from_str(items).ok()?;
    let response: Value = serde_json::from_str(response).ok()?;
    if let Some(Value::Array(output)) = response.get("output") {
        items.extend(output.iter().cloned());
    }
    Some(items)
}

/// Whether an item id is one relais gave a stored input item: `{msg,fco,item}_<32 hex>_in<n>`.
fn given_by_relais(id: &str) -> bool {
    let Some((head, n)) = id.rsplit_once("_in") else {
        return false;
    };
    let Some((prefix, hex)) = head.split_once('_') else {
        return false;
    };
    matches!(prefix, "msg" | "fco" | "item")
        && hex.len() == 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
}

/// The tool a call item names, qualified by its namespace if it has one.
fn call_name(obj: &Map<String, Value>, path: &str) -> Result<String, Error> {
    let name = field(obj, path, "name")?;
    Ok(match obj.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => qualified(ns, name),
        _ => name.to_owned(),
    })
}

/// A message's content: a string or an array of typed parts.
fn parts(content: Option<&Value>, path: &str) -> Result<Vec<ContentPart>, Error> {
    let items = match content {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => return Ok(vec![ContentPart::Text(s.clone())]),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(bad(
                path,
                format!("'{path}' must be a string or an array of parts"),
            ));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let path = format!("{path}[{j}]");
        let Value::Object(p) = item else {
            return Err(bad(&path, format!("'{path}' must be an object")));
        };
        let get = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
        out.push(match p.get("type").and_then(Value::as_str).unwrap_or("") {
            "input_text" | "output_text" | "text" | "summary_text" => {
                ContentPart::Text(field(p, &path, "text")?.to_owned())
            }
            "refusal" => ContentPart::Text(field(p, &path, "refusal")?.to_owned()),
            "input_image" => match p.get("image_url").and_then(Value::as_str) {
                Some(url) => ContentPart::Image {
                    source: image_source(&path, url)?,
                    detail: get("detail").filter(|d| d != "auto"),
                },
                None => {
                    return Err(unsupported(
                        &path,
                        format!(
                            "'{path}' must carry an image_url; uploaded file ids are not supported"
                        ),
                    ));
                }
            },
            "input_file" => {
                if p.contains_key("file_url") {
                    return Err(unsupported(
                        &format!("{path}.file_url"),
                        "input_file by file_url is not supported; send file_data",
                    ));
                }
                ContentPart::Document {
                    data: get("file_data"),
                    file_id: get("file_id"),
                    filename: get("filename"),
                }
            }
            "" => return Err(bad(&path, format!("'{path}.type' is missing"))),
            other => {
                return Err(unsupported(
                    &format!("{path}.type"),
                    format!("content part type '{other}' is not supported"),
                ));
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ResponsesRequest, Error> {
        parse_responses(v.to_string().as_bytes())
    }

    #[test]
    fn a_string_input_is_one_user_message_after_the_instructions() {
        let r = parse(json!({"model": "m", "input": "hi", "instructions": "be brief"})).unwrap();
        assert_eq!(r.chat.model, "m");
        assert_eq!(r.chat.messages.len(), 2);
        assert_eq!(r.chat.messages[0].role, Role::System);
        assert_eq!(r.chat.messages[1].joined_text(), "hi");
        assert_eq!(r.input.len(), 1);
        assert!(r.store);
        assert_eq!(r.echo["instructions"], "be brief");
    }

    #[test]
    fn tool_round_trip_items_make_one_assistant_message_and_a_tool_message() {
        let r = parse(json!({"model": "m", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}], "encrypted_content": "enc"},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"}
        ], "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}}],
           "tool_choice": {"type": "function", "name": "get"}}))
        .unwrap();
        let m = &r.chat.messages;
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].role, Role::Assistant);
        assert!(
            matches!(&m[1].content[0], ContentPart::Reasoning { text, signature } if text == "think" && signature.as_deref() == Some("enc"))
        );
        assert!(matches!(&m[1].content[1], ContentPart::ToolCall(c) if c.id == "c1"));
        assert!(
            matches!(&m[2].content[0], ContentPart::ToolResult { content, .. } if content == "sunny")
        );
        assert_eq!(r.chat.tool_choice, Some(ToolChoice::Tool("get".into())));
    }

    #[test]
    fn hosted_tools_are_listed_and_custom_tools_become_functions() {
        let r = parse(json!({"model": "m", "input": "x", "tools": [
            {"type": "web_search"}, {"type": "custom", "name": "apply_patch"}]}))
        .unwrap();
        assert_eq!(r.hosted_tools, ["web_search"]);
        assert_eq!(r.custom_tools, ["apply_patch"]);
        assert_eq!(r.chat.tools[0].parameters, Some(custom_tool_parameters()));
        let r = parse(json!({"model": "m", "input": [
            {"type": "function_call", "call_id": "c", "namespace": "crm", "name": "find", "arguments": "{}"}
        ], "tools": [{"type": "namespace", "name": "crm", "description": "CRM", "tools": [
            {"type": "function", "name": "find", "parameters": {"type": "object"}}]}]}))
        .unwrap();
        assert_eq!(r.chat.tools[0].name, "crm__find");
        assert_eq!(
            r.namespaced,
            [("crm__find".to_owned(), "crm".to_owned(), "find".to_owned())]
        );
        assert!(
            matches!(&r.chat.messages[0].content[0], ContentPart::ToolCall(c) if c.name == "crm__find")
        );
    }

    #[test]
    fn what_cannot_be_carried_is_refused_by_name() {
        for (body, param) in [
            (
                json!({"model": "m", "input": "x", "conversation": "c"}),
                "conversation",
            ),
            (
                json!({"model": "m", "input": "x", "truncation": "auto"}),
                "truncation",
            ),
            (
                json!({"model": "m", "input": "x", "include": ["message.output_text.logprobs"]}),
                "include[0]",
            ),
            (
                json!({"model": "m", "input": "x", "frobnicate": 1}),
                "frobnicate",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0]",
            ),
            (
                json!({"model": "m", "input": [{"type": "computer_call_output", "call_id": "x"}]}),
                "input[0].type",
            ),
            (json!({"model": "m"}), "input"),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn a_native_body_expands_the_conversation_and_drops_only_relais_ids() {
        let r = parse(
            json!({"model": "m", "input": "next", "previous_response_id": "resp_1",
            "store": true, "tools": [{"type": "web_search"}]}),
        )
        .unwrap();
        let relais = format!("msg_{}_in0", "a".repeat(32));
        let raw = json!({"model": "m", "input": "next", "previous_response_id": "resp_1",
            "store": true, "tools": [{"type": "web_search"}]})
        .to_string();
        let body = native_body(
            raw.as_bytes(),
            &r,
            &[
                json!({"id": relais, "type": "message", "role": "user", "content": "first"}),
                json!({"id": "ws_1", "type": "web_search_call", "status": "completed"}),
            ],
        )
        .unwrap();
        assert!(!body.contains_key("previous_response_id") && !body.contains_key("store"));
        assert_eq!(body["tools"], json!([{"type": "web_search"}]));
        let input = body["input"].as_array().unwrap();
        assert_eq!(input.len(), 3);
        assert!(input[0].get("id").is_none());
        assert_eq!(input[1]["id"], "ws_1");
    }

    #[test]
    fn history_goes_between_the_instructions_and_the_new_input() {
        let mut r = parse(
            json!({"model": "m", "input": "second", "instructions": "sys",
            "previous_response_id": "resp_1"}),
        )
        .unwrap();
        with_history(
            &mut r,
            &[
                json!({"type": "message", "role": "user", "content": "first"}),
                json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "answer"}]}),
            ],
        )
        .unwrap();
        let texts: Vec<String> = r.chat.messages.iter().map(Message::joined_text).collect();
        assert_eq!(texts, ["sys", "first", "answer", "second"]);
    }
}
